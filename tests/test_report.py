"""Tests for benchroute.experiments.report: files written, plotted numbers equal the inputs, md/html content.

The figures are checked through ``figure_data`` (the exact numbers plotted) plus PNG validity, not
pixels. A synthetic results dict with every section stands in for OUT/results.json.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchroute.experiments.report import (
    FIGURE_NAMES,
    figure_data,
    render_html,
    render_markdown,
    write_figures,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = (
    "Router",
    "S1",
    "S2",
    "S3",
    "S3_trust",
    "S3_true_p",
    "S3_atc",
    "MoE",
    "LL",
    "Few-shot",
    "BMA",
    "Random",
    "Oracle",
)
MODELS = ("llama-2-70b", "llama-2-13b", "falcon-40b", "mpt-7b", "pythia-12b")
PARAMS = {"llama-2-70b": 70.0, "llama-2-13b": 13.0, "falcon-40b": 40.0, "mpt-7b": 7.0, "pythia-12b": 12.0}


def _r(rng: np.random.Generator, lo: float, hi: float, n: int | None = None) -> Any:
    """Rounded uniform draws: plain Python floats, as they would come out of json.load."""
    if n is None:
        return round(float(rng.uniform(lo, hi)), 4)
    return [round(float(v), 4) for v in rng.uniform(lo, hi, n)]


def make_results(seed: int = 0) -> dict[str, Any]:
    """A realistic results dict with every section, some nulls, JSON round-tripped."""
    rng = np.random.default_rng(seed)
    tasks = [f"task_{i:02d}" for i in range(12)]
    alphas = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]
    summary: dict[str, Any] = {}
    for m in METHODS:
        summary[m] = {
            "acc": _r(rng, 0.6, 0.78),
            "ratio": _r(rng, 0.8, 1.0),
            "pearson": _r(rng, 0.2, 0.9),
            "spearman": _r(rng, 0.2, 0.9),
            "pct_bma": _r(rng, 0, 1),
            "params_b": _r(rng, 7, 70),
            "rank": _r(rng, 1, 6),
            "predictor_acc": _r(rng, 0.55, 0.65),
            "p_mae": _r(rng, 0.1, 0.2),
            "n_tasks": len(tasks),
        }
    summary["Router"]["acc"] = 0.69412  # rendered as 0.694
    for m in ("BMA", "Random", "Oracle", "LL"):  # baselines have no predictor / p / correlation
        summary[m].update(predictor_acc=None, p_mae=None)
    summary["Oracle"]["pearson"] = None
    per_task = []
    for t in tasks:
        u = _r(rng, 0.3, 0.7)
        for m in ("Router", "S1", "S3", "BMA", "Oracle"):
            model = str(rng.choice(MODELS))
            per_task.append(
                {
                    "task": t,
                    "method": m,
                    "alpha": 0.0,
                    "repeat": 0,
                    "model": model,
                    "acc": _r(rng, 0.4, 0.9),
                    "ratio": _r(rng, 0.7, 1.0),
                    "is_bma": model == MODELS[0],
                    "params_b": PARAMS[model],
                    "rank": int(rng.integers(1, 6)),
                    "u": u,
                    "pearson": _r(rng, -0.2, 0.9),
                    "fell_back": bool(rng.integers(0, 2)),
                }
            )
    sweep_methods = {
        m: {"acc_mean": _r(rng, 0.6, 0.78, len(alphas)), "acc_std": _r(rng, 0.0, 0.03, len(alphas))}
        for m in ("S1", "S2", "S3", "S3_true_p", "Router", "BMA", "Oracle", "Few-shot", "MoE")
    }
    results: dict[str, Any] = {
        "config": {
            "dataset": "helm_synthetic",
            "embedding_model": "all-mpnet-base-v2",
            "router": {"predictor": "knn", "k": 5, "sigma": 0.09, "kappa": 19, "eta": 0.6},
            "seed": seed,
            "started": "2024-05-01T12:00:00+00:00",
            "seconds": 123.4,
        },
        "dataset": {
            "name": "helm_synthetic",
            "n_tasks": len(tasks),
            "n_items": 4321,
            "n_models": len(MODELS),
            "figures": {"correct": {"bma_loto": 0.688, "task_oracle": 0.773, "instance_oracle": 0.95}},
        },
        "summary": summary,
        "paired": {
            "Router - BMA": {"mean": 0.006, "se": 0.004, "n": len(tasks)},
            "S3 - BMA": {"mean": -0.002, "se": 0.005, "n": len(tasks)},
            "S3 - S1": {"mean": 0.03, "se": None, "n": len(tasks)},
        },
        "per_task": per_task,
        "sweep": {
            "alphas": alphas,
            "methods": sweep_methods,
            "predictor_acc_mean": _r(rng, 0.55, 0.7, len(alphas)),
            "predictor_acc_std": _r(rng, 0, 0.02, len(alphas)),
            "p_mae_mean": _r(rng, 0.05, 0.12, len(alphas)),
            "p_mae_std": _r(rng, 0, 0.02, len(alphas)),
        },
        "distance": [
            {
                "task": t,
                "u": _r(rng, 0.3, 0.7),
                "pearson_S3": _r(rng, -0.2, 0.9),
                "pearson_S1": _r(rng, -0.2, 0.9),
                "spearman_S3": _r(rng, -0.2, 0.9),
            }
            for t in tasks
        ],
        "small_models": {
            "limit_b": 13,
            "largest_model": "llama-2-70b",
            "largest_params_b": 70.0,
            "n_candidates": 3,
            "summary": {"Router": 0.61, "BMA_small": 0.6, "Largest": 0.688, "Oracle_small": 0.68},
            "per_task": [
                {
                    "task": t,
                    "router_model": "llama-2-13b",
                    "router_acc": _r(rng, 0.4, 0.8),
                    "bma_small_acc": _r(rng, 0.4, 0.8),
                    "largest_acc": _r(rng, 0.4, 0.9),
                    "oracle_small_acc": _r(rng, 0.6, 0.9),
                }
                for t in tasks
            ],
        },
        "training_tasks": {
            "repeats": 5,
            "rows": [
                {"n_train_tasks": n, "Blend": _r(rng, 0.6, 0.7), "BMA": 0.63, "gain": 0.0}
                for n in (5, 10, 20, 34)
            ],
        },
        "groups": {
            "groups": [
                {
                    "group": g,
                    "n_tasks": n,
                    "k": 50,
                    "lambda": 0.5,
                    "Blend": _r(rng, 0.5, 0.7),
                    "BMA": 0.6,
                    "Oracle": 0.7,
                }
                for g, n in (("bbh", 24), ("math", 7), ("musr", 3))
            ]
        },
        "instance": {
            "dataset": "mixinstruct",
            "splits": 5,
            "summary": {"Router": 74.75, "Oracle": 77.67, "BMA": 74.1, "Random": 72.3},
            "sparsity": [
                {
                    "C": c,
                    "Router": _r(rng, 73, 75),
                    "Oracle": 77.67,
                    "BMA": 74.1,
                    "Random": 72.3,
                    "n_train_mean": 1000.0 * (1 - c),
                }
                for c in (0.0, 0.1, 0.2, 0.3, 0.4)
            ],
        },
        "variants": {
            "kNN + kernel": {"acc": 0.694, "pearson": 0.6, "p_mae": 0.116, "predictor_acc": 0.59},
            "kNN + ATC": {"acc": 0.68, "pearson": 0.55, "p_mae": 0.14, "predictor_acc": 0.59},
            "MLP + kernel": {"acc": 0.69, "pearson": None, "p_mae": 0.12, "predictor_acc": 0.6},
        },
        "cost": {
            "points": [{"model": m, "cost": PARAMS[m] * 0.01, "acc": _r(rng, 0.5, 0.7)} for m in MODELS],
            "router_curve": [
                {"lambda": lam, "cost": 0.7 - lam, "acc": 0.69 - lam / 5} for lam in (0.0, 0.1, 0.3, 0.5, 0.6)
            ],
            "aiq": {"router": 0.41, "best_single": 0.38},
        },
        "active": {
            "budgets": [0, 5, 10, 20, 50],
            "strategies": {
                "random": {"acc_mean": _r(rng, 0.6, 0.7, 5), "acc_std": _r(rng, 0, 0.03, 5)},
                "uncertainty": {"acc_mean": _r(rng, 0.6, 0.72, 5), "acc_std": _r(rng, 0, 0.03, 5)},
            },
        },
    }
    # the per-query section: a real (small, synthetic) perquery_study output
    results["perquery"] = json.loads(
        (Path(__file__).parent / "fixtures" / "perquery_results.json").read_text()
    )
    return json.loads(json.dumps(results))  # exactly what results.json would hold


def minimal_results() -> dict[str, Any]:
    full = make_results()
    return {k: full[k] for k in ("config", "summary", "per_task")}


@pytest.fixture(scope="module")
def full() -> dict[str, Any]:
    return make_results()


@pytest.fixture(scope="module")
def written(full: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One write_report of the full dict, shared by the tests below (drawing is the slow part)."""
    return write_report(full, tmp_path_factory.mktemp("report"))


