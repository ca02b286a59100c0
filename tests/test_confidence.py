"""Out-of-distribution confidence: dataset distance, the fold engine (checked against brute-force
refits), the kernel smoother and ATC on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchroute.errors import ConfigError, NotFittedError
from benchroute.method.confidence import (
    AccuracyEstimator,
    ATCEstimator,
    ConfidenceCalibrator,
    KernelSmoother,
    dataset_distance,
    p_from_accuracy,
)
from benchroute.method.folds import DEFAULT_ALPHAS, FoldEngine, n_moved
from benchroute.method.predictors import KNNCorrectness

# ------------------------------------------------------------------------------- dataset distance


def test_dataset_distance_hand_example() -> None:
    # task input [1, 0]; others at angles 0, 60 and 90 degrees: cosine distances 0, 0.5, 1
    task = np.array([[1.0, 0.0]])
    others = np.array([[2.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 3.0]])
    assert dataset_distance(task, others, kappa=1) == pytest.approx(0.0, abs=1e-6)
    assert dataset_distance(task, others, kappa=2) == pytest.approx(0.25, abs=1e-6)
    assert dataset_distance(task, others, kappa=3) == pytest.approx(0.5, abs=1e-6)
    # two task inputs: the mean over inputs of the mean over their kappa neighbours
    task2 = np.array([[1.0, 0.0], [0.0, 1.0]])  # [0, 1]: distances 1, 1 - sqrt(3)/2, 0
    expected = (0.25 + (0.0 + (1 - math.sqrt(3) / 2)) / 2) / 2
    assert dataset_distance(task2, others, kappa=2) == pytest.approx(expected, abs=1e-6)


def test_dataset_distance_needs_inputs() -> None:
    with pytest.raises(ConfigError):
        dataset_distance(np.zeros((0, 2)), np.ones((3, 2)))


# ------------------------------------------------------------------------------------ fold engine


def _brute_force(data, engine: FoldEngine, d: int, excluded: list[int], moved, weights: str):  # type: ignore[no-untyped-def]
    """Refit a fresh kNN on each fold's training set and compare with the engine."""
    members = data.members(d)
    g, u, rem = engine.fold(d, excluded, moved)
    n_rows = 1 if moved is None else len(moved)
    assert g.shape == (n_rows, len(members) - (0 if moved is None else moved.shape[1]), data.Y.shape[1])
    for r in range(n_rows):
        moved_global = members[moved[r]] if moved is not None else np.array([], dtype=int)
        assert set(rem[r]).isdisjoint(moved[r] if moved is not None else [])
        assert sorted(rem[r].tolist() + (moved[r].tolist() if moved is not None else [])) == list(
            range(len(members))
        )
        train = np.flatnonzero(~np.isin(data.task_index, [d, *excluded]))
        train = np.sort(np.concatenate([train, moved_global]))
        queries = data.X[members[rem[r]]]
        knn = KNNCorrectness(k=engine.k, weights=weights).fit(data.X[train], data.Y[train])
        np.testing.assert_allclose(g[r], knn.predict_proba(queries), atol=1e-6)
        assert u[r] == pytest.approx(dataset_distance(queries, data.X[train], engine.kappa), abs=1e-6)


FOLDS = [
    (0, [], None),
    (1, [3], None),
    (2, [0], np.array([[1, 4, 7]])),
    (3, [], np.array([[0, 2, 29], [5, 6, 8], [10, 20, 28]])),
    (4, [1], np.array([[0], [29]])),
]


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize(("d", "excluded", "moved"), FOLDS)
def test_fold_equals_brute_force(synthetic, d, excluded, moved, weights) -> None:  # type: ignore[no-untyped-def]
    engine = FoldEngine(synthetic.X, synthetic.Y, synthetic.task_index, k=5, kappa=19, weights=weights)
    _brute_force(synthetic, engine, d, excluded, moved, weights)


def test_fold_with_two_excluded_needs_max_excluded(synthetic) -> None:  # type: ignore[no-untyped-def]
    # The neighbour lists are only deep enough for max_excluded extra tasks: more must be refused,
    # not answered with wrong neighbours, and a deeper engine answers correctly.
    shallow = FoldEngine(synthetic.X, synthetic.Y, synthetic.task_index, k=5, kappa=19)
    with pytest.raises(ConfigError, match="max_excluded"):
        shallow.fold(3, [0, 1])
    deep = FoldEngine(synthetic.X, synthetic.Y, synthetic.task_index, k=5, kappa=19, max_excluded=2)
    _brute_force(synthetic, deep, 3, [0, 1], None, "uniform")


