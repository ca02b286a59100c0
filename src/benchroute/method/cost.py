"""Cost-aware routing: which model to pick when accuracy is not the only thing that matters.

The paper (Shnitzer et al., 2023) names "cost-aware choice of smaller models" as future work. Given
the router's predicted accuracy of every candidate on a new task and each model's cost, this module
turns the two into one choice, in one of three ways (:func:`choose`):

* ``cost_weight = lambda``: maximize pred_acc - lambda * cost / max cost (max over the candidates
  with a known cost). lambda = 0 is the plain router; lambda = 1 trades the whole cost range for one
  point of accuracy (1.0 = 100 percentage points), so useful values are small (0.01 - 0.5).
* ``max_cost = B``: a budget. The model with the best predicted accuracy among those costing <= B.
* ``cheapest_within = eps``: the cheapest model whose predicted accuracy is >= best - eps.
  :func:`cheapest_within_trusted` applies the paper's trust rule to that comparison: a cheaper model
  qualifies only if P(S~(m) >= S~(best) - eps) > eta under the S3 correctness model.

Cost (:func:`model_costs`): USD per million tokens (mean of the input and output price) when the
benchmark's models.csv has prices, else the parameter count in billions as a proxy (a model twice the
size costs roughly twice as much to serve). Units are never mixed: if any model has a price, models
without one get NaN rather than their size.

Unknown cost (NaN) is treated as follows: under ``max_cost`` such a model is never chosen (it cannot
be shown to be within budget); under ``cost_weight`` and ``cheapest_within`` it is excluded from the
choice unless no candidate has a known cost, in which case cost cannot matter and the choice is the
plain argmax of the predicted accuracy (the reason says so). For ``cheapest_within`` the reference
"best" is the best over all candidates, known cost or not: if nothing with a known cost is within
eps of it, the best itself is chosen.

Evaluation (:func:`benchroute.experiments.cost.cost_study`) sweeps lambda in leave-one-task-out and
summarizes the
accuracy-cost curve with RouterBench's AIQ (:func:`aiq`, Hu et al. 2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchroute.errors import ConfigError
from benchroute.method.scores import s3

__all__ = [
    "COST_UNITS",
    "Choice",
    "aiq",
    "cheapest_within_trusted",
    "choose",
    "cost_adjustment",
    "model_costs",
    "pareto_frontier",
    "prob_within_mc",
]

COST_UNITS = ("usd_per_mtok", "params_b")


# ---------------------------------------------------------------------------------------- costs


def info_column(model_info: Any, column: str, models: Sequence[str]) -> np.ndarray:
    """One ``model_info`` column as floats in ``models`` order (NaN where unknown)."""
    if model_info is None or column not in getattr(model_info, "columns", ()):
        return np.full(len(models), np.nan)
    col = model_info[column]
    return np.array([float(col.loc[m]) if m in col.index else np.nan for m in models], dtype=np.float64)


def model_costs(model_info: Any, models: Sequence[str]) -> tuple[np.ndarray, str]:
    """(cost per model, unit): USD per million tokens if any model has a price, else params_b.

    ``model_info`` is :attr:`benchroute.data.benchmark.Benchmark.model_info` (indexed by model name, columns
    ``usd_per_mtok_in``, ``usd_per_mtok_out``, ``params_b``; missing columns or rows count as unknown).
    The price of a model is the mean of its input and output price, or the one that is known.
    Unknown costs are NaN (see the module docstring for how :func:`choose` treats them). With no
    price and no size anywhere, every cost is NaN and the unit is "params_b".
    """
    models = list(models)
    cin = info_column(model_info, "usd_per_mtok_in", models)
    cout = info_column(model_info, "usd_per_mtok_out", models)
    price = np.where(np.isnan(cout), cin, np.where(np.isnan(cin), cout, (cin + cout) / 2.0))
    if np.isfinite(price).any():
        return price, "usd_per_mtok"
    return info_column(model_info, "params_b", models), "params_b"


# --------------------------------------------------------------------------------------- choice


@dataclass(frozen=True)
class Choice:
    """A cost-aware choice: the chosen index, why, and the accuracy-cost Pareto frontier.

    ``best`` is the candidate with the highest predicted accuracy (what the plain router picks),
    ``frontier`` the non-dominated candidates with a known cost, cheapest first, ``mode`` one of
    "accuracy", "cost_weight", "max_cost", "cheapest_within", ``probability`` (trusted
    cheapest-within only) the chosen model's P(S~(m) >= S~(best) - eps).
    """

    index: int
    reason: str
    frontier: list[int]
    mode: str
    best: int
    probability: float | None = None
    probabilities: dict[int, float] = field(default_factory=dict)


def pareto_frontier(pred_acc: np.ndarray, cost: np.ndarray, mask: np.ndarray | None = None) -> list[int]:
    """Indices of the non-dominated models (no other is at most as costly and at least as accurate,
    one of the two strictly), sorted by cost then index. NaN cost or accuracy: not on the frontier.

    Exact duplicates (same cost and accuracy) dominate neither each other, so both are kept.
    """
    a = np.asarray(pred_acc, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(c)
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool)
    idx = np.flatnonzero(ok)
    if not len(idx):
        return []
    ai, ci = a[idx], c[idx]
    # dominated[i]: some j with c_j <= c_i, a_j >= a_i and (c_j < c_i or a_j > a_i)
    le, ge = ci[None, :] <= ci[:, None], ai[None, :] >= ai[:, None]
    strict = (ci[None, :] < ci[:, None]) | (ai[None, :] > ai[:, None])
    dominated = (le & ge & strict).any(axis=1)
    keep = idx[~dominated]
    return [int(j) for j in keep[np.lexsort((keep, c[keep]))]]


def _names(names: Sequence[str] | None, m: int) -> list[str]:
    return list(names) if names is not None else [f"model {j}" for j in range(m)]


def choose(
    pred_acc: np.ndarray,
    cost: np.ndarray,
    *,
    cost_weight: float = 0.0,
    max_cost: float | None = None,
    cheapest_within: float | None = None,
    mask: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> Choice:
    """Pick a model from predicted accuracies and costs (one entry per model).

    ``max_cost`` is a hard filter (cost <= max_cost; unknown cost never passes) and combines with
    either of the other two; ``cost_weight`` and ``cheapest_within`` are exclusive. With neither,
    the choice is argmax pred_acc (the first index on ties, like ``np.argmax``), so
    ``cost_weight = 0`` is exactly the plain router. Ties of the cost-weighted objective go to the
    cheaper model, ties in cost under ``cheapest_within`` to the more accurate one, then the lower index.
    ``mask`` restricts the candidates; ``names`` only label the reason. Raises ConfigError when no
    candidate is left (e.g. nothing within the budget).
    """
    a = np.asarray(pred_acc, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    if a.ndim != 1 or c.shape != a.shape:
        raise ConfigError(f"pred_acc and cost must be 1-d of one length, got {a.shape} and {c.shape}")
    m = len(a)
    cand = np.ones(m, bool) if mask is None else np.asarray(mask, dtype=bool).copy()
    if cand.shape != (m,):
        raise ConfigError(f"mask must have {m} entries, got {cand.shape}")
    cand &= ~np.isnan(a)
    if not cand.any():
        raise ConfigError("no candidate model to choose from")
    if cost_weight < 0:
        raise ConfigError(f"cost_weight must be >= 0, got {cost_weight}")
    if cheapest_within is not None and cheapest_within < 0:
        raise ConfigError(f"cheapest_within must be >= 0, got {cheapest_within}")
    if cheapest_within is not None and cost_weight > 0:
        raise ConfigError("cost_weight and cheapest_within are alternatives", "give one of them")
    nm = _names(names, m)
    known = np.isfinite(c)
    budget_note = ""
    if max_cost is not None:
        cand = _within_budget(cand, c, max_cost)
        budget_note = f" within the budget {max_cost:g}"
    frontier = pareto_frontier(a, c, cand)
    best = int(np.argmax(np.where(cand, a, -np.inf)))

    if cheapest_within is not None:
        pool = cand & known & (a >= a[best] - cheapest_within - 1e-12)
        if not pool.any():
            return Choice(
                best,
                f"no model with a known cost is within {cheapest_within:g} of the best "
                f"({nm[best]}, {a[best]:.3f}); choosing it{budget_note}",
                frontier,
                "cheapest_within",
                best,
            )
        j = _cheapest(pool, a, c)
        why = (
            f"{nm[j]} is the cheapest model{budget_note} whose predicted accuracy {a[j]:.3f} is within "
            f"{cheapest_within:g} of the best ({nm[best]}, {a[best]:.3f})"
        )
        return Choice(j, why, frontier, "cheapest_within", best)

    if cost_weight > 0:
        pool = cand & known
        if not pool.any():
            return Choice(
                best,
                f"no candidate has a known cost: highest predicted accuracy {nm[best]}",
                frontier,
                "cost_weight",
                best,
            )
        top = np.max(c[pool])
        norm = c / top if top > 0 else np.zeros(m)
        obj = np.where(pool, a - cost_weight * norm, -np.inf)
        ties = np.flatnonzero(obj >= obj.max() - 1e-12)
        j = int(ties[np.lexsort((ties, c[ties]))[0]])
        why = (
            f"{nm[j]} maximizes predicted accuracy - {cost_weight:g} x cost / {top:g}{budget_note}: "
            f"{a[j]:.3f} - {cost_weight:g} x {norm[j]:.3f} = {obj[j]:.3f}"
        )
        if j != best:
            why += f" (most accurate: {nm[best]}, {a[best]:.3f})"
        return Choice(j, why, frontier, "cost_weight", best)

    mode = "max_cost" if max_cost is not None else "accuracy"
    return Choice(
        best,
        f"{nm[best]} has the highest predicted accuracy ({a[best]:.3f}){budget_note}",
        frontier,
        mode,
        best,
    )


def _within_budget(cand: np.ndarray, c: np.ndarray, max_cost: float) -> np.ndarray:
    """The candidates with a known cost <= ``max_cost`` (a ConfigError naming the cheapest if none)."""
    known = np.isfinite(c)
    within = cand & known & (c <= max_cost)
    if not within.any():
        cheapest = np.nanmin(np.where(cand & known, c, np.nan)) if (cand & known).any() else None
        raise ConfigError(
            f"no candidate model costs <= {max_cost:g}",
            f"the cheapest candidate with a known cost costs {cheapest:g}"
            if cheapest is not None
            else "no candidate has a known cost",
        )
    return within


def _cheapest(pool: np.ndarray, a: np.ndarray, c: np.ndarray) -> int:
    """Cheapest index in ``pool``; ties to the more accurate, then the lower index."""
    idx = np.flatnonzero(pool)
    return int(idx[np.lexsort((idx, -a[idx], c[idx]))[0]])


# ----------------------------------------------------------------------- trusted cheapest-within


def _accuracy_draws(
    n: int, pos: np.ndarray, p: np.ndarray, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """draws x K samples of n * S~ for K models: Binomial(pos, p) + Binomial(n - pos, 1 - p).

    The correctness model of the trust rule (benchroute.method.scores), vectorized over models.
    """
    pos = np.asarray(pos, dtype=np.int64)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    size = (draws, len(pos))
    return rng.binomial(pos, p, size) + rng.binomial(n - pos, 1.0 - p, size)


def prob_within_mc(
    n: int,
    pos: np.ndarray,
    p: np.ndarray,
    ref_pos: int,
    ref_p: float,
    margin: float = 0.0,
    draws: int = 10_000,
    seed: int = 0,
) -> np.ndarray:
    """P(S~(m) >= S~(ref) - margin) for each model m (vectors ``pos``, ``p``), by Monte Carlo.

    Generalizes :func:`benchroute.method.scores.prob_better_mc` (P(S~(a) > S~(b)), independent draws) with
    a margin and a non-strict comparison: "m is at most ``margin`` worse than the reference". The
    reference is drawn once and shared by all models (common random numbers), so the estimates are
    consistent with each other; each model's draws are independent of the reference's.
    Comparisons are on counts: n S~(m) >= n S~(ref) - n margin (up to a 1e-9 rounding guard).
    """
    if n <= 0:
        raise ConfigError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    ref = _accuracy_draws(n, np.array([ref_pos]), np.array([ref_p]), draws, rng)  # draws x 1
    acc = _accuracy_draws(n, pos, p, draws, rng)
    return (acc >= ref - margin * n - 1e-9).mean(axis=0)


def cheapest_within_trusted(
    s2: np.ndarray,
    p: np.ndarray,
    n: int,
    cost: np.ndarray,
    eps: float,
    eta: float = 0.6,
    draws: int = 10_000,
    seed: int = 0,
    *,
    score: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> Choice:
    """The cheapest model m with P(S~(m) >= S~(best) - eps) > eta; else the best itself.

    ``best`` = argmax ``score`` (default S3 = s3(s2, p)) among the candidates. S~(m) is the trust
    rule's random task accuracy (Binomial(n S2, p) + Binomial(n (1 - S2), 1 - p)) / n. Only models
    with a known cost below the best's (any known cost if the best's is unknown) are tested; the
    best always qualifies (it is within eps of itself). A cheaper model is taken only when the
    correctness model gives it more than eta probability of losing at most eps to the best, the
    same guard the trust rule puts on routing away from the best-on-average model. A larger eta can
    only keep the choice or move it to a costlier model (the probabilities do not depend on eta).
    Needs S2 and p, i.e. the paper's S3 router; for the blend router use :func:`choose`.
    """
    v2 = np.asarray(s2, dtype=np.float64)
    pp = np.asarray(p, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    sc = s3(v2, pp) if score is None else np.asarray(score, dtype=np.float64)
    if not v2.shape == pp.shape == c.shape == sc.shape or v2.ndim != 1:
        raise ConfigError("s2, p, cost (and score) must be 1-d with one entry per model")
    if eps < 0 or not 0.0 <= eta <= 1.0:
        raise ConfigError(f"need eps >= 0 and eta in [0, 1], got eps={eps}, eta={eta}")
    m = len(v2)
    cand = np.ones(m, bool) if mask is None else np.asarray(mask, dtype=bool)
    if not cand.any():
        raise ConfigError("no candidate model to choose from")
    nm = _names(names, m)
    best = int(np.argmax(np.where(cand, sc, -np.inf)))
    frontier = pareto_frontier(sc, c, cand)
    cheaper = cand & np.isfinite(c) & ((c < c[best]) if np.isfinite(c[best]) else True)
    cheaper[best] = False
    idx = np.flatnonzero(cheaper)
    if not len(idx):
        return Choice(
            best,
            f"no candidate is cheaper than the best ({nm[best]}); choosing it",
            frontier,
            "cheapest_within",
            best,
        )
    pos = np.rint(v2 * n).astype(np.int64)
    prob = prob_within_mc(n, pos[idx], pp[idx], int(pos[best]), float(pp[best]), eps, draws, seed)
    probs = {int(j): float(q) for j, q in zip(idx, prob, strict=True)}
    ok = np.zeros(m, bool)
    ok[idx[prob > eta]] = True
    if not ok.any():
        return Choice(
            best,
            f"no cheaper model is within {eps:g} of {nm[best]} with probability > eta = {eta:g} "
            f"(highest: {max(probs.values()):.3f}); choosing the best",
            frontier,
            "cheapest_within",
            best,
            None,
            probs,
        )
    j = _cheapest(ok, sc, c)
    why = (
        f"{nm[j]} is the cheapest model with P(its accuracy >= {nm[best]}'s - {eps:g}) = {probs[j]:.3f} "
        f"> eta = {eta:g}"
    )
    return Choice(j, why, frontier, "cheapest_within", best, probs[j], probs)


# ------------------------------------------------------------------------------------------ AIQ


def _hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the non-decreasing upper convex hull (cost ascending), ending at the best quality."""
    order = np.lexsort((-points[:, 1], points[:, 0]))
    pts = points[order]
    # one point per cost: the best quality there
    first = np.concatenate([[True], np.diff(pts[:, 0]) > 0])
    pts = pts[first]
    hull: list[np.ndarray] = []
    for q in pts:  # Andrew's monotone chain, upper part
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            if (a[0] - o[0]) * (q[1] - o[1]) - (a[1] - o[1]) * (q[0] - o[0]) >= 0:  # a not strictly above o-q
                hull.pop()
            else:
                break
        hull.append(q)
    h = np.array(hull)
    top = int(np.argmax(h[:, 1]))  # first vertex at the best quality; the concave hull falls after it
    return h[: top + 1]


