"""Checkpoints: atomic writes of plain state dicts, loaded with ``weights_only=True``.

A checkpoint holds the model, EMA and per-phase optimizer / grad-scaler state dicts, all RNG
states, the step, the data position and the best validation loss so far, so a resumed CPU run
ends bit-identical to an uninterrupted one. Nothing in it is a pickled object.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genbench.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, corrupt, unsafe or from another config."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states as plain tensors / tuples."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically: temp file in the same dir, fsync, rename.

    The previous file at ``path`` stays intact until the new one is complete; a write that fails
    (disk full, no permission) raises a :class:`CheckpointError` and leaves it in place. Temp files
    of earlier writers that were killed mid-write are removed after a successful write.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        msg = f"cannot write a checkpoint in {str(path.parent)!r} ({err})"
        raise CheckpointError(msg) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            kept = "the previous checkpoint is kept" if path.exists() else "nothing was saved"
            raise CheckpointError(f"could not write the checkpoint {str(path)!r} ({err}); "
                                  f"{kept}") from None
        raise
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse anything unsafe or unreadable."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt (not a torch "
                              "checkpoint archive)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).partition("WeightsUnpickler error:")[2].strip().split(". ")[0]
        raise CheckpointError(f"refusing to load {str(path)!r}: it holds more than plain "
                              f"weights ({reason or 'unsupported content'})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt ({err})") from None


def write_status(run_dir: Path, status: str, step: int, config_hash: str | None) -> None:
    """Atomically write ``run_dir/status.json`` (what resume and rebuild read first)."""
    tmp = run_dir / ".status.json.tmp"
    tmp.write_text(json.dumps({"status": status, "step": step, "config_hash": config_hash}))
    tmp.replace(run_dir / "status.json")


def read_status(run_dir: Path) -> dict[str, Any]:
    """``run_dir/status.json`` as a dict (empty when missing or unreadable)."""
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
