"""Scores S1-S3 on a hand-made g, and the trust rule: Monte Carlo against its closed form, both branches."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from benchroute.method.scores import (
    LABEL_GRID,
    LABEL_RULES,
    TrustDecision,
    accuracy_distribution,
    apply_label_rule,
    label_grid_size,
    prob_better_exact,
    prob_better_mc,
    s1,
    s2,
    s3,
    select_label_rule,
    trust_rule,
)

# 4 inputs x 3 models
G = np.array(
    [
        [0.9, 0.5, 0.2],
        [0.6, 0.4, 0.2],
        [0.2, 0.8, 0.2],
        [0.7, 0.6, 1.0],
    ]
)


def test_s1_is_mean_predicted_correctness() -> None:
    np.testing.assert_allclose(s1(G), [2.4 / 4, 2.3 / 4, 1.6 / 4])


def test_s2_counts_inputs_above_threshold_strictly() -> None:
    np.testing.assert_allclose(s2(G), [3 / 4, 2 / 4, 1 / 4])  # 0.5 itself is not "> 0.5"
    np.testing.assert_allclose(s2(G, t=0.65), [2 / 4, 1 / 4, 1 / 4])
    np.testing.assert_allclose(s2(G, t=0.1), [1.0, 1.0, 1.0])


def test_s3_formula() -> None:
    p = np.array([0.9, 0.5, 0.2])
    got = s3(s2(G), p)
    expected = [0.75 * 0.9 + 0.25 * 0.1, 0.5 * 0.5 + 0.5 * 0.5, 0.25 * 0.2 + 0.75 * 0.8]
    np.testing.assert_allclose(got, expected)
    # p = 1 trusts S2 fully, p = 0.5 knows nothing (0.5 whatever S2 is)
    np.testing.assert_allclose(s3(s2(G), np.ones(3)), s2(G))
    np.testing.assert_allclose(s3(s2(G), np.full(3, 0.5)), [0.5, 0.5, 0.5])


def test_accuracy_distribution_is_a_pmf_with_mean_n_s3() -> None:
    n, pos, p = 10, 7, 0.8
    pmf = accuracy_distribution(n, pos, p)
    assert pmf.shape == (n + 1,)
    assert pmf.sum() == pytest.approx(1.0)
    assert (np.arange(n + 1) * pmf).sum() == pytest.approx(n * s3(pos / n, p))
    # n = 2, pos = 1: Binomial(1, p) + Binomial(1, 1 - p) by hand
    np.testing.assert_allclose(
        accuracy_distribution(2, 1, 0.7), [0.3 * 0.7, 0.7 * 0.7 + 0.3 * 0.3, 0.7 * 0.3]
    )
    np.testing.assert_allclose(accuracy_distribution(3, 3, 0.6), binom.pmf(np.arange(4), 3, 0.6))


def test_prob_better_exact_hand_case() -> None:
    # n = 1: A correct w.p. 0.9 (pos 1, p 0.9), B correct w.p. 0.4 (pos 0, p 0.6): P(A > B) = 0.9 * 0.6
    assert prob_better_exact(1, 1, 0.9, 0, 0.6) == pytest.approx(0.9 * 0.6)
    # identical models: P(A > B) = (1 - P(A = B)) / 2
    pmf = accuracy_distribution(10, 6, 0.7)
    assert prob_better_exact(10, 6, 0.7, 6, 0.7) == pytest.approx((1 - (pmf**2).sum()) / 2)


@pytest.mark.parametrize(
    ("pos_a", "p_a", "pos_b", "p_b"),
    [(7, 0.8, 5, 0.8), (6, 0.6, 6, 0.9), (10, 0.55, 3, 0.7), (2, 0.3, 8, 0.95), (5, 0.5, 5, 0.5)],
)
def test_prob_better_mc_matches_closed_form(pos_a: int, p_a: float, pos_b: int, p_b: float) -> None:
    n, draws = 10, 20_000
    exact = prob_better_exact(n, pos_a, p_a, pos_b, p_b)
    mc = prob_better_mc(n, pos_a, p_a, pos_b, p_b, draws=draws, seed=3)
    se = math.sqrt(max(exact * (1 - exact), 1e-12) / draws)
    assert abs(mc - exact) <= 3 * se + 1e-12
    assert mc == prob_better_mc(n, pos_a, p_a, pos_b, p_b, draws=draws, seed=3)  # seeded


def test_trust_rule_routes_when_probability_exceeds_eta() -> None:
    # model 1 is predicted correct on 45 of 50 inputs with p = 0.9; the BMA (model 0) on 25
    s2v, p, n = np.array([0.5, 0.9]), np.array([0.9, 0.9]), 50
    d = trust_rule(s2v, p, n, best_on_average=0, eta=0.6, draws=5000, seed=1)
    exact = prob_better_exact(n, 45, 0.9, 25, 0.9)
    assert d.candidate == 1 and d.fallback == 0
    assert d.probability is not None and d.probability == pytest.approx(exact, abs=0.02)
    assert d.probability > 0.6
    assert not d.fell_back and d.chosen == 1
    assert "routing to b" in d.reason(["a", "b"]) and "exceeds" in d.reason(["a", "b"])


def test_trust_rule_falls_back_when_probability_at_most_eta() -> None:
    # candidate barely ahead and its predictor barely better than chance
    s2v, p, n = np.array([0.5, 0.55]), np.array([0.6, 0.55]), 20
    d = trust_rule(s2v, p, n, best_on_average=0, eta=0.6, draws=5000, seed=1)
    assert d.candidate == 1  # argmax S3 = 0.5 (model 0) vs 0.505 (model 1)
    assert d.probability is not None and d.probability <= 0.6
    assert d.probability == pytest.approx(prob_better_exact(n, 11, 0.55, 10, 0.6), abs=0.03)
    assert d.fell_back and d.chosen == 0
    assert "falling back to a" in d.reason(["a", "b"])


def test_trust_rule_eta_is_the_switch() -> None:
    s2v, p, n = np.array([0.5, 0.7]), np.array([0.8, 0.7]), 30
    prob = trust_rule(s2v, p, n, 0, eta=0.0).probability
    assert prob is not None and 0 < prob < 1
    assert not trust_rule(s2v, p, n, 0, eta=prob - 0.01).fell_back
    assert trust_rule(s2v, p, n, 0, eta=prob).fell_back  # "> eta" is strict


def test_trust_rule_candidate_is_bma() -> None:
    d = trust_rule(np.array([0.9, 0.2]), np.array([0.8, 0.8]), 10, best_on_average=0)
    assert d == TrustDecision(chosen=0, candidate=0, fallback=0, probability=None, eta=0.6, fell_back=False)
    assert "is the best-on-average model" in d.reason(["a", "b"])


def test_trust_rule_uses_given_score_for_the_candidate() -> None:
    s2v, p = np.array([0.5, 0.9, 0.6]), np.array([0.9, 0.9, 0.9])
    d = trust_rule(s2v, p, 40, best_on_average=0, score=np.array([0.1, 0.2, 0.3]))
    assert d.candidate == 2  # argmax of the given score, not of S3
    masked = np.array([0.1, -np.inf, 0.3])
    assert trust_rule(s2v, p, 40, 0, score=masked).candidate == 2


def test_reason_without_probability_when_rule_is_off() -> None:
    # what a router with the trust rule switched off builds: no comparison, the top model is chosen
    d = TrustDecision(chosen=1, candidate=1, fallback=0, probability=None, eta=0.6, fell_back=False)
    assert d.reason(["a", "b"]) == "trust rule off: routing to the top-scoring model b (best on average: a)"


def test_select_blend_picks_the_best_inner_config_and_the_gate_falls_back() -> None:
    from benchroute.method.scores import select_blend

    # 4 tasks x 2 models; model 1 is best on average, but S1 at k=5 points to the task's real winner
    accuracy = np.array([[0.9, 0.5], [0.8, 0.6], [0.3, 0.7], [0.2, 0.9]])
    priors = {d: np.delete(accuracy, d, axis=0).mean(axis=0) for d in range(4)}
    curves = {d: np.stack([accuracy[d], priors[d]]) for d in range(4)}  # k=5 sees the truth, k=10 the prior
    free = select_blend(curves, priors, accuracy, ks=(5, 10), lambdas=(0.0, 1.0))
    assert (free.k, free.lam, free.gated) == (5, 0.0, False)
    assert free.inner_accuracy == pytest.approx(accuracy.max(axis=1).mean())
    assert free.bma_inner_accuracy == pytest.approx(
        np.mean([accuracy[d, np.argmax(priors[d])] for d in range(4)])
    )
    gain = accuracy.max(axis=1) - np.array([accuracy[d, np.argmax(priors[d])] for d in range(4)])
    assert free.gain_se == pytest.approx(gain.std(ddof=1) / 2)
    z = gain.mean() / free.gain_se
    gated = select_blend(curves, priors, accuracy, ks=(5, 10), lambdas=(0.0, 1.0), min_z=z + 0.01)
    assert (gated.lam, gated.gated) == (1.0, True)
    assert gated.inner_accuracy == pytest.approx(free.bma_inner_accuracy)
    assert select_blend(curves, priors, accuracy, ks=(5, 10), lambdas=(0.0, 1.0), min_z=z - 0.01).lam == 0.0


# ---------------------------------------------------------------------------------- label rules


def test_apply_label_rule_hand_examples() -> None:
    score = np.array([0.70, 0.69, 0.50, 0.68, 0.60])  # blend order: 0, 1, 3, 4, 2
    bma = 4
    # 4 labeled rows: model 3 right on all, model 0 on one, model 4 (BMA) on two, model 1 on three
    lab = np.array([[1, 1, 0, 1, 1], [0, 1, 0, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 1, 0]])
    assert apply_label_rule("none", score, lab, bma) == 0
    assert apply_label_rule("veto", score, lab, bma) == 4  # the blend's pick loses to BMA on the labels
    assert apply_label_rule("top2", score, lab, bma) == 1  # among {0, 1} and BMA
    assert apply_label_rule("top3", score, lab, bma) == 3  # model 3 enters at M = 3
    # model 2 is the best on labels only with M = 5, but it is never considered below
    assert apply_label_rule("top5", score, np.array([[0, 0, 1, 0, 0]]), bma) == 2
    assert apply_label_rule("top3", score, np.array([[0, 0, 1, 0, 0]]), bma) == 0  # all tie: blend order
    # masked models (-inf scores) are never candidates, and no labels means the blend's choice
    masked = np.where(np.arange(5) == 3, -np.inf, score)
    assert apply_label_rule("top5", masked, lab, bma) == 1
    assert apply_label_rule("top3", score, np.zeros((0, 5)), bma) == 0
    with pytest.raises(ValueError, match="unknown label rule"):
        apply_label_rule("best", score, lab, bma)


def test_label_grid_size_is_the_nearest() -> None:
    assert [label_grid_size(n) for n in (1, 5, 7, 8, 12, 16, 35, 36, 500)] == [
        5,
        5,
        5,
        10,
        10,
        20,
        20,
        50,
        50,
    ]
    assert label_grid_size(7) in LABEL_GRID


def test_select_label_rule_follows_the_evidence() -> None:
    rng = np.random.default_rng(0)
    m, prior = 6, np.linspace(0.5, 0.6, 6)  # model 5 is the best on average

    def draws(informative: bool) -> list:
        out = []
        for _ in range(40):
            acc = rng.uniform(0.3, 0.9, m)
            curve = acc + 0.3 * rng.standard_normal(m)  # a noisy blend: often wrong about the winner
            p = acc if informative else np.full(m, 0.5)  # labels that track accuracy, or pure noise
            lab = (rng.random((20, m)) < p).astype(float)
            out.append((curve, prior, lab, acc))
        return out

    assert select_label_rule(draws(True), lam=0.0) in ("top3", "top5")
    # labels that say nothing cannot beat keeping the blend's choice by much: ties go to "none"
    noise = [(acc, prior, np.ones((20, m)), acc) for _, _, _, acc in draws(False)]  # all labels equal
    assert select_label_rule(noise, lam=0.0) == "none"
    assert select_label_rule([], lam=0.5) == "none"
    assert set(LABEL_RULES) >= {"none", "veto"}
