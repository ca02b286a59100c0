"""Hostile-input property tests of the benchmark loader (issue 11, docs/reliability.md).

Every test starts from a copy of REAL bundled data: a slice of the bundled ``llmrouter`` benchmark
(two 0/1 tasks and the thresholded ``commongen``; 12 items each, 4 models, with its models.csv and
tasks.csv) written in the bundled layout by :func:`benchroute.data.benchmark.write_benchmark`. Hypothesis then
corrupts one aspect of the copy per example and the property is always the same:

* ``load_benchmark`` raises :class:`~benchroute.errors.DataError` whose message names the file
  (and the row and column where the problem is a cell), or
* it loads, and the result keeps every invariant (shapes, finite scores, correct = 0/1 or
  score > threshold, contiguous tasks, no duplicate keys);

anything else escaping (KeyError, UnicodeDecodeError, zlib.error, ...) fails the test. Cases per
class are written to ``.pytest_cache/d/benchroute-reliability/data.json`` for the docs table.
Examples are derandomized so a CI run tries exactly the same cases as a local one.
"""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchroute.data.benchmark import Benchmark, load_benchmark, write_benchmark
from benchroute.errors import DataError

TASKS = ("arc_challenge", "commongen", "gsm8k")  # commongen: continuous score, threshold 0.5
BINARY_TASKS = ("arc_challenge", "gsm8k")
THRESHOLD = 0.5
PER_TASK = 12
N_MODELS = 4
FILES = ("items.csv.gz", "scores.csv.gz", "models.csv", "tasks.csv")
REQUIRED = {
    "items.csv.gz": ("task", "item_id", "input"),
    "scores.csv.gz": ("task", "item_id", "model", "score"),
    "models.csv": ("model",),
    "tasks.csv": ("task",),
}
KEYS = {  # the unique key of each file
    "items.csv.gz": ("task", "item_id"),
    "scores.csv.gz": ("task", "item_id", "model"),
    "models.csv": ("model",),
    "tasks.csv": ("task",),
}
ALIASES = {"input_cost_per_mtok": "usd_per_mtok_in", "output_cost_per_mtok": "usd_per_mtok_out"}


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


# ------------------------------------------------------------------------------------ the copy


class Files(dict):  # type: ignore[type-arg]
    """The bytes of the benchmark files, with a short repr for Hypothesis' failure reports."""

    def __repr__(self) -> str:
        return "Files(" + ", ".join(f"{k}: {len(v)} bytes" for k, v in self.items()) + ")"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The slice of bundled llmrouter, as the bytes of its four files."""
    bench = load_benchmark("llmrouter")
    models = bench.models[:N_MODELS]
    items, scores = [], []
    for task in TASKS:
        s = bench.task_slice(task)
        for r in range(s.start, s.start + PER_TASK):
            item_id, text = bench.items["item_id"].iloc[r], bench.items["input"].iloc[r]
            items.append({"task": task, "item_id": item_id, "input": text})
            scores += [
                {"task": task, "item_id": item_id, "model": m, "score": float(bench.scores[r, j])}
                for j, m in enumerate(models)
            ]
    info = bench.model_info.loc[models].reset_index()
    tasks = bench.task_info.loc[list(TASKS)].reset_index()
    out = write_benchmark(
        tmp_path_factory.mktemp("slice"), pd.DataFrame(items), pd.DataFrame(scores), info, tasks
    )
    files = Files({name: (out / name).read_bytes() for name in FILES})
    clean = load_benchmark(out)
    assert clean.tasks == sorted(TASKS) and clean.n_items == 3 * PER_TASK and clean.n_models == N_MODELS
    assert clean.thresholds["commongen"] == THRESHOLD and not clean.is_binary("commongen")
    return files


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cases")


LEDGER = "data"  # the conftest ledger fixture saves counts under this name


def unzip(data: bytes, name: str) -> bytes:
    return gzip.decompress(data) if name.endswith(".gz") else data


def rezip(data: bytes, name: str) -> bytes:
    return gzip.compress(data, mtime=0) if name.endswith(".gz") else data


def table(files: dict[str, bytes], name: str) -> list[list[str]]:
    """A file's rows (header first) parsed with the csv module (cells may hold commas, newlines)."""
    return list(csv.reader(io.StringIO(unzip(files[name], name).decode("utf-8"), newline="")))


