"""Crash-safe file writes: every artifact appears whole or not at all.

A write goes to a temporary file in the same directory, is flushed and fsync'ed, then renamed over
the target (rename is atomic on POSIX), so a killed process or a full disk leaves the previous
version intact. :func:`atomic_write_dir` does the same for a directory of files that belong
together (a saved router): all of them change at once, or none does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared like normal files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so JSON output is strict and stable."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_dir(path: Path, files: Mapping[str, bytes]) -> None:
    """Make ``path`` a directory holding exactly ``files`` (name -> bytes), all or nothing.

    The files are written and fsync'ed in a fresh sibling directory, which is then swapped with
    ``path`` in one atomic rename (``renameat2(RENAME_EXCHANGE)``, or a plain rename when ``path``
    does not exist yet), and the previous contents are deleted. A process killed at any moment, or
    a full disk, leaves either the complete previous directory or the complete new one; at worst a
    hidden ``.<name>.*.tmp`` sibling is left behind. Where the kernel or file system cannot
    exchange, the old directory is renamed aside first (a crash in that instant leaves the old
    version under the hidden name). An existing ``path`` may hold only names in ``files`` (and our
    hidden temporary files): anything else is refused, so no unrelated file is ever deleted.
    """
    from benchroute.errors import ConfigError

    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} exists and is not a directory", "give a new or existing directory path")
    if path.is_dir():
        foreign = sorted(
            p.name
            for p in path.iterdir()
            if p.name not in files and not (p.name.startswith(".") and p.name.endswith(".tmp"))
        )
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(
                f"{path} holds other files ({shown}); refusing to replace it",
                "save into a new or empty directory, or the directory of an earlier save",
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.mkdir(stage)  # mode 0o777 & ~umask, like a directory made by mkdir
    try:
        for name, data in files.items():
            if Path(name).name != name or name in (".", ".."):
                raise ValueError(f"not a plain file name: {name!r}")
            fd = os.open(stage / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(stage)
        if not path.exists():
            os.rename(stage, path)
        elif not _exchange(stage, path):
            aside = path.parent / f".{path.name}.{secrets.token_hex(6)}.old.tmp"
            os.rename(path, aside)
            os.rename(stage, path)
            shutil.rmtree(aside, ignore_errors=True)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # the previous contents, or a failed staging
