"""The paper's evaluation: leave-one-task-out (LOTO) with nested confidence training, and studies.

For every benchmark task d' in turn, the router is trained on the other tasks only: the predictors
on their questions and the confidence model on folds that hold out each remaining task (never d').
It then scores d' from its inputs alone and we measure the true accuracy of what it chose, beside
every baseline. All folds run on one precomputed neighbour pass (:class:`FoldEngine`), so the full
nested protocol takes seconds, not hours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from benchroute.errors import ConfigError
from benchroute.method.confidence import (
    AccuracyEstimator,
    ATCEstimator,
    ConfidenceCalibrator,
    KernelSmoother,
    p_from_accuracy,
)
from benchroute.method.decision import Decision, decide
from benchroute.method.folds import FoldEngine, NestedPairs, n_moved, task_key
from benchroute.method.scores import (
    BlendChoice,
    blend,
    label_grid_size,
    label_rules_for,
    s1,
    s2,
    s3,
    select_blend,
)
from benchroute.router.estimator import SCORES, Router
from benchroute.router.persistence import params_json

#: The leave-one-task-out rows ("method" in results.json), in display order: name -> (label, what it
#: is). The one registry the harness, the report, the CLI summary and the research scripts use.
ROWS: dict[str, tuple[str, str]] = {
    "Router": ("Router", "the evaluated Router's decision: its score through the decision chain"),
    "Blend": ("Blend (no trust rule)", "argmax of the blend at its nested (k, lambda), ungated"),
    "S1": ("S1", "argmax of the mean predicted correctness"),
    "S2": ("S2", "argmax of the share of inputs predicted correct"),
    "S3": ("S3", "argmax of S3 with the kernel smoother's p"),
    "S3_trust": ("S3 + trust rule", "the paper's router: S3 (kernel p) through the decision chain"),
    "S3_true_p": ("S3 (true p)", "S3 with the held-out task's own p (oracle diagnostic)"),
    "S3_atc": ("S3 (ATC p)", "S3 with ATC's p"),
    "S3_cal": ("S3 (calibrated p)", "S3 with the isotonic calibrator's p"),
    "S3_acc": ("S3 (accuracy-based p)", "S3 with the accuracy-based p"),
    "MoE": ("MoE", "each input routed to its argmax of the predicted correctness (k = 5)"),
    "LL": ("LL", "argmax of the mean log-likelihood (when the benchmark has it)"),
    "Few-shot": ("Few-shot", "argmax of the accuracy on the labeled samples (alpha > 0)"),
    "BMA": ("BMA", "the best model on average over the training tasks"),
    "Random": ("Random", "the mean accuracy of the candidates"),
    "Oracle": ("Oracle", "the best model on the held-out task"),
}
#: p estimators the harness can measure: the Router's two, two evaluation variants, and "true" (the
#: held-out task's own p: an oracle diagnostic of the trust gate, not a method).
P_ESTIMATORS = ("kernel", "atc", "calibrated", "accuracy", "true")
#: Test-time alpha values of the OOD-gap sweep.
SWEEP_ALPHAS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5)

Progress = Callable[[int], None]


@dataclass
class TaskOutcome:
    """Everything measured for one held-out task (and one alpha/repeat)."""

    task: str
    alpha: float
    repeat: int
    u: float
    rows: list[dict[str, Any]] = field(default_factory=list)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r (NaN if either side is constant); numpy's, ~50x cheaper per call than scipy's test."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average ranks (as scipy.stats.spearmanr computes it)."""
    return _pearson(rankdata(x), rankdata(y))