# ------------------------------------------------------------------------------------ files
def test_every_expected_file_is_written(written: dict[str, Path]) -> None:
    assert set(written) == {"md", "html", *FIGURE_NAMES}
    for name in FIGURE_NAMES:
        assert written[name].name == f"{name}.png"
        assert written[name].parent == written["md"].parent
    for path in written.values():
        assert path.is_file()
    assert not list(written["md"].parent.glob(".*.tmp")), "atomic-write temp files left behind"


@pytest.mark.parametrize("name", FIGURE_NAMES)
def test_pngs_are_valid_and_non_trivial(written: dict[str, Path], name: str) -> None:
    data = written[name].read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000


# ------------------------------------------------------------------------------------ plotted numbers
def test_figure_data_equals_inputs(full: dict[str, Any]) -> None:
    fd = figure_data(full)
    assert set(fd) == set(FIGURE_NAMES)
    sweep = full["sweep"]

    acc = fd["accuracy_vs_alpha"]
    assert acc["x"] == sweep["alphas"]
    assert list(acc["series"]) == [
        "S1",
        "S2",
        "S3",
        "S3_true_p",
        "Router",
        "BMA",
        "Oracle",
        "Few-shot",
        "MoE",
    ]
    for m, s in acc["series"].items():
        assert s["mean"] == sweep["methods"][m]["acc_mean"]
        assert s["std"] == sweep["methods"][m]["acc_std"]
    assert acc["series"]["Router"]["mean"] == full["sweep"]["methods"]["Router"]["acc_mean"]

    pred = fd["predictor_vs_alpha"]
    assert pred["x"] == sweep["alphas"]
    assert pred["series"]["predictor accuracy"] == {
        "mean": sweep["predictor_acc_mean"],
        "std": sweep["predictor_acc_std"],
    }
    assert pred["series"]["p MAE"] == {"mean": sweep["p_mae_mean"], "std": sweep["p_mae_std"]}

    corr = fd["correlation_vs_distance"]
    assert [(p["task"], p["u"], p["pearson_S3"], p["pearson_S1"]) for p in corr["points"]] == [
        (r["task"], r["u"], r["pearson_S3"], r["pearson_S1"]) for r in full["distance"]
    ]
    u = [r["u"] for r in full["distance"]]
    for name in ("S3", "S1"):
        slope, intercept = np.polyfit(u, [r[f"pearson_{name}"] for r in full["distance"]], 1)
        assert corr["trend"][name]["slope"] == pytest.approx(slope)
        assert corr["trend"][name]["intercept"] == pytest.approx(intercept)

    sm = fd["small_models"]
    rows = full["small_models"]["per_task"]
    assert sm["x"] == [r["task"] for r in rows]
    assert sm["series"]["Router"] == [r["router_acc"] for r in rows]
    assert sm["series"]["Oracle_small"] == [r["oracle_small_acc"] for r in rows]
    assert sm["summary"] == full["small_models"]["summary"]

    inst = fd["instance_sparsity"]
    spars = full["instance"]["sparsity"]
    assert inst["x"] == [r["C"] for r in spars]
    assert list(inst["series"]) == ["Router", "Oracle", "BMA", "Random"]
    assert inst["series"]["Router"]["mean"] == [r["Router"] for r in spars]

    cost = fd["cost_frontier"]
    assert cost["points"] == full["cost"]["points"]
    curve = sorted(full["cost"]["router_curve"], key=lambda c: c["cost"])  # drawn in cost order
    assert cost["router_curve"]["cost"] == [c["cost"] for c in curve]
    assert cost["router_curve"]["acc"] == [c["acc"] for c in curve]

    tt = fd["training_tasks"]
    assert tt["x"] == [r["n_train_tasks"] for r in full["training_tasks"]["rows"]]
    assert tt["series"]["Blend"]["mean"] == [r["Blend"] for r in full["training_tasks"]["rows"]]
    grp = fd["groups"]
    assert grp["x"] == ["bbh", "math", "musr"]
    assert grp["series"]["BMA"] == [0.6, 0.6, 0.6]
    act = fd["labels_vs_budget"]
    assert act["x"] == full["active"]["budgets"]
    for name, s in full["active"]["strategies"].items():
        assert act["series"][name] == {"mean": s["acc_mean"], "std": s["acc_std"]}


