"""Long tables of per-question results, and the core every import adapter reduces to.

Every leaderboard export, whatever its shape, comes down to a *long table*: one row per
(task, item, model) with the prompt text and the metric value. This module turns such a table into
the four tables of a benchmark directory (docs/data-format.md) in :func:`build_benchmark`, and reads the
JSON/JSONL files the other adapters parse with :func:`read_json` / :func:`read_jsonl`, so that a
malformed file always becomes one :class:`~benchroute.errors.DataError` naming the file and line.

The router needs a *complete* score matrix (every model scored on every item of every task), while
real exports are ragged: a model missing from a task, an item one run skipped. :func:`build_benchmark`
makes the matrix complete by dropping the least data it can and reports every drop, so nothing
disappears silently.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd

from benchroute.data.benchmark import BENCHMARK_FILES, write_benchmark
from benchroute.data.text import cell_text, check_distinct_names
from benchroute.errors import DataError
from benchroute.files import check_output_dir, open_regular

DEFAULT_THRESHOLD = 0.5
"""eta_d given to a task whose scores are not all 0/1: correct = score > 0.5 (e.g. a majority of trials)."""

LONG_COLUMNS = ("task", "item_id", "input", "model", "score")


# --------------------------------------------------------------------------- reading files


@contextlib.contextmanager
def _open_text(path: Path) -> Iterator[IO[str]]:
    """Open a UTF-8 text file through the read guard (a regular file within the size cap, else one
    DataError naming it), transparently gunzipping ``*.gz``. Lines end at ``\n`` only."""
    with open_regular(path, "json") as raw:
        binary: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw  # type: ignore[assignment]
        with io.TextIOWrapper(binary, encoding="utf-8", newline="\n") as text:
            yield text


def read_json(path: Path) -> Any:
    """Parse one JSON document; bad bytes or syntax become a DataError with the line number."""
    try:
        with _open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})",
            file=str(path),
            hint="the file is truncated or not JSON; re-export it",
        ) from None
    except RecursionError:
        raise DataError(
            "JSON nested too deeply", file=str(path), hint="the file is not a results file"
        ) from None
    except (UnicodeDecodeError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"cannot decode file: {e}", file=str(path)) from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSON-lines file."""
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"invalid JSON on this line: {e.msg} (column {e.colno})", file=str(path), row=lineno
                    ) from None
                except RecursionError:
                    raise DataError("JSON nested too deeply", file=str(path), row=lineno) from None
                if not isinstance(obj, dict):
                    raise DataError(
                        f"expected a JSON object, got {type(obj).__name__}", file=str(path), row=lineno
                    )
                yield lineno, obj
    except (UnicodeDecodeError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"cannot decode file: {e}", file=str(path)) from None


