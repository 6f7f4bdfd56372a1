"""Samplers of a trained diffusion model: plain functions over ``(net, process, x_T)``.

Every sampler takes ``net(x_t, t_net) -> output`` (ε or v, per ``process.prediction``), a
:class:`~genbench.models.diffusion.process.GaussianDiffusion`, the starting noise ``x_T``
``[N, ...]`` ~ N(0, I), and returns ``(x_0, nfe)``: the sample in the data scale ``[-1, 1]``
(not yet clipped or quantized) and the network evaluations spent per image (a number for the
ancestral and DDIM samplers, where every image costs the same; ``[N]`` for the ODE, whose adaptive
solver takes its own steps per image).

- :func:`ancestral_sample`: DDPM (Ho et al. 2020) x_{t-1} ~ p(x_{t-1} | x_t), variance β̃_t
  (``small``) or β_t (``large``).
- :func:`ddim_sample`: DDIM (Song, Meng & Ermon 2021, eq. 12) on a sub-sequence τ of ``steps``
  timesteps; σ_τ = η √((1-ᾱ_prev)/(1-ᾱ_τ)) √(1 - ᾱ_τ/ᾱ_prev), so η = 1 is DDPM's posterior
  variance on the sub-sequence and η = 0 is deterministic given x_T.
- :func:`ode_sample`: the probability-flow ODE. With y = x / √ᾱ and σ = √((1-ᾱ)/ᾱ) it reads
  dy/dσ = ε̂(y / √(1+σ²), σ) (Song et al. 2021, DDIM eq. 14), integrated from σ_max to the
  smallest σ of the process and then to σ = 0 (one last Euler step: y = x̂_0). Solvers: fixed-step
  ``euler`` on the σ of the spaced timesteps (exactly DDIM η = 0) and ``heun`` on the ρ = 7 grid
  of Karras et al. (2022), both in σ, or an
  adaptive Dormand-Prince 5(4) ``rk45`` in log σ with per-sample step sizes, so sample *i* does
  not depend on the batch it is drawn in.

- :func:`edm_sample`: the samplers of Karras et al. (2022) over a denoiser D(x; σ) in the
  "variance-exploding" coordinates x = data + σ·noise: Heun's method on the ρ = 7 σ-grid
  (Algorithm 1), Euler, and the stochastic sampler with churn (Algorithm 2).

Class labels: the samplers that call the network on the whole batch at every step take a
network with the labels (and any guidance) already bound in; :func:`ode_sample`, whose adaptive
solver evaluates only the rows still integrating, takes the batch's ``labels`` ``[N]`` and gives
each call its rows' labels.

Step skipping respaces the process (:meth:`GaussianDiffusion.respace`) onto
:func:`spaced_timesteps`, indices spread evenly over ``0..T-1`` with both ends included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from genbench.models.diffusion.process import GaussianDiffusion, NetFn, Variance, apply_net
from genbench.nn.random import Generator, randn

Solver = Literal["euler", "heun", "rk45"]
#: D(x; σ): x ``[N, ...]`` noisy data (data + σ·noise), σ ``[N]`` float64 → ``[N, ...]`` x̂_0
Denoiser = Callable[[Tensor, Tensor], Tensor]
#: ODE right-hand side: (time [N] float64, state [N, D], row indices [N]) -> d state / d time;
#: N counts the rows of the call (an adaptive solver passes only the rows still integrating)
Drift = Callable[[Tensor, Tensor, Tensor], Tensor]


def spaced_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` indices spread evenly over ``0..timesteps-1``, both ends included."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    if steps == 1:
        return [timesteps - 1]
    return [(i * (timesteps - 1) + (steps - 1) // 2) // (steps - 1) for i in range(steps)]


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> list[float]:
    """``steps`` noise levels from σ_max down to σ_min, evenly spaced in σ^(1/ρ) (Karras et al.
    2022, eq. 5)."""
    if steps < 2:
        return [sigma_max]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / (steps - 1) * (b - a)) ** rho for i in range(steps)]


def _respaced(process: GaussianDiffusion, steps: int | None) -> GaussianDiffusion:
    if steps is None or steps == process.T:
        return process
    return process.respace(spaced_timesteps(process.T, int(steps)))


def ancestral_sample(
    net: NetFn,
    process: GaussianDiffusion,
    x_T: Tensor,
    *,
    steps: int | None = None,
    variance: Variance = "small",
    clip: bool = True,
    generator: Generator = None,
) -> tuple[Tensor, float]:
    """DDPM ancestral sampling from x_T ``[N, ...]``: x_{t-1} = μ_θ(x_t, t) + σ_t z (no noise at
    the last step). ``steps`` respaces the process (default: all T). Returns (x_0, NFE)."""
    proc, x = _respaced(process, steps), x_T
    for i in reversed(range(proc.T)):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        out = net(x, proc.net_time(t))
        mean, logvar, _ = proc.p_mean_variance(out, x, t, variance=variance, clip=clip)
        if i > 0:
            z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + torch.exp(0.5 * logvar) * z
        else:
            x = mean
    return x, float(proc.T)


def ddim_sample(
    net: NetFn,
    process: GaussianDiffusion,
    x_T: Tensor,
    *,
    steps: int | None = None,
    eta: float = 0.0,
    clip: bool = True,
    generator: Generator = None,
) -> tuple[Tensor, float]:
    """DDIM from x_T ``[N, ...]`` on ``steps`` timesteps (default all T). Returns (x_0, NFE).

    x_prev = √ᾱ_prev x̂_0 + √(1 - ᾱ_prev - σ²) ε̂ + σ z; with ``clip``, x̂_0 is clipped to
    [-1, 1] and ε̂ recomputed from it, so η = 1 equals ancestral sampling path by path.
    """
    proc, x = _respaced(process, steps), x_T
    for i in reversed(range(proc.T)):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        ab = proc.extract(proc.alphas_cumprod, t, x)
        ab_prev = proc.extract(proc.alphas_cumprod_prev, t, x)
        eps, x0 = proc.split(net(x, proc.net_time(t)), x, ab)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i > 0:
            x = x + sigma * randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x, float(proc.T)


def pf_ode_eps(
    net: NetFn, process: GaussianDiffusion, y: Tensor, sigma: Tensor, labels: Tensor | None = None
) -> Tensor:
    """ε̂ at the ODE state y = x / √ᾱ ``[N, ...]`` and noise level σ ``[N]``: the drift dy/dσ
    (``labels`` ``[N]``: the rows' class labels for a conditional ``net``)."""
    ab = (1 / (1 + sigma.double() ** 2)).to(y.dtype).reshape(-1, *([1] * (y.ndim - 1)))
    x = y * ab.sqrt()
    out = apply_net(net, x, process.net_time_at(process.t_at(sigma)), labels)
    eps, _ = process.split(out, x, ab)
    return eps


def integrate_fixed(
    f: Drift, state: Tensor, grid: Sequence[float], method: Solver = "heun"
) -> tuple[Tensor, float]:
    """Integrate d state/ds = f over the times ``grid`` with Euler or Heun steps, every row on the
    same grid. Returns the final ``state`` ``[N, D]`` and the drift evaluations per row (one
    number for all rows)."""
    rows = torch.arange(state.shape[0], device=state.device)
    nfe = 0
    for s0, s1 in zip(grid[:-1], grid[1:]):
        s0_t = torch.full((state.shape[0],), float(s0), dtype=torch.float64, device=state.device)
        d0 = f(s0_t, state, rows)
        h = float(s1) - float(s0)
        if method == "euler":
            state, nfe = state + h * d0, nfe + 1
            continue
        if method != "heun":
            raise ValueError(f"fixed-step method must be euler or heun, got {method!r}")
        d1 = f(torch.full_like(s0_t, float(s1)), state + h * d0, rows)
        state, nfe = state + 0.5 * h * (d0 + d1), nfe + 2
    return state, float(nfe)


# Dormand & Prince (1980) RK5(4)7M tableau; the 7th stage is the next step's 1st (FSAL).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def integrate_rk45(
    f: Drift,
    state: Tensor,
    s0: float,
    s1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
) -> tuple[Tensor, Tensor]:
    """Adaptive Dormand-Prince 5(4) from ``s0`` to ``s1`` with one step size per row.

    Error norm per row: RMS of err / (atol + rtol · max(|y|, |y_new|)); a step is accepted when
    it is ≤ 1 and the step size is rescaled by 0.9 · err^(-1/5) within [0.2, 10]. Rows that are
    done drop out of the network calls. Returns the state at ``s1`` and the drift evaluations
    spent per row ``[N]`` (float64).
    """
    b, dev = state.shape[0], state.device
    direction = 1.0 if s1 >= s0 else -1.0
    s = torch.full((b,), float(s0), dtype=torch.float64, device=dev)
    rows = torch.arange(b, device=dev)
    k1 = f(s, state, rows)
    nfe = torch.ones(b, dtype=torch.float64, device=dev)
    scale = atol + rtol * state.abs()
    d0, d1 = (state / scale).square().mean(1).sqrt(), (k1 / scale).square().mean(1).sqrt()
    h = (
        torch.where(
            (d0 > 1e-5) & (d1 > 1e-5), 0.01 * d0 / d1.clamp(min=1e-12), torch.full_like(d0, 1e-6)
        )
        .double()
        .clamp(max=abs(s1 - s0))
    )
    for _ in range(max_steps):
        left = (s1 - s) * direction
        active = (left > 1e-12 * max(1.0, abs(s1))).nonzero().squeeze(1)
        if active.numel() == 0:
            return state, nfe
        y, sa = state[active], s[active]
        ha = torch.minimum(h[active], left[active]) * direction
        hy = ha.to(state.dtype)[:, None]
        ks = [k1[active]]
        for c, a in zip(_DP_C[1:], _DP_A[1:]):
            yi = y + hy * sum(aj * kj for aj, kj in zip(a, ks) if aj != 0.0)
            ks.append(f(sa + c * ha, yi, active))
        y_new = y + hy * sum(bj * kj for bj, kj in zip(_DP_A[6], ks) if bj != 0.0)
        err_vec = hy * sum(ej * kj for ej, kj in zip(_DP_E, ks) if ej != 0.0)
        tol = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        err = (err_vec / tol).square().mean(1).sqrt().double()
        ok = err <= 1.0
        acc = active[ok]
        state, s, k1 = state.clone(), s.clone(), k1.clone()
        state[acc], s[acc], k1[acc] = y_new[ok], sa[ok] + ha[ok], ks[6][ok]
        nfe[active] += 6
        factor = (0.9 * err.clamp(min=1e-10) ** -0.2).clamp(0.2, 10.0)
        h[active] = ha.abs() * factor
    raise RuntimeError(f"rk45 did not reach s = {s1} within {max_steps} steps")


