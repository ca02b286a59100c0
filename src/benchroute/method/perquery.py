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

import numpy as np

from benchroute.errors import ConfigError
from benchroute.method.neighbors import cross_task_neighbors, exact_search, normalize

__all__ = [
    "DEFAULT_KNOBS",
    "DEFAULT_SESSION_KNOBS",
    "GRID",
    "SESSION_GRID",
    "KnobSelection",
    "PerQueryKnobs",
    "PerQueryStats",
    "SessionKnobs",
    "SessionState",
    "fit",
    "fit_stats",
    "hks_parts",
    "hks_scores",
    "pick",
    "query_scores",
    "route",
    "select_knobs",
    "select_session_knobs",
    "session_replay_picks",
    "session_scores",
    "take_first",
    "task_accuracy",
    "task_tightness",
    "training_neighbors",
    "with_knobs",
]


@dataclass(frozen=True)
class PerQueryKnobs:
    """Knobs of the HKS score (see the module docstring for the formula)."""

    k: int = 50
    tau: float = 0.2
    s_task: float = 0.5
    s_item: float = 0.9
    lam: float = 0.25
    calibrate: bool = True  # membership kernel relative to each task's tightness sigma_t

    def __post_init__(self) -> None:
        if self.k < 1 or self.tau <= 0 or not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"invalid per-query knobs {self}: need k >= 1, tau > 0, 0 <= lam <= 1")


@dataclass(frozen=True)
class SessionKnobs:
    """Knobs of session routing: prior count n0 of the session evidence, its shrinkage lam_s, decay."""

    n0: float = 3.0
    lam_s: float = 0.5
    decay: float = 1.0

    def __post_init__(self) -> None:
        if self.n0 <= 0 or not 0.0 <= self.lam_s <= 1.0 or not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"invalid session knobs {self}: need n0 > 0, 0 <= lam_s <= 1, 0 < decay <= 1")


#: Fallback knobs when there are too few tasks to select (fewer than 3 training tasks).
DEFAULT_KNOBS = PerQueryKnobs()
DEFAULT_SESSION_KNOBS = SessionKnobs()

#: Selection grid of :func:`select_knobs` (k, tau, s_task, s_item, lam): 3 x 4 x 4 x 4 x 3 = 576.
GRID: dict[str, tuple[float, ...]] = {
    "k": (20, 50, 100),
    "tau": (0.05, 0.1, 0.2, 0.5),
    "s_task": (0.3, 0.5, 0.7, 0.9),
    "s_item": (0.5, 0.7, 0.9, 1.0),
    "lam": (0.5, 0.25, 0.0),  # listed safest first: ties keep the earlier (more shrunk) setting
}
#: Selection grid of :func:`select_session_knobs` (n0, lam_s).
SESSION_GRID: dict[str, tuple[float, ...]] = {"n0": (1.0, 3.0, 10.0, 30.0), "lam_s": (0.75, 0.5, 0.25, 0.0)}


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
    if np.asarray(idx).shape[1] < kn.k:
        raise ConfigError(f"need at least k = {kn.k} neighbours per query, got {np.asarray(idx).shape[1]}")
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
    """Model index per query: ``pick(query_scores(sims, idx, stats), stats.prior)``."""
    return pick(query_scores(sims, idx, stats), stats.prior)


# --------------------------------------------------------------------------------------------------
# Sessions


@dataclass
class SessionState:
    """Bounded state of one session: decayed count and sum of the item-level estimates g (M floats)."""

    n: float = 0.0
    g_sum: np.ndarray | None = None

    def update(self, g: np.ndarray, decay: float = 1.0) -> SessionState:
        """Add the estimates g (M,) or (n, M) of the queries just routed, in order. Returns self."""
        g = np.atleast_2d(np.asarray(g, dtype=np.float64))
        if self.g_sum is None:
            self.g_sum = np.zeros(g.shape[1])
        for row in g:
            self.g_sum = decay * self.g_sum + row
            self.n = decay * self.n + 1.0
        return self

    def nbytes(self) -> int:
        return 8 + (0 if self.g_sum is None else self.g_sum.nbytes)


