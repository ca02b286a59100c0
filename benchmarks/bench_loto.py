"""Nested leave-one-task-out: benchroute's fold engine vs a straightforward scikit-learn implementation.

The paper's protocol refits, for every held-out task d', a kNN per model on every inner fold
(each other task d held out, for 15 alphas x 10 repeats) to train the confidence model. The
reference below does exactly that with KNeighborsClassifier (cosine, brute force), one per model
and fold. It runs on a subset (a few tasks, few alphas/repeats) where both implementations must
make identical decisions (asserted), and its per-fold cost is measured at full scale to
extrapolate the full protocol: (seconds per full-size fold) x (number of folds in the full run).

    python benchmarks/bench_loto.py [--dataset openllm_v2] [--model all-mpnet-base-v2] [--quick]

The last line is the speed ratio, e.g. ``speedup 137.2x (nested LOTO 11.0 s)``.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from benchroute.data.benchmark import load_benchmark
from benchroute.embed import Embedder, import_bundled_packs
from benchroute.experiments.evaluate import LOTOEvaluator
from benchroute.method.confidence import KernelSmoother
from benchroute.method.folds import DEFAULT_ALPHAS, n_moved
from benchroute.method.neighbors import normalize
from benchroute.method.scores import s2, s3, trust_rule
from benchroute.router.estimator import Router


def load(dataset: str, model: str):  # type: ignore[no-untyped-def]
    bench = load_benchmark(dataset)
    emb = Embedder(model)
    if emb.missing(bench.inputs):
        import_bundled_packs(emb)
    if emb.missing(bench.inputs):
        raise SystemExit(f"{dataset} is not embedded with {model}: run `benchroute embed {dataset}` first")
    return bench.with_embeddings(emb.encode(bench.inputs))


def reference_fold(
    X: np.ndarray, Y: np.ndarray, train: np.ndarray, test: np.ndarray, k: int, kappa: int, t: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """One fold the straightforward way: a KNeighborsClassifier per model, plus u from NearestNeighbors."""
    g = np.zeros((len(test), Y.shape[1]))
    for m in range(Y.shape[1]):
        y = Y[train, m] > 0.5
        if y.all() or not y.any():
            g[:, m] = float(y[0])
            continue
        clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(X[train], y)
        g[:, m] = clf.predict_proba(X[test])[:, list(clf.classes_).index(True)]
    dist, _ = (
        NearestNeighbors(n_neighbors=kappa, metric="cosine", algorithm="brute")
        .fit(X[train])
        .kneighbors(X[test])
    )
    p = ((g > t) == (Y[test] > 0.5)).mean(axis=0)
    return float(dist.mean()), p, g


def reference_loto(bench, router: Router) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(S3 choice, trust-rule choice) per held-out task, every inner fold refitted from scratch."""
    X, Y, ti = normalize(bench.embeddings), bench.correct.astype(np.float32), np.asarray(bench.task_index)
    D = bench.n_tasks
    acc = np.stack([Y[ti == d].mean(axis=0) for d in range(D)])
    decisions = []
    for dp in range(D):
        us, ps = [], []
        for d in range(D):
            if d == dp:
                continue
            members = np.flatnonzero(ti == d)
            for a_i, alpha in enumerate(router.alphas):
                s = n_moved(alpha, len(members), router.cap)
                for rep in range(1 if s == 0 else router.repeats):
                    moved = np.zeros(0, dtype=int)
                    if s:
                        moved = np.sort(
                            np.random.default_rng([router.seed, d, a_i, rep]).choice(
                                len(members), s, replace=False
                            )
                        )
                    rest = np.setdiff1d(np.arange(len(members)), moved)
                    train = np.concatenate([np.flatnonzero((ti != d) & (ti != dp)), members[moved]])
                    u, p, _ = reference_fold(
                        X, Y, np.sort(train), members[rest], router.k, router.kappa, router.t
                    )
                    us.append(u)
                    ps.append(p)
        ks = KernelSmoother(router.sigma).fit(np.array(us), np.array(ps))
        test = np.flatnonzero(ti == dp)
        u, _, g = reference_fold(X, Y, np.flatnonzero(ti != dp), test, router.k, router.kappa, router.t)
        v2 = s2(g, router.t)
        p_hat = ks.predict(u)
        bma = int(np.argmax(np.delete(acc, dp, axis=0).mean(axis=0)))
        dec = trust_rule(v2, p_hat, len(test), bma, eta=router.eta, draws=router.draws, seed=router.seed)
        decisions.append((int(np.argmax(s3(v2, p_hat))), dec.chosen))
    return decisions


