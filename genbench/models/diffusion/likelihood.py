"""Log-likelihood of the probability-flow ODE (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", Sec. 4.3 and App. D.2), dequantized to the discrete data.

The ODE of :mod:`~genbench.models.diffusion.samplers` moves the state y = x / √ᾱ along
dy/dσ = ε̂(y / √(1+σ²), σ) (here integrated in s = log σ: dy/ds = σ ε̂). It is a continuous
normalizing flow between the data end σ_min (the smallest σ of the process, t = 0) and the
prior end σ_max, so by the instantaneous change of variables

    log p_{σ_min}(y_0) = log p_{σ_max}(y_1) + ∫ tr(∂f/∂y) ds,

with p_{σ_max}(y) = N(√ᾱ_T y; 0, I) · ᾱ_T^{D/2} (x_T ~ N(0, I) seen in y-coordinates). The trace
is estimated with Hutchinson's estimator tr(J) ≈ mean_k z_kᵀ J z_k over ``probes`` Rademacher
vectors drawn once per example (``probes=0``: exact trace, D backward passes - for toys).

Discrete data: level k sits at u_k = 2k/(K-1) - 1 (as in training). It is dequantized as
u = u_k + (U - ½) Δ, U ~ Uniform[0, 1)^D, Δ = 2/(K-1), and p_{σ_min} is read as a density of u.
By Jensen, -log P(k) ≤ E_U[-log p(u)] - D log Δ, so the returned nats per example are

    nll = -log p_{σ_min}(u) + D log((K-1)/2),

a single-sample (in U and in the probes) estimate of that bound. Divide by D ln 2 for bits/dim.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genbench.models.base import NllEstimate
from genbench.models.diffusion.process import GaussianDiffusion, NetFn
from genbench.models.diffusion.samplers import (
    Drift,
    Solver,
    integrate_fixed,
    integrate_rk45,
    ode_grid,
    pf_ode_eps,
)
from genbench.nn.random import Generator, rand


def _drift_with_trace(
    net: NetFn,
    process: GaussianDiffusion,
    shape: tuple[int, ...],
    probes: Tensor | None,
    log_time: bool,
) -> Drift:
    """Augmented drift (dy/ds, tr ∂(dy/ds)/∂y) over a state ``[N, D + 1]``."""

    def drift(s: Tensor, state: Tensor, rows: Tensor) -> Tensor:
        """``[N, D + 1]`` (dy/ds, trace) at times ``s`` ``[N]`` (float64 σ, or log σ) for the
        states ``[N, D + 1]`` of the batch rows ``rows`` ``[N]`` (they pick the probes)."""
        with torch.inference_mode(False), torch.enable_grad():
            # clones: tensors made under inference_mode cannot enter an autograd graph
            sigma = (s.exp() if log_time else s).clone()
            y = state[:, :-1].detach().clone().requires_grad_(True)
            f = pf_ode_eps(net, process, y.view(-1, *shape), sigma).flatten(1)
            if log_time:
                f = sigma.to(f.dtype)[:, None] * f
            if probes is None:  # exact trace: one backward pass per dimension
                div = sum(
                    torch.autograd.grad(f[:, i].sum(), y, retain_graph=True)[0][:, i]
                    for i in range(f.shape[1])
                )
            else:
                z = probes[rows].clone()  # [N, P, D]
                div = torch.zeros(y.shape[0], dtype=f.dtype, device=f.device)
                for k in range(z.shape[1]):
                    (g,) = torch.autograd.grad(
                        (f * z[:, k]).sum(), y, retain_graph=k < z.shape[1] - 1
                    )
                    div = div + (g * z[:, k]).sum(1) / z.shape[1]
        return torch.cat([f.detach(), div.detach()[:, None]], dim=1)

    return drift


def ode_log_density(
    net: NetFn,
    process: GaussianDiffusion,
    y: Tensor,
    *,
    generator: Generator = None,
    solver: Solver = "rk45",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    probes: int = 1,
) -> tuple[Tensor, Tensor]:
    """log p_{σ_min}(y) ``[N]`` (nats, continuous density of y ``[N, ...]`` in the data scale)
    and the network evaluations per row ``[N]``.

    ``solver``: ``rk45`` (adaptive in log σ, ``rtol``/``atol``; recommended) or ``euler``/``heun``
    in σ over ``steps`` noise levels (:func:`~genbench.models.diffusion.samplers.ode_grid`; Heun
    with 100 levels is off by ~0.01-0.02 nats per dimension on Gaussian toys). ``probes``:
    Rademacher vectors for Hutchinson's estimator (drawn from ``generator``), 0 for the exact
    trace.
    """
    shape, b = tuple(y.shape[1:]), y.shape[0]
    d = math.prod(shape)
    z = None
    if probes > 0:
        u = rand((b, probes, d), generator=generator, device=y.device, dtype=y.dtype)
        z = torch.where(u < 0.5, -1.0, 1.0).to(y.dtype)
    state = torch.cat([y.flatten(1), torch.zeros(b, 1, dtype=y.dtype, device=y.device)], 1)
    if solver == "rk45":
        drift = _drift_with_trace(net, process, shape, z, log_time=True)
        lo, hi = float(process.sigmas[0].log()), float(process.sigmas[-1].log())
        state, nfe = integrate_rk45(drift, state, lo, hi, rtol=rtol, atol=atol)
    else:
        drift = _drift_with_trace(net, process, shape, z, log_time=False)
        grid = ode_grid(process, int(steps), solver)
        state, n = integrate_fixed(drift, state, grid, solver)
        nfe = torch.full((b,), n, dtype=torch.float64, device=y.device)
    y1, trace_integral = state[:, :-1].double(), state[:, -1].double()
    ab_T = float(process.alphas_cumprod[-1])
    x1 = y1 * math.sqrt(ab_T)
    log_prior = (-0.5 * x1.square() - 0.5 * math.log(2 * math.pi)).sum(1) + 0.5 * d * math.log(ab_T)
    return log_prior + trace_integral, nfe


def dequantize(
    x: Tensor, levels: int, *, generator: Generator = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Levels ``[N, ...]`` in ``[0, K)`` → u = 2k/(K-1) - 1 + (U - ½)·2/(K-1), U ~ U[0, 1)."""
    u = rand(x.shape, generator=generator, device=x.device, dtype=dtype)
    return (2 * (x.to(dtype) + u - 0.5)) / (levels - 1) - 1


