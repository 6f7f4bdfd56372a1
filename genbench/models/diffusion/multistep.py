"""Fast multistep solvers of the probability-flow ODE: DPM-Solver++(2M) and UniPC.

Both solvers are written over a data-prediction function ``denoise(y, sigma) -> x̂_0`` in the
variance-exploding coordinates every Gaussian diffusion shares: y = x / α (the state without its
signal scale) and σ the noise-to-signal ratio, so that y = x_0 + σ ε. For DDPM (VP),
y = x_t / √ᾱ and σ = √((1 - ᾱ) / ᾱ); for EDM y and σ are native; for flow matching
x_t = (1 - t) x_0 + t ε gives y = x_t / (1 - t) and σ = t / (1 - t). The ODE is
dy/dσ = (y - D(y, σ)) / σ, and with λ = -log σ (half the log-SNR) its exact solution from σ_s
to σ_t is y_t = (σ_t/σ_s) y_s + ∫_{λ_s}^{λ_t} e^{λ - λ_t} D dλ (Lu et al. 2022b, eq. 9 in these
coordinates). Freezing D at its value D_s gives the first-order step (DDIM)

    y_t = (σ_t/σ_s) y_s + (1 - σ_t/σ_s) D_s,

and the multistep solvers replace D_s by a combination of the last evaluations:

- :func:`dpmpp_2m`: DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): D_s + (h / 2 h_prev) (D_s - D_prev)
  with h = λ_t - λ_s and h_prev = λ_s - λ_prev (the "midpoint" form).
- :func:`unipc`: UniPC (Zhao et al. 2023) with B(h) = e^h - 1 ("bh2"): the UniP-p predictor and,
  after each network call, the UniC corrector that reuses that call to raise the previous step's
  order by one (no extra evaluations). UniP-2 equals DPM-Solver++(2M).

A grid is a strictly decreasing list of noise levels σ_0 > ... > σ_M ≥ 0; the solvers call
``denoise`` once at each of σ_0..σ_{M-1} (NFE = M) and return y at σ_M. A step to σ = 0 is
y = D (the limit of every order: the higher-order terms divide by h = ∞). ``lower_order_final``
follows diffusers: DPM-Solver++ takes its last step with first order when the grid has fewer
than 15 steps, UniPC lowers its order near the end so it never exceeds the steps left.

Grids (:func:`logsnr_sigmas`, :func:`ddpm_timesteps`, and ``karras_sigmas`` of
:mod:`.samplers`) and the DDPM adapter (:func:`vp_denoiser`, :func:`multistep_sample`) close the
module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from genbench.models.diffusion.process import GaussianDiffusion, NetFn
from genbench.models.diffusion.samplers import karras_sigmas

#: data prediction: (y [N, ...] = x / α, σ [N] float64 noise-to-signal ratio) -> x̂_0 [N, ...]
Denoiser = Callable[[Tensor, Tensor], Tensor]
Grid = Literal["logsnr", "time", "karras"]
GRIDS: tuple[str, ...] = ("logsnr", "time", "karras")
Spacing = Literal["linspace", "trailing"]
#: DPM-Solver++ steps below this count end with a first-order step (diffusers' rule)
LOWER_ORDER_FINAL_BELOW = 15


def _check_grid(sigmas: Sequence[float]) -> list[float]:
    grid = [float(s) for s in sigmas]
    if len(grid) < 2 or any(b >= a for a, b in zip(grid, grid[1:])) or grid[-1] < 0:
        raise ValueError(f"need a strictly decreasing grid of >= 2 noise levels >= 0, got {grid}")
    return grid


def _sigma(y: Tensor, s: float) -> Tensor:
    return torch.full((y.shape[0],), s, dtype=torch.float64, device=y.device)


def dpmpp_2m(
    denoise: Denoiser, y: Tensor, sigmas: Sequence[float], *, lower_order_final: bool = True
) -> tuple[Tensor, int]:
    """DPM-Solver++(2M) from ``y`` ``[N, ...]`` at ``sigmas[0]`` down the decreasing grid
    ``sigmas``. The first step (no history yet), a step to σ = 0 and, with
    ``lower_order_final`` and fewer than 15 steps, the last step are first order.
    Returns (y at ``sigmas[-1]``, NFE = len(sigmas) - 1)."""
    grid = _check_grid(sigmas)
    steps = len(grid) - 1
    d_prev = None
    for i in range(steps):
        s, t = grid[i], grid[i + 1]
        d = denoise(y, _sigma(y, s))
        last = i == steps - 1 and lower_order_final and steps < LOWER_ORDER_FINAL_BELOW
        drift = d
        if not (d_prev is None or t == 0 or last):  # else first order
            h, h_prev = math.log(s / t), math.log(grid[i - 1] / s)
            drift = d + (0.5 * h / h_prev) * (d - d_prev)
        y = (t / s) * y + (1 - t / s) * drift
        d_prev = d
    return y, steps


def _uni_weights(h: float, rks: Sequence[float], corrector: bool) -> list[float]:
    """UniPC's ρ for B(h) = e^h - 1 (bh2) on a step of log-SNR length h (in λ = -log σ, h > 0),
    with the older evaluations at relative positions ``rks`` (r_k = (λ_k - λ_s) / h < 0), for
    order p = len(rks) + 1. The predictor gets p - 1 weights (for the differences
    (D_k - D_s) / r_k), the corrector p (the last for D_t - D_s). They solve the order
    conditions of Zhao et al. (2023), Σ_k ρ_k r_k^(i-1) = b_i with b_i = i! (-h) φ_{i+1}(-h) / B(h)
    and φ the exponential integrator's functions (φ_{k+1}(z) = (φ_k(z) - 1/k!) / z); the
    predictor of order 2 and the corrector of order 1 use the closed form 1/2 instead, as
    UniPC's reference code does."""
    p = len(rks) + 1
    if not corrector and p == 1:
        return []
    if corrector and p == 1:
        return [0.5]
    if not corrector and p == 2:
        return [0.5]
    hh = -h  # the solver's variable for the data-prediction form
    big_b = math.expm1(hh)
    g, fact, rhs = big_b / hh - 1, 1, []  # g_k = hh φ_{k+1}(hh), from g_1 = φ_1(hh) - 1
    for k in range(1, p + 1):
        rhs.append(g * fact / big_b)
        fact *= k + 1
        g = g / hh - 1 / fact
    nodes = torch.tensor([*rks, 1.0], dtype=torch.float64)
    mat = torch.stack([nodes**k for k in range(p)])
    b = torch.tensor(rhs, dtype=torch.float64)
    if not corrector:
        mat, b = mat[:-1, :-1], b[:-1]
    return torch.linalg.solve(mat, b).tolist()


