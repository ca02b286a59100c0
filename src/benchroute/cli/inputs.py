"""The CLI's readers of user files: ``--inputs`` (recommend, route, suggest-labels) and ``--labeled``.

One guard for each: the file is opened through :func:`benchroute.files.open_regular` (a regular
file we may read, within a size cap; a folder, a FIFO, ``/dev/zero`` or an unreadable file is one
:class:`~benchroute.errors.DataError` naming it), read as a stream (memory grows with the inputs
kept, not with the file), split into lines at ``\\n`` only (a U+2028 or a form feed inside an input
stays inside it), and every problem is reported with the file and the row (line number for .txt
and .jsonl, record number with the header as row 1 for .csv).
"""

from __future__ import annotations

import codecs
import csv
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from benchroute.errors import DataError
from benchroute.files import open_regular

INPUTS_HINT = "give the new task's inputs: one per line (.txt), a JSON object per line (.jsonl) or a .csv"
LABELED_HINT = 'one {"input": "...", "correct": {"<model>": 0 or 1, ...}} object per line'


def _lines(file: Path, raw: IO[bytes]) -> Iterator[tuple[int, str]]:
    """(line number, line) split at ``\\n`` only, decoded as strict UTF-8 (a BOM dropped)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    lineno = 0
    for chunk in raw:  # a bytes line ends at b"\n" only
        lineno += 1
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"not UTF-8 text (byte 0x{chunk[exc.start]:02x} in this line)",
                file=str(file),
                row=lineno,
                hint="save the file as UTF-8",
            ) from None
        yield lineno, text[:-1].removesuffix("\r") if text.endswith("\n") else text
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(
            "not UTF-8 text (the file ends inside a character)", file=str(file), row=lineno
        ) from None


def _check_text(value: str, file: Path, row: int, what: str = "input") -> str:
    if not value.strip():
        raise DataError(f"empty {what}", file=str(file), row=row, hint=f"every {what} needs some text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            f"{what} holds a lone surrogate escape (such as \\ud800)",
            file=str(file),
            row=row,
            hint="escape only complete UTF-16 pairs, or write the character itself",
        ) from None
    return value


def _json_line(file: Path, lineno: int, line: str, hint: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg})", file=str(file), row=lineno, hint=hint) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", file=str(file), row=lineno, hint=hint) from None


def _jsonl_records(file: Path, raw: IO[bytes], hint: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line, each with a non-empty string "input"."""
    for lineno, line in _lines(file, raw):
        if not line.strip():
            continue
        rec = _json_line(file, lineno, line, hint)
        if not isinstance(rec, dict) or not isinstance(rec.get("input"), str):
            raise DataError(
                'expected an object with a string "input" field', file=str(file), row=lineno, hint=hint
            )
        _check_text(rec["input"], file, lineno)
        yield lineno, rec


def _csv_inputs(file: Path, raw: IO[bytes]) -> Iterator[str]:
    text = (line + "\n" for _, line in _lines(file, raw))
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError("no header line", file=str(file), hint="the first line names the columns: input")
        names = [h.strip() for h in header]
        if "input" not in names:
            raise DataError(
                f"no 'input' column (columns: {', '.join(map(repr, names))})",
                file=str(file),
                row=1,
                hint="name the text column 'input'",
            )
        col = names.index("input")
        for row, cells in enumerate(reader, start=2):
            if not cells:
                continue
            if len(cells) <= col:
                raise DataError(
                    f"no input cell ({len(cells)} cells, the header has {len(names)})",
                    file=str(file),
                    row=row,
                    hint="quote cells that hold commas, quotes or newlines",
                )
            yield _check_text(cells[col], file, row)
    except csv.Error as exc:
        raise DataError(
            f"malformed CSV ({exc})", file=str(file), row=reader.line_num, hint=INPUTS_HINT
        ) from None


def iter_inputs(file: Path) -> Iterator[str]:
    """Stream the inputs of a .txt (one per non-blank line), .jsonl ("input") or .csv (input column)."""
    with open_regular(file, "inputs") as raw:
        if raw.seek(0, 2) == 0:
            raise DataError("file is empty (0 bytes)", file=str(file), hint=INPUTS_HINT)
        raw.seek(0)
        suffix = file.suffix.lower()
        if suffix == ".jsonl":
            yield from (rec["input"] for _, rec in _jsonl_records(file, raw, INPUTS_HINT))
        elif suffix == ".csv":
            yield from _csv_inputs(file, raw)
        else:
            for lineno, line in _lines(file, raw):
                if line.strip():
                    yield _check_text(line, file, lineno)


def read_inputs(file: Path) -> list[str]:
    """Inputs of a new task from .txt (one per line), .jsonl ("input" field) or .csv (input column)."""
    out = list(iter_inputs(Path(file)))
    if not out:
        raise DataError("no inputs in the file", file=str(file), hint=INPUTS_HINT)
    return out


def _label(value: Any) -> float | None:
    """0/1 correctness: JSON 0, 1, 0.0, 1.0, true, false; anything else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return float(value) if value in (0, 1) else None
    return None


def read_labeled(file: Path, models: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Labeled samples of a new task from JSONL: {"input": text, "correct": {model: 0 or 1, ...}} per line.

    With ``models`` (the router's), every sample must give each of them exactly, no other name.
    """
    file = Path(file)
    if file.suffix.lower() != ".jsonl":
        raise DataError("labeled samples must be a .jsonl file", file=str(file), hint=LABELED_HINT)
    known = list(models) if models is not None else None
    out = []
    with open_regular(file, "labeled") as raw:
        for lineno, rec in _jsonl_records(file, raw, LABELED_HINT):
            correct = rec.get("correct")
            if not isinstance(correct, dict) or not correct:
                raise DataError(
                    'expected a "correct" object mapping every model to 0 or 1',
                    file=str(file),
                    row=lineno,
                    hint=LABELED_HINT,
                )
            labels: dict[str, float] = {}
            for model, value in correct.items():
                label = _label(value)
                if label is None:
                    raise DataError(
                        f"correctness of model {model!r} is {json.dumps(value)[:40]}, not 0 or 1",
                        file=str(file),
                        row=lineno,
                        column="correct",
                        hint="write 1 if the model answered this input correctly, else 0",
                    )
                labels[model] = label
            if known is not None:
                unknown = [m for m in labels if m not in known]
                if unknown:
                    shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
                    raise DataError(
                        f'unknown model {unknown[0]!r} in "correct"',
                        file=str(file),
                        row=lineno,
                        column="correct",
                        hint=f"the router's models are: {shown}",
                    )
                missing = [m for m in known if m not in labels]
                if missing:
                    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                    raise DataError(
                        f"no correctness for model(s) {', '.join(map(repr, missing[:3]))}{more}",
                        file=str(file),
                        row=lineno,
                        column="correct",
                        hint="give every model's 0/1 correctness on each labeled input",
                    )
            out.append({"input": rec["input"], "correct": labels})
    if not out:
        raise DataError(
            "no labeled samples in the file", file=str(file), hint="give at least one, or drop --labeled"
        )
    return out
