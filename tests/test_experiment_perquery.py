"""The per-query harness (benchroute.experiments.perquery) on a small synthetic benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchroute.experiments.perquery import (
    NeighbourPass,
    apgr,
    calibration,
    paired_rows,
    perquery_study,
    upper_hull,
)
from benchroute.experiments.report import figure_data, render_markdown
from benchroute.method.neighbors import exact_search, normalize
from synthetic import tiny_benchmark

FAST = {
    "grid": {"k": (10,), "tau": (0.2,), "s_task": (0.5, 0.9), "s_item": (0.9,), "lam": (0.5, 0.0)},
    "session_grid": {"k": (10,), "n0": (1.0,), "lam_s": (0.5,)},
    "max_rows_per_task": 30,
}


@pytest.fixture(scope="module")
def study():
    b = tiny_benchmark(n_groups=3, per_group=2, per_task=60, seed=1)
    return b, perquery_study(b, seeds=(0,), splits=2, orders=3, fit_kw=FAST)


def test_neighbour_pass_filters_like_a_fresh_search():
    rng = np.random.default_rng(0)
    emb = normalize(rng.normal(size=(60, 8)).astype(np.float32))
    task = np.repeat(np.arange(4), 15)
    nb = NeighbourPass(emb, task, depth=40)
    store = np.flatnonzero(task != 2)
    q = np.flatnonzero(task == 2)
    s, i = nb.lists(q, "C", store, 10)
    s2, i2 = exact_search(emb[q], emb[store], 10)
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_allclose(s, s2, atol=1e-5)


def test_study_rows_oracles_and_paired_differences(study):
    _, res = study
    json.dumps(res)  # JSON-serializable as results.json
    for part in ("loto", "indist", "instance"):
        rows = {r["method"]: r for r in res[part]["rows"]}
        assert rows["BMA"]["diff_vs_bma"] == 0.0
        assert rows["per-query oracle"]["acc"] >= max(r["acc"] for r in rows.values()) - 1e-12
        assert rows["random"]["acc"] < rows["per-query oracle"]["acc"]
        assert {"HKS (default)", "kNN k=5 argmax (current rule)"} <= set(rows)
    loto = {r["method"]: r for r in res["loto"]["rows"]}
    # cheap specialists beat the large generalist on their group's tasks: the default finds them
    assert loto["HKS (default)"]["diff_vs_bma"] > 0.03
    indist = {r["method"]: r for r in res["indist"]["rows"]}
    assert indist["HKS (default)"]["diff_vs_bma"] > 0.0
    assert loto["per-task oracle"]["acc"] >= loto["BMA"]["acc"]
    assert len(res["knobs"]) == 6


def test_session_calibration_traffic_and_cost(study):
    b, res = study
    sess = {r["method"]: r["at"] for r in res["session"]["rows"]}
    assert sess["BMA"]["5"]["diff_vs_bma"] == 0.0 and "whole" in sess["BMA"]
    for c in res["calibration"].values():
        assert 0.0 <= c["ece"] <= 1.0 and sum(x["n"] for x in c["bins"]) == b.n_items * b.n_models
    for shares in res["traffic"].values():
        assert abs(sum(shares.values()) - 1.0) < 1e-9
    cost = res["cost"]
    assert cost["router_weight"][0]["cost_weight"] == 0.0
    # a huge cost weight (100) routes everything to the cheapest model
    assert cost["router_weight"][-1]["cost"] == pytest.approx(cost["weak"]["cost"])
    assert 0.0 <= cost["routellm"]["apgr"] <= 1.5


def test_report_renders_the_section(study, tmp_path):
    _, res = study
    results = {"config": {"dataset": "tiny"}, "perquery": res}
    figs = figure_data(results)
    assert {"pq_session", "pq_reliability", "pq_traffic", "pq_cost"} <= set(figs)
    md = render_markdown(results, {})
    assert "Per-query routing" in md and "Session replay" in md and "APGR" in md


def test_metric_helpers():
    pts = np.array([[1.0, 0.5], [2.0, 0.55], [3.0, 0.8], [4.0, 0.7]])
    h = upper_hull(pts)
    np.testing.assert_allclose(h, [[1.0, 0.5], [3.0, 0.8]])  # 2.0 lies under the chord; 4.0 past the top
    # a router on the straight line from weak to strong recovers half the gap on average
    line = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert apgr(line, (0.0, 0.0), (1.0, 1.0))["apgr"] == pytest.approx(0.5, abs=0.01)
    assert apgr(line, (0.0, 0.0), (1.0, 1.0))["cpt80"] == pytest.approx(0.8, abs=0.01)
    # a router at full quality for a tenth of the cost
    assert apgr(np.array([[0.1, 1.0]]), (0.0, 0.0), (1.0, 1.0))["apgr"] > 0.9
    c = calibration(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 0, 1, 1]))
    assert c["ece"] == pytest.approx(0.05)
    rows = paired_rows({"A": [0.5, 0.7], "BMA": [0.4, 0.5]})
    assert rows[0]["diff_vs_bma"] == pytest.approx(0.15) and rows[0]["se"] == pytest.approx(0.05)