def test_test_fold_is_alpha_zero_fold(synthetic) -> None:  # type: ignore[no-untyped-def]
    engine = FoldEngine(synthetic.X, synthetic.Y, synthetic.task_index)
    g, u = engine.test_fold(2, [4])
    g_fold, u_fold, _ = engine.fold(2, [4])
    np.testing.assert_array_equal(g, g_fold[0])
    assert u == float(u_fold[0])


ALPHAS = (0.0, 0.05, 0.1, 0.3)


def test_pairs_count_and_provenance(synthetic) -> None:  # type: ignore[no-untyped-def]
    engine = FoldEngine(synthetic.X, synthetic.Y, synthetic.task_index)
    repeats = 3
    pairs = engine.pairs(alphas=ALPHAS, repeats=repeats, seed=0)
    per_task = 1 + (len(ALPHAS) - 1) * repeats
    assert len(pairs.u) == synthetic.n_tasks * per_task
    assert pairs.p.shape == (len(pairs.u), synthetic.Y.shape[1])
    assert ((pairs.p >= 0) & (pairs.p <= 1)).all()
    assert np.bincount(pairs.task).tolist() == [per_task] * synthetic.n_tasks
    assert (pairs.alpha == 0).sum() == synthetic.n_tasks
    # moving same-task samples into training brings the held-out task closer: u drops with alpha
    for d in range(synthetic.n_tasks):
        u0 = pairs.u[(pairs.task == d) & (pairs.alpha == 0)][0]
        assert pairs.u[(pairs.task == d) & (pairs.alpha == 0.3)].max() < u0
    # ATC material: one (confidence, correct) row per item of every task, from the alpha = 0 folds
    assert pairs.atc_conf.shape == (len(synthetic.Y), synthetic.Y.shape[1])
    assert ((pairs.atc_conf >= 0.5) & (pairs.atc_conf <= 1)).all()


def test_pairs_alpha_zero_accuracy_matches_refit(synthetic) -> None:  # type: ignore[no-untyped-def]
    engine = FoldEngine(synthetic.X, synthetic.Y, synthetic.task_index, threshold=0.5)
    pairs = engine.pairs(alphas=(0.0,), repeats=1)
    for d in range(synthetic.n_tasks):
        held = synthetic.task_index == d
        g = KNNCorrectness(k=5).fit(synthetic.X[~held], synthetic.Y[~held]).predict_proba(synthetic.X[held])
        expected = ((g > 0.5) == (synthetic.Y[held] > 0.5)).mean(axis=0)
        np.testing.assert_allclose(pairs.p[pairs.task == d][0], expected)


def test_pairs_excluded_task_never_appears(synthetic) -> None:  # type: ignore[no-untyped-def]
    engine = FoldEngine(synthetic.X, synthetic.Y, synthetic.task_index)
    for d in range(synthetic.n_tasks):
        pairs = engine.pairs(excluded=[d], alphas=ALPHAS, repeats=2)
        assert d not in set(pairs.task.tolist())
        assert len(pairs.u) == (synthetic.n_tasks - 1) * (1 + (len(ALPHAS) - 1) * 2)


def test_pairs_default_alphas_count(synthetic) -> None:  # type: ignore[no-untyped-def]
    assert len(DEFAULT_ALPHAS) == 15 and DEFAULT_ALPHAS[0] == 0.0
    pairs = FoldEngine(synthetic.X, synthetic.Y, synthetic.task_index).pairs(repeats=2, with_atc=False)
    assert len(pairs.u) == synthetic.n_tasks * (1 + 14 * 2)
    assert pairs.atc_conf.size == 0