class LOTOEvaluator:
    """Runs nested leave-one-task-out for one benchmark and one router configuration.

    Parameters
    ----------
    benchmark : a :class:`benchroute.data.benchmark.Benchmark` with embeddings attached.
    router : an unfitted :class:`Router` whose parameters (k, kappa, sigma, t, eta, alphas, repeats,
        draws, seed) define the method under test. Only the kNN predictor is supported here.
    """

    def __init__(self, benchmark: Any, router: Router | None = None, p_estimator: str | None = None) -> None:
        if benchmark.embeddings is None:
            raise ConfigError("the benchmark has no embeddings attached", "embed it first (benchroute embed)")
        if benchmark.n_tasks < 3:
            raise ConfigError("nested leave-one-task-out needs at least 3 tasks")
        self.bench = benchmark
        self.router = router or Router()
        if self.router.predictor != "knn":
            raise ConfigError("the LOTO harness evaluates the kNN predictor", "use predictor='knn'")
        if self.router.score not in SCORES:
            raise ConfigError(f"unknown score {self.router.score!r}", f"use one of {', '.join(SCORES)}")
        # p of the evaluated Router's trust rule: the Router's own ("kernel", "atc"), or an evaluation
        # variant ("calibrated", "accuracy", "true"): measured here, never a Router option
        self.p_estimator = self.router.p_estimator if p_estimator is None else p_estimator
        if self.p_estimator not in P_ESTIMATORS:
            raise ConfigError(
                f"unknown p_estimator {self.p_estimator!r}", f"use one of {', '.join(P_ESTIMATORS)}"
            )
        self.Y = benchmark.correct.astype(np.float32)
        self.ti = np.asarray(benchmark.task_index)
        r = self.router
        self.engine = FoldEngine(
            benchmark.embeddings,
            self.Y,
            self.ti,
            k=r.k,
            kappa=r.kappa,
            threshold=r.t,
            max_k=max(r.blend_ks) if r.score == "blend" else 0,
            task_keys=[task_key(name) for name in benchmark.tasks],
        )
        # S1 neighbourhood sizes of the nested curves (the blend's; for another score, those within the
        # engine's depth, which is all the accuracy-based p needs)
        depth = max(self.engine.need, self.engine.max_k)
        self.curve_ks = (
            r.blend_ks if r.score == "blend" else tuple(k for k in r.blend_ks if k <= depth) or (r.k,)
        )
        self.task_acc = np.stack([self.Y[self.ti == d].mean(axis=0) for d in range(benchmark.n_tasks)])
        self.params_b = (
            benchmark.model_info["params_b"].to_numpy(dtype=float)
            if "params_b" in benchmark.model_info
            else np.full(benchmark.n_models, np.nan)
        )
        self._confidence: dict[int, tuple[KernelSmoother, ATCEstimator | None, np.ndarray]] = {}
        self._nested: NestedPairs | None = None
        self._blend: dict[int, BlendChoice] = {}
        self._inner: dict[int, tuple[dict[int, np.ndarray], dict[int, np.ndarray]]] = {}
        self._accuracy: dict[int, AccuracyEstimator] = {}
        self._label_rules: dict[tuple[int, int], str] = {}
        self._calibrators: dict[int, ConfidenceCalibrator | None] = {}

    def confidence(self, d: int) -> tuple[KernelSmoother, ATCEstimator | None, np.ndarray]:
        """The confidence model for held-out task d, trained on folds that never see d (cached)."""
        if d not in self._confidence:
            r = self.router
            if self._nested is None:
                self._nested = self.engine.nested_pairs(r.alphas, r.repeats, r.seed, r.cap)
            pairs = self._nested.for_excluded(d)
            ks = KernelSmoother(r.sigma).fit(pairs.u, pairs.p)
            atc = ATCEstimator().fit(pairs.atc_conf, pairs.atc_correct) if pairs.atc_conf.size else None
            self._confidence[d] = (ks, atc, pairs.u[pairs.alpha == 0])
            self._calibrators[d] = (
                ConfidenceCalibrator().fit(pairs.atc_conf, pairs.atc_correct, pairs.atc_task)
                if pairs.atc_conf.size
                else None
            )
        return self._confidence[d]

    def calibrator(self, d: int) -> ConfidenceCalibrator | None:
        """The confidence calibrator for held-out task d (fitted with the confidence model, cached)."""
        self.confidence(d)
        return self._calibrators[d]

    def inner_curves(self, d: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """For every training task x of held-out task d: S1 at each blend k without x and d, and its prior."""
        if d not in self._inner:
            inner = [x for x in range(self.bench.n_tasks) if x != d]
            curves = {x: self.engine.s1_curve(x, [d], self.curve_ks) for x in inner}
            priors = {x: self.task_acc[[t for t in inner if t != x]].mean(axis=0) for x in inner}
            self._inner[d] = (curves, priors)
        return self._inner[d]

    def blend_choice(self, d: int) -> BlendChoice:
        """The blend's (k, lambda) for held-out task d, chosen by LOTO over the other tasks without d."""
        if d not in self._blend:
            r = self.router
            curves, priors = self.inner_curves(d)
            self._blend[d] = select_blend(
                curves, priors, self.task_acc, r.blend_ks, r.blend_lambdas, r.blend_min_z
            )
        return self._blend[d]

    def accuracy_estimator(self, d: int) -> AccuracyEstimator:
        """The per-model accuracy estimator for held-out task d, (k, lam) chosen over the tasks without d."""
        if d not in self._accuracy:
            curves, priors = self.inner_curves(d)
            self._accuracy[d] = AccuracyEstimator().fit(curves, priors, self.task_acc, self.curve_ks)
        return self._accuracy[d]

    def label_rule(self, d: int, n_labeled: int) -> str:
        """How ``n_labeled`` labels of held-out task d may overrule the blend (chosen without d)."""
        size = label_grid_size(n_labeled)
        if (d, size) not in self._label_rules:
            inner = [x for x in range(self.bench.n_tasks) if x != d]
            rules = label_rules_for(
                self.engine, inner, [d], self.blend_choice(d), self.task_acc, (size,), self.router.seed
            )
            self._label_rules[(d, size)] = rules[size]
        return self._label_rules[(d, size)]

    def blend_score(self, d: int, prior: np.ndarray, moved: np.ndarray | None = None) -> np.ndarray:
        """The blend of held-out task d at its nested (k, lambda), with ``moved`` (1 x s) samples labeled."""
        bc = self.blend_choice(d)
        return blend(self.engine.s1_curve(d, [], (bc.k,), moved)[0], prior, bc.lam)

    def p_estimates(
        self,
        d: int,
        g: np.ndarray,
        u: float,
        prior: np.ndarray,
        moved: np.ndarray | None,
        y: np.ndarray | None = None,
        names: Sequence[str] = P_ESTIMATORS,
    ) -> dict[str, np.ndarray]:
        """p per model on held-out task d from each estimator in ``names`` ("true" needs labels ``y``)."""
        r = self.router
        ks, atc, _ = self.confidence(d)
        conf = np.maximum(g, 1 - g)
        p = {"kernel": ks.predict(u)}
        if "atc" in names:
            p["atc"] = atc.predict(conf) if atc is not None else p["kernel"]
        if "calibrated" in names:
            cal = self.calibrator(d)
            p["calibrated"] = cal.predict(conf) if cal is not None else p["kernel"]
        if "accuracy" in names:
            est = self.accuracy_estimator(d)
            accuracy = est.predict(self.engine.s1_curve(d, [], (est.k_,), moved)[0], prior)
            p["accuracy"] = p_from_accuracy(s2(g, r.t), accuracy)
        if "true" in names and y is not None:
            p["true"] = ((g > r.t) == y).mean(axis=0)
        return p

    def router_decision(
        self,
        d: int,
        v1: np.ndarray,
        v2: np.ndarray,
        p: np.ndarray,
        n: int,
        bma: int,
        prior: np.ndarray,
        moved: np.ndarray | None,
        mask: np.ndarray | None = None,
    ) -> tuple[int, np.ndarray, Decision, str]:
        """The evaluated Router's (choice, score, decision, label rule) on held-out task d: the Router's
        own decision chain (:func:`benchroute.method.decision.decide`) on the nested fold's scores."""
        r = self.router
        score = (
            self.blend_score(d, prior, moved)
            if r.score == "blend"
            else {"S1": v1, "S2": v2, "S3": s3(v2, p)}[r.score]
        )
        s = 0 if moved is None else moved.shape[1]
        rule = self.label_rule(d, s) if s and r.score == "blend" else "none"
        labeled = self.Y[self.engine.members[d][moved[0]]] if moved is not None else None
        decision = decide(
            score,
            v2,
            p,
            n,
            bma,
            mask=mask,
            trust=r.trust,
            eta=r.eta,
            draws=r.draws,
            seed=r.seed,
            label_rule=rule,
            labeled=labeled,
        )
        return decision.chosen, score, decision, decision.label_rule

    def moved_draw(self, d: int, alpha: float, repeat: int) -> np.ndarray | None:
        """The labeled samples (1 x s local indices) of held-out task d at (alpha, repeat); None at 0."""
        r = self.router
        n = len(self.engine.members[d])
        s = n_moved(alpha, n, r.cap)
        if not s:
            return None
        return np.sort(
            np.random.default_rng([r.seed, 7919, self.engine.task_keys[d], int(alpha * 1e4), repeat]).choice(
                n, s, replace=False
            )
        )[None, :]

    def evaluate_task(
        self, d: int, alpha: float = 0.0, repeat: int = 0, candidates: np.ndarray | None = None
    ) -> TaskOutcome:
        """Route held-out task d (with ``alpha`` of its samples labeled) and score every method."""
        r = self.router
        members = self.engine.members[d]
        moved = self.moved_draw(d, alpha, repeat)
        s = 0 if moved is None else moved.shape[1]
        g, u_arr, rem = self.engine.fold(d, [], moved)
        g, u, rem = g[0], float(u_arr[0]), rem[0]
        y = self.Y[members[rem]] > 0.5
        true_acc = y.mean(axis=0)
        mask = np.ones(self.bench.n_models, bool) if candidates is None else candidates
        train_acc = np.delete(self.task_acc, d, axis=0).mean(axis=0)
        bma = int(np.argmax(np.where(mask, train_acc, -np.inf)))
        v1, v2 = s1(g), s2(g, r.t)
        p = self.p_estimates(d, g, u, train_acc, moved, y)
        p_kernel, p_true = p["kernel"], p["true"]
        scores = {
            "S1": v1,
            "S2": v2,
            "S3": s3(v2, p_kernel),
            "S3_true_p": s3(v2, p_true),
            "S3_atc": s3(v2, p["atc"]),
            "S3_cal": s3(v2, p["calibrated"]),
            "S3_acc": s3(v2, p["accuracy"]),
        }
        choice: dict[str, int] = {}
        for name, sc in scores.items():
            choice[name] = int(np.argmax(np.where(mask, sc, -np.inf)))
        # the paper's router: S3 (kernel p) through the decision chain with the trust rule on
        decision = decide(
            scores["S3"], v2, p_kernel, len(rem), bma, mask=mask, eta=r.eta, draws=r.draws, seed=r.seed
        )
        choice["S3_trust"] = decision.chosen
        scores["S3_trust"] = scores["S3"]
        if r.score == "S3" and r.trust and self.p_estimator == "kernel":  # the Router is that row
            choice["Router"], scores["Router"], router_decision, label_rule = (
                decision.chosen,
                scores["S3"],
                decision,
                "none",
            )
        else:
            choice["Router"], scores["Router"], router_decision, label_rule = self.router_decision(
                d, v1, v2, p[self.p_estimator], len(rem), bma, train_acc, moved, mask
            )
        if r.score == "blend":
            scores["Blend"] = scores["Router"]
            choice["Blend"] = int(
                np.argmax(np.where(mask, scores["Blend"], -np.inf))
            )  # ungated, for the ablation
        choice["BMA"] = bma
        oracle = int(np.argmax(np.where(mask, true_acc, -np.inf)))
        choice["Oracle"] = oracle
        if moved is not None:
            few = self.Y[members[moved[0]]].mean(axis=0)
            choice["Few-shot"] = int(
                np.argmax(np.where(mask, few + 1e-9 * (np.arange(len(few)) == bma), -np.inf))
            )
        if self.bench.loglik is not None:
            ll = self.bench.loglik[members[rem]].mean(axis=0)
            choice["LL"] = int(np.argmax(np.where(mask, ll, -np.inf)))
        # rank 1 = the best model on this task (ties share the better rank)
        masked_acc = np.where(mask, true_acc, -np.inf)
        rank_of = {j: int((masked_acc > masked_acc[j]).sum()) + 1 for j in set(choice.values())}
        out = TaskOutcome(self.bench.tasks[d], alpha, repeat, u)
        pred_acc = float(p_true[mask].mean())
        p_mae = float(np.abs(p_kernel - p_true)[mask].mean())
        p_mae_cal = float(np.abs(p["calibrated"] - p_true)[mask].mean())
        p_mae_acc = float(np.abs(p["accuracy"] - p_true)[mask].mean())
        for name, j in choice.items():
            row = {
                "task": self.bench.tasks[d],
                "method": name,
                "alpha": alpha,
                "repeat": repeat,
                "model": self.bench.models[j],
                "acc": float(true_acc[j]),
                "ratio": float(true_acc[j] / true_acc[oracle]) if true_acc[oracle] > 0 else float("nan"),
                "is_bma": j == bma,
                "params_b": float(self.params_b[j]),
                "rank": rank_of[j],
                "u": u,
            }
            if name in scores:
                sc = scores[name][mask]
                row["pearson"] = _pearson(sc, true_acc[mask])
                row["spearman"] = _spearman(sc, true_acc[mask])
            if name == "Router" and s and r.score == "blend":
                row["label_rule"] = label_rule
            gate = {"S3_trust": decision, "Router": router_decision}.get(name)
            if gate is not None and gate.gated:  # the trust rule ran (not switched off, no label rule)
                row["trust_probability"] = gate.probability
                row["fell_back"] = gate.fell_back
            row["predictor_acc"] = pred_acc
            row["p_mae"] = p_mae
            row["p_mae_cal"] = p_mae_cal
            row["p_mae_acc"] = p_mae_acc
            out.rows.append(row)
        out.rows.append(self._moe_row(d, g, y, true_acc, oracle, bma, mask, alpha, repeat, u))
        out.rows.append(
            {
                "task": self.bench.tasks[d],
                "method": "Random",
                "alpha": alpha,
                "repeat": repeat,
                "model": None,
                "acc": float(true_acc[mask].mean()),
                "ratio": float(true_acc[mask].mean() / true_acc[oracle])
                if true_acc[oracle] > 0
                else float("nan"),
                "is_bma": False,
                "params_b": float(np.nanmean(self.params_b[mask]))
                if np.isfinite(self.params_b[mask]).any()
                else float("nan"),
                "rank": float(
                    np.mean([(masked_acc > masked_acc[j]).sum() + 1 for j in np.flatnonzero(mask)])
                ),
                "u": u,
            }
        )
        return out

    def _moe_row(
        self,
        d: int,
        g: np.ndarray,
        y: np.ndarray,
        true_acc: np.ndarray,
        oracle: int,
        bma: int,
        mask: np.ndarray,
        alpha: float,
        repeat: int,
        u: float,
    ) -> dict[str, Any]:
        """MoE: per-input argmax g (ties to the BMA model), a per-instance router's task accuracy."""
        gm = np.where(mask, g, -np.inf)
        best = gm.max(axis=1, keepdims=True)
        pick = np.where(gm[:, bma] == best[:, 0], bma, np.argmax(gm, axis=1))
        acc = float(y[np.arange(len(y)), pick].mean())
        return {
            "task": self.bench.tasks[d],
            "method": "MoE",
            "alpha": alpha,
            "repeat": repeat,
            "model": None,
            "acc": acc,
            "ratio": acc / true_acc[oracle] if true_acc[oracle] > 0 else float("nan"),
            "is_bma": bool((pick == bma).all()),
            "params_b": float(np.nanmean(self.params_b[pick]))
            if np.isfinite(self.params_b[pick]).any()
            else float("nan"),
            "rank": float("nan"),
            "u": u,
        }

    def run(
        self,
        alphas: Sequence[float] = (0.0,),
        repeats: int = 10,
        tasks: Sequence[int] | None = None,
        candidates: np.ndarray | None = None,
        progress: Progress | None = None,
        runner: Callable[..., list[dict[str, Any]]] | None = None,
    ) -> list[dict[str, Any]]:
        """All rows for every held-out task, test alpha and repeat (alpha = 0 runs once).

        ``runner(self, tasks, alphas, repeats, candidates, progress)`` may run the held-out tasks
        elsewhere (e.g. :class:`~benchroute.experiments.distributed.RayLOTORunner`); the same rows in order.
        """
        if runner is not None:
            order = list(tasks) if tasks is not None else list(range(self.bench.n_tasks))
            return runner(self, order, alphas, repeats, candidates, progress)
        rows: list[dict[str, Any]] = []
        for d in tasks if tasks is not None else range(self.bench.n_tasks):
            for alpha in alphas:
                for rep in range(1 if alpha == 0 else repeats):
                    rows.extend(self.evaluate_task(d, alpha, rep, candidates).rows)
            if progress is not None:
                progress(1)
        return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean over tasks (and repeats) per method: the Table-1 line of each method."""
    import pandas as pd

    if not rows:
        return {}
    df = pd.DataFrame(rows)
    cols = [
        c
        for c in (
            "acc",
            "ratio",
            "pearson",
            "spearman",
            "is_bma",
            "params_b",
            "rank",
            "predictor_acc",
            "p_mae",
            "p_mae_cal",
            "p_mae_acc",
            "fell_back",
        )
        if c in df
    ]
    df[cols] = df[cols].astype(float)
    per_task = df.groupby(["method", "task"], sort=False)[cols].mean()
    out: dict[str, dict[str, float | None]] = {}
    for method, grp in per_task.groupby(level=0, sort=False):
        means = grp.mean()
        entry: dict[str, float | None] = {("pct_bma" if c == "is_bma" else c): _clean(means[c]) for c in cols}
        pct = entry.get("pct_bma")
        entry["pct_bma"] = None if pct is None else 100.0 * pct
        entry["n_tasks"] = len(grp)
        out[str(method)] = entry
    return out


def _clean(x: Any) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else x


def paired_difference(rows: list[dict[str, Any]], a: str, b: str) -> dict[str, float]:
    """Mean per-task accuracy difference a - b and its paired standard error (a gain within noise is none)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    acc = df.groupby(["task", "method"])["acc"].mean().unstack()
    if a not in acc or b not in acc:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    diff = (acc[a] - acc[b]).dropna()
    n = len(diff)
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(diff.mean()), "se": se, "n": n}


