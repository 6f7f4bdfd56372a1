"""Variational dequantization (Ho et al. 2019, Flow++, sec. 3.1): a conditional flow q(u | x)
over the offsets ``u ∈ (0, 1)^D`` that turn levels into continuous data ``y = (x + u) / K``.

With any density q(u | x) on the unit cube, Jensen's inequality bounds the discrete NLL of a flow
p over y:

    -log P(x) ≤ E_{u ~ q}[ D log K - log p((x + u) / K) + log q(u | x) ],

uniform dequantization being the special case q = 1 (log q = 0). A learned q puts its mass where
p is high inside each bin and closes most of the gap; training maximizes the same bound over both
flows. The importance-weighted version over k draws,
-log P(x) ≤ D log K - log (1/k) Σ_j p(y_j) / q(u_j | x), is still a bound and tightens with k
(Burda et al. 2016; Hoogeboom et al. 2021 for dequantization).

q(u | x): ε ~ N(0, I) in ``[N, C, H, W]``, ``couplings`` conditional affine couplings (each
transforms half the sub-pixels, alternating, given the other half and features of x), then
u = sigmoid(h). log q(u | x) = log N(ε) - log |det ∂h/∂ε| - Σ log σ'(h), with
log σ'(h) = log σ(h) + log σ(-h).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.nn.random import Generator, randn

_LOG_2PI = math.log(2 * math.pi)
Dequantization = Literal["uniform", "variational"]
DEQUANTIZATIONS: tuple[str, ...] = ("uniform", "variational")


def _parity_mask(shape: tuple[int, int, int], parity: int) -> Tensor:
    """``[1, C, H, W]`` float mask: 1 on the sub-pixels whose flat index + ``parity`` is even
    (a checkerboard over C·H·W, so it splits channels too when H = W = 1)."""
    idx = torch.arange(math.prod(shape)).view(1, *shape)
    return ((idx + parity) % 2 == 0).float()


class ConditionalCoupling(nn.Module):
    """h_b ← h_b · exp(log_s) + t with (log_s, t) = net(h_a, features of x); h_a unchanged.

    ``h_a`` are the sub-pixels where the mask is 1; the scale is ``tanh``-bounded (log_s ∈
    (-2, 2)) and the last convolution starts at zero, so the coupling starts as the identity."""

    def __init__(self, shape: tuple[int, int, int], parity: int, hidden: int, ctx: int) -> None:
        super().__init__()
        c, h, w = shape
        kernel = 1 if h * w == 1 else 3
        self.register_buffer("mask", _parity_mask(shape, parity), persistent=False)
        self.net = nn.Sequential(
            nn.Conv2d(c + ctx, hidden, kernel, padding=kernel // 2),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.SiLU(),
            nn.Conv2d(hidden, 2 * c, kernel, padding=kernel // 2),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """``h`` ``[N, C, H, W]`` → (h', log|det ∂h'/∂h| ``[N]``) given ``ctx`` features."""
        m = self.mask.to(h.dtype)
        raw_s, t = self.net(torch.cat([h * m, ctx], dim=1)).chunk(2, dim=1)
        log_s = 2.0 * torch.tanh(raw_s / 2.0) * (1 - m)
        out = h * m + (1 - m) * (h * log_s.exp() + t)
        return out, log_s.flatten(1).sum(1)


class VariationalDequantizer(nn.Module):
    """q(u | x) for levels ``x`` ``[N, C, H, W]`` in ``[0, K)`` (see the module docstring).

    Args:
        shape: ``(C, H, W)``.
        levels: K (x reaches the context network scaled to [-1, 1]).
        hidden: channels of the context network and of every coupling's conditioner.
        couplings: conditional couplings (alternating halves; at least 2 so every sub-pixel is
            transformed).
    """

    def __init__(
        self, shape: tuple[int, int, int], levels: int, *, hidden: int = 32, couplings: int = 4
    ) -> None:
        super().__init__()
        if couplings < 2:
            raise ValueError(f"variational dequantization needs >= 2 couplings, got {couplings}")
        c, h, w = shape
        kernel = 1 if h * w == 1 else 3
        self.shape, self.levels = tuple(shape), int(levels)
        self.context = nn.Sequential(
            nn.Conv2d(c, hidden, kernel, padding=kernel // 2),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2),
            nn.SiLU(),
        )
        self.couplings = nn.ModuleList(
            ConditionalCoupling(self.shape, i % 2, hidden, hidden) for i in range(couplings)
        )

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Offsets ``u`` ``[N, C, H, W]`` in (0, 1) and log q(u | x) ``[N]`` nats, from levels
        ``x`` and standard normal ``eps`` of the same shape."""
        ctx = self.context(x.to(eps.dtype) * (2.0 / (self.levels - 1)) - 1.0)
        h, log_q = eps, (-0.5 * (eps.square() + _LOG_2PI)).flatten(1).sum(1)
        for coupling in self.couplings:
            h, ld = coupling(h, ctx)
            log_q = log_q - ld
        log_q = log_q - (F.logsigmoid(h) + F.logsigmoid(-h)).flatten(1).sum(1)
        return torch.sigmoid(h), log_q

    def sample(
        self, x: Tensor, *, generator: Generator = None, dtype: torch.dtype | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(u [N, C, H, W], log q(u | x) [N])`` for levels ``x`` ``[N, C, H, W]``, with ε drawn
        from ``generator`` (one per row when a sequence)."""
        dtype = dtype or next(self.parameters()).dtype
        eps = randn(x.shape, generator=generator, device=x.device, dtype=dtype)
        return self(x, eps)
