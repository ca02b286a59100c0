"""Turn an experiment's results dict (OUT/results.json) into figures, report.md and report.html.

Design, and why:

* ``figure_data`` extracts the exact numbers each figure plots. Tests (and anyone auditing a plot)
  check these numbers instead of pixels, and the drawing code plots nothing but what it returns.
* The report body is built once as a list of blocks (headings, paragraphs, tables, images); one
  Markdown and one HTML renderer walk the same blocks, so the two reports cannot drift apart and no
  table logic is duplicated.
* Matplotlib is used through ``Figure`` + ``FigureCanvasAgg`` directly, never ``pyplot``: no global
  backend switch, no global figure registry, nothing that leaks between callers in one process.
* Every section except config/summary/per_task is optional and any value may be null: a missing
  section silently drops its tables and figure, a null renders as an em dash. A partial or early
  results.json must still produce a readable report.
* Files are written with ``benchroute.files`` atomic writes, so a report directory never holds a
  truncated PNG or a half-written report.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchroute.experiments.evaluate import ROWS
from benchroute.files import atomic_write_bytes, atomic_write_text

__all__ = [
    "FIGURE_NAMES",
    "SUMMARY_METHOD_ORDER",
    "figure_data",
    "render_html",
    "render_markdown",
    "write_figures",
    "write_report",
]

NULL = "—"
"""What a missing / null / non-finite value renders as."""

SUMMARY_METHOD_ORDER: tuple[str, ...] = tuple(ROWS)
"""Row order of the Table-1-style summary (methods first, baselines after, Oracle last)."""

SWEEP_METHOD_ORDER: tuple[str, ...] = (
    "S1",
    "S2",
    "S3",
    "S3_true_p",
    "Router",
    "BMA",
    "Oracle",
    "Few-shot",
    "MoE",
)
"""Methods drawn on the accuracy-vs-alpha figure (others in the sweep are drawn after these)."""

SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Acc", "acc"),
    ("Ratio", "ratio"),
    ("Pearson", "pearson"),
    ("Spearman", "spearman"),
    ("%BMA", "pct_bma"),
    ("#Params (B)", "params_b"),
    ("Rank", "rank"),
    ("pred. acc", "predictor_acc"),
    ("p MAE kernel", "p_mae"),
    ("p MAE acc.", "p_mae_acc"),
)
"""(header, key in results["summary"][method]) for the summary table (the p MAE columns are per task,
the same on every method's row: the kernel smoother's and the accuracy-based estimator's)."""

PER_TASK_METHODS: tuple[str, ...] = ("Router", "S3", "BMA", "Oracle")
SMALL_MODEL_SERIES: tuple[tuple[str, str, str], ...] = (
    # (summary key, per-task key, legend label)
    ("Router", "router_acc", "Router (small models)"),
    ("BMA_small", "bma_small_acc", "Best small model on average"),
    ("Largest", "largest_acc", "Largest model"),
    ("Oracle_small", "oracle_small_acc", "Oracle (small models)"),
)
INSTANCE_METHODS: tuple[str, ...] = ("Router", "Router_shrunk", "Oracle", "BMA", "Random")

FIGURE_NAMES: tuple[str, ...] = (
    "accuracy_vs_alpha",
    "correlation_vs_distance",
    "predictor_vs_alpha",
    "small_models",
    "instance_sparsity",
    "cost_frontier",
    "labels_vs_budget",
    "training_tasks",
    "groups",
    "pq_session",
    "pq_reliability",
    "pq_traffic",
    "pq_cost",
)
"""Every figure this module can draw, in report order; the PNG is ``<name>.png``."""

FIGURE_CAPTIONS: dict[str, str] = {
    "accuracy_vs_alpha": "Accuracy of the chosen model vs alpha (fraction of the new task's labeled "
    "samples moved into training); mean over repeats, band = ±1 std.",
    "correlation_vs_distance": "Per held-out task: Pearson correlation between the scores and the true "
    "accuracies over models, vs the task's dataset distance u; lines are least-squares fits.",
    "predictor_vs_alpha": "Correctness-predictor accuracy and MAE of the p estimates vs alpha "
    "(mean ± std over repeats).",
    "small_models": "Routing among small models vs the best small model on average, the largest model "
    "alone and the oracle among small models.",
    "instance_sparsity": "Per-instance routing: mean score vs sparsity threshold C (only training "
    "inputs farther than C from the test input are kept).",
    "cost_frontier": "Accuracy vs cost: single models (points) and the cost-aware router (curve).",
    "labels_vs_budget": "Accuracy vs number of labeled samples of the new task, per labeling "
    "strategy (mean ± std).",
    "training_tasks": "Accuracy of the router and of the best-on-average model vs the number of "
    "benchmark tasks trained on (random subsets; mean over held-out tasks and draws).",
    "groups": "Leave-one-group-out: every task of a group held out at once (no sibling tasks to learn "
    "from); mean accuracy over the group's tasks.",
}

PRETTY_METHOD: dict[str, str] = {name: label for name, (label, _) in ROWS.items() if label != name}


# ============================================================================ small value helpers
def _num(v: Any) -> float | None:
    """A finite float, or None for null / non-numeric / NaN / inf (so callers treat them alike)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _nan(v: Any) -> float:
    """Plot value: null becomes NaN, which matplotlib leaves as a gap instead of failing."""
    f = _num(v)
    return math.nan if f is None else f


def fmt(v: Any, digits: int = 3) -> str:
    """Table cell text: numbers with ``digits`` decimals, ints as ints, null / NaN as an em dash."""
    if v is None:
        return NULL
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else NULL
    if isinstance(v, str):
        return v if v.strip() else NULL
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x, digits) for x in v) or NULL
    return str(v)


def _fmt_g(v: Any) -> str:
    """Cell text for quantities spanning magnitudes (costs): 4 significant digits."""
    f = _num(v)
    return NULL if f is None else f"{f:.4g}"


def _fmt_pm(mean: Any, std: Any) -> str:
    """'mean ± std' cell; just the mean when the std is unknown."""
    if _num(mean) is None:
        return NULL
    return fmt(_num(mean)) if _num(std) is None else f"{fmt(_num(mean))} ± {fmt(_num(std))}"


def _pretty(method: str) -> str:
    return PRETTY_METHOD.get(method, method)


def _ordered(keys: Iterable[str], order: Sequence[str]) -> list[str]:
    """``order``'s keys that are present, then any other present keys in their given order.

    Unknown methods are kept (not dropped) so a new method added by evaluate code still shows up.
    """
    present = list(dict.fromkeys(keys))
    return [k for k in order if k in present] + [k for k in present if k not in order]


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else []


def _at(seq: Sequence[Any], i: int) -> Any:
    return seq[i] if 0 <= i < len(seq) else None


def _series(mean: Any, std: Any, n: int) -> dict[str, list[Any] | None] | None:
    """{"mean", "std"} if ``mean`` is a list of length n (std kept only if it matches too).

    A length mismatch means the results are inconsistent; the series is left out of the figure
    (its numbers still appear in the tables) rather than being plotted against the wrong x.
    """
    m = _list(mean)
    if len(m) != n or n == 0:
        return None
    s = _list(std)
    return {"mean": m, "std": s if len(s) == n else None}


# ============================================================================ figure data
def _fd_accuracy_vs_alpha(results: Mapping[str, Any]) -> dict[str, Any] | None:
    sweep = _dict(results.get("sweep"))
    x = _list(sweep.get("alphas"))
    methods = _dict(sweep.get("methods"))
    series: dict[str, Any] = {}
    for name in _ordered(methods, SWEEP_METHOD_ORDER):
        s = _series(_dict(methods[name]).get("acc_mean"), _dict(methods[name]).get("acc_std"), len(x))
        if s is not None:
            series[name] = s
    return {"x": x, "series": series} if series else None


def _fd_predictor_vs_alpha(results: Mapping[str, Any]) -> dict[str, Any] | None:
    sweep = _dict(results.get("sweep"))
    x = _list(sweep.get("alphas"))
    series: dict[str, Any] = {}
    for label, key in (("predictor accuracy", "predictor_acc"), ("p MAE", "p_mae")):
        s = _series(sweep.get(f"{key}_mean"), sweep.get(f"{key}_std"), len(x))
        if s is not None:
            series[label] = s
    return {"x": x, "series": series} if series else None


def _linear_fit(xs: Sequence[Any], ys: Sequence[Any]) -> dict[str, float] | None:
    """Least-squares line through the finite (x, y) pairs; None if x has no spread."""
    pairs = [(_num(a), _num(b)) for a, b in zip(xs, ys, strict=True)]
    pts = [(a, b) for a, b in pairs if a is not None and b is not None]
    if len(pts) < 2:
        return None
    mx = sum(a for a, _ in pts) / len(pts)
    my = sum(b for _, b in pts) / len(pts)
    sxx = sum((a - mx) ** 2 for a, _ in pts)
    if sxx <= 0:
        return None
    slope = sum((a - mx) * (b - my) for a, b in pts) / sxx
    return {"slope": slope, "intercept": my - slope * mx}


def _fd_correlation_vs_distance(results: Mapping[str, Any]) -> dict[str, Any] | None:
    rows = [r for r in _list(results.get("distance")) if isinstance(r, dict)]
    if not rows:
        return None
    points = [
        {
            "task": r.get("task"),
            "u": r.get("u"),
            "pearson_S3": r.get("pearson_S3"),
            "pearson_S1": r.get("pearson_S1"),
        }
        for r in rows
    ]
    us = [p["u"] for p in points]
    trend = {
        name: fit
        for name in ("S3", "S1")
        if (fit := _linear_fit(us, [p[f"pearson_{name}"] for p in points])) is not None
    }
    return {"points": points, "trend": trend}


def _fd_small_models(results: Mapping[str, Any]) -> dict[str, Any] | None:
    sm = _dict(results.get("small_models"))
    if not sm:
        return None
    summ = _dict(sm.get("summary"))
    rows = [r for r in _list(sm.get("per_task")) if isinstance(r, dict)]
    summary = {key: summ.get(key) for key, _, _ in SMALL_MODEL_SERIES if key in summ}
    per_task = {key: [r.get(col) for r in rows] for key, col, _ in SMALL_MODEL_SERIES} if rows else {}
    if not summary and not per_task:
        return None
    return {
        "x": [r.get("task") for r in rows],
        "series": per_task,
        "summary": summary,
        "limit_b": sm.get("limit_b"),
        "largest_model": sm.get("largest_model"),
    }


def _fd_instance_sparsity(results: Mapping[str, Any]) -> dict[str, Any] | None:
    rows = [r for r in _list(_dict(results.get("instance")).get("sparsity")) if isinstance(r, dict)]
    if not rows:
        return None
    present = _ordered((k for r in rows for k in r if k in INSTANCE_METHODS), INSTANCE_METHODS)
    series = {m: {"mean": [r.get(m) for r in rows], "std": None} for m in present}
    return (
        {
            "x": [r.get("C") for r in rows],
            "series": series,
            "n_train_mean": [r.get("n_train_mean") for r in rows],
        }
        if series
        else None
    )


def _fd_cost_frontier(results: Mapping[str, Any]) -> dict[str, Any] | None:
    cost = _dict(results.get("cost"))
    points = [
        {"model": p.get("model"), "cost": p.get("cost"), "acc": p.get("acc")}
        for p in _list(cost.get("points"))
        if isinstance(p, dict)
    ]
    curve_rows = [c for c in _list(cost.get("router_curve")) if isinstance(c, dict)]
    # The curve is drawn in cost order, whatever order the lambdas were swept in.
    curve_rows.sort(key=lambda c: (_num(c.get("cost")) is None, _num(c.get("cost")) or 0.0))
    curve = {
        "lambda": [c.get("lambda") for c in curve_rows],
        "cost": [c.get("cost") for c in curve_rows],
        "acc": [c.get("acc") for c in curve_rows],
    }
    if not points and not curve_rows:
        return None
    return {"points": points, "router_curve": curve}


def _fd_labels_vs_budget(results: Mapping[str, Any]) -> dict[str, Any] | None:
    active = _dict(results.get("active"))
    x = _list(active.get("budgets"))
    strategies = _dict(active.get("strategies"))
    series: dict[str, Any] = {}
    for name, val in strategies.items():
        s = _series(_dict(val).get("acc_mean"), _dict(val).get("acc_std"), len(x))
        if s is not None:
            series[name] = s
    return {"x": x, "series": series} if series else None


def _fd_training_tasks(results: Mapping[str, Any]) -> dict[str, Any] | None:
    rows = [r for r in _list(_dict(results.get("training_tasks")).get("rows")) if isinstance(r, dict)]
    if not rows:
        return None
    series = {m: {"mean": [r.get(m) for r in rows], "std": None} for m in ("Blend", "BMA")}
    return {"x": [r.get("n_train_tasks") for r in rows], "series": series}


def _fd_groups(results: Mapping[str, Any]) -> dict[str, Any] | None:
    rows = [r for r in _list(_dict(results.get("groups")).get("groups")) if isinstance(r, dict)]
    if not rows:
        return None
    return {
        "x": [r.get("group") for r in rows],
        "series": {m: [r.get(m) for r in rows] for m in ("Blend", "BMA", "Oracle")},
    }


_FIGURE_DATA: dict[str, Callable[[Mapping[str, Any]], dict[str, Any] | None]] = {
    "accuracy_vs_alpha": _fd_accuracy_vs_alpha,
    "correlation_vs_distance": _fd_correlation_vs_distance,
    "predictor_vs_alpha": _fd_predictor_vs_alpha,
    "small_models": _fd_small_models,
    "instance_sparsity": _fd_instance_sparsity,
    "cost_frontier": _fd_cost_frontier,
    "labels_vs_budget": _fd_labels_vs_budget,
    "training_tasks": _fd_training_tasks,
    "groups": _fd_groups,
}


def figure_data(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The exact numbers each figure plots, keyed by figure name; absent sections are left out.

    Line figures: ``{"x": [...], "series": {label: {"mean": [...], "std": [...] | None}}}``.
    Scatter figures: ``{"points": [...], ...}``. Values are passed through as given (nulls stay
    None) so they compare equal to the input; plotting turns nulls into gaps.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in FIGURE_NAMES:
        data = _FIGURE_DATA[name](results)
        if data is not None:
            out[name] = data
    return out


# ============================================================================ drawing
def _new_figure(width: float = 7.0, height: float = 4.5, ncols: int = 1) -> tuple[Any, list[Any]]:
    """A pyplot-free Agg figure (see the module docstring) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _draw_band(ax: Any, x: Sequence[Any], s: Mapping[str, Any], label: str, **kw: Any) -> None:
    """Mean line, and a ±std band when the std is known."""
    xs = [_nan(v) for v in x]
    mean = [_nan(v) for v in s["mean"]]
    (line,) = ax.plot(xs, mean, marker="o", markersize=3, label=label, **kw)
    if s.get("std") is not None:
        std = [_nan(v) for v in s["std"]]
        ax.fill_between(
            xs,
            [m - d for m, d in zip(mean, std, strict=True)],
            [m + d for m, d in zip(mean, std, strict=True)],
            color=line.get_color(),
            alpha=0.15,
            linewidth=0,
        )


_STYLE: dict[str, dict[str, Any]] = {
    "Oracle": {"color": "black", "linestyle": "--"},
    "BMA": {"color": "tab:gray", "linestyle": ":"},
    "Random": {"color": "tab:brown", "linestyle": "-."},
}


def _plot_accuracy_vs_alpha(d: Mapping[str, Any]) -> Any:
    fig, (ax,) = _new_figure()
    for name, s in d["series"].items():
        _draw_band(ax, d["x"], s, _pretty(name), **_STYLE.get(name, {}))
    ax.set_xlabel("alpha (fraction of the new task's labeled samples used for training)")
    ax.set_ylabel("accuracy of the chosen model")
    ax.set_title("Accuracy vs alpha")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    return fig


def _plot_predictor_vs_alpha(d: Mapping[str, Any]) -> Any:
    fig, axes = _new_figure(width=10.0, height=4.0, ncols=2)
    for ax, (label, color) in zip(
        axes, (("predictor accuracy", "tab:blue"), ("p MAE", "tab:red")), strict=True
    ):
        s = d["series"].get(label)
        if s is not None:
            _draw_band(ax, d["x"], s, label, color=color)
        else:
            ax.text(0.5, 0.5, "not reported", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("alpha")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs alpha")
        ax.grid(alpha=0.3)
    return fig


def _plot_correlation_vs_distance(d: Mapping[str, Any]) -> Any:
    fig, (ax,) = _new_figure()
    pts = d["points"]
    us = [_nan(p["u"]) for p in pts]
    finite_u = [u for u in us if not math.isnan(u)]
    for name, marker, color in (("S3", "o", "tab:blue"), ("S1", "^", "tab:orange")):
        ys = [_nan(p[f"pearson_{name}"]) for p in pts]
        if all(math.isnan(y) for y in ys):
            continue
        ax.scatter(us, ys, marker=marker, color=color, label=name, alpha=0.8, s=28)
        fit = d["trend"].get(name)
        if fit is not None and finite_u:
            lo, hi = min(finite_u), max(finite_u)
            ax.plot(
                [lo, hi],
                [fit["intercept"] + fit["slope"] * lo, fit["intercept"] + fit["slope"] * hi],
                color=color,
                linewidth=1.2,
                label=f"{name} trend (slope {fit['slope']:.2f})",
            )
    if len(pts) <= 40:  # labels stay legible up to about the paper's 29 tasks
        for p, u in zip(pts, us, strict=True):
            y = _nan(p["pearson_S3"])
            if not (math.isnan(u) or math.isnan(y)):
                ax.annotate(
                    str(p["task"]), (u, y), fontsize=6, alpha=0.7, xytext=(2, 2), textcoords="offset points"
                )
    ax.axhline(0.0, color="gray", linewidth=0.6)
    ax.set_xlabel("dataset distance u (mean cosine distance to the other tasks)")
    ax.set_ylabel("Pearson(score, true accuracy) over models")
    ax.set_title("Score-accuracy correlation vs dataset distance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _plot_small_models(d: Mapping[str, Any]) -> Any:
    labels = {key: label for key, _, label in SMALL_MODEL_SERIES}
    tasks = d["x"]
    has_tasks = bool(tasks) and bool(d["series"])
    ncols = 2 if has_tasks and d["summary"] else 1
    width = max(7.0, 3.0 + 0.4 * len(tasks)) if has_tasks else 6.0
    fig, axes = _new_figure(width=width + (3.5 if ncols == 2 else 0.0), height=4.5, ncols=ncols)
    if ncols == 2:  # give the per-task panel most of the width
        gs = axes[0].get_gridspec()
        gs.set_width_ratios([width, 3.5])
    keys = [k for k, _, _ in SMALL_MODEL_SERIES]
    if has_tasks:
        ax = axes[0]
        present = [k for k in keys if k in d["series"]]
        bw = 0.8 / max(len(present), 1)
        for j, key in enumerate(present):
            ax.bar(
                [i + (j - (len(present) - 1) / 2) * bw for i in range(len(tasks))],
                [_nan(v) for v in d["series"][key]],
                width=bw,
                label=labels[key],
            )
        ax.set_xticks(range(len(tasks)), [str(t) for t in tasks], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("accuracy")
        ax.set_title(f"Per task (candidates <= {fmt(d.get('limit_b'), 0)}B parameters)")
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    if d["summary"]:
        ax = axes[-1]
        present = [k for k in keys if k in d["summary"]]
        ax.bar(
            range(len(present)),
            [_nan(d["summary"][k]) for k in present],
            color=[f"C{keys.index(k)}" for k in present],
        )
        ax.set_xticks(range(len(present)), [labels[k] for k in present], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("mean accuracy")
        ax.set_title("Average over tasks")
        ax.grid(axis="y", alpha=0.3)
    return fig


def _line_figure(d: Mapping[str, Any], xlabel: str, ylabel: str, title: str, styled: bool = True) -> Any:
    """One panel of mean lines (with std bands where given) over d["x"], one per series."""
    fig, (ax,) = _new_figure()
    for name, series in d["series"].items():
        _draw_band(ax, d["x"], series, name, **(_STYLE.get(name, {}) if styled else {}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _plot_instance_sparsity(d: Mapping[str, Any]) -> Any:
    return _line_figure(
        d,
        "sparsity threshold C (min. distance of kept training inputs)",
        "mean score",
        "Per-instance routing vs training sparsity",
    )


def _plot_cost_frontier(d: Mapping[str, Any]) -> Any:
    fig, (ax,) = _new_figure()
    pts = d["points"]
    costs = [_nan(p["cost"]) for p in pts] + [_nan(c) for c in d["router_curve"]["cost"]]
    if pts:
        ax.scatter(
            [_nan(p["cost"]) for p in pts],
            [_nan(p["acc"]) for p in pts],
            color="tab:gray",
            label="single models",
            zorder=3,
        )
        if len(pts) <= 40:
            for p in pts:
                ax.annotate(
                    str(p["model"]),
                    (_nan(p["cost"]), _nan(p["acc"])),
                    fontsize=6,
                    alpha=0.8,
                    xytext=(2, 2),
                    textcoords="offset points",
                )
    curve = d["router_curve"]
    if curve["cost"]:
        ax.plot(
            [_nan(c) for c in curve["cost"]],
            [_nan(a) for a in curve["acc"]],
            marker="o",
            markersize=3,
            color="tab:blue",
            label="router (cost-aware)",
        )
    positive = [c for c in costs if not math.isnan(c) and c > 0]
    # Prices span orders of magnitude; a log axis keeps cheap models from piling up at zero.
    if (
        positive
        and len(positive) == sum(not math.isnan(c) for c in costs)
        and max(positive) > 50 * min(positive)
    ):
        ax.set_xscale("log")
    ax.set_xlabel("cost")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _plot_labels_vs_budget(d: Mapping[str, Any]) -> Any:
    return _line_figure(
        d,
        "number of labeled samples of the new task",
        "accuracy of the chosen model",
        "Accuracy vs labeling budget",
        styled=False,
    )


def _plot_training_tasks(d: Mapping[str, Any]) -> Any:
    return _line_figure(
        d,
        "number of training tasks",
        "accuracy of the chosen model",
        "Does routing improve with more benchmarks?",
    )


def _plot_groups(d: Mapping[str, Any]) -> Any:
    fig, (ax,) = _new_figure()
    x = np.arange(len(d["x"]))
    width = 0.8 / max(1, len(d["series"]))
    for i, (name, vals) in enumerate(d["series"].items()):
        ax.bar(x + i * width, [_nan(v) for v in vals], width, label=name)
    ax.set_xticks(x + width * (len(d["series"]) - 1) / 2, [str(g) for g in d["x"]])
    ax.set_ylabel("mean accuracy over the group's tasks")
    ax.set_title("Leave-one-group-out")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


_PLOTTERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "accuracy_vs_alpha": _plot_accuracy_vs_alpha,
    "correlation_vs_distance": _plot_correlation_vs_distance,
    "predictor_vs_alpha": _plot_predictor_vs_alpha,
    "small_models": _plot_small_models,
    "instance_sparsity": _plot_instance_sparsity,
    "cost_frontier": _plot_cost_frontier,
    "labels_vs_budget": _plot_labels_vs_budget,
    "training_tasks": _plot_training_tasks,
    "groups": _plot_groups,
}


def _png_bytes(fig: Any) -> bytes:
    """PNG bytes of a figure, rendered in memory so the file can then be written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_figures(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Draw every figure whose section is present into ``out_dir/<name>.png``; {name: path}.

    A figure of a previous run whose section is now absent is removed, so the directory never shows
    a plot that the accompanying report does not describe.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = figure_data(results)
    paths: dict[str, Path] = {}
    for name in FIGURE_NAMES:
        path = out_dir / f"{name}.png"
        if name not in data:
            path.unlink(missing_ok=True)
            continue
        atomic_write_bytes(path, _png_bytes(_PLOTTERS[name](data[name])))
        paths[name] = path
    return paths


# ============================================================================ document model
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    """One table, already formatted to text; both renderers draw exactly these cells."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    numeric: Sequence[bool] = field(default_factory=tuple)  # right-align these columns

    def is_numeric(self, j: int) -> bool:
        return j < len(self.numeric) and self.numeric[j]


@dataclass(frozen=True)
class Image:
    name: str  # figure name, a key of the ``figures`` mapping
    caption: str


Block = Heading | Paragraph | Table | Image


def _kv_rows(d: Mapping[str, Any], prefix: str = "") -> list[list[str]]:
    """Flatten a nested config dict into (key, value) rows: {"router": {"k": 5}} -> router.k | 5."""
    rows: list[list[str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows.extend(_kv_rows(v, f"{key}."))
        else:
            text = fmt(v)
            rows.append([key, text if len(text) <= 200 else text[:197] + "..."])
    return rows


def _config_blocks(results: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    config = _dict(results.get("config"))
    if config:
        blocks += [Heading("Configuration"), Table(["setting", "value"], _kv_rows(config))]
    dataset = _dict(results.get("dataset"))
    if dataset:
        blocks += [Heading("Dataset"), Table(["field", "value"], _kv_rows(dataset))]
    return blocks


def _summary_blocks(results: Mapping[str, Any]) -> list[Block]:
    summary = _dict(results.get("summary"))
    blocks: list[Block] = [Heading("Leave-one-task-out summary (alpha = 0)")]
    if not summary:
        return [*blocks, Paragraph("No summary in the results.")]
    rows = [
        [_pretty(m)] + [fmt(_num(_dict(summary[m]).get(key))) for _, key in SUMMARY_COLUMNS]
        for m in _ordered(summary, SUMMARY_METHOD_ORDER)
    ]
    blocks.append(
        Table(["Method"] + [h for h, _ in SUMMARY_COLUMNS], rows, [False] + [True] * len(SUMMARY_COLUMNS))
    )
    n_tasks = {_dict(v).get("n_tasks") for v in summary.values()} - {None}
    if len(n_tasks) == 1:
        blocks.append(
            Paragraph(
                f"Averages over {fmt(n_tasks.pop())} held-out tasks. Acc: true accuracy of "
                "the chosen model; Ratio: Acc / Oracle; Pearson/Spearman: correlation of "
                "the method's scores with the true accuracies over models; %BMA: how often "
                "the best-model-on-average was chosen; Rank: rank of the chosen model."
            )
        )
    return blocks


def _paired_blocks(results: Mapping[str, Any]) -> list[Block]:
    paired = _dict(results.get("paired"))
    if not paired:
        return []
    rows = []
    for name, v in paired.items():
        v = _dict(v)
        mean, se = _num(v.get("mean")), _num(v.get("se"))
        ci = NULL if mean is None or se is None else f"[{fmt(mean - 1.96 * se)}, {fmt(mean + 1.96 * se)}]"
        rows.append([name, fmt(mean), fmt(se), ci, fmt(v.get("n"))])
    return [
        Heading("Paired differences over tasks"),
        Table(["Difference", "mean", "se", "95% CI (normal)", "n"], rows, [False, True, True, True, True]),
    ]


def _per_task_blocks(results: Mapping[str, Any]) -> list[Block]:
    """Per-task table from the alpha = 0 rows (first repeat), one row per held-out task."""
    rows = [r for r in _list(results.get("per_task")) if isinstance(r, dict)]
    rows = [r for r in rows if (_num(r.get("alpha")) or 0.0) == 0.0]
    if not rows:
        return []
    tasks: dict[str, dict[str, Any]] = {}
    u: dict[str, Any] = {}
    for r in rows:
        task = str(r.get("task"))
        tasks.setdefault(task, {}).setdefault(str(r.get("method")), r)  # first (repeat) wins
        if u.get(task) is None:
            u[task] = r.get("u")
    methods = [m for m in PER_TASK_METHODS if any(m in by for by in tasks.values())]
    show_fallback = any("fell_back" in by.get("Router", {}) for by in tasks.values())
    headers = ["task", "u"]
    for m in methods:
        headers += [f"{m} model", f"{m} acc"]
    if show_fallback:
        headers.append("Router fell back")
    table_rows = []
    for task, by in tasks.items():
        row = [task, fmt(_num(u.get(task)))]
        for m in methods:
            r = by.get(m, {})
            row += [fmt(r.get("model")), fmt(_num(r.get("acc")))]
        if show_fallback:
            row.append(fmt(by.get("Router", {}).get("fell_back")))
        table_rows.append(row)
    numeric = [False, True] + [False, True] * len(methods) + ([False] if show_fallback else [])
    return [Heading("Per task (alpha = 0)"), Table(headers, table_rows, numeric)]


def _sweep_blocks(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[Block]:
    sweep = _dict(results.get("sweep"))
    alphas = _list(sweep.get("alphas"))
    if not alphas:
        return []
    methods = _dict(sweep.get("methods"))
    names = _ordered(methods, SWEEP_METHOD_ORDER)
    extras = [
        (label, key)
        for label, key in (("pred. acc", "predictor_acc"), ("p MAE", "p_mae"))
        if f"{key}_mean" in sweep
    ]
    rows = []
    for i, a in enumerate(alphas):
        row = [fmt(_num(a))]
        for m in names:
            md = _dict(methods[m])
            row.append(_fmt_pm(_at(_list(md.get("acc_mean")), i), _at(_list(md.get("acc_std")), i)))
        for _, key in extras:
            row.append(
                _fmt_pm(_at(_list(sweep.get(f"{key}_mean")), i), _at(_list(sweep.get(f"{key}_std")), i))
            )
        rows.append(row)
    headers = ["alpha"] + [_pretty(m) for m in names] + [label for label, _ in extras]
    blocks: list[Block] = [
        Heading("OOD-gap sweep (accuracy vs alpha, mean ± std over repeats)"),
        Table(headers, rows, [True] * len(headers)),
    ]
    return blocks + _images(figures, "accuracy_vs_alpha", "predictor_vs_alpha")


def _distance_blocks(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[Block]:
    rows = [r for r in _list(results.get("distance")) if isinstance(r, dict)]
    if not rows:
        return []
    cols = ("u", "pearson_S3", "pearson_S1", "spearman_S3")
    table = Table(
        ["task", *cols],
        [[fmt(r.get("task"))] + [fmt(_num(r.get(c))) for c in cols] for r in rows],
        [False] + [True] * len(cols),
    )
    blocks: list[Block] = [Heading("Correlation vs dataset distance"), table]
    fit = _fd_correlation_vs_distance(results)
    if fit is not None and "S3" in fit["trend"]:
        blocks.append(
            Paragraph(
                f"Least-squares trend of Pearson(S3) on u: slope {fmt(fit['trend']['S3']['slope'])}, "
                f"intercept {fmt(fit['trend']['S3']['intercept'])}."
            )
        )
    return blocks + _images(figures, "correlation_vs_distance")


def _small_model_blocks(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[Block]:
    sm = _dict(results.get("small_models"))
    if not sm:
        return []
    blocks: list[Block] = [
        Heading("Routing among small models"),
        Paragraph(
            f"Candidates: {fmt(sm.get('n_candidates'))} models with at most {fmt(sm.get('limit_b'))}B "
            f"parameters; largest model: {fmt(sm.get('largest_model'))} "
            f"({fmt(_num(sm.get('largest_params_b')), 1)}B)."
        ),
    ]
    summ = _dict(sm.get("summary"))
    if summ:
        keys = [(k, label) for k, _, label in SMALL_MODEL_SERIES if k in summ]
        keys += [(k, k) for k in summ if k not in {k for k, _, _ in SMALL_MODEL_SERIES}]
        blocks.append(
            Table(["Method", "mean acc"], [[label, fmt(_num(summ[k]))] for k, label in keys], [False, True])
        )
    rows = [r for r in _list(sm.get("per_task")) if isinstance(r, dict)]
    if rows:
        cols = ("router_acc", "bma_small_acc", "largest_acc", "oracle_small_acc")
        blocks.append(
            Table(
                ["task", "router model", *cols],
                [
                    [fmt(r.get("task")), fmt(r.get("router_model"))] + [fmt(_num(r.get(c))) for c in cols]
                    for r in rows
                ],
                [False, False] + [True] * len(cols),
            )
        )
    return blocks + _images(figures, "small_models")


def _instance_blocks(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[Block]:
    inst = _dict(results.get("instance"))
    if not inst:
        return []
    blocks: list[Block] = [
        Heading("Per-instance routing"),
        Paragraph(
            f"Dataset {fmt(inst.get('dataset'))}, {fmt(inst.get('splits'))} random splits; "
            "scores are the mean metric of the model chosen for each test input."
        ),
    ]
    summ = _dict(inst.get("summary"))
    if summ:
        blocks.append(
            Table(
                ["Method", "mean score"],
                [[m, fmt(_num(summ[m]))] for m in _ordered(summ, INSTANCE_METHODS)],
                [False, True],
            )
        )
    rows = [r for r in _list(inst.get("sparsity")) if isinstance(r, dict)]
    if rows:
        methods = _ordered((k for r in rows for k in r if k in INSTANCE_METHODS), INSTANCE_METHODS)
        blocks.append(
            Table(
                ["C", *methods, "n train (mean)"],
                [
                    [fmt(_num(r.get("C")))]
                    + [fmt(_num(r.get(m))) for m in methods]
                    + [fmt(_num(r.get("n_train_mean")), 1)]
                    for r in rows
                ],
                [True] * (len(methods) + 2),
            )
        )
    return blocks + _images(figures, "instance_sparsity")


def _variant_blocks(results: Mapping[str, Any]) -> list[Block]:
    variants = _dict(results.get("variants"))
    if not variants:
        return []
    cols = (("Acc", "acc"), ("Pearson", "pearson"), ("p MAE", "p_mae"), ("pred. acc", "predictor_acc"))
    rows = [[name] + [fmt(_num(_dict(v).get(key))) for _, key in cols] for name, v in variants.items()]
    return [
        Heading("Predictor and p-estimator variants"),
        Table(["Variant"] + [h for h, _ in cols], rows, [False] + [True] * len(cols)),
    ]


def _cost_blocks(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[Block]:
    d = _fd_cost_frontier(results)
    if d is None:
        return []
    blocks: list[Block] = [Heading("Cost")]
    if d["points"]:
        pts = sorted(d["points"], key=lambda p: (_num(p["cost"]) is None, _num(p["cost"]) or 0.0))
        blocks.append(
            Table(
                ["model", "cost", "acc"],
                [[fmt(p["model"]), _fmt_g(p["cost"]), fmt(_num(p["acc"]))] for p in pts],
                [False, True, True],
            )
        )
    c = d["router_curve"]
    if c["cost"]:
        blocks.append(
            Table(
                ["lambda", "cost", "acc"],
                [
                    [_fmt_g(lam), _fmt_g(cost), fmt(_num(acc))]
                    for lam, cost, acc in zip(c["lambda"], c["cost"], c["acc"], strict=True)
                ],
                [True, True, True],
            )
        )
    aiq = _dict(_dict(results.get("cost")).get("aiq"))
    if aiq:
        blocks.append(
            Paragraph(
                f"Area under the accuracy-cost curve (AIQ): router {fmt(_num(aiq.get('router')))}, "
                f"best single model {fmt(_num(aiq.get('best_single')))}."
            )
        )
    return blocks + _images(figures, "cost_frontier")


def _active_blocks(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[Block]:
    active = _dict(results.get("active"))
    budgets = _list(active.get("budgets"))
    strategies = _dict(active.get("strategies"))
    if not budgets or not strategies:
        return []
    rows = [
        [fmt(b)]
        + [
            _fmt_pm(_at(_list(_dict(s).get("acc_mean")), i), _at(_list(_dict(s).get("acc_std")), i))
            for s in strategies.values()
        ]
        for i, b in enumerate(budgets)
    ]
    return [
        Heading("Active labeling (accuracy vs number of labels, mean ± std)"),
        Table(["labels", *strategies], rows, [True] * (len(strategies) + 1)),
        *_images(figures, "labels_vs_budget"),
    ]


def _study_blocks(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    tt = _fd_training_tasks(results)
    if tt is not None:
        blocks += [
            Heading("Routing vs number of training tasks"),
            Table(
                ["training tasks", "Blend (ungated)", "BMA"],
                [
                    [fmt(n), fmt(_num(a)), fmt(_num(b))]
                    for n, a, b in zip(
                        tt["x"], tt["series"]["Blend"]["mean"], tt["series"]["BMA"]["mean"], strict=True
                    )
                ],
                [True, True, True],
            ),
            *_images(figures, "training_tasks"),
        ]
    rows = [r for r in _list(_dict(results.get("groups")).get("groups")) if isinstance(r, dict)]
    if rows:
        blocks += [
            Heading("Leave-one-group-out"),
            Table(
                ["group", "tasks", "k", "lambda", "Blend (ungated)", "BMA", "Oracle"],
                [
                    [
                        fmt(r.get("group")),
                        fmt(r.get("n_tasks")),
                        fmt(r.get("k")),
                        _fmt_g(r.get("lambda")),
                        fmt(_num(r.get("Blend"))),
                        fmt(_num(r.get("BMA"))),
                        fmt(_num(r.get("Oracle"))),
                    ]
                    for r in rows
                ],
                [False] + [True] * 6,
            ),
            *_images(figures, "groups"),
        ]
    return blocks


def _mlp_blocks(results: Mapping[str, Any]) -> list[Block]:
    summary = _dict(_dict(results.get("mlp_variant")).get("summary"))
    if not summary:
        return []
    cols = ("predictor_acc", "S1", "S2", "MoE", "BMA")
    tasks = ", ".join(str(t) for t in _list(_dict(results.get("mlp_variant")).get("tasks")))
    return [
        Heading("Predictor variants: MLP vs kNN"),
        Paragraph(f"Held-out tasks: {tasks} (alpha = 0; accuracy of the model each score chooses)."),
        Table(
            ["predictor", "pred. acc", "S1", "S2", "MoE", "BMA"],
            [[name] + [fmt(_num(_dict(v).get(c))) for c in cols] for name, v in summary.items()],
            [False] + [True] * len(cols),
        ),
    ]


def _images(figures: Mapping[str, Any], *names: str) -> list[Block]:
    return [Image(n, FIGURE_CAPTIONS[n]) for n in names if n in figures]


# ============================================================================ per-query section
def _pq(results: Mapping[str, Any]) -> dict[str, Any]:
    return _dict(results.get("perquery"))


def _fd_pq_reliability(results: Mapping[str, Any]) -> dict[str, Any] | None:
    cal = _dict(_pq(results).get("calibration"))
    if not cal:
        return None
    return {
        rule: {
            "pred": [b.get("pred") for b in _list(c.get("bins"))],
            "obs": [b.get("obs") for b in _list(c.get("bins"))],
            "n": [b.get("n") for b in _list(c.get("bins"))],
            "ece": c.get("ece"),
        }
        for rule, c in cal.items()
        if isinstance(c, dict)
    }


def _fd_pq_traffic(results: Mapping[str, Any]) -> dict[str, Any] | None:
    tr = _dict(_pq(results).get("traffic"))
    if not tr:
        return None
    models: list[str] = []
    for shares in tr.values():
        for m, v in sorted(_dict(shares).items(), key=lambda kv: -(_num(kv[1]) or 0.0)):
            if m not in models and (_num(v) or 0.0) >= 0.02:
                models.append(m)
    models = models[:12]
    series = {rule: [_dict(s).get(m, 0.0) for m in models] for rule, s in tr.items()}
    for rule, s in tr.items():
        series[rule].append(max(0.0, 1.0 - sum(_num(_dict(s).get(m)) or 0.0 for m in models)))
    return {"x": [*models, "other"], "series": series}


def _fd_pq_session(results: Mapping[str, Any]) -> dict[str, Any] | None:
    sess = _dict(_pq(results).get("session"))
    rows = [r for r in _list(sess.get("rows")) if isinstance(r, dict)]
    pos = [p for p in _list(sess.get("positions")) if p != "whole"]
    if not rows or not pos:
        return None
    return {
        "x": [int(p) for p in pos],
        "series": {
            r["method"]: {"mean": [_dict(_dict(r.get("at")).get(p)).get("acc") for p in pos], "std": None}
            for r in rows
        },
    }


def _fd_pq_cost(results: Mapping[str, Any]) -> dict[str, Any] | None:
    c = _dict(_pq(results).get("cost"))
    if not c.get("single_models"):
        return None
    return {
        "points": c["single_models"],
        "single_hull": _list(c.get("single_hull")),
        "mixture": _list(c.get("mixture_weak_strong")),
        "weight": [[p.get("cost"), p.get("acc")] for p in _list(c.get("router_weight"))],
        "budget": [[p.get("cost"), p.get("acc")] for p in _list(c.get("router_budget"))],
        "unit": c.get("unit"),
    }


def _plot_pq_reliability(d: Mapping[str, Any]) -> Any:
    fig, (ax,) = _new_figure(6.0, 5.0)
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8, label="perfect")
    for rule, c in d.items():
        pts = [(_nan(p), _nan(o)) for p, o in zip(c["pred"], c["obs"], strict=True)]
        pts = [(p, o) for p, o in pts if not (math.isnan(p) or math.isnan(o))]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, label=f"{rule} (ECE {fmt(c['ece'])})")
    ax.set_xlabel("predicted probability that the model is correct")
    ax.set_ylabel("observed accuracy")
    ax.set_title("Per-query calibration (LOTO)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _plot_pq_traffic(d: Mapping[str, Any]) -> Any:
    fig, (ax,) = _new_figure(8.0, 4.5)
    x = np.arange(len(d["x"]))
    width = 0.8 / max(1, len(d["series"]))
    for i, (name, vals) in enumerate(d["series"].items()):
        ax.bar(x + i * width, [_nan(v) for v in vals], width, label=name)
    ax.set_xticks(x + width * (len(d["series"]) - 1) / 2, [str(m) for m in d["x"]], rotation=45, ha="right")
    ax.tick_params(axis="x", labelsize=6)
    ax.set_ylabel("share of queries")
    ax.set_title("Traffic per model (LOTO)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _plot_pq_session(d: Mapping[str, Any]) -> Any:
    return _line_figure(d, "queries already seen in the session (w)", "accuracy", "Session replay (LOTO)")


def _plot_pq_cost(d: Mapping[str, Any]) -> Any:
    fig, (ax,) = _new_figure()
    pts = d["points"]
    ax.scatter(
        [_nan(p["cost"]) for p in pts],
        [_nan(p["acc"]) for p in pts],
        color="tab:gray",
        zorder=3,
        label="single models",
    )
    for p in pts if len(pts) <= 20 else []:
        ax.annotate(
            str(p["model"]),
            (_nan(p["cost"]), _nan(p["acc"])),
            fontsize=6,
            xytext=(2, 2),
            textcoords="offset points",
        )
    for key, label, style in (
        ("single_hull", "hull of single models + mixtures", {"color": "tab:gray", "linestyle": ":"}),
        ("mixture", "random mixture cheapest / best", {"color": "tab:brown", "linestyle": "-."}),
        ("weight", "per-query router, cost weight", {"color": "tab:blue", "marker": "o", "markersize": 3}),
        ("budget", "per-query router, budget", {"color": "tab:orange", "marker": "s", "markersize": 3}),
    ):
        xy = sorted((_nan(c), _nan(a)) for c, a in d[key])
        if xy:
            ax.plot(*zip(*xy, strict=True), label=label, **style)
    ax.set_xlabel(f"mean cost per query ({d.get('unit') or 'cost'})")
    ax.set_ylabel("accuracy (task-averaged, LOTO)")
    ax.set_title("Per-query quality vs cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _pq_rows_table(rows: Sequence[Any]) -> Table:
    return Table(
        ["rule", "acc", "diff vs BMA", "paired SE", "n"],
        [
            [
                fmt(r.get("method")),
                fmt(_num(r.get("acc")), 4),
                _signed(r.get("diff_vs_bma")),
                fmt(_num(r.get("se")), 4),
                fmt(r.get("n_tasks")),
            ]
            for r in rows
            if isinstance(r, dict)
        ],
        [False, True, True, True, True],
    )


def _signed(v: Any) -> str:
    x = _num(v)
    return NULL if x is None else f"{x:+.4f}"


def _perquery_blocks(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[Block]:
    pq = _pq(results)
    if not pq:
        return []
    blocks: list[Block] = [
        Heading("Per-query routing"),
        Paragraph(
            f"Every rule routes each query alone through the product's decision function "
            f"(benchroute.method.perquery.decide_queries), with knobs fit on the training side only. "
            f"Target: {fmt(pq.get('target'))}. Differences to BMA are paired over tasks (splits for the "
            f"per-instance protocol)."
        ),
    ]
    for key, title in (
        ("loto", "Leave-one-task-out"),
        ("indist", "In-distribution split (stratified per task; mean over seeds)"),
        ("instance", "Per-instance protocol (random splits, continuous score)"),
    ):
        part = _dict(pq.get(key))
        if part.get("rows"):
            extra = f" on {part['dataset']}" if part.get("dataset") else ""
            blocks += [Heading(title + extra, level=3), _pq_rows_table(part["rows"])]
    sess = _dict(pq.get("session"))
    if sess.get("rows"):
        pos = [str(p) for p in _list(sess.get("positions"))]
        blocks += [
            Heading("Session replay (LOTO; diff vs BMA at the query after w earlier ones)", level=3),
            Table(
                ["rule", *[f"w={p}" if p != "whole" else "whole task" for p in pos]],
                [
                    [fmt(r.get("method"))]
                    + [_signed(_dict(_dict(r.get("at")).get(p)).get("diff_vs_bma")) for p in pos]
                    for r in sess["rows"]
                    if isinstance(r, dict)
                ],
                [False, *[True] * len(pos)],
            ),
        ]
    blocks += _images(figures, "pq_session")
    cal = _dict(pq.get("calibration"))
    if cal:
        blocks += [
            Heading("Calibration of the per-model probabilities (LOTO)", level=3),
            Table(
                ["rule", "ECE", "Brier"],
                [
                    [r, fmt(_num(_dict(c).get("ece")), 4), fmt(_num(_dict(c).get("brier")), 4)]
                    for r, c in cal.items()
                ],
                [False, True, True],
            ),
        ]
    blocks += _images(figures, "pq_reliability", "pq_traffic")
    for cost, protocol in (
        (_dict(pq.get("cost")), "LOTO"),
        (_dict(_dict(pq.get("indist")).get("cost")), "in-distribution"),
    ):
        blocks += _pq_cost_blocks(cost, protocol)
    blocks += _images(figures, "pq_cost")
    secs = _dict(pq.get("seconds"))
    if secs:
        blocks.append(Paragraph("Seconds: " + ", ".join(f"{k} {fmt(_num(v), 1)}" for k, v in secs.items())))
    return blocks


def _pq_cost_blocks(cost: Mapping[str, Any], protocol: str) -> list[Block]:
    blocks: list[Block] = []
    if cost.get("routellm"):
        rl, aq = _dict(cost.get("routellm")), _dict(cost.get("aiq"))
        blocks += [
            Heading(f"Per-query quality-cost curve ({protocol})", level=3),
            Paragraph(
                f"Weak (cheapest) model {fmt(_dict(cost.get('weak')).get('model'))}, strong (best) "
                f"model {fmt(_dict(cost.get('strong')).get('model'))}. APGR {fmt(_num(rl.get('apgr')))}; "
                f"cost at 50% of the quality gap {_fmt_g(rl.get('cpt50'))} "
                f"({fmt(_num(rl.get('cpt50_frac_of_strong')))} of the strong model's), at 80% "
                f"{_fmt_g(rl.get('cpt80'))} ({fmt(_num(rl.get('cpt80_frac_of_strong')))}). AIQ: router "
                f"{fmt(_num(aq.get('router')))}, "
                f"single models {fmt(_num(aq.get('single_models')))}. Smallest margin of the router's hull "
                f"over the hull of the single models and their mixtures: "
                f"{_signed(cost.get('min_margin_over_single_hull'))}."
            ),
            Table(
                ["cost weight", "mean cost", "acc"],
                [
                    [_fmt_g(p.get("cost_weight")), _fmt_g(p.get("cost")), fmt(_num(p.get("acc")), 4)]
                    for p in _list(cost.get("router_weight"))
                    if isinstance(p, dict)
                ],
                [True, True, True],
            ),
        ]
    return blocks


_FIGURE_DATA.update(
    {
        "pq_session": _fd_pq_session,
        "pq_reliability": _fd_pq_reliability,
        "pq_traffic": _fd_pq_traffic,
        "pq_cost": _fd_pq_cost,
    }
)
_PLOTTERS.update(
    {
        "pq_session": _plot_pq_session,
        "pq_reliability": _plot_pq_reliability,
        "pq_traffic": _plot_pq_traffic,
        "pq_cost": _plot_pq_cost,
    }
)
FIGURE_CAPTIONS.update(
    {
        "pq_session": "Session replay: accuracy of the query that follows w earlier queries of its task "
        "(LOTO, mean over random orders and tasks).",
        "pq_reliability": "Reliability diagram of each per-query rule's per-model probabilities (LOTO).",
        "pq_traffic": "Share of the LOTO queries each rule routes to each model.",
        "pq_cost": "Per-query quality vs cost (LOTO): the router with a cost weight or a budget, the single "
        "models, their hull (with random mixtures) and the mixture of the cheapest and the best model.",
    }
)


def _document(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[Block]:
    """The whole report as blocks, in order; shared by the Markdown and HTML renderers."""
    config = _dict(results.get("config"))
    name = config.get("dataset") or _dict(results.get("dataset")).get("name") or "experiment"
    blocks: list[Block] = [
        Heading(f"benchroute report: {name}", level=1),
        Paragraph(
            "Routing a new task to one of several LLMs, learned only from benchmark results "
            "(Shnitzer et al., 2023, arXiv 2309.15789)."
        ),
    ]
    blocks += _config_blocks(results)
    blocks += _summary_blocks(results)
    blocks += _paired_blocks(results)
    blocks += _per_task_blocks(results)
    blocks += _sweep_blocks(results, figures)
    blocks += _distance_blocks(results, figures)
    blocks += _small_model_blocks(results, figures)
    blocks += _instance_blocks(results, figures)
    blocks += _variant_blocks(results)
    blocks += _cost_blocks(results, figures)
    blocks += _active_blocks(results, figures)
    blocks += _study_blocks(results, figures)
    blocks += _mlp_blocks(results)
    blocks += _perquery_blocks(results, figures)
    return blocks


# ============================================================================ renderers
def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    head = "| " + " | ".join(_md_cell(h) for h in t.headers) + " |"
    rule = "|" + "|".join("---:" if t.is_numeric(j) else "---" for j in range(len(t.headers))) + "|"
    body = ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join([head, rule, *body])


def _md_link(path: Path, base_dir: Path | None) -> str:
    """Image link relative to the report: relative to ``base_dir`` if given, else the bare file name
    for absolute paths (write_report puts figures next to the report)."""
    path = Path(path)
    if base_dir is not None:
        try:
            return path.resolve().relative_to(Path(base_dir).resolve()).as_posix()
        except ValueError:
            pass
    return path.name if path.is_absolute() else path.as_posix()


def render_markdown(
    results: Mapping[str, Any], figures: Mapping[str, Path], base_dir: Path | None = None
) -> str:
    """report.md text; figures are relative image links (see ``_md_link``)."""
    parts: list[str] = []
    for b in _document(results, figures):
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + b.text)
        elif isinstance(b, Paragraph):
            parts.append(b.text)
        elif isinstance(b, Table):
            parts.append(_md_table(b))
        else:
            parts.append(f"![{b.caption}]({_md_link(figures[b.name], base_dir)})\n\n*{b.caption}*")
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #555; }
""".strip()


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.headers)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="num">{e(c)}</td>' if t.is_numeric(j) else f"<td>{e(c)}</td>"
            for j, c in enumerate(row)
        )
        + "</tr>"
        for row in t.rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def render_html(results: Mapping[str, Any], figures: Mapping[str, Path]) -> str:
    """Self-contained report.html: inline CSS, figures as base64 data URIs, no external resources.

    A figure whose file cannot be read is left out rather than linked, to stay self-contained.
    """
    e = html.escape
    images: dict[str, str] = {}
    for name, path in figures.items():
        try:
            images[name] = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        except OSError:
            continue
    blocks = _document(results, {k: v for k, v in figures.items() if k in images})
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "benchroute report")
    parts: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            parts.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Table):
            parts.append(_html_table(b))
        else:
            parts.append(
                f'<figure><img src="data:image/png;base64,{images[b.name]}" alt="{e(b.caption)}">'
                f"<figcaption>{e(b.caption)}</figcaption></figure>"
            )
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{e(title)}</title>\n'
        f"<style>\n{_CSS}\n</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def write_report(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the figures, report.md and report.html into ``out_dir``; {"md", "html", <figure>: path}.

    Each file is written atomically; the reports are written after the figures they reference.
    """
    out_dir = Path(out_dir)
    figures = write_figures(results, out_dir)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md_path, render_markdown(results, figures, base_dir=out_dir))
    atomic_write_text(html_path, render_html(results, figures))
    return {"md": md_path, "html": html_path, **figures}
