"""Per-query routing latency after embedding, for stores of 10k, 100k and 1M questions.

A route is one k-NN search over the stored question embeddings, the neighbours' mean 0/1 label for
each of M models and an argmax (``KNNCorrectness.predict_proba`` + argmax: ``Router.route`` minus the
embedding and the per-model dict it builds). For each store size it times single-query calls with
exact numpy search, FAISS flat (exact) and the approximate indexes (IVF with the store-size defaults
of ``NeighborIndex``, HNSW), and reports recall@k against the exact neighbours plus the share of
queries routed to the same model as with exact search. Target (issue 7): < 1 ms p50 at 100k.

Data (``ClusteredEmbeddings``): synthetic 768-d unit vectors shaped like sentence embeddings of
benchmark questions: tasks ("topics", ~250 questions each) > subtopics (25) > near-duplicate groups
(5), each level a Gaussian offset with a power-law spectrum in a random rotation, plus a common mean
direction and isotropic noise. Calibrated against all-mpnet-base-v2 on openllm_v2 (8,382 questions):
mean similarity to the 1st / 5th / 50th neighbour 0.90 / 0.85 / 0.70 (real 0.86 / 0.79 / 0.70),
median pair 0.11 (real 0.13). Labels: per task and model a Bernoulli rate (model skill + task effect),
so neighbours' labels carry signal. Queries: 300 held-back questions of stored tasks ("seen task")
and 300 questions of tasks absent from the store ("new task", the harder case for IVF/HNSW). When the
openllm_v2 embeddings are cached, the approximate indexes are also checked on the real store with
each task held out in turn (real queries are harder than synthetic ones: see benchmarks/README.md).

    python benchmarks/bench_route.py [--sizes 10000 100000 1000000] [--sweep-size 100000]

Runs ~16 min on 2 cores with the defaults (1M: generation, exact search of 100 queries, IVF build).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

import numpy as np

from benchroute.method.neighbors import NeighborIndex, default_nlist, default_nprobe, normalize
from benchroute.method.predictors import KNNCorrectness


class ClusteredEmbeddings:
    """Synthetic sentence-embedding-like unit vectors: tasks > subtopics > near-duplicate groups."""

    def __init__(
        self,
        dim: int = 768,
        seed: int = 0,
        task_size: int = 250,
        sub_size: int = 25,
        group_size: int = 5,
        spread: tuple[float, float, float, float] = (2.0, 1.1, 1.0, 0.8),
        decay: float = 1.1,
        mean: float = 0.85,
        iso: float = 0.55,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        self.sizes = (task_size, sub_size, group_size)
        self.spread, self.iso = spread, iso
        lam = np.arange(1, dim + 1, dtype=np.float64) ** -decay
        self.scale = np.sqrt(lam / lam.sum()).astype(np.float32)  # power-law spectrum, total variance 1
        self.rot = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        m = rng.standard_normal(dim).astype(np.float32)
        self.mean = m * (mean / np.linalg.norm(m))

    def _offsets(self, rng: np.random.Generator, n: int, level: int) -> np.ndarray:
        return rng.standard_normal((n, self.dim), dtype=np.float32) * (self.scale * self.spread[level])

    def task(self, t: int, n_items: int) -> np.ndarray:
        """``n_items`` unit vectors of task ``t`` (deterministic in (seed, t))."""
        rng = np.random.default_rng([self.seed, t])
        _, sub_size, group_size = self.sizes
        center = self._offsets(rng, 1, 0)
        subs = center + self._offsets(rng, math.ceil(n_items / sub_size), 1)
        n_groups = math.ceil(n_items / group_size)
        groups = subs[rng.integers(0, len(subs), n_groups)] + self._offsets(rng, n_groups, 2)
        z = groups[rng.integers(0, n_groups, n_items)] + self._offsets(rng, n_items, 3)
        x = z @ self.rot + self.mean
        x += rng.standard_normal(x.shape, dtype=np.float32) * (self.iso / math.sqrt(self.dim))
        return normalize(x)


def make_store(n: int, dim: int, n_models: int, n_queries: int, seed: int = 0) -> dict[str, Any]:
    """Store (n x dim), labels (n x M uint8), and seen-task / new-task query sets."""
    gen = ClusteredEmbeddings(dim, seed)
    rng = np.random.default_rng(seed)
    task_size = gen.sizes[0]
    n_tasks = math.ceil((n + n_queries) / task_size)
    X = np.empty((n_tasks * task_size, dim), np.float32)
    for t in range(n_tasks):
        X[t * task_size : (t + 1) * task_size] = gen.task(t, task_size)
    task = np.repeat(np.arange(n_tasks), task_size)
    held = np.zeros(len(X), bool)
    held[rng.choice(len(X), len(X) - n, replace=False)] = True  # held-back questions of stored tasks
    skill = rng.normal(0.0, 1.0, n_models)
    rate = 1 / (1 + np.exp(-(skill + rng.normal(0.0, 1.5, (n_tasks, n_models)))))
    labels = np.empty((len(X), n_models), np.uint8)
    for start in range(0, len(X), 100_000):
        stop = min(len(X), start + 100_000)
        labels[start:stop] = rng.random((stop - start, n_models)) < rate[task[start:stop]]
    new = np.vstack([gen.task(n_tasks + j, 50) for j in range(math.ceil(n_queries / 50))])[:n_queries]
    seen = X[held][:n_queries]
    keep = np.flatnonzero(~held)
    return {"store": X[keep], "labels": labels[keep], "seen": seen, "new": new}


def latency(pred: KNNCorrectness, queries: np.ndarray) -> tuple[float, float]:
    """p50 / p99 milliseconds of single-query predict_proba + argmax."""
    times = []
    for q in queries:
        t = time.perf_counter()
        int(np.argmax(pred.predict_proba(q[None, :])[0]))
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def recall(idx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(idx, exact, strict=True)]))


def same_route(pred: KNNCorrectness, queries: np.ndarray, exact_choice: np.ndarray) -> float:
    return float((pred.predict_proba(queries).argmax(axis=1) == exact_choice).mean())


def run_size(n: int, args: argparse.Namespace) -> None:
    import faiss

    t0 = time.perf_counter()
    data = make_store(n, args.dim, args.models, args.queries)
    store, labels = data["store"], data["labels"]
    queries = np.vstack([data["seen"], data["new"]])
    nq = args.queries
    print(
        f"\n{n:,} stored questions ({store.nbytes / 2**30:.2f} GiB float32; generated in "
        f"{time.perf_counter() - t0:.0f} s), {args.models} models, k={args.k}"
    )
    print(
        f"{'index':>11} {'params':>28} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'recall seen':>12} {'recall new':>11} {'same route':>11}"
    )
    exact_pred = KNNCorrectness(k=args.k, backend="numpy").fit(store, labels)
    _, exact_idx = exact_pred.kneighbors(queries)
    exact_choice = exact_pred.predict_proba(queries).argmax(axis=1)
    variants: list[tuple[str, dict[str, Any]]] = [("numpy", {}), ("faiss-flat", {}), ("faiss-ivf", {})]
    if n <= args.hnsw_max:
        variants.append(("faiss-hnsw", {}))
    if n == args.sweep_size:  # the other IVF codecs: float32 lists, and 8-bit codes re-ranked exactly
        variants += [
            ("faiss-ivf", {"ivf_codec": "Flat", "refine": 1}),
            ("faiss-ivf", {"ivf_codec": "SQ8", "refine": 4}),
        ]
    for backend, params in variants:
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # builds use both cores
        t = time.perf_counter()
        pred = (
            exact_pred
            if backend == "numpy"
            else KNNCorrectness(k=args.k, backend=backend, index_params=params).fit(store, labels)
        )
        build = time.perf_counter() - t
        faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead (as when serving)
        exact_kind = backend in ("numpy", "faiss-flat")
        p50, p99 = latency(pred, queries[::6] if n > 100_000 and exact_kind else queries)
        _, idx = pred.kneighbors(queries)
        info = pred.index_.describe()
        shown = {
            "faiss-ivf": f"{info.get('codec')} nlist={info.get('nlist')} nprobe={info.get('nprobe')}",
            "faiss-hnsw": f"M={info.get('hnsw_m')} ef={info.get('ef_search')}",
        }.get(backend, "exact")
        print(
            f"{backend:>11} {shown:>28} {build:>8.1f} {p50:>8.3f} {p99:>8.3f} "
            f"{recall(idx[:nq], exact_idx[:nq]):>12.3f} {recall(idx[nq:], exact_idx[nq:]):>11.3f} "
            f"{same_route(pred, queries, exact_choice):>11.3f}",
            flush=True,
        )
        if n == args.sweep_size:
            sweep(pred, queries, exact_idx, nq)
        del pred
    print(f"({n:,}: {time.perf_counter() - t0:.0f} s in all)")


def sweep(pred: KNNCorrectness, queries: np.ndarray, exact_idx: np.ndarray, nq: int) -> None:
    """Recall against latency for other nprobe / efSearch values on the same built index."""
    import faiss

    index = pred.index_.faiss_index_
    if pred.index_.backend_ == "faiss-ivf":
        ivf, name, values = faiss.extract_index_ivf(index), "nprobe", [4, 8, 16, 32, 64, 128]
        if pred.index_.ivf_codec != NeighborIndex().ivf_codec:
            values = [16, 32, 64]
    elif pred.index_.backend_ == "faiss-hnsw":
        ivf, name, values = index.hnsw, "efSearch", [16, 32, 64, 128, 256]
    else:
        return
    default = getattr(ivf, name)
    for v in values:
        setattr(ivf, name, v)
        if name == "nprobe":
            pred.index_.nprobe_ = v
        p50, _ = latency(pred, queries[::3])
        _, idx = pred.kneighbors(queries)
        print(
            f"{'':>11} {name + '=' + str(v):>28} {'':>8} {p50:>8.3f} {'':>8} "
            f"{recall(idx[:nq], exact_idx[:nq]):>12.3f} {recall(idx[nq:], exact_idx[nq:]):>11.3f}",
            flush=True,
        )
    setattr(ivf, name, default)


def real_store(args: argparse.Namespace) -> None:
    """openllm_v2 embeddings (if cached): recall@k with each task held out, approximate vs exact."""
    import faiss

    from benchroute.errors import BenchrouteError

    try:
        from benchroute.data.benchmark import load_benchmark
        from benchroute.embed import Embedder

        bench = load_benchmark("openllm_v2")
        emb = Embedder("all-mpnet-base-v2")
        if emb.missing(bench.inputs):
            print("\n(openllm_v2 is not embedded with all-mpnet-base-v2: skipping the real-store check)")
            return
        X = normalize(emb.encode(bench.inputs))
    except (BenchrouteError, OSError) as exc:  # the synthetic part stands on its own
        print(f"\n(real-store check skipped: {exc})")
        return
    task = np.asarray(bench.task_index)
    rng = np.random.default_rng(0)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    nprobe = default_nprobe(default_nlist(int((task != 0).sum())))
    grid = {
        "faiss-ivf": ("nprobe", [nprobe, 2 * nprobe, 4 * nprobe]),
        "faiss-hnsw": ("efSearch", [128, 256, 512]),
    }
    rec: dict[tuple[str, int], list[float]] = {}
    for d in range(int(task.max()) + 1):
        rest = np.flatnonzero(task != d)
        q = X[rng.choice(np.flatnonzero(task == d), 20, replace=False)]
        _, exact = NeighborIndex("numpy").fit(X[rest]).search(q, args.k)
        for backend, (name, values) in grid.items():
            index = NeighborIndex(backend).fit(X[rest])
            knob = (
                faiss.extract_index_ivf(index.faiss_index_)
                if backend == "faiss-ivf"
                else index.faiss_index_.hnsw
            )
            for v in values:
                setattr(knob, name, v)
                rec.setdefault((backend, v), []).append(recall(index.search(q, args.k)[1], exact))
    print(
        f"\nopenllm_v2 (all-mpnet-base-v2, {len(X):,} x {X.shape[1]}): each of the {task.max() + 1} tasks "
        "held "
        f"out in turn, 20 of its questions searched among the other tasks (nlist {default_nlist(len(rest))})"
    )
    for (backend, v), r in rec.items():
        print(
            f"{backend:>11} {grid[backend][0] + '=' + str(v):>20}  recall@{args.k} new task {np.mean(r):.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--models", type=int, default=78)
    ap.add_argument("--queries", type=int, default=300, help="per query set (seen task, new task)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--sweep-size", type=int, default=100_000, help="store size of the nprobe/efSearch sweep")
    ap.add_argument("--hnsw-max", type=int, default=100_000, help="skip HNSW above this size (build time)")
    ap.add_argument("--no-real", action="store_true", help="skip the openllm_v2 recall check")
    args = ap.parse_args()
    t0 = time.perf_counter()
    for n in args.sizes:
        run_size(n, args)
    if not args.no_real:
        real_store(args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