def untable(rows: list[list[str]], name: str) -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return rezip(buf.getvalue().encode("utf-8"), name)


class Case:
    """One corrupted copy on disk; ``load`` returns the Benchmark or the DataError (nothing else)."""

    def __init__(self, workdir: Path, files: dict[str, bytes]) -> None:
        self.dir = Path(tempfile.mkdtemp(dir=workdir))
        for name, data in files.items():
            (self.dir / name).write_bytes(data)

    def load(self) -> Benchmark | DataError:
        try:
            return load_benchmark(self.dir)
        except DataError as err:  # any other exception type escapes and fails the test
            assert err.file, f"DataError without a file: {err}"
            assert Path(err.file).parent == self.dir or Path(err.file) == self.dir, err.file
            assert Path(err.file).name in str(err), f"message does not name the file: {err}"
            assert err.hint, f"DataError without a hint: {err}"
            return err
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def outcome(ledger: dict[str, Counter], cls: str, result: Benchmark | DataError) -> None:
    ledger.setdefault(cls, Counter())["cases"] += 1
    ledger[cls]["data_error" if isinstance(result, DataError) else "loaded"] += 1
    if isinstance(result, Benchmark):
        check_invariants(result)


def check_invariants(bench: Benchmark) -> None:
    """What every loaded benchmark must satisfy, whatever its files looked like."""
    n, m = bench.n_items, bench.n_models
    assert n > 0 and m > 0 and bench.n_tasks > 0
    assert bench.scores.shape == bench.correct.shape == (n, m)
    assert bench.scores.dtype == np.float64 and bench.correct.dtype == bool
    assert np.isfinite(bench.scores).all()
    assert len(set(bench.models)) == m and len(set(bench.tasks)) == bench.n_tasks
    keys = list(zip(bench.items["task"], bench.items["item_id"], strict=True))
    assert len(set(keys)) == n
    assert np.all(np.diff(bench.task_index) >= 0) and set(bench.items["task"]) == set(bench.tasks)
    assert all(isinstance(x, str) and x.strip() for x in bench.inputs)
    for task in bench.tasks:
        s = bench.task_slice(task)
        eta = bench.thresholds[task]
        if eta is None:
            assert np.isin(bench.scores[s], (0.0, 1.0)).all()
            np.testing.assert_array_equal(bench.correct[s], bench.scores[s] == 1.0)
        else:
            assert np.isfinite(eta)
            np.testing.assert_array_equal(bench.correct[s], bench.scores[s] > eta)
    assert list(bench.model_info.index) == bench.models


def expect_error(
    result: Benchmark | DataError,
    file: str,
    row: int | None = None,
    column: str | None = None,
    fragment: str | None = None,
) -> DataError:
    assert isinstance(result, DataError), f"expected a DataError naming {file}, got a load"
    assert Path(result.file).name == file, f"{result} (expected {file})"
    if row is not None:
        assert result.row == row and f"row {row}" in str(result), str(result)
    if column is not None:
        assert result.column == column and f"column '{column}'" in str(result), str(result)
    if fragment is not None:
        assert fragment in result.message, result.message
    return result


def line_of(rows: list[list[str]], index: int) -> int:
    """The user-facing row number of data row ``index`` (header = row 1)."""
    return index + 1


# --------------------------------------------------------------------------------- properties


@_settings(50)
@given(data=st.data())
def test_truncated_gzip(base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter], data: Any) -> None:
    name = data.draw(st.sampled_from(["items.csv.gz", "scores.csv.gz"]), label="file")
    cut = data.draw(st.integers(0, len(base[name]) - 1), label="keep bytes")
    result = Case(workdir, {**base, name: base[name][:cut]}).load()
    outcome(ledger, "truncated gzip", result)
    err = expect_error(result, name)
    assert "truncated or corrupt" in err.message or "empty" in err.message, err.message


