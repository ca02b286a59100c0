"""Labeling strategies (benchroute.method.suggest) and the leave-one-task-out active-labeling study."""

from __future__ import annotations

import numpy as np
import pytest

from benchroute.errors import ConfigError
from benchroute.experiments.active import active_study
from benchroute.experiments.evaluate import LOTOEvaluator
from benchroute.method.suggest import STRATEGIES, disagreement, suggest_labels
from benchroute.router.estimator import Router
from synthetic import tiny_benchmark


def three_clusters(per: int = 10, seed: int = 0) -> np.ndarray:
    """Three well-separated clusters (orthogonal directions), rows in cluster order."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:3] * 10.0
    return np.concatenate([c + 0.3 * rng.normal(size=(per, 8)) for c in centres])


def random_g(n: int, m: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 6, size=(n, m)) / 5.0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_budget_distinct_deterministic(strategy: str) -> None:
    X, g = three_clusters(), random_g(30)
    for budget in (1, 7, 30):
        a = suggest_labels(X, g, budget, strategy, seed=3)
        assert len(a) == budget == len(set(a))
        assert all(isinstance(i, int) and 0 <= i < 30 for i in a)
        assert a == suggest_labels(X, g, budget, strategy, seed=3)


def test_random_depends_on_seed_only() -> None:
    X, g = three_clusters(), random_g(30)
    assert suggest_labels(X, g, 10, "random", seed=1) != suggest_labels(X, g, 10, "random", seed=2)
    # random ignores the inputs: same picks for other embeddings and predictions
    assert suggest_labels(X, g, 10, "random", seed=1) == suggest_labels(-X, 1 - g, 10, "random", seed=1)


@pytest.mark.parametrize("strategy", ["diversity", "hybrid"])
def test_k_center_covers_clusters(strategy: str) -> None:
    X = three_clusters()
    picks = suggest_labels(X, random_g(30), 3, strategy)
    assert sorted(i // 10 for i in picks) == [0, 1, 2]  # one per cluster


def test_diversity_starts_nearest_centroid_and_is_nested() -> None:
    X = three_clusters()
    E = X / np.linalg.norm(X, axis=1, keepdims=True)
    centroid = E.mean(axis=0)
    picks = suggest_labels(X, random_g(30), 10, "diversity")
    assert picks[0] == int(np.argmax(E @ centroid))
    assert suggest_labels(X, random_g(30), 4, "diversity") == picks[:4]  # greedy: prefixes


def test_uncertainty_picks_where_top_models_disagree() -> None:
    n = 10
    g = np.zeros((n, 4))
    g[:, 0] = g[:, 1] = 1.0  # models 0 and 1 (the top two) agree everywhere...
    g[[3, 7], 1] = 0.0  # ...except on items 3 and 7
    g[:, 2] = np.tile([0.0, 1.0], 5)  # model 2 disagrees with them a lot, but is not a top model
    g[5, 0] = g[5, 1] = 0.5  # agreement, but both 50/50: maximal entropy, the tie-breaker
    scores = np.array([0.9, 0.8, 0.1, 0.0])
    picks = suggest_labels(np.eye(n), g, 3, "uncertainty", top=2, scores=scores)
    assert picks == [3, 7, 5]
    var, ent = disagreement(g, top=2, scores=scores)
    assert var[3] == var[7] == pytest.approx(0.25) and var[0] == 0.0
    assert ent[5] == pytest.approx(1.0) and ent[0] == 0.0
    # with all three models, model 2's disagreement counts too (default ranking: S1 = mean g)
    assert set(suggest_labels(np.eye(n), g, 2, "uncertainty", top=3)) != {3, 7}


def test_suggest_labels_errors() -> None:
    X, g = three_clusters(), random_g(30)
    with pytest.raises(ConfigError, match="budget"):
        suggest_labels(X, g, 0)
    with pytest.raises(ConfigError, match="budget"):
        suggest_labels(X, g, 31)
    with pytest.raises(ConfigError, match="strategy"):
        suggest_labels(X, g, 3, "greedy")
    with pytest.raises(ConfigError, match="one row per row"):
        suggest_labels(X[:5], g, 3)


# -------------------------------------------------------------------------------------- study


@pytest.fixture(scope="module")
def ev() -> LOTOEvaluator:
    return LOTOEvaluator(tiny_benchmark(prices=False), Router(blend_ks=(5, 10, 20)))


def test_active_study_shapes_and_values(ev: LOTOEvaluator) -> None:
    budgets = (1, 2, 5, 10, 40)  # 40 > 25 - 1: clipped to 24 labels
    out = active_study(ev, budgets, ("random", "uncertainty", "diversity", "hybrid"), repeats=3)
    assert out["budgets"] == list(budgets)
    assert set(out["strategies"]) == {"random", "uncertainty", "diversity", "hybrid", "Few-shot"}
    for name, s in out["strategies"].items():
        assert len(s["acc_mean"]) == len(s["acc_std"]) == len(budgets)
        assert all(0.0 <= v <= 1.0 for v in s["acc_mean"])
        assert all(v >= 0.0 for v in s["acc_std"])
        if name not in ("random", "Few-shot"):
            assert s["acc_std"] == [0.0] * len(budgets)  # deterministic strategies
    assert any(
        v > 0 for v in out["strategies"]["random"]["acc_std"] + out["strategies"]["Few-shot"]["acc_std"]
    )
    for key in ("bma", "largest", "router_no_labels", "oracle"):
        assert 0.0 <= out[key] <= 1.0
    assert out["largest_model"] == "m3"
    assert out["largest"] == pytest.approx(ev.task_acc[:, 3].mean())
    assert out["oracle"] >= out["bma"]
    rows = [
        next(r["acc"] for r in ev.evaluate_task(d).rows if r["method"] == "Router")
        for d in range(ev.bench.n_tasks)
    ]
    assert out["router_no_labels"] == pytest.approx(np.mean(rows))  # zero labels = the LOTO router


def test_active_study_random_matches_manual_fold(ev: LOTOEvaluator) -> None:
    """One (task, repeat, budget) of the random strategy recomputed by hand through the fold engine."""
    from benchroute.method.scores import apply_label_rule, blend, s2, trust_rule

    out = active_study(ev, (5,), ("random",), repeats=1, seed=7)
    r = ev.router
    accs, rules = [], []
    for d in range(ev.bench.n_tasks):
        members = ev.engine.members[d]
        g = ev.engine.fold(d, [], None)[0][0]
        picked = np.sort(suggest_labels(ev.engine.emb[members], g, 5, "random", seed=[7, 104729, d, 0]))
        bc = ev.blend_choice(d)
        prior = np.delete(ev.task_acc, d, axis=0).mean(axis=0)
        score = blend(ev.engine.s1_curve(d, [], (bc.k,), picked[None, :])[0], prior, bc.lam)
        rem = np.setdiff1d(np.arange(len(members)), picked)
        # the blend proposes, the trust rule (S2 and kernel p of the fold with the labels) decides
        g_moved, u_moved, _ = ev.engine.fold(d, [], picked[None, :])
        p = ev.confidence(d)[0].predict(float(u_moved[0]))
        choice = trust_rule(
            s2(g_moved[0], r.t),
            p,
            len(rem),
            int(np.argmax(prior)),
            score=score,
            eta=r.eta,
            draws=r.draws,
            seed=r.seed,
        ).chosen
        rule = ev.label_rule(d, 5)  # ... unless the nested label rule lets the 5 labels arbitrate
        if rule != "none":
            choice = apply_label_rule(rule, score, ev.Y[members[picked]], int(np.argmax(prior)))
        rules.append(rule)
        accs.append(ev.Y[members[rem]].mean(axis=0)[choice])
    assert out["strategies"]["random"]["acc_mean"][0] == pytest.approx(np.mean(accs))
    assert any(
        rule != "none" for rule in rules
    )  # the arbitration path is exercised (the synthetic tasks use it)


def test_active_study_rejects_unknown_strategy(ev: LOTOEvaluator) -> None:
    with pytest.raises(ConfigError):
        active_study(ev, (1,), ("nope",))
