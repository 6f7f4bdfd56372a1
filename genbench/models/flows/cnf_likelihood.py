"""Log-likelihood of a continuous normalizing flow on the linear path x_t = (1 - t) x_0 + t ε
(t = 0 data, t = 1 noise; :mod:`.flow_matching`), dequantized to discrete levels.

The flow dx/dt = v(x, t) carries the data at t = 0 to N(0, I) at t = 1. By the instantaneous
change of variables (Chen et al. 2018; Grathwohl et al. 2019)

    log p_{t_0}(x_{t_0}) = log N(x_1; 0, I) + ∫_{t_0}^1 tr ∂v/∂x (x_t, t) dt,

the prior being exact at t = 1 for this path (x_1 = ε). The trace is exact (``probes=0``, D
backward passes) or Hutchinson's estimate tr J ≈ mean_k z_kᵀ J z_k over Rademacher probes drawn per
example. Solvers: ``rk45`` (adaptive Dormand-Prince per row) or ``euler``/``heun`` on uniform steps
from t_0 to 1.

Discrete data (the gaussian-dequantization bound of :mod:`genbench.models.diffusion.likelihood`,
carried over to this path): level k sits at u_k = 2k/(K-1) - 1, Δ = 2/(K-1) apart. Stop the ODE at
σ_0 = max(Δ/4, ``SIGMA0_FLOOR``), i.e. t_0 = σ_0 / (1 + σ_0): for small t the path reads
x_t = (1 - t)(x_0 + σ ε) with σ = t / (1 - t), so q(x_{t_0} | k) = N((1 - t_0) u_k, t_0² I), and in
VE coordinates z = x_{t_0} / (1 - t_0) = u_k + σ_0 ε is that module's encoder. With its decoder
P(k | z) = N(z; u_k, σ_0²) / Σ_j N(z; u_j, σ_0²) per dimension, the ELBO gives

    -log P(k) ≤ E_z[-log p_{t_0}(x_{t_0}) - D log(1 - t_0) + Σ_dims log Σ_j N(z; u_j, σ_0²)],

-D log(1 - t_0) being the Jacobian of z ↦ x_{t_0} (p_z(z) = (1 - t_0)^D p_{t_0}((1 - t_0) z)).
For data uniform over the K levels and the exact velocity the bound is D log K (4.0000 bits/dim at
K = 16 and 8.0000 at K = 256 in the tests' closed form). Returned as a single-sample estimate (in
ε and the probes), in nats per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from genbench.models.base import NllEstimate
from genbench.models.diffusion.likelihood import (
    augmented,
    decoder_log_normalizer,
    decoder_sigma,
    jacobian_trace,
    ode_settings,
    rademacher_probes,
)
from genbench.models.diffusion.samplers import Drift, Solver, integrate_fixed, integrate_rk45
from genbench.nn.random import Generator, randn

#: (x_t ``[N, C, H, W]``, t ``[N]`` float64 in [0, 1]) -> velocity ``[N, C, H, W]``; a
#: class-conditional field is called ``velocity(x_t, t, labels)`` with the rows' labels ``[N]``
Velocity = Callable[..., Tensor]
SOLVERS: tuple[str, ...] = ("euler", "heun", "rk45")
#: lowest σ_0 of the decoder (only reached for K > 5000 levels)
SIGMA0_FLOOR = 1e-4


def _with_divergence(
    velocity: Velocity,
    shape: tuple[int, ...],
    probes: Tensor | None,
    labels: Tensor | None = None,
) -> Drift:
    """Augmented drift (v, tr ∂v/∂x) over states ``[N, D + 1]``; ``probes`` ``[N, P, D]``
    Rademacher vectors of the batch rows (``None``: exact trace, D backward passes); ``labels``
    ``[N]`` the batch rows' class labels (conditional fields)."""

    def drift(t: Tensor, state: Tensor, rows: Tensor) -> Tensor:
        """``[n, D + 1]`` at times ``t`` ``[n]`` for the rows ``rows`` ``[n]`` of the batch."""
        with torch.inference_mode(False), torch.enable_grad():
            # clones: tensors made under inference_mode cannot enter an autograd graph
            x = state[:, :-1].detach().clone().requires_grad_(True)
            args = () if labels is None else (labels[rows],)
            v = velocity(x.view(-1, *shape), t.clone(), *args).flatten(1)
            div = jacobian_trace(v, x, None if probes is None else probes[rows].clone())
        return torch.cat([v.detach(), div.detach()[:, None]], dim=1)

    return drift


