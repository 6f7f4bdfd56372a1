"""Where genbench may write for the user, and how it prints JSON.

``out=`` (leaderboard exports, reports, plots, sample files) never names a leaderboard database, a
file or folder inside a run folder (other than the run being sampled), or a folder where a file is
expected (or a file where a folder is): such a path is refused in one sentence before anything is
computed. Files themselves are written atomically by :mod:`genbench.files`. JSON is strict: no
``NaN`` / ``Infinity`` tokens, whatever the numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from genbench.files import FileError
from genbench.rundir import RunDir

SQLITE_HEADER = b"SQLite format 3\x00"


def _run_dir_above(path: Path) -> Path | None:
    for parent in (path, *path.parents):
        if RunDir(parent).is_run():
            return parent
    return None


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def check_out_file(out: Path | str, key: str = "out") -> Path:
    """``out`` as a file to (over)write, or a :class:`FileError`: it must not be a folder, a
    leaderboard database (or its ``-wal`` / ``-shm`` files), nor inside a run folder."""
    out = Path(out).expanduser()
    real = out.resolve()
    if real.is_dir():
        raise FileError(
            f"{key}={str(out)!r} is a folder: give a file name, e.g. "
            f"{key}={str(out / 'leaderboard.md')!r}"
        )
    base = real.with_name(real.name.removesuffix("-wal").removesuffix("-shm"))
    if real.suffix == ".sqlite" or _is_sqlite(real) or _is_sqlite(base):
        raise FileError(
            f"{key}={str(out)!r} is a leaderboard database: refusing to overwrite "
            "it; choose another file"
        )
    run = _run_dir_above(real.parent)
    if run is not None:
        raise FileError(
            f"{key}={str(out)!r} is inside the run folder {str(run)!r}: refusing "
            "to write there; choose a file outside it"
        )
    return out


def check_out_folder(out: Path | str, key: str = "out", own_run: Path | None = None) -> Path:
    """``out`` as a folder to write new files into, or a :class:`FileError`: it must not be an
    existing file, nor inside a run folder other than ``own_run``."""
    out = Path(out).expanduser()
    real = out.resolve()
    if real.exists() and not real.is_dir():
        raise FileError(f"{key}={str(out)!r} is a file, not a folder: refusing to overwrite it")
    run = _run_dir_above(real)
    if run is not None and (own_run is None or run != Path(own_run).resolve()):
        where = "is the run folder" if run == real else "is inside the run folder"
        raise FileError(
            f"{key}={str(out)!r} {where} {str(run)!r}: refusing to write there; "
            "choose a folder outside it"
        )
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
