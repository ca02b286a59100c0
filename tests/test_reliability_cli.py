"""Reliability, round two: the undocumented inputs, one family per test (docs/reliability.md).

Every case runs the real ``benchroute`` entry point in-process and checks the same contract: exit
code 2, exactly one line on stderr that names the file or option, no traceback, and no file that
existed before the command changed (or disappeared).

Privileges: the suite often runs as root, for whom ``chmod 000`` does not stop a read. The
permission cases then patch the two calls the read guard makes (``os.open`` and ``os.access``) so
that they honour the owner permission bits as they would for an ordinary user; as another user the
real permissions are used. Full disks are simulated at the boundary: ``os.fdopen``'s writes raise
ENOSPC for atomic writes (as in test_reliability_faults.py), and SQLite gets a real SQLITE_FULL from
``PRAGMA max_page_count``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sqlite3
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

SMALL_MODEL = "all-MiniLM-L6-v2"
LONG_MODEL = "an-organisation-with-a-long-name/SuperModel-70B-Instruct-v2.1-preview"
TASKS = {  # 3 tasks x 20 short questions: enough neighbours for task-aware per-query routing (k = 50)
    "arith": [f"What is {i} + {i + 3}?" for i in range(20)],
    "capitals": [f"Name the capital of country number {i}." for i in range(20)],
    "verbs": [f"Give the past tense of verb {i}." for i in range(20)],
}
MODELS = ["m-small", "m-large", LONG_MODEL]


# ------------------------------------------------------------------------------------- helpers


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``benchroute ARGS`` through its real entry point: (exit code, stderr)."""
    from benchroute.cli.commands import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["benchroute", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def tree(*roots: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every file and folder under ``roots``: mode, size, mtime and a content digest."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")] if root.exists() else []:
            if p.is_symlink() or not (p.is_file() or p.is_dir()):
                continue
            st = p.lstat()
            data = hashlib.sha256(p.read_bytes()).digest() if p.is_file() else b""
            out[str(p)] = (st.st_mode, st.st_size if p.is_file() else 0, st.st_mtime_ns, data)
    return out


def assert_refused(code: int, err: str, *names: str) -> None:
    """Exit 2, one error line (after any progress bars), no traceback, naming each of ``names``."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert all("%" in ln for ln in lines[:-1]), err  # before it, progress bars only
    for name in names:
        assert str(name) in errors[0], (name, err)


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Owner permission bits enforced for ``os.open``/``os.access`` even when running as root."""
    if os.geteuid() != 0:
        return
    real_open, real_access = os.open, os.access

    def denied(path: Any, want: int) -> bool:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return False
        return bool(want & ~(mode >> 6) & 7)

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        want = 2 if flags & (os.O_WRONLY | os.O_RDWR) else 4
        if denied(path, want):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        return not denied(path, mode) and real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "access", fake_access)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-task benchmark (short texts, 3 models, one with a long name), its MiniLM cache, a router."""
    from benchroute.data.benchmark import load_benchmark, write_benchmark
    from benchroute.embed import Embedder
    from benchroute.router.estimator import Router

    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    items = [
        {"task": t, "item_id": str(i), "input": x} for t, texts in TASKS.items() for i, x in enumerate(texts)
    ]
    scores = [
        {**{k: it[k] for k in ("task", "item_id")}, "model": m, "score": float(rng.random() < 0.6)}
        for it in items
        for m in MODELS
    ]
    bench_dir = write_benchmark(root / "bench", pd.DataFrame(items), pd.DataFrame(scores))
    cache = root / "cache.sqlite"
    bench = load_benchmark(bench_dir)
    bench = bench.with_embeddings(Embedder(SMALL_MODEL, cache=cache).encode(bench.inputs))
    router = Router(score="S3", repeats=2, embedding_model=SMALL_MODEL).fit(bench).save(root / "router")
    table = root / "scores.csv"
    pd.DataFrame(
        [{"task": s["task"], "prompt": items[0]["input"] + s["item_id"], **s} for s in scores]
    ).rename(columns={"score": "acc"}).to_csv(table, index=False)
    return {"root": root, "bench": bench_dir, "cache": cache, "router": router, "table": table}


@pytest.fixture
def env(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Each test uses a copy of the cache (so a test can never spoil another) and its own cwd."""
    cache = tmp_path / "cache.sqlite"
    cache.write_bytes(world["cache"].read_bytes())
    monkeypatch.setenv("BENCHROUTE_CACHE", str(cache))
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def table_args(out: Path | str) -> list[str]:
    return ["--task-col", "task", "--input-col", "prompt", "--model-col", "model", "--score-col", "acc"]


