"""lm-evaluation-harness ``--log_samples`` output -> benchmark directory.

The harness writes, per model run, a folder (named after the model, ``org__name``) holding
``results_<timestamp>.json`` (aggregates and the run config) and one
``samples_<task>_<timestamp>.jsonl`` per task: one JSON object per (document, filter) with
``doc_id``, ``doc``, ``arguments`` (the requests sent to the model), ``filter``, ``metrics`` (the
metric names) and each metric's value as a top-level key.

Choices, each because the router needs one number and one prompt per (item, model):

* **Model** = ``model_name`` of the newest results file, else ``pretrained=``/``model=`` in its
  ``config.model_args``, else the folder name with the harness's ``__`` turned back into ``/``.
* **Filter**: a task scored under several answer-extraction filters (gsm8k: "strict-match",
  "flexible-extract") logs every document once per filter; we keep one, ``filter=`` if the task has
  it, else the first the file lists.
* **Metric**: ``metric=`` where the task logs it, else the first of the sample's ``metrics`` list
  (e.g. ``acc`` rather than ``acc_norm``).
  Both flags apply to the tasks that log the name and leave the others at their default, so one
  flag serves an import of mixed tasks; a name that no task logs is an error. tasks.csv records
  what each task was scored with in the harness's ``metric,filter`` notation (``acc,none``).
* **Input** = the context of the first request (``arg_0``), i.e. the prompt exactly as sent,
  few-shot examples and chat template included; if there is none, the document itself.
* **Item id** = ``doc_id``. Several samples files of one task in one folder are re-runs: the
  newest is used and the others are reported as skipped.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchroute.data.adapters.table import (
    ImportedBenchmark,
    as_score,
    build_benchmark,
    read_json,
    read_jsonl,
    require,
)
from benchroute.data.benchmark import BENCHMARK_FILES
from benchroute.errors import DataError
from benchroute.files import check_output_dir

_SAMPLES_NAME = re.compile(
    r"^samples_(?P<task>.+?)(?:_(?P<date>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?))?\.jsonl(?:\.gz)?$"
)


@dataclass(frozen=True)
class _TaskSamples:
    """The samples of one task for one model, reduced to one filter and one metric."""

    task: str
    model: str
    path: Path
    filter: str
    metric: str
    rows: list[tuple[str, str, float]]  # (item_id, input, score)


def _model_args(value: Any) -> dict[str, Any]:
    """``"pretrained=org/name,dtype=float32"`` (or the dict newer harness versions log) as a dict."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return dict(part.partition("=")[::2] for part in value.split(",") if "=" in part)
    return {}


def _run_info(run_dir: Path) -> tuple[str, dict[str, str]]:
    """Model name and task -> group map of the run in ``run_dir`` (newest results file)."""
    results_files = sorted(run_dir.glob("results_*.json"))
    if not results_files:
        return run_dir.name.replace("__", "/"), {}
    path = results_files[-1]
    results = read_json(path)
    if not isinstance(results, dict):
        raise DataError(f"expected a JSON object, got {type(results).__name__}", file=str(path))
    group_subtasks = results.get("group_subtasks")
    groups = {
        str(sub): str(group)
        for group, subs in (group_subtasks.items() if isinstance(group_subtasks, dict) else ())
        if isinstance(subs, list)
        for sub in subs
        if sub != group
    }
    name = results.get("model_name")
    if isinstance(name, str) and name:
        return name, groups
    config = results["config"] if isinstance(results.get("config"), dict) else {}
    args = _model_args(config.get("model_args"))
    for key in ("pretrained", "model", "path"):
        if isinstance(args.get(key), str) and args[key]:
            return args[key], groups
    return run_dir.name.replace("__", "/"), groups


def _first_context(arguments: Any) -> str | None:
    """``arg_0`` of the first request, in the dict form the harness writes or the older list form."""
    if isinstance(arguments, dict) and arguments:
        first = arguments.get("gen_args_0", next(iter(arguments.values())))
        context = first.get("arg_0") if isinstance(first, dict) else None
    elif isinstance(arguments, list) and arguments:
        first = arguments[0]
        context = first[0] if isinstance(first, list) and first else first
    else:
        context = None
    return context if isinstance(context, str) and context.strip() else None


def _input_text(sample: dict[str, Any]) -> str:
    context = _first_context(sample.get("arguments"))
    if context is not None:
        return context
    doc = sample.get("doc")
    return doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False, sort_keys=True)


def _choose(requested: str | None, logged: list[str]) -> str:
    """``requested`` where this task logs it, else the task's first: one flag serves mixed tasks."""
    return requested if requested in logged else logged[0]


