"""Nearest-neighbour search by cosine similarity over normalized embeddings.

Every part of the method is built on "the k nearest training inputs of x": the kNN predictor, the
dataset distance u(d) and the fast leave-one-task-out engine. Vectors are normalized once, so the
cosine similarity is a dot product: exact search is a chunked matrix product plus a partial sort
(numpy), and large stores switch to a FAISS index (exact flat, or HNSW when approximate is allowed).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Backend = Literal["auto", "numpy", "faiss-flat", "faiss-hnsw"]

#: Above this many stored vectors "auto" uses FAISS' flat index (faster BLAS path, same results).
FAISS_MIN_STORE = 50_000


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
    # lexicographic: by similarity descending, then by index ascending for a deterministic order
    order = np.lexsort((part, -part_sims), axis=1)
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


class NeighborIndex:
    """A searchable store of normalized vectors: numpy exact, FAISS flat (exact) or FAISS HNSW.

    Parameters
    ----------
    backend : "auto" picks numpy below :data:`FAISS_MIN_STORE` vectors and FAISS flat above;
        "faiss-hnsw" is approximate (recall reported by benchmarks/bench_route.py).
    hnsw_m, ef_search : HNSW graph degree and search breadth.
    """

    def __init__(self, backend: Backend = "auto", hnsw_m: int = 32, ef_search: int = 128) -> None:
        self.backend = backend
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search

    def fit(self, store: np.ndarray) -> NeighborIndex:
        self.store_ = normalize(store)
        backend = self.backend
        if backend == "auto":
            backend = "faiss-flat" if len(self.store_) >= FAISS_MIN_STORE else "numpy"
        self.backend_ = backend
        self.faiss_index_ = None
        if backend.startswith("faiss"):
            import faiss

            dim = self.store_.shape[1]
            if backend == "faiss-flat":
                index = faiss.IndexFlatIP(dim)
            else:
                index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = self.ef_search
            index.add(self.store_)
            self.faiss_index_ = index
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, indices), each n_queries x k, most similar first."""
        q = normalize(queries)
        if self.faiss_index_ is None:
            return exact_search(q, self.store_, k)
        k = min(k, len(self.store_))
        sims, idx = self.faiss_index_.search(q, k)
        return sims.astype(np.float32), idx.astype(np.int64)

    def __len__(self) -> int:
        return len(self.store_)


def cross_task_neighbors(
    emb: np.ndarray, task_index: np.ndarray, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """For every item, its ``depth`` nearest items from OTHER tasks, most similar first.

    This one pass serves every leave-one-task-out fold: the neighbours of an item of task d with
    tasks {d, d'} removed are this list with d' filtered out, as long as ``depth`` exceeds the
    number of neighbours needed plus the size of the largest task.
    """
    emb = normalize(emb)
    n = len(emb)
    depth = min(depth, n)
    out_s = np.zeros((n, depth), np.float32)
    out_i = np.zeros((n, depth), np.int64)
    step = _chunk_rows(n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        sims = emb[start:stop] @ emb.T
        same = task_index[start:stop, None] == task_index[None, :]
        sims[same] = -np.inf
        s, i = topk_from_similarity(sims, depth)
        out_s[start:stop], out_i[start:stop] = s, i
    return out_s, out_i