def import_table(src: Path, out: Path | str, *extra: str) -> list[str]:
    return ["import", "table", str(src), "-o", str(out), *table_args(out), *extra]


# ------------------------------------------------------------------------------- lost data


@pytest.mark.parametrize(
    "case", ["out is the source's folder", "out is a non-empty folder", "force onto the source's folder"]
)
def test_import_never_replaces_its_source_or_a_non_empty_folder(
    case: str, world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    d = env / "d"
    d.mkdir()
    src = d / "scores.csv"
    src.write_bytes(world["table"].read_bytes())
    (d / "notes.txt").write_text("mine")
    monkeypatch.chdir(d)
    before = tree(d)
    if case == "out is the source's folder":
        code, err = run(monkeypatch, capsys, *import_table(Path("scores.csv"), "."))
        assert_refused(code, err, "-o", "scores.csv")
    elif case == "out is a non-empty folder":
        other = env / "other"
        other.mkdir()
        (other / "keep.txt").write_text("keep")
        before = tree(d, other)
        code, err = run(monkeypatch, capsys, *import_table(src, other))
        assert_refused(code, err, "-o", str(other), "--force")
        assert tree(d, other) == before
        return
    else:
        code, err = run(monkeypatch, capsys, *import_table(src, d, "--force"))
        assert_refused(code, err, "-o", str(src))
    assert tree(d) == before


def test_import_force_replaces_a_folder_atomically(
    world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    out = env / "out"
    out.mkdir()
    (out / "old.txt").write_text("replace me")
    code, err = run(monkeypatch, capsys, *import_table(world["table"], out, "--force"))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "items.csv.gz",
        "models.csv",
        "scores.csv.gz",
        "tasks.csv",
    ]
    assert sorted(p.name for p in env.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_failed_import_keeps_the_earlier_benchmark(
    world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """ENOSPC while the new benchmark is written: the earlier one is whole, nothing half-new."""
    from benchroute.data.benchmark import load_benchmark

    out = env / "bench"
    code, err = run(monkeypatch, capsys, *import_table(world["table"], out))
    assert code == 0, err
    before = tree(out)
    smaller = env / "smaller.csv"
    pd.read_csv(world["table"]).iloc[:-6].to_csv(smaller, index=False)
    real = os.fdopen
    opened = []

    def full(fd: int, *a: Any, **kw: Any) -> Any:
        f = real(fd, *a, **kw)
        opened.append(fd)
        if len(opened) == 2:  # the second file of the benchmark: half written, then the disk is full

            def write(data: bytes) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            f.write = write
        return f

    monkeypatch.setattr(os, "fdopen", full)
    code, err = run(monkeypatch, capsys, *import_table(smaller, out))
    monkeypatch.setattr(os, "fdopen", real)
    assert_refused(code, err, str(out), "No space left on device")
    assert tree(out) == before
    assert load_benchmark(out).n_items == 60
    assert [p.name for p in env.iterdir() if p.name.startswith(".bench")] == []


# --------------------------------------------------------------------------- hostile files


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


HOSTILE = {"a FIFO": _fifo, "a symlink to /dev/zero": _zero, "a folder": lambda p: p.mkdir()}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("target", ["router.json", "arrays.safetensors", "inputs", "labeled", "pack"])
def test_non_regular_files_are_refused_before_reading(
    kind: str, target: str, world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import shutil

    router = env / "router"
    shutil.copytree(world["router"], router)
    inputs = env / "inputs.txt"
    inputs.write_text("What is 3 + 4?\n")
    labeled = env / "labeled.jsonl"
    if target in ("router.json", "arrays.safetensors"):
        (router / target).unlink()
        HOSTILE[kind](router / target)
        args = ["recommend", router, "--inputs", inputs]
        named = router / target
    elif target == "inputs":
        inputs = env / "inputs.jsonl"
        HOSTILE[kind](inputs)
        args, named = ["recommend", router, "--inputs", inputs], inputs
    elif target == "labeled":
        HOSTILE[kind](labeled)
        args, named = ["recommend", router, "--inputs", inputs, "--labeled", labeled], labeled
    else:
        pack = env / "p.safetensors"
        HOSTILE[kind](pack)
        args, named = ["embed", "--import", pack], pack
    before = tree(env / "cache.sqlite")
    code, err = run(monkeypatch, capsys, *args)
    assert_refused(code, err, str(named))
    assert tree(env / "cache.sqlite") == before


def test_size_caps_refuse_huge_files_before_reading(
    world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("BENCHROUTE_MAX_INPUTS_MB", "0.001")
    inputs = env / "big.txt"
    inputs.write_text("x\n" * 2000)
    code, err = run(monkeypatch, capsys, "recommend", world["router"], "--inputs", inputs)
    assert_refused(code, err, str(inputs), "limit")


# ----------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("what", ["items file", "benchmark folder", "router.json", "inputs file"])
def test_unreadable_files_are_one_line(
    what: str, world: dict[str, Path], env: Path, as_user: None, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import shutil

    bench, router = env / "bench", env / "router"
    shutil.copytree(world["bench"], bench)
    shutil.copytree(world["router"], router)
    inputs = env / "in.txt"
    inputs.write_text("What is 3 + 4?\n")
    target, args = {
        "items file": (bench / "items.csv.gz", ["data", "info", bench]),
        "benchmark folder": (bench, ["data", "info", bench]),
        "router.json": (router / "router.json", ["recommend", router, "--inputs", inputs]),
        "inputs file": (inputs, ["recommend", router, "--inputs", inputs]),
    }[what]
    target.chmod(0o000)
    try:
        before = tree(env / "cache.sqlite")
        code, err = run(monkeypatch, capsys, *args)
    finally:
        target.chmod(0o755 if target.is_dir() else 0o644)
    assert_refused(code, err, str(target))
    assert "permission denied" in err or "not readable" in err, err  # click's own check names --inputs
    assert "corrupt" not in err
    assert tree(env / "cache.sqlite") == before


# ----------------------------------------------------------------------------- output paths


def _helm_args(out: Path) -> list[str]:
    return ["import", "helm", str(Path(__file__).parent / "fixtures" / "helm_run"), "-o", str(out)]


def _lmeval_args(out: Path) -> list[str]:
    return ["import", "lm-eval", str(Path(__file__).parent / "fixtures" / "lmeval"), "-o", str(out)]


OUTPUT_COMMANDS: dict[str, Callable[[dict[str, Path], Path], list[str]]] = {
    "import table": lambda w, out: import_table(w["table"], out),
    "import helm": lambda w, out: _helm_args(out),
    "import lm-eval": lambda w, out: _lmeval_args(out),
    "fit": lambda w, out: ["fit", str(w["bench"]), "-o", str(out), "--model", SMALL_MODEL],
    "experiment": lambda w, out: [
        "experiment",
        "loto",
        str(w["bench"]),
        "--out",
        str(out),
        "--model",
        SMALL_MODEL,
    ],
}


@pytest.mark.parametrize(
    "place", ["an existing file", "under a file", "a read-only folder", "under a read-only folder"]
)
@pytest.mark.parametrize("command", sorted(OUTPUT_COMMANDS))
def test_bad_output_paths_are_refused_before_any_work(
    place: str,
    command: str,
    world: dict[str, Path],
    env: Path,
    as_user: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    area = env / "area"
    area.mkdir()
    (area / "file.txt").write_text("precious")
    locked = area / "locked"
    locked.mkdir()
    (locked / "router.json").write_text("{}")
    out = {
        "an existing file": area / "file.txt",
        "under a file": area / "file.txt" / "out",
        "a read-only folder": locked,
        "under a read-only folder": locked / "new",
    }[place]
    args = OUTPUT_COMMANDS[command](world, out)
    option = "--out" if command == "experiment" else "-o"
    locked.chmod(0o555)
    try:
        before = tree(area)
        code, err = run(monkeypatch, capsys, *args)
        after = tree(area)
    finally:
        locked.chmod(0o755)
    assert_refused(code, err, option)
    assert after == before


def test_fit_keeps_a_router_folders_mode(
    world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import shutil

    router = env / "router"
    shutil.copytree(world["router"], router)
    router.chmod(0o750)
    code, err = run(monkeypatch, capsys, "fit", world["bench"], "-o", router, "--model", SMALL_MODEL)
    assert code == 0, err
    assert stat.S_IMODE(router.stat().st_mode) == 0o750


@pytest.mark.parametrize("command", ["fit", "embed --export"])
def test_full_disk_while_writing_is_one_line(
    command: str, world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    real = os.fdopen

    def full(fd: int, *a: Any, **kw: Any) -> Any:
        f = real(fd, *a, **kw)
        if "w" in (a[0] if a else kw.get("mode", "r")):

            def write(data: bytes) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            f.write = write
        return f

    out = env / ("router" if command == "fit" else "pack.safetensors")
    args = (
        ["fit", world["bench"], "-o", out, "--model", SMALL_MODEL]
        if command == "fit"
        else ["embed", world["bench"], "--model", SMALL_MODEL, "--export", out]
    )
    monkeypatch.setattr(os, "fdopen", full)
    code, err = run(monkeypatch, capsys, *args)
    monkeypatch.setattr(os, "fdopen", real)
    assert_refused(code, err, str(out), "No space left on device")
    assert not out.exists()
    assert [p.name for p in env.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------------------------ caches


def _cache_folder(p: Path) -> None:
    p.mkdir()


def _cache_text(p: Path) -> None:
    p.write_text("not a database\n" * 100)


def _cache_random(p: Path) -> None:
    p.write_bytes(b"SQLite format 3\x00" + np.random.default_rng(0).bytes(8192))


def _cache_schema(p: Path) -> None:
    with sqlite3.connect(p) as c:
        c.execute("CREATE TABLE vectors (id INTEGER PRIMARY KEY, blob BLOB)")


def _cache_readonly(p: Path) -> None:
    p.parent.chmod(0o555)


CACHES = {
    "a folder": _cache_folder,
    "a text file": _cache_text,
    "corrupt SQLite": _cache_random,
    "another schema": _cache_schema,
    "read-only location": _cache_readonly,
}


@pytest.mark.parametrize("case", sorted(CACHES))
def test_bad_cache_files_are_one_line(
    case: str, world: dict[str, Path], env: Path, as_user: None, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    where = env / "cachedir"
    where.mkdir()
    cache = where / "c.sqlite"
    CACHES[case](cache)
    try:
        before = tree(where)
        code, err = run(
            monkeypatch, capsys, "embed", world["bench"], "--model", SMALL_MODEL, "--cache", cache
        )
        after = tree(where)
    finally:
        where.chmod(0o755)
    assert_refused(code, err, str(cache if case != "read-only location" else where))
    assert after == before


def test_full_disk_in_the_cache_is_one_line(
    world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A real SQLITE_FULL: the cache may not grow past its current pages."""
    real = sqlite3.connect

    def small(*a: Any, **kw: Any) -> sqlite3.Connection:
        conn = real(*a, **kw)
        conn.execute("PRAGMA max_page_count = 8")
        return conn

    cache = env / "small.sqlite"
    monkeypatch.setattr(sqlite3, "connect", small)
    code, err = run(monkeypatch, capsys, "embed", world["bench"], "--model", SMALL_MODEL, "--cache", cache)
    monkeypatch.setattr(sqlite3, "connect", real)
    assert_refused(code, err, str(cache), "disk is full")


# ----------------------------------------------------------------------------------- packs


def _crafted_pack(path: Path, vectors: np.ndarray, model_id: str, n: int = 4) -> None:
    """A pack an attacker re-signs: valid checksum and format, hostile contents."""
    from safetensors.numpy import save

    hashes = np.frombuffer(b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(n)), np.uint8)
    hashes = hashes.reshape(n, 32)
    vectors = vectors.astype(np.float16)
    meta = {
        "format": "benchroute-embedding-pack",
        "format_version": "1",
        "model_id": model_id,
        "count": str(n),
        "dim": str(vectors.shape[1]),
        "sha256": hashlib.sha256(hashes.tobytes() + vectors.tobytes()).hexdigest(),
    }
    path.write_bytes(save({"hashes": hashes, "vectors": vectors}, metadata=meta))


MINILM_ID = "all-MiniLM-L6-v2@53aa51172d142c89"
PACKS = {
    "NaN vectors": (np.full((4, 384), np.nan), MINILM_ID),
    "inf vectors": (np.full((4, 384), np.inf), MINILM_ID),
    "3-dimensional vectors": (np.ones((4, 3)), MINILM_ID),
    "wrong dimension for the model": (np.ones((4, 768)), MINILM_ID),
    "zero vectors": (np.zeros((4, 384)), MINILM_ID),
    "malformed model id": (np.ones((4, 384)), "../../etc/passwd"),
}


@pytest.mark.parametrize("case", sorted(PACKS))
def test_crafted_packs_never_reach_the_cache(
    case: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    vectors, model_id = PACKS[case]
    pack = env / "p.safetensors"
    _crafted_pack(pack, vectors, model_id)
    before = tree(env / "cache.sqlite")
    code, err = run(monkeypatch, capsys, "embed", "--import", pack)
    assert_refused(code, err, str(pack))
    assert tree(env / "cache.sqlite") == before


def test_poisoned_cache_rows_are_recomputed(world: dict[str, Path], env: Path) -> None:
    """Rows written behind our back (NaN, wrong size, short blob) are never returned."""
    from benchroute.embed import Embedder, EmbeddingCache, text_hash

    cache = EmbeddingCache(env / "cache.sqlite")
    emb = Embedder(SMALL_MODEL, cache=cache)
    texts = TASKS["arith"][:3]
    good = emb.encode(texts)
    with cache._conn:
        cache._conn.execute(
            "UPDATE vectors SET vec = ? WHERE model = ? AND hash = ?",
            (np.full(384, np.nan, np.float32).tobytes(), emb.model_id, text_hash(texts[0])),
        )
        cache._conn.execute(
            "UPDATE vectors SET dim = 3, vec = ? WHERE hash = ?",
            (np.ones(3, np.float32).tobytes(), text_hash(texts[1])),
        )
        cache._conn.execute("UPDATE vectors SET vec = x'00' WHERE hash = ?", (text_hash(texts[2]),))
    assert emb.missing(texts) == texts
    np.testing.assert_allclose(emb.encode(texts), good, atol=1e-6)


# ---------------------------------------------------------------------------- inputs files


INPUT_FILES: dict[str, tuple[str, bytes]] = {
    "0-byte txt": ("in.txt", b""),
    "0-byte csv": ("in.csv", b""),
    "0-byte jsonl": ("in.jsonl", b""),
    "blank lines only": ("in.txt", b"\n \n\t\n"),
    "csv without input column": ("in.csv", b"text\nhello\n"),
    "csv with an unterminated quote": ("in.csv", b'input\n"hello\n'),
    "csv header only": ("in.csv", b"input\n"),
    "csv with an empty input": ("in.csv", b'input\nhello\n""\n'),
    "jsonl not an object": ("in.jsonl", b"[1, 2]\n"),
    "jsonl without input": ("in.jsonl", b'{"text": "x"}\n'),
    "jsonl nested 100000 deep": ("in.jsonl", b"[" * 100000 + b"]" * 100000 + b"\n"),
    "jsonl lone surrogate": ("in.jsonl", b'{"input": "a\\ud800b"}\n'),
    "latin-1 txt": ("in.txt", "caf\xe9\n".encode("latin-1")),
}


@pytest.mark.parametrize("command", ["recommend", "suggest-labels", "route"])
@pytest.mark.parametrize("case", sorted(INPUT_FILES))
def test_bad_inputs_files_are_one_line(
    case: str, command: str, world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    name, data = INPUT_FILES[case]
    path = env / name
    path.write_bytes(data)
    before = tree(env / "cache.sqlite")
    code, err = run(monkeypatch, capsys, command, world["router"], "--inputs", path)
    assert_refused(code, err, str(path))
    assert tree(env / "cache.sqlite") == before


LABELED = {
    "null": None,
    '"yes"': "yes",
    "an object": {"x": 1},
    "2": 2,
    "a list": [1],
    "NaN": float("nan"),
}


@pytest.mark.parametrize("case", sorted(LABELED))
def test_bad_labeled_values_name_file_and_row(
    case: str, world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    inputs = env / "in.txt"
    inputs.write_text("What is 1 + 1?\nCapital of Chile?\n")
    labeled = env / "lab.jsonl"
    good = {"input": "What is 4 + 4?", "correct": dict.fromkeys(MODELS, 1)}
    bad = {"input": "Capital of Spain?", "correct": {**dict.fromkeys(MODELS, 0), MODELS[1]: LABELED[case]}}
    labeled.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    code, err = run(
        monkeypatch, capsys, "recommend", world["router"], "--inputs", inputs, "--labeled", labeled
    )
    assert_refused(code, err, str(labeled), "row 2", "m-large")


@pytest.mark.parametrize(
    "correct, expected",
    [
        ({"m-small": 1}, "no correctness for model"),
        ({**dict.fromkeys(MODELS, 1), "M-SMALL": 1}, "unknown model"),
    ],
)
def test_labeled_models_must_match_the_router(
    correct: dict[str, int],
    expected: str,
    world: dict[str, Path],
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    inputs = env / "in.txt"
    inputs.write_text("What is 1 + 1?\n")
    labeled = env / "lab.jsonl"
    labeled.write_text(json.dumps({"input": "What is 4 + 4?", "correct": correct}) + "\n")
    code, err = run(
        monkeypatch, capsys, "recommend", world["router"], "--inputs", inputs, "--labeled", labeled
    )
    assert_refused(code, err, str(labeled), "row 1", expected)


def test_lines_split_at_newline_only(tmp_path: Path) -> None:
    from benchroute.cli.inputs import read_inputs

    txt = tmp_path / "in.txt"
    txt.write_text("one\u2028still one\ntwo\x0cstill two\r\nthree\n", newline="")
    assert read_inputs(txt) == ["one\u2028still one", "two\x0cstill two", "three"]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes('{"input": "a\u2028b"}\n{"input": "c\\fd"}\n'.encode())
    assert read_inputs(jsonl) == ["a\u2028b", "c\x0cd"]


# ---------------------------------------------------------------------------------- options


OPTIONS = [
    ("embed", "--batch-size", "0"),
    ("embed", "--batch-size", "-3"),
    ("embed", "--commit-every", "0"),
    ("embed", "--commit-every", "-1"),
    ("serve", "--port", "99999"),
    ("serve", "--port", "0"),
    ("recommend", "--cost-weight", "nan"),
    ("recommend", "--cost-weight", "inf"),
    ("recommend", "--cost-weight", "-1"),
    ("recommend", "--max-cost", "nan"),
    ("recommend", "--cheapest-within", "-0.5"),
    ("suggest-labels", "--budget", "0"),
    ("fit", "--k", "0"),
    ("fit", "--eta", "nan"),
    ("fit", "--eta", "2"),
    ("experiment", "--repeats", "0"),
    ("experiment", "--seed", "-1"),
    ("import table", "--threshold", "nan"),
    ("import table", "--sep", "ab"),
]


@pytest.mark.parametrize("command, option, value", OPTIONS)
def test_bad_option_values_are_one_line(
    command: str,
    option: str,
    value: str,
    world: dict[str, Path],
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    inputs = env / "in.txt"
    inputs.write_text("What is 1 + 1?\n")
    base = {
        "embed": ["embed", world["bench"], "--model", SMALL_MODEL],
        "serve": ["serve", world["router"]],
        "recommend": ["recommend", world["router"], "--inputs", inputs],
        "suggest-labels": ["suggest-labels", world["router"], "--inputs", inputs],
        "fit": ["fit", world["bench"], "-o", env / "r", "--model", SMALL_MODEL],
        "experiment": ["experiment", "loto", world["bench"], "--out", env / "x"],
        "import table": import_table(world["table"], env / "imp"),
    }[command]
    before = tree(env)
    code, err = run(
        monkeypatch,
        capsys,
        *base,
        f"{option}={value}" if value.startswith("-") else option,
        *([] if value.startswith("-") else [value]),
    )
    assert_refused(code, err, option)
    assert tree(env) == before


# ------------------------------------------------------------------------ silent mistakes


NAME_TWINS = {
    "case": ("GPT-4", "gpt-4"),
    "surrounding whitespace": ("gpt-4", " gpt-4"),
    "zero-width space": ("gpt-4", "gpt\u200b-4"),
    "BOM": ("gpt-4", "\ufeffgpt-4"),
    "non-breaking space": ("gpt 4", "gpt\u00a04"),
}


@pytest.mark.parametrize("case", sorted(NAME_TWINS))
@pytest.mark.parametrize("reader", ["import table", "data info"])
def test_model_names_that_look_the_same_are_refused(
    case: str, reader: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from benchroute.data.benchmark import write_benchmark

    a, b = NAME_TWINS[case]
    rows = [
        {"task": t, "prompt": f"{t} q{i}", "model": m, "acc": 1.0}
        for t in ("t1", "t2")
        for i in range(3)
        for m in (a, b, "other")
    ]
    if reader == "import table":
        src = env / "s.csv"
        pd.DataFrame(rows).to_csv(src, index=False)
        code, err = run(monkeypatch, capsys, *import_table(src, env / "out"))
        named = src
    else:
        frame = pd.DataFrame(rows).rename(columns={"prompt": "input", "acc": "score"})
        frame["item_id"] = frame["input"]
        named = write_benchmark(env / "b", frame[["task", "item_id", "input"]].drop_duplicates(), frame)
        code, err = run(monkeypatch, capsys, "data", "info", named)
    assert_refused(code, err, str(named), "differ only in case")
    assert not (env / "out").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_chat_message_prompts_are_joined_and_other_structures_refused(
    fmt: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from benchroute.data.benchmark import load_benchmark

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}]
    rows = [
        {"task": t, "prompt": [*chat, {"role": "user", "content": f"{t}{i}"}], "model": m, "acc": 1.0}
        for t in ("t1", "t2")
        for i in range(2)
        for m in ("a", "b")
    ]

    def write(frame: pd.DataFrame, path: Path) -> Path:
        if fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path)
        return path

    src = write(pd.DataFrame(rows), env / f"ok.{fmt}")
    code, err = run(monkeypatch, capsys, *import_table(src, env / "out"))
    assert code == 0, err
    first = load_benchmark(env / "out").inputs[0]
    assert first == "system: Be brief.\n\nuser: 2 + 2?\n\nuser: t10", first
    rows[3]["prompt"] = {"text": "a dict"}
    if fmt == "parquet":  # a parquet column has one type: a list of plain strings instead
        for r in rows:
            r["prompt"] = ["not", "messages"]
    bad = write(pd.DataFrame(rows), env / f"bad.{fmt}")
    code, err = run(monkeypatch, capsys, *import_table(bad, env / "out2"))
    assert_refused(code, err, str(bad), "not text")


def test_sep_option_and_bundled_names(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, world: dict[str, Path]
) -> None:
    from benchroute.data.benchmark import _available

    assert "packs" not in _available()
    src = env / "s.txt"
    pd.read_csv(world["table"]).to_csv(src, index=False, sep=";")
    code, err = run(monkeypatch, capsys, *import_table(src, env / "out"), "--sep", ";")
    assert code == 0, err
    code, err = run(monkeypatch, capsys, "data", "info", "packs")
    assert_refused(code, err, "packs")
    assert "packs" not in err.split("bundled name:")[-1]


# ------------------------------------------------------------------------ route and tables


def test_route_inputs_file_json(
    world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    inputs = env / "q.jsonl"
    inputs.write_text("".join(json.dumps({"input": x}) + "\n" for x in TASKS["arith"]))
    monkeypatch.setattr(
        sys, "argv", ["benchroute", "route", str(world["router"]), "--inputs", str(inputs), "--json"]
    )
    from benchroute.cli.commands import main

    capsys.readouterr()
    main()
    out = json.loads(capsys.readouterr().out)
    assert len(out) == len(TASKS["arith"]) and all(d["model"] in MODELS for d in out)
    code, err = run(monkeypatch, capsys, "route", world["router"], "a query", "--inputs", inputs)
    assert_refused(code, err, "--inputs")


def test_recommend_table_shows_whole_long_names(
    world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import io

    import rich.console

    import benchroute.cli.commands as commands

    inputs = env / "in.txt"
    inputs.write_text("What is 1 + 1?\nCapital of Chile?\n")
    for width in (40, 80, 200):
        for args in (["recommend", world["router"], "--inputs", inputs], ["data", "info", world["bench"]]):
            buffer = io.StringIO()
            monkeypatch.setattr(commands, "console", rich.console.Console(file=buffer, width=width))
            code, err = run(monkeypatch, capsys, *args)
            assert code == 0, err
            assert LONG_MODEL in buffer.getvalue(), (width, buffer.getvalue())


def test_many_inputs_show_progress_and_keep_memory_flat(
    world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """100k inputs: a progress bar with a time estimate, and the peak Python memory of the run is a
    small multiple of the query matrix (embedded in windows into one preallocated array; a stand-in
    model, so the test measures the CLI and the router, not the transformer)."""
    import tracemalloc

    from benchroute.router.estimator import Router

    class StubEmbedder:
        model = "stub"

        def encode(self, texts: list[str], progress: Any = None) -> np.ndarray:
            rng = np.random.default_rng(len(texts))
            v = rng.normal(size=(len(texts), 384)).astype(np.float32)
            if progress:
                progress(len(texts))
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr(Router, "embedder", property(lambda self: StubEmbedder()))
    n = 100_000
    inputs = env / "many.txt"
    inputs.write_text("".join(f"question number {i}\n" for i in range(n)))
    tracemalloc.start()
    code, err = run(monkeypatch, capsys, "recommend", world["router"], "--inputs", inputs, "--json")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert code == 0, err
    assert "embedding inputs" in err and "100%" in err and "inputs/s" in err
    assert re.search(r"\d:\d\d:\d\d\s*$", err.strip()), err  # elapsed and remaining time
    result = n * 384 * 4  # the query matrix itself; Router.recommend holds about two more copies
    assert peak < 4 * result, (peak, result)


# --------------------------------------------------------------------- re-signed routers


def _blend(k: Any) -> dict[str, Any]:
    return {"k": k, "lam": 0.5, "inner_accuracy": 0.5, "bma_inner_accuracy": 0.5}


MANIFEST_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "blend.k a string": lambda p: p.__setitem__("blend", _blend("50")),
    "blend.k 2.5": lambda p: p.__setitem__("blend", _blend(2.5)),
    "blend.lam NaN-like": lambda p: p.__setitem__("blend", {**_blend(5), "lam": 1e309}),
    "blend with an unknown field": lambda p: p.__setitem__("blend", {**_blend(5), "x": 1}),
    "predictor mlp on kNN arrays": lambda p: p["params"].__setitem__("predictor", "mlp"),
    "mlp hidden 10**9": lambda p: (
        p["params"].__setitem__("predictor", "mlp"),
        p.__setitem__("predictor_params", {"hidden": [10**9]}),
    ),
    "knn k a string": lambda p: p.__setitem__("predictor_params", {"k": "5"}),
}


@pytest.mark.parametrize("case", [*sorted(MANIFEST_EDITS), "deeply nested JSON", "card.md edited"])
@pytest.mark.parametrize("command", ["recommend", "route"])
def test_resigned_routers_are_refused_on_load(
    case: str, command: str, world: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A re-signed router with bad field types or ranges is refused when it is loaded (so the server
    refuses it at startup), never a TypeError on the first query."""
    import shutil

    router = env / "router"
    shutil.copytree(world["router"], router)
    manifest = router / "router.json"
    if case == "deeply nested JSON":
        manifest.write_text("[" * 100_000 + "]" * 100_000)
    elif case == "card.md edited":
        (router / "card.md").write_text("# a different card\n")
    else:
        payload = json.loads(manifest.read_text())["payload"]
        MANIFEST_EDITS[case](payload)
        text = json.dumps(payload, sort_keys=True)
        manifest.write_text(
            json.dumps({"payload": payload, "sha256": hashlib.sha256(text.encode()).hexdigest()})
        )
    inputs = env / "in.txt"
    inputs.write_text("What is 1 + 1?\n")
    args = (
        ["recommend", router, "--inputs", inputs] if command == "recommend" else ["route", router, "a query"]
    )
    before = tree(router)
    code, err = run(monkeypatch, capsys, *args)
    assert_refused(code, err, str(router))
    assert tree(router) == before
