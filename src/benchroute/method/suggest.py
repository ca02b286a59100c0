"""Active labeling of a new task: which few inputs should a user label to improve the recommendation?

The paper (Shnitzer et al., 2023) shows that a few labeled samples of the new task, moved into
training, close much of the out-of-distribution gap (its alpha sweep draws them at random), and names
"active learning of which samples to label" as future work. A label of input x is every candidate
model's 0/1 correctness on x; with the kNN router it joins the neighbour pool of the task's other
inputs (and the few-shot estimate). :func:`suggest_labels` ranks the inputs to label by one of:

* ``random``: a seeded uniform sample. The baseline every other strategy must beat at equal budget.
* ``uncertainty``: the inputs where the top-scoring models' predicted correctness disagrees most.
  Only the ranking among the leading candidates decides the recommendation; an input on which all
  of them are predicted right (or all wrong) cannot reorder them, one where some are predicted right
  and others wrong can. Disagreement = variance across the top models of g_m(x); ties are broken by
  their mean binary entropy (all predicted 50/50 is still informative), then by index.
* ``diversity``: greedy k-center on the embeddings (cosine distance), starting from the input
  nearest the centroid. The labeled inputs become neighbours of the unlabeled ones, so covering the
  task's embedding space lets the most unlabeled inputs find a same-task neighbour, and the labeled
  set is representative (a fair few-shot estimate) rather than a clump.
* ``hybrid``: k-center where each candidate's distance to the labeled set is weighted by its
  uncertainty (weight 0.5 + 0.5 * disagreement / max disagreement): spread out, but preferring
  inputs that can reorder the top models.

Every strategy returns its picks in order of preference, and the deterministic ones are greedy, so
the first b picks of a budget-B run are exactly the picks of a budget-b run.

:func:`benchroute.experiments.active.active_study` evaluates them in leave-one-task-out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchroute.errors import ConfigError

__all__ = ["STRATEGIES", "disagreement", "suggest_labels"]

STRATEGIES = ("random", "uncertainty", "diversity", "hybrid")


def _normalize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def disagreement(
    g: np.ndarray, top: int = 5, scores: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(variance, mean binary entropy) per input of g over the ``top`` models ranked by ``scores``.

    ``scores`` defaults to S1 = mean_i g; ties in the ranking go to the lower model index.
    """
    g = np.asarray(g, dtype=np.float64)
    sc = g.mean(axis=0) if scores is None else np.asarray(scores, dtype=np.float64)
    if sc.shape != (g.shape[1],):
        raise ConfigError(f"scores must have one entry per model ({g.shape[1]}), got {sc.shape}")
    top_m = np.argsort(-sc, kind="stable")[: max(1, min(top, g.shape[1]))]
    gt = np.clip(g[:, top_m], 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(gt * np.log2(gt) + (1 - gt) * np.log2(1 - gt))
    return gt.var(axis=1), np.nan_to_num(h, nan=0.0).mean(axis=1)


def _k_center(E: np.ndarray, budget: int, weight: np.ndarray | None = None) -> list[int]:
    """Greedy (weighted) k-center on unit vectors E, starting at the (weighted) input nearest the centroid."""
    n = len(E)
    w = np.ones(n) if weight is None else weight
    centroid = E.mean(axis=0)
    start_score = w * (1.0 + E @ centroid / max(float(np.linalg.norm(centroid)), 1e-12)) / 2.0
    picked = [int(np.argmax(start_score))]
    mind = 1.0 - E @ E[picked[0]]
    taken = np.zeros(n, bool)
    taken[picked[0]] = True
    while len(picked) < budget:
        j = int(np.argmax(np.where(taken, -np.inf, w * np.maximum(mind, 0.0))))
        picked.append(j)
        taken[j] = True
        mind = np.minimum(mind, 1.0 - E @ E[j])
    return picked


def suggest_labels(
    X_new: np.ndarray,
    g: np.ndarray,
    budget: int,
    strategy: str = "uncertainty",
    top: int = 5,
    seed: int | Sequence[int] = 0,
    scores: np.ndarray | None = None,
) -> list[int]:
    """Indices (into the rows of X_new / g) of the ``budget`` inputs to label, most useful first.

    ``X_new``: n x dim embeddings of the new task's inputs (normalized here); ``g``: n x M predicted
    correctness of each model on them (the router's ``predict_proba``); ``scores``: the router's
    per-model score ranking the models for ``uncertainty``/``hybrid`` (default S1 = mean g);
    ``top``: how many leading models' disagreement counts; ``seed``: for ``random`` only.
    Deterministic for a given input; ``budget`` distinct indices, 1 <= budget <= n.
    """
    g = np.asarray(g, dtype=np.float64)
    n = len(g)
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown labeling strategy {strategy!r}", f"use one of {STRATEGIES}")
    if g.ndim != 2 or n == 0:
        raise ConfigError(f"g must be n x M with n >= 1, got shape {g.shape}")
    if X_new is None or len(X_new) != n:
        raise ConfigError(f"X_new must have one row per row of g ({n})")
    if not 1 <= int(budget) <= n:
        raise ConfigError(f"budget must be between 1 and the number of inputs ({n}), got {budget}")
    budget = int(budget)
    if strategy == "random":
        return [int(i) for i in np.random.default_rng(seed).choice(n, budget, replace=False)]
    if strategy == "diversity":
        return _k_center(_normalize(X_new), budget)
    var, ent = disagreement(g, top, scores)
    if strategy == "uncertainty":
        order = np.lexsort((np.arange(n), -ent, -var))
        return [int(i) for i in order[:budget]]
    top_var = float(var.max())
    weight = 0.5 + 0.5 * (var / top_var if top_var > 0 else np.ones(n))
    return _k_center(_normalize(X_new), budget, weight)
