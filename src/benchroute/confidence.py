"""Out-of-distribution confidence p(d', m): how accurate is the thresholded predictor on a new task?

A correctness predictor learned on benchmark tasks is less reliable on a task unlike them. The paper
measures "unlike" with a dataset distance u(d) (a one-sided Chamfer distance in embedding space) and
learns how predictor accuracy p falls with u by holding out each benchmark task in turn
(plus alpha-moved labeled samples, to see nearer tasks too): pairs (u_z, p_z(m)). A Nadaraya-Watson
kernel smoother over those pairs then estimates p(d', m) from u(d').

This module holds the math (numpy only) and the fold engine that generates the pairs. The engine
computes one list of cross-task neighbours per item once; every fold "train on all tasks except
these, plus these moved samples" is then a filter and a small merge, never a new search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError
from .neighbors import cross_task_neighbors, exact_search, normalize
from .predictors import check_is_fitted, neighbor_mean

#: The paper's 15 alpha values: the share of the held-out task's inputs moved into training.
DEFAULT_ALPHAS: tuple[float, ...] = (
    0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5,
)


def dataset_distance(task_inputs: np.ndarray, other_inputs: np.ndarray, kappa: int = 19) -> float:
    """u(d): mean over x in d of the mean cosine distance to its kappa nearest other-task inputs.

    A one-sided Chamfer distance: small when every input of the task has close relatives among the
    benchmark questions, large when the task is new territory.
    """
    if len(task_inputs) == 0 or len(other_inputs) == 0:
        raise ConfigError("dataset_distance needs at least one task input and one other input")
    sims, _ = exact_search(normalize(task_inputs), normalize(other_inputs), kappa)
    return float((1.0 - sims).mean())


class KernelSmoother:
    """Nadaraya-Watson Gaussian kernel regression of p_z(m) on u_z [sigma = 0.09].

    p(u) = sum_z K((u - u_z) / sigma) p_z / sum_z K(...). Weights are computed relative to the
    largest one, so a u far from every u_z still gives the value of the nearest pairs instead of 0/0.

    Examples
    --------
    >>> ks = KernelSmoother(sigma=0.1).fit(np.array([0.0, 1.0]), np.array([[1.0], [0.0]]))
    >>> round(float(ks.predict(0.5)[0]), 3)
    0.5
    """

    def __init__(self, sigma: float = 0.09) -> None:
        self.sigma = sigma

    def fit(self, u: np.ndarray, p: np.ndarray) -> KernelSmoother:
        u = np.asarray(u, dtype=np.float64).ravel()
        p = np.asarray(p, dtype=np.float64)
        if p.ndim == 1:
            p = p[:, None]
        if len(u) == 0 or len(u) != len(p):
            raise ConfigError(f"need as many u values as p rows (and at least one); got {len(u)} and {len(p)}")
        if self.sigma <= 0:
            raise ConfigError(f"sigma must be > 0, got {self.sigma}")
        self.u_, self.p_ = u, p
        return self

    def weights(self, u: float) -> np.ndarray:
        check_is_fitted(self, "u_")
        z = -0.5 * ((u - self.u_) / self.sigma) ** 2
        w = np.exp(z - z.max())
        return w / w.sum()

    def predict(self, u: float) -> np.ndarray:
        """p(u) for each model (length M).

        A plain weighted sum down each column, not a BLAS product: every model's p is summed in the
        same order, so two models with identical pairs get bit-identical p (and keep their order).
        """
        return (self.weights(float(u))[:, None] * self.p_).sum(axis=0)


class ATCEstimator:
    """Average Thresholded Confidence (Garg et al., 2022), an alternative estimate of p(d', m).

    On held-out benchmark inputs, pick per model the confidence threshold tau such that the share of
    inputs with confidence max(g, 1 - g) above tau equals the predictor's accuracy there; on a new task,
    p = the share of its inputs above tau. kNN confidences are discrete, so inputs exactly at tau count
    with the fraction that makes the source match exactly.
    """

    def fit(self, conf: np.ndarray, correct: np.ndarray) -> ATCEstimator:
        conf = np.asarray(conf, dtype=np.float64)
        correct = np.asarray(correct, dtype=np.float64)
        acc = correct.mean(axis=0)
        self.tau_ = np.array([np.quantile(conf[:, m], 1.0 - acc[m]) for m in range(conf.shape[1])])
        above = (conf > self.tau_).mean(axis=0)
        at = (conf == self.tau_).mean(axis=0)
        self.lam_ = np.clip(np.where(at > 0, (acc - above) / np.where(at > 0, at, 1), 0.0), 0.0, 1.0)
        return self

    def predict(self, conf: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "tau_")
        conf = np.asarray(conf, dtype=np.float64)
        return (conf > self.tau_).mean(axis=0) + self.lam_ * (conf == self.tau_).mean(axis=0)


@dataclass
class ConfidencePairs:
    """Training pairs (u_z, p_z(m)) with where each came from."""

    u: np.ndarray  # Z
    p: np.ndarray  # Z x M
    task: np.ndarray  # Z, task index
    alpha: np.ndarray  # Z
    repeat: np.ndarray  # Z
    # item-level (confidence, thresholded-prediction correct) from the alpha = 0 folds, for ATC
    atc_conf: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    atc_correct: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


def n_moved(alpha: float, n: int, cap: int = 50) -> int:
    """min(alpha n, cap) labeled samples moved from a task into training (at least 1 if alpha > 0)."""
    if alpha <= 0:
        return 0
    return int(min(max(1, round(alpha * n)), cap, n - 1))


class FoldEngine:
    """Leave-tasks-out kNN folds from one precomputed neighbour pass.

    For each item it keeps its ``depth`` nearest items from other tasks (sorted), and per task the
    within-task similarity block. The k nearest training inputs of an item of task d, with tasks X
    excluded and samples S of d moved into training, are the first k entries of the cross list not
    in X merged with the similarities to S: exactly what a fresh exact search would return.
    """

    def __init__(
        self,
        emb: np.ndarray,
        Y: np.ndarray,
        task_index: np.ndarray,
        *,
        k: int = 5,
        kappa: int = 19,
        threshold: float = 0.5,
        weights: str = "uniform",
        max_excluded: int = 1,
    ) -> None:
        self.emb = normalize(emb)
        self.Y = np.asarray(Y, dtype=np.float32)
        self.task_index = np.asarray(task_index)
        self.k, self.kappa, self.threshold, self.weights = k, kappa, threshold, weights
        self.max_excluded = max_excluded
        self.n_tasks = int(self.task_index.max()) + 1
        self.members = [np.flatnonzero(self.task_index == d) for d in range(self.n_tasks)]
        sizes = sorted((len(m) for m in self.members), reverse=True)
        self.need = max(k, kappa)
        depth = self.need + sum(sizes[:max_excluded])
        self.cross_s, self.cross_i = cross_task_neighbors(self.emb, self.task_index, depth)
        self.cross_t = self.task_index[self.cross_i]
        self._within: dict[int, np.ndarray] = {}

    def within(self, d: int) -> np.ndarray:
        if d not in self._within:
            e = self.emb[self.members[d]]
            self._within[d] = e @ e.T
        return self._within[d]

    def cross_top(self, rows: np.ndarray, excluded: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """First ``need`` cross-task neighbours of ``rows`` not in ``excluded`` tasks (sims, global idx)."""
        t = self.cross_t[rows]
        s = self.cross_s[rows]
        valid = np.isfinite(s)
        for x in excluded:
            valid &= t != x
        order = np.argsort(~valid, axis=1, kind="stable")[:, : self.need]
        sims = np.take_along_axis(s, order, axis=1)
        sims = np.where(np.take_along_axis(valid, order, axis=1), sims, -np.inf)
        return sims, np.take_along_axis(self.cross_i[rows], order, axis=1)

    def fold(
        self, d: int, excluded: Sequence[int], moved: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predictions for task d's remaining items in one or more folds.

        ``moved`` is r x s local indices of d's items moved into training (one row per repeat), or
        None for s = 0. Returns (g: r x n_rem x M, u: r, remaining local indices r x n_rem).
        """
        extra = set(excluded) - {d}
        if len(extra) > self.max_excluded:
            # the neighbour lists are only deep enough to skip max_excluded tasks besides d's own;
            # excluding more would silently give wrong neighbours (and u = inf)
            raise ConfigError(
                f"this FoldEngine was built for at most {self.max_excluded} excluded task(s), got {len(extra)}",
                f"build it with max_excluded={len(extra)}",
            )
        members = self.members[d]
        n = len(members)
        if moved is None:
            moved = np.zeros((1, 0), dtype=np.int64)
        r, s = moved.shape
        keep = np.ones((r, n), dtype=bool)
        np.put_along_axis(keep, moved, False, axis=1)
        rem = np.nonzero(keep)[1].reshape(r, n - s)
        cs, ci = self.cross_top(members, [d, *excluded])
        cand_s, cand_i = cs[rem], ci[rem]  # r x n_rem x need
        if s:
            w = self.within(d)
            ms = w[rem[:, :, None], moved[:, None, :]]  # r x n_rem x s
            mi = np.broadcast_to(members[moved][:, None, :], ms.shape)
            cand_s = np.concatenate([cand_s, ms], axis=2)
            cand_i = np.concatenate([cand_i, mi], axis=2)
        order = np.argsort(-cand_s, axis=2, kind="stable")[:, :, : self.need]
        top_s = np.take_along_axis(cand_s, order, axis=2)
        top_i = np.take_along_axis(cand_i, order, axis=2)
        kn_s, kn_i = top_s[:, :, : self.k], top_i[:, :, : self.k]
        g = neighbor_mean(self.Y, kn_s.reshape(-1, self.k), kn_i.reshape(-1, self.k), self.weights)
        g = g.reshape(r, n - s, -1)
        u = (1.0 - top_s[:, :, : self.kappa]).mean(axis=(1, 2))
        return g, u, rem

    def pairs(
        self,
        excluded: Sequence[int] = (),
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        repeats: int = 10,
        seed: int = 0,
        cap: int = 50,
        with_atc: bool = True,
    ) -> ConfidencePairs:
        """(u_z, p_z(m)) for every task not in ``excluded``, each alpha and repeat.

        The moved samples of (task, alpha, repeat) depend only on the seed and those three, so the
        same fold is the same whatever is excluded (nested runs share their draws).
        """
        us, ps, ts, als, rs = [], [], [], [], []
        conf_parts, corr_parts = [], []
        for d in range(self.n_tasks):
            if d in excluded or len(self.members[d]) < 2:
                continue
            ytask = self.Y[self.members[d]] > 0.5
            for a_i, alpha in enumerate(alphas):
                s = n_moved(alpha, len(self.members[d]), cap)
                reps = 1 if s == 0 else repeats
                moved = None
                if s:
                    moved = np.stack(
                        [
                            np.sort(np.random.default_rng([seed, d, a_i, rep]).choice(len(self.members[d]), s, replace=False))
                            for rep in range(reps)
                        ]
                    )
                g, u, rem = self.fold(d, excluded, moved)
                pred = g > self.threshold
                correct = pred == ytask[rem]
                ps.append(correct.mean(axis=1))
                us.append(u)
                ts.append(np.full(reps, d))
                als.append(np.full(reps, alpha))
                rs.append(np.arange(reps))
                if s == 0 and with_atc:
                    conf_parts.append(np.maximum(g[0], 1.0 - g[0]))
                    corr_parts.append(correct[0])
        if not us:
            raise ConfigError("no task left to train the confidence model on (need at least 2 tasks)")
        out = ConfidencePairs(
            np.concatenate(us), np.concatenate(ps), np.concatenate(ts), np.concatenate(als), np.concatenate(rs)
        )
        if conf_parts:
            out.atc_conf = np.concatenate(conf_parts)
            out.atc_correct = np.concatenate(corr_parts)
        return out

    def test_fold(self, d: int, excluded: Sequence[int] = ()) -> tuple[np.ndarray, float]:
        """(g for all items of d, u(d)) with d and ``excluded`` out of training: a held-out task."""
        g, u, _ = self.fold(d, excluded, None)
        return g[0], float(u[0])
