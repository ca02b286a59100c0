"""The boundary to the file system: every file read through here is bounded, every write atomic.

Reading: :func:`read_bytes` / :func:`open_regular` refuse what is not a regular file (a FIFO would
block, ``/dev/zero`` never ends), check the size against a cap *before* reading, and turn every
``OSError`` (missing, a folder, permission denied...) into one :class:`~benchroute.errors.BenchrouteError`
that names the file and the fix.

Writing: a write goes to a temporary file in the same directory, is flushed and fsync'ed, then
renamed over the target (rename is atomic on POSIX), so a killed process or a full disk leaves the
previous version intact. :func:`atomic_write_dir` does the same for a directory of files that belong
together (a saved router, a benchmark): all of them change at once, or none does.
:func:`check_output_dir` is the one check of an output folder (an existing file, a path under a file,
read-only, not empty, the command's own input inside it), run by the CLI before any work and by
:func:`atomic_write_dir` again before the swap. A failing write becomes a ``ConfigError`` naming the
path and the errno ("No space left on device"), never a traceback.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import json
import math
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from benchroute.errors import BenchrouteError, ConfigError, DataError

MiB = 1 << 20
#: Size caps of the files benchroute reads whole (bytes). A hostile file larger than this is refused
#: before a byte of it is read; ``BENCHROUTE_MAX_<NAME>_MB`` raises one where a real file is bigger.
LIMITS = {
    "manifest": 64 * MiB,  # router.json
    "arrays": 8192 * MiB,  # arrays.safetensors
    "pack": 8192 * MiB,  # embedding packs
    "inputs": 2048 * MiB,  # recommend / route / suggest-labels --inputs (streamed)
    "labeled": 256 * MiB,  # --labeled
    "config": 4 * MiB,  # serve.yaml
    "json": 1024 * MiB,  # JSON and JSON-lines files of the importers (HELM, lm-eval)
    "data": 1 << 46,  # benchmark files and import tables (read in full by pandas anyway)
}


def limit(kind: str) -> int:
    env = os.environ.get(f"BENCHROUTE_MAX_{kind.upper()}_MB")
    if env:
        with contextlib.suppress(ValueError):
            return int(float(env) * MiB)
    return LIMITS[kind]


def _error(kind: type[BenchrouteError], path: Path, message: str, hint: str | None = None) -> BenchrouteError:
    if issubclass(kind, DataError):
        return kind(message, file=str(path), hint=hint)
    return kind(f"{path}: {message}", hint)


_READ_HINTS = {
    errno.ENOENT: ("file not found", "check the path"),
    errno.EACCES: ("permission denied", "make it readable (chmod u+r), or run as a user who may read it"),
    errno.EPERM: ("permission denied", "make it readable (chmod u+r), or run as a user who may read it"),
    errno.EISDIR: ("is a folder, not a file", "give the path of a file"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.ELOOP: ("too many levels of symbolic links", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "check the path"),
}


def read_error(path: Path, exc: OSError, kind: type[BenchrouteError] = DataError) -> BenchrouteError:
    """An OSError met while reading ``path`` as one user-facing error."""
    message, hint = _READ_HINTS.get(
        exc.errno or 0, (f"cannot read it ({exc.strerror or exc})", "check the file and the disk")
    )
    return _error(kind, path, message, hint)


@contextlib.contextmanager
def open_regular(
    path: str | os.PathLike[str], kind: str, error: type[BenchrouteError] = DataError
) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading if it is a regular file within the size cap of ``kind``.

    Opened non-blocking (a FIFO neither blocks nor is read) and checked with ``fstat`` on the open
    descriptor, so a symlink swapped in between cannot slip past the check.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise read_error(path, exc, error) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _error(error, path, "is a folder, not a file", "give the path of a file")
        if not stat.S_ISREG(st.st_mode):
            raise _error(
                error,
                path,
                "is not a regular file (a device, FIFO or socket)",
                "give the path of an ordinary file",
            )
        cap = limit(kind)
        if st.st_size > cap:
            raise _error(
                error,
                path,
                f"is {st.st_size:,} bytes, more than the {cap:,}-byte limit for a {kind} file",
                f"check that this is the right file (or raise BENCHROUTE_MAX_{kind.upper()}_MB)",
            )
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f, io.BufferedReader(_Capped(f, limit(kind), path, kind, error), 1 << 16) as capped:
        yield capped


class _Capped(io.RawIOBase):
    """A seekable reader that refuses to read past ``cap`` bytes (a file growing while read)."""

    def __init__(self, f: IO[bytes], cap: int, path: Path, kind: str, error: type[BenchrouteError]):
        self._f, self._cap, self._path, self._kind, self._errcls = f, cap, path, kind, error

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()

    def readinto(self, b: Any) -> int:
        try:
            n = self._f.readinto(b)  # type: ignore[attr-defined]
        except OSError as exc:
            raise read_error(self._path, exc, self._errcls) from None
        if self._f.tell() > self._cap:
            raise _error(self._errcls, self._path, f"grew past the size limit for a {self._kind} file")
        return int(n or 0)


def read_bytes(path: str | os.PathLike[str], kind: str, error: type[BenchrouteError] = DataError) -> bytes:
    """The whole of a regular file within the size cap of ``kind`` (see :func:`open_regular`)."""
    with open_regular(path, kind, error) as f:
        return f.read()


def decode_utf8(data: bytes, path: Path, error: type[BenchrouteError] = DataError) -> str:
    """UTF-8 text (a leading BOM dropped); a bad byte is reported with its offset and line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _error(
            error,
            path,
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line})",
            "save it as UTF-8",
        ) from None


