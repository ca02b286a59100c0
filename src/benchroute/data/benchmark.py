"""Benchmark data: per-question results of many LLMs on many tasks, loaded into dense matrices.

A benchmark directory holds ``items`` (task, item_id, input), ``scores`` (task, item_id, model,
score [, loglik] [, cost]) and optionally ``models.csv`` and ``tasks.csv`` (see docs/data-format.md).
Everything downstream (embedding, routing, evaluation) indexes one ``(n_items, n_models)`` matrix,
so all checking happens here, once: every malformed input becomes a single :class:`DataError` that
names the file, the row (header = row 1) and/or the column, with a hint how to fix it.

Correctness follows the paper (Shnitzer et al., 2023, Sec. 2): y_im = 1 if f_im > eta_d, where the
threshold eta_d comes from ``tasks.csv``; a task without a threshold must already score 0/1.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from benchroute.data.text import cell_text, check_distinct_names
from benchroute.errors import ConfigError, DataError
from benchroute.files import atomic_write_dir, open_regular

__all__ = [
    "BUNDLED",
    "DEFAULT_BENCHMARK",
    "Benchmark",
    "bundled_path",
    "load_benchmark",
    "loto_figures",
    "write_benchmark",
]

BUNDLED = ("openllm_v2", "llmrouter", "alpacaeval2")
DEFAULT_BENCHMARK = "openllm_v2"
DATASETS_DIR = Path(__file__).parent / "datasets"
EXTENSIONS = (".csv", ".csv.gz", ".parquet")
MODEL_COLUMNS = ("params_b", "usd_per_mtok_in", "usd_per_mtok_out")
TASK_COLUMNS = ("metric", "threshold", "group")
#: Every file name a benchmark directory may hold (what :func:`write_benchmark` may replace).
BENCHMARK_FILES = tuple(
    f"{stem}{ext}" for stem in ("items", "scores", "models", "tasks") for ext in EXTENSIONS
)


@dataclass(frozen=True)
class _Spec:
    """What one benchmark file must contain; every file is read through :func:`_read_table`."""

    stem: str
    required: tuple[str, ...]
    numeric: dict[str, bool]  # numeric column -> may a cell be blank?
    aliases: dict[str, str] = field(default_factory=dict)


_ITEMS = _Spec("items", ("task", "item_id", "input"), {})
_SCORES = _Spec(
    "scores", ("task", "item_id", "model", "score"), {"score": False, "loglik": True, "cost": True}
)
# The bundled llmrouter metadata spells prices the way its source does.
_PRICE_ALIASES = {"input_cost_per_mtok": "usd_per_mtok_in", "output_cost_per_mtok": "usd_per_mtok_out"}
_MODELS = _Spec("models", ("model",), dict.fromkeys(MODEL_COLUMNS, True), _PRICE_ALIASES)
_TASKS = _Spec("tasks", ("task",), {"threshold": True})
_NEEDS_ROWS = "a benchmark file needs a header line and at least one data row"


@dataclass
class _Table:
    """A parsed file plus the one place that turns a data-row index into a user-facing error."""

    frame: pd.DataFrame
    file: str

    def error(
        self, message: str, index: int | None = None, column: str | None = None, hint: str | None = None
    ) -> DataError:
        row = None if index is None else int(index) + 2  # header is row 1
        return DataError(message, file=self.file, row=row, column=column, hint=hint)

    def check_unique(self, columns: list[str], codes: np.ndarray | None = None) -> None:
        """Raise on the first repeated key, naming both rows (``codes``: precomputed key ids)."""
        if codes is None:
            codes = self.frame.groupby(columns, sort=False).ngroup().to_numpy()
        dup = pd.Index(codes).duplicated()
        if dup.any():
            j = int(np.argmax(dup))
            i = int(np.argmax(codes == codes[j]))
            key = ", ".join(f"{c}={self.frame[c].iloc[j]!r}" for c in columns)
            raise self.error(
                f"duplicate ({key}) in rows {i + 2} and {j + 2}",
                j,
                hint=f"keep exactly one row per ({', '.join(columns)})",
            )


# ----------------------------------------------------------------------------------------- reading


def _find_file(directory: Path, stem: str, optional: bool) -> Path | None:
    found = [directory / f"{stem}{ext}" for ext in EXTENSIONS if os.path.lexists(directory / f"{stem}{ext}")]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(
            f"several {stem} files: {names}", file=str(directory), hint="keep exactly one of them"
        )
    if not found and not optional:
        raise DataError(
            f"no {stem} file (looked for {', '.join(stem + ext for ext in EXTENSIONS)})",
            file=str(directory),
            hint="see docs/data-format.md for the benchmark directory layout",
        )
    return found[0] if found else None


def _utf8_error(path: Path) -> DataError:
    """Locate the first bad byte ourselves: pandas reports offsets inside its read buffer."""
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # corrupt gzip: its garbage failed UTF-8 before its CRC
        return _corrupt_error(path, exc)
    hint = "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8); a compressed file must end in .gz"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        where = "decompressed byte" if path.name.endswith(".gz") else "byte"
        message = f"not valid UTF-8: byte 0x{data[exc.start]:02x} at {where} offset {exc.start} (line {line})"
        return DataError(message, file=str(path), hint=hint)
    return DataError("not valid UTF-8", file=str(path), hint=hint)


def _read_frame(path: Path) -> pd.DataFrame:
    """Read a file as text columns (CSV) or typed columns (parquet); any failure -> DataError.

    The file is opened through :func:`benchroute.files.open_regular` (a regular file we may read,
    else one DataError saying why), and pandas reads from that handle.
    """
    name = str(path)
    with open_regular(path, "data") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise DataError("file is empty (0 bytes)", file=name, hint=_NEEDS_ROWS)
        try:
            if path.suffix == ".parquet":
                return _text_cells(pd.read_parquet(handle), name)
            # All text: numeric columns are parsed by _to_float so bad cells can be reported by row.
            return pd.read_csv(
                handle,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
                compression="gzip" if path.name.endswith(".gz") else None,
            )
        except UnicodeDecodeError:
            raise _utf8_error(path) from None
        except pd.errors.EmptyDataError as exc:
            raise DataError("file is empty", file=name, hint=_NEEDS_ROWS) from exc
        except pd.errors.ParserError as exc:
            line = re.search(r"line (\d+)", str(exc))
            raise DataError(
                f"malformed CSV ({str(exc).strip()})",
                file=name,
                row=int(line.group(1)) if line else None,
                hint="quote cells with commas, quotes or newlines; every row needs one cell per column",
            ) from exc
        except DataError:
            raise
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            raise _corrupt_error(path, exc) from exc


def _text_cells(frame: pd.DataFrame, file: str) -> pd.DataFrame:
    """Parquet cells that are lists or structs: chat message lists joined as text, others refused."""
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        values = frame[column].to_numpy()
        odd = [i for i, v in enumerate(values) if not (v is None or isinstance(v, str | int | float | bool))]
        if not odd:
            continue
        converted = list(values)
        for i in odd:
            converted[i] = cell_text(values[i], file=file, row=i + 2, column=str(column))
        frame[column] = converted
    return frame


def _corrupt_error(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"cannot read file, it is truncated or corrupt ({type(exc).__name__}: {exc})",
        file=str(path),
        hint="re-create or re-download it",
    )


def _parse_floats(text: pd.Series) -> np.ndarray:
    try:  # Arrow's cast is ~20x faster than pd.to_numeric on the 650k-row score column
        return pc.cast(pa.array(text), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pd.to_numeric(text, errors="coerce").to_numpy(np.float64, na_value=np.nan)


def _to_float(table: _Table, column: str, blank_ok: bool) -> np.ndarray:
    """Column as float64; blank -> NaN if allowed; anything else that is not finite -> DataError."""
    series = table.frame[column]
    text = None if pd.api.types.is_numeric_dtype(series) else series.astype(str).fillna("")
    values = series.to_numpy(np.float64, na_value=np.nan) if text is None else _parse_floats(text)
    bad = ~np.isfinite(values)
    if not bad.any():
        return values
    blank = np.isnan(values) if text is None else (text.str.strip() == "").to_numpy()
    if blank_ok:
        bad &= ~blank
    if bad.any():
        i = int(np.argmax(bad))
        raw = values[i] if text is None else text.iloc[i]
        if blank[i]:
            message, hint = f"empty {column}", f"every row needs a {column} value"
        elif _is_float(raw):
            message, hint = f"{column} is {raw} (not a finite number)", "replace NaN/inf by the real value"
        else:
            message, hint = f"{column} is not a number: {raw!r}", f"{column} must be a number such as 0.5"
        raise table.error(message, i, column, hint)
    return np.where(blank, np.nan, values)


def _is_float(value: Any) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _header(path: Path, frame: pd.DataFrame) -> list[str]:
    """Header cells as written: pandas silently renames a repeated CSV column 'x' to 'x.1'."""
    if path.suffix == ".parquet":
        return [str(c) for c in frame.columns]
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(
            path, "rt", encoding="utf-8-sig", newline=""
        ) as f:
            cells = next(csv.reader(f), [])
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error):  # pandas read it: keep its names
        return [str(c) for c in frame.columns]
    return cells if len(cells) == frame.shape[1] else [str(c) for c in frame.columns]


def _check_header(path: Path, frame: pd.DataFrame) -> None:
    """A column named twice (also 'score' and 'score ') would make every later lookup ambiguous."""
    names = [c.strip() for c in _header(path, frame)]
    repeated = list(dict.fromkeys(c for c in names if c and names.count(c) > 1))
    if repeated:
        raise DataError(
            f"duplicate column(s) {', '.join(map(repr, repeated))} in the header",
            file=str(path),
            row=1,
            hint="name every column once (names are compared without surrounding spaces)",
        )


def _read_table(directory: Path, spec: _Spec, optional: bool = False) -> _Table | None:
    """The single reader every benchmark file goes through: find, parse, check columns and cells."""
    path = _find_file(directory, spec.stem, optional)
    if path is None:
        return None
    frame = _read_frame(path)
    _check_header(path, frame)
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.rename(columns={a: c for a, c in spec.aliases.items() if c not in frame.columns})
    table = _Table(frame, str(path))
    missing = [c for c in spec.required if c not in frame.columns]
    if missing:
        raise table.error(
            f"missing column(s) {', '.join(missing)}; columns present: {', '.join(frame.columns)}",
            hint=f"the header must name {', '.join(spec.required)}",
        )
    if frame.empty:
        raise table.error("no data rows (header only)", hint=_NEEDS_ROWS)
    for column in frame.columns:
        if column in spec.numeric:
            frame[column] = _to_float(table, column, spec.numeric[column])
            continue
        frame[column] = text = frame[column].astype(str).fillna("")
        empty = (text.str.strip() == "").to_numpy()
        if column in spec.required and empty.any():
            i = int(np.argmax(empty))
            raise table.error(f"empty {column}", i, column, f"every row needs a non-empty {column}")
        if empty.any():  # optional metadata: blank means unknown
            frame[column] = text.mask(empty)
    return table


# ----------------------------------------------------------------------------------------- model


@dataclass(eq=False)
class Benchmark:
    """Items x models score matrix of one benchmark, with task and model metadata.

    Items of one task are contiguous and in ``tasks`` order, so per-task work is a slice.
    ``scores`` is the raw metric f_im; :attr:`correct` is y_im = f_im > eta_d.
    """

    name: str
    tasks: list[str]
    items: pd.DataFrame
    models: list[str]
    model_info: pd.DataFrame
    scores: np.ndarray
    thresholds: dict[str, float | None]
    task_info: pd.DataFrame
    loglik: np.ndarray | None
    cost: np.ndarray | None
    embeddings: np.ndarray | None = None
    dropped_models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Checked here so hand-built benchmarks, select() and with_embeddings() all keep the invariants.
        shape = (len(self.items), len(self.models))
        for label, matrix in (("scores", self.scores), ("loglik", self.loglik), ("cost", self.cost)):
            if matrix is not None and matrix.shape != shape:
                raise DataError(f"{label} has shape {matrix.shape}, expected {shape} (items x models)")
        if self.embeddings is not None and (self.embeddings.ndim != 2 or len(self.embeddings) != shape[0]):
            raise DataError(
                f"embeddings have shape {self.embeddings.shape}, expected ({shape[0]}, d)",
                hint="embed exactly the benchmark's items, in order",
            )
        if np.any(np.diff(self.task_index) < 0) or np.any(self.task_index < 0):
            raise DataError("items of each task must be contiguous and in tasks order")

    def __repr__(self) -> str:
        return (
            f"Benchmark({self.name!r}, {self.n_tasks} tasks, {self.n_items} items, {self.n_models} models"
            f"{', embeddings' if self.embeddings is not None else ''})"
        )

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @cached_property
    def task_index(self) -> np.ndarray:
        """int32 (n_items,): position in ``tasks`` of each item's task."""
        codes = pd.Categorical(self.items["task"], categories=self.tasks).codes.astype(np.int32)
        return _readonly(codes)

    @cached_property
    def _bounds(self) -> np.ndarray:
        return np.searchsorted(self.task_index, np.arange(self.n_tasks + 1))

    @cached_property
    def correct(self) -> np.ndarray:
        """bool (n_items, n_models): y = score > threshold, or the 0/1 score where no threshold."""
        eta = np.array([np.nan if self.thresholds.get(t) is None else self.thresholds[t] for t in self.tasks])
        eta = eta[self.task_index][:, None]
        return _readonly(np.where(np.isnan(eta), self.scores != 0, self.scores > eta))

    @property
    def inputs(self) -> list[str]:
        return self.items["input"].tolist()

    def task_slice(self, task: str) -> slice:
        t = _positions(self.tasks, [task], "task")[0]
        return slice(int(self._bounds[t]), int(self._bounds[t + 1]))

    def accuracy(self, correctness: bool = True) -> np.ndarray:
        """(n_tasks, n_models) mean per task of :attr:`correct` (or of the raw scores)."""
        return _task_means(self.correct if correctness else self.scores, self._bounds)

    def is_binary(self, task: str) -> bool:
        block = self.scores[self.task_slice(task)]
        return bool(np.all((block == 0) | (block == 1)))

    def select(self, tasks: Iterable[str] | None = None, models: Iterable[str] | None = None) -> Benchmark:
        """Subset in the benchmark's own order; shares memory with ``self`` where numpy allows.

        A run of adjacent tasks is a row slice, so its scores and embeddings are views; other task
        sets are gathered by index. Selecting models never touches the embeddings.
        """
        t_idx = _positions(self.tasks, tasks, "task")
        m_idx = _positions(self.models, models, "model")
        bounds = self._bounds
        rows: slice | np.ndarray
        if np.all(np.diff(t_idx) == 1):
            rows = slice(int(bounds[t_idx[0]]), int(bounds[t_idx[-1] + 1]))
        else:
            rows = np.flatnonzero(np.isin(self.task_index, t_idx))
        cols: slice | np.ndarray = slice(None) if models is None else m_idx

        def take(matrix: np.ndarray | None) -> np.ndarray | None:
            return None if matrix is None else matrix[rows][:, cols]

        kept = [self.tasks[t] for t in t_idx]
        return replace(
            self,
            tasks=kept,
            items=self.items.iloc[rows].reset_index(drop=True),
            models=[self.models[m] for m in m_idx],
            model_info=self.model_info.iloc[m_idx],
            scores=self.scores[rows][:, cols],
            thresholds={t: self.thresholds[t] for t in kept},
            task_info=self.task_info.iloc[t_idx],
            loglik=take(self.loglik),
            cost=take(self.cost),
            embeddings=self.embeddings if self.embeddings is None or tasks is None else self.embeddings[rows],
            dropped_models=list(self.dropped_models),
        )

    def with_embeddings(self, emb: np.ndarray) -> Benchmark:
        """Same benchmark with (n_items, d) float32 embeddings attached (shape checked)."""
        return replace(self, embeddings=np.asarray(emb, dtype=np.float32))

    def summary(self) -> dict[str, Any]:
        """The "data info" figures as a JSON-serialisable dict (see docs/data-format.md).

        Ties in any argmax go to the first model in ``models`` order.
        """
        counts = np.diff(self._bounds)
        binary = [self.is_binary(t) for t in self.tasks]
        tasks: list[dict[str, Any]] = [
            {"task": t, "n_items": int(counts[k]), "threshold": self.thresholds[t], "binary": binary[k]}
            for k, t in enumerate(self.tasks)
        ]
        figures: dict[str, dict[str, float | None]] = {}
        kinds = [("correct", self.correct, "")] + ([] if all(binary) else [("raw", self.scores, "raw_")])
        for kind, values, prefix in kinds:
            acc = _task_means(values, self._bounds)
            instance = _task_means(values.max(axis=1), self._bounds)
            loto = loto_figures(acc)
            figures[kind] = {
                "bma_loto": _json_float(loto["bma_loto"]),
                "task_oracle": _json_float(loto["task_oracle"]),
                "instance_oracle": _json_float(instance.mean()),
            }
            for k, entry in enumerate(tasks):
                if prefix and binary[k]:
                    continue
                bma = int(loto["bma_model"][k])
                entry.update(
                    {
                        f"{prefix}oracle_model": self.models[int(loto["oracle_model"][k])],
                        f"{prefix}oracle_acc": _json_float(loto["oracle_acc"][k]),
                        f"{prefix}instance_oracle": _json_float(instance[k]),
                        f"{prefix}bma_model": self.models[bma] if bma >= 0 else None,
                        f"{prefix}bma_acc": _json_float(loto["bma_acc"][k]),
                    }
                )
        macro = self.accuracy().mean(axis=0)
        best = int(np.argmax(macro))
        params = self.model_info["params_b"].to_numpy(np.float64)
        return {
            "name": self.name,
            "n_tasks": self.n_tasks,
            "n_items": self.n_items,
            "n_models": self.n_models,
            "items_per_task": {
                "min": int(counts.min()),
                "median": float(np.median(counts)),
                "max": int(counts.max()),
            },
            "best_model": self.models[best],
            "best_model_acc": _json_float(macro[best]),
            "figures": figures,
            "tasks": tasks,
            "models": [
                {"model": m, "params_b": _json_float(params[j]), "macro_acc": _json_float(macro[j])}
                for j, m in enumerate(self.models)
            ],
            "dropped_models": list(self.dropped_models),
        }


