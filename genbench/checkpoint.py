"""Checkpoints: atomic writes of plain state dicts, loaded with ``weights_only=True``.

A checkpoint holds the model, EMA and per-phase optimizer / grad-scaler state dicts, all RNG
states, the step, the data position and the best validation loss so far, so a resumed CPU run
ends bit-identical to an uninterrupted one. Nothing in it is a pickled object.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genbench.errors import UserError
from genbench.files import FileError, atomic_write


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
    """Write ``state`` to ``path`` atomically (:func:`genbench.files.atomic_write`): the previous
    file at ``path`` stays intact until the new one is complete; a write that fails (disk full, no
    permission) raises a :class:`CheckpointError` and leaves it in place."""
    try:
        atomic_write(path, lambda f: torch.save(state, f), what="checkpoint")
    except FileError as err:
        raise CheckpointError(str(err)) from None


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse anything unsafe or unreadable."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt (not a torch checkpoint archive)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).partition("WeightsUnpickler error:")[2].strip().split(". ")[0]
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it holds more than plain "
            f"weights ({reason or 'unsupported content'})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(state).__name__}, not the dict genbench writes"
        )
    return state
