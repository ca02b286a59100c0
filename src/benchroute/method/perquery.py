"""Per-query routing that knows the task: hierarchical kernel shrinkage (HKS), and session routing.

A query's k nearest stored questions say two things: how each model did on *those questions*
(item evidence, noisy: a handful of 0/1 labels per model) and which *benchmark tasks* the query
resembles (task evidence: each task's accuracy per model is known precisely). Per-query argmax over
a k = 5 kNN uses only the first and loses to the best-on-average model (BMA); a nearest-task vote
uses only the second and fails on a new task unlike any benchmark task. HKS chains both, each
shrunk toward the next coarser level by a pseudo-count, all three levels weighted by the same
similarity kernel:

    e_j    = exp((s_j - 1) / tau)                       j = 1..k nearest stored items (cosine s_j)
    f_j    = exp((s_j - sigma_{t_j}) / tau)             membership kernel (sigma_t = 1 if uncalibrated)
    c_T    = k exp((s_T - 1) / tau),   c_G = k exp((s_G - 1) / tau)
    pi_t   = sum_j f_j [t_j = t] / (sum_j f_j + c_T)    soft task membership, t = 1..T
    pi_0   = c_T / (sum_j f_j + c_T)                    mass of "none of the benchmark tasks"
    mu(x)  = sum_t pi_t A_t + pi_0 P                    membership-weighted task prior
    g(x)   = (sum_j e_j y_j + c_G mu(x)) / (sum_j e_j + c_G)
    q(x)   = (1 - lam) g(x) + lam P                     score per model; route to argmax

A_t is model accuracy on benchmark task t (T x M), P = mean_t A_t the best-on-average prior, y_j the
stored item's labels; sigma_t is task t's tightness (the typical similarity of its items to their
own-task neighbours, :func:`task_tightness`), so that a neighbour counts as "in task t" relative to
how close task t's own items are to each other. s_T (s_G) is the neighbour similarity at which the
task (item) evidence of k neighbours weighs as much as its prior. Close neighbours (a query of a
benchmark task) make the evidence dominate: mu is the query's own task's accuracy and g adds its
nearest items. Far neighbours (a new task) leave mostly the prior: mu moves toward P. The regime
is read off the similarities themselves, not switched. Ties go to the prior's favourite (:func:`pick`).

The knobs (k, tau, s_T, s_G, lam) are chosen by :func:`select_knobs` from the training store only,
by two inner protocols at once: leave-one-task-out (each training task's items routed against the
other tasks: the new-task regime) and leave-one-item-out (each item routed against all other items,
with its own label removed from its task's accuracy: the benchmark-task regime). The default
objective ("safe") is the mean of the two gains over BMA (task-averaged) among the settings that lose
to BMA in neither inner regime, so one rule serves both regimes.

Sessions (:class:`SessionState`): a stream of queries from one application. The state is the sum
of the item-level estimates g of the session's previous queries and their count (O(M) floats);
the session score is

    q_s(x) = (1 - w) q(x) + w ((1 - lam_s) g_bar + lam_s P),   w = n / (n + n0),

where g_bar is the (optionally exponentially decayed) mean of g over the n previous queries: the
task-level blend of the stream so far, trusted more as the session grows. (n0, lam_s) are chosen
by replaying training tasks as sessions in leave-one-task-out (:func:`select_session_knobs`).

Everything is numpy; neighbour search is the caller's (the Router's index returns (sims, idx)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any

import numpy as np

from benchroute.errors import ConfigError
from benchroute.method.cost import cost_adjustment
from benchroute.method.neighbors import cross_task_neighbors, exact_search, normalize

__all__ = [
    "DEFAULT_KNOBS",
    "DEFAULT_SESSION_KNOBS",
    "GRID",
    "RULES",
    "SESSION_GRID",
    "SMALL_GRID",
    "KnobSelection",
    "PerQueryKnobs",
    "PerQueryStats",
    "QueryDecision",
    "SessionKnobs",
    "SessionState",
    "decide_queries",
    "fit",
    "fit_depth",
    "fit_stats",
    "hks_parts",
    "hks_scores",
    "knn_mean",
    "needed_neighbors",
    "pick",
    "query_scores",
    "route",
    "rule_scores",
    "select_knobs",
    "select_session_knobs",
    "select_shrink_lam",
    "session_replay_picks",
    "session_scores",
    "session_stream_scores",
    "take_first",
    "task_accuracy",
    "task_tightness",
    "training_neighbors",
    "with_knobs",
]


@dataclass(frozen=True)
class PerQueryKnobs:
    """Knobs of the per-query rules: HKS (k, tau, s_task, s_item, lam, calibrate; the module docstring
    has the formula) and the simpler rules kept by name (:data:`RULES`): "knn" (knn_k, today's rule),
    "knn_shrunk" (shrink_k, shrink_lam) and "task_vote" (vote_k)."""

    k: int = 50
    tau: float = 0.2
    s_task: float = 0.5
    s_item: float = 0.9
    lam: float = 0.25
    calibrate: bool = True  # membership kernel relative to each task's tightness sigma_t
    knn_k: int = 5
    shrink_k: int = 100
    shrink_lam: float = 0.5
    vote_k: int = 20

    def __post_init__(self) -> None:
        if self.k < 1 or self.tau <= 0 or not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"invalid per-query knobs {self}: need k >= 1, tau > 0, 0 <= lam <= 1")
        if min(self.knn_k, self.shrink_k, self.vote_k) < 1 or not 0.0 <= self.shrink_lam <= 1.0:
            raise ConfigError(f"invalid per-query knobs {self}: need knn_k, shrink_k, vote_k >= 1")


@dataclass(frozen=True)
class SessionKnobs:
    """Knobs of session routing: the evidence's kNN size k, its prior count n0, its shrinkage lam_s
    toward the best-on-average prior, and the decay of older queries (1 = none)."""

    k: int = 50
    n0: float = 1.0
    lam_s: float = 0.75
    decay: float = 1.0

    def __post_init__(self) -> None:
        if self.k < 1 or self.n0 <= 0 or not 0.0 <= self.lam_s <= 1.0 or not 0.0 < self.decay <= 1.0:
            raise ConfigError(
                f"invalid session knobs {self}: need k >= 1, n0 > 0, 0 <= lam_s <= 1, 0 < decay <= 1"
            )


#: Fallback knobs when there are too few tasks to select (fewer than 3 training tasks).
DEFAULT_KNOBS = PerQueryKnobs()
DEFAULT_SESSION_KNOBS = SessionKnobs()

#: Selection grid of :func:`select_knobs` (k, tau, s_task, s_item, lam): 3 x 4 x 4 x 4 x 3 = 576.
GRID: dict[str, Sequence[float]] = {
    "k": (20, 50, 100),
    "tau": (0.05, 0.1, 0.2, 0.5),
    "s_task": (0.3, 0.5, 0.7, 0.9),
    "s_item": (0.5, 0.7, 0.9, 1.0),
    "lam": (0.5, 0.25, 0.0),  # listed safest first: ties keep the earlier (more shrunk) setting
}
#: A 108-setting grid (k, tau, s_task, s_item, lam): 2 x 2 x 3 x 3 x 3.
SMALL_GRID: dict[str, Sequence[float]] = {
    "k": (20, 50),
    "tau": (0.1, 0.2),
    "s_task": (0.5, 0.7, 0.9),
    "s_item": (0.7, 0.9, 1.0),
    "lam": (0.5, 0.25, 0.0),
}
#: Selection grid of :func:`select_session_knobs` (n0, lam_s).
SESSION_GRID: dict[str, Sequence[float]] = {
    "k": (20, 50, 100),
    "n0": (0.5, 2.0, 8.0),
    "lam_s": (0.9, 0.75, 0.5, 0.25),  # safest first: ties keep the more shrunk setting
}
#: Per-query rules of :func:`decide_queries`.
RULES: tuple[str, ...] = ("hks", "knn", "knn_shrunk", "task_vote")


def task_accuracy(labels: np.ndarray, item_task: np.ndarray, n_tasks: int | None = None) -> np.ndarray:
    """A[t, m] = mean over the stored items of task t of labels[:, m] (T x M; empty tasks: nan)."""
    labels = np.asarray(labels, dtype=np.float64)
    item_task = np.asarray(item_task, dtype=np.int64)
    n_tasks = int(item_task.max()) + 1 if n_tasks is None else n_tasks
    sums = np.zeros((n_tasks, labels.shape[1]))
    np.add.at(sums, item_task, labels)
    counts = np.bincount(item_task, minlength=n_tasks)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / np.where(counts > 0, counts, np.nan)


@dataclass
class PerQueryStats:
    """Fit-time statistics: stored labels and tasks, per-task accuracy A, prior P, chosen knobs."""

    labels: np.ndarray  # (n_store, M) float32, 0/1 or continuous scores in [0, 1]
    item_task: np.ndarray  # (n_store,) int64 task of each stored item
    task_acc: np.ndarray  # (T, M)
    prior: np.ndarray  # (M,) mean over tasks of task_acc
    knobs: PerQueryKnobs = DEFAULT_KNOBS
    session: SessionKnobs = DEFAULT_SESSION_KNOBS
    selection: KnobSelection | None = None
    tightness: np.ndarray | None = None  # (T,) sigma_t, see task_tightness; None = 1 for every task

    @property
    def n_models(self) -> int:
        return self.labels.shape[1]

    @property
    def best_on_average(self) -> int:
        return int(pick(self.prior[None], self.prior)[0])


def fit_stats(
    labels: np.ndarray,
    item_task: np.ndarray,
    knobs: PerQueryKnobs = DEFAULT_KNOBS,
    session: SessionKnobs = DEFAULT_SESSION_KNOBS,
    n_tasks: int | None = None,
    loo: tuple[np.ndarray, np.ndarray] | None = None,
) -> PerQueryStats:
    """Precompute A (task x model accuracy), P (its mean over tasks, the BMA prior) and, from the
    leave-one-item-out neighbour lists ``loo`` (see :func:`training_neighbors`), each task's tightness."""
    labels = np.asarray(labels, dtype=np.float32)
    item_task = np.asarray(item_task, dtype=np.int64)
    if labels.ndim != 2 or len(labels) != len(item_task):
        raise ConfigError(f"labels {labels.shape} and item_task {item_task.shape} do not match")
    acc = task_accuracy(labels, item_task, n_tasks)
    prior = np.nanmean(acc, axis=0)
    tight = None if loo is None else task_tightness(loo[0], loo[1], item_task, len(acc))
    return PerQueryStats(labels, item_task, np.nan_to_num(acc), prior, knobs, session, tightness=tight)


def pick(scores: np.ndarray, prior: np.ndarray, atol: float = 1e-9) -> np.ndarray:
    """Per row, argmax of ``scores``; models within ``atol`` of the maximum tie, and a tie goes to the
    tied model with the highest ``prior`` (then the lower index), never simply to the first model."""
    scores = np.asarray(scores, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    rank = np.empty(len(prior), np.int64)
    rank[np.lexsort((-np.arange(len(prior)), prior))] = np.arange(len(prior))  # higher = preferred
    tied = scores >= scores.max(axis=1, keepdims=True) - atol
    return np.where(tied, rank[None, :], -1).argmax(axis=1)


def task_tightness(
    loo_sims: np.ndarray, loo_idx: np.ndarray, item_task: np.ndarray, n_tasks: int, m: int = 10
) -> np.ndarray:
    """sigma_t: how close task t's items are to each other (T,).

    The median over task t's items of the mean similarity to their first m same-task neighbours in
    the leave-one-item-out lists. Membership compares a query's neighbour of task t with sigma_t
    instead of 1: a neighbour at cosine 0.5 is typical of a diverse task (open questions) but far for a
    templated one (every item of a BBH task is ~0.95 from its siblings). Tasks without same-task
    neighbours in the lists get the median of the others.
    """
    item_task = np.asarray(item_task)
    own = item_task[np.asarray(loo_idx)] == item_task[:, None]
    own &= np.cumsum(own, axis=1) <= m
    cnt = own.sum(axis=1)
    mean = np.where(cnt > 0, np.where(own, loo_sims, 0.0).sum(axis=1) / np.maximum(cnt, 1), np.nan)
    sig = np.full(n_tasks, np.nan)
    for t in range(n_tasks):
        v = mean[item_task == t]
        v = v[np.isfinite(v)]
        if len(v):
            sig[t] = np.median(v)
    fill = np.nanmedian(sig) if np.isfinite(sig).any() else 1.0
    return np.where(np.isfinite(sig), sig, fill)


def hks_parts(
    sims: np.ndarray,
    idx: np.ndarray,
    labels: np.ndarray,
    item_task: np.ndarray,
    n_tasks: int,
    k: int,
    tau: float,
    tightness: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kernel sums of the first k neighbours: (sum_j e_j (n,), sum_j e_j y_j (n x M), W (n x T)).

    e_j = exp((s_j - 1) / tau) and W[i, t] = sum_j exp((s_j - sigma_t) / tau) [t_j = t], with sigma_t the
    task's tightness (:func:`task_tightness`; 1 if None). Non-finite similarities (padding) weigh 0.
    """
    s = np.asarray(sims, dtype=np.float64)[:, :k]
    ii = np.asarray(idx)[:, :k]
    ok = np.isfinite(s)
    s0 = np.where(ok, s, 0.0)
    e = np.where(ok, np.exp((s0 - 1.0) / tau), 0.0)
    tj = item_task[ii]
    em = e if tightness is None else np.where(ok, np.exp((s0 - np.asarray(tightness)[tj]) / tau), 0.0)
    n, kk = e.shape
    ey = np.zeros((n, labels.shape[1]))
    step = max(1, 4_000_000 // max(1, kk * labels.shape[1]))
    for a in range(0, n, step):
        ey[a : a + step] = np.einsum("nk,nkm->nm", e[a : a + step], labels[ii[a : a + step]], optimize=False)
    W = np.zeros((n, n_tasks))
    np.add.at(W, (np.repeat(np.arange(n), kk), tj.ravel()), em.ravel())
    return e.sum(axis=1), ey, W


def hks_scores(
    se: np.ndarray,
    ey: np.ndarray,
    mu_num: np.ndarray,
    prior: np.ndarray,
    k: int,
    tau: float,
    s_task: float,
    s_item: float,
    lam: float,
    se_member: np.ndarray | None = None,
    return_g: bool = False,
) -> np.ndarray | tuple:
    """q = (1 - lam) g + lam P from kernel sums; mu_num = W @ A (n x M). See the module docstring.

    ``se_member`` = W.sum(1), the membership kernel mass (defaults to ``se``). ``prior`` is (M,) or
    (n, M) (per-row priors, for leave-one-task-out folds).
    """
    c_t = k * np.exp((s_task - 1.0) / tau)
    c_g = k * np.exp((s_item - 1.0) / tau)
    prior = np.asarray(prior, dtype=np.float64)
    pr = prior if prior.ndim == 2 else prior[None, :]
    sm = se if se_member is None else se_member
    mu = (mu_num + c_t * pr) / (sm + c_t)[:, None]
    g = (ey + c_g * mu) / (se + c_g)[:, None]
    q = (1.0 - lam) * g + lam * pr
    return (q, g) if return_g else q


def query_scores(
    sims: np.ndarray,
    idx: np.ndarray,
    stats: PerQueryStats,
    knobs: PerQueryKnobs | None = None,
    return_g: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """HKS scores q (n x M) of queries from their neighbour search results.

    Parameters
    ----------
    sims, idx : (n, >= k) arrays
        Cosine similarities and store indices of each query's nearest stored items, most similar
        first (what ``NeighborIndex.search(queries, k)`` returns). Only the first k are used.
    stats : PerQueryStats
        From :func:`fit_stats` on the same store (``idx`` indexes its rows).
    knobs : PerQueryKnobs, optional
        Defaults to ``stats.knobs``.
    return_g : bool
        Also return the item-level estimate g (n x M), what a session accumulates.

    Returns
    -------
    q : (n, M) scores, q = (1 - lam) g + lam P; route with ``pick(q, stats.prior)``.
    """
    kn = stats.knobs if knobs is None else knobs
    width = np.asarray(idx).shape[1]
    if width < kn.k:
        if width < len(stats.labels):
            raise ConfigError(f"need at least k = {kn.k} neighbours per query, got {width}")
        kn = replace(kn, k=width)  # a store smaller than k: every stored question is a neighbour
    tight = stats.tightness if kn.calibrate else None
    se, ey, W = hks_parts(sims, idx, stats.labels, stats.item_task, len(stats.task_acc), kn.k, kn.tau, tight)
    return hks_scores(
        se,
        ey,
        W @ stats.task_acc,
        stats.prior,
        kn.k,
        kn.tau,
        kn.s_task,
        kn.s_item,
        kn.lam,
        se_member=W.sum(axis=1),
        return_g=return_g,
    )


def route(sims: np.ndarray, idx: np.ndarray, stats: PerQueryStats) -> np.ndarray:
    """Model index per query by the HKS rule (``decide_queries(sims, idx, stats).chosen``)."""
    return decide_queries(sims, idx, stats).chosen


# --------------------------------------------------------------------------------------------------
# Sessions


@dataclass
class SessionState:
    """Bounded state of one session: the decayed count n and sum of the session evidence (M floats).

    The evidence of a query is the mean label of its first ``SessionKnobs.k`` stored neighbours (what
    the task-level blend averages over a task's queries). ``to_dict`` / ``from_dict`` give a small
    JSON form (a count and M floats), so a server can keep many sessions or store them elsewhere.
    """

    n: float = 0.0
    ev_sum: np.ndarray | None = None

    def update(self, evidence: np.ndarray, decay: float = 1.0) -> SessionState:
        """Add the evidence (M,) or (n, M) of the queries just routed, in order. Returns self."""
        ev = np.atleast_2d(np.asarray(evidence, dtype=np.float64))
        if self.ev_sum is None:
            self.ev_sum = np.zeros(ev.shape[1])
        elif len(self.ev_sum) != ev.shape[1]:
            raise ConfigError(f"session has {len(self.ev_sum)} models, evidence has {ev.shape[1]}")
        for row in ev:
            self.ev_sum = decay * self.ev_sum + row
            self.n = decay * self.n + 1.0
        return self

    def mean(self) -> np.ndarray | None:
        """The session's mean evidence (M,), None before the first query."""
        return None if self.ev_sum is None or self.n <= 0 else self.ev_sum / self.n

    def nbytes(self) -> int:
        return 8 + (0 if self.ev_sum is None else self.ev_sum.nbytes)

    def to_dict(self) -> dict[str, Any]:
        return {"n": float(self.n), "ev_sum": None if self.ev_sum is None else self.ev_sum.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SessionState:
        ev = d.get("ev_sum")
        n = float(d.get("n", 0.0))
        if n < 0 or (ev is not None and np.ndim(ev) != 1):
            raise ConfigError("invalid session state: need n >= 0 and ev_sum a list of floats or null")
        return cls(n, None if ev is None else np.asarray(ev, dtype=np.float64))


def session_scores(
    q: np.ndarray, state: SessionState, prior: np.ndarray, knobs: SessionKnobs = DEFAULT_SESSION_KNOBS
) -> np.ndarray:
    """q_s = (1 - w) q + w ((1 - lam_s) e_bar + lam_s P), w = n / (n + n0), from the state *before* q's
    query (e_bar: the state's mean evidence). ``q`` is (M,) or (n, M) (all scored against one state)."""
    q = np.asarray(q, dtype=np.float64)
    e_bar = state.mean()
    if e_bar is None:
        return q
    w = state.n / (state.n + knobs.n0)
    return (1.0 - w) * q + w * ((1.0 - knobs.lam_s) * e_bar + knobs.lam_s * np.asarray(prior))


def session_stream_scores(
    q: np.ndarray,
    evidence: np.ndarray,
    prior: np.ndarray,
    knobs: SessionKnobs,
    state: SessionState | None = None,
) -> np.ndarray:
    """Session scores of a stream whose queries arrive in row order (q, evidence: n x M).

    Query i sees the state before it (``state``, then queries < i); ``state`` (if given) is updated
    with every row. Vectorized equivalent of ``session_scores`` + ``SessionState.update`` per query.
    """
    q = np.asarray(q, dtype=np.float64)
    ev = np.asarray(evidence, dtype=np.float64)
    n, M = q.shape
    st = SessionState() if state is None else state
    s0 = np.zeros(M) if st.ev_sum is None else st.ev_sum
    if len(s0) != M:
        raise ConfigError(f"session has {len(s0)} models, the router has {M}", "start a new session")
    d = knobs.decay
    if d == 1.0:
        csum = s0[None, :] + np.vstack([np.zeros((1, M)), np.cumsum(ev, axis=0)[:-1]])
        cnt = st.n + np.arange(n, dtype=np.float64)
        end_sum, end_n = s0 + ev.sum(axis=0), st.n + n
    else:
        csum = np.empty((n, M))
        cnt = np.empty(n)
        acc, c = s0.copy(), st.n
        for i in range(n):
            csum[i], cnt[i] = acc, c
            acc, c = d * acc + ev[i], d * c + 1.0
        end_sum, end_n = acc, c
    w = (cnt / (cnt + knobs.n0))[:, None]
    e_bar = csum / np.maximum(cnt, 1e-12)[:, None]
    out = (1.0 - w) * q + w * ((1.0 - knobs.lam_s) * e_bar + knobs.lam_s * np.asarray(prior)[None, :])
    if state is not None:
        state.ev_sum, state.n = end_sum, float(end_n)
    return out


def session_replay_picks(
    q: np.ndarray, evidence: np.ndarray, prior: np.ndarray, knobs: SessionKnobs
) -> np.ndarray:
    """Picks of a fresh session whose queries arrive in row order (query i sees queries < i)."""
    return pick(session_stream_scores(q, evidence, prior, knobs), prior)


# --------------------------------------------------------------------------------------------------
# The decision (what the Router, the server and the experiments all call)


def knn_mean(sims: np.ndarray, idx: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean label of each query's first k neighbours (n x M); non-finite similarities (padding) skipped.

    A query without any valid neighbour gets the mean label of the store."""
    s = np.asarray(sims)[:, :k]
    ii = np.asarray(idx)[:, :k]
    ok = np.isfinite(s)
    M = labels.shape[1]
    out = np.empty((len(s), M))
    step = max(1, 4_000_000 // max(1, s.shape[1] * M))
    for a in range(0, len(s), step):
        o = ok[a : a + step]
        y = labels[ii[a : a + step]]
        if o.all():
            out[a : a + step] = y.mean(axis=1)
        else:
            w = o[:, :, None].astype(np.float64)
            out[a : a + step] = (y * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1.0)
    empty = ~ok.any(axis=1)
    if empty.any():
        out[empty] = labels.mean(axis=0)
    return out


def task_vote_scores(sims: np.ndarray, idx: np.ndarray, stats: PerQueryStats, k: int) -> np.ndarray:
    """Accuracy row A_t of the task most of the first k neighbours come from (n x M); count ties go to
    the larger similarity sum."""
    s = np.asarray(sims, dtype=np.float64)[:, :k]
    ok = np.isfinite(s)
    n, kk = s.shape
    T = len(stats.task_acc)
    t = stats.item_task[np.asarray(idx)[:, :k]]
    cnt = np.zeros((n, T))
    np.add.at(cnt, (np.repeat(np.arange(n), kk), t.ravel()), ok.ravel().astype(np.float64))
    ssum = np.zeros((n, T))
    np.add.at(ssum, (np.repeat(np.arange(n), kk), t.ravel()), np.where(ok, s, 0.0).ravel())
    vote = (cnt + 1e-3 * ssum / max(kk, 1)).argmax(axis=1)
    out = stats.task_acc[vote].astype(np.float64)
    none = ~ok.any(axis=1)
    if none.any():
        out[none] = stats.prior
    return out


def needed_neighbors(stats: PerQueryStats, rule: str | None = None, session: bool = True) -> int:
    """How many neighbours per query :func:`decide_queries` reads: the rule's k (every rule's if None)
    and, with ``session``, the session evidence's k (without a session the evidence is informative
    only and uses the neighbours given, up to that k)."""
    kn = stats.knobs
    per_rule = {"hks": kn.k, "knn": kn.knn_k, "knn_shrunk": kn.shrink_k, "task_vote": kn.vote_k}
    if rule is not None and rule not in per_rule:
        raise ConfigError(f"unknown per-query rule {rule!r}", f"use one of {RULES}")
    need = max(per_rule.values()) if rule is None else per_rule[rule]
    return int(max(need, stats.session.k) if session else need)


def rule_scores(sims: np.ndarray, idx: np.ndarray, stats: PerQueryStats, rule: str = "hks") -> np.ndarray:
    """Per-query scores (n x M: estimated accuracy of each model on each query) of a rule of :data:`RULES`."""
    kn = stats.knobs
    if rule == "hks":
        q = query_scores(sims, idx, stats)
        return np.asarray(q)
    if rule == "knn":
        return knn_mean(sims, idx, stats.labels, kn.knn_k)
    if rule == "knn_shrunk":
        g = knn_mean(sims, idx, stats.labels, kn.shrink_k)
        return (1.0 - kn.shrink_lam) * g + kn.shrink_lam * stats.prior[None, :]
    if rule == "task_vote":
        return task_vote_scores(sims, idx, stats, kn.vote_k)
    raise ConfigError(f"unknown per-query rule {rule!r}", f"use one of {RULES}")


@dataclass
class QueryDecision:
    """The outcome of :func:`decide_queries` for n queries."""

    chosen: np.ndarray  # (n,) model index per query
    scores: (
        np.ndarray
    )  # (n, M) the scores the choice was made on (after session and cost); -inf outside the mask
    evidence: np.ndarray  # (n, M) what each query contributed to the session state


def decide_queries(
    sims: np.ndarray,
    idx: np.ndarray,
    stats: PerQueryStats,
    *,
    rule: str = "hks",
    mask: np.ndarray | None = None,
    cost: np.ndarray | None = None,
    cost_weight: float = 0.0,
    max_cost: float | None = None,
    session: SessionState | None = None,
) -> QueryDecision:
    """Route n queries from their neighbour search results: the one per-query decision of benchroute.

    Parameters
    ----------
    sims, idx : (n, K)
        Cosine similarities and store rows of each query's nearest stored items, most similar first;
        K >= :func:`needed_neighbors` (stats, rule) (a Router searches ``needed_neighbors(stats)``, enough
        for every rule and the session). Non-finite similarities are padding (weight 0).
    stats : PerQueryStats
        From :func:`fit` (or :func:`fit_stats`) on the store ``idx`` indexes.
    rule : "hks" (default), "knn" (today's k = 5 argmax), "knn_shrunk", "task_vote"
        The per-query score (:func:`rule_scores`).
    mask : (M,) bool, optional
        Candidate models.
    cost, cost_weight, max_cost
        Cost-aware choice with the meaning of :func:`benchroute.method.cost.choose` (see
        :func:`benchroute.method.cost.cost_adjustment`): score - cost_weight x cost / max candidate cost,
        models above the budget ``max_cost`` or with an unknown cost excluded when a cost option is used.
    session : SessionState, optional
        The queries are one session's next queries, in order: query i is scored against the state
        before it (:func:`session_scores`) and the state is updated after it (in place).

    Returns
    -------
    QueryDecision: ``chosen`` = :func:`pick` of ``scores`` (ties to the prior's favourite).
    """
    s = np.asarray(sims)
    ii = np.asarray(idx)
    if s.ndim != 2 or s.shape != ii.shape:
        raise ConfigError(f"sims {s.shape} and idx {ii.shape} must be (n, K) of one shape")
    need = needed_neighbors(stats, rule, session=session is not None)
    if s.shape[1] < need and s.shape[1] < len(stats.labels):
        raise ConfigError(f"rule {rule!r} needs {need} neighbours per query, got {s.shape[1]}")
    M = stats.n_models
    q = rule_scores(s, ii, stats, rule)
    ev = knn_mean(s, ii, stats.labels, stats.session.k)
    if session is not None:
        q = session_stream_scores(q, ev, stats.prior, stats.session, session)
    if cost is None:
        if cost_weight > 0 or max_cost is not None:
            raise ConfigError("cost_weight / max_cost need the models' costs")
        cand = np.ones(M, bool) if mask is None else np.asarray(mask, dtype=bool)
        if cand.shape != (M,) or not cand.any():
            raise ConfigError(f"mask must be {M} booleans with at least one True")
        penalty = np.zeros(M)
    else:
        if np.shape(cost) != (M,):
            raise ConfigError(f"cost must have {M} entries, got {np.shape(cost)}")
        cand, penalty = cost_adjustment(cost, cost_weight=cost_weight, max_cost=max_cost, mask=mask)
    scores = np.where(cand[None, :], q - penalty[None, :], -np.inf)
    chosen = pick(scores, np.where(cand, stats.prior, -np.inf)) if len(scores) else np.zeros(0, np.int64)
    return QueryDecision(chosen.astype(np.int64), scores, ev)


# --------------------------------------------------------------------------------------------------
# Knob selection (nested: training store only)


def take_first(sims: np.ndarray, idx: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k entries of each sorted neighbour row where ``keep`` (same shape) is True."""
    take = keep & (np.cumsum(keep, axis=1, dtype=np.int32) <= k)
    counts = take.sum(axis=1)
    if np.all(counts == k):
        return sims[take].reshape(-1, k), idx[take].reshape(-1, k)
    out_s = np.full((len(sims), k), -np.inf, np.float32)
    out_i = np.zeros((len(sims), k), np.int64)
    for r in range(len(sims)):  # rare: rows without k admissible neighbours are padded (weight 0)
        c = np.flatnonzero(take[r])
        out_s[r, : len(c)], out_i[r, : len(c)] = sims[r, c], idx[r, c]
    return out_s, out_i


def training_neighbors(
    emb: np.ndarray, item_task: np.ndarray, k: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The two neighbour lists :func:`select_knobs` needs, for every stored item (exact search).

    ``"cross"``: the k nearest items of OTHER tasks (leave-one-task-out); ``"loo"``: the k nearest other
    items, own task included (leave-one-item-out).
    """
    emb = normalize(emb)
    item_task = np.asarray(item_task)
    cs, ci = cross_task_neighbors(emb, item_task, k)
    ss, si = exact_search(emb, emb, min(k + 1, len(emb)))
    keep = si != np.arange(len(emb))[:, None]
    ss, si = take_first(ss, si, keep, min(k, len(emb) - 1))
    return {"cross": (cs, ci), "loo": (ss, si)}


@dataclass(frozen=True)
class KnobSelection:
    """Outcome of :func:`select_knobs`: the knobs, inner gains over BMA per regime, the whole grid."""

    knobs: PerQueryKnobs
    gain_loto: float
    gain_loo: float
    objective: str
    table: list[tuple[PerQueryKnobs, float, float]] = field(default_factory=list, repr=False)
    gain_se: float | None = None
    gated: bool = False


def _grid_knobs(
    grid: dict[str, Sequence[float]],
) -> list[tuple[int, float, list[tuple[float, float, float]]]]:
    rest = list(product(grid["s_task"], grid["s_item"], grid["lam"]))
    return [(int(k), float(tau), rest) for k, tau in product(grid["k"], grid["tau"])]


def _objective(gl: float, gi: float, objective: str) -> float:
    if objective == "both":
        return 0.5 * (gl + gi)
    if objective == "loto":
        return gl
    if objective == "loo":
        return gi
    if objective == "min":
        return min(gl, gi)
    if objective == "safe":  # the mean, among settings that do not lose to BMA in either inner regime
        return 0.5 * (gl + gi) if min(gl, gi) >= 0 else -1.0 + 0.5 * (gl + gi)
    raise ConfigError(f"unknown objective {objective!r}; use safe, both, loto, loo or min")


def select_knobs(
    labels: np.ndarray,
    item_task: np.ndarray,
    cross: tuple[np.ndarray, np.ndarray],
    loo: tuple[np.ndarray, np.ndarray],
    *,
    grid: dict[str, Sequence[float]] | None = None,
    objective: str = "safe",
    rows: np.ndarray | None = None,
    calibrate: bool = True,
    min_z: float | None = None,
) -> KnobSelection:
    """Choose the HKS knobs by two inner protocols on the training store only.

    Parameters
    ----------
    labels, item_task : (n, M), (n,)
        The training store (all rows: every item is both a query and a neighbour).
    cross : (sims, idx), each (n, >= max k)
        Per stored item, its nearest items from OTHER tasks (leave-one-task-out neighbours).
    loo : (sims, idx), each (n, >= max k)
        Per stored item, its nearest OTHER items, own task included (leave-one-item-out neighbours).
    objective : "safe" | "both" | "loto" | "loo" | "min"
        Maximised over the grid, from the two regimes' task-averaged accuracy gains over the
        best-on-average model: "both" their mean, "safe" their mean among the settings that lose in
        neither regime (if none does, the best mean), "min" the smaller, or one regime alone.
    calibrate : bool
        Membership relative to each task's tightness (:func:`task_tightness`, from ``loo``).
    rows : optional
        Route only these items as inner queries (all stored items stay neighbours); for speed.
    min_z : optional
        Gate: unless the chosen setting's inner gain over BMA (per inner task, the mean of the two
        regimes for "safe"/"both") exceeds ``min_z`` paired standard errors over the inner tasks, the
        setting is replaced by lam = 1 (the best-on-average model for every query), ``gated`` = True.

    Notes
    -----
    Leave-one-task-out: item i of task t is scored with A of the other tasks (its own task has no
    neighbour in ``cross``) and P_{-t} = mean over tasks != t; it is compared with argmax P_{-t}.
    Leave-one-item-out: A_t is corrected to exclude y_i, A_t^{-i} = A_t + (A_t - y_i) / (n_t - 1), and
    P is the mean of A (y_i's 1 / (n_t T) share in P is kept: negligible). Ties in the objective keep
    the earlier grid entry (larger lam first), i.e. the setting closer to the prior.
    """
    grid = dict(SMALL_GRID if grid is None else grid)
    labels = np.asarray(labels, dtype=np.float32)
    item_task = np.asarray(item_task, dtype=np.int64)
    T = int(item_task.max()) + 1
    n = len(labels)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    A = task_accuracy(labels, item_task, T)
    A = np.nan_to_num(A)
    sizes = np.bincount(item_task, minlength=T)
    present = sizes > 0
    if present.sum() < 3:
        return KnobSelection(DEFAULT_KNOBS, 0.0, 0.0, objective)
    P_all = A[present].mean(axis=0)
    # P without task t, for leave-one-task-out
    P_wo = (A[present].sum(axis=0)[None, :] - A) / (present.sum() - 1)
    rt = item_task[rows]
    Yr = labels[rows].astype(np.float64)
    row_task_w = np.bincount(rt, minlength=T).astype(np.float64)
    tw = np.where(row_task_w > 0, 1.0 / np.maximum(row_task_w, 1), 0.0)[rt] / (row_task_w > 0).sum()

    def task_mean(y: np.ndarray) -> float:  # task-averaged mean of per-row values
        return float((y * tw).sum())

    pr_loto = P_wo[rt]
    # BMA per held-out task (ties as in pick)
    bma_t = np.array([pick(P_wo[t][None], P_wo[t])[0] for t in range(T)])
    bma_loto = task_mean(Yr[np.arange(len(rows)), bma_t[rt]])
    bma_all = int(pick(P_all[None], P_all)[0])
    bma_loo = task_mean(Yr[:, bma_all])
    corr = (A[rt] - Yr) / np.maximum(sizes[rt] - 1, 1)[:, None]

    tight = task_tightness(loo[0], loo[1], item_task, T) if calibrate else None
    kmax = max(grid["k"])
    regimes = {}
    for name, (s, i) in (("loto", cross), ("loo", loo)):
        s, i = np.asarray(s)[rows, :kmax], np.asarray(i)[rows, :kmax]
        regimes[name] = (s, i)

    table: list[tuple[PerQueryKnobs, float, float]] = []
    best: tuple[float, int] | None = None
    ar = np.arange(len(rows))
    for k, tau, rest in _grid_knobs(grid):
        parts = {}
        for name, (s, i) in regimes.items():
            se, ey, W = hks_parts(s, i, labels, item_task, T, k, tau, tight)
            mu_num = W @ A
            if name == "loo":
                mu_num = mu_num + W[ar, rt][:, None] * corr
            parts[name] = (se, ey, mu_num, W.sum(axis=1))
        for s_task, s_item, lam in rest:
            gains, picks = [], []
            for name, prior, base in (("loto", pr_loto, bma_loto), ("loo", P_all, bma_loo)):
                se, ey, mu_num, sm = parts[name]
                q = hks_scores(se, ey, mu_num, prior, k, tau, s_task, s_item, lam, se_member=sm)
                assert isinstance(q, np.ndarray)
                pr = prior if np.ndim(prior) == 2 else np.broadcast_to(prior, q.shape)
                q = q + 1e-9 * pr  # ties to the prior's favourite (fast form of pick)
                picks.append(q.argmax(axis=1))
                gains.append(task_mean(Yr[ar, picks[-1]]) - base)
            kn = PerQueryKnobs(k, tau, float(s_task), float(s_item), float(lam), calibrate)
            table.append((kn, gains[0], gains[1]))
            val = _objective(gains[0], gains[1], objective)
            if best is None or val > best[0] + 1e-12:
                best = (val, len(table) - 1)
                best_picks = picks
    assert best is not None
    kn, gl, gi = table[best[1]]
    # paired per-task gains of the chosen setting (both regimes' mean, or the objective's regime)
    row_gain = {
        "loto": Yr[ar, best_picks[0]] - Yr[ar, bma_t[rt]],
        "loo": Yr[ar, best_picks[1]] - Yr[:, bma_all],
    }
    g = row_gain[objective] if objective in row_gain else 0.5 * (row_gain["loto"] + row_gain["loo"])
    inner = np.unique(rt)
    per_task = np.array([g[rt == t].mean() for t in inner])
    g_se = float(per_task.std(ddof=1) / np.sqrt(len(per_task))) if len(per_task) > 1 else float("inf")
    if min_z is not None and not per_task.mean() > min_z * g_se and kn.lam < 1.0:
        return KnobSelection(replace(kn, lam=1.0), 0.0, 0.0, objective, table, gain_se=g_se, gated=True)
    return KnobSelection(kn, gl, gi, objective, table, gain_se=g_se)


def select_session_knobs(
    q_by_task: dict[int, np.ndarray],
    evidence_by_k: dict[int, dict[int, np.ndarray]],
    labels_by_task: dict[int, np.ndarray],
    prior_by_task: dict[int, np.ndarray],
    *,
    grid: dict[str, Sequence[float]] | None = None,
    orders: int = 3,
    max_len: int = 100,
    decay: float = 1.0,
    seed: int = 0,
) -> SessionKnobs:
    """Choose the session knobs (k, n0, lam_s) by replaying each training task as sessions (LOTO).

    ``q_by_task[t]``: the per-query scores of task t's items computed without task t (cross-task
    neighbours, prior P_{-t}); ``evidence_by_k[k][t]``: their session evidence (kNN mean over the
    first k cross-task neighbours) for each k of the grid; ``labels_by_task[t]`` their labels.
    Each task is replayed in ``orders`` random orders, truncated to ``max_len`` queries; the objective
    is the task-averaged mean accuracy over all positions. Ties keep the earlier grid entry.
    """
    grid = {**SESSION_GRID, **(grid or {})}
    rng = np.random.default_rng(seed)
    perms = {t: [rng.permutation(len(q_by_task[t]))[:max_len] for _ in range(orders)] for t in q_by_task}
    best: tuple[float, SessionKnobs] | None = None
    for k, n0, lam_s in product(grid["k"], grid["n0"], grid["lam_s"]):
        if int(k) not in evidence_by_k:
            continue
        kn = SessionKnobs(int(k), float(n0), float(lam_s), decay)
        ev = evidence_by_k[int(k)]
        accs = []
        for t in q_by_task:
            y = labels_by_task[t]
            a = []
            for p in perms[t]:
                pk = session_replay_picks(q_by_task[t][p], ev[t][p], prior_by_task[t], kn)
                a.append(y[p, pk].mean())
            accs.append(np.mean(a))
        val = float(np.mean(accs))
        if best is None or val > best[0] + 1e-12:
            best = (val, kn)
    return DEFAULT_SESSION_KNOBS if best is None else best[1]


def with_knobs(
    stats: PerQueryStats, selection: KnobSelection, session: SessionKnobs | None = None
) -> PerQueryStats:
    """A copy of ``stats`` carrying the selected knobs (and session knobs)."""
    return replace(
        stats,
        knobs=selection.knobs,
        selection=selection,
        session=stats.session if session is None else session,
    )


SHRINK_LAMBDAS: tuple[float, ...] = (1.0, 0.9, 0.75, 0.5, 0.25, 0.0)


def select_shrink_lam(
    g: np.ndarray, labels: np.ndarray, item_task: np.ndarray, prior_rows: np.ndarray
) -> float:
    """lam of the "knn_shrunk" rule by inner leave-one-task-out: g (n x M) the kNN means of the stored
    items over other tasks, prior_rows their P_{-t}; task-averaged accuracy, ties to the larger lam."""
    tasks, inv = np.unique(item_task, return_inverse=True)
    w = 1.0 / np.bincount(inv)[inv] / len(tasks)
    best: tuple[float, float] | None = None
    for lam in SHRINK_LAMBDAS:
        q = (1 - lam) * g + lam * prior_rows + 1e-9 * prior_rows
        acc = float((labels[np.arange(len(g)), q.argmax(axis=1)] * w).sum())
        if best is None or acc > best[0] + 1e-12:
            best = (acc, lam)
    assert best is not None
    return best[1]


def fit(
    emb: np.ndarray | None,
    labels: np.ndarray,
    item_task: np.ndarray,
    n_tasks: int | None = None,
    *,
    objective: str = "safe",
    grid: dict[str, Sequence[float]] | None = None,
    session_grid: dict[str, Sequence[float]] | None = None,
    seed: int = 0,
    neighbors: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    max_rows_per_task: int | None = 60,
    min_z: float | None = 1.0,
) -> PerQueryStats:
    """Everything a Router needs at fit time, from the store alone: statistics, knobs, session knobs.

    Computes the training neighbour lists (exact, O(n^2 d) once; or takes them from ``neighbors``, the
    output of :func:`training_neighbors` at depth >= :func:`fit_depth`, e.g. filtered from one pass shared
    by the folds of an experiment), per-task accuracy and tightness, selects the HKS knobs
    (:func:`select_knobs`), the "knn_shrunk" lam (:func:`select_shrink_lam`) and the session knobs
    (:func:`select_session_knobs`, replaying each training task as a session against the other tasks).
    With fewer than 3 tasks the defaults are kept. Defaults chosen by the nested protocol (docs/
    reproduction.md, per-query section): the 108-setting :data:`SMALL_GRID` (the 576-setting
    :data:`GRID` selects no better and costs 5x), the gate ``min_z`` = 1 (keep BMA unless the chosen
    setting's inner gain exceeds one paired standard error), 60 inner queries per task.
    ``max_rows_per_task``: the HKS knob selection routes
    at most this many items per task as inner queries (a fixed random subset, ``seed``; every item stays
    a neighbour); its objective is task-averaged, so this trades little precision for speed.
    """
    grid = dict(SMALL_GRID if grid is None else grid)
    sgrid = {**SESSION_GRID, **(session_grid or {})}
    item_task = np.asarray(item_task, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.float32)
    depth = fit_depth(grid, sgrid)
    kmax = int(min(depth, len(labels) - 1))
    if neighbors is None:
        if emb is None:
            raise ConfigError("fit needs the embeddings or the training neighbour lists")
        neighbors = training_neighbors(emb, item_task, kmax)
    nb = neighbors
    stats = fit_stats(labels, item_task, n_tasks=n_tasks, loo=nb["loo"])
    T = len(stats.task_acc)
    present = np.bincount(item_task, minlength=T) > 0
    if present.sum() < 3 or kmax < depth or min(nb["cross"][1].shape[1], nb["loo"][1].shape[1]) < depth:
        return stats
    rows = None
    if max_rows_per_task is not None:
        rng = np.random.default_rng([seed, 29])
        rows = np.sort(
            np.concatenate(
                [
                    rng.permutation(np.flatnonzero(item_task == t))[:max_rows_per_task]
                    for t in np.flatnonzero(present)
                ]
            )
        )
    sel = select_knobs(
        labels, item_task, nb["cross"], nb["loo"], grid=grid, objective=objective, rows=rows, min_z=min_z
    )
    kn = sel.knobs
    A = stats.task_acc
    P_wo = (A[present].sum(axis=0)[None, :] - A) / (present.sum() - 1)
    se, ey, W = hks_parts(
        *nb["cross"], labels, item_task, T, kn.k, kn.tau, stats.tightness if kn.calibrate else None
    )
    q = hks_scores(
        se, ey, W @ A, P_wo[item_task], kn.k, kn.tau, kn.s_task, kn.s_item, kn.lam, se_member=W.sum(axis=1)
    )
    assert isinstance(q, np.ndarray)
    cs, ci = nb["cross"]
    g_shrink = knn_mean(cs, ci, labels, kn.shrink_k)
    kn = replace(kn, shrink_lam=select_shrink_lam(g_shrink, labels, item_task, P_wo[item_task]))
    sel = replace(sel, knobs=kn)
    tasks = [int(t) for t in np.flatnonzero(present)]
    rows_of = {t: item_task == t for t in tasks}
    evidence = {}
    for k in sorted({int(k) for k in sgrid["k"]}):
        ev = g_shrink if k == kn.shrink_k else knn_mean(cs, ci, labels, k)
        evidence[k] = {t: ev[rows_of[t]] for t in tasks}
    sess = select_session_knobs(
        {t: q[rows_of[t]] for t in tasks},
        evidence,
        {t: labels[rows_of[t]] for t in tasks},
        {t: P_wo[t] for t in tasks},
        grid=sgrid,
        seed=seed,
    )
    return with_knobs(stats, sel, sess)


def fit_depth(
    grid: dict[str, Sequence[float]] | None = None, session_grid: dict[str, Sequence[float]] | None = None
) -> int:
    """Neighbours per stored item :func:`fit` needs (largest k of the grids and of the shrunk rule)."""
    grid = dict(SMALL_GRID if grid is None else grid)
    sgrid = {**SESSION_GRID, **(session_grid or {})}
    return int(max(max(grid["k"]), max(sgrid["k"]), DEFAULT_KNOBS.shrink_k))