@_settings(60)
@given(data=st.data())
def test_dropped_or_renamed_columns(
    base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter], data: Any
) -> None:
    name = data.draw(st.sampled_from(FILES), label="file")
    rows = table(base, name)
    col = data.draw(st.integers(0, len(rows[0]) - 1), label="column")
    old = rows[0][col]
    action = data.draw(st.sampled_from(["drop", "rename", "pad", "repeat another"]), label="action")
    if action == "drop":
        rows = [r[:col] + r[col + 1 :] for r in rows]
        new = None
    elif action == "repeat another":  # e.g. 'task,item_id,model,score,score ': which score is meant?
        other = data.draw(st.sampled_from([c for c in rows[0] if c != old]), label="repeated name")
        new = rows[0][col] = other + data.draw(st.sampled_from(["", " ", "  "]), label="padding")
    else:
        new = (
            f"  {old} "
            if action == "pad"
            else data.draw(
                st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12), label="name"
            )
        )
        rows[0][col] = new
    result = Case(workdir, {**base, name: untable(rows, name)}).load()
    outcome(ledger, "dropped/renamed column", result)
    names = [c.strip() for c in rows[0]]
    if any(c and names.count(c) > 1 for c in names):
        expect_error(result, name, row=1, fragment="duplicate column")
    elif old in REQUIRED[name] and old not in names:
        expect_error(result, name, fragment="missing column")
    if action == "pad" or (new is not None and new.strip() == old):
        assert isinstance(result, Benchmark), f"padding a column name must not matter: {result}"


NONFINITE = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "-Infinity", "1e999", "-1e400"]
NOT_A_NUMBER = ["abc", "NA", "null", "None", "1,5", "0x1", "1/2", "--1", "١"]  # last: an Arabic-Indic one  # noqa: RUF001 (a confusable on purpose)


@_settings(60)
@given(data=st.data())
def test_nan_inf_and_non_numbers(
    base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter], data: Any
) -> None:
    name, column = data.draw(
        st.sampled_from(
            [
                ("scores.csv.gz", "score"),
                ("models.csv", "params_b"),
                ("models.csv", "usd_per_mtok_in"),
                ("tasks.csv", "threshold"),
            ]
        ),
        label="cell",
    )
    rows = table(base, name)
    col = rows[0].index(column)
    candidates = [i for i in range(1, len(rows)) if column != "threshold" or rows[i][0] == "commongen"]
    i = data.draw(st.sampled_from(candidates), label="row")
    value = data.draw(st.sampled_from(NONFINITE + NOT_A_NUMBER + ["", "  "]), label="value")
    rows[i][col] = value
    result = Case(workdir, {**base, name: untable(rows, name)}).load()
    outcome(ledger, "NaN/inf/non-number cell", result)
    if not value.strip() and column != "score":  # optional metadata: blank means unknown
        if column == "threshold":  # commongen loses its threshold, so its 0.x scores are an error
            expect_error(result, "scores.csv.gz", column="score", fragment="non-0/1")
        else:
            assert isinstance(result, Benchmark)
        return
    fragment = "empty" if not value.strip() else None
    expect_error(result, name, row=line_of(rows, i), column=column, fragment=fragment)


@_settings(60)
@given(data=st.data())
def test_scores_outside_0_1(
    base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter], data: Any
) -> None:
    rows = table(base, "scores.csv.gz")
    task = data.draw(st.sampled_from(TASKS), label="task")
    i = data.draw(st.sampled_from([k for k in range(1, len(rows)) if rows[k][0] == task]), label="row")
    value = data.draw(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False),
            st.sampled_from([-1.0, -0.0, 0.0, 1.0, 2.0, 0.5, 1e-300, 1 + 1e-15]),
        ),
        label="score",
    )
    text = data.draw(st.sampled_from([repr(value), f"{value:.17g}", f"{value:e}"]), label="spelling")
    rows[i][3] = text
    result = Case(workdir, {**base, "scores.csv.gz": untable(rows, "scores.csv.gz")}).load()
    outcome(ledger, "negative or >1 score", result)
    parsed = float(text)
    if task in BINARY_TASKS and parsed not in (0.0, 1.0):
        expect_error(result, "scores.csv.gz", row=line_of(rows, i), column="score", fragment="non-0/1")
        return
    assert isinstance(result, Benchmark), f"{text} in {task} must load: {result}"
    r = int(np.flatnonzero((result.items["task"] == task) & (result.items["item_id"] == rows[i][1]))[0])
    j = result.models.index(rows[i][2])
    assert result.scores[r, j] == parsed
    assert result.correct[r, j] == (parsed > THRESHOLD if task == "commongen" else parsed == 1.0)


