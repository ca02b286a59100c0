"""Per-query decision latency after embedding and search: ``decide_queries`` for 1,000 queries.

Times the product's per-query decision (:func:`benchroute.method.perquery.decide_queries`) for a batch
of 1,000 queries given their neighbour lists, for the default rule ("hks"), with a session and with a
cost weight, against today's rule (rule "knn": the k = 5 neighbours' mean label and an argmax), and
reports the ratio. The neighbour search is timed separately (exact numpy search of the 1,000 queries
in the store, K = needed_neighbors(stats)), since both rules share it apart from K. Store: openllm_v2
(8,382 questions, 78 models) if its embeddings are cached, else a synthetic store of the same shape.
Target (issue 4/5): ``route`` for 1,000 queries after embedding < 0.1 s.

    PYTHONPATH=src python benchmarks/bench_perquery.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchroute.method.neighbors import exact_search, normalize
from benchroute.method.perquery import SessionState, decide_queries, fit_stats, needed_neighbors


def _store() -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from benchroute.data import load_with_embeddings

        b = load_with_embeddings("openllm_v2")
        return "openllm_v2", normalize(b.embeddings), np.asarray(b.correct, np.float32), b.task_index
    except Exception:  # no cached embeddings: a synthetic store of the same shape
        rng = np.random.default_rng(0)
        task = np.repeat(np.arange(35), 240)
        emb = normalize(rng.normal(size=(35, 768))[task] + rng.normal(size=(len(task), 768)))
        y = (rng.random((len(task), 78)) < 0.5).astype(np.float32)
        return "synthetic", emb, y, task


def _best(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--queries", type=int, default=1000)
    a = ap.parse_args()
    name, emb, y, task = _store()
    rng = np.random.default_rng(1)
    q = rng.choice(len(emb), a.queries, replace=False)
    store = np.setdiff1d(np.arange(len(emb)), q)
    stats = fit_stats(y[store], np.asarray(task)[store])
    K = needed_neighbors(stats)
    s, i = exact_search(emb[q], emb[store], K)
    s5, i5 = s[:, :5], i[:, :5]
    cost = np.linspace(0.1, 10.0, y.shape[1])
    t_search_k = _best(lambda: exact_search(emb[q], emb[store], K), 3)
    t_search_5 = _best(lambda: exact_search(emb[q], emb[store], 5), 3)
    rows = {
        "current rule (knn, k=5)": _best(lambda: decide_queries(s5, i5, stats, rule="knn"), a.repeats),
        "hks (default)": _best(lambda: decide_queries(s, i, stats), a.repeats),
        "hks + session": _best(lambda: decide_queries(s, i, stats, session=SessionState()), a.repeats),
        "hks + cost weight": _best(
            lambda: decide_queries(s, i, stats, cost=cost, cost_weight=0.2), a.repeats
        ),
    }
    base = rows["current rule (knn, k=5)"]
    print(f"store {name}: {len(store)} questions, {y.shape[1]} models; {a.queries} queries; K = {K}")
    print(f"exact search: K={K} {t_search_k * 1e3:.1f} ms, k=5 {t_search_5 * 1e3:.1f} ms")
    for k, v in rows.items():
        print(f"  {k:20s} {v * 1e3:7.2f} ms  ratio to today's rule {v / base:5.1f}x")
    total = t_search_k + rows["hks (default)"]
    print(f"route (search + decide) for {a.queries} queries: {total * 1e3:.1f} ms (target < 100 ms)")


if __name__ == "__main__":
    main()
