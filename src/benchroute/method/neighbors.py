"""Nearest-neighbour search by cosine similarity over normalized embeddings.

Every part of the method is built on "the k nearest training inputs of x": the kNN predictor, the
dataset distance u(d) and the fast leave-one-task-out engine. Vectors are normalized once, so the
cosine similarity is a dot product. :class:`NeighborIndex` picks how to search a store by its size:
exact numpy (a chunked matrix product plus a partial sort), FAISS' flat index (exact, faster
kernels) and, for large stores, an approximate FAISS index (IVF by default, or HNSW). A store that
is memory-mapped (``np.load(path, mmap_mode="r")``) is never read into memory as a whole: exact
search walks it in row blocks and merges the per-block top-k, and IVF trains on a sample of it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import numpy as np

from benchroute.errors import ConfigError, NotFittedError

Backend = Literal["auto", "numpy", "faiss-flat", "faiss-ivf", "faiss-hnsw"]
BACKENDS: tuple[str, ...] = ("auto", "numpy", "faiss-flat", "faiss-ivf", "faiss-hnsw")

#: From this many stored vectors "auto" uses FAISS' flat index (faster kernels, same neighbours).
FAISS_MIN_STORE = 50_000
#: From this many stored vectors "auto" uses the approximate index: exact search reads the whole
#: store per query (~20 ms at 100k x 768 float32 on a 2-core machine, memory-bandwidth bound),
#: while IVF reads a few percent of it (benchmarks/bench_route.py).
APPROX_MIN_STORE = 100_000
#: IVF codecs accepted (FAISS index_factory codes for the vectors inside the lists).
_CODEC = re.compile(r"Flat|SQfp16|SQbf16|SQ8|SQ6|SQ4|PQ[1-9][0-9]{0,3}(x[4-8])?")


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of embeddings, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _chunk_rows(n_store: int, budget: int = 64_000_000) -> int:
    """Query rows per chunk so one similarity block stays under ``budget`` floats (~256 MB)."""
    return max(1, min(4096, budget // max(n_store, 1)))


def _rank_order(sims: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per row, the order by similarity descending, ties by lower index: every search's one ordering."""
    return np.lexsort((idx, -sims), axis=1)