def ode_grid(
    process: GaussianDiffusion, steps: int, solver: Solver, sigma_min: float | None = None
) -> list[float]:
    """Increasing σ grid of the fixed-step solvers from σ_min to σ_max: the σ of the spaced
    timesteps for ``euler`` (so it is DDIM η = 0), the ρ = 7 grid of Karras et al. for ``heun``.
    ``sigma_min`` (default: the process's smallest σ) starts the grid higher (the ``euler`` grid
    then keeps the spaced σ above it)."""
    s_min, s_max = float(process.sigmas[0]), float(process.sigmas[-1])
    start = s_min if sigma_min is None else float(sigma_min)
    if solver == "heun":
        return karras_sigmas(start, s_max, steps)[::-1]
    grid = [float(process.sigmas[i]) for i in spaced_timesteps(process.T, steps)]
    return grid if sigma_min is None else [start] + [g for g in grid if g > start]


def ode_sample(
    net: NetFn,
    process: GaussianDiffusion,
    x_T: Tensor,
    *,
    solver: Solver = "rk45",
    steps: int = 50,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: Generator = None,
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Probability-flow ODE from x_T ``[N, ...]`` (deterministic; ``generator`` is unused).

    ``euler``/``heun``: ``steps`` noise levels (:func:`ode_grid`) then 0 (Heun ends with an
    Euler step, NFE = 2 steps - 1). ``rk45``: adaptive in log σ down to the smallest σ, then one
    Euler step to σ = 0; each image counts its own steps. ``labels``: ``[N]`` class labels of a
    conditional ``net``. Returns (x_0, NFE ``[N]`` float64).
    """
    shape = x_T.shape
    y = (x_T * (1 + process.sigmas[-1] ** 2).sqrt().to(x_T.dtype)).flatten(1)

    def eps(sig: Tensor, state: Tensor, rows: Tensor | None = None) -> Tensor:
        """ε̂ ``[n, D]`` at flat ODE states ``state`` ``[n, D]`` and σ ``sig`` ``[n]`` (float64)
        of the batch rows ``rows`` ``[n]`` (``None``: all of them)."""
        lab = labels if labels is None or rows is None else labels[rows]
        return pf_ode_eps(net, process, state.view(-1, *shape[1:]), sig, lab).flatten(1)

    if solver in ("euler", "heun"):
        grid = ode_grid(process, int(steps), solver)[::-1]
        y, n = integrate_fixed(eps, y, grid, solver)
        nfe = torch.full((y.shape[0],), n, dtype=torch.float64, device=y.device)
    elif solver == "rk45":

        def drift(log_sig: Tensor, state: Tensor, rows: Tensor) -> Tensor:
            """dy/d log σ = σ ε̂ ``[n, D]`` at log σ ``log_sig`` ``[n]`` (float64)."""
            sig = log_sig.exp()
            return sig.to(state.dtype)[:, None] * eps(sig, state, rows)

        lo, hi = float(process.sigmas[0].log()), float(process.sigmas[-1].log())
        y, nfe = integrate_rk45(drift, y, hi, lo, rtol=rtol, atol=atol)
        grid = [float(process.sigmas[0])]
    else:
        raise ValueError(f"solver must be euler, heun or rk45, got {solver!r}")
    s_min = torch.full((y.shape[0],), grid[-1], dtype=torch.float64, device=y.device)
    y = y - grid[-1] * eps(s_min, y)  # last Euler step to σ = 0: y = x̂_0
    return y.view(shape), nfe + 1


def edm_sample(
    denoise: Denoiser,
    x_T: Tensor,
    sigmas: Sequence[float],
    *,
    second_order: bool = True,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: Generator = None,
) -> tuple[Tensor, float]:
    """Karras et al. (2022) Algorithms 1 and 2 from x_T ``[N, ...]`` ~ N(0, σ_0² I).

    ``sigmas``: the decreasing noise levels t_0 > ... > t_{S-1} > 0 (the ODE ends at t_S = 0).
    At each level in [``s_tmin``, ``s_tmax``] noise is first added to raise σ to t̂ = (1 + γ) t
    with γ = min(``churn`` / S, √2 - 1) and standard deviation ``s_noise`` · √(t̂² - t²) (drawn
    from ``generator``); then one Euler step of dx/dσ = (x - D(x; σ)) / σ to the next level,
    corrected by the trapezoidal rule (Heun) when ``second_order`` and the next level is not 0.
    ``churn = 0`` is the deterministic Algorithm 1. Returns (x_0, NFE): S for Euler, 2 S - 1
    for Heun.
    """
    grid = [float(s) for s in sigmas] + [0.0]
    gamma_max = min(churn / len(sigmas), math.sqrt(2) - 1)
    x, nfe = x_T, 0

    def d(x_: Tensor, sigma: float) -> Tensor:
        """The drift (x - D(x; σ)) / σ ``[N, ...]`` at one noise level."""
        s = torch.full((x_.shape[0],), sigma, dtype=torch.float64, device=x_.device)
        return (x_ - denoise(x_, s)) / sigma

    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        gamma = gamma_max if s_tmin <= t_cur <= s_tmax else 0.0
        t_hat = t_cur * (1 + gamma)
        if gamma > 0:
            z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + s_noise * math.sqrt(t_hat**2 - t_cur**2) * z
        d_cur = d(x, t_hat)
        x_next, nfe = x + (t_next - t_hat) * d_cur, nfe + 1
        if second_order and t_next > 0:
            x_next, nfe = x + (t_next - t_hat) * 0.5 * (d_cur + d(x_next, t_next)), nfe + 1
        x = x_next
    return x, float(nfe)
