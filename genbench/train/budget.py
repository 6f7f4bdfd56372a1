"""Training budgets (``trainer.budget``) and what a training step costs.

A budget is ``<unit>:<amount>`` with unit ``steps``, ``seconds``, ``images`` or ``flops``
(``flops:5e12``, ``seconds:60``, ``images:1e5``, ``steps:1200``). ``trainer.budget`` defaults to
``steps:${.max_steps}``, so ``trainer.max_steps`` stays the step budget of every preset; an explicit
budget replaces it (``max_steps`` is then not read). ``null`` means ``steps:<max_steps>`` too.

Every run measures all four quantities, whatever its unit:

- steps: training steps (each runs every phase of the model, each ``repeat`` times);
- images: training examples seen, every phase's batch and every repeat counted;
- seconds: wall time of the training steps themselves (validation, checkpoint writes, logging
  and the anytime probe excluded);
- flops: training FLOPs (forward + backward) as :class:`torch.utils.flop_counter.FlopCounterMode`
  counts them, measured once per phase on a copy of the model (:func:`count_flops`; the mean over
  a phase's ``period`` when a lazy term makes its steps differ) and charged ``repeat`` times per
  phase per step.

``steps``, ``images`` and ``flops`` budgets are a step count fixed before training starts (the
first step at which the budget is spent: ``ceil(amount / per_step)``), so a resumed run ends
bit-identical to an uninterrupted one and lr schedules know their horizon. A ``seconds`` budget
stops at the first step at which the training seconds reach it; a resumed run counts the seconds
already spent (they are in the checkpoint). It has no horizon in steps, so a schedule whose length
is the run's (``T_max: null``, ``total_iters: null``) is refused with it.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from genbench.errors import ConfigError, bad_value
from genbench.models.base import GenerativeModel, Phase

Unit = Literal["steps", "seconds", "images", "flops"]
UNITS: tuple[Unit, ...] = ("steps", "seconds", "images", "flops")
_EXPECTED = (
    "<unit>:<amount> with unit steps, seconds, images or flops and an amount > 0 "
    "(e.g. flops:5e12, seconds:60, images:1e5, steps:1200), or null for steps:<trainer.max_steps>"
)


@dataclass(frozen=True)
class Budget:
    """A training budget: ``amount`` of ``unit`` (an integer for steps and images)."""

    unit: Unit
    amount: float

    def __str__(self) -> str:
        if self.unit in ("steps", "images"):
            return f"{self.unit}:{int(self.amount)}"
        return f"{self.unit}:{self.amount:g}"

    @property
    def deterministic(self) -> bool:
        """Whether the budget is a step count known before training (all units but seconds)."""
        return self.unit != "seconds"

    def steps(self, images_per_step: int, flops_per_step: float) -> int | None:
        """Training steps this budget allows (the first step at which it is spent), or None for
        a ``seconds`` budget. ``images_per_step``: examples per step over all phases and repeats;
        ``flops_per_step``: FLOPs per step (forward + backward)."""
        if self.unit == "steps":
            return int(self.amount)
        if self.unit == "images":
            return max(1, math.ceil(self.amount / images_per_step))
        if self.unit == "flops":
            if flops_per_step <= 0:
                raise ConfigError(
                    f"trainer.budget={self} is invalid for this model: FlopCounterMode counts "
                    "no FLOPs in its training step; use a steps, images or seconds budget"
                )
            return max(1, math.ceil(self.amount / flops_per_step))
        return None

    def spent(self, step: int, images: int, seconds: float, flops: float) -> float:
        """How much of the budget ``step`` steps, ``images`` examples, ``seconds`` of training and
        ``flops`` FLOPs have used, in the budget's unit."""
        return {"steps": step, "images": images, "seconds": seconds, "flops": flops}[self.unit]


def parse_budget(value: Any, max_steps: int, key: str = "trainer.budget") -> Budget:  # noqa: ANN401
    """``trainer.budget`` as a :class:`Budget` (``None``: ``steps:<max_steps>``), or a
    :class:`ConfigError` naming ``key``, the bad value and the valid forms."""
    if value is None:
        return Budget("steps", float(int(max_steps)))
    if not isinstance(value, str) or value.count(":") != 1:
        raise bad_value(key, value, _EXPECTED)
    unit, _, text = (part.strip() for part in value.partition(":"))
    if unit not in UNITS:
        raise ConfigError(
            f"{key}={value!r} is invalid: unit {unit!r} is not one of {', '.join(UNITS)}"
        )
    try:
        amount = float(text)
    except ValueError:
        raise bad_value(key, value, _EXPECTED) from None
    if not math.isfinite(amount) or amount <= 0:
        raise bad_value(key, value, _EXPECTED)
    if unit in ("steps", "images") and amount != int(amount):
        raise bad_value(key, value, f"a whole number of {unit} (e.g. {unit}:{math.ceil(amount)})")
    return Budget(unit, amount)  # type: ignore[arg-type]


