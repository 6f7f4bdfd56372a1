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
        # Walking the module trees for parameters()/buffers() was 2/3 of an update (2% of a Glow
        # step on CPU, scripts/bench), so the tensor lists are made once: the copy's tensors are
        # only ever changed in place; the model's parameters are fixed objects (its optimizers
        # hold them too); its buffers are looked up by (module, name) at every update, so a
        # buffer that is reassigned rather than updated in place is still followed.
        self._ema_params = list(self.module.parameters())
        self._ema_buffers = list(self.module.buffers())
        self._bound: nn.Module | None = None
        self._params: list[nn.Parameter] = []
        self._buffer_slots: list[tuple[nn.Module, str]] = []

    def _bind(self, model: nn.Module) -> None:
        self._bound = model
        self._params = list(model.parameters())
        self._buffer_slots = [
            (model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2])
            for name, _ in model.named_buffers()
        ]
        if len(self._params) != len(self._ema_params) or len(self._buffer_slots) != len(
            self._ema_buffers
        ):
            raise ValueError(
                "EMA.update: the model does not have the EMA copy's parameters and buffers"
            )

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if model is not self._bound:
            self._bind(model)
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        torch._foreach_lerp_(self._ema_params, self._params, 1.0 - d)
        for b_ema, (mod, name) in zip(self._ema_buffers, self._buffer_slots):
            b_ema.copy_(mod._buffers[name])

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
