"""The per-query harness: every per-query rule through the product's decision function.

``perquery_study(bench)`` returns the results.json "perquery" section (docs/json-output.md):

* ``loto``: leave-one-task-out per-query routing. Each task in turn is held out; the store is the other
  tasks; :func:`benchroute.method.perquery.fit` runs on the store alone (knobs by its nested inner
  protocols) and every held-out query is routed by
  :func:`~benchroute.method.perquery.decide_queries`, one row per rule of
  :data:`~benchroute.method.perquery.RULES`, beside BMA, the per-query and per-task oracles and random.
  Differences to BMA are paired over tasks (mean and standard error over tasks).
* ``indist``: an in-distribution split: per task a stratified test share is held out, the rest is the
  store (fit on it alone); several seeds; per-task means over seeds, then paired over tasks.
* ``instance``: the per-instance continuous protocol (random splits of all items, the target the raw
  score), on the instance benchmark (default: the benchmark itself if its scores are continuous).
* ``session``: each held-out task's queries (LOTO folds) as one session in random orders; accuracy of
  the query that follows w earlier ones, w in :data:`POSITIONS`, and over the whole stream.
* ``calibration``: reliability of each rule's per-model scores as probabilities (LOTO; bins, ECE).
* ``traffic``: share of the LOTO queries each rule routes to each model.
* ``cost``: the per-query quality-cost curve (LOTO, cost weight and budget sweeps of the default rule)
  against the single models, the random mixture of the cheapest and the best model and the hull of
  the single models; RouteLLM's APGR and CPT(50%), CPT(80%), RouterBench's AIQ.
* ``knobs``: the knobs :func:`fit` chose in each fold; ``seconds`` per part.

Every fold shares one neighbour pass over all items (:class:`NeighbourPass`, the FoldEngine idea): per
item its nearest other items and its nearest other-task items, deep enough that removing a held-out
task (or a test share) leaves the neighbours a fit needs; a fold filters these lists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from benchroute.method.cost import aiq, model_costs
from benchroute.method.neighbors import normalize, topk_from_similarity
from benchroute.method.perquery import (
    RULES,
    PerQueryStats,
    SessionState,
    decide_queries,
    fit,
    fit_depth,
    needed_neighbors,
    take_first,
)

__all__ = [
    "POSITIONS",
    "RULE_LABELS",
    "NeighbourPass",
    "apgr",
    "calibration",
    "paired_rows",
    "perquery_study",
    "upper_hull",
]

#: Session positions reported: the query after w earlier ones.
POSITIONS: tuple[int, ...] = (0, 1, 5, 10, 25, 50)
RULE_LABELS: dict[str, str] = {
    "knn": "kNN k=5 argmax (current rule)",
    "knn_shrunk": "kNN k=100 shrunk toward BMA",
    "task_vote": "nearest-task vote",
    "hks": "HKS (default)",
}
COST_WEIGHTS: tuple[float, ...] = (
    0.0,
    0.01,
    0.02,
    0.05,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    20.0,
    100.0,
)

Progress = Callable[[int], Any]


# ------------------------------------------------------------------------------------ neighbours
class NeighbourPass:
    """Per item: its nearest other items ("S") and nearest items of other tasks ("C"), ``depth`` each."""

    def __init__(self, emb: np.ndarray, task: np.ndarray, depth: int, block: int = 1000) -> None:
        emb = normalize(np.asarray(emb, dtype=np.float32))
        n = len(emb)
        self.task = np.asarray(task, dtype=np.int64)
        self.depth = depth = int(min(depth, n - 1))
        self.S = (np.zeros((n, depth), np.float32), np.zeros((n, depth), np.int64))
        self.C = (np.zeros((n, depth), np.float32), np.zeros((n, depth), np.int64))
        for a in range(0, n, block):
            r = np.arange(a, min(n, a + block))
            sim = emb[r] @ emb.T
            sim[r - a, r] = -np.inf
            self.S[0][r], self.S[1][r] = topk_from_similarity(sim, depth)
            sim[self.task[r][:, None] == self.task[None, :]] = -np.inf
            self.C[0][r], self.C[1][r] = topk_from_similarity(sim, depth)

    def lists(self, rows: np.ndarray, kind: str, store: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """First k neighbours of ``rows`` among the ``store`` rows (sorted global indices), as local
        store positions; rows short of k admissible neighbours are padded (-inf, weight 0)."""
        s, i = (self.S if kind == "S" else self.C)[0][rows], (self.S if kind == "S" else self.C)[1][rows]
        keep = np.zeros(len(self.task), bool)
        keep[store] = True
        s, i = take_first(s, i, keep[i], k)
        loc = np.searchsorted(store, i)
        loc = np.clip(loc, 0, len(store) - 1)
        return s, np.where(np.isfinite(s), loc, 0)

    def fit_neighbors(self, store: np.ndarray, k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The training lists :func:`fit` needs for a store (its items' cross-task and other-item lists)."""
        return {"cross": self.lists(store, "C", store, k), "loo": self.lists(store, "S", store, k)}


