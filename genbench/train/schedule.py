"""Learning-rate schedules from ``conf/scheduler``: one torch scheduler per phase's optimizer.

A ``conf/scheduler`` entry is a ``_partial_`` config of a ``torch.optim.lr_scheduler`` class
(the main schedule) plus one genbench key, ``warmup_steps`` (W). With W > 0 a linear warm-up runs
first, composed with torch's ``SequentialLR``::

    SequentialLR([LinearLR(start_factor=1/W, end_factor=1, total_iters=W-1), main],
                 milestones=[W])

so the lr factor at step i < W is (i + 1) / W and the main schedule starts at step W from the
optimizer's lr. A length argument of the main schedule (``T_max``, ``total_iters``) left ``null``
is the number of steps after the warm-up, ``trainer.max_steps - W``: a cosine or linear decay then
ends exactly at the last step.

Schedules advance once per *training* step, after every phase has run: the ``repeat``
discriminator steps of a GAN share the step's lr (the released WGAN-GP and SNGAN code decay both
networks' lr by generator iteration in the same way).

Exactness: torch's ``LinearLR`` updates the lr multiplicatively (lr_i = lr_{i-1} (i+1) / i, in
floating point), not from the closed form. Over a warm-up of W steps it drifts from
``base_lr * ((i + 1) / W)`` by at most ~3e-14 relative (W = 5000), equal at step 0; from step W on
``SequentialLR`` restarts the main schedule from its closed form, so the lr after the warm-up is
exactly the optimizer's lr again (``tests/train/test_schedule.py`` measures both).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import LinearLR, LRScheduler, SequentialLR

from genbench.errors import ConfigError, positive_int

#: main-schedule arguments that hold a length in steps; ``null`` = the steps after the warm-up
LENGTH_KEYS = ("T_max", "total_iters")

# A grad scaler skips the optimizer step of a step with inf/nan gradients (fp16); the schedule
# still advances with the training step, by design, so torch's warning about the order is noise.
warnings.filterwarnings(
    "ignore",
    message=r"Detected call of `lr_scheduler\.step\(\)` before "
    r"`optimizer\.step\(\)`",
    category=UserWarning,
)


def _plain(spec: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    if isinstance(spec, DictConfig):
        return OmegaConf.to_container(spec, resolve=True)  # type: ignore[return-value]
    return dict(spec)


def warmup_steps(spec: Mapping[str, Any] | DictConfig) -> int:
    """``scheduler.warmup_steps`` as an int >= 0, or a :class:`ConfigError` naming the key."""
    return positive_int("scheduler.warmup_steps", spec.get("warmup_steps", 0) or 0, minimum=0)


def check_scheduler(spec: Mapping[str, Any] | DictConfig | None) -> None:
    """Refuse a bad ``scheduler`` config before training: a missing or foreign ``_target_``, a
    negative or fractional ``warmup_steps``."""
    if spec is None:
        return
    if isinstance(spec, DictConfig) and OmegaConf.is_missing(spec, "warmup_steps"):
        raise ConfigError(
            "scheduler.warmup_steps has no value: set it on the command line, "
            "e.g. scheduler.warmup_steps=1000"
        )
    warmup_steps(spec)
    target = str(spec.get("_target_", ""))
    if not target.startswith(("torch.optim.lr_scheduler.", "genbench.")):
        raise ConfigError(
            f"scheduler._target_={target!r} is invalid: expected a class of "
            "torch.optim.lr_scheduler (see conf/scheduler)"
        )


def build_scheduler(
    spec: Mapping[str, Any] | DictConfig | None,
    optimizer: torch.optim.Optimizer,
    max_steps: int,
    phase: str = "main",
) -> LRScheduler | None:
    """The schedule of one phase's ``optimizer`` from a ``conf/scheduler`` entry (``None``: no
    schedule, a constant lr). ``max_steps`` is ``trainer.max_steps``; the schedule is stepped
    once per training step."""
    if spec is None:
        return None
    kwargs = _plain(spec)
    warmup = warmup_steps(kwargs)
    kwargs.pop("warmup_steps", None)
    rest = max(1, int(max_steps) - warmup)  # a zero length would divide by zero (CosineAnnealingLR)
    for key in LENGTH_KEYS:
        if key in kwargs and kwargs[key] is None:
            kwargs[key] = rest
    try:
        main = instantiate(kwargs)(optimizer=optimizer)
        if warmup == 0:
            return main
        ramp = LinearLR(
            optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1
        )
        return SequentialLR(optimizer, [ramp, main], milestones=[warmup])
    except (InstantiationException, TypeError, ValueError, ZeroDivisionError) as err:
        raise ConfigError(
            f"could not build the lr schedule of phase {phase!r} from "
            f"scheduler._target_={kwargs.get('_target_')!r}: "
            f"{err.__cause__ or err}"
        ) from None