def _read_task_samples(
    path: Path, task: str, model: str, metric: str | None, filter: str | None
) -> _TaskSamples:
    samples = list(read_jsonl(path))
    if not samples:
        raise DataError("no samples in file", file=str(path))
    filters = list(dict.fromkeys(str(s.get("filter", "none")) for _, s in samples))
    chosen_filter = _choose(filter, filters)
    first_line, first = samples[0]
    listed = first.get("metrics")
    names = [str(n) for n in listed] if isinstance(listed, list) else []
    if metric is not None and metric in first and metric not in names:
        names.append(metric)
    if not names:
        raise DataError(
            "the sample has no 'metrics' list",
            file=str(path),
            row=first_line,
            hint="name the metric with metric=",
        )
    chosen_metric = _choose(metric, names)
    rows: list[tuple[str, str, float]] = []
    line_of: dict[str, int] = {}
    for lineno, sample in samples:
        if str(sample.get("filter", "none")) != chosen_filter:
            continue
        item_id = str(require(sample, "doc_id", (int, str), file=path, row=lineno))
        if item_id in line_of:
            raise DataError(
                f"doc_id {item_id} repeated (first on line {line_of[item_id]}) for filter '{chosen_filter}'",
                file=str(path),
                row=lineno,
                hint="samples from two runs were concatenated; keep one run per file",
            )
        line_of[item_id] = lineno
        value = require(sample, chosen_metric, object, file=path, row=lineno)
        rows.append(
            (item_id, _input_text(sample), as_score(value, file=path, row=lineno, column=chosen_metric))
        )
    return _TaskSamples(task, model, path, chosen_filter, chosen_metric, rows)


def _samples_files(root: Path) -> tuple[dict[tuple[Path, str], Path], list[str]]:
    """Newest samples file per (run folder, task); older re-runs are reported as skipped."""
    if not root.exists():
        raise DataError("directory not found", file=str(root))
    by_key: dict[tuple[Path, str], list[tuple[str, Path]]] = defaultdict(list)
    for path in root.rglob("samples_*.jsonl*"):
        match = _SAMPLES_NAME.match(path.name)
        if match:
            by_key[(path.parent, match["task"])].append((match["date"] or "", path))
    if not by_key:
        raise DataError(
            "no samples_<task>_<timestamp>.jsonl files found",
            file=str(root),
            hint="run lm_eval with --log_samples --output_path DIR and point at DIR",
        )
    newest: dict[tuple[Path, str], Path] = {}
    skipped: list[str] = []
    for key, files in sorted(by_key.items()):
        files.sort()
        newest[key] = files[-1][1]
        skipped += [
            f"{p}: older run of task '{key[1]}', superseded by {files[-1][1].name}" for _, p in files[:-1]
        ]
    return newest, skipped


def lmeval_to_benchmark(
    dir: str | Path, *, metric: str | None = None, filter: str | None = None
) -> ImportedBenchmark:
    """The pure part of :func:`import_lmeval`: read the samples and build the benchmark tables."""
    files, skipped = _samples_files(Path(dir))
    runs = {folder: _run_info(folder) for folder in sorted({folder for folder, _ in files})}
    per_task: dict[str, list[_TaskSamples]] = defaultdict(list)
    groups: dict[str, str | None] = {}
    for (folder, task), path in sorted(files.items()):
        model, task_groups = runs[folder]
        ts = _read_task_samples(path, task, model, metric, filter)
        for other in per_task[task]:
            if other.model == model:
                raise DataError(
                    f"two runs of model '{model}' on task '{task}': {other.path} and {path}",
                    hint="keep one output folder per model",
                )
            if (other.metric, other.filter) != (ts.metric, ts.filter):
                raise DataError(
                    f"task '{task}' is scored with {ts.metric}/{ts.filter} here but with "
                    f"{other.metric}/{other.filter} in {other.path}",
                    file=str(path),
                    hint="pass metric= and filter= to score every model alike",
                )
        per_task[task].append(ts)
        groups[task] = task_groups.get(task)
    for what, requested in (("metric", metric), ("filter", filter)):
        if requested is not None and not any(
            getattr(ts, what) == requested for v in per_task.values() for ts in v
        ):
            raise DataError(
                f"no task logs the {what} '{requested}'", file=str(dir), hint=f"check the {what} name"
            )
    long = pd.DataFrame(
        [
            (ts.task, item_id, text, ts.model, score)
            for task in sorted(per_task)
            for ts in sorted(per_task[task], key=lambda t: t.model)
            for item_id, text, score in ts.rows
        ],
        columns=["task", "item_id", "input", "model", "score"],
    )
    # The harness's own "metric,filter" notation, as in the keys of results_*.json.
    metrics = {task: f"{v[0].metric},{v[0].filter}" for task, v in per_task.items()}
    return build_benchmark(long, metric=metrics, group=groups, skipped=skipped)


def import_lmeval(
    dir: str | Path,
    out_dir: str | Path,
    *,
    metric: str | None = None,
    filter: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Import lm-evaluation-harness ``--log_samples`` output (one folder per model run).

    ``dir`` is the harness's ``--output_path`` (or one model folder under it). ``metric`` and
    ``filter`` choose what to score with, for the tasks that log them (see the module docstring
    for the defaults). Models are merged per task on ``doc_id``, keeping the documents every model
    was evaluated on (``--limit`` runs of different sizes); the summary says how many were dropped.
    ``force`` replaces a non-empty ``out_dir`` as a whole; it may never hold the source.
    """
    check_output_dir(out_dir, option="-o", replaceable=BENCHMARK_FILES, force=force, protect=[dir])
    return lmeval_to_benchmark(dir, metric=metric, filter=filter).write(out_dir, force=force, protect=[dir])
