"""Exact resume: genbench's own trainer, interrupted at a checkpoint and resumed into a fresh
model, ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from genbench import checkpoint
from genbench.build import seed_everything
from genbench.testing.subject import ConformanceError, Subject, expect
from genbench.train.device import DeviceSetup
from genbench.train.loop import Trainer

#: steps before the checkpoint and in all (validation and checkpoints every STEPS steps)
STEPS, TOTAL = 1, 2


def _trainer_config(max_steps: int) -> DictConfig:
    return OmegaConf.create(
        {
            "max_steps": max_steps,
            "batch_size": 4,
            "eval_every": STEPS,
            "ckpt_every": STEPS,
            "log_every": STEPS,
            "grad_clip": 0.0,
            "ema_decay": 0.5,
            "val_examples": 4,
        }
    )


def _trainer(s: Subject, run: Path, max_steps: int, seed: int) -> Trainer:
    """A trainer over seeded uniform data with Adam and EMA, as the runner builds it."""
    setup = DeviceSetup(torch.device("cpu"), "fp32", False, torch.get_num_threads())
    run.mkdir(parents=True)
    seed_everything(seed)  # Python, NumPy and torch, as the runner seeds them
    model = s.build(seed=seed)
    optimizer = OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3})
    return Trainer(
        model,
        s.data(16, seed=8),
        s.data(4, seed=9),
        _trainer_config(max_steps),
        optimizer,
        setup,
        run,
        s.seed,
    )


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The first key at which nested states ``a`` and ``b`` differ, or None."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(torch.equal(a, b))
        )
        return None if same else where or "."
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{where} (keys {sorted(map(str, set(a) ^ set(b)))})"
        for k in a:
            found = _first_difference(a[k], b[k], f"{where}.{k}" if where else str(k))
            if found:
                return found
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return where
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b else where


def check_resume(s: Subject) -> None:
    """Train TOTAL steps; separately train STEPS steps, load the checkpoint into a freshly built
    model (other initial weights, other RNG state) and train on to TOTAL: weights, EMA and
    optimizer states must be identical. State kept outside ``state_dict`` and randomness drawn
    outside torch's, NumPy's and Python's global generators break this."""
    saved = checkpoint.rng_state()
    quiet = logging.getLogger("genbench.train")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="genbench-kit-") as tmp,
            contextlib.redirect_stdout(io.StringIO()),
        ):
            root = Path(tmp)
            whole = _trainer(s, root / "whole", TOTAL, s.seed)
            whole.fit()
            first = _trainer(s, root / "cut", STEPS, s.seed)
            first.fit()
            ckpt = checkpoint.load(root / "cut" / "checkpoints" / "last.pt")
            # other weights and generator states: resume must restore all of them
            resumed = _trainer(s, root / "resumed", TOTAL, s.seed + 1)
            try:
                resumed.load_state_dict(ckpt)
            except (RuntimeError, KeyError, ValueError) as err:
                raise ConformanceError(
                    f"a fresh trainer does not load the checkpoint: {err}"
                ) from None
            resumed.fit()
            a, b = whole.state_dict(), resumed.state_dict()
    finally:
        quiet.setLevel(level)
        checkpoint.set_rng_state(saved)
    for key in ("model", "ema", "optimizers", "scalers"):
        where = _first_difference(a[key], b[key])
        expect(
            where is None,
            f"training {STEPS} step(s), checkpointing and resuming for "
            f"{TOTAL - STEPS} more differs from {TOTAL} uninterrupted steps in {key}: {where} "
            "(keep every "
            "state in the state dict and draw noise from torch's global generator or the "
            "generators passed in)",
        )