def sweep_summary(
    rows: list[dict[str, Any]],
    alphas: Sequence[float],
    methods: Sequence[str] = ("S1", "S2", "S3", "S3_true_p", "Router", "BMA", "Oracle", "MoE", "Few-shot"),
) -> dict[str, Any]:
    """Mean +- std over repeats (of the mean over tasks) per alpha: the paper's OOD-gap curves."""
    import pandas as pd

    df = pd.DataFrame(rows)
    out: dict[str, Any] = {"alphas": list(alphas), "methods": {}}

    def curve(frame: pd.DataFrame, col: str) -> tuple[list[float | None], list[float | None]]:
        means: list[float | None] = []
        stds: list[float | None] = []
        for a in alphas:
            sub = frame[np.isclose(frame["alpha"], a)]
            if sub.empty or col not in sub or sub[col].isna().all():
                means.append(None)
                stds.append(None)
                continue
            per_rep = sub.groupby("repeat")[col].mean()
            means.append(_clean(per_rep.mean()))
            stds.append(_clean(per_rep.std(ddof=0)) if len(per_rep) > 1 else 0.0)
        return means, stds

    for m in methods:
        sub = df[df["method"] == m]
        if sub.empty:
            continue
        mean, std = curve(sub, "acc")
        out["methods"][m] = {"acc_mean": mean, "acc_std": std}
    s3rows = df[df["method"] == "S3"]
    for col in ("predictor_acc", "p_mae"):
        out[f"{col}_mean"], out[f"{col}_std"] = curve(s3rows, col)
    return out