def ode_nll(
    net: NetFn,
    process: GaussianDiffusion,
    x: Tensor,
    levels: int,
    *,
    generator: Generator = None,
    solver: Solver = "rk45",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    probes: int = 1,
    dtype: torch.dtype = torch.float32,
) -> NllEstimate:
    """Dequantized probability-flow ODE NLL of discrete ``x`` ``[N, ...]`` (levels in
    ``[0, K)``), in nats per example (see the module docstring for the bound it estimates).

    Draws, per example from ``generator``: the dequantization noise, then the probe vectors.
    Returns ``nll`` ``[N]`` nats, ``nfe`` ``[N]`` network evaluations (each also runs
    ``probes`` backward passes) and the settings (estimator, probes, solver, tolerances).
    """
    u = dequantize(x, levels, generator=generator, dtype=dtype)
    logp, nfe = ode_log_density(
        net,
        process,
        u,
        generator=generator,
        solver=solver,
        steps=steps,
        rtol=rtol,
        atol=atol,
        probes=probes,
    )
    d = math.prod(x.shape[1:])
    nll = -logp + d * math.log((levels - 1) / 2)
    settings = {
        "estimator": "hutchinson-rademacher" if probes > 0 else "exact-trace",
        "probes": probes,
        "solver": solver,
        "dequantization": "uniform",
    }
    settings.update({"rtol": rtol, "atol": atol} if solver == "rk45" else {"steps": steps})
    return NllEstimate(nll=nll, nfe=nfe, settings=settings)
