"""One exception hierarchy for everything a user can get wrong.

The CLI turns any :class:`BenchrouteError` into one readable line and exit code 2; the server turns
it into a 4xx JSON body. Anything else escaping is a bug in benchroute, not in the user's input.
"""

from __future__ import annotations


class BenchrouteError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.hint})" if self.hint else self.message


class DataError(BenchrouteError):
    """Malformed benchmark data: names the file, the row (1-based, header = row 1) and/or column."""

    def __init__(
        self,
        message: str,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.row = row
        self.column = column
        where = []
        if file:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if column:
            where.append(f"column '{column}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message, hint)


class ModelNotAvailableError(BenchrouteError):
    """An embedding model that is not installed (we never download from a hub at run time)."""


class IntegrityError(BenchrouteError):
    """A file whose checksum, size or format version does not match what was written."""


class NotFittedError(BenchrouteError, ValueError, AttributeError):
    """An estimator or router used before ``fit``.

    Like scikit-learn's NotFittedError it is a ValueError and an AttributeError (what sklearn's own
    tooling catches); it does not subclass sklearn's class, so importing the errors stays cheap.
    """


class ConfigError(BenchrouteError):
    """A bad option, configuration file or request parameter."""
