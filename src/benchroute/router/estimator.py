"""The Router: learn from benchmark results, then recommend a model for a task or route queries.

``Router.fit(benchmark)`` learns the correctness predictors g_m on every benchmark question and the
confidence model p(u) from held-out benchmark tasks. ``recommend(inputs)`` scores a new task from a
handful of its unlabeled inputs (S1, S2, S3), applies the trust rule and explains the decision;
``route(queries)`` picks a model per query. ``save``/``load`` use JSON + safetensors with checksums:
a router from an untrusted source is data, never code.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchroute.errors import ConfigError, NotFittedError
from benchroute.method import perquery
from benchroute.method.confidence import ATCEstimator, KernelSmoother, dataset_distance
from benchroute.method.cost import cheapest_within_trusted, choose, info_column, model_costs
from benchroute.method.decision import decide, explain
from benchroute.method.folds import DEFAULT_ALPHAS, ConfidencePairs, FoldEngine, task_key
from benchroute.method.labels import compact_labels
from benchroute.method.neighbors import exact_search, normalize
from benchroute.method.perquery import SessionState
from benchroute.method.predictors import KNNCorrectness, make_predictor
from benchroute.method.scores import (
    BLEND_KS,
    BLEND_LAMBDAS,
    LABEL_GRID,
    blend,
    label_grid_size,
    label_rules_for,
    s1,
    s2,
    s3,
    select_blend,
)
from benchroute.router.results import ModelScore, Recommendation, RouteDecision, closeness

SCORES = ("S1", "S2", "S3", "blend")
P_ESTIMATORS = ("kernel", "atc")


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
        self.alphas = alphas
        self.repeats = repeats
        self.cap = cap
        self.draws = draws
        self.embedding_model = embedding_model
        self.seed = seed
        self.blend_ks = blend_ks
        self.blend_lambdas = blend_lambdas
        self.blend_min_z = blend_min_z
        self.index = index
        self.index_params = index_params

    # ------------------------------------------------------------------ scikit-learn's contract
    @classmethod
    def _param_names(cls) -> list[str]:
        return [k for k in inspect.signature(cls.__init__).parameters if k != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters (with ``deep``, also ``predictor__<name>`` of a predictor instance).

        >>> Router(k=7).get_params()["k"]
        7
        >>> Router(k=7, eta=0.7)
        Router(k=7, eta=0.7)
        """
        out = {name: getattr(self, name) for name in self._param_names()}
        if deep and hasattr(self.predictor, "get_params"):
            out.update({f"predictor__{k}": v for k, v in self.predictor.get_params(deep=True).items()})
        return out

    def set_params(self, **params: Any) -> Router:
        """Set constructor parameters (``predictor__<name>`` reaches a predictor instance); returns self."""
        names = self._param_names()
        nested: dict[str, Any] = {}
        for key, value in params.items():
            if key.startswith("predictor__") and hasattr(self.predictor, "set_params"):
                nested[key.removeprefix("predictor__")] = value
            elif key in names:
                setattr(self, key, value)
            else:
                raise ConfigError(
                    f"invalid parameter {key!r} for Router", f"valid parameters: {', '.join(names)}"
                )
        if nested:
            self.predictor.set_params(**nested)
        return self

    def __repr__(self) -> str:
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
        changed = [f"{k}={v!r}" for k, v in self.get_params(deep=False).items() if not _same(v, defaults[k])]
        return f"Router({', '.join(changed)})"

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
        """Validation happens here, at fit (and load), never in ``__init__`` (scikit-learn's contract)."""
        if self.score not in SCORES:
            raise ConfigError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.p_estimator not in P_ESTIMATORS:
            raise ConfigError(f"p_estimator must be one of {P_ESTIMATORS}, got {self.p_estimator!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta must be in [0, 1], got {self.eta}")
        for name in ("alphas", "blend_ks", "blend_lambdas"):
            if len(getattr(self, name)) == 0:
                raise ConfigError(f"{name} must not be empty")

    def fit(self, benchmark: Any, embeddings: np.ndarray | None = None) -> Router:
        """Learn predictors and the confidence model from every task of ``benchmark``; returns self.

        ``embeddings`` (n_items x d) defaults to ``benchmark.embeddings``, else the inputs are embedded
        (cached) with ``embedding_model``. A refit replaces all learned state.
        """
        self._check_params()
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, name)  # a refit with another score must not keep the old blend_ / label_rules_
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
        Y = compact_labels(benchmark.correct)
        self.tasks_ = list(benchmark.tasks)
        self.models_ = list(benchmark.models)
        self.X_ = emb
        self.Y_ = Y
        self.task_index_ = np.asarray(benchmark.task_index, dtype=np.int32)
        self.task_accuracy_ = np.stack(
            [Y[self.task_index_ == d].mean(axis=0, dtype=np.float64) for d in range(len(self.tasks_))]
        )
        info = benchmark.model_info
        self.params_b_ = info_column(info, "params_b", self.models_)
        self.cost_, self.cost_unit_ = model_costs(info, self.models_)
        self.predictor_ = self._make_predictor().fit(emb, Y)
        pairs = self._confidence_pairs(excluded=())
        self._fit_confidence(pairs)
        if self.score == "blend":
            self._fit_blend()
        self._fit_perquery()
        return self

    def _fit_perquery(self) -> None:
        """The per-query score's statistics and knobs, chosen by nested protocols on the stored tasks."""
        self.perquery_ = perquery.fit(self.X_, self.Y_, self.task_index_, len(self.tasks_), seed=self.seed)

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
            task_keys=[task_key(name) for name in self.tasks_],
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
        ``{"input": str, "correct": {model: 0/1}}``; they join the training data (docs/method.md, section 6).
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
        """Scores, then the one decision chain (:func:`benchroute.method.decision.decide`), then the
        explanation."""
        v1, v2 = s1(g), s2(g, self.t)
        v3 = s3(v2, p)
        prior = self.task_accuracy_.mean(axis=0)
        scores = {"S1": v1, "S2": v2, "S3": v3}
        extra: dict[str, Any] = {}
        bma = int(np.argmax(np.where(mask, prior, -np.inf)))
        rule, size, favourite = "none", 0, None
        if s1k is not None:
            scores["blend"] = blend(s1k, prior, self.blend_.lam)
            favourite = int(np.argmax(np.where(mask, s1k, -np.inf)))
            b = self.blend_
            extra["blend"] = {
                "k": b.k,
                "lambda": b.lam,
                "inner_accuracy": b.inner_accuracy,
                "bma_inner_accuracy": b.bma_inner_accuracy,
                "gain_se": b.gain_se,
                "gated": b.gated,
                "knn_favourite": self.models_[favourite],
            }
            size = label_grid_size(n_labeled)
            rule = self.label_rules_.get(size, "none") if labeled_Y is not None else "none"
        score = scores[self.score]
        decision = decide(
            score,
            v2,
            p,
            n,
            bma,
            mask=mask,
            trust=self.trust,
            eta=self.eta,
            draws=self.draws,
            seed=self.seed,
            label_rule=rule,
            labeled=labeled_Y,
        )
        if decision.label_rule != "none":
            extra["labels"] = {"rule": rule, "n_labeled": n_labeled, "rule_for": size}
        masked = np.where(mask, score, -np.inf)
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
        reason = explain(
            decision,
            self.models_,
            self.score,
            blend=getattr(self, "blend_", None),
            knn_favourite=favourite,
            n_labeled=n_labeled,
            rule_for=size,
        )
        return Recommendation(
            chosen=self.models_[decision.chosen],
            candidate=self.models_[decision.candidate],
            best_on_average=self.models_[bma],
            fell_back=decision.fell_back,
            probability=decision.probability,
            eta=self.eta,
            reason=reason,
            score=self.score,
            n_inputs=n,
            n_labeled=n_labeled,
            distance=float(u),
            distance_percentile=min(pct, 100.0),
            closeness=closeness(pct),
            nearest_tasks=self.nearest_tasks(X),
            ranking=ranking,
            few_shot=few_shot,
            extra=extra,
        )

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

    def labeled_matrix(self, correct: Sequence[Any]) -> np.ndarray:
        """The n x M 0/1 matrix of labeled samples given as ``{model: 0/1}`` per sample, in the router's
        model order; every model must be given, each value 0 or 1 (a ConfigError names the sample and
        the model). The one validation of labeled samples (the CLI and the server call it too)."""
        Y = np.zeros((len(correct), len(self.models_)), dtype=np.float32)
        for i, row in enumerate(correct):
            if not isinstance(row, dict):
                raise ConfigError(f"labeled sample {i}: correct must map every model to 0 or 1")
            unknown = [m for m in row if m not in self.models_]
            if unknown:
                raise ConfigError(
                    f"labeled sample {i}: unknown model(s) {unknown}",
                    f"known models: {', '.join(self.models_)}",
                )
            missing = [m for m in self.models_ if m not in row]
            if missing:
                raise ConfigError(
                    f"labeled sample {i} lacks results for {missing[:3]}{'...' if len(missing) > 3 else ''}",
                    "give every model's 0/1 correctness on each labeled input",
                )
            for m, v in row.items():
                if isinstance(v, bool) or v not in (0, 1):
                    raise ConfigError(f"labeled sample {i}: correctness of {m} must be 0 or 1, got {v!r}")
                Y[i, self.models_.index(m)] = v
        return Y

    def _labeled(self, labeled: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(labeled, tuple) and len(labeled) == 2:
            inputs, Y = labeled
            Y = np.asarray(Y, dtype=np.float32)
        else:
            for i, rec in enumerate(labeled):
                if not isinstance(rec, dict) or "input" not in rec or "correct" not in rec:
                    raise ConfigError(
                        f"labeled sample {i} must be {{'input': str, 'correct': {{model: 0/1}}}}"
                    )
            inputs = [rec["input"] for rec in labeled]
            Y = self.labeled_matrix([rec["correct"] for rec in labeled])
        if Y.ndim != 2 or Y.shape[1] != len(self.models_) or len(Y) != len(inputs):
            raise ConfigError(f"labeled Y must be n x {len(self.models_)} (one column per model)")
        if not np.isin(Y, (0.0, 1.0)).all():
            raise ConfigError("labeled correctness must be 0 or 1")
        return self.embed(inputs), Y

    def predict_proba(self, queries: Sequence[str] | np.ndarray) -> np.ndarray:
        """g_m(x) for each query and model (n x M)."""
        self._check_fitted()
        return self.predictor_.predict_proba(self.embed(queries))

    def new_session(self) -> SessionState:
        """A routing session: the evidence of one application's or user's stream of queries.

        Pass it to :meth:`route` with each batch of that stream; it holds a count and one float per
        model (``to_dict`` / ``SessionState.from_dict`` for storage), so a server can keep many.
        """
        self._check_fitted()
        return SessionState()

    def route(
        self,
        queries: Sequence[str] | np.ndarray,
        candidates: Sequence[str] | None = None,
        *,
        rule: str = "hks",
        cost_weight: float = 0.0,
        max_cost: float | None = None,
        session: SessionState | None = None,
    ) -> list[RouteDecision]:
        """Route each query to a model (:func:`benchroute.method.perquery.decide_queries`).

        ``rule``: "hks" (default: the query's nearest stored questions shrunk toward the accuracy of the
        benchmark tasks they resemble, then toward the best-on-average model; knobs chosen at fit by
        nested protocols), or by name "knn" (the former rule: argmax of a k=5 kNN), "knn_shrunk",
        "task_vote". Ties go to the best-on-average model's side. ``cost_weight`` / ``max_cost`` as in
        :meth:`recommend` (models of unknown cost are then excluded). ``session`` (from
        :meth:`new_session`): the queries continue that session's stream, in order; each is routed
        with the evidence of the session's earlier queries, and the session is updated.
        """
        self._check_fitted()
        X = self.embed(queries)
        mask = self._candidate_mask(candidates)
        stats = self.perquery_
        width = min(perquery.needed_neighbors(stats, rule, session=session is not None), len(self.X_))
        sims, idx = self._store_search(X, width)
        with_cost = bool(cost_weight) or max_cost is not None
        before = 0 if session is None else round(session.n)
        decision = perquery.decide_queries(
            sims,
            idx,
            stats,
            rule=rule,
            mask=mask,
            cost=self.cost_ if with_cost else None,
            cost_weight=cost_weight,
            max_cost=max_cost,
            session=session,
        )
        out = []
        for i, j in enumerate(decision.chosen):
            row = decision.scores[i]
            tied = int((row >= row[j] - 1e-9).sum())
            why = f"{rule}: highest predicted accuracy {row[j]:.3f}"
            if with_cost:
                why = f"{rule}: best predicted accuracy minus cost ({cost_weight=:g}, {max_cost=})"
            if tied > 1:
                why += f"; {tied} models tie, the best-on-average ranking breaks it"
            if session is not None:
                why += f"; with the evidence of {before + i} earlier queries of the session"
            per = {self.models_[m]: float(row[m]) for m in np.flatnonzero(mask) if np.isfinite(row[m])}
            out.append(RouteDecision(i, self.models_[int(j)], float(row[j]), why, per))
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
        """After the model set changed: the confidence pairs, the blend's (k, lambda) and label rules, and
        the per-query knobs (all pick among the models, so a choice made for the old set would be stale)."""
        self._fit_confidence(self._confidence_pairs(excluded=()))
        if self.score == "blend":
            self._fit_blend()
        self._fit_perquery()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], card_extra: dict[str, Any] | None = None) -> Path:
        """Write router.json + arrays.safetensors + card.md into ``path`` (atomically, no pickle)."""
        from benchroute.router.persistence import save_router

        return save_router(self, path, card_extra)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Router:
        """Load a saved router, verifying format version, schema and checksums (never executes code)."""
        from benchroute.router.persistence import load_router

        return load_router(path, cls)

    def model_card(self, extra: dict[str, Any] | None = None) -> str:
        """A Markdown summary of what the router was trained on and how (saved as card.md)."""
        from benchroute.router.persistence import model_card

        return model_card(self, extra)


def _same(a: Any, b: Any) -> bool:
    """Parameter equality for the repr (sequences compare by value, whatever their type)."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return a is b or (type(a) is type(b) and a == b)


def _opt(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


__all__ = ["ModelScore", "Recommendation", "RouteDecision", "Router", "SessionState"]
