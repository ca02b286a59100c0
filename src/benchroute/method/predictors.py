"""Correctness predictors g_m(x) ~ P(y(x, m) = 1), for all M models at once.

A predictor maps embeddings X (n x d) to an n x M matrix of probabilities that each candidate LLM
answers each input correctly. One object serves every model because one neighbour search (kNN) or
one network (MLP) can: that is what makes leave-one-task-out over dozens of models affordable.

All classes follow the scikit-learn estimator contract: the constructor stores parameters only,
``fit(X, Y)`` learns state in attributes ending in ``_`` and returns ``self``, ``predict_proba(X)``
returns P(correct) (n x M). Regression variants (``predict``) serve continuous metrics such as a
judge's win probability, for per-instance routing on raw scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone

from benchroute.errors import ConfigError, NotFittedError
from benchroute.method.labels import LabelMatrix
from benchroute.method.neighbors import INDEX_PARAMS, NeighborIndex, normalize


def check_is_fitted(est: Any, attr: str) -> None:
    """One helper for every estimator: a clear error instead of an AttributeError."""
    if not hasattr(est, attr):
        raise NotFittedError(f"this {type(est).__name__} is not fitted yet", "call fit(X, Y) before using it")


def _check_xy(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    Y = np.asarray(Y, dtype=np.float32)
    if Y.ndim == 1:
        Y = Y[:, None]
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ConfigError(f"X must be n x d and Y n x M with the same n; got {X.shape} and {Y.shape}")
    if X.shape[0] == 0:
        raise ConfigError("cannot fit on zero training inputs")
    if not np.isfinite(Y).all():
        raise ConfigError("Y contains NaN or inf")
    return X, Y


class _KNNBase(BaseEstimator):
    """Mean of the neighbours' labels: k nearest training inputs by cosine similarity.

    The training inputs live in a :class:`~benchroute.method.neighbors.NeighborIndex` (``backend`` and
    ``index_params`` choose and tune it; a memory-mapped X stays mapped), the labels in a
    :class:`~benchroute.method.labels.LabelMatrix` (``labels``: 0/1 labels bit-packed under "auto").
    """

    def __init__(
        self,
        k: int = 5,
        weights: str = "uniform",
        backend: str = "auto",
        index_params: dict[str, Any] | None = None,
        labels: str = "auto",
    ) -> None:
        self.k = k
        self.weights = weights
        self.backend = backend
        self.index_params = index_params
        self.labels = labels

    def fit(self, X: np.ndarray, Y: np.ndarray) -> _KNNBase:
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.weights not in ("uniform", "distance"):
            raise ConfigError(f"weights must be 'uniform' or 'distance', got {self.weights!r}")
        if not isinstance(X, np.memmap):  # a mapped store is read block by block by the index
            X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y)
        Y = Y[:, None] if Y.ndim == 1 else Y
        if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
            raise ConfigError(f"X must be n x d and Y n x M with the same n; got {X.shape} and {Y.shape}")
        if Y.dtype.kind == "f" and not np.isfinite(Y).all():
            raise ConfigError("Y contains NaN or inf")
        self.index_ = make_index(self.backend, self.index_params).fit(X)
        self.labels_ = LabelMatrix(Y, self.labels)  # type: ignore[arg-type]
        self.n_outputs_ = Y.shape[1]
        return self

    def kneighbors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, indices) of the k nearest training inputs, most similar first."""
        check_is_fitted(self, "index_")
        return self.index_.search(X, self.k)

    def _neighbor_mean(self, X: np.ndarray) -> np.ndarray:
        sims, idx = self.kneighbors(X)
        return neighbor_mean(self.labels_, sims, idx, self.weights)

    def add_output(self, y: np.ndarray) -> None:
        """Append one output column (a new LLM's labels on the stored inputs) without refitting."""
        check_is_fitted(self, "index_")
        self.labels_ = self.labels_.with_column(np.asarray(y, dtype=np.float32))
        self.n_outputs_ += 1

    def drop_output(self, j: int) -> None:
        check_is_fitted(self, "index_")
        self.labels_ = self.labels_.without_column(j)
        self.n_outputs_ -= 1

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"k": 3}