def _uni_step(
    y: Tensor, s: float, t: float, hist: list[tuple[float, Tensor]], d_t: Tensor | None
) -> Tensor:
    """One UniP step (``d_t`` None) or UniC correction (``d_t`` = D at the predicted y_t) from
    y at σ = ``s`` to σ = ``t``; ``hist`` holds (σ_k, D_k) oldest first, the last at ``s``."""
    d0 = hist[-1][1]
    if t == 0:
        return d0
    h = math.log(s / t)
    older = hist[-2::-1]  # most recent first
    rks = [math.log(s / sk) / h for sk, _ in older]
    rho = _uni_weights(h, rks, d_t is not None)
    drift = d0
    for r, rk, (_, dk) in zip(rho, rks, older):
        drift = drift + (r / rk) * (dk - d0)
    if d_t is not None:
        drift = drift + rho[-1] * (d_t - d0)
    return (t / s) * y + (1 - t / s) * drift


def unipc(
    denoise: Denoiser,
    y: Tensor,
    sigmas: Sequence[float],
    *,
    order: int = 2,
    lower_order_final: bool = True,
    corrector: bool = True,
) -> tuple[Tensor, int]:
    """UniPC-``order`` (bh2, data prediction) from ``y`` ``[N, ...]`` at ``sigmas[0]`` down the
    decreasing grid ``sigmas``: the order warms up over the first steps, is capped by the steps
    left with ``lower_order_final``, and is 1 on a step to σ = 0. After every network call but
    the first, UniC corrects the state that call was made at (``corrector``); the call is not
    repeated. Returns (y at ``sigmas[-1]``, NFE = len(sigmas) - 1)."""
    grid = _check_grid(sigmas)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    steps = len(grid) - 1
    hist: list[tuple[float, Tensor]] = []
    used: list[tuple[float, Tensor]] = []  # the history the last predictor used
    y_prev = y
    for i in range(steps):
        s, t = grid[i], grid[i + 1]
        d = denoise(y, _sigma(y, s))
        if corrector and i > 0:
            y = _uni_step(y_prev, grid[i - 1], s, used, d)
        hist = [*hist, (s, d)][-order:]
        p = min(order, steps - i) if lower_order_final else order
        p = 1 if t == 0 else min(p, len(hist))
        used, y_prev = hist[-p:], y
        y = _uni_step(y, s, t, used, None)
    return y, steps


# ---- grids -------------------------------------------------------------------------------
def logsnr_sigmas(sigma_min: float, sigma_max: float, steps: int) -> list[float]:
    """``steps`` noise levels from σ_max down to σ_min, uniform in λ = -log σ (Lu et al. 2022a,
    "logSNR" spacing)."""
    if steps < 2:
        return [float(sigma_max)]
    a, b = math.log(sigma_max), math.log(sigma_min)
    return [math.exp(a + i / (steps - 1) * (b - a)) for i in range(steps)]


