"""The leave-one-task-out fold engine: every fold of the paper's protocol from one neighbour pass.

The engine computes one list of cross-task neighbours per item once; every fold "train on all tasks
except these, plus these moved samples" is then a filter and a small merge, never a new search. It
produces the confidence model's training pairs (u_z, p_z(m)) and the nested folds of the evaluator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from benchroute.errors import ConfigError
from benchroute.method.neighbors import cross_task_neighbors, normalize
from benchroute.method.predictors import neighbor_mean

#: The paper's 15 alpha values: the share of the held-out task's inputs moved into training.
DEFAULT_ALPHAS: tuple[float, ...] = (
    0.0,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.5,
)


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
    atc_task: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # task of each atc row


def n_moved(alpha: float, n: int, cap: int = 50) -> int:
    """min(alpha n, cap) labeled samples moved from a task into training (at least 1 if alpha > 0)."""
    if alpha <= 0:
        return 0
    return int(min(max(1, round(alpha * n)), cap, n - 1))


def task_key(name: str) -> int:
    """A stable 63-bit key of a task's name: the seed of every random draw made for that task, so a
    fold is the same whatever other tasks the benchmark holds or excludes (the Router fitted without
    task t and the harness holding out t draw the same samples).

    >>> task_key("bbh_navigate") == task_key("bbh_navigate") != task_key("bbh_snarks")
    True
    """
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") >> 1


class FoldEngine:
    """Leave-tasks-out kNN folds from one precomputed neighbour pass.

    For each item it keeps its ``depth`` nearest items from other tasks (sorted), and per task the
    within-task similarity block. The k nearest training inputs of an item of task d, with tasks X
    excluded and samples S of d moved into training, are the first k entries of the cross list not
    in X merged with the similarities to S: exactly what a fresh exact search would return.

    ``task_keys`` (one int per task, :func:`task_key` of its name) seed each task's random draws; by
    default the task's position.
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
        max_k: int = 0,
        task_keys: Sequence[int] | None = None,
    ) -> None:
        self.emb = normalize(emb)
        self.Y = np.asarray(Y, dtype=np.float32)
        self.task_index = np.asarray(task_index)
        self.k, self.kappa, self.threshold, self.weights = k, kappa, threshold, weights
        self.max_excluded = max_excluded
        self.n_tasks = int(self.task_index.max()) + 1
        self.task_keys = list(range(self.n_tasks)) if task_keys is None else [int(x) for x in task_keys]
        if len(self.task_keys) != self.n_tasks:
            raise ConfigError(f"got {len(self.task_keys)} task keys for {self.n_tasks} tasks")
        self.members = [np.flatnonzero(self.task_index == d) for d in range(self.n_tasks)]
        sizes = sorted((len(m) for m in self.members), reverse=True)
        self.need = max(k, kappa)
        self.max_k = max_k
        depth = max(self.need, max_k) + sum(sizes[:max_excluded])
        self.cross_s, self.cross_i = cross_task_neighbors(self.emb, self.task_index, depth)
        self.cross_t = self.task_index[self.cross_i]
        self._within: dict[int, np.ndarray] = {}

    def within(self, d: int) -> np.ndarray:
        if d not in self._within:
            e = self.emb[self.members[d]]
            self._within[d] = e @ e.T
        return self._within[d]

    def cross_top(
        self, rows: np.ndarray, excluded: Sequence[int], width: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """First ``width`` (default max(k, kappa)) cross-task neighbours of ``rows`` not in ``excluded``."""
        width = width or self.need
        if not excluded:  # the lists already omit each item's own task and are sorted: a slice
            return self.cross_s[rows, :width], self.cross_i[rows, :width]
        # at most |x| entries of each excluded task x precede the width-th valid one: a shorter window
        window = width + sum(len(self.members[x]) for x in excluded)
        t = self.cross_t[rows, :window]
        s = self.cross_s[rows, :window]
        ii = self.cross_i[rows, :window]
        valid = np.isfinite(s)
        for x in excluded:
            valid &= t != x
        # the first `width` valid entries of each sorted row: a running count instead of a sort
        take = valid & (np.cumsum(valid, axis=1, dtype=np.int32) <= width)
        if take.sum() == take.shape[0] * width:  # every row has enough neighbours left (the usual case)
            flat = np.flatnonzero(take)
            return s.ravel()[flat].reshape(-1, width), ii.ravel()[flat].reshape(-1, width)
        order = np.argsort(~valid, axis=1, kind="stable")[:, :width]
        sims = np.take_along_axis(s, order, axis=1)
        sims = np.where(np.take_along_axis(valid, order, axis=1), sims, -np.inf)
        return sims, np.take_along_axis(ii, order, axis=1)

    def _moved_draws(self, d: int, a_i: int, s: int, repeats: int, seed: int) -> np.ndarray:
        """r x s local indices moved into training; they depend only on (seed, d's key, alpha, repeat)."""
        n = len(self.members[d])
        return np.stack(
            [
                np.sort(
                    np.random.default_rng([seed, self.task_keys[d], a_i, rep]).choice(n, s, replace=False)
                )
                for rep in range(repeats)
            ]
        )

    def _check_excluded(self, d: int, excluded: Sequence[int]) -> None:
        extra = set(excluded) - {d}
        if len(extra) > self.max_excluded:
            # the neighbour lists are only deep enough to skip max_excluded tasks besides d's own;
            # excluding more would silently give wrong neighbours (and u = inf)
            raise ConfigError(
                f"this FoldEngine was built for at most {self.max_excluded} excluded task(s), got "
                f"{len(extra)}",
                f"build it with max_excluded={len(extra)}",
            )

    def _merge(
        self, d: int, items: np.ndarray, moved: np.ndarray, excluded: Sequence[int], width: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``width`` training neighbours of task d's ``items`` (local, P), with moved sets (P x s)."""
        width = width or self.need
        members = self.members[d]
        # the cross lists never hold task d itself, so only the other excluded tasks need filtering
        cand_s, cand_i = self.cross_top(members[items], [x for x in excluded if x != d], width)
        if moved.shape[1]:
            ms = self.within(d)[items[:, None], moved]
            cand_s = np.concatenate([cand_s, ms], axis=1)
            cand_i = np.concatenate([cand_i, members[moved]], axis=1)
            order = np.argsort(-cand_s, axis=1, kind="stable")[:, :width]
            cand_s = np.take_along_axis(cand_s, order, axis=1)
            cand_i = np.take_along_axis(cand_i, order, axis=1)
        return cand_s, cand_i

    def _predict(self, top_s: np.ndarray, top_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(g: P x M, per-item mean distance to the kappa nearest: P) from merged neighbour lists."""
        g = neighbor_mean(self.Y, top_s[:, : self.k], top_i[:, : self.k], self.weights)
        return g, (1.0 - top_s[:, : self.kappa].astype(np.float64)).mean(axis=1)

    def fold(
        self, d: int, excluded: Sequence[int], moved: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predictions for task d's remaining items in one or more folds.

        ``moved`` is r x s local indices of d's items moved into training (one row per repeat), or
        None for s = 0. Returns (g: r x n_rem x M, u: r, remaining local indices r x n_rem).
        """
        self._check_excluded(d, excluded)
        n = len(self.members[d])
        if moved is None:
            moved = np.zeros((1, 0), dtype=np.int64)
        r, s = moved.shape
        keep = np.ones((r, n), dtype=bool)
        np.put_along_axis(keep, moved, False, axis=1)
        rem = np.nonzero(keep)[1].reshape(r, n - s)
        per_item_moved = np.repeat(moved, n - s, axis=0)
        top_s, top_i = self._merge(d, rem.ravel(), per_item_moved, excluded)
        g, dist = self._predict(top_s, top_i)
        return g.reshape(r, n - s, -1), dist.reshape(r, n - s).mean(axis=1), rem

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
        table = self.nested_pairs(alphas, repeats, seed, cap, outer=list(excluded))
        return table.for_excluded(excluded[0] if excluded else None, with_atc)

    def nested_pairs(
        self,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        repeats: int = 10,
        seed: int = 0,
        cap: int = 50,
        outer: Sequence[int] | None = None,
    ) -> NestedPairs:
        """The pairs of the plain fit AND of every nested leave-one-task-out fit, in one pass.

        Excluding an outer task d' changes an inner fold only for items whose merged neighbour list
        (first max(k, kappa) entries) contains an item of d'. So each fold is computed once with
        nothing excluded, and for each d' only those items are recomputed: the same numbers as
        refitting per d', for a small multiple of one pass. ``outer`` limits which d' get corrections
        (None = all tasks).
        """
        if outer is not None and len(outer) > 1:
            raise ConfigError("nested pairs exclude one outer task at a time")
        wanted = set(range(self.n_tasks)) if outer is None else set(outer)
        folds: list[tuple[int, float, int, int]] = []  # (task, alpha, repeat, n_rem)
        u_sum: list[float] = []
        p_sum: list[np.ndarray] = []
        fix: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {x: [] for x in wanted}
        atc_base: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        atc_fix: dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = {x: [] for x in wanted}
        for d in range(self.n_tasks):
            n = len(self.members[d])
            if n < 2:
                continue
            ytask = self.Y[self.members[d]] > 0.5
            for a_i, alpha in enumerate(alphas):
                s = n_moved(alpha, n, cap)
                reps = 1 if s == 0 else repeats
                moved = self._moved_draws(d, a_i, s, reps, seed) if s else np.zeros((1, 0), dtype=np.int64)
                keep = np.ones((reps, n), dtype=bool)
                np.put_along_axis(keep, moved, False, axis=1)
                rem = np.nonzero(keep)[1].reshape(reps, n - s)
                items = rem.ravel()
                item_moved = np.repeat(moved, n - s, axis=0)
                rep_of = np.repeat(np.arange(reps), n - s)
                long_s, long_i = self._merge(d, items, item_moved, (), 2 * self.need)
                g, dist = self._predict(long_s, long_i)
                correct = (g > self.threshold) == ytask[items]
                z0 = len(folds)
                for rep in range(reps):
                    folds.append((d, float(alpha), rep, n - s))
                u_sum.extend(np.bincount(rep_of, weights=dist, minlength=reps))
                p_sum.extend(group_sum(correct, rep_of, reps))
                if s == 0:
                    atc_base[d] = (np.maximum(g, 1.0 - g), correct)
                self._corrections(
                    d,
                    items,
                    item_moved,
                    rep_of,
                    reps,
                    long_s,
                    long_i,
                    dist,
                    correct,
                    ytask,
                    wanted,
                    z0,
                    fix,
                    atc_fix if s == 0 else None,
                )
        return NestedPairs(folds, np.array(u_sum), np.array(p_sum, dtype=np.float64), fix, atc_base, atc_fix)

    def _corrections(
        self,
        d: int,
        items: np.ndarray,
        item_moved: np.ndarray,
        rep_of: np.ndarray,
        reps: int,
        long_s: np.ndarray,
        long_i: np.ndarray,
        dist: np.ndarray,
        correct: np.ndarray,
        ytask: np.ndarray,
        wanted: set[int],
        z0: int,
        fix: dict[int, list[tuple[int, np.ndarray, np.ndarray]]],
        atc_fix: dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] | None,
    ) -> None:
        """Per outer task x found in an item's first max(k, kappa) neighbours: that item without x.

        The merged list is kept twice as long as needed, so dropping x's entries usually leaves
        enough; the rare item where it does not is recomputed from the full cross list.
        """
        long_t = self.task_index[long_i]
        present = np.zeros((len(items), self.n_tasks), dtype=bool)
        present[np.arange(len(items))[:, None], long_t[:, : self.need]] = True
        present[:, d] = False
        present[:, [x for x in range(self.n_tasks) if x not in wanted]] = False
        pp, xx = np.nonzero(present)
        if not len(pp):
            return
        keep = long_t[pp] != xx[:, None]
        # the first `need` entries of each sorted list that are not x: a running count instead of a sort
        take = keep & (np.cumsum(keep, axis=1, dtype=np.int32) <= self.need)
        short = np.flatnonzero(take.sum(axis=1) < self.need)
        take[short] = np.arange(take.shape[1]) < self.need  # placeholders: these rows are recomputed below
        r, c = np.nonzero(take)
        new_s = long_s[pp[r], c].reshape(-1, self.need)
        new_i = long_i[pp[r], c].reshape(-1, self.need)
        for x in np.unique(xx[short]):
            rows = short[xx[short] == x]
            new_s[rows], new_i[rows] = self._merge(d, items[pp[rows]], item_moved[pp[rows]], (int(x),))
        g2, dist2 = self._predict(new_s, new_i)
        corr2 = (g2 > self.threshold) == ytask[items[pp]]
        key = xx * reps + rep_of[pp]
        du = np.bincount(key, weights=dist2 - dist[pp], minlength=self.n_tasks * reps).reshape(
            self.n_tasks, reps
        )
        dp = group_sum(corr2.astype(np.int8) - correct[pp].astype(np.int8), key, self.n_tasks * reps)
        dp = dp.reshape(self.n_tasks, reps, -1)
        for x in np.unique(xx):
            fix[int(x)].append((z0, du[x], dp[x]))
            if atc_fix is not None:
                sel = xx == x
                atc_fix[int(x)].append((d, pp[sel], np.maximum(g2[sel], 1.0 - g2[sel]), corr2[sel]))

    def s1_curve(
        self, d: int, excluded: Sequence[int], ks: Sequence[int], moved: np.ndarray | None = None
    ) -> np.ndarray:
        """S1 of task d (mean over its items of the k-NN mean label) for each k in ``ks``: len(ks) x M.

        With ``moved`` (1 x s local indices) those samples join training and are not scored. The
        mean over items of a neighbour mean is a weighted count of training rows, so each k costs
        one bincount and one sparse product instead of an n x k x M gather.
        """
        self._check_excluded(d, excluded)
        width = max(ks)
        if width > max(self.need, self.max_k):
            raise ConfigError(f"k = {width} exceeds this FoldEngine's depth", f"build it with max_k={width}")
        n = len(self.members[d])
        if moved is None:
            moved = np.zeros((1, 0), dtype=np.int64)
        keep = np.ones(n, dtype=bool)
        keep[moved[0]] = False
        items = np.flatnonzero(keep)
        _, nb = self._merge(d, items, np.repeat(moved, len(items), axis=0), excluded, width)
        out = np.zeros((len(ks), self.Y.shape[1]))
        for j, k in enumerate(ks):
            counts = np.bincount(nb[:, :k].ravel(), minlength=len(self.Y))
            nz = np.flatnonzero(counts)
            out[j] = (counts[nz] @ self.Y[nz]) / (len(items) * k)
        return out

    def labeled_draws(
        self, d: int, excluded: Sequence[int], k: int, s: int, repeats: int, seed: int
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``repeats`` random draws of s labeled samples of task d: (S1 at k with them in training, their
        label rows, the accuracy on d's other samples). Tasks with no more than s samples give none."""
        n = len(self.members[d])
        if s <= 0 or n <= s:
            return []
        rng = np.random.default_rng([seed, 4999, self.task_keys[d], s])  # not on what is excluded
        out = []
        for _ in range(repeats):
            moved = np.sort(rng.choice(n, s, replace=False))[None, :]
            rest = np.setdiff1d(np.arange(n), moved[0])
            out.append(
                (
                    self.s1_curve(d, excluded, (k,), moved)[0],
                    self.Y[self.members[d][moved[0]]],
                    self.Y[self.members[d][rest]].mean(axis=0),
                )
            )
        return out

    def test_fold(self, d: int, excluded: Sequence[int] = ()) -> tuple[np.ndarray, float]:
        """(g for all items of d, u(d)) with d and ``excluded`` out of training: a held-out task."""
        g, u, _ = self.fold(d, excluded, None)
        return g[0], float(u[0])


def group_sum(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Row sums of ``values`` (P x M) per group id (P,) -> n_groups x M."""
    from scipy.sparse import csr_matrix

    onehot = csr_matrix(
        (np.ones(len(groups)), (groups, np.arange(len(groups)))), shape=(n_groups, len(groups))
    )
    return np.asarray(onehot @ values.astype(np.float64))


@dataclass
class NestedPairs:
    """Every fold's (u, p) with nothing excluded, plus per-outer-task corrections (see nested_pairs)."""

    folds: list[tuple[int, float, int, int]]
    u_sum: np.ndarray  # Z, sum over remaining items of the per-item distance
    p_sum: np.ndarray  # Z x M, count of correct thresholded predictions
    fix: dict[int, list[tuple[int, np.ndarray, np.ndarray]]]  # outer -> (first fold, du per repeat, dp)
    atc_base: dict[int, tuple[np.ndarray, np.ndarray]]
    atc_fix: dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]]

    def for_excluded(self, outer: int | None, with_atc: bool = True) -> ConfidencePairs:
        """The pairs a fit without task ``outer`` would produce (None: nothing held out)."""
        if outer is not None and outer not in self.fix:
            raise ConfigError(f"no corrections were computed for outer task {outer}")
        u_sum, p_sum = self.u_sum.copy(), self.p_sum.copy()
        for z0, du, dp in self.fix.get(outer, []) if outer is not None else []:
            u_sum[z0 : z0 + len(du)] += du
            p_sum[z0 : z0 + len(du)] += dp
        task = np.array([f[0] for f in self.folds])
        n_rem = np.array([f[3] for f in self.folds], dtype=np.float64)
        keep = task != (-1 if outer is None else outer)
        if not keep.any():
            raise ConfigError("no task left to train the confidence model on (need at least 2 tasks)")
        out = ConfidencePairs(
            (u_sum / n_rem)[keep],
            (p_sum / n_rem[:, None])[keep],
            task[keep],
            np.array([f[1] for f in self.folds])[keep],
            np.array([f[2] for f in self.folds])[keep],
        )
        if with_atc and self.atc_base:
            conf = {d: c.copy() for d, (c, _) in self.atc_base.items() if d != outer}
            corr = {d: c.copy() for d, (_, c) in self.atc_base.items() if d != outer}
            for d, hit, c2, k2 in self.atc_fix.get(outer, []) if outer is not None else []:
                conf[d][hit] = c2
                corr[d][hit] = k2
            out.atc_conf = np.concatenate([conf[d] for d in sorted(conf)])
            out.atc_correct = np.concatenate([corr[d] for d in sorted(corr)])
            out.atc_task = np.concatenate([np.full(len(conf[d]), d) for d in sorted(conf)])
        return out
