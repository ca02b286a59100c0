"""HELM ``benchmark_output`` run directories -> benchmark directory.

HELM (the paper's data source) writes one directory per (scenario, model) run with
``run_spec.json``, ``instances.json`` and ``display_predictions.json``; the latter holds, per
instance and train trial, the per-instance metric values. A task here is a run spec without its
model (``babi_qa:task=15``), so runs of different models on the same scenario become one task.

Choices, each because the router needs one number per (item, model):

* HELM repeats each instance over ``num_train_trials`` different few-shot draws; the score is the
  **mean over trials** (the trials measure the same model on the same question, and HELM's own
  aggregate is the mean of the per-trial means, which this equals when every trial covers every
  instance). With several trials a 0/1 metric becomes a fraction, so the task gets threshold 0.5:
  correct = right in a strict majority of trials (a 1-of-2 tie counts as wrong). Runs with one
  trial stay 0/1 and need no threshold.
* Perturbed copies of instances (robustness/fairness augmentations) are skipped: they are variants
  of the same question, not new questions.
* The metric is the first of :data:`METRIC_PREFERENCE` that every run of the task reports per
  prediction (HELM's display files carry only the main metrics), unless ``metric=`` is given.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchroute.data.adapters.table import ImportedBenchmark, as_score, build_benchmark, read_json, require
from benchroute.data.benchmark import BENCHMARK_FILES
from benchroute.errors import DataError
from benchroute.files import check_output_dir

METRIC_PREFERENCE = (
    "exact_match",
    "quasi_exact_match",
    "prefix_exact_match",
    "quasi_prefix_exact_match",
    "exact_match_indicator",
    "final_number_exact_match",
    "math_equiv",
    "math_equiv_chain_of_thought",
    "code_eval_acc",
    "f1_score",
    "rouge_l",
    "rouge_2",
    "bleu_4",
)
"""Per-instance HELM metrics in order of preference: correctness first, overlap scores last."""

_RUN_FILES = ("run_spec.json", "instances.json", "display_predictions.json")


@dataclass(frozen=True)
class _Run:
    """One HELM run reduced to what we need: its task, model, inputs and raw predictions."""

    path: Path
    task: str
    model: str
    group: str | None
    inputs: dict[str, str]
    predictions: list[tuple[int, dict[str, Any]]]
    empty_inputs: int
    splits: list[str]

    def metrics(self) -> set[str]:
        """Metric names reported by every prediction of this run."""
        names = [set(p["stats"]) for _, p in self.predictions]
        return set.intersection(*names) if names else set()


def split_run_name(name: str) -> tuple[str, str | None]:
    """``"babi_qa:task=15,model=A_b"`` -> ``("babi_qa:task=15", "A_b")``.

    ``model_deployment=`` is dropped as well: like ``model=`` it names who answered, not what was asked.
    """
    scenario, _, args = name.partition(":")
    kept: list[str] = []
    model = None
    for arg in filter(None, args.split(",")):
        key, _, value = arg.partition("=")
        if key == "model":
            model = value
        elif key != "model_deployment":
            kept.append(arg)
    return (f"{scenario}:{','.join(kept)}" if kept else scenario), model


def _load_run(run_dir: Path, split: str | None) -> _Run:
    for fname in _RUN_FILES:
        if not (run_dir / fname).is_file():
            raise DataError(
                "file not found",
                file=str(run_dir / fname),
                hint=f"a HELM run directory holds {', '.join(_RUN_FILES)}",
            )
    spec_path = run_dir / "run_spec.json"
    spec = read_json(spec_path)
    task, name_model = split_run_name(require(spec, "name", str, file=spec_path))
    adapter = spec.get("adapter_spec") if isinstance(spec, dict) else None
    model = adapter.get("model") if isinstance(adapter, dict) else None
    model = model or name_model
    if not isinstance(model, str) or not model:
        raise DataError(
            "no model: neither adapter_spec.model nor a model= part in the run name", file=str(spec_path)
        )
    groups = spec.get("groups")
    group = groups[0] if isinstance(groups, list) and groups and isinstance(groups[0], str) else None

    inst_path = run_dir / "instances.json"
    instances = read_json(inst_path)
    if not isinstance(instances, list):
        raise DataError(
            f"expected a JSON list of instances, got {type(instances).__name__}", file=str(inst_path)
        )
    inputs: dict[str, str] = {}
    empty = 0
    for i, inst in enumerate(instances, start=1):
        where = f"instance #{i}"
        inst_id = require(inst, "id", str, file=inst_path, where=where)
        if "perturbation" in inst or (split is not None and inst.get("split") != split):
            continue
        text = require(
            require(inst, "input", dict, file=inst_path, where=where),
            "text",
            str,
            file=inst_path,
            where=f"{where} input",
        )
        if not text.strip():
            empty += 1
            continue
        inputs[inst_id] = text
    splits = sorted({str(inst.get("split")) for inst in instances})

    pred_path = run_dir / "display_predictions.json"
    raw = read_json(pred_path)
    if not isinstance(raw, list):
        raise DataError(f"expected a JSON list of predictions, got {type(raw).__name__}", file=str(pred_path))
    predictions = []
    for i, pred in enumerate(raw, start=1):
        where = f"prediction #{i}"
        inst_id = require(pred, "instance_id", str, file=pred_path, where=where)
        if inst_id in inputs and "perturbation" not in pred:
            require(pred, "stats", dict, file=pred_path, where=where)
            predictions.append((i, pred))
    if inputs and not predictions:
        raise DataError(
            "no prediction for any of the run's instances",
            file=str(pred_path),
            hint="the run did not finish, or instances.json belongs to another run",
        )
    return _Run(run_dir, task, model, group, inputs, predictions, empty, splits)


def _choose_metric(task: str, runs: list[_Run], metric: str | None) -> str:
    available = set.intersection(*(r.metrics() for r in runs))
    if metric is not None:
        if metric in available:
            return metric
        raise DataError(
            f"task '{task}': metric '{metric}' is not reported per prediction by every run "
            f"(available: {', '.join(sorted(available)) or 'none'})",
            file=str(runs[0].path / "display_predictions.json"),
            hint="choose one of the available metrics",
        )
    for name in METRIC_PREFERENCE:
        if name in available:
            return name
    raise DataError(
        f"task '{task}': none of the known correctness metrics is reported per prediction "
        f"(available: {', '.join(sorted(available)) or 'none'})",
        file=str(runs[0].path / "display_predictions.json"),
        hint="name the metric to use with metric=",
    )


def _run_rows(run: _Run, metric: str) -> list[tuple[str, str, str, str, float]]:
    """(task, item_id, input, model, score) per instance, the score averaged over train trials.

    Multiple-choice-separate runs list one prediction per answer option, each carrying the same
    per-trial stats, so only the first prediction of each (instance, trial) counts.
    """
    per_trial: dict[tuple[str, Any], float] = {}
    pred_path = run.path / "display_predictions.json"
    for i, pred in run.predictions:
        key = (pred["instance_id"], pred.get("train_trial_index"))
        if key not in per_trial:
            per_trial[key] = as_score(
                pred["stats"].get(metric), file=pred_path, column=metric, where=f"prediction #{i}"
            )
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for (inst_id, _), value in per_trial.items():
        total[inst_id] += value
        count[inst_id] += 1
    return [
        (run.task, inst_id, text, run.model, total[inst_id] / count[inst_id])
        for inst_id, text in run.inputs.items()
        if count[inst_id]
    ]


def find_runs(runs_dir: Path) -> list[Path]:
    """Run directories under ``runs_dir`` (itself one, or any folder above many), sorted."""
    if not runs_dir.exists():
        raise DataError("directory not found", file=str(runs_dir))
    found = sorted(p.parent for p in runs_dir.rglob("run_spec.json"))
    if not found:
        raise DataError(
            "no run_spec.json found",
            file=str(runs_dir),
            hint="point at a HELM run directory or at benchmark_output/runs/<suite>",
        )
    return found


def helm_to_benchmark(
    runs_dir: str | Path, *, split: str | None = None, metric: str | None = None
) -> ImportedBenchmark:
    """The pure part of :func:`import_helm`: read the runs and build the benchmark tables."""
    runs = [_load_run(p, split) for p in find_runs(Path(runs_dir))]
    skipped = [
        f"{r.path}: skipped, "
        + (
            f"all {r.empty_inputs} instances have an empty input text"
            if r.empty_inputs
            else f"no instances in split {split!r} (splits present: {', '.join(r.splits)})"
        )
        for r in runs
        if not r.inputs
    ]
    runs = [r for r in runs if r.inputs]
    if not runs:
        raise DataError(
            f"nothing to import; {skipped[0]}",
            hint="pass one of the splits present, or none for all",
        )
    by_task: dict[str, list[_Run]] = defaultdict(list)
    seen: dict[tuple[str, str], Path] = {}
    for run in runs:
        key = (run.task, run.model)
        if key in seen:
            raise DataError(
                f"two runs of model '{run.model}' on task '{run.task}': {seen[key]} and {run.path}",
                hint="import one suite at a time (point at benchmark_output/runs/<suite>)",
            )
        seen[key] = run.path
        by_task[run.task].append(run)
    rows: list[tuple[str, str, str, str, float]] = []
    metrics: dict[str, str] = {}
    groups: dict[str, str | None] = {}
    for task, task_runs in sorted(by_task.items()):
        metrics[task] = _choose_metric(task, task_runs, metric)
        groups[task] = task_runs[0].group
        for run in sorted(task_runs, key=lambda r: r.model):
            run_rows = _run_rows(run, metrics[task])
            if len(run_rows) < len(run.inputs):
                skipped.append(f"{run.path}: {len(run.inputs) - len(run_rows)} instances without predictions")
            if run.empty_inputs:
                skipped.append(f"{run.path}: {run.empty_inputs} instances with empty input text")
            rows += run_rows
    long = pd.DataFrame(rows, columns=["task", "item_id", "input", "model", "score"])
    return build_benchmark(long, metric=metrics, group=groups, skipped=skipped)


def import_helm(
    runs_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str | None = None,
    metric: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Import HELM run directories (one, or all under a folder) as a benchmark directory.

    ``split`` keeps only instances of that split (HELM uses "test" and "valid"); ``metric`` names
    the per-prediction stat to score with (default: the first of :data:`METRIC_PREFERENCE` that
    every run of a task reports). Runs of several models on one task are merged, keeping the
    instances every model answered; the summary says how many were dropped.
    ``force`` replaces a non-empty ``out_dir`` as a whole; it may never hold the source.
    """
    check_output_dir(out_dir, option="-o", replaceable=BENCHMARK_FILES, force=force, protect=[runs_dir])
    return helm_to_benchmark(runs_dir, split=split, metric=metric).write(
        out_dir, force=force, protect=[runs_dir]
    )