def test_moved_samples_do_not_depend_on_excluded() -> None:
    # Task 0 is orthogonal to every other task (cosine similarity 0), while the other tasks are
    # similar to each other: task 0 is never among their neighbours, so excluding it changes none of
    # their folds. Their (u, p) pairs are then identical with and without excluded=[0] if, and only
    # if, the same samples are moved for the same (seed, task, alpha, repeat). Task 0 comes first so
    # that a draw sequence shared across tasks would shift.
    rng = np.random.default_rng(11)
    dim, per_task, n_tasks = 16, 30, 5
    X = np.zeros((n_tasks * per_task, 2 * dim), dtype=np.float32)
    X[:per_task, dim:] = 3.0 + rng.normal(size=(per_task, dim))
    centres = 3.0 + rng.normal(size=(n_tasks - 1, dim))
    X[per_task:, :dim] = np.repeat(centres, per_task, axis=0) + rng.normal(
        size=((n_tasks - 1) * per_task, dim)
    )
    task_index = np.repeat(np.arange(n_tasks), per_task)
    Y = (rng.random((len(X), 3)) < 0.5).astype(np.float32)
    engine = FoldEngine(X, Y, task_index)
    full = engine.pairs(excluded=(), alphas=ALPHAS, repeats=3, seed=7)
    nested = engine.pairs(excluded=(0,), alphas=ALPHAS, repeats=3, seed=7)
    other_seed = engine.pairs(excluded=(), alphas=ALPHAS, repeats=3, seed=8)
    rows = full.task != 0
    assert 0 not in set(nested.task.tolist())
    np.testing.assert_array_equal(nested.task, full.task[rows])
    np.testing.assert_array_equal(nested.alpha, full.alpha[rows])
    np.testing.assert_array_equal(nested.repeat, full.repeat[rows])
    np.testing.assert_allclose(nested.u, full.u[rows], rtol=1e-12)
    np.testing.assert_allclose(nested.p, full.p[rows], rtol=1e-12)
    # power check: another seed moves other samples, which shows in the alpha > 0 pairs
    moved_rows = full.alpha > 0
    assert not np.allclose(other_seed.u[moved_rows], full.u[moved_rows])
    np.testing.assert_allclose(other_seed.u[~moved_rows], full.u[~moved_rows], rtol=1e-12)


def test_n_moved() -> None:
    assert n_moved(0.0, 100) == 0
    assert n_moved(0.001, 100) == 1  # at least one when alpha > 0
    assert n_moved(0.1, 100) == 10
    assert n_moved(0.5, 1000) == 50  # capped
    assert n_moved(0.5, 1000, cap=80) == 80
    assert n_moved(0.99, 10) == 9  # never the whole task


# --------------------------------------------------------------------------------- kernel smoother


def test_kernel_smoother_two_points_by_hand() -> None:
    ks = KernelSmoother(sigma=0.1).fit(np.array([0.1, 0.3]), np.array([0.8, 0.4]))
    w1, w2 = math.exp(-0.5 * (0.05 / 0.1) ** 2), math.exp(-0.5 * (0.15 / 0.1) ** 2)
    assert ks.predict(0.15)[0] == pytest.approx((w1 * 0.8 + w2 * 0.4) / (w1 + w2), rel=1e-12)
    assert ks.predict(0.2)[0] == pytest.approx(0.6, rel=1e-12)  # midpoint: equal weights
    np.testing.assert_allclose(ks.weights(0.15), [w1 / (w1 + w2), w2 / (w1 + w2)], rtol=1e-12)


def test_kernel_smoother_three_points_two_models_by_hand() -> None:
    u = np.array([0.2, 0.25, 0.5])
    p = np.array([[0.9, 0.1], [0.7, 0.3], [0.5, 0.6]])
    ks = KernelSmoother(sigma=0.09).fit(u, p)
    w = np.array([math.exp(-0.5 * ((0.3 - uz) / 0.09) ** 2) for uz in u])
    expected = (w[:, None] * p).sum(axis=0) / w.sum()
    np.testing.assert_allclose(ks.predict(0.3), expected, rtol=1e-12)
    assert ks.predict(0.3).shape == (2,)


def test_kernel_smoother_far_away_returns_nearest_value() -> None:
    ks = KernelSmoother(sigma=0.09).fit(np.array([0.1, 0.2, 0.9]), np.array([[0.9], [0.8], [0.55]]))
    for u, expected in ((50.0, 0.55), (-50.0, 0.9)):
        got = ks.predict(u)
        assert np.isfinite(got).all()
        assert got[0] == pytest.approx(expected)
    # two pairs at the same nearest u: their mean
    ks = KernelSmoother(sigma=0.01).fit(np.array([0.0, 1.0, 1.0]), np.array([0.9, 0.6, 0.4]))
    assert ks.predict(30.0)[0] == pytest.approx(0.5)


