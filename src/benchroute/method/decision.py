"""The one task-level decision chain: the score proposes, the trust rule gates, labels arbitrate.

:func:`decide` is what :meth:`benchroute.router.Router.recommend` runs and what the leave-one-task-out
harness and the studies measure, so an experiment never evaluates a copy of the product's logic.

1. The score (the blend, S1, S2 or S3; per model) restricted to the candidates proposes its argmax.
2. The trust rule (the paper's, eta): route away from the best-on-average model (BMA) only if
   P(the proposal beats BMA on this task) > eta under the S2 / p binomial model.
3. With labeled samples of the new task and a label rule other than "none" (chosen by
   leave-one-task-out per number of labels), the labels decide among the score's leaders and BMA
   instead of the binomial gate.

"Fell back" has one meaning everywhere (API, results.json, report): the chain kept BMA although
the score proposed another model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from benchroute.method.scores import TrustDecision, apply_label_rule, trust_rule


@dataclass(frozen=True)
class Decision:
    """What the chain decided: ``chosen``, the score's ``candidate``, the ``fallback`` (BMA), whether it
    fell back, the trust rule's probability (None when no comparison ran: the candidate is BMA, the
    rule is off, or labels decided), and the label rule used."""

    chosen: int
    candidate: int
    fallback: int
    probability: float | None
    eta: float
    label_rule: str = "none"
    gated: bool = False  # the trust rule ran (on, and no label rule decided instead)

    @property
    def fell_back(self) -> bool:
        return self.chosen == self.fallback and self.candidate != self.fallback


def decide(
    score: np.ndarray,
    s2_values: np.ndarray,
    p: np.ndarray,
    n: int,
    bma: int,
    *,
    mask: np.ndarray | None = None,
    trust: bool = True,
    eta: float = 0.6,
    draws: int = 10_000,
    seed: int = 0,
    label_rule: str = "none",
    labeled: np.ndarray | None = None,
) -> Decision:
    """Run the chain on per-model ``score``, S2 values and p (for the trust rule) of n new inputs.

    ``mask`` restricts the candidates (``bma`` must be one of them); ``labeled`` (s x M 0/1) are the
    labeled samples the ``label_rule`` arbitrates with.

    A score that barely prefers model 0 over the best-on-average model 1 on 10 inputs is vetoed:

    >>> score, p = np.array([0.62, 0.60]), np.array([0.7, 0.7])
    >>> d = decide(score, score, p, 10, bma=1)
    >>> d.candidate, d.chosen, d.fell_back, d.probability < 0.6
    (0, 1, True, True)
    >>> decide(score, score, p, 10, bma=1, trust=False).chosen
    0
    """
    masked = np.asarray(score, dtype=np.float64)
    if mask is not None:
        masked = np.where(mask, masked, -np.inf)
    top = int(np.argmax(masked))
    if label_rule != "none" and labeled is not None and len(labeled):
        chosen = apply_label_rule(label_rule, masked, labeled, bma)
        return Decision(chosen, top, bma, None, eta, label_rule)
    if not trust:
        return Decision(top, top, bma, None, eta)
    gate: TrustDecision = trust_rule(s2_values, p, n, bma, score=masked, eta=eta, draws=draws, seed=seed)
    return Decision(gate.chosen, gate.candidate, bma, gate.probability, eta, gated=True)


def explain(
    decision: Decision,
    names: list[str],
    score: str,
    *,
    blend: Any = None,
    knn_favourite: int | None = None,
    n_labeled: int = 0,
    rule_for: int | None = None,
) -> str:
    """The one sentence that says why ``decision`` chose its model (every reason is built here).

    ``blend`` is the router's :class:`~benchroute.method.scores.BlendChoice` when the score is the blend,
    ``knn_favourite`` the plain wide-kNN leader (named when the prior held it back).
    """
    chosen, cand, fb = names[decision.chosen], names[decision.candidate], names[decision.fallback]
    if decision.label_rule != "none":
        rule = decision.label_rule
        among = (
            "the blend's choice or the best-on-average model"
            if rule == "veto"
            else f"the blend's top {rule[3:]} and the best-on-average model"
        )
        return (
            f"{chosen}: the best on the {n_labeled} labeled samples among {among} "
            f"(rule {rule!r}, chosen by leave-one-task-out for {rule_for} labels; "
            f"the blend alone picks {cand})"
        )
    gate = ""
    if decision.probability is not None:
        verdict = "does not exceed" if decision.fell_back else "exceeds"
        gate = (
            f"P({cand} beats {fb} on this task) = {decision.probability:.3f} {verdict} eta = {decision.eta:g}"
        )
    if score != "blend" or blend is None:
        if decision.candidate == decision.fallback:
            return f"the top-scoring model is the best-on-average model ({fb})"
        if decision.probability is None:
            return f"trust rule off: routing to the top-scoring model {cand} (best on average: {fb})"
        action = f"falling back to {fb}" if decision.fell_back else f"routing to {cand}"
        return f"{gate}; {action}"
    if blend.lam == 1.0:
        return (
            f"best-on-average model {chosen}: on the benchmark tasks, leave-one-task-out found no blend of "
            "kNN accuracy that beats it (lambda=1)"
        )
    how = f"blend of kNN accuracy (k={blend.k}) and the best-on-average prior (lambda={blend.lam:g})"
    if decision.fell_back:
        return f"{how} favours {cand}, but {gate}: falling back to the best-on-average model"
    if decision.chosen == decision.fallback:
        if knn_favourite is not None and knn_favourite != decision.fallback:
            return (
                f"{how} keeps the best-on-average model {fb}: the kNN favourite {names[knn_favourite]} "
                "is not far enough ahead"
            )
        return f"{how}: the best-on-average model {chosen} also leads on this task"
    return f"{how} routes to {chosen} (best on average: {fb})"


__all__ = ["Decision", "decide", "explain"]
