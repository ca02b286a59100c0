"""The cost study: leave-one-task-out accuracy vs cost of cost-weighted routing, against every single
model, with RouterBench's AIQ."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchroute.method.cost import aiq, choose, model_costs
from benchroute.method.scores import s2, s3

__all__ = ["DEFAULT_LAMBDAS", "cost_study", "largest_model"]

DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def largest_model(
    params_b: np.ndarray, cost: np.ndarray, mean_acc: np.ndarray, mask: np.ndarray | None = None
) -> int:
    """The largest candidate by parameter count (ties: costlier, then more accurate); by cost if no sizes.

    "Largest" rather than "most expensive" because that is the question users ask ("do I need the
    70B model?"); with the params_b proxy the two coincide. Unknown sizes / costs rank last.
    """
    idx = np.flatnonzero(np.ones(len(params_b), bool) if mask is None else mask)
    pb = params_b[idx]
    keys: tuple[np.ndarray, ...]
    if np.isfinite(pb).any():
        keys = (-mean_acc[idx], -np.nan_to_num(cost[idx], nan=-np.inf), -np.nan_to_num(pb, nan=-np.inf))
    else:
        keys = (-mean_acc[idx], -np.nan_to_num(cost[idx], nan=-np.inf))
    return int(idx[np.lexsort(keys)[0]])


def _predicted_accuracy(ev: Any, d: int, prior: np.ndarray) -> np.ndarray:
    """The router's predicted accuracy of every model on held-out task d (alpha = 0)."""
    if ev.router.score == "blend":
        return ev.blend_score(d, prior)
    # any other router is evaluated as the paper's S3 (kernel p), like evaluate_task's "Router" row
    g_all, u_all, _ = ev.engine.fold(d, [], None)
    ks, _, _ = ev.confidence(d)
    return s3(s2(g_all[0], ev.router.t), ks.predict(float(u_all[0])))


def cost_study(ev: Any, lambdas: Sequence[float] = DEFAULT_LAMBDAS, progress: Any = None) -> dict[str, Any]:
    """Leave-one-task-out accuracy vs cost of cost-weighted routing, against every single model.

    ``ev`` is a :class:`~benchroute.experiments.evaluate.LOTOEvaluator`.
    For each held-out task d (alpha = 0) the
    router's predicted accuracies feed :func:`choose` with ``cost_weight = lambda`` for each lambda;
    the true accuracy and cost of each choice are averaged over tasks into one point per lambda.
    The predicted accuracy is the blend score for the default router; any other router is scored
    by S3. The trust rule is a decision, not a predicted accuracy, so lambda = 0 is argmax of the
    score (the LOTO "Blend" row for the default router, "S3" for the others), not the gated "Router".
    Candidates are the models with a known cost (the others are listed under
    "excluded_unknown_cost"), for every lambda and baseline alike, so lambda = 0 is the plain
    router restricted to those models.

    Returns the results.json "cost" section:

    * "points": each candidate's mean accuracy over tasks and its cost;
    * "router_curve": [{"lambda", "cost", "acc", "pct_cheaper_than_plain"}], the last being the
      share of tasks whose choice costs less than the lambda = 0 choice;
    * "bma": the LOTO best-on-average choice's mean accuracy and cost;
    * "aiq": {"router", "best_single"}: AIQ of the router curve and of the single-model points, both
      over the cost range of all points ("aiq_cost_range"). "best_single" is the hull of the single
      models, RouterBench's "zero router": the best any fixed random mixture of models achieves;
    * "largest_model" (see :func:`largest_model`) and "savings": the cheapest lambda point whose
      mean accuracy >= the largest model's, with its mean cost relative to that model
      ("cost_ratio"; "saving" = 1 - ratio), or None if no lambda matches it. The largest model can
      be a weak one (llmrouter's 70B model is), so "best_single_model" (highest mean accuracy)
      and "savings_vs_best_single" answer the same question against the strongest single model;
    * "unit", "lambdas", "n_candidates".
    """
    bench = ev.bench
    cost, unit = model_costs(bench.model_info, bench.models)
    cand = np.isfinite(cost)
    if cand.sum() < 2:
        return {"skipped": "fewer than 2 models with a known cost or size", "unit": unit}
    lambdas = [float(x) for x in lambdas]
    D = bench.n_tasks
    acc = np.asarray(ev.task_acc, dtype=np.float64)
    chosen = np.zeros((len(lambdas), D), dtype=np.int64)
    plain = np.zeros(D, dtype=np.int64)
    bma_idx = np.zeros(D, dtype=np.int64)
    for d in range(D):
        prior = np.delete(acc, d, axis=0).mean(axis=0)
        pred = _predicted_accuracy(ev, d, prior)
        plain[d] = choose(pred, cost, mask=cand).index
        for i, lam in enumerate(lambdas):
            chosen[i, d] = choose(pred, cost, cost_weight=lam, mask=cand).index
        bma_idx[d] = int(np.argmax(np.where(cand, prior, -np.inf)))
        if progress is not None:
            progress(1)
    rows = np.arange(D)
    curve_acc = acc[rows, chosen].mean(axis=1)
    curve_cost = cost[chosen].mean(axis=1)
    mean_acc = acc.mean(axis=0)
    names = list(bench.models)
    points = [
        {"model": names[j], "cost": float(cost[j]), "acc": float(mean_acc[j])} for j in np.flatnonzero(cand)
    ]
    curve = [
        {
            "lambda": lam,
            "cost": float(curve_cost[i]),
            "acc": float(curve_acc[i]),
            "pct_cheaper_than_plain": float(100.0 * (cost[chosen[i]] < cost[plain]).mean()),
        }
        for i, lam in enumerate(lambdas)
    ]
    bma = {"cost": float(cost[bma_idx].mean()), "acc": float(acc[rows, bma_idx].mean())}
    single_pts = np.array([[p["cost"], p["acc"]] for p in points])
    router_pts = np.column_stack([curve_cost, curve_acc])
    every = np.vstack([single_pts, router_pts, [[bma["cost"], bma["acc"]]]])
    rng = (float(every[:, 0].min()), float(every[:, 0].max()))
    params_b = np.asarray(ev.params_b, dtype=np.float64)
    big = largest_model(params_b, cost, mean_acc, cand)
    best_single = int(np.argmax(np.where(cand, mean_acc, -np.inf)))

    def savings_vs(j: int, label: str) -> dict[str, Any] | None:
        target, ref_cost = float(mean_acc[j]), float(cost[j])
        ok = [i for i in range(len(lambdas)) if curve_acc[i] >= target - 1e-12]
        if not ok:
            return None
        i = min(ok, key=lambda i: (curve_cost[i], -curve_acc[i]))
        ratio = float(curve_cost[i] / ref_cost) if ref_cost > 0 else float("nan")
        return {
            "lambda": lambdas[i],
            "acc": float(curve_acc[i]),
            "cost": float(curve_cost[i]),
            f"{label}_acc": target,
            f"{label}_cost": ref_cost,
            "cost_ratio": ratio,
            "saving": 1.0 - ratio,
        }

    return {
        "unit": unit,
        "lambdas": lambdas,
        "points": points,
        "router_curve": curve,
        "bma": bma,
        "aiq": {"router": aiq(router_pts, rng), "best_single": aiq(single_pts, rng)},
        "aiq_cost_range": list(rng),
        "largest_model": {
            "model": names[big],
            "cost": float(cost[big]),
            "acc": float(mean_acc[big]),
            "params_b": float(params_b[big]) if np.isfinite(params_b[big]) else None,
        },
        "savings": savings_vs(big, "largest"),
        "best_single_model": {
            "model": names[best_single],
            "cost": float(cost[best_single]),
            "acc": float(mean_acc[best_single]),
        },
        "savings_vs_best_single": savings_vs(best_single, "best_single"),
        "n_candidates": int(cand.sum()),
        "excluded_unknown_cost": [names[j] for j in np.flatnonzero(~cand)],
    }