def ddpm_timesteps(timesteps: int, steps: int, spacing: Spacing = "linspace") -> list[int]:
    """The ``steps`` decreasing integer timesteps (code indices ``0..T-1``) of diffusers'
    ``timestep_spacing``: ``linspace`` rounds ``steps + 1`` points evenly spaced over [0, T-1]
    and drops the 0 (half-to-even rounding, as numpy); ``trailing`` counts down from T in
    strides of T / steps, minus one. With ``linspace``, ``steps = T`` (where rounding would
    repeat an index) gives every index once.

    >>> ddpm_timesteps(1000, 5)
    [999, 799, 599, 400, 200]
    >>> ddpm_timesteps(1000, 5, "trailing")
    [999, 799, 599, 399, 199]
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    if spacing == "linspace" and steps == timesteps:
        return list(range(timesteps - 1, -1, -1))
    if spacing == "linspace":
        points = np.linspace(0, timesteps - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "trailing":
        points = np.arange(timesteps, 0, -timesteps / steps).round() - 1
    else:
        raise ValueError(f"spacing must be linspace or trailing, got {spacing!r}")
    return [int(v) for v in points]


def multistep_grid(process: GaussianDiffusion, steps: int, grid: Grid = "logsnr") -> list[float]:
    """Decreasing σ grid of ``steps`` network calls on ``process``, ending at 0: ``logsnr`` (λ
    uniform) or ``karras`` (ρ = 7) between the process's σ_max and σ_min, or ``time`` (the σ of
    diffusers' ``linspace`` timesteps, so the samplers match diffusers' schedulers step by step)."""
    s_min, s_max = float(process.sigmas[0]), float(process.sigmas[-1])
    if grid == "logsnr":
        levels = logsnr_sigmas(s_min, s_max, steps)
    elif grid == "karras":
        levels = karras_sigmas(s_min, s_max, steps)
    elif grid == "time":
        levels = [float(process.sigmas[t]) for t in ddpm_timesteps(process.T, steps)]
    else:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    return [*levels, 0.0]


# ---- DDPM --------------------------------------------------------------------------------
def vp_denoiser(net: NetFn, process: GaussianDiffusion, clip: bool = False) -> Denoiser:
    """x̂_0 from an ε- or v-network of a DDPM process at y = x_t / √ᾱ ``[N, ...]`` and any σ
    ``[N]`` (float64): x_t = y √ᾱ with ᾱ = 1 / (1 + σ²), at the fractional network time of σ
    (:meth:`GaussianDiffusion.t_at`); ``clip`` clamps x̂_0 to the data range [-1, 1], as DDIM's
    ``clip`` does (the data-prediction solvers then stay inside it)."""

    def denoise(y: Tensor, sigma: Tensor) -> Tensor:
        """x̂_0 ``[N, ...]`` at y = x / √ᾱ ``[N, ...]`` and σ ``[N]``."""
        ab = (1 / (1 + sigma.double() ** 2)).to(y.dtype).reshape(-1, *([1] * (y.ndim - 1)))
        x = y * ab.sqrt()
        out = net(x, process.net_time_at(process.t_at(sigma)))
        x0 = process.split(out, x, ab)[1]
        return x0.clamp(-1, 1) if clip else x0

    return denoise


def multistep_sample(
    net: NetFn,
    process: GaussianDiffusion,
    x_T: Tensor,
    *,
    solver: Literal["dpmpp", "unipc"],
    steps: int = 10,
    order: int = 2,
    grid: Grid = "logsnr",
    clip: bool = False,
) -> tuple[Tensor, float]:
    """DPM-Solver++(2M) or UniPC-``order`` from x_T ``[N, ...]`` ~ N(0, I) (deterministic) on
    ``steps`` noise levels of :func:`multistep_grid`, with x̂_0 clamped to [-1, 1] when ``clip``.
    Returns (x_0 ``[N, ...]`` in the data scale; NFE per image = ``steps``)."""
    sigmas = multistep_grid(process, int(steps), grid)
    y = x_T * math.sqrt(1 + sigmas[0] ** 2)
    denoise = vp_denoiser(net, process, clip=clip)
    if solver == "dpmpp":
        y, nfe = dpmpp_2m(denoise, y, sigmas)
    elif solver == "unipc":
        y, nfe = unipc(denoise, y, sigmas, order=int(order))
    else:
        raise ValueError(f"solver must be dpmpp or unipc, got {solver!r}")
    return y, float(nfe)
