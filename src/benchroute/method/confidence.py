"""Out-of-distribution confidence p(d', m): how accurate is the thresholded predictor on a new task?

A correctness predictor learned on benchmark tasks is less reliable on a task unlike them. The paper
measures "unlike" with a dataset distance u(d) (a one-sided Chamfer distance in embedding space) and
learns how predictor accuracy p falls with u by holding out each benchmark task in turn
(plus alpha-moved labeled samples, to see nearer tasks too): pairs (u_z, p_z(m)). A Nadaraya-Watson
kernel smoother over those pairs then estimates p(d', m) from u(d').

This module holds the estimators (numpy only); :mod:`benchroute.method.folds` generates the pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchroute.errors import ConfigError
from benchroute.method.folds import group_sum
from benchroute.method.neighbors import exact_search, normalize
from benchroute.method.predictors import check_is_fitted


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
            raise ConfigError(
                f"need as many u values as p rows (and at least one); got {len(u)} and {len(p)}"
            )
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


def _column_quantiles(values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """np.quantile(values[:, m], q[m]) for every column m at once, with numpy's own arithmetic.

    One sort instead of a quantile call per model; the virtual index and the interpolation follow
    numpy's "linear" method step by step, so the thresholds are bit-identical (they are compared with
    ``==`` against discrete kNN confidences).
    """
    srt = np.sort(values, axis=0)
    n = len(srt)
    virtual = (n - 1) * q  # numpy's "linear" virtual index
    lower = np.floor(virtual)
    gamma = virtual - lower
    top = virtual >= n - 1  # numpy takes the largest value there
    lo = np.where(top, n - 1, lower).astype(np.int64)
    hi = np.where(top, n - 1, lower + 1).astype(np.int64)
    cols = np.arange(values.shape[1])
    a, b = srt[lo, cols], srt[hi, cols]
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)  # numpy's _lerp


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
        self.tau_ = _column_quantiles(conf, 1.0 - acc)
        above = (conf > self.tau_).mean(axis=0)
        at = (conf == self.tau_).mean(axis=0)
        self.lam_ = np.clip(np.where(at > 0, (acc - above) / np.where(at > 0, at, 1), 0.0), 0.0, 1.0)
        return self

    def predict(self, conf: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "tau_")
        conf = np.asarray(conf, dtype=np.float64)
        return (conf > self.tau_).mean(axis=0) + self.lam_ * (conf == self.tau_).mean(axis=0)


class ConfidenceCalibrator:
    """p(d', m) from the predictor's own mean confidence on the new task, calibrated on held-out tasks.

    The kernel smoother reads p off the task distance u alone, one curve per model; but how often a
    thresholded kNN prediction is right depends mostly on how one-sided the neighbours' labels are,
    which the predictor shows on the new task itself: the mean confidence max(g, 1 - g) of model m over
    its inputs. Raw confidence is over-confident on unseen tasks (ATC's problem), so an increasing
    isotonic map from mean confidence to the thresholded accuracy is fitted on the held-out benchmark
    tasks (alpha = 0 folds, pooled over models: one point per task and model).
    """

    def fit(self, conf: np.ndarray, correct: np.ndarray, task: np.ndarray) -> ConfidenceCalibrator:
        from sklearn.isotonic import IsotonicRegression

        task = np.asarray(task)
        tasks, inverse = np.unique(task, return_inverse=True)
        counts = np.bincount(inverse).astype(np.float64)[:, None]
        mean_conf = group_sum(np.asarray(conf, dtype=np.float64), inverse, len(tasks)) / counts
        mean_correct = group_sum(np.asarray(correct, dtype=np.float64), inverse, len(tasks)) / counts
        self.isotonic_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
            mean_conf.ravel(), mean_correct.ravel()
        )
        return self

    def predict(self, conf: np.ndarray) -> np.ndarray:
        """p per model from the n x M confidences max(g, 1 - g) of the new task's inputs."""
        check_is_fitted(self, "isotonic_")
        return self.isotonic_.predict(np.asarray(conf, dtype=np.float64).mean(axis=0))


def p_from_accuracy(s2_values: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """p a thresholded predictor reaches when its predictions are independent of correctness.

    It predicts "correct" on a share S2 of the inputs and the model is right on a share a of them, so
    it agrees with the labels on S2 a + (1 - S2)(1 - a). On a task unlike the training ones this is
    nearly the whole story: on openllm_v2 (LOTO, kNN k = 5) the true p is within 0.016 (mean absolute
    error over tasks and models) of this value at the true a. The p of section 4 is then a question of
    estimating a, which :class:`AccuracyEstimator` does.
    """
    s2_values = np.asarray(s2_values, dtype=np.float64)
    return np.clip(s2_values * accuracy + (1 - s2_values) * (1 - accuracy), 0.0, 1.0)


class AccuracyEstimator:
    """Every model's accuracy on a new task: a level from its neighbours, a spread shrunk to the prior's.

    The estimate is ``mean(S1_k) + (1 - lam) (S1_k - mean(S1_k)) + lam (prior - mean(prior))``: the
    task's difficulty is read off its k nearest benchmark inputs (the prior, the mean accuracy over
    benchmark tasks, knows nothing about it), while the differences between models are shrunk toward
    their average differences, which kNN estimates noisily. (k, lam) minimise the mean absolute error
    over the held-out benchmark tasks (each scored by a fit that never saw it). Unlike the blend's
    (k, lambda), which is chosen for the argmax, this one is chosen for calibration: used for p via
    :func:`p_from_accuracy`.
    """

    def __init__(self, lambdas: Sequence[float] = tuple(np.linspace(0.0, 1.0, 21))) -> None:
        self.lambdas = lambdas

    @staticmethod
    def estimate(curve: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
        """The estimate from S1 at one k (M,) and the prior (M,) at shrinkage ``lam``."""
        curve, prior = np.asarray(curve, dtype=np.float64), np.asarray(prior, dtype=np.float64)
        return curve.mean() + (1 - lam) * (curve - curve.mean()) + lam * (prior - prior.mean())

    def fit(
        self,
        curves: dict[int, np.ndarray],
        priors: dict[int, np.ndarray],
        accuracy: np.ndarray,
        ks: Sequence[int],
    ) -> AccuracyEstimator:
        """``curves[x]``: S1 of held-out task x at each k (len(ks) x M); ``accuracy``: task x model."""
        if not curves:
            raise ConfigError("AccuracyEstimator needs at least one held-out training task")
        tasks = sorted(curves)
        c = np.stack([curves[x] for x in tasks]).astype(np.float64)  # T x K x M
        level = c.mean(axis=2, keepdims=True)
        prior = np.stack([priors[x] for x in tasks]).astype(np.float64)[:, None, :]  # T x 1 x M
        lam = np.asarray(self.lambdas, dtype=np.float64)[:, None, None, None]  # L x 1 x 1 x 1
        est = level + (1 - lam) * (c - level) + lam * (prior - prior.mean(axis=2, keepdims=True))
        mae = np.abs(est - accuracy[tasks][:, None, :]).mean(axis=(1, 3))  # L x K: mean over tasks and models
        # first minimum in (k, lambda) order: ties go to the smaller k, then the smaller lambda
        li, j = np.unravel_index(np.argmin(mae.T), mae.T.shape)[::-1]
        self.inner_mae_, self.k_, self.lam_ = float(mae[li, j]), int(ks[int(j)]), float(self.lambdas[int(li)])
        return self

    def predict(self, curve: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Accuracy per model from the new task's S1 at ``k_`` (M,) and the prior (M,)."""
        check_is_fitted(self, "k_")
        return np.clip(self.estimate(curve, prior, self.lam_), 0.0, 1.0)
