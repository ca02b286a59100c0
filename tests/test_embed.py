"""Embeddings: cache, resumability after SIGKILL, packs, and the default model's sanity check."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchroute.data.benchmark import load_benchmark, write_benchmark
from benchroute.embed import (
    DEFAULT_MODEL,
    SMALL_MODEL,
    Embedder,
    EmbeddingCache,
    export_pack,
    import_pack,
    read_pack,
    text_hash,
)
from benchroute.errors import ConfigError, IntegrityError, ModelNotAvailableError

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]


def test_cache_serves_repeats_without_recomputing(tmp_path: Path) -> None:
    emb = Embedder(SMALL_MODEL, cache=tmp_path / "c.sqlite")
    first = emb.encode(TEXTS + TEXTS[:1])
    assert first.shape == (4, 384) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first[0], first[3])
    assert emb.missing(TEXTS) == []
    direct = emb.encode_uncached(TEXTS)
    assert np.allclose(first[:3], direct, atol=1e-5)
    # a second Embedder on the same file reads the vectors back bit for bit
    again = Embedder(SMALL_MODEL, cache=tmp_path / "c.sqlite").encode(TEXTS)
    assert np.array_equal(again, first[:3])


def test_small_model_sanity(tmp_path: Path) -> None:
    v = Embedder(SMALL_MODEL, cache=False).encode(TEXTS)
    assert float(v[0] @ v[1]) == pytest.approx(0.755, abs=0.01)
    assert float(v[0] @ v[2]) == pytest.approx(-0.105, abs=0.01)


@pytest.mark.slow
def test_default_model_ranks_paraphrase_closer(tmp_path: Path) -> None:
    v = Embedder(DEFAULT_MODEL, cache=False).encode(TEXTS)
    assert v.shape[1] == 768
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])
    assert float(v[0] @ v[1]) == pytest.approx(0.660, abs=0.01)
    assert float(v[0] @ v[2]) == pytest.approx(-0.056, abs=0.01)


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ModelNotAvailableError, match="unknown embedding model"):
        Embedder("/no/such/model/dir", cache=False)


def _small_benchmark(path: Path, n: int = 120) -> Path:
    bench = load_benchmark("llmrouter")
    items = bench.items.iloc[:n].copy()
    models = bench.models[:2]
    scores = pd.DataFrame(
        [
            (t, i, m, float(bench.scores[r, j]))
            for r, (t, i) in enumerate(zip(items.task, items.item_id, strict=False))
            for j, m in enumerate(models)
        ],
        columns=["task", "item_id", "model", "score"],
    )
    tasks = pd.DataFrame({"task": items.task.unique(), "threshold": [0.5] * items.task.nunique()})
    return write_benchmark(path, items, scores, pd.DataFrame({"model": models}), tasks)


def _cache_rows(path: Path) -> dict[bytes, bytes]:
    with sqlite3.connect(path) as conn:
        return {bytes(h): bytes(v) for h, v in conn.execute("SELECT hash, vec FROM vectors")}


def _embed_cmd(bench: Path, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchroute.cli.commands",
        "embed",
        str(bench),
        "--model",
        SMALL_MODEL,
        "--cache",
        str(cache),
        "--commit-every",
        "16",
        "--batch-size",
        "8",
    ]


def test_sigkill_mid_run_resumes_and_matches_uninterrupted(tmp_path: Path) -> None:
    bench = _small_benchmark(tmp_path / "bench")
    killed, clean = tmp_path / "killed.sqlite", tmp_path / "clean.sqlite"
    proc = subprocess.Popen(_embed_cmd(bench, killed), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if killed.exists():
            try:
                with sqlite3.connect(killed, timeout=1) as conn:
                    if conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] >= 32:
                        break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _cache_rows(killed)
    assert 0 < len(partial) < 120, "the kill must land mid-run"
    assert len(partial) % 16 == 0, "only whole committed batches survive a kill"
    rerun = subprocess.run(_embed_cmd(bench, killed), capture_output=True, text=True, check=True)
    assert f"{120 - len(partial)} newly embedded" in rerun.stdout.replace("\n", " ")
    subprocess.run(_embed_cmd(bench, clean), capture_output=True, text=True, check=True)
    assert _cache_rows(killed) == _cache_rows(clean)


def test_pack_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    src = EmbeddingCache(tmp_path / "src.sqlite")
    emb = Embedder(SMALL_MODEL, cache=src)
    vecs = emb.encode(TEXTS)
    pack = tmp_path / "p.safetensors"
    assert export_pack(src, emb.model_id, TEXTS, pack) == 3
    meta, _hashes, _got = read_pack(pack)
    assert meta["model_id"] == emb.model_id and int(meta["count"]) == 3
    dst = EmbeddingCache(tmp_path / "dst.sqlite")
    assert import_pack(dst, pack, emb.model_id) == 3
    back = dst.get_many(emb.model_id, [text_hash(t) for t in TEXTS])
    for t, v in zip(TEXTS, vecs, strict=True):
        assert np.allclose(back[text_hash(t)], v, atol=2e-3)  # float16 in the pack
    with pytest.raises(IntegrityError, match=r"not a benchroute|pack was made"):
        import_pack(dst, pack, "other-model@123")
    raw = bytearray(pack.read_bytes())
    raw[-5] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="checksum"):
        read_pack(bad)
    bad.write_bytes(bytes(raw[:100]))
    with pytest.raises(IntegrityError):
        read_pack(bad)
    with pytest.raises(IntegrityError, match="not embedded"):
        export_pack(src, emb.model_id, ["never embedded text"], tmp_path / "x.safetensors")


def test_bf16_fast_path_is_close_deterministic_and_cached_apart(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    exact = Embedder(SMALL_MODEL, cache=cache)
    fast = Embedder(SMALL_MODEL, cache=cache, fast="bf16")
    assert fast.model_id == exact.model_id + "+bf16"
    texts = [*TEXTS, "word " * 400]  # one input longer than the model's 256-token limit
    v32, v16 = exact.encode(texts), fast.encode(texts)
    assert v16.dtype == np.float32 and np.allclose(np.linalg.norm(v16, axis=1), 1.0, atol=1e-6)
    cos = (v32 * v16).sum(axis=1)
    assert cos.min() > 0.999 and not np.array_equal(v32, v16)  # close, yet really computed in bf16
    # the two paths never share cache rows; each returns its own vectors from the cache
    assert cache.count(exact.model_id) == cache.count(fast.model_id) == len(texts)
    assert np.array_equal(Embedder(SMALL_MODEL, cache=cache).encode(texts), v32)
    # deterministic: a fresh model on the same chunk gives bit-identical vectors
    assert np.array_equal(Embedder(SMALL_MODEL, cache=False, fast="bf16").encode(texts), v16)
    assert "fast='bf16'" in repr(fast)


def test_unknown_fast_path_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown fast embedding path 'int4'"):
        Embedder(SMALL_MODEL, cache=False, fast="int4")


# ------------------------------------------------------------------ query serving: ONNX path, truncation

LONG = "word " * 400  # over all-MiniLM-L6-v2's 256-token window


@pytest.fixture(scope="module")
def onnx_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A benchroute home holding MiniLM's ONNX export, made once for this module (~15 s)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    home = tmp_path_factory.mktemp("onnx-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHROUTE_HOME", str(home))
        Embedder(SMALL_MODEL, cache=False, fast="onnx").onnx  # noqa: B018 (export + verification)
    return home


def test_onnx_path_matches_fp32_and_is_cached_apart(
    onnx_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchroute.embed import onnx_export_path

    monkeypatch.setenv("BENCHROUTE_HOME", str(onnx_home))
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    exact = Embedder(SMALL_MODEL, cache=cache)
    fast = Embedder(SMALL_MODEL, cache=cache, fast="onnx", threads=1)
    bf16 = Embedder(SMALL_MODEL, cache=cache, fast="bf16")
    assert fast.model_id == exact.model_id + "+onnx"
    assert len({exact.model_id, fast.model_id, bf16.model_id}) == 3
    export = onnx_export_path(exact.model_id)
    assert export.exists() and exact.model_id.split("@")[1] in export.name  # keyed by the weights' hash
    texts = [*TEXTS, LONG, "  padded with spaces  ", "Ünïcödé 中文 text"]
    v32, vx = exact.encode(texts), fast.encode(texts)
    assert vx.dtype == np.float32 and np.allclose(np.linalg.norm(vx, axis=1), 1.0, atol=1e-6)
    cos = (v32 * vx).sum(axis=1)
    assert cos.min() > 0.99999, cos
    # sanity values of the model hold on this path too
    assert float(vx[0] @ vx[1]) == pytest.approx(0.755, abs=0.01)
    # each numeric path has its own cache rows and gets its own vectors back
    bf16.encode(texts)
    for e in (exact, fast, bf16):
        assert cache.count(e.model_id) == len(texts)
    assert np.array_equal(Embedder(SMALL_MODEL, cache=cache).encode(texts), v32)
    assert np.array_equal(Embedder(SMALL_MODEL, cache=cache, fast="onnx").encode(texts), vx)
    # one pass per text: a vector does not depend on what it is batched with
    alone = fast.encode_uncached([texts[0]])
    assert np.array_equal(alone[0], fast.encode_uncached([LONG, texts[0], TEXTS[2]])[1])
    assert "fast='onnx', threads=1" in repr(fast)


def test_onnx_serving_path_loads_without_torch(onnx_home: Path) -> None:
    code = (
        "import sys; from benchroute.embed import Embedder, SMALL_MODEL; "
        "e = Embedder(SMALL_MODEL, cache=False, fast='onnx', threads=1); "
        "v = e.encode_uncached([e.truncate('hello world ' * 500), 'hi']); "
        "assert v.shape == (2, 384); "
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))"
    )
    env = {**os.environ, "BENCHROUTE_HOME": str(onnx_home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_onnx_path_without_onnxruntime_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import benchroute.embed as embed_mod

    monkeypatch.setattr(embed_mod, "onnx_available", lambda: False)
    with pytest.raises(ModelNotAvailableError, match="onnxruntime") as err:
        Embedder(SMALL_MODEL, cache=False, fast="onnx")
    assert "benchroute[onnx]" in str(err.value)
    with pytest.raises(ConfigError, match="threads= applies to fast='onnx' only"):
        Embedder(SMALL_MODEL, cache=False, threads=2)


def _tricky_texts() -> list[str]:
    inputs = [t for t in dict.fromkeys(load_benchmark("openllm_v2").inputs) if len(t) > 1500]
    return [
        LONG,
        "x" * 5000,
        "a" * 150 + " b" * 400,
        "  " + "word " * 300,
        "中文字符" * 300,
        "naïve café résumé " * 100,
        "unbelievably " * 300,
        "🙂 emoji " * 400,
        "spaces     " * 2000,
        "one\n\n\ttwo, three! " * 200,
        *inputs[:150],
    ]


def test_truncate_keeps_exactly_the_tokens_the_model_reads() -> None:
    emb = Embedder(SMALL_MODEL, cache=False)
    tok = emb.tokenizer
    assert tok.max_seq_length == 256 and tok.window == 254
    for text in _tricky_texts():
        cut = emb.truncate(text)
        assert text.startswith(cut) and len(cut) <= len(text)
        n_cut = len(tok._tok.encode(cut, add_special_tokens=False).ids)
        assert n_cut <= tok.window, (n_cut, text[:40])
        assert tok.ids([cut]) == tok.ids([text]), text[:40]  # the model sees the same ids
        if len(tok._tok.encode(text, add_special_tokens=False).ids) > tok.window:
            assert len(cut) < len(text) and n_cut == tok.window
    short = "A chat-length query of about a hundred characters, well inside the model's token window."
    assert emb.truncate(short) is short and emb.truncate("") == ""
    # the model's own (sentence-transformers) tokenization agrees, and so do the vectors
    st_ids = emb.sentence_transformer.preprocess([LONG])["input_ids"][0].tolist()
    assert tok.ids([LONG])[0] == [i for i in st_ids if i != 0]
    v_full, v_cut = emb.encode_uncached([LONG]), emb.encode_uncached([emb.truncate(LONG)])
    assert np.allclose(v_full, v_cut, atol=1e-6)


def test_truncate_property() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as hst

    tok = Embedder(SMALL_MODEL, cache=False).tokenizer
    pieces = [
        "word",
        "playing",
        "unbelievable",
        "中",
        "é",
        ",",
        ".",
        " ",
        "  ",
        "\n",
        "x" * 120,
        "🙂",
        "supercalifragilistic",
        "state-of-the-art",
        "C++",
        "e=mc²",
        "\u0301",
        "\u00a0",
    ]

    @settings(max_examples=150, deadline=None)
    @given(hst.lists(hst.sampled_from(pieces), min_size=0, max_size=700))
    def check(parts: list[str]) -> None:
        text = "".join(parts)
        cut = tok.truncate(text)
        assert text.startswith(cut)
        assert tok.ids([cut]) == tok.ids([text])
        assert len(tok._tok.encode(cut, add_special_tokens=False).ids) <= tok.window

    check()