# --------------------------------------------------------------------------------------- helpers
def paired_rows(per_task: Mapping[str, Any], base: str = "BMA") -> list[dict[str, Any]]:
    """One row per method: mean over tasks and the paired difference to ``base`` (mean, SE, n)."""
    b = np.asarray(per_task[base], dtype=np.float64)
    out = []
    for name, vals in per_task.items():
        v = np.asarray(vals, dtype=np.float64)
        ok = np.isfinite(v) & np.isfinite(b)
        d = v[ok] - b[ok]
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
        out.append(
            {
                "method": name,
                "acc": float(v[ok].mean()) if ok.any() else None,
                "diff_vs_bma": float(d.mean()) if ok.any() else None,
                "se": se,
                "n_tasks": int(ok.sum()),
            }
        )
    return out


def calibration(pred: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability diagram and expected calibration error of probabilities ``pred`` for outcomes ``y``."""
    p = np.clip(np.asarray(pred, dtype=np.float64).ravel(), 0.0, 1.0)
    yy = np.asarray(y, dtype=np.float64).ravel()
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    cnt = np.bincount(b, minlength=bins).astype(np.float64)
    ps = np.bincount(b, p, minlength=bins)
    ys = np.bincount(b, yy, minlength=bins)
    nz = cnt > 0
    mp = np.where(nz, ps / np.maximum(cnt, 1), np.nan)
    my = np.where(nz, ys / np.maximum(cnt, 1), np.nan)
    ece = float(np.nansum(cnt / cnt.sum() * np.abs(mp - my)))
    return {
        "ece": ece,
        "brier": float(np.mean((p - yy) ** 2)),
        "bins": [
            {"lo": i / bins, "hi": (i + 1) / bins, "n": int(cnt[i]), "pred": _f(mp[i]), "obs": _f(my[i])}
            for i in range(bins)
        ],
    }


def _f(x: Any) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def upper_hull(points: np.ndarray) -> np.ndarray:
    """Upper concave envelope (cost ascending) of (cost, quality) points: what random mixtures reach."""
    pts = np.asarray(points, dtype=np.float64)
    pts = pts[np.lexsort((-pts[:, 1], pts[:, 0]))]
    pts = pts[np.concatenate([[True], np.diff(pts[:, 0]) > 0])]
    hull: list[np.ndarray] = []
    for q in pts:
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            if (a[0] - o[0]) * (q[1] - o[1]) - (a[1] - o[1]) * (q[0] - o[0]) >= 0:
                hull.pop()
            else:
                break
        hull.append(q)
    h = np.array(hull)
    return h[: int(np.argmax(h[:, 1])) + 1]  # past the best quality, more cost buys nothing


def _curve_at(h: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Quality of a (non-decreasing) hull at costs c: nan below its cheapest point, flat after its top."""
    return np.where(c < h[0, 0] - 1e-12, np.nan, np.interp(c, h[:, 0], h[:, 1]))


def apgr(
    curve: np.ndarray, weak: tuple[float, float], strong: tuple[float, float], grid: int = 201
) -> dict[str, Any]:
    """RouteLLM's metrics of a router's (cost, quality) points between a weak (cheap) and a strong model.

    PGR(c) = (R(c) - q_weak) / (q_strong - q_weak) with R the router's upper hull (mixing router settings
    is allowed, as RouteLLM's threshold sweep); APGR = mean PGR over costs from the weak to the strong
    model's cost; CPT(x) = the smallest cost (also as a fraction of the strong model's cost) with
    PGR >= x.
    """
    cw, qw = weak
    cs, qs = strong
    pts = np.vstack([np.asarray(curve, dtype=np.float64), [weak]])  # the weak model alone is a router
    h = upper_hull(pts)
    cgrid = np.linspace(cw, cs, grid)
    r = _curve_at(h, cgrid)
    pgr = (np.where(np.isfinite(r), r, qw) - qw) / (qs - qw) if qs != qw else np.zeros(grid)
    out: dict[str, Any] = {"apgr": float(np.mean(np.minimum(pgr, 1.5)))}
    for x in (0.5, 0.8):
        hit = np.flatnonzero(pgr >= x - 1e-12)
        c = float(cgrid[hit[0]]) if len(hit) else None
        out[f"cpt{int(x * 100)}"] = c
        out[f"cpt{int(x * 100)}_frac_of_strong"] = None if c is None or cs == 0 else c / cs
    return out


# ------------------------------------------------------------------------------------ the study
class _Data:
    def __init__(self, bench: Any, target: str) -> None:
        scores = np.asarray(bench.scores, dtype=np.float64)
        cont = not np.isin(scores, (0.0, 1.0)).all()
        self.target = "scores" if target == "scores" or (target == "auto" and cont) else "correct"
        self.Y = np.asarray(scores if self.target == "scores" else bench.correct, dtype=np.float32)
        self.task = np.asarray(bench.task_index, dtype=np.int64)
        self.T = int(bench.n_tasks)
        self.tasks = list(bench.tasks)
        self.models = list(bench.models)
        self.emb = np.asarray(bench.embeddings, dtype=np.float32)


def _fit_fold(
    nb: NeighbourPass, data: _Data, store: np.ndarray, fit_kw: dict[str, Any]
) -> tuple[PerQueryStats, float]:
    t0 = time.perf_counter()
    lists = nb.fit_neighbors(store, fit_depth(fit_kw.get("grid"), fit_kw.get("session_grid")))
    stats = fit(None, data.Y[store], data.task[store], data.T, neighbors=lists, **fit_kw)
    return stats, time.perf_counter() - t0


def _route_all(stats: PerQueryStats, s: np.ndarray, i: np.ndarray) -> dict[str, Any]:
    return {rule: decide_queries(s, i, stats, rule=rule) for rule in RULES}


def _loto(
    data: _Data,
    nb: NeighbourPass,
    fit_kw: dict[str, Any],
    orders: int,
    cost: np.ndarray | None,
    seed: int,
    progress: Progress | None,
) -> dict[str, Any]:
    T, Y, task = data.T, data.Y, data.task
    M = Y.shape[1]
    per_task: dict[str, list[float]] = {RULE_LABELS[r]: [] for r in RULES}
    per_task.update({"BMA": [], "per-query oracle": [], "per-task oracle": [], "random": []})
    calib_pred: dict[str, list[np.ndarray]] = {r: [] for r in RULES}
    calib_y: list[np.ndarray] = []
    traffic = {r: np.zeros(M) for r in [*RULES, "BMA"]}
    sess_rules = ("session: HKS + session evidence (default)", "session: kNN k=5 + session evidence")
    sess: dict[str, dict[str, list[float]]] = {
        name: {}
        for name in (*sess_rules, "HKS, no session", "task-level blend, whole task (reference)", "BMA")
    }
    cost_pts: dict[str, list[np.ndarray]] = {"weight": [], "budget": [], "single": []}
    knobs, fit_s, route_s = [], 0.0, 0.0
    for d in range(T):
        store = np.flatnonzero(task != d)
        queries = np.flatnonzero(task == d)
        if len(queries) == 0:
            continue
        stats, sec = _fit_fold(nb, data, store, fit_kw)
        fit_s += sec
        knobs.append(
            {
                "task": data.tasks[d],
                "knobs": asdict(stats.knobs),
                "session": asdict(stats.session),
                "inner_gain_loto": None if stats.selection is None else stats.selection.gain_loto,
                "inner_gain_loo": None if stats.selection is None else stats.selection.gain_loo,
            }
        )
        K = needed_neighbors(stats)
        s, i = nb.lists(queries, "C", store, K)
        t0 = time.perf_counter()
        dec = _route_all(stats, s, i)
        route_s += time.perf_counter() - t0
        Yq = Y[queries].astype(np.float64)
        ar = np.arange(len(queries))
        bma = stats.best_on_average
        for r, dq in dec.items():
            per_task[RULE_LABELS[r]].append(float(Yq[ar, dq.chosen].mean()))
            calib_pred[r].append(dq.scores)
            traffic[r] += np.bincount(dq.chosen, minlength=M) / len(queries) / T
        calib_y.append(Yq)
        traffic["BMA"][bma] += 1.0 / T
        per_task["BMA"].append(float(Yq[:, bma].mean()))
        per_task["per-query oracle"].append(float(Yq.max(axis=1).mean()))
        per_task["per-task oracle"].append(float(Yq.mean(axis=0).max()))
        per_task["random"].append(float(Yq.mean()))
        # ------------------------------------------------------------------ session replay
        rng = np.random.default_rng([seed, 17, d])
        n = len(queries)
        acc = {name: np.zeros(n) for name in sess}
        ev_mean = dec["hks"].evidence.mean(axis=0)
        sl = stats.session.lam_s
        whole = int(np.argmax((1 - sl) * ev_mean + sl * stats.prior + 1e-9 * stats.prior))
        for _ in range(orders):
            p = rng.permutation(n)
            for name, rule in zip(sess_rules, ("hks", "knn"), strict=True):
                ch = decide_queries(s[p], i[p], stats, rule=rule, session=SessionState()).chosen
                acc[name] += Yq[p, ch]
            acc["HKS, no session"] += Yq[p, dec["hks"].chosen[p]]
            acc["task-level blend, whole task (reference)"] += Yq[p, whole]
            acc["BMA"] += Yq[p, bma]
        for name in sess:
            a = acc[name] / orders
            rec = sess[name]
            for w in POSITIONS:
                rec.setdefault(str(w), []).append(float(a[w]) if w < n else float("nan"))
            rec.setdefault("whole", []).append(float(a.mean()))
        # ------------------------------------------------------------------ cost curve
        if cost is not None:
            for key, val in _cost_sweep(stats, s, i, Yq, cost, [np.ones(len(queries), bool)]).items():
                cost_pts[key].append(val)
        if progress is not None:
            progress(1)
    ys = np.vstack(calib_y)
    out: dict[str, Any] = {
        "rows": paired_rows(per_task),
        "per_task": {k: v for k, v in per_task.items()},
        "tasks": [data.tasks[d] for d in range(T) if (task == d).any()],
        "calibration": {RULE_LABELS[r]: calibration(np.vstack(calib_pred[r]), ys) for r in RULES},
        "traffic": {
            (RULE_LABELS.get(r, r)): {data.models[j]: float(v[j]) for j in np.argsort(-v) if v[j] > 0}
            for r, v in traffic.items()
        },
        "session": {
            "positions": [*map(str, POSITIONS), "whole"],
            "orders": orders,
            "rows": _session_rows(sess),
        },
        "knobs": knobs,
        "fit_seconds": fit_s,
        "route_seconds": route_s,
    }
    if cost is not None and cost_pts["weight"]:
        out["cost_points"] = {k: np.mean(v, axis=0).tolist() for k, v in cost_pts.items()}
    return out


def _cost_sweep(
    stats: PerQueryStats, s: np.ndarray, i: np.ndarray, Yq: np.ndarray, cost: np.ndarray, groups: list
) -> dict[str, np.ndarray]:
    """(cost, quality) per cost weight and per budget, each the mean over ``groups`` (tasks) of the
    group's mean cost and quality; rows of ``s, i`` are the queries of ``Yq``."""
    ar = np.arange(len(Yq))
    out = {}
    settings: dict[str, list[tuple[float, float | None]]] = {
        "weight": [(w, None) for w in COST_WEIGHTS],
        "budget": [(0.0, float(b)) for b in np.unique(cost[np.isfinite(cost)])],
    }
    for key, pairs in settings.items():
        row = []
        for cw, budget in pairs:
            ch = decide_queries(s, i, stats, cost=cost, cost_weight=cw, max_cost=budget).chosen
            c, q = cost[ch], Yq[ar, ch]
            row.append((np.mean([c[g].mean() for g in groups]), np.mean([q[g].mean() for g in groups])))
        out[key] = np.array(row)
    out["single"] = np.mean([Yq[g].mean(axis=0) for g in groups], axis=0)  # same queries, same averaging
    return out


def _session_rows(sess: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    rows = []
    base = sess["BMA"]
    for name, rec in sess.items():
        cells = {}
        for w, v in rec.items():
            vv, bb = np.asarray(v), np.asarray(base[w])
            ok = np.isfinite(vv) & np.isfinite(bb)
            dd = vv[ok] - bb[ok]
            cells[w] = {
                "acc": float(vv[ok].mean()) if ok.any() else None,
                "diff_vs_bma": float(dd.mean()) if ok.any() else None,
                "se": float(dd.std(ddof=1) / np.sqrt(len(dd))) if len(dd) > 1 else None,
                "n_tasks": int(ok.sum()),
            }
        rows.append({"method": name, "at": cells})
    return rows


def _split(
    data: _Data,
    nb: NeighbourPass,
    test: np.ndarray,
    fit_kw: dict[str, Any],
    by_task: bool,
    cost: np.ndarray | None = None,
    cost_out: list | None = None,
) -> dict[str, list[float]]:
    store, queries = np.flatnonzero(~test), np.flatnonzero(test)
    stats, _ = _fit_fold(nb, data, store, fit_kw)
    s, i = nb.lists(queries, "S", store, needed_neighbors(stats))
    dec = _route_all(stats, s, i)
    Yq = data.Y[queries].astype(np.float64)
    tq = data.task[queries]
    ar = np.arange(len(queries))
    groups = [tq == t for t in range(data.T)] if by_task else [np.ones(len(queries), bool)]
    A = stats.task_acc
    res: dict[str, list[float]] = {}
    for r, dq in dec.items():
        y = Yq[ar, dq.chosen]
        res[RULE_LABELS[r]] = [float(y[g].mean()) for g in groups]
    res["BMA"] = [float(Yq[g, stats.best_on_average].mean()) for g in groups]
    if by_task:
        res["known task: best on its training items"] = [
            float(Yq[tq == t][:, int(np.argmax(A[t] + 1e-9 * stats.prior))].mean()) for t in range(data.T)
        ]
    res["per-query oracle"] = [float(Yq[g].max(axis=1).mean()) for g in groups]
    res["per-task oracle"] = [float(Yq[g].mean(axis=0).max()) for g in groups]
    res["random"] = [float(Yq[g].mean()) for g in groups]
    if cost is not None and cost_out is not None:
        cost_out.append(_cost_sweep(stats, s, i, Yq, cost, [g for g in groups if g.any()]))
    return res


def _indist(
    data: _Data,
    nb: NeighbourPass,
    fit_kw: dict[str, Any],
    seeds: Sequence[int],
    test_fraction: float,
    progress: Progress | None,
    cost: np.ndarray | None = None,
    unit: str = "",
) -> dict[str, Any]:
    runs = []
    pts: list[dict[str, np.ndarray]] = []
    for seed in seeds:
        rng = np.random.default_rng([23, seed])
        test = np.zeros(len(data.Y), bool)
        for t in range(data.T):
            m = np.flatnonzero(data.task == t)
            if len(m) > 1:
                test[rng.choice(m, max(1, round(test_fraction * len(m))), replace=False)] = True
        runs.append(_split(data, nb, test, fit_kw, by_task=True, cost=cost, cost_out=pts))
        if progress is not None:
            progress(1)
    per_task = {k: list(np.nanmean([r[k] for r in runs], axis=0)) for k in runs[0]}
    out = {"rows": paired_rows(per_task), "seeds": list(seeds), "test_fraction": test_fraction}
    if cost is not None and pts:
        mean_pts = {k: np.mean([p[k] for p in pts], axis=0).tolist() for k in ("weight", "budget", "single")}
        out["cost"] = _cost_section(data, cost, unit, mean_pts)
    return out


def _instance(
    data: _Data,
    nb: NeighbourPass,
    fit_kw: dict[str, Any],
    splits: int,
    test_fraction: float,
    seed: int,
    progress: Progress | None,
) -> dict[str, Any]:
    """Random splits of all items (instance_study's splits); paired over splits."""
    runs = []
    n = len(data.Y)
    for split in range(splits):
        rng = np.random.default_rng([seed, split])
        test = np.zeros(n, bool)
        test[rng.choice(n, max(1, round(test_fraction * n)), replace=False)] = True
        runs.append(_split(data, nb, test, fit_kw, by_task=False))
        if progress is not None:
            progress(1)
    per_split = {k: [r[k][0] for r in runs] for k in runs[0]}
    return {
        "rows": paired_rows(per_split),
        "splits": splits,
        "test_fraction": test_fraction,
        "paired_over": "splits",
    }


def _cost_section(
    data: _Data, cost: np.ndarray, unit: str, pts: dict[str, list[list[float]]]
) -> dict[str, Any]:
    """Quality-cost curve metrics against the single models, all measured on the same queries and
    averaged the same way (mean over tasks of the per-task means)."""
    cand = np.isfinite(cost)
    mean_acc = np.asarray(pts["single"], dtype=np.float64)
    single = np.column_stack([cost[cand], mean_acc[cand]])
    names = [data.models[j] for j in np.flatnonzero(cand)]
    cheapest = int(np.lexsort((-single[:, 1], single[:, 0]))[0])
    best = int(np.lexsort((single[:, 0], -single[:, 1]))[0])
    weak, strong = tuple(single[cheapest]), tuple(single[best])
    router = np.asarray(pts["weight"])
    budget = np.asarray(pts["budget"])
    both = np.vstack([router, budget])
    h_single = upper_hull(single)
    h_router = upper_hull(both)
    lo, hi = (
        float(min(single[:, 0].min(), both[:, 0].min())),
        float(max(single[:, 0].max(), both[:, 0].max())),
    )
    grid = np.linspace(max(h_router[0, 0], h_single[0, 0]), hi, 201)
    margin = _curve_at(h_router, grid) - _curve_at(h_single, grid)
    return {
        "unit": unit,
        "single_models": [
            {"model": m, "cost": float(c), "acc": float(a)} for m, (c, a) in zip(names, single, strict=True)
        ],
        "weak": {"model": names[cheapest], "cost": weak[0], "acc": weak[1]},
        "strong": {"model": names[best], "cost": strong[0], "acc": strong[1]},
        "mixture_weak_strong": [list(weak), list(strong)],
        "single_hull": h_single.tolist(),
        "router_weight": [
            {"cost_weight": w, "cost": float(c), "acc": float(a)}
            for w, (c, a) in zip(COST_WEIGHTS, router, strict=True)
        ],
        "router_budget": [
            {"max_cost": float(c0), "cost": float(c), "acc": float(a)}
            for c0, (c, a) in zip(np.unique(cost[cand]), budget, strict=True)
        ],
        "router_hull": h_router.tolist(),
        "min_margin_over_single_hull": float(np.nanmin(margin)),
        "above_single_hull_everywhere": bool(np.nanmin(margin) > 0),
        "margin_cost_range": [float(grid[0]), float(grid[-1])],
        "routellm": apgr(both, weak, strong),
        "aiq": {
            "router": aiq(np.vstack([both, [weak]]), (lo, hi)),
            "single_models": aiq(single, (lo, hi)),
            "cost_range": [lo, hi],
        },
        "note": "quality = task-averaged LOTO accuracy; cost = mean per-query cost of the chosen models",
    }


def perquery_study(
    bench: Any,
    *,
    instance_bench: Any = None,
    target: str = "auto",
    seeds: Sequence[int] = (0, 1, 2),
    test_fraction: float = 0.2,
    orders: int = 20,
    splits: int = 5,
    seed: int = 0,
    fit_kw: dict[str, Any] | None = None,
    parts: Sequence[str] = ("loto", "indist", "instance"),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The per-query harness on one benchmark (see the module docstring). ``progress(n)`` advances a bar
    with T (LOTO) + len(seeds) + splits steps."""
    fit_kw = dict(fit_kw or {})
    fit_kw.setdefault("seed", seed)
    out: dict[str, Any] = {"dataset": bench.name, "rules": dict(RULE_LABELS), "seconds": {}}
    data = _Data(bench, target)
    out["target"] = data.target
    t0 = time.perf_counter()
    sizes = np.bincount(data.task)
    nb = NeighbourPass(
        data.emb, data.task, fit_depth(fit_kw.get("grid"), fit_kw.get("session_grid")) + int(sizes.max()) + 50
    )
    out["seconds"]["neighbour_pass"] = time.perf_counter() - t0
    cost, unit = model_costs(getattr(bench, "model_info", None), data.models)
    use_cost = np.isfinite(cost).sum() >= 2
    if "loto" in parts:
        t0 = time.perf_counter()
        lo = _loto(data, nb, fit_kw, orders, cost if use_cost else None, seed, progress)
        pts = lo.pop("cost_points", None)
        out["loto"] = {k: lo[k] for k in ("rows", "per_task", "tasks")}
        out["calibration"] = lo["calibration"]
        out["traffic"] = lo["traffic"]
        out["session"] = lo["session"]
        out["knobs"] = lo["knobs"]
        out["cost"] = (
            {"protocol": "loto", **_cost_section(data, cost, unit, pts)}
            if pts is not None
            else {"skipped": "fewer than 2 models with a known cost"}
        )
        out["seconds"]["loto"] = time.perf_counter() - t0
        out["seconds"]["loto_fit"] = lo["fit_seconds"]
        out["seconds"]["loto_route"] = lo["route_seconds"]
    if "indist" in parts:
        t0 = time.perf_counter()
        out["indist"] = _indist(
            data, nb, fit_kw, seeds, test_fraction, progress, cost if use_cost else None, unit
        )
        out["seconds"]["indist"] = time.perf_counter() - t0
    if "instance" in parts:
        t0 = time.perf_counter()
        ib = instance_bench if instance_bench is not None else bench
        idata = data if ib is bench else _Data(ib, "scores")
        inb = (
            nb
            if ib is bench
            else NeighbourPass(
                idata.emb,
                idata.task,
                fit_depth(fit_kw.get("grid"), fit_kw.get("session_grid"))
                + int(np.bincount(idata.task).max())
                + 50,
            )
        )
        out["instance"] = {
            "dataset": ib.name,
            "target": idata.target,
            **_instance(idata, inb, fit_kw, splits, test_fraction, seed, progress),
        }
        out["seconds"]["instance"] = time.perf_counter() - t0
    return out
