"""The experiment harness: determinism, the nested protocol's isolation, studies and the CLI report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from benchroute.experiments.evaluate import LOTOEvaluator, paired_difference, run_experiments, summarize
from benchroute.router.estimator import Router
from synthetic import tiny_benchmark

#: Methods whose decision may only depend on the other tasks (S3_true_p and Oracle read d's labels).
BLIND_METHODS = ("S1", "S2", "S3", "S3_trust", "S3_atc", "S3_cal", "S3_acc", "Blend", "Router", "BMA")


def _router(**kw):  # type: ignore[no-untyped-def]
    return Router(alphas=(0.0, 0.1, 0.3), repeats=3, blend_ks=(5, 10, 20), draws=2000, **kw)


def test_loto_is_deterministic_for_a_fixed_seed() -> None:
    bench = tiny_benchmark()
    a = LOTOEvaluator(bench, _router()).run(alphas=(0.0, 0.1), repeats=2)
    b = LOTOEvaluator(bench, _router()).run(alphas=(0.0, 0.1), repeats=2)
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    c = LOTOEvaluator(bench, _router(seed=1)).run(alphas=(0.1,), repeats=2)
    assert json.dumps(a, default=str) != json.dumps(c, default=str)


@pytest.mark.parametrize(("held_out", "p_estimator"), [(0, "kernel"), (3, "kernel"), (3, "accuracy")])
def test_poisoning_the_held_out_task_leaves_its_decisions_unchanged(held_out: int, p_estimator: str) -> None:
    bench = tiny_benchmark()
    scores = bench.scores.copy()
    rows = bench.task_index == held_out
    scores[rows] = 1.0 - scores[rows]  # every label of the held-out task flipped
    poisoned = dataclasses.replace(bench, scores=scores)
    assert not np.array_equal(poisoned.correct[rows], bench.correct[rows])
    clean = LOTOEvaluator(bench, _router(p_estimator=p_estimator)).evaluate_task(held_out).rows
    dirty = LOTOEvaluator(poisoned, _router(p_estimator=p_estimator)).evaluate_task(held_out).rows
    pick = {r["method"]: r["model"] for r in clean}
    pick_poisoned = {r["method"]: r["model"] for r in dirty}
    for m in BLIND_METHODS:
        assert pick[m] == pick_poisoned[m], m
    # ... while the methods allowed to read the labels do notice
    acc = {r["method"]: r["acc"] for r in clean}
    acc_poisoned = {r["method"]: r["acc"] for r in dirty}
    assert acc["Oracle"] != acc_poisoned["Oracle"]


def test_poisoning_another_task_can_change_the_decision() -> None:
    """The control: labels of training tasks do reach the decision (the test above is not vacuous)."""
    bench = tiny_benchmark()
    scores = bench.scores.copy()
    rows = bench.task_index != 0
    scores[rows] = 1.0 - scores[rows]
    poisoned = dataclasses.replace(bench, scores=scores)
    clean = {r["method"]: r["model"] for r in LOTOEvaluator(bench, _router()).evaluate_task(0).rows}
    dirty = {r["method"]: r["model"] for r in LOTOEvaluator(poisoned, _router()).evaluate_task(0).rows}
    assert any(clean[m] != dirty[m] for m in BLIND_METHODS)


def test_summary_and_paired_difference() -> None:
    rows = LOTOEvaluator(tiny_benchmark(), _router()).run()
    summary = summarize(rows)
    assert {"S1", "S2", "S3", "Router", "BMA", "Oracle", "Random", "MoE"} <= set(summary)
    for method, row in summary.items():
        assert row["n_tasks"] == 6
        assert row["acc"] <= summary["Oracle"]["acc"] + 1e-12, method
    assert summary["Oracle"]["ratio"] == pytest.approx(1.0)
    tasks = sorted({r["task"] for r in rows})
    by = {(r["task"], r["method"]): r["acc"] for r in rows}
    diff = [by[(t, "Router")] - by[(t, "BMA")] for t in tasks]
    pd_ = paired_difference(rows, "Router", "BMA")
    assert pd_["mean"] == pytest.approx(np.mean(diff))
    assert pd_["se"] == pytest.approx(np.std(diff, ddof=1) / np.sqrt(len(diff)))
    # the synthetic benchmark has cheap specialists the blend finds (without the trust gate: 25 items per
    # task are too few for the binomial rule to be sure, see the next test)
    ungated = summarize(LOTOEvaluator(tiny_benchmark(), _router(trust=False)).run())
    assert ungated["Router"]["acc"] > ungated["BMA"]["acc"]


def test_trust_gate_only_ever_falls_back_to_bma() -> None:
    bench = tiny_benchmark()
    gated = [r for r in LOTOEvaluator(bench, _router()).run() if r["method"] in ("Router", "BMA")]
    free = {
        r["task"]: r["model"]
        for r in LOTOEvaluator(bench, _router(trust=False)).run()
        if r["method"] == "Router"
    }
    bma = {r["task"]: r["model"] for r in gated if r["method"] == "BMA"}
    routed = {r["task"]: r for r in gated if r["method"] == "Router"}
    for task, row in routed.items():
        assert row["model"] in (free[task], bma[task])
        assert "fell_back" in row and "trust_probability" in row  # the trust rule ran on every task
        if row["fell_back"]:  # a fallback means the blend wanted another model and the rule said no
            assert row["model"] == bma[task] != free[task]
            assert row["trust_probability"] <= 0.6
    assert any(r["fell_back"] for r in routed.values())


def test_run_experiments_all_sections(tmp_path: Path) -> None:
    from benchroute.experiments.report import write_report

    bench = tiny_benchmark()
    res = run_experiments(bench, "all", _router(), sweep_alphas=(0.0, 0.1), sweep_repeats=2)
    for key in (
        "summary",
        "per_task",
        "paired",
        "sweep",
        "distance",
        "small_models",
        "cost",
        "active",
        "training_tasks",
        "instance",
    ):
        assert key in res, key
    assert res["sweep"]["alphas"] == [0.0, 0.1]
    assert res["sweep"]["methods"]["Router"]["acc_mean"][0] == pytest.approx(res["summary"]["Router"]["acc"])
    paths = write_report(res, tmp_path)
    assert paths["md"].exists() and paths["html"].exists()
    assert "Router" in paths["md"].read_text()


def test_mlp_variant_study_compares_both_predictors(tmp_path: Path) -> None:
    from benchroute.experiments.evaluate import mlp_variant_study
    from benchroute.experiments.report import render_markdown

    ev = LOTOEvaluator(tiny_benchmark(), _router())
    res = mlp_variant_study(ev, n_tasks=2, mlp_params={"hidden": (32,), "epochs": 30, "patience": 5})
    assert len(res["tasks"]) == 2 and len(res["per_task"]) == 4
    for name in ("kNN", "MLP"):
        row = res["summary"][name]
        assert 0.0 <= row["predictor_acc"] <= 1.0 and 0.0 <= row["S1"] <= 1.0
    # on the synthetic benchmark the specialists are learnable: the MLP beats chance clearly
    assert res["summary"]["MLP"]["predictor_acc"] > 0.6
    md = render_markdown({"config": {}, "summary": {}, "per_task": [], "mlp_variant": res}, {})
    assert "MLP vs kNN" in md and f"{res['summary']['MLP']['predictor_acc']:.3f}" in md


def test_the_papers_s3_router_is_evaluated_too() -> None:
    """score="S3": the Router row is S3 + trust rule, and the other rows (the blend's curves feed the
    accuracy-based p) still come out."""
    rows = LOTOEvaluator(tiny_benchmark(), _router(score="S3")).run(tasks=[0, 1])
    by = {(r["task"], r["method"]): r for r in rows}
    for task in {r["task"] for r in rows}:
        assert by[(task, "Router")]["model"] == by[(task, "S3_trust")]["model"]
        assert "Blend" not in {m for t, m in by if t == task}
        assert 0.0 <= by[(task, "Router")]["p_mae_acc"] <= 1.0


def test_correlations_match_scipy() -> None:
    from scipy.stats import pearsonr, spearmanr

    from benchroute.experiments.evaluate import _pearson, _spearman

    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = rng.integers(0, 4, 25).astype(float), rng.random(25)  # ties in x, as in S2 or BMA-heavy scores
        assert _pearson(x, y) == pytest.approx(pearsonr(x, y)[0], abs=1e-12)
        assert _spearman(x, y) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)
    assert np.isnan(_pearson(np.ones(5), np.arange(5.0))) and np.isnan(_spearman(np.arange(5.0), np.zeros(5)))


def test_public_router_reproduces_the_harness_on_every_held_out_task() -> None:
    """The harness measures the product: a Router fitted through the public API on the benchmark
    without task t decides for t exactly what the LOTO row says (model, trust probability, fell back),
    because both run the same decision chain on folds seeded by task name, not by position."""
    bench = tiny_benchmark()
    rows = {r["task"]: r for r in LOTOEvaluator(bench, _router()).run() if r["method"] == "Router"}
    for task in bench.tasks:
        router = _router().fit(bench.select(tasks=[t for t in bench.tasks if t != task]))
        rec = router.recommend(bench.embeddings[bench.task_slice(task)])
        row = rows[task]
        assert rec.chosen == row["model"], task
        assert rec.fell_back == row["fell_back"], task
        if row["trust_probability"] is None:
            assert rec.probability is None
        else:
            assert rec.probability == pytest.approx(row["trust_probability"], abs=1e-12), task