def _readonly(array: np.ndarray) -> np.ndarray:
    """Cached derived arrays are shared by every caller, so nobody may modify them in place."""
    array.flags.writeable = False
    return array


def _json_float(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _task_means(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Mean over the items of each task (axis 0), using the contiguous task blocks."""
    sums = np.add.reduceat(np.asarray(values, dtype=np.float64), bounds[:-1], axis=0)
    return sums / np.diff(bounds).reshape((-1,) + (1,) * (sums.ndim - 1))


def _positions(names: list[str], wanted: Iterable[str] | None, kind: str) -> np.ndarray:
    """Sorted unique positions of ``wanted`` in ``names`` (all of them if None)."""
    if wanted is None:
        return np.arange(len(names))
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    pos = pd.Index(names).get_indexer(pd.Index(wanted))
    if len(pos) == 0 or (pos < 0).any():
        unknown = [w for w, p in zip(wanted, pos, strict=True) if p < 0]
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        problem = f"unknown {kind}(s): {', '.join(map(str, unknown))}" if unknown else f"no {kind} given"
        raise ConfigError(problem, hint=f"choose from: {shown}")
    return np.unique(pos)


def loto_figures(acc: np.ndarray) -> dict[str, Any]:
    """Task-level baselines from a (n_tasks, n_models) accuracy matrix.

    BMA-LOTO is what you get without routing on an unseen task: for each task t, deploy the model
    with the best macro accuracy over the *other* tasks and score it on t. The task oracle picks the
    best model per task with hindsight. Ties go to the first model (``np.argmax``). Returns floats
    ``bma_loto``, ``task_oracle`` (means over tasks; ``bma_loto`` is NaN with one task) and per-task
    arrays ``bma_model``, ``bma_acc``, ``oracle_model``, ``oracle_acc`` (model -1 where undefined).
    """
    acc = np.asarray(acc, dtype=np.float64)
    n_tasks = acc.shape[0]
    if n_tasks > 1:
        bma_model = np.array([np.delete(acc, t, axis=0).mean(axis=0).argmax() for t in range(n_tasks)])
        bma_acc = acc[np.arange(n_tasks), bma_model]
    else:
        bma_model, bma_acc = np.full(n_tasks, -1), np.full(n_tasks, np.nan)
    return {
        "bma_loto": float(bma_acc.mean()),
        "task_oracle": float(acc.max(axis=1).mean()),
        "bma_model": bma_model,
        "bma_acc": bma_acc,
        "oracle_model": acc.argmax(axis=1),
        "oracle_acc": acc.max(axis=1),
    }


# ----------------------------------------------------------------------------------------- loading


def _available() -> list[str]:
    """Bundled benchmark names: the dataset folders that hold an items file (not ``packs``)."""
    return sorted(
        d.name
        for d in DATASETS_DIR.iterdir()
        if d.is_dir()
        and not d.name.startswith((".", "_"))
        and any((d / f"items{ext}").is_file() for ext in EXTENSIONS)
    )


def bundled_path(name: str = DEFAULT_BENCHMARK) -> Path:
    """Directory of a benchmark shipped inside the package."""
    if name not in _available():
        raise DataError(f"unknown bundled benchmark {name!r}", hint=f"available: {', '.join(_available())}")
    return DATASETS_DIR / name


def _resolve(path: str | os.PathLike[str]) -> Path:
    directory = Path(path)
    if directory.is_dir():
        if not os.access(directory, os.R_OK | os.X_OK):
            raise DataError(
                "permission denied (cannot list the folder)",
                file=str(directory),
                hint="make it readable (chmod u+rx), or run as a user who may read it",
            )
        return directory
    if not directory.exists() and str(path) in _available():
        return bundled_path(str(path))
    problem = "is not a directory" if directory.exists() else "no such benchmark directory"
    hint = f"give a directory with items and scores files, or a bundled name: {', '.join(_available())}"
    raise DataError(problem, file=str(directory), hint=hint)


def _items(table: _Table) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """Items grouped by task (stable, tasks in first-appearance order) and their original rows."""
    table.check_unique(["task", "item_id"])
    frame = table.frame
    tasks = list(pd.unique(frame["task"]))
    order = np.argsort(pd.Categorical(frame["task"], categories=tasks).codes, kind="stable")
    return frame.iloc[order][list(_ITEMS.required)].reset_index(drop=True), tasks, order


def _task_info(table: _Table | None, tasks: list[str], items_file: str) -> pd.DataFrame:
    index = pd.Index(tasks, name="task")
    if table is None:
        return pd.DataFrame({c: np.nan for c in TASK_COLUMNS}, index=index)
    table.check_unique(["task"])
    unknown = ~table.frame["task"].isin(tasks).to_numpy()
    if unknown.any():
        i = int(np.argmax(unknown))
        raise table.error(
            f"task {table.frame['task'].iloc[i]!r} has no items in {items_file}",
            i,
            "task",
            hint="remove it from tasks.csv or add its items",
        )
    return _with_columns(table.frame.set_index("task").reindex(index), TASK_COLUMNS)


def _with_columns(info: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Standard columns first (NaN when absent), then the user's extra metadata as given."""
    for column in columns:
        if column not in info.columns:
            info[column] = np.nan
    return info[list(columns) + [c for c in info.columns if c not in columns]]


def _model_columns(scores: _Table, models_table: _Table | None) -> tuple[list[str], np.ndarray]:
    """Model list (models.csv order, else first appearance in scores) and each score row's column."""
    codes, uniques = pd.factorize(scores.frame["model"])
    first_rows = pd.Series(codes).drop_duplicates().index.to_numpy() + 2
    check_distinct_names(
        [str(u) for u in uniques], file=scores.file, rows=first_rows.tolist(), column="model"
    )
    if models_table is None:
        return list(uniques), codes
    models_table.check_unique(["model"])
    models = models_table.frame["model"].tolist()
    check_distinct_names(models, file=models_table.file, rows=list(range(2, len(models) + 2)), column="model")
    position = pd.Index(models).get_indexer(uniques)
    unknown = position[codes] < 0
    if unknown.any():
        i = int(np.argmax(unknown))
        raise scores.error(
            f"model {scores.frame['model'].iloc[i]!r} is not in {models_table.file}",
            i,
            "model",
            hint="add the model to models.csv, or delete models.csv to take models from the scores",
        )
    return models, position[codes]


def _item_key(frame: pd.DataFrame, i: int) -> str:
    return f"task={frame['task'].iloc[i]!r}, item_id={frame['item_id'].iloc[i]!r}"


def _check_binary(
    scores: _Table,
    values: np.ndarray,
    task_of_row: np.ndarray,
    tasks: list[str],
    thresholds: dict[str, float | None],
) -> None:
    """A task without a threshold must already be 0/1, otherwise 'correct' would be meaningless."""
    no_threshold = np.array([thresholds[t] is None for t in tasks])
    bad = no_threshold[task_of_row] & (values != 0) & (values != 1)
    if bad.any():
        i = int(np.argmax(bad))
        task = tasks[task_of_row[i]]
        raise scores.error(
            f"task {task} has non-0/1 scores (e.g. {values[i]:g} at row {i + 2}) but no threshold in "
            "tasks.csv",
            i,
            "score",
            hint=f"set tasks.csv threshold for {task} (e.g. 0.5) so correct = score > threshold",
        )


def _complete_models(
    present: np.ndarray,
    models: list[str],
    items: pd.DataFrame,
    item_rows: np.ndarray,
    scores: _Table,
    models_table: _Table | None,
    items_file: str,
    drop_incomplete: bool,
) -> np.ndarray:
    """Columns of the models that score every item; the rest are an error or, if asked, dropped."""
    counts = present.sum(axis=0)
    unscored = counts == 0
    if unscored.any() and not drop_incomplete and models_table is not None:
        j = int(np.argmax(unscored))
        raise models_table.error(
            f"model {models[j]!r} has no scores",
            j,
            "model",
            hint="remove it from models.csv, add its scores, or load with drop_incomplete=True",
        )
    orphan = ~present[:, ~unscored].any(axis=1)
    if orphan.any():
        i = int(np.argmax(orphan))
        raise DataError(
            f"item ({_item_key(items, i)}) has no scores",
            file=items_file,
            row=int(item_rows[i]) + 2,
            hint="add its scores or remove the item",
        )
    incomplete = np.flatnonzero((counts < len(items)) & ~unscored)
    if len(incomplete) and not drop_incomplete:
        j = int(incomplete[0])
        i = int(np.argmax(~present[:, j]))
        others = [models[k] for k in incomplete[1:]]
        more = f"; {len(others)} more incomplete: {', '.join(others[:5])}{', ...' if len(others) > 5 else ''}"
        raise scores.error(
            f"model {models[j]!r} has no score for {len(items) - counts[j]} of {len(items)} items "
            f"(e.g. {_item_key(items, i)}){more if others else ''}",
            column="model",
            hint="add the missing scores, or load with drop_incomplete=True to drop incomplete models",
        )
    keep = counts == len(items)
    if not keep.any():
        raise scores.error("no model has a score for every item", hint="add the missing scores")
    return keep


def load_benchmark(
    path: str | os.PathLike[str], *, drop_incomplete: bool = False, name: str | None = None
) -> Benchmark:
    """Load and validate a benchmark directory (or a bundled name such as ``"openllm_v2"``).

    With ``drop_incomplete`` models lacking a score on some item are dropped (listed in
    ``Benchmark.dropped_models``) instead of raising; items are never dropped.
    """
    directory = _resolve(path)
    items_table = _read_table(directory, _ITEMS)
    scores_table = _read_table(directory, _SCORES)
    models_table = _read_table(directory, _MODELS, optional=True)
    tasks_table = _read_table(directory, _TASKS, optional=True)
    assert items_table is not None and scores_table is not None  # not optional: _find_file raised

    items, tasks, item_rows = _items(items_table)
    task_info = _task_info(tasks_table, tasks, items_table.file)
    thresholds = {str(t): None if np.isnan(v) else float(v) for t, v in task_info["threshold"].items()}

    sc = scores_table.frame
    keys = pd.MultiIndex.from_frame(items[["task", "item_id"]])
    row = keys.get_indexer(pd.MultiIndex.from_frame(sc[["task", "item_id"]]))
    if (row < 0).any():
        i = int(np.argmax(row < 0))
        raise scores_table.error(
            f"score for unknown item ({_item_key(sc, i)}): not in {items_table.file}",
            i,
            hint="add the item to the items file, or remove its scores",
        )
    models, col = _model_columns(scores_table, models_table)
    scores_table.check_unique(["task", "item_id", "model"], row.astype(np.int64) * len(models) + col)
    task_of_item = pd.Categorical(items["task"], categories=tasks).codes
    _check_binary(scores_table, sc["score"].to_numpy(), task_of_item[row], tasks, thresholds)

    def dense(column: str) -> np.ndarray | None:
        if column not in sc.columns:
            return None
        matrix = np.full((len(items), len(models)), np.nan)
        matrix[row, col] = sc[column].to_numpy()
        return matrix

    score_matrix = dense("score")
    assert score_matrix is not None
    keep = _complete_models(
        ~np.isnan(score_matrix),
        models,
        items,
        item_rows,
        scores_table,
        models_table,
        items_table.file,
        drop_incomplete,
    )
    kept = [m for m, k in zip(models, keep, strict=True) if k]
    info = models_table.frame.set_index("model") if models_table else pd.DataFrame(index=pd.Index(models))
    loglik, cost = dense("loglik"), dense("cost")
    return Benchmark(
        name=name or directory.resolve().name,
        tasks=tasks,
        items=items,
        models=kept,
        model_info=_with_columns(info.rename_axis("model").loc[kept], MODEL_COLUMNS),
        scores=score_matrix[:, keep],
        thresholds=thresholds,
        task_info=task_info,
        loglik=None if loglik is None else loglik[:, keep],
        cost=None if cost is None else cost[:, keep],
        dropped_models=[m for m, k in zip(models, keep, strict=True) if not k],
    )


# ----------------------------------------------------------------------------------------- writing


def _canonical(frame: pd.DataFrame, spec: _Spec) -> pd.DataFrame:
    """Known columns first, key columns as text; accepts the key as index (as in model_info)."""
    key = spec.required[0]
    if key not in frame.columns and frame.index.name == key:
        frame = frame.reset_index()
    missing = [c for c in spec.required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{spec.stem} frame lacks column(s) {', '.join(missing)}; it has "
            f"{', '.join(map(str, frame.columns))}",
            hint=f"{spec.stem} needs {', '.join(spec.required)}",
        )
    known = list(spec.required) + [c for c in spec.numeric if c in frame.columns and c not in spec.required]
    frame = frame[known + [c for c in frame.columns if c not in known]].reset_index(drop=True)
    for column in ("task", "item_id", "model"):
        if column in frame.columns:
            frame[column] = frame[column].astype(str)
    return frame


def _sorted_by_item(frame: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Sort by task, then item_id (all-digit ids numerically, before other ids), then ``extra``."""
    ids = frame["item_id"]
    number = pd.to_numeric(ids.where(ids.str.fullmatch(r"\d+")), errors="coerce")
    keys = pd.DataFrame({"task": frame["task"], "number": number, "id": ids, **{c: frame[c] for c in extra}})
    order = keys.sort_values(list(keys.columns), kind="stable", na_position="last").index
    return frame.loc[order]


def write_benchmark(
    out_dir: str | os.PathLike[str],
    items: pd.DataFrame,
    scores: pd.DataFrame,
    models: pd.DataFrame | None = None,
    tasks: pd.DataFrame | None = None,
    *,
    compress: bool = True,
    force: bool = False,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write a benchmark directory in the bundled layout, byte-reproducibly and all at once.

    Rows are sorted as in the bundled data; models and tasks keep the given order (it is the models
    order of the loaded benchmark). The whole directory is written into a temporary sibling and
    swapped in with one rename (:func:`~benchroute.files.atomic_write_dir`), so a failure midway
    (a full disk) leaves the previous benchmark whole, never new items beside old scores. An
    existing ``out_dir`` may hold only benchmark files (an earlier benchmark, replaced as a whole)
    unless ``force``; a folder holding one of ``protect`` (the import's own source) is always
    refused. Contents are not validated here (an adapter may write incomplete data on purpose):
    :func:`load_benchmark` does that.
    """
    out = Path(out_dir)
    frames = {
        "items": _sorted_by_item(_canonical(items, _ITEMS)),
        "scores": _sorted_by_item(_canonical(scores, _SCORES), ("model",)),
        "models": None if models is None else _canonical(models, _MODELS),
        "tasks": None if tasks is None else _canonical(tasks, _TASKS),
    }
    files: dict[str, bytes] = {}
    for stem, frame in frames.items():
        if frame is None:
            continue
        ext = ".csv.gz" if compress and stem in ("items", "scores") else ".csv"
        data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
        files[f"{stem}{ext}"] = gzip.compress(data, mtime=0) if ext.endswith(".gz") else data
    atomic_write_dir(out, files, replaceable=BENCHMARK_FILES, force=force, protect=list(protect))
    return out
