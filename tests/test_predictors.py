"""Predictors and neighbour search: a scikit-learn style conformance suite for every predictor class,
and kNN checked against scikit-learn's NearestNeighbors and against a manual neighbour average."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.neighbors import NearestNeighbors

from benchroute.errors import ConfigError, NotFittedError
from benchroute.method.neighbors import NeighborIndex, cross_task_neighbors, exact_search, normalize
from benchroute.method.predictors import (
    ClassifierCorrectness,
    KNNCorrectness,
    KNNScoreRegressor,
    MLPCorrectness,
    MLPScoreRegressor,
    make_predictor,
)

PREDICTOR_CLASSES = [
    KNNCorrectness,
    KNNScoreRegressor,
    ClassifierCorrectness,
    MLPCorrectness,
    MLPScoreRegressor,
]
REGRESSORS = (KNNScoreRegressor, MLPScoreRegressor)


def _output(est, X: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """predict for the regression variants, predict_proba for the correctness predictors."""
    return est.predict(X) if isinstance(est, REGRESSORS) else est.predict_proba(X)


def _training_data(cls: type, n: int = 60, dim: int = 8, n_models: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Random embeddings; 0/1 correctness, or a continuous metric in [0, 1] for the regressors."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    if cls in REGRESSORS:
        return X, rng.uniform(size=(n, n_models)).astype(np.float32)
    return X, (rng.random((n, n_models)) < 0.5).astype(np.float32)


# ------------------------------------------------------------------------------------ conformance


@pytest.fixture(params=PREDICTOR_CLASSES, ids=lambda c: c.__name__)
def cls(request: pytest.FixtureRequest) -> type:
    return request.param


def test_constructor_stores_parameters_only(cls: type) -> None:
    params = cls._test_params()
    est = cls(**params)
    got = est.get_params(deep=False)
    for name, value in params.items():
        assert got[name] is value or got[name] == value
    # every constructor argument is an attribute of the same name, and nothing else is set
    assert set(vars(est)) == set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert not [a for a in vars(est) if a.endswith("_")]


def test_fit_returns_self_and_outputs_probabilities(cls: type) -> None:
    X, Y = _training_data(cls)
    est = cls(**cls._test_params())
    assert est.fit(X, Y) is est
    out = _output(est, X[:7])
    assert out.shape == (7, Y.shape[1])
    assert np.isfinite(out).all()
    assert (out >= 0).all() and (out <= 1).all()
    assert est.n_outputs_ == Y.shape[1]


def test_unfitted_use_raises_clear_error(cls: type) -> None:
    est = cls(**cls._test_params())
    X, _ = _training_data(cls)
    with pytest.raises(NotFittedError, match="not fitted") as info:
        _output(est, X)
    # the bases of scikit-learn's NotFittedError, which sklearn tooling catches
    assert isinstance(info.value, ValueError) and isinstance(info.value, AttributeError)
    assert "fit" in str(info.value)


def test_clone_is_unfitted_copy(cls: type) -> None:
    X, Y = _training_data(cls)
    est = cls(**cls._test_params()).fit(X, Y)
    twin = clone(est)
    assert type(twin) is cls
    assert twin is not est
    assert repr(twin) == repr(est)
    assert not [a for a in vars(twin) if a.endswith("_")]
    with pytest.raises(NotFittedError):
        _output(twin, X)
    # and the clone fits to the same predictions
    np.testing.assert_array_equal(_output(twin.fit(X, Y), X), _output(est, X))


def test_repr_shows_parameters(cls: type) -> None:
    params = cls._test_params()
    text = repr(cls(**params))
    assert text.startswith(cls.__name__ + "(")
    for name in params:
        assert f"{name}=" in text


def test_deterministic(cls: type) -> None:
    X, Y = _training_data(cls)
    a = _output(cls(**cls._test_params()).fit(X, Y), X)
    b = _output(cls(**cls._test_params()).fit(X, Y), X)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("X", "Y"),
    [
        (np.zeros((5, 3)), np.zeros((4, 2))),  # n mismatch
        (np.zeros((0, 3)), np.zeros((0, 2))),  # empty
        (np.zeros((4, 3)), np.array([[0.0], [np.nan], [1.0], [0.0]])),  # NaN label
    ],
    ids=["n-mismatch", "empty", "nan"],
)
def test_bad_training_data_is_config_error(cls: type, X: np.ndarray, Y: np.ndarray) -> None:
    with pytest.raises(ConfigError):
        cls(**cls._test_params()).fit(X, Y)


def test_classifier_constant_model_gets_constant_probability() -> None:
    X, Y = _training_data(ClassifierCorrectness)
    Y = Y.copy()
    Y[:, 0] = 1.0  # always right
    Y[:, 1] = 0.0  # always wrong
    out = ClassifierCorrectness().fit(X, Y).predict_proba(X)
    assert (out[:, 0] == 1.0).all() and (out[:, 1] == 0.0).all()
    assert 0 < out[:, 2].mean() < 1


def test_make_predictor() -> None:
    assert isinstance(make_predictor("knn", k=7), KNNCorrectness)
    assert make_predictor("knn", k=7).k == 7
    with pytest.raises(ConfigError, match="unknown predictor"):
        make_predictor("forest")


def test_knn_rejects_bad_params() -> None:
    X, Y = _training_data(KNNCorrectness)
    with pytest.raises(ConfigError, match="k must be"):
        KNNCorrectness(k=0).fit(X, Y)
    with pytest.raises(ConfigError, match="weights"):
        KNNCorrectness(weights="gaussian").fit(X, Y)


# -------------------------------------------------------------------------- kNN against sklearn


def test_neighbours_identical_to_sklearn_cosine() -> None:
    rng = np.random.default_rng(0)
    store = rng.normal(size=(300, 24)).astype(np.float32)
    queries = rng.normal(size=(40, 24)).astype(np.float32)
    k = 7
    sims, idx = KNNCorrectness(k=k).fit(store, np.zeros((300, 1))).kneighbors(queries)
    ref = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(store)
    ref_dist, ref_idx = ref.kneighbors(queries)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(1.0 - sims, ref_dist, atol=1e-5)


def test_knn_predict_proba_is_mean_over_neighbours() -> None:
    rng = np.random.default_rng(1)
    store = rng.normal(size=(200, 10)).astype(np.float32)
    Y = (rng.random((200, 4)) < 0.5).astype(np.float32)
    queries = rng.normal(size=(25, 10)).astype(np.float32)
    _, ref_idx = (
        NearestNeighbors(n_neighbors=5, metric="cosine", algorithm="brute").fit(store).kneighbors(queries)
    )
    expected = np.stack([Y[row].mean(axis=0) for row in ref_idx])
    got = KNNCorrectness(k=5).fit(store, Y).predict_proba(queries)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_knn_distance_weights_hand_example() -> None:
    # query [1, 0]: neighbours at cosine similarity 1 (label 1) and 0.6 (label 0)
    store = np.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]], dtype=np.float32)
    Y = np.array([[1.0], [0.0], [1.0]], dtype=np.float32)
    got = KNNCorrectness(k=2, weights="distance").fit(store, Y).predict_proba(np.array([[1.0, 0.0]]))
    np.testing.assert_allclose(got, [[1.0 / 1.6]], rtol=1e-6)
    assert KNNCorrectness(k=2).fit(store, Y).predict_proba(np.array([[1.0, 0.0]]))[0, 0] == 0.5


def test_knn_add_and_drop_output(synthetic) -> None:  # type: ignore[no-untyped-def]
    data = synthetic
    knn = KNNCorrectness().fit(data.X, data.Y)
    before = knn.predict_proba(data.X[:10])
    knn.add_output(data.Y[:, 1])
    after = knn.predict_proba(data.X[:10])
    np.testing.assert_array_equal(after[:, :3], before)
    np.testing.assert_array_equal(after[:, 3], before[:, 1])
    knn.drop_output(3)
    np.testing.assert_array_equal(knn.predict_proba(data.X[:10]), before)
    with pytest.raises(ConfigError, match="one label per stored input"):
        knn.add_output(np.ones(3))


def test_exact_search_exclude_mask_and_ties() -> None:
    store = normalize(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    q = normalize(np.array([[1.0, 0.0]]))
    s, i = exact_search(q, store, 3)
    assert i.tolist() == [[0, 1, 3]]  # equal similarities: lower index first
    s, i = exact_search(q, store, 2, exclude=np.array([True, False, False, False]))
    assert i.tolist() == [[1, 3]]
    np.testing.assert_allclose(s, [[1.0, np.sqrt(0.5)]], rtol=1e-6)


def test_cross_task_neighbors_skip_own_task(make_synthetic) -> None:  # type: ignore[no-untyped-def]
    data = make_synthetic(n_tasks=3, per_task=10, seed=4)
    s, i = cross_task_neighbors(data.X, data.task_index, depth=15)
    assert (data.task_index[i] != data.task_index[:, None]).all()
    X = normalize(data.X)
    for row in (0, 13, 29):
        other = np.flatnonzero(data.task_index != data.task_index[row])
        ref = other[np.argsort(-(X[other] @ X[row]), kind="stable")[:15]]
        assert i[row].tolist() == ref.tolist()
        np.testing.assert_allclose(s[row], X[ref] @ X[row], rtol=1e-5)


# ------------------------------------------------------------------------------------ FAISS


def test_faiss_flat_matches_numpy() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    store = rng.normal(size=(1000, 32)).astype(np.float32)
    queries = rng.normal(size=(50, 32)).astype(np.float32)
    s_np, i_np = NeighborIndex("numpy").fit(store).search(queries, 10)
    flat = NeighborIndex("faiss-flat").fit(store)
    assert flat.backend_ == "faiss-flat"
    s_f, i_f = flat.search(queries, 10)
    np.testing.assert_array_equal(i_f, i_np)
    np.testing.assert_allclose(s_f, s_np, atol=1e-5)


def test_faiss_hnsw_recall() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(6)
    store = rng.normal(size=(2000, 32)).astype(np.float32)
    queries = rng.normal(size=(200, 32)).astype(np.float32)
    _, exact = NeighborIndex("numpy").fit(store).search(queries, 5)
    _, approx = NeighborIndex("faiss-hnsw").fit(store).search(queries, 5)
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.9


def test_auto_backend_is_numpy_for_small_stores() -> None:
    index = NeighborIndex().fit(np.eye(4))
    assert index.backend_ == "numpy" and len(index) == 4
