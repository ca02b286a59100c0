"""Tests for benchroute.method.cost: costs, cost-aware choice, Pareto frontier, AIQ, trusted cheapest-within,
and a small leave-one-task-out cost study on a synthetic benchmark.

Every expected number below is worked out by hand in the comments.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from benchroute.data.benchmark import load_benchmark
from benchroute.errors import ConfigError
from benchroute.experiments.cost import cost_study, largest_model
from benchroute.experiments.evaluate import LOTOEvaluator
from benchroute.method.cost import (
    aiq,
    cheapest_within_trusted,
    choose,
    model_costs,
    pareto_frontier,
    prob_within_mc,
)
from benchroute.method.scores import accuracy_distribution
from benchroute.router.estimator import Router
from synthetic import tiny_benchmark

# pred_acc / cost of four models; normalized cost = cost / 10 = [1, .4, .2, .1]
PRED = np.array([0.70, 0.68, 0.60, 0.50])
COST = np.array([10.0, 4.0, 2.0, 1.0])


# ----------------------------------------------------------------------------------- model_costs


def test_model_costs_llmrouter_prices() -> None:
    b = load_benchmark("llmrouter")
    cost, unit = model_costs(b.model_info, b.models)
    assert unit == "usd_per_mtok"
    assert not np.isnan(cost).any()
    by = dict(zip(b.models, cost, strict=True))
    assert by["gemma-2-9b-it"] == pytest.approx(0.1)  # in 0.1, out 0.1
    assert by["llama3-chatqa-1.5-70b"] == pytest.approx(0.9)


def test_model_costs_openllm_params_proxy() -> None:
    b = load_benchmark("openllm_v2")
    cost, unit = model_costs(b.model_info, b.models)
    assert unit == "params_b"
    assert len(cost) == 78
    assert int(np.isnan(cost).sum()) == 13  # model names without a parseable size
    np.testing.assert_array_equal(cost, b.model_info["params_b"].to_numpy(dtype=float))


def test_model_costs_mean_of_prices_one_side_and_missing() -> None:
    info = pd.DataFrame(
        {
            "usd_per_mtok_in": [1.0, 2.0, np.nan, np.nan],
            "usd_per_mtok_out": [3.0, np.nan, 5.0, np.nan],
            "params_b": [7.0, 8.0, 9.0, 70.0],
        },
        index=["a", "b", "c", "d"],
    )
    cost, unit = model_costs(info, ["a", "b", "c", "d", "unknown"])
    assert unit == "usd_per_mtok"  # never mixed with sizes: d has a size but no price -> NaN
    np.testing.assert_allclose(cost, [2.0, 2.0, 5.0, np.nan, np.nan])
    cost, unit = model_costs(pd.DataFrame({"params_b": [7.0]}, index=["a"]), ["a", "b"])
    assert unit == "params_b"
    np.testing.assert_allclose(cost, [7.0, np.nan])
    cost, unit = model_costs(pd.DataFrame(index=["a"]), ["a"])
    assert unit == "params_b" and np.isnan(cost).all()


# ----------------------------------------------------------------------------------------- choose


def test_choose_plain_is_argmax() -> None:
    c = choose(PRED, COST)
    assert c.index == 0 and c.mode == "accuracy" and c.best == 0
    assert choose(np.array([0.5, 0.5]), np.array([2.0, 1.0])).index == 0  # ties like np.argmax


@pytest.mark.parametrize(
    ("lam", "expected"),
    [
        (0.05, 1),  # objective .70-.05, .68-.02, .60-.01, .50-.005 = .65, .66, .59, .495
        (0.5, 2),  # .20, .48, .50, .45
        (2.0, 3),  # -1.3, -.12, .20, .30
    ],
)
def test_choose_cost_weight(lam: float, expected: int) -> None:
    c = choose(PRED, COST, cost_weight=lam, names=["w", "x", "y", "z"])
    assert c.index == expected and c.mode == "cost_weight"
    assert c.reason.startswith("wxyz"[expected])


def test_choose_cost_weight_ties_go_to_cheaper() -> None:
    # .5 - .1 * 1 = .4 vs .45 - .1 * .5 = .4: a tie; the cheaper wins
    assert choose(np.array([0.5, 0.45]), np.array([2.0, 1.0]), cost_weight=0.1).index == 1


def test_choose_max_cost() -> None:
    assert choose(PRED, COST, max_cost=5).index == 1  # {1, 2, 3} within budget, 1 the best
    assert choose(PRED, COST, max_cost=1).index == 3
    with pytest.raises(ConfigError, match=r"costs <= 0\.5"):
        choose(PRED, COST, max_cost=0.5)


@pytest.mark.parametrize(("eps", "expected"), [(0.0, 0), (0.02, 1), (0.1, 2), (0.2, 3)])
def test_choose_cheapest_within(eps: float, expected: int) -> None:
    # within eps of .70: .02 -> {0, 1}, .1 -> {0, 1, 2}, .2 -> all
    c = choose(PRED, COST, cheapest_within=eps)
    assert c.index == expected and c.mode == "cheapest_within"


def test_choose_budget_combines_with_cheapest_within() -> None:
    # budget 3 leaves {2, 3}; best of those .60; within .1 -> both; cheapest 3
    assert choose(PRED, COST, max_cost=3, cheapest_within=0.1).index == 3
    assert choose(PRED, COST, max_cost=3, cheapest_within=0.05).index == 2
    with pytest.raises(ConfigError, match="alternatives"):
        choose(PRED, COST, cost_weight=0.1, cheapest_within=0.1)


def test_choose_unknown_costs() -> None:
    cost = np.array([np.nan, 4.0, 2.0, 1.0])
    # cost_weight: model 0 excluded, costs normalized by 4: .68-.05, .60-.025, .50-.0125
    assert choose(PRED, cost, cost_weight=0.05).index == 1
    assert choose(PRED, cost, max_cost=100).index == 1  # unknown cost never within a budget
    # cheapest_within: the reference is the best over all (model 0, .70); 1 is within .05 and priced
    assert choose(PRED, cost, cheapest_within=0.05).index == 1
    assert choose(PRED, cost, cheapest_within=0.01).index == 0  # nothing priced within .01: the best
    all_nan = np.full(4, np.nan)
    assert choose(PRED, all_nan, cost_weight=1.0).index == 0
    assert choose(PRED, cost, cost_weight=0.0).index == 0  # lambda 0 = the plain router, unknown cost or not
    with pytest.raises(ConfigError):
        choose(PRED, all_nan, max_cost=10)


def test_choose_mask_and_frontier() -> None:
    c = choose(PRED, COST, cost_weight=0.05, mask=np.array([True, False, True, True]))
    # candidates {0, 2, 3}: .65, .59, .495 -> 0
    assert c.index == 0
    assert c.frontier == [3, 2, 0]
    assert choose(PRED, COST).frontier == [3, 2, 1, 0]


def test_pareto_frontier() -> None:
    pred = np.array([0.7, 0.6, 0.65, 0.5, 0.7])
    cost = np.array([5.0, 5.0, 3.0, 4.0, np.nan])
    # 1 dominated by 0 (same cost, less accurate), 3 by 2 (cheaper and better), 4 has no cost
    assert pareto_frontier(pred, cost) == [2, 0]
    assert pareto_frontier(np.array([0.5, 0.5]), np.array([1.0, 1.0])) == [0, 1]  # duplicates kept
    assert pareto_frontier(np.array([0.5]), np.array([np.nan])) == []


# ------------------------------------------------------------------------------------------- AIQ


def test_aiq_hand_computed() -> None:
    assert aiq([(0, 0.5), (1, 1.0)]) == pytest.approx(0.75)  # trapezoid (.5 + 1) / 2
    # hull (0,.5)-(.5,.9), then flat at .9 (the (1,.8) point lies below): .5*.7 + .5*.9 = .8
    assert aiq([(0, 0.5), (0.5, 0.9), (1, 0.8)]) == pytest.approx(0.8)
    # (.25,.6) is under the segment (.7 there): no change
    assert aiq([(0, 0.5), (0.25, 0.6), (0.5, 0.9), (1, 0.8)]) == pytest.approx(0.8)
    # (.25,.8) is above it: .25*(.5+.8)/2 + .25*(.8+.9)/2 + .5*.9 = .1625 + .2125 + .45
    assert aiq([(0, 0.5), (0.25, 0.8), (0.5, 0.9), (1, 0.8)]) == pytest.approx(0.825)
    assert aiq([(10, 0.5), (20, 1.0)]) == pytest.approx(0.75)  # costs normalized to [0, 1]
    assert aiq([(0, 0.9), (1, 0.5)]) == pytest.approx(0.9)  # the cheap point is best: flat
    assert aiq([(0, 0.5), (0, 0.7), (1, 0.7)]) == pytest.approx(0.7)  # best quality per cost
    assert aiq([(3, 0.6)]) == pytest.approx(0.6)
    # shared range: nothing achievable below cost 1, so R = 0 on [0, 1) and .6 on [1, 2]
    assert aiq([(1, 0.6)], cost_range=(0, 2)) == pytest.approx(0.3)
    assert np.isnan(aiq([]))


# ----------------------------------------------------------------------- trusted cheapest-within


def _exact_within(n: int, pos_a: int, p_a: float, pos_b: int, p_b: float, margin: float) -> float:
    pa = accuracy_distribution(n, pos_a, p_a)
    pb = accuracy_distribution(n, pos_b, p_b)
    a = np.arange(n + 1)
    return float(sum(pb[b] * pa[a >= b - margin * n - 1e-9].sum() for b in range(n + 1)))


def test_prob_within_mc_matches_closed_form() -> None:
    n = 40
    for margin in (0.0, 0.05, 0.1):
        mc = prob_within_mc(
            n, np.array([28, 30]), np.array([0.75, 0.8]), 32, 0.8, margin, draws=40_000, seed=1
        )
        exact = [_exact_within(n, 28, 0.75, 32, 0.8, margin), _exact_within(n, 30, 0.8, 32, 0.8, margin)]
        np.testing.assert_allclose(mc, exact, atol=0.015)


def test_cheapest_within_trusted_monotone_in_eta() -> None:
    s2 = np.array([0.80, 0.78, 0.70, 0.50])
    p = np.full(4, 0.8)  # S3 = .68, .668, .62, .50: model 0 is the best
    chosen_cost = []
    for eta in (0.0, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0):
        c = cheapest_within_trusted(s2, p, 100, COST, eps=0.03, eta=eta, draws=4000, seed=0)
        assert c.best == 0
        chosen_cost.append(COST[c.index])
    assert chosen_cost == sorted(chosen_cost)  # a stricter eta never picks a cheaper model
    assert chosen_cost[-1] == 10.0  # eta = 1: no probability exceeds it, the best itself
    assert chosen_cost[0] < 10.0
    # a huge margin: every model is within it for sure -> the cheapest
    assert cheapest_within_trusted(s2, p, 100, COST, eps=1.0, eta=0.9).index == 3


def test_cheapest_within_trusted_probabilities() -> None:
    s2 = np.array([0.80, 0.79, 0.40])
    p = np.full(3, 0.9)
    c = cheapest_within_trusted(
        s2, p, 200, np.array([3.0, 2.0, 1.0]), eps=0.02, eta=0.6, names=["a", "b", "c"]
    )
    assert c.index == 1 and set(c.probabilities) == {1, 2}
    assert c.probabilities[1] > 0.6 > c.probabilities[2]
    assert "b" in c.reason


# -------------------------------------------------------------------------------------- study


@pytest.fixture(scope="module")
def tiny_ev() -> LOTOEvaluator:
    return LOTOEvaluator(tiny_benchmark(), Router(blend_ks=(5, 10, 20)))


def test_largest_model() -> None:
    params = np.array([7.0, 70.0, np.nan, 70.0])
    cost = np.array([1.0, 2.0, 9.0, 3.0])
    assert largest_model(params, cost, np.zeros(4)) == 3  # 70B tie -> costlier
    assert largest_model(np.full(4, np.nan), cost, np.zeros(4)) == 2  # no sizes: by cost


def test_cost_study_shapes_and_invariants(tiny_ev: LOTOEvaluator) -> None:
    lambdas = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
    out = cost_study(tiny_ev, lambdas)
    assert out["unit"] == "usd_per_mtok" and out["n_candidates"] == 4 and out["excluded_unknown_cost"] == []
    assert [c["lambda"] for c in out["router_curve"]] == list(lambdas)
    assert [p["model"] for p in out["points"]] == tiny_ev.bench.models
    for c in out["router_curve"]:
        assert 0.0 <= c["acc"] <= 1.0
    costs = [c["cost"] for c in out["router_curve"]]
    assert (np.diff(costs) <= 1e-12).all()  # cheaper as lambda grows
    assert costs[-1] < costs[0]
    # lambda 0 is argmax of the router's predicted accuracy (the blend, before the trust rule decides):
    # the LOTO "Blend" rows' mean accuracy
    router = np.mean(
        [
            next(r["acc"] for r in tiny_ev.evaluate_task(d).rows if r["method"] == "Blend")
            for d in range(tiny_ev.bench.n_tasks)
        ]
    )
    assert out["router_curve"][0]["acc"] == pytest.approx(router)
    bma = np.mean(
        [
            next(r["acc"] for r in tiny_ev.evaluate_task(d).rows if r["method"] == "BMA")
            for d in range(tiny_ev.bench.n_tasks)
        ]
    )
    assert out["bma"]["acc"] == pytest.approx(bma)
    for key in ("router", "best_single"):
        assert 0.0 <= out["aiq"][key] <= 1.0
    assert out["largest_model"]["model"] == "m3"
    # the benchmark is built so that routing to cheap specialists beats the large model
    sav = out["savings"]
    assert sav is not None and sav["acc"] >= out["largest_model"]["acc"] and sav["saving"] > 0
    assert sav["cost_ratio"] == pytest.approx(sav["cost"] / 7.0)
    assert sav["cost"] == min(
        c["cost"] for c in out["router_curve"] if c["acc"] >= out["largest_model"]["acc"]
    )
    assert out["aiq"]["router"] > out["aiq"]["best_single"]
    assert out["best_single_model"]["model"] == "m3"  # .72 on average; the specialists .44-.57
    vs_best = out["savings_vs_best_single"]  # here the largest model is also the best single one
    assert (vs_best["lambda"], vs_best["cost_ratio"]) == (sav["lambda"], sav["cost_ratio"])


def test_cost_study_params_proxy_and_unknown() -> None:
    b = tiny_benchmark(prices=False, seed=1)
    info = b.model_info.copy()
    info.loc["m0", "params_b"] = np.nan
    ev = LOTOEvaluator(replace(b, model_info=info), Router(blend_ks=(5, 10)))
    out = cost_study(ev, (0.0, 1.0))
    assert out["unit"] == "params_b"
    assert out["excluded_unknown_cost"] == ["m0"] and len(out["points"]) == 3
    assert out["points"][-1] == {"model": "m3", "cost": 70.0, "acc": pytest.approx(ev.task_acc[:, 3].mean())}