def make_index(backend: str = "auto", index_params: dict[str, Any] | None = None) -> NeighborIndex:
    """A NeighborIndex from a backend name plus optional parameters (names checked, one clear error)."""
    params = dict(index_params or {})
    unknown = set(params) - set(INDEX_PARAMS) | ({"backend"} & set(params))
    if unknown:
        raise ConfigError(
            f"unknown neighbour index parameters {sorted(unknown)}",
            f"use {', '.join(p for p in INDEX_PARAMS if p != 'backend')} (and backend on its own)",
        )
    return NeighborIndex(backend=backend, **params)  # type: ignore[arg-type]


def neighbor_mean(
    Y: np.ndarray | LabelMatrix, sims: np.ndarray, idx: np.ndarray, weights: str = "uniform"
) -> np.ndarray:
    """Average of Y over each row's neighbours (n x k indices) -> n x M, float32.

    ``Y`` is a dense matrix or a compact :class:`LabelMatrix`: both give the same float32 values.
    "distance" weights each neighbour by its similarity (clipped at a small positive floor), so a
    near-duplicate training question counts more than a loosely related one.
    """
    gathered = (
        Y.take(idx) if isinstance(Y, LabelMatrix) else np.asarray(Y[idx], dtype=np.float32)
    )  # n x k x M
    if weights == "uniform":
        return gathered.mean(axis=1)
    w = np.maximum(sims, 1e-6)[:, :, None]
    return (gathered * w).sum(axis=1) / w.sum(axis=1)


class KNNCorrectness(_KNNBase):
    """kNN correctness predictor [k = 5]: fraction of the k nearest training inputs m got right.

    Parameters
    ----------
    k : number of neighbours.
    weights : "uniform" (the paper) or "distance" (similarity-weighted).
    backend : neighbour search backend, see :class:`benchroute.method.neighbors.NeighborIndex`.
    index_params : further NeighborIndex parameters (thresholds, nlist, nprobe, ...) as a dict.
    labels : label storage, see :class:`benchroute.method.labels.LabelMatrix` ["auto": 0/1 bit-packed].

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    >>> Y = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    >>> KNNCorrectness(k=2).fit(X, Y).predict_proba(np.array([[1.0, 0.05]])).tolist()
    [[1.0, 0.0]]
    """

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._neighbor_mean(X)


