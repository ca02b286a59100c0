"""The active-labeling study: leave-one-task-out accuracy of the routed model vs the number of labels,
for each label-suggestion strategy of :mod:`benchroute.method.suggest`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchroute.errors import ConfigError
from benchroute.experiments.cost import largest_model
from benchroute.method.cost import model_costs
from benchroute.method.scores import s1, s2
from benchroute.method.suggest import STRATEGIES, suggest_labels

__all__ = ["DEFAULT_BUDGETS", "active_study"]

DEFAULT_BUDGETS: tuple[int, ...] = (1, 2, 5, 10, 20, 50)


def _router_choice(
    ev: Any, d: int, prior: np.ndarray, bma: int, moved: np.ndarray | None
) -> tuple[int, np.ndarray]:
    """(chosen model, per-model score) of the evaluated router on task d with ``moved`` (1 x s) labeled."""
    g_all, u_all, rem = ev.engine.fold(d, [], moved)
    g = g_all[0]
    y = ev.Y[ev.engine.members[d][rem[0]]] > 0.5
    p = ev.p_estimates(d, g, float(u_all[0]), prior, moved, y, names=(ev.p_estimator,))[ev.p_estimator]
    chosen, score, _, _ = ev.router_decision(d, s1(g), s2(g, ev.router.t), p, rem.shape[1], bma, prior, moved)
    return chosen, score


def active_study(
    ev: Any,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    strategies: Sequence[str] = ("random", "uncertainty", "diversity"),
    repeats: int = 10,
    seed: int = 0,
    top: int = 5,
    progress: Any = None,
) -> dict[str, Any]:
    """Leave-one-task-out accuracy of the routed model vs the number of labels, per strategy.

    For each held-out task d of ``ev`` (a :class:`~benchroute.experiments.evaluate.LOTOEvaluator`),
    each strategy
    picks labels from d's inputs using only what a user would have: the embeddings and the kNN g of
    the router trained without d, and the router's scores at zero labels (for the top models). The
    picked items move into training (the router's (k, lambda) stay those chosen without labels, as in
    the alpha sweep); the chosen model's true accuracy is measured on d's remaining items. A budget
    larger than n_d - 1 uses n_d - 1. Greedy strategies are nested over budgets; "random" draws one
    seeded order per (task, repeat) and labels its first b items, so budgets are nested too.

    "Few-shot" is the model best on the random labels (ties to the best-on-average model).
    Mean +- std over repeats of the mean over tasks (deterministic strategies: std 0). Reference
    lines, on all items of each task: "bma" (best on average over the other tasks), "largest"
    (largest model, see :func:`benchroute.experiments.cost.largest_model`), "router_no_labels", "oracle".
    """
    for s in strategies:
        if s not in STRATEGIES:
            raise ConfigError(f"unknown labeling strategy {s!r}", f"use one of {STRATEGIES}")
    budgets = [int(b) for b in budgets]
    if not budgets or min(budgets) < 1:
        raise ConfigError("budgets must be positive label counts")
    repeats = max(1, int(repeats))
    bench, eng = ev.bench, ev.engine
    D = bench.n_tasks
    acc = np.asarray(ev.task_acc, dtype=np.float64)
    Y = np.asarray(ev.Y) > 0.5
    names = list(strategies) + (["Few-shot"] if "random" in strategies else [])
    res = {name: np.zeros((repeats, len(budgets), D)) for name in names}
    bma_acc, router0, oracle = np.zeros(D), np.zeros(D), np.zeros(D)
    for d in range(D):
        members = eng.members[d]
        n = len(members)
        prior = np.delete(acc, d, axis=0).mean(axis=0)
        bma = int(np.argmax(prior))
        bma_acc[d], oracle[d] = acc[d, bma], acc[d].max()
        base_choice, base_score = _router_choice(ev, d, prior, bma, None)
        router0[d] = acc[d, base_choice]
        if n < 2:  # nothing can be labeled and still leave an item to score
            for name in names:
                res[name][:, :, d] = router0[d]
            continue
        g = eng.fold(d, [], None)[0][0]
        E = eng.emb[members]
        bmax = min(max(budgets), n - 1)
        yd = Y[members]
        for name in strategies:
            reps = repeats if name == "random" else 1
            for rep in range(reps):
                order = suggest_labels(
                    E, g, bmax, name, top=top, seed=[seed, 104729, d, rep], scores=base_score
                )
                for bi, b in enumerate(budgets):
                    picked = np.sort(np.asarray(order[: min(b, bmax)]))
                    keep = np.ones(n, bool)
                    keep[picked] = False
                    rem_acc = yd[keep].mean(axis=0)
                    choice, _ = _router_choice(ev, d, prior, bma, picked[None, :])
                    res[name][rep if reps > 1 else slice(None), bi, d] = rem_acc[choice]
                    if name == "random":
                        few = yd[picked].mean(axis=0) + 1e-9 * (np.arange(len(rem_acc)) == bma)
                        res["Few-shot"][rep, bi, d] = rem_acc[int(np.argmax(few))]
        if progress is not None:
            progress(1)
    cost, _ = model_costs(bench.model_info, bench.models)
    params_b = np.asarray(ev.params_b, dtype=np.float64)
    mean_acc = acc.mean(axis=0)
    big = largest_model(params_b, cost, mean_acc)
    out: dict[str, Any] = {"budgets": budgets, "strategies": {}}
    for name in names:
        per_rep = res[name].mean(axis=2)  # repeats x budgets
        random_draws = name in ("random", "Few-shot")
        mean = per_rep.mean(axis=0) if random_draws else per_rep[0]
        std = per_rep.std(axis=0) if random_draws else np.zeros(len(budgets))
        out["strategies"][name] = {"acc_mean": [float(x) for x in mean], "acc_std": [float(x) for x in std]}
    out.update(
        {
            "bma": float(bma_acc.mean()),
            "largest": float(mean_acc[big]),
            "largest_model": bench.models[big],
            "router_no_labels": float(router0.mean()),
            "oracle": float(oracle.mean()),
            "repeats": repeats,
            "top": top,
            "seed": seed,
        }
    )
    return out