def ours(bench, router: Router) -> tuple[list[tuple[int, int]], float]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    ev = LOTOEvaluator(bench, router)
    rows = ev.run(alphas=(0.0,))
    seconds = time.perf_counter() - t0
    by = {(r["task"], r["method"]): bench.models.index(r["model"]) for r in rows if r["model"] is not None}
    return [(by[(t, "S3")], by[(t, "S3_trust")]) for t in bench.tasks], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="openllm_v2")
    ap.add_argument("--model", default="all-mpnet-base-v2")
    ap.add_argument("--quick", action="store_true", help="subset-only run (< 60 s): no full nested LOTO")
    args = ap.parse_args()
    bench = load(args.dataset, args.model)
    full = Router(score="S3")
    D = bench.n_tasks

    # 1. identical decisions on a subset, both implementations
    rng = np.random.default_rng(0)
    subset_tasks = sorted(rng.choice(bench.tasks, 4 if args.quick else 6, replace=False).tolist())
    sub = bench.select(tasks=subset_tasks)
    small = Router(
        score="S3", alphas=(0.0, 0.1) if args.quick else (0.0, 0.05, 0.2), repeats=1 if args.quick else 2
    )
    t0 = time.perf_counter()
    ref = reference_loto(sub, small)
    t_ref_subset = time.perf_counter() - t0
    mine, t_mine_subset = ours(sub, small)
    same = sum(a == b for a, b in zip(ref, mine, strict=True))
    print(
        f"subset: {len(subset_tasks)} tasks, {sub.n_items} items, {sub.n_models} models; reference "
        f"{t_ref_subset:.1f} s, "
        f"fold engine {t_mine_subset:.2f} s; identical decisions on {same}/{len(ref)} tasks"
    )
    assert same == len(ref), "the fold engine must decide exactly like the reference"

    # 2. cost of one full-size fold the straightforward way, times the number of folds of the full run;
    # --quick times it on a quarter of the models and scales linearly: one classifier per model plus one
    # NearestNeighbors for u, each a brute-force pass of about the same cost, so (M + 1) / (m + 1)
    X, Y, ti = normalize(bench.embeddings), bench.correct.astype(np.float32), np.asarray(bench.task_index)
    timed = np.arange(Y.shape[1]) if not args.quick else np.arange(0, Y.shape[1], 4)
    t0 = time.perf_counter()
    reference_fold(X, Y[:, timed], np.flatnonzero((ti != 0) & (ti != 1)), np.flatnonzero(ti == 0), 5, 19, 0.5)
    t_fold = (time.perf_counter() - t0) * (Y.shape[1] + 1) / (len(timed) + 1)
    inner = (D - 1) * (1 + (len(DEFAULT_ALPHAS) - 1) * full.repeats)
    n_folds = D * (inner + 1)
    t_ref_full = t_fold * n_folds
    print(
        f"reference: {t_fold:.2f} s per full-size fold ({Y.shape[1]} models), {n_folds:,} folds "
        f"-> {t_ref_full / 3600:.1f} h extrapolated"
    )
    if args.quick:
        print(f"speedup {t_ref_subset / t_mine_subset:.1f}x (subset nested LOTO {t_mine_subset:.1f} s)")
        return

    # 3. the full nested LOTO with the paper's settings (15 alphas x 10 repeats per inner task)
    _, t_full = ours(bench, full)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"full nested LOTO on {args.dataset}: {t_full:.1f} s, peak RSS {peak:.0f} MiB")
    print(f"speedup {t_ref_full / t_full:.1f}x (nested LOTO {t_full:.1f} s)")


if __name__ == "__main__":
    main()