def budget_of(trainer: Mapping[str, Any]) -> Budget:
    """The budget of a ``trainer`` config (one written before budgets existed: its
    ``max_steps``)."""
    return parse_budget(trainer.get("budget"), int(trainer["max_steps"]))


def parse_eval_at(value: Any, key: str = "trainer.eval_at") -> list[float]:  # noqa: ANN401
    """``trainer.eval_at`` as a sorted list of distinct fractions in (0, 1] (``None``: [])."""
    expected = "a list of fractions of the budget in (0, 1], e.g. [0.1, 0.25, 0.5, 1.0]"
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        try:
            value = list(value)  # a ListConfig
        except TypeError:
            raise bad_value(key, value, expected) from None
    out: set[float] = set()
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < float(v) <= 1:
            raise bad_value(key, list(value), expected)
        out.add(float(v))
    return sorted(out)


def _attention(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:  # noqa: ANN401
    return sdpa_flop_count(q, k, v)


def _attention_backward(
    grad: Any,
    q: Any,
    k: Any,
    v: Any,
    *args: Any,
    out_shape: Any = None,
    **kw: Any,  # noqa: ANN401
) -> int:
    return sdpa_backward_flop_count(grad, q, k, v)


#: the CPU kernel of ``scaled_dot_product_attention`` (torch counts only its CUDA kernels), with
#: torch's own attention formulas (shapes in, FLOPs out)
_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward,
}


class _TotalOnly:
    """Stands in for :class:`FlopCounterMode`'s per-module tracker, whose backward hooks break
    ``torch.autograd.grad`` with respect to inputs (the gradient penalty of WGAN-GP) on torch
    2.14: only the total is needed, which the tracker's ``Global`` entry holds."""

    parents = frozenset({"Global"})
    is_bw = False

    def __enter__(self) -> _TotalOnly:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def count_flops(
    model: GenerativeModel,
    phases: Sequence[Phase],
    x: torch.Tensor,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
    labels: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """FLOPs of one optimizer step of each phase on the batch ``x`` (``[N, C, H, W]`` levels, or
    ``[N, D]`` for toys; ``labels``: ``{"y": [N] labels}`` for a conditional model): the forward
    pass of ``training_losses(x, phase, **labels)["loss"].mean()`` and its
    backward, as :class:`FlopCounterMode` counts them (matrix products and convolutions; a
    linear layer ``in -> out`` on N rows costs ``2 N in out`` forward, and its backward
    ``2 N in out`` for the weight gradient plus ``2 N in out`` for the input gradient when the
    input needs one; elementwise work is not counted).

    A phase with ``period`` k > 1 (a lazy regularizer due every k-th step) is run k times and
    charged the mean, so a budget pays for the penalty as often as training takes it.

    Runs on a deep copy of ``model`` inside ``torch.random.fork_rng``: the model, its optimizers
    and every random generator are left exactly as they were."""
    devices = [x.device] if x.device.type == "cuda" else []
    work = copy.deepcopy(model).train()
    out: dict[str, float] = {}
    with torch.random.fork_rng(devices=devices):
        for phase in phases:
            period = max(1, int(phase.period))
            counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
            counter.mod_tracker = _TotalOnly()  # type: ignore[assignment]
            with counter:
                for _ in range(period):
                    work.zero_grad(set_to_none=True)
                    with autocast() if autocast is not None else contextlib.nullcontext():
                        terms = work.training_losses(x, phase.name, **(labels or {}))
                        loss = terms["loss"].float().mean()
                    loss.backward()
            out[phase.name] = float(counter.get_total_flops()) / period
    return out


def per_step(per_phase: Mapping[str, float], phases: Sequence[Phase]) -> float:
    """A training step's cost from each phase's cost per optimizer step (``repeat`` times
    each)."""
    return float(sum(p.repeat * per_phase[p.name] for p in phases))