@_settings(60)
@given(data=st.data())
def test_duplicates(base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter], data: Any) -> None:
    name = data.draw(st.sampled_from(FILES), label="file")
    rows = table(base, name)
    src = data.draw(st.integers(1, len(rows) - 1), label="duplicated row")
    dst = data.draw(st.integers(1, len(rows)), label="inserted at")
    copy = list(rows[src])
    if data.draw(st.booleans(), label="change a non-key cell"):
        key_cols = [rows[0].index(k) for k in KEYS[name]]
        free = [c for c in range(len(copy)) if c not in key_cols]
        if free:
            c = data.draw(st.sampled_from(free), label="cell")
            copy[c] = {"score": "1", "input": "another text"}.get(rows[0][c], copy[c])
    rows.insert(dst, copy)
    result = Case(workdir, {**base, name: untable(rows, name)}).load()
    outcome(ledger, "duplicate rows", result)
    later = max(dst, src + (1 if dst <= src else 0))  # index of the second copy in the new file
    expect_error(result, name, row=line_of(rows, later), fragment="duplicate")


LATIN1 = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters='",\r\n'),
    min_size=1,
    max_size=20,
)


def _first_bad_utf8_line(raw: bytes) -> int | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return raw.count(b"\n", 0, exc.start) + 1
    return None


@_settings(60)
@given(data=st.data())
def test_mixed_encodings(
    base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter], data: Any
) -> None:
    kind = data.draw(
        st.sampled_from(["latin-1 cell", "latin-1 model name", "utf-16 file", "bom"]), label="kind"
    )
    name = "models.csv" if kind == "latin-1 model name" else data.draw(st.sampled_from(FILES), label="file")
    raw = unzip(base[name], name)
    if kind in ("latin-1 cell", "latin-1 model name"):
        rows = table(base, name)
        i = data.draw(st.integers(1, len(rows) - 1), label="row")
        c = 0 if kind == "latin-1 model name" else data.draw(st.integers(0, len(rows[i]) - 1), label="column")
        marker = "\x00MARK\x00"
        rows[i][c] = rows[i][c] + marker
        text = untable(rows, "plain").decode("utf-8")
        head, tail = text.split(marker)
        raw = (
            head.encode("utf-8")
            + data.draw(LATIN1, label="latin-1 text").encode("latin-1")
            + tail.encode("utf-8")
        )
    elif kind == "utf-16 file":
        raw = raw.decode("utf-8").encode("utf-16")
    else:
        raw = b"\xef\xbb\xbf" + raw
    result = Case(workdir, {**base, name: rezip(raw, name)}).load()
    outcome(ledger, "mixed encodings", result)
    bad_line = _first_bad_utf8_line(raw)
    if bad_line is not None:
        err = expect_error(result, name, fragment="not valid UTF-8")
        assert f"(line {bad_line})" in err.message, err.message
    elif kind == "bom":
        assert isinstance(result, Benchmark), f"a UTF-8 byte order mark must be accepted: {result}"


@_settings(10)
@given(data=st.data())
def test_one_megabyte_input(
    base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter], data: Any
) -> None:
    unit = data.draw(
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=64),
        label="repeated text",
    )
    text = unit * (1_000_000 // len(unit.encode("utf-8")) + 1)
    rows = table(base, "items.csv.gz")
    i = data.draw(st.integers(1, len(rows) - 1), label="row")
    rows[i][2] = text
    result = Case(workdir, {**base, "items.csv.gz": untable(rows, "items.csv.gz")}).load()
    outcome(ledger, "1 MB single input", result)
    assert len(text.encode("utf-8")) >= 1_000_000
    if not text.strip():
        expect_error(result, "items.csv.gz", row=line_of(rows, i), column="input", fragment="empty input")
        return
    assert isinstance(result, Benchmark), f"a 1 MB input must load: {result}"
    got = result.items.set_index(["task", "item_id"]).loc[(rows[i][0], rows[i][1]), "input"]
    assert got == text, "the 1 MB input must round-trip exactly"


EMPTY = {
    "0 bytes": lambda header: b"",
    "newlines only": lambda header: b"\n\n\n",
    "spaces and newlines": lambda header: b"  \n \n",
    "header only": lambda header: header + b"\n",
    "BOM only": lambda header: b"\xef\xbb\xbf",
}


@_settings(40)
@given(data=st.data())
def test_empty_files(base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter], data: Any) -> None:
    name = data.draw(st.sampled_from(FILES), label="file")
    kind = data.draw(st.sampled_from(sorted(EMPTY)), label="content")
    header = unzip(base[name], name).split(b"\n", 1)[0]
    content = EMPTY[kind](header)
    if name.endswith(".gz") and data.draw(st.booleans(), label="gzip it"):
        content = gzip.compress(content, mtime=0)
    result = Case(workdir, {**base, name: content}).load()
    outcome(ledger, "empty files", result)
    err = expect_error(result, name)
    expected = (
        "empty",
        "no data rows",
        "missing column",
        "truncated or corrupt",
    )  # last: a .gz that is not gzip
    assert any(e in err.message for e in expected), err.message