def aiq(
    points: Sequence[tuple[float, float]] | np.ndarray, cost_range: tuple[float, float] | None = None
) -> float:
    """RouterBench's AIQ (Hu et al. 2024): normalized area under the non-decreasing convex hull.

    Precisely, for points (cost_i, quality_i) (NaNs dropped):

    1. R(c) is the upper convex hull of the points from the cheapest point (best quality at that
       cost) up to the first point of highest quality, then constant at that quality up to c_max.
       Any point on the hull is achievable by randomly mixing the two routers / models at its ends,
       which is why the hull (not the raw points) is the curve.
    2. Costs are normalized over ``cost_range`` = (c_min, c_max), by default the min and max cost of
       the points; R(c) = 0 for c below the cheapest point (nothing is achievable for less).
    3. AIQ = integral of R over [c_min, c_max] divided by (c_max - c_min), i.e. the mean quality
       over the normalized cost axis [0, 1]. If c_max == c_min it is the best quality at that cost.

    Use one shared ``cost_range`` to compare curves (as :func:`benchroute.experiments.cost.cost_study` does).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if not len(pts):
        return float("nan")
    if cost_range is None:
        lo, hi = float(pts[:, 0].min()), float(pts[:, 0].max())
    else:
        lo, hi = float(cost_range[0]), float(cost_range[1])
    if hi < lo:
        raise ConfigError(f"cost_range must be (low, high) with low <= high, got {cost_range}")
    if hi == lo:
        at = pts[pts[:, 0] <= lo]
        return float(at[:, 1].max()) if len(at) else 0.0
    pts = pts[pts[:, 0] <= hi]
    if not len(pts):
        return 0.0
    h = _hull(pts)
    x = np.concatenate([h[:, 0], [hi]])
    y = np.concatenate([h[:, 1], [h[-1, 1]]])
    # clip the curve to [lo, hi] (it starts at the cheapest point; below that R = 0)
    if x[0] < lo:
        y0 = float(np.interp(lo, x, y))
        keep = x > lo
        x, y = np.concatenate([[lo], x[keep]]), np.concatenate([[y0], y[keep]])
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / (hi - lo)


# ------------------------------------------------------------------ per-query (vectorized) cost
def cost_adjustment(
    cost: np.ndarray,
    *,
    cost_weight: float = 0.0,
    max_cost: float | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(candidates (M,) bool, penalty (M,)): the cost part of :func:`choose`, for many queries at once.

    The score of model m becomes ``score - penalty[m]`` among ``candidates``, with the meaning of
    :func:`choose`: ``max_cost`` keeps the models with a known cost <= max_cost (ConfigError if none);
    ``cost_weight`` > 0 keeps the models with a known cost and charges cost_weight x cost / max cost
    over those candidates (if no candidate has a known cost, cost cannot matter: no penalty, the
    candidates unchanged). Without a cost option the penalty is 0 and the candidates are ``mask``.
    """
    c = np.asarray(cost, dtype=np.float64)
    m = len(c)
    cand = np.ones(m, bool) if mask is None else np.asarray(mask, dtype=bool).copy()
    if c.ndim != 1 or cand.shape != (m,):
        raise ConfigError(f"cost and mask must be 1-d of one length, got {c.shape} and {cand.shape}")
    if cost_weight < 0:
        raise ConfigError(f"cost_weight must be >= 0, got {cost_weight}")
    if not cand.any():
        raise ConfigError("no candidate model to choose from")
    known = np.isfinite(c)
    penalty = np.zeros(m)
    if max_cost is not None:
        cand = _within_budget(cand, c, max_cost)
    if cost_weight > 0 and (cand & known).any():
        cand = cand & known
        top = float(np.max(c[cand]))
        penalty = np.where(cand, cost_weight * (c / top if top > 0 else 0.0), 0.0)
    return cand, penalty