def require(
    obj: Any, key: str, kind: type | tuple[type, ...], *, file: Path, row: int | None = None, where: str = ""
) -> Any:
    """``obj[key]`` checked to be of ``kind``; anything else is a DataError naming the field.

    ``where`` locates the object inside a file without line numbers (e.g. "prediction #12").
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(obj, dict):
        raise DataError(f"{prefix}expected a JSON object, got {type(obj).__name__}", file=str(file), row=row)
    if key not in obj:
        present = ", ".join(sorted(map(str, obj))) or "none"
        raise DataError(f"{prefix}missing field '{key}' (fields present: {present})", file=str(file), row=row)
    value = obj[key]
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(k.__name__ for k in kinds)
        raise DataError(
            f"{prefix}field '{key}' must be {expected}, got {type(value).__name__}",
            file=str(file),
            row=row,
            column=key,
        )
    return value


def as_score(
    value: Any, *, file: Path, row: int | None = None, column: str | None = None, where: str = ""
) -> float:
    """A metric value as a finite float (JSON booleans count as 0/1), else a DataError."""
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool | int | float) and math.isfinite(float(value)):
        return float(value)
    raise DataError(
        f"{prefix}score must be a finite number, got {value!r}",
        file=str(file),
        row=row,
        column=column,
        hint="pick a per-question scalar metric",
    )


# --------------------------------------------------------------------------- building a benchmark


@dataclass(frozen=True)
class ImportedBenchmark:
    """The four tables of a benchmark directory, plus an account of what was dropped to make them."""

    items: pd.DataFrame
    scores: pd.DataFrame
    models: pd.DataFrame
    tasks: pd.DataFrame
    skipped: list[str] = field(default_factory=list)
    items_dropped: int = 0
    input_mismatches: int = 0

    def write(
        self, out_dir: str | Path, *, force: bool = False, protect: Sequence[str | Path] = ()
    ) -> dict[str, Any]:
        """Write the benchmark directory (all at once) and return the summary every adapter reports.

        ``out_dir`` must be new, empty or an earlier benchmark unless ``force``; it may never hold
        one of ``protect`` (the import's source), see :func:`~benchroute.data.benchmark.write_benchmark`.
        """
        out = write_benchmark(
            Path(out_dir), self.items, self.scores, self.models, self.tasks, force=force, protect=protect
        )
        return self.summary(out)

    def summary(self, out: str | Path | None = None) -> dict[str, Any]:
        """Counts, output path, thresholds eta_d and every drop, for the CLI to print."""
        thresholds = {
            str(t): (None if pd.isna(v) else float(v))
            for t, v in zip(self.tasks["task"], self.tasks["threshold"], strict=False)
        }
        return {
            "tasks": len(self.tasks),
            "items": len(self.items),
            "models": len(self.models),
            "scores": len(self.scores),
            "out": None if out is None else str(out),
            "items_dropped": self.items_dropped,
            "input_mismatches": self.input_mismatches,
            "thresholds": thresholds,
            "skipped": list(self.skipped),
        }


def _drop_uncovered(long: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop models or tasks until every model has results on every task.

    Greedy: each step removes the model or task that loses the fewest score rows per missing
    (task, model) pair it resolves, so one stray run of an extra model on a single task costs that
    model, not every other task (and a task run by few models costs that task, not the models).
    """
    skipped: list[str] = []
    while True:
        present = set(zip(long["task"], long["model"], strict=False))
        tasks = sorted(set(long["task"]))
        models = sorted(set(long["model"]))
        if len(present) == len(tasks) * len(models):
            return long, skipped
        rows_per_task = long["task"].value_counts()
        rows_per_model = long["model"].value_counts()
        candidates = []
        for m in models:
            missing = [t for t in tasks if (t, m) not in present]
            if missing:
                candidates.append((rows_per_model[m] / len(missing), 0, m, "model", missing))
        for t in tasks:
            missing = [m for m in models if (t, m) not in present]
            if missing:
                candidates.append((rows_per_task[t] / len(missing), 1, t, "task", missing))
        _, _, name, kind, missing = min(candidates)
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        if kind == "model":
            skipped.append(f"model {name}: dropped, no results on task(s) {shown}")
            long = long[long["model"] != name]
        else:
            skipped.append(f"task {name}: dropped, no results for model(s) {shown}")
            long = long[long["task"] != name]


def _task_thresholds(
    scores: pd.DataFrame, threshold: float | Mapping[str, float | None] | None
) -> dict[str, float | None]:
    """eta_d per task: the given one, else blank for 0/1 scores and DEFAULT_THRESHOLD otherwise."""
    result: dict[str, float | None] = {}
    for task, values in scores.groupby("task", sort=True)["score"]:
        given = threshold.get(str(task)) if isinstance(threshold, Mapping) else threshold
        if given is not None:
            result[str(task)] = float(given)
        elif values.isin((0.0, 1.0)).all():
            result[str(task)] = None
        else:
            result[str(task)] = DEFAULT_THRESHOLD
    return result


def build_benchmark(
    long: pd.DataFrame,
    *,
    metric: str | Mapping[str, str] | None = None,
    threshold: float | Mapping[str, float | None] | None = None,
    group: Mapping[str, str | None] | None = None,
    skipped: Sequence[str] = (),
) -> ImportedBenchmark:
    """Turn a long table (task, item_id, input, model, score) into a complete benchmark.

    Scores must be finite floats and (task, item_id, model) unique: the adapters check both with
    the file/row context this function lacks (a repeat that still arrives here is refused). Here
    the matrix is made complete and the metadata derived:

    * models or tasks without results on every task/model are dropped (see ``_drop_uncovered``);
    * within a task, items not scored by every model are dropped and counted;
    * the input of an item is its first occurrence; items whose text differs between rows
      (e.g. chat templates that differ by model) are counted in ``input_mismatches``;
    * ``threshold`` = eta_d (one value or per task); if absent, 0/1 tasks get none and others 0.5.
    """
    missing = [c for c in LONG_COLUMNS if c not in long.columns]
    if missing:
        raise ValueError(f"long table lacks columns {missing}")
    if long.empty:
        raise DataError("no results to import", hint="check the input path and filters")
    long = long.loc[:, list(LONG_COLUMNS)].reset_index(drop=True)
    duplicated = long.duplicated(["task", "item_id", "model"], keep=False)
    if duplicated.any():
        first = long[duplicated].iloc[0]
        raise DataError(
            f"{int(duplicated.sum())} rows repeat a (task, item, model); first: "
            f"task '{first.task}', item '{first.item_id}', model '{first.model}'"
        )
    check_distinct_names(sorted(set(long["model"].astype(str))))
    skipped = list(skipped)
    long, dropped = _drop_uncovered(long)
    skipped += dropped
    n_models = long.groupby("task")["model"].nunique()
    per_item = long.groupby(["task", "item_id"])["model"].transform("nunique")
    complete = per_item.to_numpy() == long["task"].map(n_models).to_numpy()
    items_dropped = long.loc[~complete, ["task", "item_id"]].drop_duplicates().shape[0]
    empty_tasks = sorted(set(long["task"]) - set(long.loc[complete, "task"]))
    if empty_tasks:
        task = empty_tasks[0]
        names = ", ".join(sorted(set(long.loc[long["task"] == task, "model"])))
        raise DataError(
            f"task '{task}': no item was scored by every model ({names})",
            hint="the runs cover disjoint items (different splits or instance samples?); "
            "import them separately",
        )
    long = long[complete]
    firsts = long.drop_duplicates(["task", "item_id"])
    items = firsts[["task", "item_id", "input"]].sort_values(["task", "item_id"]).reset_index(drop=True)
    input_mismatches = int((long.groupby(["task", "item_id"])["input"].nunique() > 1).sum())
    scores = (
        long[["task", "item_id", "model", "score"]]
        .astype({"score": float})
        .sort_values(["task", "item_id", "model"])
        .reset_index(drop=True)
    )
    thresholds = _task_thresholds(scores, threshold)
    task_names = sorted(thresholds)
    tasks = pd.DataFrame(
        {
            "task": task_names,
            "metric": [metric.get(t) if isinstance(metric, Mapping) else metric for t in task_names],
            "threshold": [thresholds[t] for t in task_names],
            "group": [group.get(t) if group else None for t in task_names],
        }
    ).astype({"threshold": float})
    models = pd.DataFrame({"model": sorted(set(scores["model"]))})
    return ImportedBenchmark(items, scores, models, tasks, skipped, items_dropped, input_mismatches)


# --------------------------------------------------------------------------- the table adapter


def _read_table(path: Path, sep: str | None) -> tuple[pd.DataFrame, int]:
    """Read csv/tsv(.gz), parquet or jsonl(.gz) into strings-as-read; also return the row offset.

    The offset turns a 0-based data index into the row number a user sees: 2 for delimited text
    (the header is row 1), 1 for JSON lines and parquet (record number). The file is opened
    through the read guard (a regular, readable file, else one DataError saying why).
    """
    name = path.name.lower()
    compression: Literal["gzip"] | None = "gzip" if name.endswith(".gz") else None
    with open_regular(path, "data") as handle:
        try:
            if name.endswith((".parquet", ".pq")):
                return pd.read_parquet(handle), 1
            if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
                return pd.read_json(handle, lines=True, dtype=False, compression=compression), 1
            if sep is None:
                sep = "\t" if name.endswith((".tsv", ".tsv.gz", ".tab")) else ","
            frame = pd.read_csv(
                handle, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8", compression=compression
            )
            return frame, 2
        except DataError:
            raise
        except (ValueError, OSError, UnicodeDecodeError, EOFError, zlib.error, RecursionError) as e:
            # pandas' ParserError/EmptyDataError are ValueErrors; pyarrow's ArrowInvalid too.
            raise DataError(
                f"cannot parse as a table: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                file=str(path),
                hint="supported: .csv, .tsv, .csv.gz, .tsv.gz, .parquet, .jsonl (--sep for other delimiters)",
            ) from None


def _bad_rows(mask: pd.Series, offset: int) -> str:
    rows = [int(i) + offset for i in mask[mask].index[:5]]
    more = int(mask.sum()) - len(rows)
    return ", ".join(map(str, rows)) + (f" and {more} more" if more > 0 else "")


def _text_column(df: pd.DataFrame, col: str, *, file: Path, offset: int) -> pd.Series:
    """A key/text column as str, refusing empty cells (a row we could not place in the matrix).

    A list or dict cell (JSONL, parquet) is a chat message list joined as text, or refused with its
    row (:func:`benchroute.data.text.cell_text`): never Python ``repr`` text.
    """
    values = df[col]
    if values.dtype == object:
        values = pd.Series(
            [
                v
                if v is None or isinstance(v, str) or (isinstance(v, float) and math.isnan(v))
                else cell_text(v, file=str(file), row=i + offset, column=col)
                for i, v in enumerate(values.tolist())
            ],
            index=values.index,
            dtype=object,
        )
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        raise DataError(
            f"empty value in rows {_bad_rows(empty, offset)}",
            file=str(file),
            row=int(np.argmax(empty.to_numpy())) + offset,
            column=col,
        )
    return values.astype(str)


def _item_hash(text: str) -> str:
    """An item id from the prompt text: the same id whatever the row order or the file subset."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def table_to_benchmark(
    df: pd.DataFrame,
    *,
    task_col: str,
    input_col: str,
    model_col: str,
    score_col: str,
    item_col: str | None = None,
    threshold: float | None = None,
    file: str | Path = "<table>",
    row_offset: int = 2,
) -> ImportedBenchmark:
    """The pure part of :func:`import_table`: validate a loaded long table and build the benchmark."""
    file = Path(file)
    wanted = [c for c in (task_col, input_col, model_col, score_col, item_col) if c is not None]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"columns present: {', '.join(repr(str(c)) for c in df.columns)}",
            file=str(file),
            column=missing[0],
            hint="name the right columns with --task-col/--input-col/--model-col/--score-col/--item-col",
        )
    if threshold is not None and not math.isfinite(threshold):
        raise DataError(f"threshold must be a finite number, got {threshold!r}")
    df = df.reset_index(drop=True)
    text = {
        c: _text_column(df, c, file=file, offset=row_offset)
        for c in dict.fromkeys((task_col, model_col, input_col))
    }
    raw_score = df[score_col]
    # Through text so every format parses alike; JSON/parquet booleans and CSV true/false are 1/0.
    text_score = raw_score.astype(str).str.strip().str.lower().replace({"true": "1", "false": "0"})
    score = pd.to_numeric(text_score, errors="coerce").astype(float)
    bad = ~score.map(math.isfinite)
    if bad.any():
        bad_row = int(np.argmax(bad.to_numpy()))
        raise DataError(
            f"score is not a finite number ({raw_score.iloc[bad_row]!r}); "
            f"bad rows: {_bad_rows(bad, row_offset)}",
            file=str(file),
            row=bad_row + row_offset,
            column=score_col,
            hint="drop or fill rows without a result before importing",
        )
    models = text[model_col]
    first_seen = models.drop_duplicates()
    check_distinct_names(
        first_seen.tolist(),
        file=str(file),
        rows=[int(i) + row_offset for i in first_seen.index],
        column=model_col,
    )
    if item_col is not None:
        item_id = _text_column(df, item_col, file=file, offset=row_offset)
    else:
        item_id = text[input_col].map(_item_hash)
    long = pd.DataFrame(
        {
            "task": text[task_col],
            "item_id": item_id,
            "input": text[input_col],
            "model": text[model_col],
            "score": score,
        }
    )
    dup = long.duplicated(["task", "item_id", "model"], keep=False)
    if dup.any():
        first = long[dup].iloc[0]
        same = (
            (long["task"] == first.task) & (long["item_id"] == first.item_id) & (long["model"] == first.model)
        )
        item = f"item '{first.item_id}'" if item_col else "the same input"
        raise DataError(
            f"{int(dup.sum())} rows repeat a (task, item, model); rows {_bad_rows(same, row_offset)} "
            f"all give task '{first.task}', {item}, model '{first.model}'",
            file=str(file),
            row=int(same.idxmax()) + row_offset,
            hint="keep one result per question and model (e.g. the latest run)",
        )
    return build_benchmark(long, metric=score_col, threshold=threshold)


def import_table(
    file: str | Path,
    out_dir: str | Path,
    *,
    task_col: str,
    input_col: str,
    model_col: str,
    score_col: str,
    item_col: str | None = None,
    threshold: float | None = None,
    sep: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Import a long table of per-question results (one row per task, question and model).

    Any leaderboard that can export "model, task, prompt, score" rows can feed the router this way.
    Formats by extension: ``.csv``, ``.tsv`` (and ``.gz`` of both; ``sep=`` overrides the
    delimiter), ``.parquet``, ``.jsonl``.

    ``item_col`` names a question id column; without one, the id is a hash of the input text, so
    that the same question gets the same id in every export regardless of row order (the same
    text twice in a task is then one question). ``threshold`` is eta_d for every task (correct =
    score > threshold); without it 0/1 scores need none and other tasks get 0.5.

    ``out_dir`` must be new, empty or an earlier benchmark, unless ``force`` (then it is replaced as
    a whole, atomically); it may never hold ``file`` itself.

    Returns a summary: counts of tasks/items/models, the output path, and what was dropped.
    """
    path = Path(file)
    check_output_dir(out_dir, option="-o", replaceable=BENCHMARK_FILES, force=force, protect=[path])
    df, offset = _read_table(path, sep)
    bench = table_to_benchmark(
        df,
        task_col=task_col,
        input_col=input_col,
        model_col=model_col,
        score_col=score_col,
        item_col=item_col,
        threshold=threshold,
        file=path,
        row_offset=offset,
    )
    return bench.write(out_dir, force=force, protect=[path])