def test_kernel_smoother_identical_models_get_identical_p() -> None:
    # a copy of a model (Router.add_model) must tie with the original exactly, not differ in the
    # last bit depending on its column position
    rng = np.random.default_rng(0)
    p = rng.random((300, 79))
    p[:, 78] = p[:, 20]
    ks = KernelSmoother().fit(rng.random(300), p)
    for u in rng.random(20):
        got = ks.predict(u)
        assert got[78] == got[20]


def test_kernel_smoother_errors() -> None:
    with pytest.raises(NotFittedError):
        KernelSmoother().predict(0.1)
    with pytest.raises(ConfigError):
        KernelSmoother().fit(np.array([]), np.zeros((0, 1)))
    with pytest.raises(ConfigError):
        KernelSmoother().fit(np.array([0.1, 0.2]), np.zeros((3, 1)))
    with pytest.raises(ConfigError, match="sigma"):
        KernelSmoother(sigma=0).fit(np.array([0.1]), np.array([0.5]))
    ks = KernelSmoother(sigma=0.2)
    assert ks.fit(np.array([0.1]), np.array([0.5])) is ks


# --------------------------------------------------------------------------------------------- ATC


def test_atc_continuous_hand_example() -> None:
    conf = np.array([[0.9], [0.8], [0.7], [0.6]])
    correct = np.array([[1], [1], [1], [0]])
    atc = ATCEstimator()
    assert atc.fit(conf, correct) is atc
    # accuracy 0.75 -> tau = the 25% quantile of the confidences = 0.675; nothing sits at tau
    assert atc.tau_[0] == pytest.approx(0.675)
    assert atc.predict(conf)[0] == pytest.approx(0.75)
    assert atc.predict(np.array([[0.95], [0.5], [0.7], [0.65]]))[0] == pytest.approx(0.5)


def test_atc_discrete_confidences_reproduce_source_accuracy() -> None:
    # kNN confidences max(g, 1 - g) with k = 5 take only the values 0.6, 0.8 and 1.0
    conf = np.array([1.0, 1.0, 0.8, 0.8, 0.8, 0.6, 0.6, 0.6, 0.6, 0.6])
    for n_right in range(11):
        correct = (np.arange(10) < n_right).astype(float)
        atc = ATCEstimator().fit(conf[:, None], correct[:, None])
        assert atc.predict(conf[:, None])[0] == pytest.approx(n_right / 10, abs=1e-12)
        assert 0.0 <= atc.lam_[0] <= 1.0
    # hand example: accuracy 0.6 on [1, 1, .6, .6, .6] -> tau = 0.6, the 3 inputs at tau count 1/3 each
    atc = ATCEstimator().fit(np.array([[1, 1, 0.6, 0.6, 0.6]]).T, np.array([[1, 1, 1, 0, 0]]).T)
    assert atc.tau_[0] == pytest.approx(0.6)
    assert atc.lam_[0] == pytest.approx(1 / 3)
    assert atc.predict(np.array([[1.0, 0.6, 0.6, 0.8]]).T)[0] == pytest.approx(0.5 + 0.5 / 3)


def test_atc_unfitted_raises() -> None:
    with pytest.raises(NotFittedError):
        ATCEstimator().predict(np.ones((3, 1)))


def test_atc_per_model_columns() -> None:
    conf = np.array([[0.9, 0.6], [0.8, 0.6], [0.7, 1.0], [0.6, 1.0]])
    correct = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    atc = ATCEstimator().fit(conf, correct)
    np.testing.assert_allclose(atc.predict(conf), [0.5, 0.5])


def test_calibrator_rows_match_their_tasks_and_reproduce_alpha_zero_p(synthetic) -> None:  # type: ignore[no-untyped-def]
    engine = FoldEngine(synthetic.X, synthetic.Y, synthetic.task_index)
    for excluded in ([], [2]):
        pairs = engine.pairs(excluded=excluded, alphas=(0.0,), repeats=1)
        assert len(pairs.atc_task) == len(pairs.atc_conf)
        assert set(pairs.atc_task.tolist()) == set(range(synthetic.n_tasks)) - set(excluded)
        # the per-task mean of the item-level correctness is the alpha = 0 pair's p of that task
        for d in set(pairs.atc_task.tolist()):
            np.testing.assert_allclose(
                pairs.atc_correct[pairs.atc_task == d].mean(axis=0), pairs.p[pairs.task == d][0]
            )


