"""Exponential moving average of a model's weights, used for evaluation and sampling.

Parameters are averaged with decay ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (a short
warm-up, so short runs are not dominated by the initial weights); buffers (batch-norm statistics,
ActNorm init flags, spectral-norm vectors) are copied, never averaged.
``torch.optim.swa_utils.AveragedModel`` either freezes buffers or averages them, integer flags
included, which is why this small class exists.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """A frozen copy of ``model`` whose parameters track an exponential moving average."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        ema_p = [p for p in self.module.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
