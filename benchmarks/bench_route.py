"""Per-query routing latency after embedding, for stores of 10k, 100k and 1M questions.

A route is one k-NN search over the stored question embeddings plus an n x M label average and an
argmax. Synthetic normalized vectors (clustered, so neighbours are meaningful) stand in for a large
benchmark; labels are random 0/1 for M models. For each store size: exact numpy search, FAISS flat
(exact) and FAISS HNSW (approximate, recall@k against the exact neighbours reported).
p50 / p99 over single-query calls of ``KNNCorrectness.predict_proba`` + argmax, i.e. ``Router.route``
minus the embedding. Target: < 1 ms p50 at 100k.

    python benchmarks/bench_route.py [--sizes 10000 100000 1000000] [--dim 768] [--models 78]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchroute.predictors import KNNCorrectness


def synthetic(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centers = rng.standard_normal((max(8, n // 500), dim)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def latency(pred: KNNCorrectness, queries: np.ndarray) -> tuple[float, float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        int(np.argmax(pred.predict_proba(q[None, :])[0]))
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--models", type=int, default=78)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this size (build time)")
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead (as when serving)
    rng = np.random.default_rng(0)
    print(f"{'store':>9} {'backend':>11} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@k':>9}")
    for n in args.sizes:
        store = synthetic(n, args.dim, rng)
        labels = (rng.random((n, args.models)) < 0.5).astype(np.float32)
        queries = synthetic(args.queries, args.dim, rng)
        exact_idx = None
        for backend in ("numpy", "faiss-flat", "faiss-hnsw"):
            if backend == "faiss-hnsw" and n > args.hnsw_max:
                continue
            t = time.perf_counter()
            pred = KNNCorrectness(k=args.k, backend=backend).fit(store, labels)
            build = time.perf_counter() - t
            p50, p99 = latency(pred, queries)
            _, idx = pred.kneighbors(queries)
            if exact_idx is None:
                exact_idx = idx
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(idx, exact_idx, strict=True)])
            print(f"{n:>9,} {backend:>11} {build:>8.1f} {p50:>8.3f} {p99:>8.3f} {recall:>9.3f}", flush=True)
        del store, labels


if __name__ == "__main__":
    main()
