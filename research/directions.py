"""Directions measured for the default router that did not make it (docs/reproduction.md, "did not help").

Each study is nested like the Router itself: every choice for held-out task d is made on the other
tasks only. Printed: mean accuracy of the chosen model over tasks and the paired difference to the
best-on-average model (BMA) with its standard error, beside the default blend's.

    python research/directions.py posterior --dataset openllm_v2 --alpha 0.05
    python research/directions.py alpha-select --dataset openllm_v2 --alpha 0.05
    python research/directions.py near-prior --dataset llmrouter
    python research/directions.py ridge --dataset llmrouter
    python research/directions.py sigma --dataset openllm_v2

* ``posterior``: with labeled samples, a Gaussian posterior over all models' accuracies on the new task.
  Prior mean: the blend; prior covariance: the blend's errors on the training tasks (Ledoit-Wolf);
  noise: the within-task covariance of the models' correctness, divided by the number of labels (the
  labels of one question are strongly correlated across models). Scales c of the prior covariance 0.25
  and 1.
* ``alpha-select``: the blend's (k, lambda) chosen by leave-one-task-out at the test alpha (training
  tasks with simulated labeled draws) instead of at alpha = 0.
* ``near-prior``: a third term in the blend, the accuracy on the nearest benchmark tasks (softmax of
  the cosine similarity of task centroids at temperature tau); (k, lambda, mu, tau) by inner LOTO.
* ``ridge``: a linear probe (ridge regression of every model's 0/1 correctness on the embeddings, one
  multi-output fit) as a second source of S1 for the blend, beside kNN at each k; the source, its
  penalty (10, 100, 1000) and lambda by inner LOTO. S1 of a linear model is the task centroid times
  the weights, and leaving tasks out is a downdate of the Gram matrix, so the nested fits are exact.
  Printed with and without the trust rule.
* ``sigma``: the kernel smoother's bandwidth chosen by leave-one-task-out over the confidence pairs
  (p MAE of each inner task's alpha = 0 pair) instead of the paper's 0.09; prints the p MAE.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import numpy as np

from benchroute.data import load_with_embeddings
from benchroute.experiments.evaluate import LOTOEvaluator
from benchroute.method.folds import n_moved
from benchroute.method.scores import blend
from benchroute.router.estimator import Router

Pick = Callable[[LOTOEvaluator, int, np.ndarray | None], dict[str, np.ndarray]]  # d, moved -> name: score


def run(ev: LOTOEvaluator, alpha: float, repeats: int, pick: Pick) -> None:
    """Mean accuracy of each variant's argmax over tasks (and draws), paired against BMA."""
    per_task: dict[str, list[float]] = {}
    for d in range(ev.bench.n_tasks):
        members = ev.engine.members[d]
        prior = np.delete(ev.task_acc, d, axis=0).mean(axis=0)
        acc_by: dict[str, list[float]] = {}
        for moved in [ev.moved_draw(d, alpha, r) for r in range(repeats if alpha > 0 else 1)]:
            rest = np.setdiff1d(np.arange(len(members)), moved[0] if moved is not None else [])
            acc = ev.Y[members[rest]].mean(axis=0)
            scores = {
                "BMA": prior,
                "blend (default score, no gate)": ev.blend_score(d, prior, moved),
                **pick(ev, d, moved),
            }
            for name, sc in scores.items():
                acc_by.setdefault(name, []).append(float(acc[int(np.argmax(sc))]))
        for name, v in acc_by.items():
            per_task.setdefault(name, []).append(float(np.mean(v)))
    bma = np.array(per_task["BMA"])
    for name, v in per_task.items():
        diff = np.array(v) - bma
        print(
            f"{name:32s} {np.mean(v):.4f}   - BMA {diff.mean():+.4f} ± "
            f"{diff.std(ddof=1) / np.sqrt(len(diff)):.4f}"
        )


def posterior(ev: LOTOEvaluator, d: int, moved: np.ndarray | None) -> dict[str, np.ndarray]:
    from sklearn.covariance import LedoitWolf

    if moved is None:
        return {}
    curves, priors = ev.inner_curves(d)
    bc = ev.blend_choice(d)
    j = list(ev.router.blend_ks).index(bc.k)
    resid = np.stack([ev.task_acc[x] - blend(c[j], priors[x], bc.lam) for x, c in curves.items()])
    prior_cov = LedoitWolf(assume_centered=True).fit(resid).covariance_
    noise = (
        np.mean([np.cov(ev.Y[ev.engine.members[x]].T, bias=True) for x in curves], axis=0) / moved.shape[1]
    )
    mean = ev.blend_score(d, np.delete(ev.task_acc, d, axis=0).mean(axis=0), moved)
    few = ev.Y[ev.engine.members[d][moved[0]]].mean(axis=0)
    out = {"few-shot accuracy": few}
    for c in (0.25, 1.0):
        gain = c * prior_cov @ np.linalg.inv(c * prior_cov + noise + 1e-9 * np.eye(len(few)))
        out[f"posterior c={c:g}"] = mean + gain @ (few - mean)
    return out


