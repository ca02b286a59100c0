"""Task-level scores S1-S3 and the trust rule (when to prefer the best-on-average model).

Given predicted correctness g (n inputs x M models) on a new task's unlabeled inputs:

* S1(m) = mean_i g_m(x_i): the expected accuracy if g were calibrated.
* S2(m) = mean_i 1[g_m(x_i) > t]: the share of inputs on which m is predicted correct.
* S3(m) = S2(m) p + (1 - S2(m)) (1 - p), with p = p(d', m) the estimated accuracy of the
  thresholded predictor on this task: a prediction "correct" is right with probability p and a
  prediction "wrong" is wrong with probability p. S3 shrinks S2 toward 0.5 when p is low, i.e.
  when the new task is far from the benchmarks and the predictor cannot be trusted.

The trust rule (eta) turns S3's uncertainty into a decision: under the model above, the accuracy of
m on the task is S~(m) = (Binomial(n S2, p) + Binomial(n (1 - S2), 1 - p)) / n. We route to
m3 = argmax S3 only if P(S~(m3) > S~(m*)) > eta, where m* is the best model on average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def s1(g: np.ndarray) -> np.ndarray:
    """S1(m) = mean_i g_m(x_i)."""
    return np.asarray(g, dtype=np.float64).mean(axis=0)


def s2(g: np.ndarray, t: float = 0.5) -> np.ndarray:
    """S2(m) = mean_i 1[g_m(x_i) > t]."""
    return (np.asarray(g) > t).mean(axis=0)


def s3(s2_values: np.ndarray, p: np.ndarray) -> np.ndarray:
    """S3(m) = S2 p + (1 - S2)(1 - p): expected accuracy when the thresholded predictor is right w.p. p."""
    s2_values = np.asarray(s2_values, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    return s2_values * p + (1.0 - s2_values) * (1.0 - p)


def accuracy_distribution(n: int, n_pos: int, p: float) -> np.ndarray:
    """Exact PMF of n * S~(m) over 0..n: Binomial(n_pos, p) + Binomial(n - n_pos, 1 - p).

    Used to check the Monte Carlo estimate against its closed form for small n.
    """
    from scipy.stats import binom

    a = binom.pmf(np.arange(n_pos + 1), n_pos, p)
    b = binom.pmf(np.arange(n - n_pos + 1), n - n_pos, 1.0 - p)
    return np.convolve(a, b)


def prob_better_exact(n: int, pos_a: int, p_a: float, pos_b: int, p_b: float) -> float:
    """P(S~(a) > S~(b)) in closed form (independent draws), O(n^2); for tests and small n."""
    pa = accuracy_distribution(n, pos_a, p_a)
    pb = accuracy_distribution(n, pos_b, p_b)
    cdf_b_below = np.concatenate([[0.0], np.cumsum(pb)[:-1]])  # P(B < j)
    return float(np.sum(pa * cdf_b_below))


def prob_better_mc(
    n: int, pos_a: int, p_a: float, pos_b: int, p_b: float, draws: int = 10_000, seed: int = 0
) -> float:
    """Monte Carlo estimate of P(S~(a) > S~(b)) with ``draws`` seeded independent draws."""
    rng = np.random.default_rng(seed)
    acc_a = rng.binomial(pos_a, p_a, draws) + rng.binomial(n - pos_a, 1.0 - p_a, draws)
    acc_b = rng.binomial(pos_b, p_b, draws) + rng.binomial(n - pos_b, 1.0 - p_b, draws)
    return float(np.mean(acc_a > acc_b))


@dataclass(frozen=True)
class TrustDecision:
    """Outcome of the trust rule: the chosen model index and why.

    ``probability`` is None when no comparison was made: the top-scoring model is the
    best-on-average model, or the caller switched the rule off (then ``chosen == candidate``).
    """

    chosen: int
    candidate: int
    fallback: int
    probability: float | None
    eta: float
    fell_back: bool

    def reason(self, names: list[str]) -> str:
        cand, fb = names[self.candidate], names[self.fallback]
        if self.candidate == self.fallback:
            return f"the top-scoring model is the best-on-average model ({fb})"
        if self.probability is None:  # no comparison was made: the caller switched the rule off
            return f"trust rule off: routing to the top-scoring model {cand} (best on average: {fb})"
        verdict = "exceeds" if not self.fell_back else "does not exceed"
        action = f"routing to {cand}" if not self.fell_back else f"falling back to {fb}"
        p = f"P({cand} beats {fb} on this task) = {self.probability:.3f}"
        return f"{p} {verdict} eta = {self.eta:g}; {action}"


def trust_rule(
    s2_values: np.ndarray,
    p: np.ndarray,
    n: int,
    best_on_average: int,
    *,
    score: np.ndarray | None = None,
    eta: float = 0.6,
    draws: int = 10_000,
    seed: int = 0,
) -> TrustDecision:
    """Choose argmax ``score`` (default S3) over the best-on-average model only if it is likely better.

    ``s2_values`` and ``p`` are per model; n is the number of inputs of the new task.
    """
    s2_values = np.asarray(s2_values, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    score = s3(s2_values, p) if score is None else np.asarray(score)
    cand = int(np.argmax(score))
    if cand == best_on_average:
        return TrustDecision(cand, cand, best_on_average, None, eta, False)
    pos = np.rint(s2_values * n).astype(int)
    prob = prob_better_mc(
        n, int(pos[cand]), float(p[cand]), int(pos[best_on_average]), float(p[best_on_average]), draws, seed
    )
    trusted = prob > eta
    return TrustDecision(cand if trusted else best_on_average, cand, best_on_average, prob, eta, not trusted)


#: Grid of the blended score: kNN neighbourhood sizes and weights of the best-on-average prior.
BLEND_KS: tuple[int, ...] = (5, 10, 20, 50, 100, 200)
BLEND_LAMBDAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def blend(s1_at_k: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    """Blended score (1 - lambda) S1_k + lambda * prior: S1 shrunk toward the best-on-average ranking.

    S1 from a wide neighbourhood estimates each model's accuracy on the new task, but noisily; the
    prior (each model's mean accuracy over the benchmark tasks) is stable but ignores the task.
    lambda = 1 is the best-on-average model itself, so the blend can never be forced to route.

    >>> blend(np.array([0.9, 0.5]), np.array([0.6, 0.7]), lam=0.5).tolist()
    [0.75, 0.6]
    """
    return (1.0 - lam) * np.asarray(s1_at_k, dtype=np.float64) + lam * np.asarray(prior, dtype=np.float64)


@dataclass(frozen=True)
class BlendChoice:
    """The (k, lambda) picked by leave-one-task-out over the training tasks, and its inner accuracy.

    ``gain_se`` is the paired standard error of the inner gain over the best-on-average model;
    ``gated`` says the best blend was not taken because its gain was within ``min_z`` of them.
    """

    k: int
    lam: float
    inner_accuracy: float
    bma_inner_accuracy: float
    gain_se: float | None = None
    gated: bool = False


def select_blend(
    curves: dict[int, np.ndarray],
    priors: dict[int, np.ndarray],
    accuracy: np.ndarray,
    ks: Sequence[int] = BLEND_KS,
    lambdas: Sequence[float] = BLEND_LAMBDAS,
    min_z: float = 0.0,
) -> BlendChoice:
    """Pick (k, lambda) maximizing the mean accuracy of the chosen model over held-out training tasks.

    ``curves[d]`` is task d's S1 at each k (len(ks) x M) computed without d (and without whatever
    the caller holds out), ``priors[d]`` the mean accuracy over the training tasks other than d,
    ``accuracy`` the true task x model accuracy. Ties prefer the larger lambda (closer to the
    best-on-average model) and then the smaller k, so a choice that is not better is not taken.

    ``min_z`` gates the choice: unless the best blend's mean inner gain over the best-on-average
    model exceeds ``min_z`` paired standard errors, lambda = 1 (the best-on-average model) is kept.
    With few benchmark tasks the best of 30 configurations wins the inner loop by luck; the gate
    asks for evidence before routing away from the safe choice.
    """
    tasks = sorted(curves)
    if not tasks:
        raise ValueError("select_blend needs at least one held-out training task")
    bma_acc = np.array([accuracy[d, int(np.argmax(priors[d]))] for d in tasks])
    best: tuple[float, float, int, np.ndarray] | None = None
    for lam in sorted(lambdas, reverse=True):
        for j, k in enumerate(ks):
            per_task = np.array(
                [accuracy[d, int(np.argmax(blend(curves[d][j], priors[d], lam)))] for d in tasks]
            )
            if best is None or per_task.mean() > best[0] + 1e-12:
                best = (float(per_task.mean()), lam, k, per_task)
    assert best is not None
    acc, lam, k, per_task = best
    diff = per_task - bma_acc
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    gated = lam != 1.0 and 1.0 in lambdas and not diff.mean() > min_z * se
    if gated:
        acc, lam, k = float(bma_acc.mean()), 1.0, ks[0]
    return BlendChoice(
        k=k,
        lam=lam,
        inner_accuracy=acc,
        bma_inner_accuracy=float(bma_acc.mean()),
        gain_se=se if np.isfinite(se) else None,
        gated=gated,
    )


#: How a few labeled samples of the new task may overrule the blend (chosen by leave-one-task-out):
#: "none" keeps the blend's choice, "veto" falls back to the best-on-average model if the blend's choice
#: is worse on the labeled samples, "topM" takes the best on the labeled samples among the blend's top M
#: models and the best-on-average one.
LABEL_RULES: tuple[str, ...] = ("none", "veto", "top2", "top3", "top5")
#: Numbers of labeled samples the rule is chosen for; a request uses the nearest.
LABEL_GRID: tuple[int, ...] = (5, 10, 20, 50)
#: Simulated labeled draws per training task and grid size.
LABEL_REPEATS = 3


def label_grid_size(n_labeled: int) -> int:
    """The grid size a request with ``n_labeled`` samples uses (the nearest; ties to the smaller)."""
    return min(LABEL_GRID, key=lambda g: (abs(g - n_labeled), g))


def apply_label_rule(rule: str, score: np.ndarray, labeled: np.ndarray, bma: int) -> int:
    """The model a rule of :data:`LABEL_RULES` picks from the blend ``score`` and labeled rows (s x M 0/1).

    Why not simply the best model on the labeled samples: a dozen labels over dozens of models is a
    winner's-curse estimate (few-shot accuracy is below the blend's at every alpha we measured); asking
    the labels only to arbitrate among two to six candidates keeps their noise from picking the model.
    Ties go to the blend's order (the best-on-average model last).
    """
    score = np.asarray(score, dtype=np.float64)
    labeled = np.asarray(labeled, dtype=np.float64)
    top = int(np.argmax(score))
    if rule == "none" or len(labeled) == 0:
        return top
    if rule == "veto":
        return bma if labeled[:, top].mean() < labeled[:, bma].mean() else top
    if not rule.startswith("top"):
        raise ValueError(f"unknown label rule {rule!r}; use one of {LABEL_RULES}")
    order = [int(j) for j in np.argsort(-score, kind="stable")[: int(rule[3:])] if np.isfinite(score[j])]
    cand = list(dict.fromkeys([*order, bma]))
    return cand[int(np.argmax(labeled[:, cand].mean(axis=0)))]


def select_label_rule(
    draws: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    lam: float,
    rules: tuple[str, ...] = LABEL_RULES,
) -> str:
    """The rule with the best mean accuracy over simulated labeled draws of held-out training tasks.

    ``draws``: (S1 at the blend's k with the draw's samples labeled, the prior, labeled rows, accuracy
    on the task's other samples) per draw. Ties prefer the earlier rule ("none" first).
    """
    if not draws:
        return "none"
    total = np.zeros(len(rules))
    for curve, prior, labeled, acc in draws:
        score = blend(curve, prior, lam)
        bma = int(np.argmax(prior))
        total += [acc[apply_label_rule(rule, score, labeled, bma)] for rule in rules]
    return rules[int(np.argmax(total - 1e-9 * np.arange(len(rules))))]


def label_rules_for(
    engine: Any,
    tasks: list[int],
    excluded: list[int],
    choice: BlendChoice,
    task_accuracy: np.ndarray,
    sizes: tuple[int, ...],
    seed: int,
    repeats: int = LABEL_REPEATS,
) -> dict[int, str]:
    """The label rule per number of labeled samples, by leave-one-task-out over ``tasks``.

    Each training task x in turn plays the new task: s of its samples are labeled (``repeats`` draws,
    from ``engine``, a :class:`benchroute.method.confidence.FoldEngine`, with x and ``excluded`` out of
    training), the blend at ``choice`` ranks the models against the prior of the other tasks, and each
    rule is scored on x's remaining samples.
    """
    priors = {x: task_accuracy[[t for t in tasks if t != x]].mean(axis=0) for x in tasks}
    rules = {}
    for s in sizes:
        draws = [
            (c, priors[x], lab, acc)
            for x in tasks
            for c, lab, acc in engine.labeled_draws(x, excluded, choice.k, s, repeats, seed)
        ]
        rules[s] = select_label_rule(draws, choice.lam)
    return rules