def test_figure_data_keeps_nulls_and_skips_inconsistent_series(full: dict[str, Any], tmp_path: Path) -> None:
    res = json.loads(json.dumps(full))
    res["sweep"]["methods"]["S1"]["acc_mean"][2] = None
    res["sweep"]["methods"]["S2"]["acc_mean"] = [0.5]  # wrong length: left out of the figure
    del res["sweep"]["methods"]["S3"]["acc_std"]
    fd = figure_data(res)["accuracy_vs_alpha"]
    assert fd["series"]["S1"]["mean"][2] is None
    assert "S2" not in fd["series"]
    assert fd["series"]["S3"]["std"] is None
    paths = write_figures({"sweep": res["sweep"]}, tmp_path)  # nulls and missing std still draw
    assert set(paths) == {"accuracy_vs_alpha", "predictor_vs_alpha"}
    assert paths["accuracy_vs_alpha"].read_bytes().startswith(PNG_MAGIC)


# ------------------------------------------------------------------------------------ markdown
def _md_row(md: str, first_cell: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


def test_markdown_summary_table(written: dict[str, Path], full: dict[str, Any]) -> None:
    md = written["md"].read_text()
    assert md.startswith("# benchroute report: helm_synthetic")
    header = _md_row(md, "Method")
    assert header == [
        "Method",
        "Acc",
        "Ratio",
        "Pearson",
        "Spearman",
        "%BMA",
        "#Params (B)",
        "Rank",
        "pred. acc",
        "p MAE kernel",
        "p MAE acc.",
    ]
    router = _md_row(md, "Router")
    assert router[1] == "0.694"
    assert router[2] == f"{full['summary']['Router']['ratio']:.3f}"
    assert _md_row(md, "BMA")[-2:] == ["—", "—"]  # null p MAE (and no accuracy-based p in this fixture)
    assert _md_row(md, "Oracle")[3] == "—"  # null Pearson
    # Fixed method order: rows appear as in SUMMARY_METHOD_ORDER.
    positions = [
        md.index(f"\n| {label} |")
        for label in (
            "Router",
            "S1",
            "S2",
            "S3",
            "S3 + trust rule",
            "S3 (true p)",
            "S3 (ATC p)",
            "MoE",
            "LL",
            "Few-shot",
            "BMA",
            "Random",
            "Oracle",
        )
    ]
    assert positions == sorted(positions)


def test_markdown_other_tables_and_links(written: dict[str, Path], full: dict[str, Any]) -> None:
    md = written["md"].read_text()
    assert _md_row(md, "Router - BMA")[1:3] == ["0.006", "0.004"]
    assert _md_row(md, "S3 - S1")[2] == "—"
    # Per-task table: task, u, then model / acc of Router, S3, BMA, Oracle.
    first = full["per_task"][0]["task"]
    by = {r["method"]: r for r in full["per_task"] if r["task"] == first}
    row = _md_row(md, first)
    assert row[1] == f"{by['Router']['u']:.3f}"
    assert row[2:10] == [
        by["Router"]["model"],
        f"{by['Router']['acc']:.3f}",
        by["S3"]["model"],
        f"{by['S3']['acc']:.3f}",
        by["BMA"]["model"],
        f"{by['BMA']['acc']:.3f}",
        by["Oracle"]["model"],
        f"{by['Oracle']['acc']:.3f}",
    ]
    assert _md_row(md, "kNN + ATC")[1] == "0.680"
    assert _md_row(md, "MLP + kernel")[2] == "—"
    assert "74.750" in md and "77.670" in md  # instance summary
    for name in FIGURE_NAMES:
        assert f"]({name}.png)" in md  # relative link next to report.md
    assert str(written["md"].parent) not in md


# ------------------------------------------------------------------------------------ html
def test_html_is_self_contained(written: dict[str, Path]) -> None:
    page = written["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('src="data:image/png;base64,') == len(FIGURE_NAMES)
    for name in FIGURE_NAMES:  # each written PNG is embedded byte for byte
        assert base64.b64encode(written[name].read_bytes()).decode("ascii") in page
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.IGNORECASE)
    assert links and all(link.startswith("data:") for link in links)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page
    assert '<td class="num">0.694</td>' in page


def test_md_and_html_share_content(full: dict[str, Any], written: dict[str, Path]) -> None:
    figures = {n: written[n] for n in FIGURE_NAMES}
    md = render_markdown(full, figures)
    page = render_html(full, figures)
    # Every table cell of the markdown (unescaped) appears in the html as a cell.
    for line in md.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            for cell in line.strip().strip("|").split(" | "):
                cell = cell.strip().replace("\\|", "|")
                assert f">{cell.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}</t" in page


def test_html_escapes_text(full: dict[str, Any]) -> None:
    res = {"config": {"dataset": "<b>x</b> & y"}, "summary": full["summary"], "per_task": []}
    page = render_html(res, {})
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt; &amp; y" in page


# ------------------------------------------------------------------------------------ minimal results
def test_minimal_results_render_without_figures(tmp_path: Path, written: dict[str, Path]) -> None:
    # A previous full run in the same directory: its now-unbacked figures must disappear.
    for name in FIGURE_NAMES:
        (tmp_path / f"{name}.png").write_bytes(written[name].read_bytes())
    res = minimal_results()
    assert figure_data(res) == {}
    paths = write_report(res, tmp_path)
    assert set(paths) == {"md", "html"}
    assert not list(tmp_path.glob("*.png"))
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert _md_row(md, "Router")[1] == "0.694"
    assert "Per task (alpha = 0)" in md
    for heading in (
        "OOD-gap sweep",
        "Correlation vs dataset distance",
        "small models",
        "Per-instance",
        "variants",
        "Cost",
        "Active labeling",
        "Paired differences",
    ):
        assert heading not in md and heading not in page
    assert "![" not in md and "data:image" not in page


def test_nulls_and_missing_keys_do_not_crash() -> None:
    res: dict[str, Any] = {
        "config": {},
        "summary": {"Router": {"acc": None}, "NewMethod": {"acc": float("nan"), "rank": 2}},
        "per_task": [{"task": "t", "method": "Router", "alpha": 0.0, "acc": None, "model": None}],
        "sweep": {"alphas": []},
        "distance": [],
        "cost": {"aiq": {}},
        "active": {"budgets": [1, 2]},
    }
    assert figure_data(res) == {}
    md = render_markdown(res, {})
    assert md.startswith("# benchroute report: experiment")
    assert _md_row(md, "Router")[1] == "—"
    assert _md_row(md, "NewMethod")[1:8] == ["—"] * 6 + ["2.000"]  # unknown methods still listed, after known
    assert _md_row(md, "t")[1:4] == ["—", "—", "—"]
    render_html(res, {})