def alpha_select(alpha: float) -> Pick:
    def pick(ev: LOTOEvaluator, d: int, moved: np.ndarray | None) -> dict[str, np.ndarray]:
        r = ev.router
        inner = [x for x in range(ev.bench.n_tasks) if x != d]
        best: tuple[float, int, float] | None = None
        draws = {}
        for x in inner:
            s = n_moved(alpha, len(ev.engine.members[x]), r.cap)
            # the same draws at every k (labeled_draws seeds by task and size)
            draws[x] = [ev.engine.labeled_draws(x, [d], k, s, 2, r.seed) for k in r.blend_ks]
        priors = ev.inner_curves(d)[1]
        for lam in sorted(r.blend_lambdas, reverse=True):
            for j, k in enumerate(r.blend_ks):
                accs = [
                    acc[int(np.argmax(blend(c, priors[x], lam)))] for x in inner for c, _, acc in draws[x][j]
                ]
                if accs and (best is None or np.mean(accs) > best[0] + 1e-12):
                    best = (float(np.mean(accs)), k, lam)
        assert best is not None
        _, k, lam = best
        return {
            "(k, lambda) chosen at alpha": blend(
                ev.engine.s1_curve(d, [], (k,), moved)[0], np.delete(ev.task_acc, d, axis=0).mean(axis=0), lam
            )
        }

    return pick


def near_prior(ev: LOTOEvaluator, d: int, moved: np.ndarray | None) -> dict[str, np.ndarray]:
    X, ti, D = ev.bench.embeddings, np.asarray(ev.bench.task_index), ev.bench.n_tasks
    cent = np.stack([X[ti == t].mean(axis=0) for t in range(D)])
    sim = (cent / np.linalg.norm(cent, axis=1, keepdims=True)) @ (
        cent / np.linalg.norm(cent, axis=1, keepdims=True)
    ).T

    def near(x: int, pool: list[int], tau: float) -> np.ndarray:
        w = np.exp((sim[x, pool] - sim[x, pool].max()) / tau)
        return (w / w.sum()) @ ev.task_acc[pool]

    curves, priors = ev.inner_curves(d)
    inner = sorted(curves)
    r = ev.router
    best: tuple[float, float, float, float, int] | None = None
    for lam in sorted(r.blend_lambdas, reverse=True):
        for mu in (0.0, 0.25, 0.5, 0.75, 1.0):
            if lam + mu > 1.0:
                continue
            for tau in (0.01, 0.03, 0.1):
                nps = {x: near(x, [t for t in inner if t != x], tau) for x in inner}
                for j in range(len(r.blend_ks)):
                    m = np.mean(
                        [
                            ev.task_acc[
                                x,
                                int(np.argmax((1 - lam - mu) * curves[x][j] + lam * priors[x] + mu * nps[x])),
                            ]
                            for x in inner
                        ]
                    )
                    if best is None or m > best[0] + 1e-12:
                        best = (float(m), lam, mu, tau, j)
    assert best is not None
    _, lam, mu, tau, j = best
    curve = ev.engine.s1_curve(d, [], (r.blend_ks[j],), moved)[0]
    prior = np.delete(ev.task_acc, d, axis=0).mean(axis=0)
    return {"blend + nearest-task prior": (1 - lam - mu) * curve + lam * prior + mu * near(d, inner, tau)}