def ode_log_density(
    velocity: Velocity,
    x: Tensor,
    t0: float,
    *,
    generator: Generator = None,
    solver: Solver = "rk45",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    probes: int = 0,
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """log p_{t_0}(x) ``[N]`` (nats, density of x_{t_0} ``[N, ...]``) and the velocity evaluations
    per row ``[N]``: integrate (x, ∫ tr ∂v/∂x dt) from t_0 to 1 (``rk45`` adaptive per row, or
    ``euler``/``heun`` on ``steps`` uniform steps) and add log N(x_1; 0, I). ``probes``:
    Rademacher vectors per example from ``generator`` (0: exact trace). ``labels``: ``[N]``
    class labels of a conditional field (the density is then p_{t_0}(x | label))."""
    shape, b = tuple(x.shape[1:]), x.shape[0]
    state = augmented(x)
    drift = _with_divergence(velocity, shape, rademacher_probes(x, probes, generator), labels)
    if solver == "rk45":
        state, nfe = integrate_rk45(drift, state, float(t0), 1.0, rtol=rtol, atol=atol)
    elif solver in ("euler", "heun"):
        grid = [t0 + (1.0 - t0) * i / int(steps) for i in range(int(steps) + 1)]
        state, n = integrate_fixed(drift, state, grid, solver)
        nfe = torch.full((b,), n, dtype=torch.float64, device=x.device)
    else:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    x1, divergence = state[:, :-1].double(), state[:, -1].double()
    log_prior = (-0.5 * x1.square() - 0.5 * math.log(2 * math.pi)).sum(1)
    return log_prior + divergence, nfe.double()


def ode_nll(
    velocity: Velocity,
    x: Tensor,
    levels: int,
    *,
    generator: Generator = None,
    solver: Solver = "rk45",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    probes: int = 0,
    dtype: torch.dtype = torch.float32,
    labels: Tensor | None = None,
) -> NllEstimate:
    """The gaussian-dequantization ODE bound (module docstring) on -log P(x) of levels ``x``
    ``[N, C, H, W]`` (-log P(x | label) with class ``labels`` ``[N]`` for a conditional field):
    ``nll`` ``[N]`` nats, ``nfe`` ``[N]`` (each also runs max(probes, 1) or D backward passes)
    and the settings. Per example, ``generator`` draws ε, then the probes."""
    d = math.prod(x.shape[1:])
    sigma0 = decoder_sigma(SIGMA0_FLOOR, levels)
    t0 = sigma0 / (1 + sigma0)
    centres = x.to(dtype) * (2 / (levels - 1)) - 1
    z = centres + sigma0 * randn(x.shape, generator=generator, device=x.device, dtype=dtype)
    opts = {"solver": solver, "steps": steps, "rtol": rtol, "atol": atol, "probes": probes}
    logp, nfe = ode_log_density(
        velocity, (1 - t0) * z, t0, generator=generator, labels=labels, **opts
    )
    nll = -logp - d * math.log1p(-t0) + decoder_log_normalizer(z, levels, sigma0)
    settings = {**ode_settings(probes, solver, "gaussian", rtol, atol, steps), "sigma0": sigma0}
    return NllEstimate(nll=nll, nfe=nfe, settings=settings)
