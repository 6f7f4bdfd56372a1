"""Files genbench writes atomically and files it reads with bounds.

Writes go to a temporary file in the target's folder, are flushed to disk and then renamed over
the target: a reader sees the old file or the new one, never half of one, and a failed write (a
full disk, no permission) leaves the old file in place and no temporary or zero-byte file behind.

Reads of anything that may come from someone else (run folders, caches) are bounded in size and
never unpickle: JSON and YAML are parsed into plain containers only.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from genbench.errors import UserError

#: largest JSON or YAML file genbench reads from a run folder (bytes)
MAX_DOCUMENT_BYTES = 16 * 2**20


class FileError(UserError):
    """A file genbench must read is missing, too large or malformed, or one it must write cannot
    be written."""


def atomic_write(
    path: Path, content: bytes | str | Callable[[IO[bytes]], None], *, what: str = "file"
) -> None:
    """Write ``content`` (bytes, text, or a function writing to a binary file object) to ``path``
    atomically. Raises :class:`FileError` naming ``path`` when it cannot be written; the previous
    file at ``path`` is then kept as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise FileError(f"cannot write the {what} {str(path)!r} ({err.strerror or err})") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: files get the usual mode
        with os.fdopen(fd, "wb") as raw:
            f = _Recording(raw)
            try:
                if callable(content):
                    content(f)
                else:
                    f.write(content.encode() if isinstance(content, str) else content)
            except Exception as failed:
                # a writer may turn the file's OSError into its own error (torch.save raises
                # RuntimeError on a full disk): report the OSError itself
                if f.error is not None and not isinstance(failed, OSError):
                    raise f.error from None
                raise
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            kept = f"the previous {what} is kept" if path.exists() else "nothing was written"
            raise FileError(
                f"could not write the {what} {str(path)!r} ({err.strerror or err}); {kept}"
            ) from None
        raise
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by writers that were killed
        stale.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _Recording:
    """A binary file that remembers the first ``OSError`` its writes raised."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401  (everything else: the file's own)
        return getattr(self._f, name)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, value: Any, *, what: str = "file") -> None:
    """``value`` as indented JSON, written atomically."""
    atomic_write(path, json.dumps(value, indent=1, default=str), what=what)


def read_bytes(path: Path, *, max_bytes: int = MAX_DOCUMENT_BYTES, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``), or a :class:`FileError`.
    FIFOs, devices and folders are refused without being opened for reading."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as err:
        raise FileError(f"cannot read the {what} {str(path)!r} ({err.strerror or err})") from None
    if not path.is_file():
        raise FileError(f"the {what} {str(path)!r} is not a regular file")
    if st.st_size > max_bytes:
        raise FileError(
            f"the {what} {str(path)!r} is too large ({st.st_size:,} bytes; at most "
            f"{max_bytes:,} are read)"
        )
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise FileError(f"cannot read the {what} {str(path)!r} ({err.strerror or err})") from None
    if len(data) > max_bytes:
        raise FileError(f"the {what} {str(path)!r} grew past {max_bytes:,} bytes while read")
    return data


def read_json(path: Path, *, expect: type = dict, what: str = "file") -> Any:
    """The JSON document at ``path``, which must be an ``expect`` (a dict by default: the JSON
    value ``null`` or a list is a :class:`FileError`, like malformed or oversized text)."""
    data = read_bytes(path, what=what)
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise FileError(f"the {what} {str(path)!r} is not valid JSON ({err})") from None
    if not isinstance(value, expect):
        raise FileError(
            f"the {what} {str(path)!r} holds a JSON {type(value).__name__}, not a {expect.__name__}"
        )
    return value