@functools.lru_cache(maxsize=1)
def _task_grams(ev: LOTOEvaluator) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per task: X'X and X'Y of the embeddings with an intercept column, and the centroid (once per run)."""
    X = np.hstack([ev.bench.embeddings.astype(np.float64), np.ones((len(ev.Y), 1))])
    members = ev.engine.members
    return (
        [X[m].T @ X[m] for m in members],
        [X[m].T @ ev.Y[m].astype(np.float64) for m in members],
        [X[m].mean(axis=0) for m in members],
    )


def ridge(ev: LOTOEvaluator, d: int, moved: np.ndarray | None) -> dict[str, np.ndarray]:
    from benchroute.method.scores import s2, trust_rule

    if moved is not None:
        raise SystemExit("the ridge study runs at alpha = 0")
    gram, cross, centroid = _task_grams(ev)
    members = ev.engine.members
    g_all, c_all = sum(gram), sum(cross)
    curves, priors = ev.inner_curves(d)
    inner = sorted(curves)
    r = ev.router
    sources = {
        f"kNN k={k}": ({x: curves[x][j] for x in inner}, ev.engine.s1_curve(d, [], (k,))[0])
        for j, k in enumerate(r.blend_ks)
    }
    for pen in (10.0, 100.0, 1000.0):
        eye = pen * np.eye(len(g_all))
        sources[f"ridge {pen:g}"] = (
            {
                x: centroid[x] @ np.linalg.solve(g_all - gram[d] - gram[x] + eye, c_all - cross[d] - cross[x])
                for x in inner
            },
            centroid[d] @ np.linalg.solve(g_all - gram[d] + eye, c_all - cross[d]),
        )
    best: tuple[float, float, str] | None = None
    for lam in sorted(r.blend_lambdas, reverse=True):
        for name, (inner_s1, _) in sources.items():
            m = float(
                np.mean([ev.task_acc[x, int(np.argmax(blend(inner_s1[x], priors[x], lam)))] for x in inner])
            )
            if best is None or m > best[0] + 1e-12:
                best = (m, lam, name)
    assert best is not None
    _, lam, name = best
    prior = np.delete(ev.task_acc, d, axis=0).mean(axis=0)
    score = blend(sources[name][1], prior, lam)
    g, u, _ = ev.engine.fold(d, [], None)
    smoother = ev.confidence(d)[0]
    gate = trust_rule(
        s2(g[0], r.t),
        smoother.predict(float(u[0])),
        len(members[d]),
        int(np.argmax(prior)),
        score=score,
        eta=r.eta,
        draws=r.draws,
        seed=r.seed,
    )
    return {"blend with kNN or ridge S1": score, "  + trust rule": np.eye(len(prior))[gate.chosen]}


def sigma_study(
    ev: LOTOEvaluator, grid: tuple[float, ...] = (0.01, 0.02, 0.05, 0.09, 0.15, 0.3, 1.0)
) -> None:
    """p MAE of the kernel smoother at sigma = 0.09 and at the sigma chosen by inner LOTO."""
    from collections import Counter

    from benchroute.method.confidence import KernelSmoother

    r = ev.router
    mae, picks = [], []
    for d in range(ev.bench.n_tasks):
        ev.confidence(d)
        assert ev._nested is not None
        pairs = ev._nested.for_excluded(d)
        inner = []
        for sg in grid:
            errs = []
            for x in np.unique(pairs.task):
                test = (pairs.task == x) & (pairs.alpha == 0)
                fit = KernelSmoother(sg).fit(pairs.u[pairs.task != x], pairs.p[pairs.task != x])
                errs.append(np.abs(fit.predict(float(pairs.u[test][0])) - pairs.p[test][0]).mean())
            inner.append(np.mean(errs))
        chosen = grid[int(np.argmin(inner))]
        picks.append(chosen)
        g, u, _ = ev.engine.fold(d, [], None)
        p_true = ((g[0] > r.t) == (ev.Y[ev.engine.members[d]] > 0.5)).mean(axis=0)
        mae.append(
            [
                np.abs(KernelSmoother(sg).fit(pairs.u, pairs.p).predict(float(u[0])) - p_true).mean()
                for sg in (r.sigma, chosen)
            ]
        )
    m = np.mean(mae, axis=0)
    print(
        f"p MAE at sigma = {r.sigma:g}: {m[0]:.4f}; sigma by inner LOTO: {m[1]:.4f} (chosen: "
        f"{dict(Counter(picks))})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", choices=["posterior", "alpha-select", "near-prior", "ridge", "sigma"])
    ap.add_argument("--dataset", default="openllm_v2")
    ap.add_argument("--model", default="all-mpnet-base-v2")
    ap.add_argument("--alpha", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    if args.study in ("posterior", "alpha-select") and args.alpha <= 0:
        ap.error(f"{args.study} needs labeled samples: pass --alpha > 0")
    ev = LOTOEvaluator(load_with_embeddings(args.dataset, args.model), Router(embedding_model=args.model))
    if args.study == "sigma":
        sigma_study(ev)
        return
    pick = {
        "posterior": posterior,
        "alpha-select": alpha_select(args.alpha),
        "near-prior": near_prior,
        "ridge": ridge,
    }[args.study]
    print(f"{args.study} on {args.dataset}, alpha = {args.alpha:g}")
    run(ev, args.alpha, args.repeats, pick)


if __name__ == "__main__":
    main()
