"""Importance sampling of the timestep for training on the variational bound (Nichol & Dhariwal
2021, sec. 3.3).

L_vlb = Σ_t L_t is estimated at one t per example. Sampling t uniformly gives T · L_t, whose
variance is dominated by the few large early terms; sampling t with probability
p_t ∝ √E[L_t²] and weighting by 1 / p_t keeps the estimate unbiased and its variance small.
E[L_t²] is tracked over the last :data:`HISTORY` training values of every t; until every t has
that many, t is uniform. A small uniform share (:data:`UNIFORM_SHARE`) keeps every p_t > 0.

The history lives in buffers, so checkpoints, the EMA copy and an exact resume carry it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: training values of L_t kept per timestep (the paper's 10)
HISTORY = 10
#: share of the probability spread uniformly over all timesteps
UNIFORM_SHARE = 1e-3


class LossAwareTimesteps(nn.Module):
    """Timestep sampler with p_t ∝ √(mean of the last :data:`HISTORY` L_t²).

    Args:
        timesteps: T.
    """

    def __init__(self, timesteps: int) -> None:
        super().__init__()
        self.timesteps = int(timesteps)
        self.register_buffer("history", torch.zeros(self.timesteps, HISTORY, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(self.timesteps, dtype=torch.long))

    def probabilities(self) -> Tensor:
        """``[T]`` float64 sampling probabilities (uniform until the history is full)."""
        if bool((self.count < HISTORY).any()):
            return torch.full(
                (self.timesteps,), 1 / self.timesteps, dtype=torch.float64, device=self.count.device
            )
        w = self.history.square().mean(1).sqrt()
        w = w / w.sum()
        return w * (1 - UNIFORM_SHARE) + UNIFORM_SHARE / self.timesteps

    def sample(self, n: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """``n`` int64 timesteps drawn from the global RNG and their probabilities ``[n]``."""
        p = self.probabilities()
        t = torch.multinomial(p, n, replacement=True)
        return t.to(device), p[t].to(device)

    @torch.no_grad()
    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record the L_t values ``losses`` ``[n]`` observed at timesteps ``t`` ``[n]``."""
        for ti, li in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            self.history[ti] = torch.cat([self.history[ti, 1:], self.history.new_tensor([li])])
            self.count[ti] = min(int(self.count[ti]) + 1, HISTORY)
