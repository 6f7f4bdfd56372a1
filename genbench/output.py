"""What genbench writes for the user: files (atomically, never over a leaderboard, a run's files or
a folder) and JSON (strict: no ``NaN``/``Infinity`` tokens).

A file is written to a temp file in its own folder, flushed, fsynced and renamed over the target, so
a full disk or a read-only folder leaves the previous file (or nothing) and no partial or
zero-byte file; the failure is one :class:`WriteError` sentence.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from genbench.errors import UserError

SQLITE_HEADER = b"SQLite format 3\x00"


class WriteError(UserError):
    """An output cannot be written (full disk, read-only folder) or would overwrite something
    that must not be overwritten."""


def _reason(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "the disk is full (No space left on device)"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"it cannot be written there ({err.strerror})"
    return err.strerror or str(err)


@contextmanager
def replacing(path: Path | str, tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (default ``.<name>.<random>.tmp``) to write; when the
    block ends it replaces ``path``. On failure the temp file is removed, ``path`` is left as it
    was and an ``OSError`` becomes a :class:`WriteError` naming the file and the reason."""
    path = Path(path)
    tmp = tmp or path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"cannot write {str(path)!r}: {_reason(err)}") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with suppress(OSError):  # (on a read-only file system the temp file was never made)
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            kept = "the previous file is kept" if path.exists() else "nothing was written"
            raise WriteError(f"cannot write {str(path)!r}: {_reason(err)}; {kept}") from None
        raise


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], Any] | bytes | str) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temp file beside it (or the bytes / UTF-8
    text given), which is flushed, fsynced and renamed over ``path`` (see :func:`replacing`)."""
    path = Path(path)
    with replacing(path) as tmp, open(tmp, "xb") as f:  # mode 0o666 less the umask
        if isinstance(write, str):
            f.write(write.encode())
        elif isinstance(write, bytes):
            f.write(write)
        else:
            write(f)
        f.flush()
        os.fsync(f.fileno())
    return path


def is_run_dir(path: Path) -> bool:
    """A genbench run folder: ``config.yaml`` with ``checkpoints/`` or ``status.json``."""
    return (path / "config.yaml").is_file() and (
        (path / "checkpoints").is_dir() or (path / "status.json").is_file())


def _run_dir_above(path: Path) -> Path | None:
    for parent in (path, *path.parents):
        if is_run_dir(parent):
            return parent
    return None


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def check_out_file(out: Path | str, key: str = "out") -> Path:
    """``out`` as a file to (over)write, or a :class:`WriteError`: it must not be a folder, a
    leaderboard database (or its ``-wal`` / ``-shm`` files), nor inside a run folder."""
    out = Path(out).expanduser()
    real = out.resolve()
    if real.is_dir():
        raise WriteError(f"{key}={str(out)!r} is a folder: give a file name, e.g. "
                         f"{key}={str(out / 'leaderboard.md')!r}")
    base = real.with_name(real.name.removesuffix("-wal").removesuffix("-shm"))
    if real.suffix == ".sqlite" or _is_sqlite(real) or _is_sqlite(base):
        raise WriteError(f"{key}={str(out)!r} is a leaderboard database: refusing to overwrite "
                         "it; choose another file")
    run = _run_dir_above(real.parent)
    if run is not None:
        raise WriteError(f"{key}={str(out)!r} is inside the run folder {str(run)!r}: refusing "
                         "to write there; choose a file outside it")
    return out


def check_out_folder(out: Path | str, key: str = "out", own_run: Path | None = None) -> Path:
    """``out`` as a folder to write new files into, or a :class:`WriteError`: it must not be an
    existing file, nor inside a run folder other than ``own_run``."""
    out = Path(out).expanduser()
    real = out.resolve()
    if real.exists() and not real.is_dir():
        raise WriteError(f"{key}={str(out)!r} is a file, not a folder: refusing to overwrite it")
    run = _run_dir_above(real)
    if run is not None and (own_run is None or run != Path(own_run).resolve()):
        where = "is the run folder" if run == real else "is inside the run folder"
        raise WriteError(f"{key}={str(out)!r} {where} {str(run)!r}: refusing to write there; "
                         "choose a folder outside it")
    return out


def finite(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float replaced by ``None`` (in dicts, lists, tuples)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def strict_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that always yields valid JSON: non-finite floats become ``null``; other
    non-JSON values (paths, dates) become strings."""
    return json.dumps(finite(obj), allow_nan=False, default=str, **kwargs)