def test_calibrator_is_monotone_and_learns_overconfidence() -> None:
    rng = np.random.default_rng(0)
    n_tasks, per, m = 12, 40, 4
    task = np.repeat(np.arange(n_tasks), per)
    conf = rng.uniform(0.5, 1.0, size=(n_tasks, m))[task] + 0.01 * rng.random((len(task), m))
    # held-out accuracy is well below the confidence: over-confident by a factor
    correct = rng.random((len(task), m)) < 0.5 + 0.5 * (conf - 0.5)
    cal = ConfidenceCalibrator().fit(conf, correct, task)
    grid = np.linspace(0.5, 1.0, 11)
    p = np.array([cal.predict(np.full((3, 1), c))[0] for c in grid])
    assert (np.diff(p) >= -1e-12).all() and ((p >= 0) & (p <= 1)).all()
    # it maps a confidence of ~0.9 to ~0.7, not to 0.9 as raw confidence (ATC's starting point) would
    assert cal.predict(np.full((5, 1), 0.9))[0] == pytest.approx(0.7, abs=0.08)
    with pytest.raises(NotFittedError):
        ConfidenceCalibrator().predict(conf)


def test_p_from_accuracy_is_the_independent_predictors_agreement() -> None:
    # predicts "correct" on 70% of inputs, the model is right on 40%: agreement .7 * .4 + .3 * .6 = .46
    assert p_from_accuracy(np.array([0.7]), np.array([0.4]))[0] == pytest.approx(0.46)
    # a predictor that always says "correct" is right exactly as often as the model
    np.testing.assert_allclose(p_from_accuracy(np.ones(3), np.array([0.1, 0.5, 0.9])), [0.1, 0.5, 0.9])
    # simulated independent predictions: the formula is the expected agreement
    rng = np.random.default_rng(1)
    pred, right = rng.random(200_000) < 0.3, rng.random(200_000) < 0.8
    assert (pred == right).mean() == pytest.approx(
        p_from_accuracy(np.array([0.3]), np.array([0.8]))[0], abs=0.005
    )


def test_accuracy_estimator_learns_level_from_neighbours_and_spread_from_prior() -> None:
    rng = np.random.default_rng(0)
    n_tasks, m = 15, 60
    spread = np.linspace(-0.15, 0.15, m)  # the models' stable differences
    level = rng.uniform(0.3, 0.8, n_tasks)  # each task's difficulty
    accuracy = level[:, None] + spread[None, :] + 0.01 * rng.standard_normal((n_tasks, m))
    prior = accuracy.mean(axis=0)
    # S1 at k = 5 sees the level but garbles the spread; at k = 50 it also misses the level
    curves = {
        x: np.stack([level[x] + 0.2 * rng.standard_normal(m), 0.55 + 0.2 * rng.standard_normal(m)])
        for x in range(n_tasks)
    }
    priors = {x: prior for x in range(n_tasks)}
    est = AccuracyEstimator().fit(curves, priors, accuracy, ks=(5, 50))
    assert est.k_ == 5 and est.lam_ >= 0.8  # the level from the near neighbours, the spread from the prior
    new_level = 0.35
    got = est.predict(new_level + 0.2 * rng.standard_normal(m), prior)
    assert np.abs(got - (new_level + spread)).mean() < 0.06
    # far better than the prior alone, which has the benchmarks' average level
    assert np.abs(prior - (new_level + spread)).mean() > 0.15
    with pytest.raises(NotFittedError):
        AccuracyEstimator().predict(np.zeros(m), prior)
    with pytest.raises(ConfigError):
        AccuracyEstimator().fit({}, {}, accuracy, ks=(5,))


def test_column_quantiles_are_numpys_bit_for_bit() -> None:
    from benchroute.method.confidence import _column_quantiles

    rng = np.random.default_rng(3)
    for trial in range(300):
        n, m = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        # discrete kNN-like confidences (ties) and continuous ones; q at 0, 1 and in between
        v = rng.integers(5, 11, (n, m)) / 10.0 if trial % 2 else rng.random((n, m))
        q = rng.random(m)
        q[::3] = rng.integers(0, 2, len(q[::3]))
        expected = np.array([np.quantile(v[:, j], q[j]) for j in range(m)])
        assert np.array_equal(_column_quantiles(v, q), expected)
