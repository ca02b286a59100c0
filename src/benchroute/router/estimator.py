"""The Router: learn from benchmark results, then recommend a model for a task or route queries.

``Router.fit(benchmark)`` learns the correctness predictors g_m on every benchmark question and the
confidence model p(u) from held-out benchmark tasks. ``recommend(inputs)`` scores a new task from a
handful of its unlabeled inputs (S1, S2, S3), applies the trust rule and explains the decision;
``route(queries)`` picks a model per query. ``save``/``load`` use JSON + safetensors with checksums:
a router from an untrusted source is data, never code.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchroute import __version__
from benchroute.errors import ConfigError, IntegrityError, NotFittedError
from benchroute.files import atomic_write_dir, jsonable
from benchroute.method.confidence import ATCEstimator, KernelSmoother, dataset_distance
from benchroute.method.cost import cheapest_within_trusted, choose, model_costs
from benchroute.method.folds import DEFAULT_ALPHAS, ConfidencePairs, FoldEngine, n_moved
from benchroute.method.labels import is_binary, pack_bits, unpack_bits
from benchroute.method.neighbors import BACKENDS, INDEX_PARAMS, exact_search, normalize
from benchroute.method.predictors import KNNCorrectness, MLPCorrectness, make_predictor
from benchroute.method.scores import (
    BLEND_KS,
    BLEND_LAMBDAS,
    LABEL_GRID,
    LABEL_RULES,
    BlendChoice,
    TrustDecision,
    apply_label_rule,
    blend,
    label_grid_size,
    label_rules_for,
    s1,
    s2,
    s3,
    select_blend,
    trust_rule,
)

FORMAT_VERSION = 2  # 2: labels bit-packed (Y_bits), index / index_params; 1 still loads
READABLE_VERSIONS = (1, 2)
SCORES = ("S1", "S2", "S3", "blend")


@dataclass
class ModelScore:
    """One row of a recommendation: a candidate LLM and everything the router believes about it."""

    model: str
    rank: int
    s1: float
    s2: float
    s3: float
    p: float
    predicted_accuracy: float
    params_b: float | None
    cost: float | None


@dataclass
class Recommendation:
    """A task-level routing decision and its explanation (stable JSON via :meth:`to_dict`)."""

    chosen: str
    candidate: str
    best_on_average: str
    fell_back: bool
    probability: float | None
    eta: float
    reason: str
    score: str
    n_inputs: int
    n_labeled: int
    distance: float
    distance_percentile: float
    closeness: str
    nearest_tasks: list[dict[str, Any]]
    ranking: list[ModelScore]
    few_shot: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ranking"] = [asdict(r) for r in self.ranking]
        return jsonable(out)


@dataclass
class RouteDecision:
    """Per-query routing: the model with the highest predicted correctness (ties to the BMA model)."""

    input_index: int
    model: str
    probability: float
    reason: str
    per_model: dict[str, float]


def _closeness(percentile: float) -> str:
    if percentile <= 25:
        return "close to the benchmarks: nearer than most benchmark tasks are to each other"
    if percentile <= 75:
        return "about as far from the benchmarks as a typical benchmark task is from the others"
    if percentile <= 100:
        return "far from the benchmarks: the predictors are less reliable here"
    return "farther from the benchmarks than any benchmark task: expect the fallback"


class Router:
    """Pick an LLM for a new task (``recommend``) or per query (``route``) from benchmark results.

    Parameters
    ----------
    predictor : "knn" (default, the paper's kNN), "mlp", "logreg", or an estimator instance with
        ``fit(X, Y)`` / ``predict_proba(X) -> n x M``.
    k : neighbours of the kNN predictor [5].
    score : which score ranks the models: "blend" [default: kNN accuracy at a wide k shrunk toward the
        best-on-average prior, (k, lambda) chosen by leave-one-task-out], "S1", "S2" or "S3" (the paper's).
    t : threshold turning g into a predicted label [0.5].
    kappa : neighbours in the dataset distance u(d) [19].
    sigma : kernel smoother bandwidth [0.09].
    p_estimator : "kernel" (Nadaraya-Watson on u) or "atc".
    eta : the trust rule's probability threshold [0.6]; ``trust=False`` disables the rule. The rule
        guards every score's choice, the blend's too: route away from the best-on-average model only if
        P(the candidate beats it on this task) > eta under the S2 / p binomial model.
    alphas, repeats, cap : the held-out folds that train the confidence model (kNN only; other
        predictors use alpha = 0 folds, one refit per benchmark task).
    draws : Monte Carlo draws of the trust rule.
    embedding_model : sentence-transformers model for inputs given as text.
    seed : every random draw (moved samples, Monte Carlo) derives from it.
    blend_ks, blend_lambdas : the grid of the default blended score (:func:`benchroute.method.scores.blend`).
    blend_min_z : keep the best-on-average model unless the chosen blend's inner gain exceeds this many
        paired standard errors [0 = off; measured in docs/reproduction.md: 1.0 did not help].
    index, index_params : how the kNN predictor searches the stored questions ("auto": exact up to
        100k, approximate IVF beyond; "numpy", "faiss-flat", "faiss-ivf", "faiss-hnsw") and the
        :class:`~benchroute.method.neighbors.NeighborIndex` parameters (thresholds, nlist, nprobe, ...) as a
        dict. Saved with the router; loading rebuilds the index from the stored vectors. See docs/scaling.md.
    """

    def __init__(
        self,
        predictor: Any = "knn",
        k: int = 5,
        score: str = "blend",
        t: float = 0.5,
        kappa: int = 19,
        sigma: float = 0.09,
        p_estimator: str = "kernel",
        eta: float = 0.6,
        trust: bool = True,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        repeats: int = 10,
        cap: int = 50,
        draws: int = 10_000,
        embedding_model: str = "all-mpnet-base-v2",
        seed: int = 0,
        blend_ks: Sequence[int] = BLEND_KS,
        blend_lambdas: Sequence[float] = BLEND_LAMBDAS,
        blend_min_z: float = 0.0,
        index: str = "auto",
        index_params: dict[str, Any] | None = None,
    ) -> None:
        self.predictor = predictor
        self.k = k
        self.score = score
        self.t = t
        self.kappa = kappa
        self.sigma = sigma
        self.p_estimator = p_estimator
        self.eta = eta
        self.trust = trust
        self.alphas = tuple(alphas)
        self.repeats = repeats
        self.cap = cap
        self.draws = draws
        self.embedding_model = embedding_model
        self.seed = seed
        self.blend_ks = tuple(blend_ks)
        self.blend_lambdas = tuple(blend_lambdas)
        self.blend_min_z = blend_min_z
        self.index = index
        self.index_params = index_params

    # ------------------------------------------------------------------ fitting
    def _make_predictor(self) -> Any:
        if isinstance(self.predictor, str):
            params: dict[str, Any] = {}
            if self.predictor == "knn":
                params = {"k": self.k, "backend": self.index, "index_params": dict(self.index_params or {})}
            return make_predictor(self.predictor, **params)
        from sklearn.base import clone

        return clone(self.predictor)

    def _check_params(self) -> None:
        if self.score not in SCORES:
            raise ConfigError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.p_estimator not in ("kernel", "atc"):
            raise ConfigError(f"p_estimator must be 'kernel' or 'atc', got {self.p_estimator!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta must be in [0, 1], got {self.eta}")

    def fit(self, benchmark: Any, embeddings: np.ndarray | None = None, progress: Any = None) -> Router:
        """Learn predictors and the confidence model from every task of ``benchmark``.

        ``embeddings`` (n_items x d) defaults to ``benchmark.embeddings``, else the inputs are embedded
        (cached) with ``embedding_model``.
        """
        self._check_params()
        emb = embeddings if embeddings is not None else getattr(benchmark, "embeddings", None)
        if emb is None:
            from benchroute.embed import Embedder

            emb = Embedder(self.embedding_model).encode(benchmark.inputs)
        emb = normalize(emb)
        if len(emb) != benchmark.n_items:
            raise ConfigError(f"got {len(emb)} embeddings for {benchmark.n_items} benchmark items")
        if benchmark.n_tasks < 2:
            raise ConfigError(
                "a router needs at least 2 benchmark tasks (the confidence model holds tasks out)"
            )
        Y = _compact_labels(benchmark.correct)
        self.tasks_ = list(benchmark.tasks)
        self.models_ = list(benchmark.models)
        self.X_ = emb
        self.Y_ = Y
        self.task_index_ = np.asarray(benchmark.task_index, dtype=np.int32)
        self.task_accuracy_ = np.stack(
            [Y[self.task_index_ == d].mean(axis=0, dtype=np.float64) for d in range(len(self.tasks_))]
        )
        info = benchmark.model_info
        self.params_b_ = _column(info, "params_b", self.models_)
        self.cost_, self.cost_unit_ = model_costs(info, self.models_)
        self.predictor_ = self._make_predictor().fit(emb, Y)
        pairs = self._confidence_pairs(excluded=())
        self._fit_confidence(pairs)
        if self.score == "blend":
            self._fit_blend()
        return self

    def _engine(self, max_k: int = 0) -> FoldEngine:
        k = getattr(self.predictor_, "k", self.k)
        weights = getattr(self.predictor_, "weights", "uniform")
        return FoldEngine(
            self.X_,
            self.Y_,
            self.task_index_,
            k=k,
            kappa=self.kappa,
            threshold=self.t,
            weights=weights,
            max_k=max_k,
        )

    def _fit_blend(self) -> None:
        """Pick the blend's (k, lambda) by leave-one-task-out over the training tasks."""
        engine = self._engine(max(self.blend_ks))
        D = len(self.tasks_)
        curves = {d: engine.s1_curve(d, (), self.blend_ks) for d in range(D)}
        priors = {d: np.delete(self.task_accuracy_, d, axis=0).mean(axis=0) for d in range(D)}
        self.blend_ = select_blend(
            curves, priors, self.task_accuracy_, self.blend_ks, self.blend_lambdas, self.blend_min_z
        )
        # how a few labels of a new task may overrule the blend, per number of labels (same protocol)
        self.label_rules_ = label_rules_for(
            engine, list(range(D)), [], self.blend_, self.task_accuracy_, LABEL_GRID, self.seed
        )

    def _confidence_pairs(self, excluded: Sequence[int]) -> ConfidencePairs:
        if isinstance(self.predictor_, KNNCorrectness):
            engine = self._engine()
            return engine.pairs(excluded, self.alphas, self.repeats, self.seed, self.cap)
        return self._generic_pairs(excluded)

    def _generic_pairs(self, excluded: Sequence[int]) -> ConfidencePairs:
        """One refit per held-out task (alpha = 0): the only affordable folds for an MLP or classifier."""
        us, ps, confs, corrs, ts = [], [], [], [], []
        for d in range(len(self.tasks_)):
            if d in excluded:
                continue
            held = self.task_index_ == d
            train = ~held & ~np.isin(self.task_index_, list(excluded))
            g = self._make_predictor().fit(self.X_[train], self.Y_[train]).predict_proba(self.X_[held])
            correct = (g > self.t) == (self.Y_[held] > 0.5)
            us.append(dataset_distance(self.X_[held], self.X_[train], self.kappa))
            ps.append(correct.mean(axis=0))
            confs.append(np.maximum(g, 1 - g))
            corrs.append(correct)
            ts.append(d)
        z = len(us)
        return ConfidencePairs(
            np.array(us),
            np.stack(ps),
            np.array(ts),
            np.zeros(z),
            np.zeros(z, dtype=int),
            np.concatenate(confs),
            np.concatenate(corrs),
        )

    def _fit_confidence(self, pairs: ConfidencePairs) -> None:
        self.pairs_ = pairs
        self.smoother_ = KernelSmoother(self.sigma).fit(pairs.u, pairs.p)
        self.atc_ = ATCEstimator().fit(pairs.atc_conf, pairs.atc_correct) if pairs.atc_conf.size else None
        self.train_distances_ = pairs.u[pairs.alpha == 0]
        self.best_on_average_ = int(np.argmax(self.task_accuracy_.mean(axis=0)))

    def _check_fitted(self) -> None:
        if not hasattr(self, "predictor_"):
            raise NotFittedError("this Router is not fitted yet", "call fit(benchmark) or Router.load(dir)")

    # ------------------------------------------------------------------ using
    def embed(self, inputs: Sequence[str] | np.ndarray) -> np.ndarray:
        """Embeddings of ``inputs`` (texts are embedded with the router's model, through the cache)."""
        if isinstance(inputs, np.ndarray):
            if inputs.ndim != 2 or len(inputs) == 0:
                raise ConfigError(
                    f"no inputs given (embeddings of shape {inputs.shape})", "pass an n x d array, n >= 1"
                )
            if hasattr(self, "X_") and inputs.shape[1] != self.X_.shape[1]:
                raise ConfigError(
                    f"embeddings have {inputs.shape[1]} dimensions, the router's have {self.X_.shape[1]}",
                    f"embed with {self.embedding_model}",
                )
            return normalize(inputs)
        if isinstance(inputs, str):
            raise ConfigError("inputs must be a list of texts, not one string")
        if len(inputs) == 0:
            raise ConfigError("no inputs given", "pass at least one input of the new task")
        if any(not isinstance(x, str) or not x.strip() for x in inputs):
            raise ConfigError("every input must be a non-empty string")
        return self.embedder.encode(list(inputs))

    @property
    def embedder(self) -> Any:
        """The router's Embedder, created once: loading a sentence-transformers model takes seconds."""
        if getattr(self, "_embedder", None) is None:
            from benchroute.embed import Embedder

            self._embedder = Embedder(self.embedding_model)
        return self._embedder

    def model_position(self, name: str) -> int:
        try:
            return self.models_.index(name)
        except ValueError as exc:
            raise ConfigError(f"unknown model {name!r}", f"known models: {', '.join(self.models_)}") from exc

    def _candidate_mask(self, candidates: Sequence[str] | None) -> np.ndarray:
        mask = np.ones(len(self.models_), dtype=bool)
        if candidates is not None:
            mask[:] = False
            for c in candidates:
                mask[self.model_position(c)] = True
        return mask

    def recommend(
        self,
        inputs: Sequence[str] | np.ndarray,
        labeled: Any = None,
        candidates: Sequence[str] | None = None,
        *,
        cost_weight: float = 0.0,
        max_cost: float | None = None,
        cheapest_within: float | None = None,
    ) -> Recommendation:
        """Rank the models for a new task from its (unlabeled) inputs and decide whether to trust it.

        ``labeled``: optional few labeled samples of the new task, ``(inputs, Y)`` with Y an
        n_l x M 0/1 matrix in the router's model order, or a list of
        ``{"input": str, "correct": {model: 0/1}}``; they join the training data (SPEC section 6).
        ``candidates`` restricts the choice to a subset of models.

        Cost-aware choice (costs in ``cost_unit_``: USD per million tokens, or billions of parameters
        when the benchmark has no prices): ``cost_weight`` maximizes score - lambda * cost / max cost;
        ``max_cost`` is a budget; ``cheapest_within`` picks the cheapest model whose predicted accuracy
        is within eps of the best (for S3, only if the trust rule says it is likely within eps).
        """
        self._check_fitted()
        X = self.embed(inputs)
        mask = self._candidate_mask(candidates)
        n = len(X)
        store_X, store_Y, few_shot, n_labeled, lab_Y = self.X_, self.Y_, None, 0, None
        predictor = self.predictor_
        if labeled is not None:  # the labeled samples join the training data: a predictor refit
            lab_X, lab_Y = self._labeled(labeled)
            n_labeled = len(lab_X)
            store_X = np.vstack([self.X_, lab_X])
            store_Y = np.vstack([self.Y_, lab_Y])
            few = lab_Y.mean(axis=0)
            few_shot = {m: float(few[j]) for j, m in enumerate(self.models_)}
            predictor = self._make_predictor().fit(store_X, store_Y)
        g = predictor.predict_proba(X)
        # one neighbour search serves the distance u(d') and the blend's wide neighbourhood
        width = max(self.kappa, self.blend_.k if self.score == "blend" else 0)
        sims, idx = self._store_search(X, width) if labeled is None else exact_search(X, store_X, width)
        u = float((1.0 - sims[:, : self.kappa]).mean())
        # float32 like the labels' former dtype: 0/1 sums are exact, so uint8 labels give the same means
        s1k = (
            store_Y[idx[:, : self.blend_.k]].mean(axis=(0, 1), dtype=np.float32)
            if self.score == "blend"
            else None
        )
        p = self.estimate_p(u, g)
        rec = self._decide(g, p, u, mask, n, n_labeled, few_shot, X, s1k, lab_Y)
        if cost_weight or max_cost is not None or cheapest_within is not None:
            self._apply_cost(rec, g, p, n, mask, cost_weight, max_cost, cheapest_within)
        return rec

    def _apply_cost(
        self,
        rec: Recommendation,
        g: np.ndarray,
        p: np.ndarray,
        n: int,
        mask: np.ndarray,
        cost_weight: float,
        max_cost: float | None,
        cheapest_within: float | None,
    ) -> None:
        """Replace the accuracy-only choice by a cost-aware one (the ranking is unchanged)."""
        by_name = {r.model: r.predicted_accuracy for r in rec.ranking}
        pred = np.array([by_name.get(m, -np.inf) for m in self.models_])
        if cheapest_within is not None and self.score == "S3" and self.trust and max_cost is None:
            choice = cheapest_within_trusted(
                s2(g, self.t),
                p,
                n,
                self.cost_,
                cheapest_within,
                self.eta,
                self.draws,
                self.seed,
                mask=mask,
                names=self.models_,
            )
        else:
            choice = choose(
                pred,
                self.cost_,
                cost_weight=cost_weight,
                max_cost=max_cost,
                cheapest_within=cheapest_within,
                mask=mask,
                names=self.models_,
            )
        rec.chosen = self.models_[choice.index]
        rec.reason = choice.reason
        rec.fell_back = False
        rec.extra["cost"] = {
            "unit": self.cost_unit_,
            "mode": choice.mode,
            "cost_weight": cost_weight,
            "max_cost": max_cost,
            "cheapest_within": cheapest_within,
            "accuracy_choice": self.models_[choice.best],
            "frontier": [self.models_[j] for j in choice.frontier],
            "probability": choice.probability,
        }

    def estimate_p(self, u: float, g: np.ndarray) -> np.ndarray:
        """p(d', m): kernel smoother at u(d') (or ATC from the confidences of g)."""
        if self.p_estimator == "atc" and self.atc_ is not None:
            return self.atc_.predict(np.maximum(g, 1.0 - g))
        return self.smoother_.predict(u)

    def _decide(
        self,
        g: np.ndarray,
        p: np.ndarray,
        u: float,
        mask: np.ndarray,
        n: int,
        n_labeled: int,
        few_shot: dict[str, float] | None,
        X: np.ndarray,
        s1k: np.ndarray | None = None,
        labeled_Y: np.ndarray | None = None,
    ) -> Recommendation:
        v1, v2 = s1(g), s2(g, self.t)
        v3 = s3(v2, p)
        prior = self.task_accuracy_.mean(axis=0)
        scores = {"S1": v1, "S2": v2, "S3": v3}
        extra: dict[str, Any] = {}
        if s1k is not None:
            scores["blend"] = blend(s1k, prior, self.blend_.lam)
            extra["blend"] = {
                "k": self.blend_.k,
                "lambda": self.blend_.lam,
                "inner_accuracy": self.blend_.inner_accuracy,
                "bma_inner_accuracy": self.blend_.bma_inner_accuracy,
                "gain_se": self.blend_.gain_se,
                "gated": self.blend_.gated,
            }
        score = scores[self.score]
        masked = np.where(mask, score, -np.inf)
        bma = int(np.argmax(np.where(mask, prior, -np.inf)))
        if s1k is not None:
            wide = int(np.argmax(np.where(mask, s1k, -np.inf)))
            extra["blend"]["knn_favourite"] = self.models_[wide]
            if self.trust:  # the paper's trust rule guards the blend's choice too (see docs/method.md)
                decision = trust_rule(
                    v2, p, n, bma, score=masked, eta=self.eta, draws=self.draws, seed=self.seed
                )
            else:
                cand = int(np.argmax(masked))
                decision = TrustDecision(cand, cand, bma, None, self.eta, False)
            if decision.candidate == bma and wide != bma:  # the prior held the kNN favourite back
                decision = replace(decision, fell_back=True)
            size = label_grid_size(n_labeled)
            rule = self.label_rules_.get(size, "none") if labeled_Y is not None else "none"
            if rule != "none":  # the labels arbitrate among the blend's leaders instead of the binomial gate
                top = int(np.argmax(masked))
                chosen = apply_label_rule(rule, masked, labeled_Y, bma)
                decision = TrustDecision(chosen, top, bma, None, self.eta, chosen == bma and top != bma)
                extra["labels"] = {"rule": rule, "n_labeled": n_labeled, "rule_for": size}
        elif self.trust:
            decision = trust_rule(v2, p, n, bma, score=masked, eta=self.eta, draws=self.draws, seed=self.seed)
        else:
            cand = int(np.argmax(masked))
            decision = TrustDecision(cand, cand, bma, None, self.eta, False)
        order = np.argsort(-masked, kind="stable")
        ranking = [
            ModelScore(
                model=self.models_[j],
                rank=r + 1,
                s1=float(v1[j]),
                s2=float(v2[j]),
                s3=float(v3[j]),
                p=float(p[j]),
                predicted_accuracy=float(score[j]),
                params_b=_opt(self.params_b_[j]),
                cost=_opt(self.cost_[j]),
            )
            for r, j in enumerate(order)
            if mask[j]
        ]
        pct = float((self.train_distances_ < u).mean() * 100) if len(self.train_distances_) else 50.0
        if len(self.train_distances_) and u > self.train_distances_.max():
            pct = 101.0
        return Recommendation(
            chosen=self.models_[decision.chosen],
            candidate=self.models_[decision.candidate],
            best_on_average=self.models_[bma],
            fell_back=decision.fell_back,
            probability=decision.probability,
            eta=self.eta,
            reason=(
                self._labels_reason(decision, extra["labels"])
                if "labels" in extra
                else self._blend_reason(decision, extra["blend"]["knn_favourite"])
                if s1k is not None
                else decision.reason(self.models_)
            ),
            score=self.score,
            n_inputs=n,
            n_labeled=n_labeled,
            distance=float(u),
            distance_percentile=min(pct, 100.0),
            closeness=_closeness(pct),
            nearest_tasks=self.nearest_tasks(X),
            ranking=ranking,
            few_shot=few_shot,
            extra=extra,
        )

    def _labels_reason(self, decision: TrustDecision, labels: dict[str, Any]) -> str:
        names, rule = self.models_, labels["rule"]
        among = (
            "the blend's choice or the best-on-average model"
            if rule == "veto"
            else f"the blend's top {rule[3:]} and the best-on-average model"
        )
        return (
            f"{names[decision.chosen]}: the best on the {labels['n_labeled']} labeled samples among {among} "
            f"(rule {rule!r}, chosen by leave-one-task-out for {labels['rule_for']} labels; "
            f"the blend alone picks {names[decision.candidate]})"
        )

    def _blend_reason(self, decision: TrustDecision, favourite: str) -> str:
        names, b = self.models_, self.blend_
        if b.lam == 1.0:
            return (
                f"best-on-average model {names[decision.chosen]}: on the benchmark tasks, leave-one-task-out "
                "found no blend of kNN accuracy that beats it (lambda=1)"
            )
        how = f"blend of kNN accuracy (k={b.k}) and the best-on-average prior (lambda={b.lam:g})"
        if decision.fell_back and decision.candidate != decision.fallback:
            return (
                f"{how} favours {names[decision.candidate]}, but P(it beats {names[decision.fallback]} on "
                f"this task) = {decision.probability:.3f} does not exceed eta = {decision.eta:g}: falling "
                "back to the best-on-average model"
            )
        if decision.fell_back:
            return (
                f"{how} keeps the best-on-average model {names[decision.fallback]}: the kNN favourite "
                f"{favourite} is not far enough ahead"
            )
        if decision.chosen == decision.fallback:
            return f"{how}: the best-on-average model {names[decision.chosen]} also leads on this task"
        return f"{how} routes to {names[decision.chosen]} (best on average: {names[decision.fallback]})"

    def nearest_tasks(self, X: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
        """Which benchmark tasks the inputs' k nearest questions come from, with their shares."""
        _, idx = self._store_search(normalize(X), getattr(self.predictor_, "k", self.k))
        counts = np.bincount(self.task_index_[idx].ravel(), minlength=len(self.tasks_))
        share = counts / counts.sum()
        order = np.argsort(-share, kind="stable")[:top]
        return [{"task": self.tasks_[d], "share": float(share[d])} for d in order if share[d] > 0]

    def _store_search(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest stored questions of normalized X, through the kNN predictor's index when it has one
        (so a large store is searched with the chosen FAISS index, not scanned per call)."""
        index = getattr(self.predictor_, "index_", None)
        if index is not None and len(index) == len(self.X_):
            return index.search(X, k, normalized=True)
        return exact_search(X, self.X_, k)

    def _labeled(self, labeled: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(labeled, tuple) and len(labeled) == 2:
            inputs, Y = labeled
            Y = np.asarray(Y, dtype=np.float32)
        else:
            inputs, rows = [], []
            for i, rec in enumerate(labeled):
                if not isinstance(rec, dict) or "input" not in rec or "correct" not in rec:
                    raise ConfigError(
                        f"labeled sample {i} must be {{'input': str, 'correct': {{model: 0/1}}}}"
                    )
                row = np.full(len(self.models_), np.nan, dtype=np.float32)
                for m, v in rec["correct"].items():
                    row[self.model_position(m)] = float(v)
                if np.isnan(row).any():
                    missing = [self.models_[j] for j in np.flatnonzero(np.isnan(row))][:3]
                    raise ConfigError(
                        f"labeled sample {i} lacks results for {missing}...",
                        "give every model's 0/1 correctness on each labeled input",
                    )
                inputs.append(rec["input"])
                rows.append(row)
            Y = np.stack(rows) if rows else np.zeros((0, len(self.models_)), np.float32)
        if Y.ndim != 2 or Y.shape[1] != len(self.models_) or len(Y) != len(inputs):
            raise ConfigError(f"labeled Y must be n x {len(self.models_)} (one column per model)")
        if not np.isin(Y, (0.0, 1.0)).all():
            raise ConfigError("labeled correctness must be 0 or 1")
        return self.embed(inputs), Y

    def predict_proba(self, queries: Sequence[str] | np.ndarray) -> np.ndarray:
        """g_m(x) for each query and model (n x M)."""
        self._check_fitted()
        return self.predictor_.predict_proba(self.embed(queries))

    def route(
        self, queries: Sequence[str] | np.ndarray, candidates: Sequence[str] | None = None
    ) -> list[RouteDecision]:
        """Per-query routing: argmax_m g_m(x) among candidates; ties go to the best-on-average model."""
        g = self.predict_proba(queries)
        mask = self._candidate_mask(candidates)
        bma = int(np.argmax(np.where(mask, self.task_accuracy_.mean(axis=0), -np.inf)))
        gm = np.where(mask, g, -np.inf)
        best = gm.max(axis=1)
        out = []
        for i in range(len(g)):
            tied = np.flatnonzero(gm[i] == best[i])
            j = bma if bma in tied else int(tied[0])
            why = (
                "highest predicted correctness"
                if len(tied) == 1
                else (
                    f"{len(tied)} models tie at {best[i]:.2f}; "
                    + ("the best-on-average model is among them" if j == bma else "first of the tied models")
                )
            )
            per = {self.models_[m]: float(g[i, m]) for m in np.flatnonzero(mask)}
            out.append(RouteDecision(i, self.models_[j], float(g[i, j]), why, per))
        return out

    # ------------------------------------------------------------------ models
    def add_model(
        self,
        name: str,
        correct: np.ndarray | Sequence[float],
        params_b: float | None = None,
        cost: float | None = None,
    ) -> Router:
        """Add an LLM from its 0/1 results on the stored questions (NaN = not run on that question).

        kNN gains a column without refitting the others. Questions the new model was not run on are
        filled with its mean accuracy on the ones it was, so its neighbours still average to a
        sensible value (documented approximation).
        """
        self._check_fitted()
        if name in self.models_:
            raise ConfigError(f"model {name!r} already exists", "remove_model it first to replace it")
        y = np.asarray(correct, dtype=np.float64)
        if y.shape != (len(self.X_),):
            raise ConfigError(f"need one result per stored question ({len(self.X_)}), got shape {y.shape}")
        known = ~np.isnan(y)
        if not known.any():
            raise ConfigError(f"model {name!r} has no results")
        if not np.isin(y[known], (0.0, 1.0)).all():
            raise ConfigError("results must be 0/1 correctness (or NaN for not run)")
        y = np.where(known, y, y[known].mean()).astype(np.float32)
        if not isinstance(self.predictor_, KNNCorrectness):
            raise ConfigError(
                "add_model without refitting needs the kNN predictor", "refit the router instead"
            )
        self.predictor_.add_output(y)
        self.Y_ = np.hstack([self.Y_, y[:, None]])
        col = np.array(
            [
                [
                    y[(self.task_index_ == d) & known].mean(dtype=np.float64)
                    if ((self.task_index_ == d) & known).any()
                    else np.nan
                    for d in range(len(self.tasks_))
                ]
            ]
        ).T
        self.task_accuracy_ = np.hstack(
            [self.task_accuracy_, np.where(np.isnan(col), y.mean(dtype=np.float64), col)]
        )
        self.models_.append(name)
        self.params_b_ = np.append(self.params_b_, np.nan if params_b is None else params_b)
        self.cost_ = np.append(self.cost_, np.nan if cost is None else cost)
        self._refit_learned()
        return self

    def remove_model(self, name: str) -> Router:
        """Drop an LLM from the candidates (its column of every learned matrix)."""
        self._check_fitted()
        j = self.model_position(name)
        if len(self.models_) == 1:
            raise ConfigError("cannot remove the last model")
        if isinstance(self.predictor_, KNNCorrectness):
            self.predictor_.drop_output(j)
        else:
            self.predictor_ = self._make_predictor().fit(self.X_, np.delete(self.Y_, j, axis=1))
        self.Y_ = np.delete(self.Y_, j, axis=1)
        self.task_accuracy_ = np.delete(self.task_accuracy_, j, axis=1)
        self.params_b_ = np.delete(self.params_b_, j)
        self.cost_ = np.delete(self.cost_, j)
        del self.models_[j]
        self._refit_learned()
        return self

    def _refit_learned(self) -> None:
        """After the model set changed: the confidence pairs, and the blend's (k, lambda) and label rules
        (both pick among the models, so a choice made for the old set would be stale)."""
        self._fit_confidence(self._confidence_pairs(excluded=()))
        if self.score == "blend":
            self._fit_blend()

    # ------------------------------------------------------------------ persistence
    def get_params(self) -> dict[str, Any]:
        pred = self.predictor if isinstance(self.predictor, str) else _predictor_name(self.predictor)
        return {
            "predictor": pred,
            "k": self.k,
            "score": self.score,
            "t": self.t,
            "kappa": self.kappa,
            "sigma": self.sigma,
            "p_estimator": self.p_estimator,
            "eta": self.eta,
            "trust": self.trust,
            "alphas": list(self.alphas),
            "repeats": self.repeats,
            "cap": self.cap,
            "draws": self.draws,
            "embedding_model": self.embedding_model,
            "seed": self.seed,
            "blend_ks": list(self.blend_ks),
            "blend_lambdas": list(self.blend_lambdas),
            "blend_min_z": self.blend_min_z,
            "index": self.index,
            "index_params": None if self.index_params is None else jsonable(dict(self.index_params)),
        }

    def save(self, path: str | os.PathLike[str], card_extra: dict[str, Any] | None = None) -> Path:
        """Write router.json + arrays.safetensors + card.md into ``path`` (atomically, no pickle)."""
        from safetensors.numpy import save as st_save

        self._check_fitted()
        path = Path(path)
        arrays = {
            "X": self.X_.astype(np.float32),
            # 0/1 correctness bit-packed (1/32 of float32); fractional labels (add_model fills) stay float32
            **({"Y_bits": pack_bits(self.Y_)} if is_binary(self.Y_) else {"Y": self.Y_.astype(np.float32)}),
            "task_index": self.task_index_.astype(np.int32),
            "task_accuracy": self.task_accuracy_.astype(np.float64),
            "params_b": self.params_b_.astype(np.float64),
            "cost": self.cost_.astype(np.float64),
            "pairs_u": self.pairs_.u.astype(np.float64),
            "pairs_p": self.pairs_.p.astype(np.float64),
            "pairs_task": self.pairs_.task.astype(np.int32),
            "pairs_alpha": self.pairs_.alpha.astype(np.float64),
            "pairs_repeat": self.pairs_.repeat.astype(np.int32),
            "atc_conf": self.pairs_.atc_conf.astype(np.float32),
            "atc_correct": self.pairs_.atc_correct.astype(np.uint8),
        }
        if isinstance(self.predictor_, MLPCorrectness):
            for key, val in self.predictor_.net_.state_dict().items():
                arrays[f"mlp.{key}"] = val.numpy()
        blob = st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        payload = {
            "format": "benchroute-router",
            "format_version": FORMAT_VERSION,
            "benchroute_version": __version__,
            "params": self.get_params(),
            "tasks": self.tasks_,
            "models": self.models_,
            "arrays_sha256": hashlib.sha256(blob).hexdigest(),
            "card_extra": jsonable(card_extra or {}),
            "blend": jsonable(vars(self.blend_)) if hasattr(self, "blend_") else None,
            "label_rules": {str(k): v for k, v in self.label_rules_.items()}
            if hasattr(self, "label_rules_")
            else None,
            "cost_unit": self.cost_unit_,
            "predictor_params": (
                None if isinstance(self.predictor, str) else jsonable(self.predictor.get_params(deep=False))
            ),
        }
        text = json.dumps(payload, sort_keys=True)
        doc = {"payload": payload, "sha256": hashlib.sha256(text.encode()).hexdigest()}
        # all three files change together (one directory swap), so a kill or a full disk mid-save
        # leaves the previous router whole; raises ConfigError if path is a file or holds other files
        atomic_write_dir(
            path,
            {
                "arrays.safetensors": blob,
                "card.md": self.model_card(card_extra).encode("utf-8"),
                "router.json": (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"),
            },
        )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Router:
        """Load a saved router, verifying format version and checksums (never executes code)."""
        from safetensors.numpy import load as st_load

        path = Path(path)
        manifest = path / "router.json"
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            payload = doc["payload"]
            ok = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest() == doc["sha256"]
        except FileNotFoundError as exc:
            raise IntegrityError(
                f"{manifest}: no saved router here", "pass a directory written by `benchroute fit`"
            ) from exc
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise IntegrityError(
                f"{manifest}: not a valid router manifest ({exc})", "re-save the router"
            ) from exc
        if not ok:
            raise IntegrityError(
                f"{manifest}: checksum mismatch (file corrupt or modified)", "re-save the router"
            )
        if (
            not isinstance(payload, dict)
            or payload.get("format") != "benchroute-router"
            or payload.get("format_version") not in READABLE_VERSIONS
        ):
            version = payload.get("format_version") if isinstance(payload, dict) else None
            raise IntegrityError(
                f"{manifest}: unsupported router format {version}",
                f"this benchroute reads formats {READABLE_VERSIONS}: upgrade it, or re-save the router",
            )
        if payload["format_version"] == 1 and isinstance(payload.get("params"), dict):
            # format 1 predates the index choice: those routers searched with the defaults
            payload["params"] = {"index": "auto", "index_params": None, **payload["params"]}
        _check_manifest(payload, manifest)
        try:
            blob = (path / "arrays.safetensors").read_bytes()
        except FileNotFoundError as exc:
            raise IntegrityError(f"{path / 'arrays.safetensors'}: missing", "re-save the router") from exc
        if hashlib.sha256(blob).hexdigest() != payload["arrays_sha256"]:
            raise IntegrityError(f"{path / 'arrays.safetensors'}: checksum mismatch (corrupt or truncated)")
        try:
            arrays = st_load(blob)
        except Exception as exc:  # safetensors raises its own SafetensorError on anything unparsable
            raise IntegrityError(
                f"{path / 'arrays.safetensors'}: not a safetensors file ({exc})", "re-save the router"
            ) from exc
        _check_arrays(arrays, payload, path / "arrays.safetensors")
        try:
            return cls._from_saved(payload, arrays)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ConfigError) as exc:
            raise IntegrityError(
                f"{manifest}: inconsistent saved router ({type(exc).__name__}: {exc})", "re-save the router"
            ) from exc

    @classmethod
    def _from_saved(cls, payload: dict[str, Any], arrays: dict[str, np.ndarray]) -> Router:
        params = dict(payload["params"])
        custom = payload.get("predictor_params")
        if custom is not None:
            from benchroute.method.predictors import PREDICTORS

            if "hidden" in custom:
                custom["hidden"] = tuple(custom["hidden"])
            params["predictor"] = PREDICTORS[params["predictor"]](**custom)
        router = cls(**params)
        router._check_params()
        router.tasks_ = list(payload["tasks"])
        router.models_ = list(payload["models"])
        router.X_ = arrays["X"]
        router.Y_ = (
            unpack_bits(arrays["Y_bits"], len(router.models_))
            if "Y_bits" in arrays
            else _compact_labels(arrays["Y"])
        )
        router.task_index_ = arrays["task_index"]
        router.task_accuracy_ = arrays["task_accuracy"]
        router.params_b_ = arrays["params_b"]
        router.cost_ = arrays["cost"]
        router.cost_unit_ = payload.get("cost_unit", "usd_per_mtok")
        pairs = ConfidencePairs(
            arrays["pairs_u"],
            arrays["pairs_p"],
            arrays["pairs_task"],
            arrays["pairs_alpha"],
            arrays["pairs_repeat"],
            arrays["atc_conf"].astype(np.float64),
            arrays["atc_correct"].astype(bool),
        )
        predictor = router._make_predictor()
        if isinstance(predictor, MLPCorrectness):
            state = {k[4:]: v for k, v in arrays.items() if k.startswith("mlp.")}
            predictor = predictor.load_state(state, router.X_.shape[1], len(router.models_))
        else:
            predictor = predictor.fit(router.X_, router.Y_)
        router.predictor_ = predictor
        router._fit_confidence(pairs)
        if payload.get("blend") is not None:
            router.blend_ = BlendChoice(**payload["blend"])
            # routers saved before label rules existed keep the blend's choice whatever the labels say
            router.label_rules_ = {int(k): v for k, v in (payload.get("label_rules") or {}).items()}
        return router

    def _index_card_line(self) -> list[str]:
        index = getattr(self.predictor_, "index_", None)
        if index is None:
            return []
        where = f"index={self.index!r}, index_params={self.index_params}"
        line = f"- neighbour index: {jsonable(index.describe())} ({where})"
        return [line]

    def _blend_card_lines(self) -> list[str]:
        if not hasattr(self, "blend_"):
            return []
        b = self.blend_
        rules = ", ".join(f"{s} labels: {r}" for s, r in sorted(getattr(self, "label_rules_", {}).items()))
        return [
            (
                f"- blend: k={b.k}, lambda={b.lam:g} (leave-one-task-out accuracy {b.inner_accuracy:.4f} vs "
                f"{b.bma_inner_accuracy:.4f} for the best model on average)"
            ),
            f"- label rules (how a few labels may overrule the blend): {rules or 'none saved'}",
        ]

    def model_card(self, extra: dict[str, Any] | None = None) -> str:
        """A Markdown summary of what the router was trained on and how (saved as card.md)."""
        self._check_fitted()
        bma = self.models_[self.best_on_average_]
        lines = [
            "# benchroute router card",
            "",
            f"- benchroute {__version__}, format version {FORMAT_VERSION}",
            f"- embedding model: `{self.embedding_model}` ({self.X_.shape[1]}-d)",
            f"- predictor: `{self.get_params()['predictor']}` (k={self.k}), score {self.score}, t={self.t}",
            *self._index_card_line(),
            (
                f"- confidence: {self.p_estimator} (sigma={self.sigma}, kappa={self.kappa}), "
                f"{len(self.pairs_.u)} (u, p) pairs, u in [{self.pairs_.u.min():.3f}, "
                f"{self.pairs_.u.max():.3f}], "
                f"p in [{self.pairs_.p.min():.3f}, {self.pairs_.p.max():.3f}]"
            ),
            f"- trust rule: eta={self.eta}, {self.draws} Monte Carlo draws, seed {self.seed}",
            *self._blend_card_lines(),
            f"- best model on average: `{bma}` (macro accuracy {self.task_accuracy_.mean(axis=0).max():.4f})",
            f"- {len(self.tasks_)} training tasks, {len(self.X_)} questions, {len(self.models_)} models",
            "",
            "## Tasks",
            "",
            ", ".join(f"`{t}`" for t in self.tasks_),
            "",
            "## Models",
            "",
            ", ".join(f"`{m}`" for m in self.models_),
        ]
        for key, val in (extra or {}).items():
            lines += ["", f"## {key}", "", "```", json.dumps(jsonable(val), indent=1), "```"]
        return "\n".join(lines) + "\n"


_MANIFEST_KEYS: dict[str, Any] = {  # key -> accepted JSON type(s); all required except _OPTIONAL_KEYS
    "format": str,
    "format_version": int,
    "benchroute_version": str,
    "params": dict,
    "tasks": list,
    "models": list,
    "arrays_sha256": str,
    "card_extra": dict,
    "blend": (dict, type(None)),
    "predictor_params": (dict, type(None)),
    "cost_unit": (str, type(None)),
    "label_rules": (dict, type(None)),
}
_OPTIONAL_KEYS = {"cost_unit", "label_rules"}
_POSITIVE_INTS = {"k": 10**6, "kappa": 10**6, "repeats": 10**6, "cap": 10**9, "draws": 10**7}


def _check_manifest(payload: dict[str, Any], manifest: Path) -> None:
    """The manifest's schema: a re-signed router.json with unknown keys or wrong types is refused.

    The checksums only detect accidents; anyone can re-sign an edited manifest, so every field is
    checked here before it reaches a constructor (a router from an untrusted source is data).
    """

    def bad(what: str) -> IntegrityError:
        return IntegrityError(f"{manifest}: {what}", "re-save the router, or get it from its author")

    keys = set(payload)
    unexpected, missing = keys - set(_MANIFEST_KEYS), set(_MANIFEST_KEYS) - _OPTIONAL_KEYS - keys
    if unexpected or missing:
        raise bad(f"unexpected manifest keys {sorted(unexpected)}, missing {sorted(missing)}")
    for key in keys:
        if not isinstance(payload[key], _MANIFEST_KEYS[key]) or isinstance(payload[key], bool):
            raise bad(f"{key} has the wrong type ({type(payload[key]).__name__})")
    for key in ("tasks", "models"):
        names = payload[key]
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise bad(f"{key} must be a non-empty list of distinct strings")
    defaults = {k: p.default for k, p in inspect.signature(Router.__init__).parameters.items() if k != "self"}
    params = payload["params"]
    if set(params) != set(defaults):
        raise bad(f"unexpected router parameters {sorted(set(params) ^ set(defaults))}")
    for key, value in params.items():
        default = defaults[key]
        if key == "index":
            ok = value in BACKENDS
        elif key == "index_params":
            ok = value is None or (
                isinstance(value, dict)
                and all(
                    k in INDEX_PARAMS and k != "backend" and (v is None or isinstance(v, int | float | str))
                    for k, v in value.items()
                )
            )
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = (
                isinstance(value, int)
                and not isinstance(value, bool)
                and (key not in _POSITIVE_INTS or 1 <= value <= _POSITIVE_INTS[key])
            )
        elif isinstance(default, float):
            ok = (
                _finite_number(value)
                and (key != "sigma" or value > 0)
                and (key not in ("t", "eta") or 0 <= value <= 1)
            )
        elif isinstance(default, tuple | list):
            ok = isinstance(value, list) and len(value) > 0 and all(_finite_number(v) for v in value)
        else:  # predictor, score, p_estimator, embedding_model: names
            ok = isinstance(value, str) and value != ""
        if not ok:
            raise bad(f"router parameter {key} = {value!r} is not valid")
    if payload["params"]["embedding_model"] in ("", ".", ".."):
        raise bad("embedding_model is not valid")
    rules = payload.get("label_rules") or {}
    if not all(k.isdigit() and int(k) in LABEL_GRID and v in LABEL_RULES for k, v in rules.items()):
        raise bad(f"label_rules must map sizes {LABEL_GRID} to rules {LABEL_RULES}")


def _finite_number(v: Any) -> bool:
    """A JSON number usable as a float parameter (no bool, no NaN, no 10**400 that overflows a float)."""
    return (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and abs(v) < 1e300
        and bool(np.isfinite(float(v)))
    )


def _check_arrays(arrays: dict[str, np.ndarray], payload: dict[str, Any], file: Path) -> None:
    """Names, shapes and dtypes of the saved arrays agree with each other and with the manifest."""
    m, t = len(payload["models"]), len(payload["tasks"])
    X = arrays.get("X")
    if X is None or X.ndim != 2 or len(X) == 0 or X.dtype != np.float32 or not np.isfinite(X).all():
        raise IntegrityError(f"{file}: X must be a non-empty finite n x d float32 array")
    n = len(X)
    z = len(arrays.get("pairs_u", ()))
    _check_labels(arrays, n, m, payload["format_version"], file)
    shapes = {
        "task_index": (n,),
        "task_accuracy": (t, m),
        "params_b": (m,),
        "cost": (m,),
        "pairs_u": (z,),
        "pairs_p": (z, m),
        "pairs_task": (z,),
        "pairs_alpha": (z,),
        "pairs_repeat": (z,),
    }
    for name, shape in shapes.items():
        if name not in arrays or arrays[name].shape != shape:
            got = arrays[name].shape if name in arrays else "missing"
            raise IntegrityError(f"{file}: array {name} has shape {got}, expected {shape}")
    if (
        "atc_conf" not in arrays
        or "atc_correct" not in arrays
        or arrays["atc_conf"].shape != arrays["atc_correct"].shape
    ):
        raise IntegrityError(f"{file}: atc_conf and atc_correct are missing or differ in shape")
    ti = arrays["task_index"]
    if not np.issubdtype(ti.dtype, np.integer) or (len(ti) and (ti.min() < 0 or ti.max() >= t)):
        raise IntegrityError(f"{file}: task_index must index the {t} tasks")
    unknown = set(arrays) - set(shapes) - {"X", "Y", "Y_bits", "atc_conf", "atc_correct"}
    if any(not k.startswith("mlp.") for k in unknown):
        raise IntegrityError(
            f"{file}: unexpected arrays {sorted(k for k in unknown if not k.startswith('mlp.'))}"
        )


def _check_labels(arrays: dict[str, np.ndarray], n: int, m: int, version: int, file: Path) -> None:
    """Exactly one label array: Y_bits (n x ceil(m/8) uint8, zero padding), or Y (uint8 0/1 in format 1,
    float32 in [0, 1] for fractional labels in format 2)."""
    if ("Y" in arrays) == ("Y_bits" in arrays) or (version == 1 and "Y" not in arrays):
        raise IntegrityError(
            f"{file}: expected exactly one label array ({'Y' if version == 1 else 'Y_bits or Y'})"
        )
    if "Y_bits" in arrays:
        bits = arrays["Y_bits"]
        if bits.dtype != np.uint8 or bits.shape != (n, -(-m // 8)):
            raise IntegrityError(
                f"{file}: array Y_bits has {bits.dtype} shape {bits.shape}, expected uint8 {(n, -(-m // 8))}"
            )
        if m % 8 and (bits[:, -1] & ((1 << (8 - m % 8)) - 1)).any():
            raise IntegrityError(
                f"{file}: Y_bits has bits set past the {m} models (not written by benchroute)"
            )
        return
    Y = arrays["Y"]
    if Y.shape != (n, m):
        raise IntegrityError(f"{file}: array Y has shape {Y.shape}, expected {(n, m)}")
    if Y.dtype == np.uint8 or version == 1:
        if not np.isin(Y, (0, 1)).all():
            raise IntegrityError(f"{file}: Y must hold 0/1 correctness")
    elif Y.dtype != np.float32 or not (np.isfinite(Y).all() and (Y >= 0).all() and (Y <= 1).all()):
        raise IntegrityError(f"{file}: Y must be uint8 0/1 or float32 in [0, 1]")


def _compact_labels(Y: np.ndarray) -> np.ndarray:
    """0/1 labels as uint8 (a quarter of float32; every use gives the same values), others float32."""
    Y = np.asarray(Y)
    return Y.astype(np.uint8) if is_binary(Y) else Y.astype(np.float32)


def _opt(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _column(info: Any, col: str, models: list[str]) -> np.ndarray:
    if info is None or col not in getattr(info, "columns", []):
        return np.full(len(models), np.nan)
    return np.array(
        [float(info.loc[m, col]) if m in info.index else np.nan for m in models], dtype=np.float64
    )


def _predictor_name(est: Any) -> str:
    for name, cls in (("knn", KNNCorrectness), ("mlp", MLPCorrectness)):
        if type(est) is cls:
            return name
    raise ConfigError(
        f"cannot save a router with a custom predictor {type(est).__name__}",
        "use predictor='knn', 'mlp' or 'logreg' to save it",
    )


__all__ = ["ModelScore", "Recommendation", "RouteDecision", "Router", "n_moved"]