class KNNScoreRegressor(_KNNBase):
    """kNN regression of a continuous metric (e.g. win probability) for per-instance routing."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._neighbor_mean(X)


class ClassifierCorrectness(BaseEstimator):
    """Any scikit-learn classifier with ``predict_proba``, cloned and fitted once per model.

    A model that was always (or never) correct in training gets a constant probability, since a
    classifier cannot be fitted on one class.
    """

    def __init__(self, estimator: Any = None) -> None:
        self.estimator = estimator

    def fit(self, X: np.ndarray, Y: np.ndarray) -> ClassifierCorrectness:
        X, Y = _check_xy(X, Y)
        from sklearn.linear_model import LogisticRegression  # scipy.optimize: loaded only when used

        base = self.estimator if self.estimator is not None else LogisticRegression(max_iter=1000)
        if not hasattr(base, "predict_proba"):
            raise ConfigError(f"{type(base).__name__} has no predict_proba; use a probabilistic classifier")
        self.estimators_: list[Any] = []
        for j in range(Y.shape[1]):
            y = Y[:, j] > 0.5
            if y.all() or not y.any():
                self.estimators_.append(float(y[0]))
            else:
                self.estimators_.append(clone(base).fit(X, y))
        self.n_outputs_ = Y.shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "estimators_")
        X = np.asarray(X, dtype=np.float32)
        cols = []
        for est in self.estimators_:
            if isinstance(est, float):
                cols.append(np.full(len(X), est, dtype=np.float32))
            else:
                proba = est.predict_proba(X)
                pos = list(est.classes_).index(True)
                cols.append(proba[:, pos].astype(np.float32))
        return np.stack(cols, axis=1)

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        from sklearn.linear_model import LogisticRegression

        return {"estimator": LogisticRegression(max_iter=200)}


class _MLPBase(BaseEstimator):
    """One PyTorch network with M outputs: 2 x 1500 ReLU, sigmoid, Adam [lr 0.01], early stopping.

    Early stopping watches a seeded validation split (``val_fraction`` of the training inputs) and
    keeps the weights of the best epoch; it stops after ``patience`` epochs without a gain.
    """

    _loss = "bce"

    def __init__(
        self,
        hidden: tuple[int, ...] = (1500, 1500),
        lr: float = 0.01,
        epochs: int = 100,
        patience: int = 10,
        batch_size: int = 256,
        val_fraction: float = 0.1,
        random_state: int = 0,
    ) -> None:
        self.hidden = hidden
        self.lr = lr
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.random_state = random_state

    def fit(self, X: np.ndarray, Y: np.ndarray) -> _MLPBase:
        import torch

        X, Y = _check_xy(X, Y)
        torch.manual_seed(self.random_state)
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(len(X))
        n_val = round(self.val_fraction * len(X)) if len(X) >= 10 else 0
        val, train = order[:n_val], order[n_val:]
        net = self._build_net(X.shape[1], Y.shape[1])
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        loss_fn = torch.nn.BCEWithLogitsLoss() if self._loss == "bce" else torch.nn.MSELoss()
        Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
        best_metric, best_state, stale = -np.inf, None, 0
        gen = torch.Generator().manual_seed(self.random_state)
        self.n_epochs_ = 0
        for _ in range(self.epochs):
            net.train()
            perm = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
            for start in range(0, len(perm), self.batch_size):
                b = perm[start : start + self.batch_size]
                opt.zero_grad()
                out = net(Xt[b])
                loss = loss_fn(out, Yt[b]) if self._loss == "bce" else loss_fn(torch.sigmoid(out), Yt[b])
                loss.backward()
                opt.step()
            self.n_epochs_ += 1
            if n_val == 0:
                continue
            net.eval()
            with torch.no_grad():
                pv = torch.sigmoid(net(Xt[val])).numpy()
            metric = self._val_metric(pv, Y[val])
            if metric > best_metric:
                best_metric, stale = metric, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        self.net_ = net
        self.n_outputs_ = Y.shape[1]
        return self

    def _build_net(self, dim: int, n_out: int):
        import torch

        layers: list[torch.nn.Module] = []
        width = dim
        for h in self.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        layers.append(torch.nn.Linear(width, n_out))
        return torch.nn.Sequential(*layers)

    def load_state(self, state: dict[str, np.ndarray], dim: int, n_out: int) -> _MLPBase:
        """Restore weights saved from ``net_.state_dict()`` (no pickle: plain arrays)."""
        import torch

        net = self._build_net(dim, n_out)
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        net.eval()
        self.net_ = net
        self.n_outputs_ = n_out
        return self

    def _val_metric(self, pred: np.ndarray, y: np.ndarray) -> float:
        if self._loss == "bce":
            return float(((pred > 0.5) == (y > 0.5)).mean())
        return -float(((pred - y) ** 2).mean())

    def _forward(self, X: np.ndarray) -> np.ndarray:
        import torch

        check_is_fitted(self, "net_")
        with torch.no_grad():
            out = torch.sigmoid(self.net_(torch.from_numpy(np.asarray(X, dtype=np.float32))))
        return out.numpy().astype(np.float32)

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"hidden": (16,), "epochs": 5, "patience": 2}


class MLPCorrectness(_MLPBase):
    """MLP correctness predictor (the paper's alternative to kNN), BCE loss, validation accuracy."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._forward(X)


class MLPScoreRegressor(_MLPBase):
    """MLP regression of a metric in [0, 1] (sigmoid output, squared error)."""

    _loss = "mse"

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._forward(X)


PREDICTORS: dict[str, type[BaseEstimator]] = {
    "knn": KNNCorrectness,
    "mlp": MLPCorrectness,
    "logreg": ClassifierCorrectness,
}


def make_predictor(name: str, **params: Any) -> BaseEstimator:
    """Build a predictor by its short name (used by the CLI and saved routers)."""
    try:
        cls = PREDICTORS[name]
    except KeyError as exc:
        raise ConfigError(f"unknown predictor {name!r}", f"use one of {sorted(PREDICTORS)}") from exc
    return cls(**params)


__all__ = [
    "ClassifierCorrectness",
    "KNNCorrectness",
    "KNNScoreRegressor",
    "MLPCorrectness",
    "MLPScoreRegressor",
    "make_index",
    "make_predictor",
    "neighbor_mean",
    "normalize",
]