def distance_study(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per held-out task: u(d') and how well S3 / S1 correlate with the true accuracies."""
    by_task: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["alpha"] != 0 or r["method"] not in ("S3", "S1"):
            continue
        entry = by_task.setdefault(r["task"], {"task": r["task"], "u": r["u"]})
        entry[f"pearson_{r['method']}"] = _clean(r.get("pearson", float("nan")))
        if r["method"] == "S3":
            entry["spearman_S3"] = _clean(r.get("spearman", float("nan")))
    return list(by_task.values())


def small_model_study(
    ev: LOTOEvaluator, limit_b: float = 13.0, progress: Progress | None = None
) -> dict[str, Any]:
    """Route among models of at most ``limit_b`` billion parameters vs the largest model alone."""
    params = ev.params_b
    small = np.isfinite(params) & (params <= limit_b)
    if small.sum() < 2 or not np.isfinite(params).any():
        return {"limit_b": limit_b, "skipped": "fewer than 2 models with a known size under the limit"}
    largest = int(np.nanargmax(params))
    per_task = []
    for d in range(ev.bench.n_tasks):
        rows = {r["method"]: r for r in ev.evaluate_task(d, candidates=small).rows}
        largest_acc = float(ev.Y[ev.ti == d][:, largest].mean())
        per_task.append(
            {
                "task": ev.bench.tasks[d],
                "router_model": rows["Router"]["model"],
                "router_acc": rows["Router"]["acc"],
                "bma_small_acc": rows["BMA"]["acc"],
                "oracle_small_acc": rows["Oracle"]["acc"],
                "largest_acc": largest_acc,
                "router_params_b": rows["Router"]["params_b"],
            }
        )
        if progress is not None:
            progress(1)
    keys = {
        "Router": "router_acc",
        "BMA_small": "bma_small_acc",
        "Largest": "largest_acc",
        "Oracle_small": "oracle_small_acc",
    }
    return {
        "limit_b": limit_b,
        "largest_model": ev.bench.models[largest],
        "largest_params_b": float(params[largest]),
        "n_candidates": int(small.sum()),
        "summary": {k: float(np.mean([t[v] for t in per_task])) for k, v in keys.items()},
        "mean_router_params_b": float(np.nanmean([t["router_params_b"] for t in per_task])),
        "per_task": per_task,
    }


INSTANCE_LAMBDAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


def _knn_scores(sims: np.ndarray, S_train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean training score of each query's k most similar (finite-similarity) training inputs."""
    from benchroute.method.neighbors import topk_from_similarity

    top_s, top_i = topk_from_similarity(sims, k)
    valid = np.isfinite(top_s)
    w = valid[:, :, None].astype(np.float64)
    return (S_train[top_i] * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1), valid.any(axis=1)


def _pick(pred: np.ndarray, has: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    """Per-input choice from kNN scores shrunk toward the per-model prior (no neighbours: the prior)."""
    return np.where(has, np.argmax((1.0 - lam) * pred + lam * prior, axis=1), int(np.argmax(prior)))


def instance_study(
    benchmark: Any,
    splits: int = 5,
    test_fraction: float = 0.2,
    k: int = 5,
    sparsity: Sequence[float] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6),
    seed: int = 0,
    lambdas: Sequence[float] = INSTANCE_LAMBDAS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Per-instance routing on a continuous metric (MixInstruct-style): argmax of kNN-regressed scores.

    For each random split, each test input picks the model with the highest predicted raw score among
    its k nearest training inputs ("Router"); sparsity C keeps only training inputs at cosine distance
    > C from the test input (how routing degrades when the benchmark has nothing close).
    "Router_shrunk" shrinks each input's kNN scores toward the models' mean training scores, with the
    weight chosen on a validation part of the training split only: an argmax over many noisy
    five-neighbour averages otherwise picks lucky models (the winner's curse).
    """
    from benchroute.method.neighbors import normalize as _norm

    emb = _norm(benchmark.embeddings)
    S = benchmark.scores.astype(np.float64)
    n = len(S)
    methods = ("Router", "Router_shrunk", "Oracle", "BMA", "Random", "n_train")
    results: dict[float, dict[str, list[float]]] = {c: {m: [] for m in methods} for c in sparsity}
    chosen_lams = []
    for split in range(splits):
        rng = np.random.default_rng([seed, split])
        test = np.zeros(n, bool)
        test[rng.choice(n, max(1, round(test_fraction * n)), replace=False)] = True
        tr, te = np.flatnonzero(~test), np.flatnonzero(test)
        prior = S[tr].mean(axis=0)
        # the shrinkage weight, from a validation part of the training inputs only
        val = np.zeros(len(tr), bool)
        val[rng.choice(len(tr), max(1, round(test_fraction * len(tr))), replace=False)] = True
        fit_i, val_i = tr[~val], tr[val]
        pred_v, has_v = _knn_scores(emb[val_i] @ emb[fit_i].T, S[fit_i], k)
        prior_v = S[fit_i].mean(axis=0)
        val_score = [S[val_i, _pick(pred_v, has_v, prior_v, lam)].mean() for lam in lambdas]
        lam = float(lambdas[int(np.argmax(val_score))])
        chosen_lams.append(lam)
        sims = emb[te] @ emb[tr].T
        bma = int(np.argmax(prior))
        for c in sparsity:
            masked = np.where(sims < 1.0 - c, sims, -np.inf) if c > 0 else sims
            pred, has = _knn_scores(masked, S[tr], k)
            rec = results[c]
            rec["Router"].append(float(S[te, _pick(pred, has, prior, 0.0)].mean()))
            rec["Router_shrunk"].append(float(S[te, _pick(pred, has, prior, lam)].mean()))
            rec["Oracle"].append(float(S[te].max(axis=1).mean()))
            rec["BMA"].append(float(S[te, bma].mean()))
            rec["Random"].append(float(S[te].mean()))
            rec["n_train"].append(float((np.isfinite(masked)).sum(axis=1).mean()))
        if progress is not None:
            progress(1)
    rows = [
        {
            "C": c,
            **{m: float(np.mean(v)) for m, v in results[c].items() if m != "n_train"},
            "n_train_mean": float(np.mean(results[c]["n_train"])),
        }
        for c in sparsity
    ]
    return {
        "dataset": benchmark.name,
        "splits": splits,
        "test_fraction": test_fraction,
        "k": k,
        "shrink_lambdas": chosen_lams,
        "summary": {m: rows[0][m] for m in ("Router", "Router_shrunk", "Oracle", "BMA", "Random")},
        "sparsity": rows,
    }


ProgressFactory = Callable[[str, int], Any]  # (description, total) -> context manager yielding advance(n)

EXPERIMENTS = ("loto", "sweep", "instance", "perquery", "all")


def run_experiments(
    benchmark: Any,
    kind: str = "all",
    router: Router | None = None,
    *,
    sweep_alphas: Sequence[float] = SWEEP_ALPHAS,
    sweep_repeats: int = 10,
    small_limit_b: float = 13.0,
    instance_benchmark: Any = None,
    mlp_tasks: int = 0,
    mlp_params: dict[str, Any] | None = None,
    progress: ProgressFactory | None = None,
    runner: Callable[..., list[dict[str, Any]]] | None = None,
    p_estimator: str | None = None,
) -> dict[str, Any]:
    """Run one experiment kind (or all) and return the results dict written to results.json.

    ``p_estimator`` overrides the Router's p with an evaluation variant (see :class:`LOTOEvaluator`).
    ``runner`` is handed to :meth:`LOTOEvaluator.run` for the LOTO and sweep folds (e.g. to run them on Ray).
    """
    import contextlib
    import time
    from datetime import UTC, datetime

    if kind not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {kind!r}", f"use one of {EXPERIMENTS}")

    def bar(desc: str, total: int) -> Any:
        return progress(desc, total) if progress is not None else contextlib.nullcontext(lambda n=1: None)

    router = router or Router()
    t0 = time.time()
    results: dict[str, Any] = {
        "config": {
            "dataset": benchmark.name,
            "experiment": kind,
            "embedding_model": router.embedding_model,
            "router": params_json(router),
            "p_estimator": p_estimator or router.p_estimator,
            "seed": router.seed,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "dataset": {
            k: v
            for k, v in benchmark.summary().items()
            if k in ("name", "n_tasks", "n_items", "n_models", "figures")
        },
    }
    if kind in ("loto", "sweep", "all"):
        ev = LOTOEvaluator(benchmark, router, p_estimator)
        with bar(f"leave-one-task-out on {benchmark.name}", benchmark.n_tasks) as advance:
            rows = ev.run(alphas=(0.0,), progress=advance, runner=runner)
        results["summary"] = summarize(rows)
        results["per_task"] = rows
        results["paired"] = {
            f"{a} - BMA": paired_difference(rows, a, "BMA")
            for a in ("Router", "S1", "S2", "S3", "S3_true_p", "MoE")
        }
        results["distance"] = distance_study(rows)
        results["variants"] = {
            name: {
                key: results["summary"][m].get(key) for key in ("acc", "pearson", "p_mae", "predictor_acc")
            }
            for name, m in (
                ("kNN + kernel smoother (S3)", "S3"),
                ("kNN + ATC (S3)", "S3_atc"),
                ("kNN, true p (S3)", "S3_true_p"),
                ("kNN, no p (S1)", "S1"),
            )
            if m in results["summary"]
        }
        if kind in ("sweep", "all"):
            alphas = [a for a in sweep_alphas if a > 0]
            with bar("alpha sweep", benchmark.n_tasks) as advance:
                sweep_rows = ev.run(alphas=alphas, repeats=sweep_repeats, progress=advance, runner=runner)
            results["sweep"] = sweep_summary(rows + sweep_rows, [0.0, *alphas])
        if kind == "all":
            from benchroute.experiments.active import active_study
            from benchroute.experiments.cost import cost_study

            with bar(f"small-model routing (<= {small_limit_b:g}B)", benchmark.n_tasks) as advance:
                results["small_models"] = small_model_study(ev, small_limit_b, advance)
            with bar("cost-aware routing (lambda sweep)", benchmark.n_tasks) as advance:
                results["cost"] = cost_study(ev, progress=advance)
            with bar("active labeling (strategies x budgets)", benchmark.n_tasks) as advance:
                results["active"] = active_study(ev, progress=advance)
            if router.score == "blend":
                with bar("routing vs number of training tasks", benchmark.n_tasks) as advance:
                    results["training_tasks"] = training_tasks_study(ev, progress=advance)
                with bar("leave-one-group-out", benchmark.n_tasks) as advance:
                    results["groups"] = group_study(ev, progress=advance)
            else:  # both studies re-select the blend's (k, lambda) on other training sets
                results["training_tasks"] = results["groups"] = {
                    "skipped": "studies of the blend router (score='blend')"
                }
        if mlp_tasks > 0:
            with bar(f"MLP vs kNN predictor on {mlp_tasks} held-out tasks", mlp_tasks) as advance:
                results["mlp_variant"] = mlp_variant_study(ev, mlp_tasks, mlp_params, advance)
    if kind in ("instance", "all"):
        inst = instance_benchmark if instance_benchmark is not None else benchmark
        with bar(f"per-instance routing on {inst.name}", 5) as advance:
            results["instance"] = instance_study(inst, k=router.k, seed=router.seed, progress=advance)
    if kind in ("perquery", "all"):
        from benchroute.experiments.perquery import perquery_study

        # per-instance protocol on the instance benchmark when given (alpacaeval2), else on this one
        with bar(f"per-query routing on {benchmark.name}", benchmark.n_tasks + 3 + 5) as advance:
            results["perquery"] = perquery_study(
                benchmark, instance_bench=instance_benchmark, seed=router.seed, progress=advance
            )
    results["config"]["seconds"] = round(time.time() - t0, 1)
    return results


def s1_curve_direct(
    queries: np.ndarray, pool: np.ndarray, Y_pool: np.ndarray, ks: Sequence[int]
) -> np.ndarray:
    """S1 of a task at each k by exact search in an arbitrary training pool (len(ks) x M).

    The fold engine covers "all tasks but one or two"; studies that drop many tasks at once
    (leave-one-group-out, fewer training tasks) search the pool directly.
    """
    from benchroute.method.neighbors import exact_search

    _, idx = exact_search(queries, pool, max(ks))
    return np.stack([Y_pool[idx[:, :k]].mean(axis=(0, 1)) for k in ks])


def group_study(ev: LOTOEvaluator, progress: Progress | None = None) -> dict[str, Any]:
    """Leave-one-group-out: hold out every task of a group (tasks.csv ``group``) at once.

    Where routing breaks down: a held-out BBH task normally has 23 sibling BBH tasks to learn from;
    here it has none. (k, lambda) is chosen by leave-one-task-out over the remaining groups only. The
    rows are the ungated blend ("Blend"): the trust rule's confidence model is not refitted per group.
    """
    bench, r = ev.bench, ev.router
    info = bench.task_info
    groups = info["group"].reindex(bench.tasks).fillna("").astype(str).to_numpy() if "group" in info else None
    if groups is None or len(set(groups) - {""}) < 2:
        return {"skipped": "needs at least 2 task groups in tasks.csv"}
    X = ev.engine.emb
    out = []
    for g in sorted(set(groups) - {""}):
        held = np.flatnonzero(groups == g)
        train_tasks = np.flatnonzero(groups != g)
        if len(train_tasks) < 2:
            continue
        curves, priors = {}, {}
        for d in train_tasks:
            pool = np.isin(ev.ti, train_tasks) & (ev.ti != d)
            curves[int(d)] = s1_curve_direct(X[ev.ti == d], X[pool], ev.Y[pool], r.blend_ks)
            priors[int(d)] = ev.task_acc[[t for t in train_tasks if t != d]].mean(axis=0)
        choice = select_blend(curves, priors, ev.task_acc, r.blend_ks, r.blend_lambdas, r.blend_min_z)
        pool = np.isin(ev.ti, train_tasks)
        prior = ev.task_acc[train_tasks].mean(axis=0)
        bma = int(np.argmax(prior))
        accs: dict[str, list[float]] = {"Blend": [], "BMA": [], "Oracle": []}
        for d in held:
            curve = s1_curve_direct(X[ev.ti == d], X[pool], ev.Y[pool], (choice.k,))[0]
            accs["Blend"].append(ev.task_acc[d, int(np.argmax(blend(curve, prior, choice.lam)))])
            accs["BMA"].append(ev.task_acc[d, bma])
            accs["Oracle"].append(ev.task_acc[d].max())
        out.append(
            {
                "group": g,
                "n_tasks": len(held),
                "k": choice.k,
                "lambda": choice.lam,
                **{m: float(np.mean(v)) for m, v in accs.items()},
            }
        )
        if progress is not None:
            progress(len(held))
    return {"groups": out}


def training_tasks_study(
    ev: LOTOEvaluator, sizes: Sequence[int] = (5, 10, 20), repeats: int = 5, progress: Progress | None = None
) -> dict[str, Any]:
    """Does routing improve with more benchmarks? Accuracy vs the number of training tasks.

    For each held-out task, train on a random subset of the other tasks (``repeats`` draws per size)
    with the (k, lambda) its own nested leave-one-task-out chose; BMA is recomputed on the subset. The
    rows are the ungated blend ("Blend"), not the Router's gated decision.
    """
    D = ev.bench.n_tasks
    sizes = [s for s in sizes if s < D - 1] + [D - 1]
    X = ev.engine.emb
    res: dict[int, dict[str, list[float]]] = {s: {"Blend": [], "BMA": []} for s in sizes}
    for d in range(D):
        choice = ev.blend_choice(d)
        others = np.array([t for t in range(D) if t != d])
        for s in sizes:
            for rep in range(1 if s == D - 1 else repeats):
                rng = np.random.default_rng([ev.router.seed, 104729, d, s, rep])
                subset = others if s == D - 1 else np.sort(rng.choice(others, s, replace=False))
                pool = np.isin(ev.ti, subset)
                prior = ev.task_acc[subset].mean(axis=0)
                curve = s1_curve_direct(X[ev.ti == d], X[pool], ev.Y[pool], (choice.k,))[0]
                res[s]["Blend"].append(ev.task_acc[d, int(np.argmax(blend(curve, prior, choice.lam)))])
                res[s]["BMA"].append(ev.task_acc[d, int(np.argmax(prior))])
        if progress is not None:
            progress(1)
    rows = [
        {
            "n_train_tasks": s,
            **{m: float(np.mean(v)) for m, v in res[s].items()},
            "gain": float(np.mean(res[s]["Blend"]) - np.mean(res[s]["BMA"])),
        }
        for s in sizes
    ]
    return {"repeats": repeats, "rows": rows}


def mlp_variant_study(
    ev: LOTOEvaluator,
    n_tasks: int = 5,
    mlp_params: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Predictor variant: the paper's MLP vs kNN on the same held-out tasks (alpha = 0).

    One MLP fit per held-out task on all other tasks (minutes each on 2 CPU cores, hence a seeded
    subset of ``n_tasks`` tasks). Reported: predictor accuracy (thresholded g vs the truth) and the
    accuracy of the model chosen by S1, S2 and per-input MoE, for both predictors. S3 for the MLP would
    need one refit per inner fold (thousands of fits) and is not computed.
    """
    from benchroute.method.predictors import MLPCorrectness

    r = ev.router
    rng = np.random.default_rng([r.seed, 31337])
    tasks = sorted(rng.choice(ev.bench.n_tasks, min(n_tasks, ev.bench.n_tasks), replace=False).tolist())
    rows = []
    for d in tasks:
        held = ev.ti == d
        y = ev.Y[held] > 0.5
        train_acc = np.delete(ev.task_acc, d, axis=0).mean(axis=0)
        bma = int(np.argmax(train_acc))
        g_knn = ev.engine.fold(d, [], None)[0][0]
        mlp = MLPCorrectness(random_state=r.seed, **(mlp_params or {})).fit(ev.engine.emb[~held], ev.Y[~held])
        for name, g in (("kNN", g_knn), ("MLP", mlp.predict_proba(ev.engine.emb[held]))):
            pick_moe = np.where(g[:, bma] == g.max(axis=1), bma, np.argmax(g, axis=1))
            rows.append(
                {
                    "task": ev.bench.tasks[d],
                    "predictor": name,
                    "predictor_acc": float(((g > r.t) == y).mean()),
                    "S1": float(ev.task_acc[d, int(np.argmax(s1(g)))]),
                    "S2": float(ev.task_acc[d, int(np.argmax(s2(g, r.t)))]),
                    "MoE": float(y[np.arange(len(y)), pick_moe].mean()),
                    "BMA": float(ev.task_acc[d, bma]),
                }
            )
        if progress is not None:
            progress(1)
    summary = {
        name: {
            k: float(np.mean([row[k] for row in rows if row["predictor"] == name]))
            for k in ("predictor_acc", "S1", "S2", "MoE", "BMA")
        }
        for name in ("kNN", "MLP")
    }
    return {
        "tasks": [ev.bench.tasks[d] for d in tasks],
        "mlp_params": mlp_params or {},
        "summary": summary,
        "per_task": rows,
    }