def topk_from_similarity(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries per row, sorted descending (ties: lower index first)."""
    n, m = sims.shape
    k = min(k, m)
    if k == 0:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    if k < m:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(m), (n, m)).copy()
    part_sims = np.take_along_axis(sims, part, axis=1)
    order = _rank_order(part_sims, part)
    idx = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(part_sims, order, axis=1), idx.astype(np.int64)


def exact_search(
    queries: np.ndarray,
    store: np.ndarray,
    k: int,
    *,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine neighbours of each query in ``store`` (both normalized).

    ``exclude`` (n_queries x n_store bool, or a callable-free row mask shared by all queries as a
    1-d n_store array) removes candidates, e.g. the query's own task.
    """
    nq = queries.shape[0]
    out_s = np.zeros((nq, min(k, store.shape[0])), np.float32)
    out_i = np.zeros((nq, min(k, store.shape[0])), np.int64)
    step = _chunk_rows(store.shape[0])
    for start in range(0, nq, step):
        sims = queries[start : start + step] @ store.T
        if exclude is not None:
            mask = exclude if exclude.ndim == 1 else exclude[start : start + step]
            sims = np.where(mask, -np.inf, sims)
        s, i = topk_from_similarity(sims, k)
        out_s[start : start + step], out_i[start : start + step] = s, i
    return out_s, out_i


def merge_topk(sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of candidate lists (n x c, indices may repeat nothing), same order as exact search.

    Sorted by similarity descending, ties by lower index first, so merged per-block results are
    identical to one search over the whole store. Candidates with index -1 (FAISS' "none") sort last.
    """
    sims = np.where(idx < 0, -np.inf, sims)
    order = _rank_order(sims, idx)[:, :k]
    return np.take_along_axis(sims, order, axis=1).astype(np.float32), np.take_along_axis(idx, order, axis=1)


def default_nlist(n: int) -> int:
    """IVF lists for n vectors: 4 sqrt(n) (FAISS' guideline is 4-16 sqrt(n)), >= 39 training points each."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def default_nprobe(nlist: int) -> int:
    """Lists searched per query: sqrt(nlist), at least 16 (about N^(3/4) / 2 vectors read per query).

    Measured in benchmarks/bench_route.py: at 100k, 36 of 1,265 lists give recall@5 0.95 for queries
    of tasks absent from the store (1.00 for questions of stored tasks) in about half a millisecond.
    """
    return max(1, min(nlist, max(16, round(math.sqrt(nlist)))))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` itself when it is already normalized float32 (no second copy of a big store), else a copy."""
    if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous:
        norms = np.einsum("ij,ij->i", x, x)
        if np.all((np.abs(norms - 1.0) < 1e-5) | (norms == 0)):
            return x
    return np.ascontiguousarray(normalize(x))


class NeighborIndex:
    """A searchable store of vectors by cosine similarity: exact (numpy, FAISS flat) or approximate.

    Parameters
    ----------
    backend : "auto" (default), "numpy", "faiss-flat", "faiss-ivf" or "faiss-hnsw". "auto" uses numpy
        below ``flat_min`` vectors, FAISS flat (exact) below ``approx_min`` and the ``approx`` index
        from there on; a memory-mapped store is always searched exactly in blocks under "auto" (an
        approximate index keeps its vectors in RAM unless ``ivf_codec`` compresses them).
    flat_min, approx_min : the "auto" thresholds [50,000; 100,000]; ``approx_min=None`` never approximates.
    approx : the approximate index "auto" uses: "ivf" (default: better recall per millisecond on
        held-out tasks, deterministic rebuild, trains on a sample) or "hnsw".
    nlist, nprobe : IVF lists and lists searched per query [None: :func:`default_nlist` and
        :func:`default_nprobe` of the store size].
    ivf_codec : how IVF stores the vectors, a FAISS factory code ["SQfp16": half of float32, read twice
        as fast, same recall as "Flat" in bench_route]; "SQ8", "PQ64", ... are smaller and lossier.
    refine : search ``refine * k`` candidates in the approximate index, then re-rank them exactly
        against the stored vectors [2: the returned similarities are exact; 1 = off].
    train_size : vectors sampled to train IVF [None: 50 per list, at most the store].
    hnsw_m, ef_search, ef_construction : HNSW graph degree, search and construction breadth.
    block_rows : rows per block when a memory-mapped store is searched exactly or added to an index.
    seed : the IVF training sample and its k-means.
    """

    def __init__(
        self,
        backend: Backend = "auto",
        flat_min: int = FAISS_MIN_STORE,
        approx_min: int | None = APPROX_MIN_STORE,
        approx: Literal["ivf", "hnsw"] = "ivf",
        nlist: int | None = None,
        nprobe: int | None = None,
        ivf_codec: str = "SQfp16",
        refine: int = 2,
        train_size: int | None = None,
        hnsw_m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 40,
        block_rows: int = 65_536,
        seed: int = 0,
    ) -> None:
        self.backend = backend
        self.flat_min = flat_min
        self.approx_min = approx_min
        self.approx = approx
        self.nlist = nlist
        self.nprobe = nprobe
        self.ivf_codec = ivf_codec
        self.refine = refine
        self.train_size = train_size
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.ef_construction = ef_construction
        self.block_rows = block_rows
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters (JSON-safe: what a saved router stores to rebuild the index)."""
        return {name: getattr(self, name) for name in INDEX_PARAMS}

    def _check_params(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown neighbour index {self.backend!r}", f"use one of {', '.join(BACKENDS)}"
            )
        if self.approx not in ("ivf", "hnsw"):
            raise ConfigError(f"approx must be 'ivf' or 'hnsw', got {self.approx!r}")
        limits = {"hnsw_m": 512, "ef_search": 1 << 16, "ef_construction": 1 << 16, "refine": 1024}
        positive = {
            "flat_min": self.flat_min,
            "approx_min": self.approx_min,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "refine": self.refine,
            "train_size": self.train_size,
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
            "ef_construction": self.ef_construction,
            "block_rows": self.block_rows,
        }
        optional = {"approx_min", "nlist", "nprobe", "train_size"}
        for name, value in positive.items():
            if value is None and name in optional:
                continue
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < (0 if name.endswith("_min") else 1)
            ):
                raise ConfigError(f"index parameter {name} must be a positive integer, got {value!r}")
            if value > limits.get(name, 1 << 62):
                raise ConfigError(f"index parameter {name} = {value} is above its limit {limits[name]}")
        if not isinstance(self.ivf_codec, str) or not _CODEC.fullmatch(self.ivf_codec):
            # a closed list: the codec may come from a saved router's manifest, which is untrusted data
            raise ConfigError(
                f"ivf_codec must be one FAISS code such as 'Flat', 'SQ8' or 'PQ64', got {self.ivf_codec!r}",
                "use Flat, SQfp16, SQbf16, SQ8, SQ6, SQ4 or PQ<m>[x<bits>]",
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**31:
            raise ConfigError(f"seed must be an integer in [0, 2^31), got {self.seed!r}")

    def _resolve(self, n: int) -> str:
        if self.backend != "auto":
            return self.backend
        if self.mapped_ or n < self.flat_min:
            return "numpy"
        if self.approx_min is None or n < self.approx_min:
            return "faiss-flat"
        return f"faiss-{self.approx}"

    def fit(self, store: np.ndarray) -> NeighborIndex:
        """Index ``store`` (n x d). A ``np.memmap`` is kept mapped: nothing but blocks is read into RAM."""
        self._check_params()
        if getattr(store, "ndim", 0) != 2 or len(store) == 0:
            raise ConfigError(
                f"expected a non-empty 2-d array of embeddings, got shape {getattr(store, 'shape', None)}"
            )
        self.mapped_ = isinstance(store, np.memmap)
        self.store_ = store if self.mapped_ else _unit_rows(store)
        n, dim = self.store_.shape
        self.backend_ = self._resolve(n)
        self.faiss_index_: Any = None
        self.nlist_: int | None = None
        self.nprobe_: int | None = None
        if self.backend_ == "numpy" or (self.backend_ == "faiss-flat" and self.mapped_):
            return self  # exact: in memory, or in blocks over the mapped store
        import faiss

        index: Any
        if self.backend_ == "faiss-flat":
            index = faiss.IndexFlatIP(dim)
        elif self.backend_ == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        else:
            index = self._train_ivf(faiss, n, dim)
        for _, block in self._blocks():
            index.add(block)
        self.faiss_index_ = index
        return self

    def _train_ivf(self, faiss: Any, n: int, dim: int) -> Any:
        nlist = min(self.nlist or default_nlist(n), n)
        self.nlist_, self.nprobe_ = nlist, min(self.nprobe or default_nprobe(nlist), nlist)
        try:
            index = faiss.index_factory(dim, f"IVF{self.nlist_},{self.ivf_codec}", faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ConfigError(
                f"FAISS does not know the IVF codec {self.ivf_codec!r}",
                "use 'Flat', 'SQfp16', 'SQ8' or 'PQ<m>' with m dividing the dimension",
            ) from exc
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = self.seed
        ivf.nprobe = self.nprobe_
        size = min(n, self.train_size or 50 * nlist)
        rows = np.sort(np.random.default_rng(self.seed).choice(n, size, replace=False))
        index.train(self._rows(rows))  # a sample: a mapped store is read only at these rows
        return index

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        """Normalized float32 copies of the given stored rows (reads only those rows of a mapped store)."""
        return self.store_[rows] if not self.mapped_ else np.ascontiguousarray(normalize(self.store_[rows]))

    def _blocks(self) -> Any:
        """(first row, normalized float32 block) over the store; one block when it is in memory."""
        if not self.mapped_:
            yield 0, self.store_
            return
        for start in range(0, len(self.store_), self.block_rows):
            yield start, np.ascontiguousarray(normalize(self.store_[start : start + self.block_rows]))

    def search(
        self, queries: np.ndarray, k: int, *, normalized: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, indices), each n_queries x min(k, n_store), most similar first.

        ``normalized=True`` promises unit-length float32 queries (skips re-normalizing them).
        """
        if not hasattr(self, "backend_"):
            raise NotFittedError("this NeighborIndex is not fitted yet", "call fit(store) first")
        q = np.ascontiguousarray(queries if normalized else normalize(queries), dtype=np.float32)
        if q.shape[1] != self.store_.shape[1]:
            raise ConfigError(f"queries have {q.shape[1]} dimensions, the store has {self.store_.shape[1]}")
        k = min(k, len(self.store_))
        if self.faiss_index_ is None:
            return self._exact(q, k)
        if self.backend_ == "faiss-flat":
            sims, idx = self.faiss_index_.search(q, k)
            return sims.astype(np.float32), idx.astype(np.int64)
        wide = min(len(self.store_), k * self.refine)
        sims, idx = self.faiss_index_.search(q, wide)
        idx = idx.astype(np.int64)
        if self.refine > 1:  # exact similarities of the candidates, read from the stored vectors
            cand = self._rows(np.maximum(idx, 0).ravel()).reshape(*idx.shape, -1)
            sims = np.einsum("nkd,nd->nk", cand, q)
        sims, idx = merge_topk(sims, idx, k)
        short = (idx < 0).any(axis=1)  # the probed lists held fewer than k vectors: search those exactly
        if short.any():
            sims[short], idx[short] = self._exact(q[short], k)
        return sims, idx

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        best_s = np.zeros((len(q), 0), np.float32)
        best_i = np.zeros((len(q), 0), np.int64)
        for start, block in self._blocks():
            s, i = exact_search(q, block, k)
            if not self.mapped_:
                return s, i
            best_s, best_i = merge_topk(np.hstack([best_s, s]), np.hstack([best_i, i + start]), k)
        return best_s, best_i

    def describe(self) -> dict[str, Any]:
        """The resolved choice (for model cards and benchmarks): backend, size, IVF lists and probes."""
        info: dict[str, Any] = {"backend": self.backend_, "n": len(self.store_), "mapped": self.mapped_}
        if self.backend_ == "faiss-ivf":
            info.update(nlist=self.nlist_, nprobe=self.nprobe_, codec=self.ivf_codec, refine=self.refine)
        elif self.backend_ == "faiss-hnsw":
            info.update(hnsw_m=self.hnsw_m, ef_search=self.ef_search)
        return info

    def __len__(self) -> int:
        return len(self.store_)


#: NeighborIndex's parameters, in constructor order (what ``index_params`` may set).
INDEX_PARAMS: tuple[str, ...] = (
    "backend",
    "flat_min",
    "approx_min",
    "approx",
    "nlist",
    "nprobe",
    "ivf_codec",
    "refine",
    "train_size",
    "hnsw_m",
    "ef_search",
    "ef_construction",
    "block_rows",
    "seed",
)


def cross_task_neighbors(
    emb: np.ndarray, task_index: np.ndarray, depth: int, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For every item (or only ``rows``), its ``depth`` nearest items from OTHER tasks, most similar first.

    This one pass serves every leave-one-task-out fold: the neighbours of an item of task d with
    tasks {d, d'} removed are this list with d' filtered out, as long as ``depth`` exceeds the
    number of neighbours needed plus the size of the largest task. ``rows`` lets benchmarks time
    a sample of this quadratic pass on stores too large to run it whole.
    """
    emb = normalize(emb)
    n = len(emb)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    depth = min(depth, n)
    out_s = np.zeros((len(rows), depth), np.float32)
    out_i = np.zeros((len(rows), depth), np.int64)
    step = _chunk_rows(n)
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        sims = emb[chunk] @ emb.T
        same = task_index[chunk, None] == task_index[None, :]
        sims[same] = -np.inf
        s, i = topk_from_similarity(sims, depth)
        out_s[start : start + len(chunk)], out_i[start : start + len(chunk)] = s, i
    return out_s, out_i