@_settings(100)
@given(data=st.data())
def test_random_byte_flips(
    base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter], data: Any
) -> None:
    name = data.draw(st.sampled_from(FILES), label="file")
    compressed = name.endswith(".gz") and data.draw(st.booleans(), label="flip the compressed bytes")
    raw = bytearray(base[name] if compressed else unzip(base[name], name))
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        pos = data.draw(st.integers(0, len(raw) - 1), label="position")
        raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
    content = bytes(raw) if compressed else rezip(bytes(raw), name)
    result = Case(workdir, {**base, name: content}).load()
    outcome(ledger, "random byte flips", result)


@_settings(100)
@given(data=st.data())
def test_random_byte_flips_in_compressed_files(
    base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter], data: Any
) -> None:
    """Flips inside the deflate stream: zlib errors, CRC errors, or garbage that fails UTF-8 first."""
    name = data.draw(st.sampled_from(["items.csv.gz", "scores.csv.gz"]), label="file")
    raw = bytearray(base[name])
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        pos = data.draw(st.integers(10, len(raw) - 9), label="position")  # inside the deflate stream
        raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
    result = Case(workdir, {**base, name: bytes(raw)}).load()
    outcome(ledger, "byte flips in gzip stream", result)
    if isinstance(result, DataError):
        assert Path(result.file).name == name, str(result)


def test_corrupt_gzip_whose_text_is_not_utf8(
    base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter]
) -> None:
    """Regression: pandas fails on the bad byte, then re-reading for the error hit the CRC (BadGzipFile)."""
    text = unzip(base["items.csv.gz"], "items.csv.gz")
    header, rest = text.split(b"\n", 1)
    raw = header + b"\n" + b"arc_challenge,x-1,caf\xe9 " + b"y" * 2_000_000 + b"\n" + rest
    packed = bytearray(gzip.compress(raw, mtime=0))
    packed[-8] ^= 0xFF  # wrong CRC32: only noticed at the end of the stream
    result = Case(workdir, {**base, "items.csv.gz": bytes(packed)}).load()
    outcome(ledger, "byte flips in gzip stream", result)
    err = expect_error(result, "items.csv.gz")
    assert "truncated or corrupt" in err.message or "not valid UTF-8" in err.message, err.message


CELL_TEXT = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30),
    st.sampled_from(["", " ", "0", "1", "-1", "1e308", "nan", "\x00", '"', "\r\n", "a,b", "ﾠ", "\u2028"]),
)


@_settings(100)
@given(data=st.data())
def test_random_cell_values(
    base: dict[str, bytes], workdir: Path, ledger: dict[str, Counter], data: Any
) -> None:
    name = data.draw(st.sampled_from(FILES), label="file")
    rows = table(base, name)
    i = data.draw(st.integers(1, len(rows) - 1), label="row")
    c = data.draw(st.integers(0, len(rows[i]) - 1), label="column")
    rows[i][c] = data.draw(CELL_TEXT, label="value")
    result = Case(workdir, {**base, name: untable(rows, name)}).load()
    outcome(ledger, "random cell values", result)
    column = rows[0][c]
    if isinstance(result, DataError) and result.row is not None and Path(result.file).name == name:
        assert result.row == line_of(rows, i) or "duplicate" in result.message, str(result)
    if column in REQUIRED[name] and not rows[i][c].strip():
        expect_error(result, name, row=line_of(rows, i), column=column, fragment="empty")