def read_text(path: str | os.PathLike[str], kind: str, error: type[BenchrouteError] = DataError) -> str:
    return decode_utf8(read_bytes(path, kind, error), Path(path), error)


def lines(text: str) -> list[str]:
    """Lines split at ``\\n`` only (``\\r\\n`` too): U+2028, form feeds and the like stay inside a line."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


# ----------------------------------------------------------------------------------------- writing

_WRITE_HINTS = {
    errno.ENOSPC: "free some disk space and run again (nothing was replaced)",
    errno.EDQUOT: "free some space in your quota and run again (nothing was replaced)",
    errno.EFBIG: "the file system refuses a file this large; write elsewhere",
    errno.EACCES: "choose a location you may write to, or fix its permissions",
    errno.EPERM: "choose a location you may write to, or fix its permissions",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOTDIR: "a part of the path is a file; choose another path",
    errno.EISDIR: "the path is a folder; give a file path",
    errno.EEXIST: "choose a new path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def write_error(path: Path, exc: OSError, what: str = "write") -> ConfigError:
    """An OSError met while writing ``path`` as one ConfigError naming it and the fix."""
    return ConfigError(
        f"cannot {what} {path}: {exc.strerror or exc}",
        _WRITE_HINTS.get(exc.errno or 0, "check the path and the disk"),
    )


@contextlib.contextmanager
def writing(path: Path, what: str = "write") -> Iterator[None]:
    """Turn an OSError inside the block into :func:`write_error` for ``path``."""
    try:
        yield
    except BenchrouteError:
        raise
    except OSError as exc:
        raise write_error(path, exc, what) from None


def _check_parent(path: Path, option: str) -> None:
    """The nearest existing ancestor must be a folder we may write in."""
    label = f"{option} {path}" if option else str(path)
    parent = path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{label}: {parent} is a file, not a folder", "choose a path under a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        reason = "is read-only" if _read_only_fs(parent) else "is not writable by you"
        raise ConfigError(f"{label}: {parent} {reason}", "choose a location you may write to")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
    except (ValueError, OSError):
        return False
    return True


def check_output_dir(
    path: str | os.PathLike[str],
    *,
    option: str = "",
    replaceable: Collection[str] | None = None,
    force: bool = False,
    protect: Collection[str | os.PathLike[str]] = (),
) -> None:
    """Refuse an output folder we must not write: the one guard of every folder a command writes.

    * an existing file (or a path under a file), an unwritable or read-only location;
    * an existing folder marked read-only (no owner write bit), whatever the user's privileges;
    * a folder holding anything but ``replaceable`` names (our own earlier output) unless ``force``
      (``replaceable=None``: any contents are fine, the command writes named files into it);
    * always, even with ``force``: a folder holding one of ``protect`` (the command's own input),
      or the current folder or one above it.
    """
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    for source in protect:
        if _inside(Path(source), path):
            raise ConfigError(
                f"{label}: the output folder holds the input {source}; writing it would replace the input",
                "write the output into a new folder",
            )
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{label} is an existing file, not a directory", "give a new or empty folder path")
    _check_parent(path, option)
    if not path.is_dir():
        return
    st = path.stat()
    if not st.st_mode & stat.S_IWUSR or not os.access(path, os.W_OK | os.X_OK):
        reason = "is on a read-only file system" if _read_only_fs(path) else "is read-only"
        raise ConfigError(f"{label} {reason}", "make it writable (chmod u+w) or choose another folder")
    if replaceable is None:
        return
    try:
        entries = [p.name for p in path.iterdir()]
    except OSError as exc:
        raise write_error(path, exc, "list") from None
    foreign = sorted(
        n for n in entries if n not in replaceable and not (n.startswith(".") and n.endswith(".tmp"))
    )
    if foreign and force and _inside(Path.cwd(), path):
        raise ConfigError(
            f"{label} is the current folder or holds it; refusing to replace it even with --force",
            "write the output into a new folder",
        )
    if foreign and not force:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConfigError(
            f"{label} is not empty (it holds other files: {shown}); refusing to replace it",
            "choose a new or empty folder, or pass --force to replace the folder as a whole",
        )


def check_output_file(
    path: str | os.PathLike[str], *, option: str = "", protect: Collection[str | os.PathLike[str]] = ()
) -> None:
    """Refuse an output file path that is a folder, under a file, unwritable, or one of ``protect``."""
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    for source in protect:
        with contextlib.suppress(OSError):
            if path.exists() and Path(source).exists() and path.samefile(source):
                raise ConfigError(f"{label} is {source}, which this command reads", "give another path")
    if path.is_dir():
        raise ConfigError(f"{label} is a folder", "give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{label} is read-only", "choose another path")
    _check_parent(path, option)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    with writing(path):
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


def atomic_write_dir(
    path: Path,
    files: Mapping[str, bytes],
    *,
    replaceable: Collection[str] = (),
    force: bool = False,
    protect: Collection[str | os.PathLike[str]] = (),
) -> None:
    """Make ``path`` a directory holding exactly ``files`` (name -> bytes), all or nothing.

    The files are written and fsync'ed in a fresh sibling directory, which is then swapped with
    ``path`` in one atomic rename (``renameat2(RENAME_EXCHANGE)``, or a plain rename when ``path``
    does not exist yet), and the previous contents are deleted. A process killed at any moment, or
    a full disk, leaves either the complete previous directory or the complete new one; at worst a
    hidden ``.<name>.*.tmp`` sibling is left behind. Where the kernel or file system cannot
    exchange, the old directory is renamed aside first (a crash in that instant leaves the old
    version under the hidden name). An existing ``path`` may hold only names in ``files`` or
    ``replaceable`` (and our hidden temporary files) unless ``force``: anything else is refused, so
    no unrelated file is ever deleted (see :func:`check_output_dir`, also for ``protect``). The new
    directory keeps the previous one's permission bits; a read-only one is refused.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    check_output_dir(path, replaceable={*files, *replaceable}, force=force, protect=protect)
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_dir() else None
    with writing(path):
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
            if mode is not None:
                os.chmod(stage, mode)
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
