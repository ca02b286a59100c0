"""Text cells and names as every reader of benchmark data sees them (loader and importers alike).

* :func:`cell_text`: a prompt cell that is not a string. A chat-style message list
  (``[{"role": "user", "content": "..."}, ...]``, as JSONL and parquet exports often hold) is joined
  into one text, each message as ``"<role>: <content>"`` and messages separated by a blank line
  (docs/data-format.md); anything else that is not text (a dict, a list of numbers, nested lists)
  is refused with the row, never turned into Python ``repr`` text.
* :func:`name_key` / :func:`check_distinct_names`: two model names that differ only in case,
  surrounding whitespace or invisible characters (zero-width spaces, a BOM, soft hyphens, other
  format characters) would load as two models. They are refused, naming both spellings and rows.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from benchroute.errors import DataError

CHAT_HINT = (
    'give the prompt as text, or as a chat message list [{"role": ..., "content": ...}] '
    "(joined as 'role: content' blocks, see docs/data-format.md)"
)


def _part_text(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
        return str(part["text"])
    return None


def chat_text(value: Any) -> str | None:
    """The text of a chat message list, or None if ``value`` is not one."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list | tuple) or not value:
        return None
    blocks = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return None
        content = message.get("content")
        if isinstance(content, np.ndarray):
            content = content.tolist()
        if isinstance(content, list | tuple):
            parts = [_part_text(p) for p in content]
            if any(p is None for p in parts):
                return None
            content = "\n".join(p for p in parts if p is not None)
        if not isinstance(content, str):
            return None
        blocks.append(f"{message['role']}: {content}")
    return "\n\n".join(blocks)


def cell_text(value: Any, *, file: str, row: int | None, column: str) -> str:
    """A text cell as a string: scalars as written, chat message lists joined, the rest refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float | np.integer | np.floating):
        return str(value)
    joined = chat_text(value)
    if joined is not None:
        return joined
    kind = "a list" if isinstance(value, list | tuple | np.ndarray) else f"a {type(value).__name__}"
    raise DataError(f"{column} is {kind}, not text", file=file, row=row, column=column, hint=CHAT_HINT)


def name_key(name: str) -> str:
    """``name`` compared the way a person reads it: NFKC, invisible characters dropped, trimmed,
    case-folded."""
    text = unicodedata.normalize("NFKC", name)
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cf", "Cc", "Zl", "Zp"))
    return " ".join(text.split()).casefold()


def check_distinct_names(
    names: Sequence[str] | Iterable[str],
    *,
    kind: str = "model",
    file: str | None = None,
    rows: Sequence[int] | None = None,
    column: str | None = None,
) -> None:
    """Refuse two names that differ only in case, whitespace or invisible characters.

    ``rows``: the row of each name in ``file`` (for the message).
    """
    seen: dict[str, int] = {}
    names = list(names)
    for i, name in enumerate(names):
        key = name_key(name)
        j = seen.setdefault(key, i)
        if j != i and names[j] != name:
            where = f" (rows {rows[j]} and {rows[i]})" if rows is not None else ""
            raise DataError(
                f"{kind} names {names[j]!r} and {name!r}{where} differ only in case, surrounding "
                "whitespace or invisible characters",
                file=file,
                row=None if rows is None else rows[i],
                column=column,
                hint=f"spell each {kind} exactly one way (or rename one if they really are two {kind}s)",
            )
