"""Learning-rate schedules from ``conf/scheduler``: one torch scheduler per phase's optimizer.

A ``conf/scheduler`` entry is a ``_partial_`` config of a ``torch.optim.lr_scheduler`` class
(the main schedule) plus one genbench key, ``warmup_steps`` (W). With W > 0 a linear warm-up runs
first, composed with torch's ``SequentialLR``::

    SequentialLR([LinearLR(start_factor=1/W, end_factor=1, total_iters=W-1), main],
                 milestones=[W])

so the lr factor at step i < W is (i + 1) / W and the main schedule starts at step W from the
optimizer's lr. A length argument of the main schedule (``T_max``, ``total_iters``) left ``null``
is the number of steps after the warm-up, ``S - W`` where S is the run's length in steps (its
``trainer.budget``: ``trainer.max_steps`` by default, or the steps an ``images`` or ``flops`` budget
allows once a step's cost is known): a cosine or linear decay then ends exactly at the last step.
A ``seconds`` budget has no length in steps, so such a schedule is refused with it (set the length
explicitly, or choose a schedule without one: ``constant``, ``linear_warmup``, ``multistep``).

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


def horizon_keys(spec: Mapping[str, Any] | DictConfig | None) -> list[str]:
    """The length arguments of a ``conf/scheduler`` entry left ``null`` (set from the run's
    length in steps)."""
    if spec is None:
        return []
    return [k for k in LENGTH_KEYS if k in spec and spec.get(k) is None]


def check_scheduler(spec: Mapping[str, Any] | DictConfig | None, budget: str | None = None) -> None:
    """Refuse a bad ``scheduler`` config before training: a missing or foreign ``_target_``, a
    negative or fractional ``warmup_steps``, a schedule whose length is the run's with a
    ``budget`` (``trainer.budget``, normalized) in seconds."""
    if spec is None:
        return
    keys = horizon_keys(spec)
    if budget is not None and budget.startswith("seconds:") and keys:
        raise ConfigError(
            f"scheduler.{keys[0]}=null is invalid with trainer.budget={budget}: a seconds "
            "budget does not fix the run's length in steps; set "
            f"scheduler.{keys[0]} to a number of steps, use a steps, images or flops budget, or "
            "a schedule without a length (scheduler=constant, linear_warmup or multistep)"
        )
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
    max_steps: int | None,
    phase: str = "main",
) -> LRScheduler | None:
    """The schedule of one phase's ``optimizer`` from a ``conf/scheduler`` entry (``None``: no
    schedule, a constant lr). ``max_steps`` is the run's length in steps (``None`` for a seconds
    budget: a schedule that needs it is a :class:`ConfigError`); the schedule is stepped once
    per training step."""
    if spec is None:
        return None
    if max_steps is None and horizon_keys(spec):
        raise ConfigError(
            f"scheduler.{horizon_keys(spec)[0]}=null is invalid with a seconds budget: the run's "
            "length in steps is not known; set it to a number of steps"
        )
    kwargs = _plain(spec)
    warmup = warmup_steps(kwargs)
    kwargs.pop("warmup_steps", None)
    # a zero length would divide by zero (CosineAnnealingLR)
    rest = max(1, int(max_steps or 1) - warmup)
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
