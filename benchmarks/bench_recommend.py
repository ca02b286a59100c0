"""``Router.recommend`` for a new task of 1,000 inputs, after embedding, against the openllm_v2 router.

The router is fitted on 34 openllm_v2 tasks (the held-out tasks' items are the "new task": their first
1,000 inputs, embeddings given as an array, i.e. "after embedding"). One recommend computes the kNN g
of every input for all 78 models, S1-S3, the blend at its wide k, u(d'), p, the trust rule's Monte Carlo
and the nearest benchmark tasks. The baseline, in the same process, is the straightforward way to get
only the g matrix: one scikit-learn KNeighborsClassifier per model (brute-force cosine), fitted and
queried for the same 1,000 inputs.

    python benchmarks/bench_recommend.py [--n 1000] [--repeats 5]

Last line: ``recommend 1000 inputs: 0.63 s median (target < 1 s); baseline g only 23.1 s: 36.7x``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_loto import load
from sklearn.neighbors import KNeighborsClassifier

from benchroute.router.estimator import Router


def baseline_g(X: np.ndarray, Y: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """g (n x M) the straightforward way: a KNeighborsClassifier per model."""
    g = np.zeros((len(queries), Y.shape[1]))
    for m in range(Y.shape[1]):
        y = Y[:, m] > 0.5
        if y.all() or not y.any():
            g[:, m] = float(y[0])
            continue
        clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(X, y)
        g[:, m] = clf.predict_proba(queries)[:, list(clf.classes_).index(True)]
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    bench = load("openllm_v2", "all-mpnet-base-v2")
    # the largest tasks as the "new task" until n inputs are reached; the router never sees them
    sizes = np.bincount(np.asarray(bench.task_index), minlength=bench.n_tasks)
    held, count = [], 0
    for d in np.argsort(-sizes, kind="stable"):
        held.append(bench.tasks[d])
        count += int(sizes[d])
        if count >= args.n:
            break
    train = bench.select(tasks=[t for t in bench.tasks if t not in held])
    new = bench.select(tasks=held)
    queries = new.embeddings[: args.n]
    t0 = time.perf_counter()
    router = Router().fit(train)
    print(
        f"fit on {train.n_tasks} tasks, {train.n_items} items, {train.n_models} models: "
        f"{time.perf_counter() - t0:.1f} s"
    )
    router.recommend(queries)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rec = router.recommend(queries)
        times.append(time.perf_counter() - t0)
    t_rec = float(np.median(times))
    print(
        f"chosen {rec.chosen} (fell back: {rec.fell_back}); recommend times "
        f"{', '.join(f'{t:.2f}' for t in times)} s"
    )
    t0 = time.perf_counter()
    g_ref = baseline_g(router.X_, np.asarray(router.Y_, dtype=np.float32), router.embed(queries), router.k)
    t_base = time.perf_counter() - t0
    g_ours = router.predictor_.predict_proba(queries)
    same = float(np.mean(np.abs(g_ref - g_ours) < 1e-6))
    print(f"baseline g equals ours on {same:.4%} of entries")
    print(
        f"recommend {len(queries)} inputs: {t_rec:.2f} s median (target < 1 s); "
        f"baseline g only {t_base:.1f} s: {t_base / t_rec:.1f}x"
    )


if __name__ == "__main__":
    main()