def session_scores(
    q: np.ndarray, state: SessionState, prior: np.ndarray, knobs: SessionKnobs = DEFAULT_SESSION_KNOBS
) -> np.ndarray:
    """q_s = (1 - w) q + w ((1 - lam_s) g_bar + lam_s P), w = n / (n + n0), from the state *before* q's query.

    ``q`` is (M,) or (n, M) (several queries scored against the same state).
    """
    q = np.asarray(q, dtype=np.float64)
    if state.g_sum is None or state.n <= 0:
        return q
    w = state.n / (state.n + knobs.n0)
    g_bar = state.g_sum / state.n
    return (1.0 - w) * q + w * ((1.0 - knobs.lam_s) * g_bar + knobs.lam_s * np.asarray(prior))


def session_replay_picks(q: np.ndarray, g: np.ndarray, prior: np.ndarray, knobs: SessionKnobs) -> np.ndarray:
    """Picks of a stream whose queries arrive in row order (q, g: n x M): query i sees queries < i.

    Vectorized equivalent of ``session_scores`` + ``SessionState.update`` over the stream.
    """
    n = len(q)
    prior = np.asarray(prior, dtype=np.float64)
    if knobs.decay == 1.0:
        csum = np.vstack([np.zeros((1, g.shape[1])), np.cumsum(g, axis=0)[:-1]])
        cnt = np.arange(n, dtype=np.float64)
    else:
        csum = np.zeros_like(g, dtype=np.float64)
        cnt = np.zeros(n)
        for i in range(1, n):
            csum[i] = knobs.decay * csum[i - 1] + g[i - 1]
            cnt[i] = knobs.decay * cnt[i - 1] + 1.0
    w = (cnt / (cnt + knobs.n0))[:, None]
    g_bar = csum / np.maximum(cnt, 1e-12)[:, None]
    s = (1.0 - w) * q + w * ((1.0 - knobs.lam_s) * g_bar + knobs.lam_s * prior)
    return pick(s, prior)


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

    Notes
    -----
    Leave-one-task-out: item i of task t is scored with A of the other tasks (its own task has no
    neighbour in ``cross``) and P_{-t} = mean over tasks != t; it is compared with argmax P_{-t}.
    Leave-one-item-out: A_t is corrected to exclude y_i, A_t^{-i} = A_t + (A_t - y_i) / (n_t - 1), and
    P is the mean of A (y_i's 1 / (n_t T) share in P is kept: negligible). Ties in the objective keep
    the earlier grid entry (larger lam first), i.e. the setting closer to the prior.
    """
    grid = GRID if grid is None else grid
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
            gains = []
            for name, prior, base in (("loto", pr_loto, bma_loto), ("loo", P_all, bma_loo)):
                se, ey, mu_num, sm = parts[name]
                q = hks_scores(se, ey, mu_num, prior, k, tau, s_task, s_item, lam, se_member=sm)
                pr = prior if np.ndim(prior) == 2 else np.broadcast_to(prior, q.shape)
                q = q + 1e-9 * pr  # ties to the prior's favourite (fast form of pick)
                gains.append(task_mean(Yr[ar, q.argmax(axis=1)]) - base)
            kn = PerQueryKnobs(k, tau, float(s_task), float(s_item), float(lam), calibrate)
            table.append((kn, gains[0], gains[1]))
            val = _objective(gains[0], gains[1], objective)
            if best is None or val > best[0] + 1e-12:
                best = (val, len(table) - 1)
    assert best is not None
    kn, gl, gi = table[best[1]]
    return KnobSelection(kn, gl, gi, objective, table)


def select_session_knobs(
    q_by_task: dict[int, np.ndarray],
    g_by_task: dict[int, np.ndarray],
    labels_by_task: dict[int, np.ndarray],
    prior_by_task: dict[int, np.ndarray],
    *,
    grid: dict[str, Sequence[float]] | None = None,
    orders: int = 3,
    max_len: int = 100,
    decay: float = 1.0,
    seed: int = 0,
) -> SessionKnobs:
    """Choose (n0, lam_s) by replaying each training task as sessions (leave-one-task-out).

    ``q_by_task[t]``, ``g_by_task[t]``: HKS scores and item estimates of task t's items computed
    without task t (cross-task neighbours, prior P_{-t}); ``labels_by_task[t]`` their labels.
    Each task is replayed in ``orders`` random orders, truncated to ``max_len`` queries; the objective
    is the task-averaged mean accuracy over all positions. Ties keep the earlier grid entry.
    """
    grid = SESSION_GRID if grid is None else grid
    rng = np.random.default_rng(seed)
    perms = {t: [rng.permutation(len(q_by_task[t]))[:max_len] for _ in range(orders)] for t in q_by_task}
    best: tuple[float, SessionKnobs] | None = None
    for n0, lam_s in product(grid["n0"], grid["lam_s"]):
        kn = SessionKnobs(float(n0), float(lam_s), decay)
        accs = []
        for t in q_by_task:
            y = labels_by_task[t]
            a = []
            for p in perms[t]:
                pk = session_replay_picks(q_by_task[t][p], g_by_task[t][p], prior_by_task[t], kn)
                a.append(y[p, pk].mean())
            accs.append(np.mean(a))
        val = float(np.mean(accs))
        if best is None or val > best[0] + 1e-12:
            best = (val, kn)
    assert best is not None
    return best[1]


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


def fit(
    emb: np.ndarray,
    labels: np.ndarray,
    item_task: np.ndarray,
    n_tasks: int | None = None,
    *,
    objective: str = "safe",
    grid: dict[str, Sequence[float]] | None = None,
    session_grid: dict[str, Sequence[float]] | None = None,
    seed: int = 0,
) -> PerQueryStats:
    """Everything a Router needs at fit time, from the store alone: statistics, knobs, session knobs.

    Computes the training neighbour lists (exact, O(n^2 d) once), per-task accuracy and tightness,
    selects the HKS knobs (:func:`select_knobs`) and the session knobs (:func:`select_session_knobs`,
    replaying each training task as a session against the other tasks). With fewer than 3 tasks the
    defaults are kept.
    """
    grid = GRID if grid is None else grid
    item_task = np.asarray(item_task, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.float32)
    kmax = int(min(max(grid["k"]), len(labels) - 1))
    nb = training_neighbors(emb, item_task, kmax)
    stats = fit_stats(labels, item_task, n_tasks=n_tasks, loo=nb["loo"])
    T = len(stats.task_acc)
    present = np.bincount(item_task, minlength=T) > 0
    if present.sum() < 3 or kmax < max(grid["k"]):
        return stats
    sel = select_knobs(labels, item_task, nb["cross"], nb["loo"], grid=grid, objective=objective)
    kn = sel.knobs
    A = stats.task_acc
    P_wo = (A[present].sum(axis=0)[None, :] - A) / (present.sum() - 1)
    se, ey, W = hks_parts(
        *nb["cross"], labels, item_task, T, kn.k, kn.tau, stats.tightness if kn.calibrate else None
    )
    q, g = hks_scores(
        se,
        ey,
        W @ A,
        P_wo[item_task],
        kn.k,
        kn.tau,
        kn.s_task,
        kn.s_item,
        kn.lam,
        se_member=W.sum(axis=1),
        return_g=True,
    )
    tasks = [int(t) for t in np.flatnonzero(present)]
    sess = select_session_knobs(
        {t: q[item_task == t] for t in tasks},
        {t: g[item_task == t] for t in tasks},
        {t: labels[item_task == t] for t in tasks},
        {t: P_wo[t] for t in tasks},
        grid=session_grid,
        seed=seed,
    )
    return with_knobs(stats, sel, sess)
