"""Log-likelihood of the probability-flow ODE (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", Sec. 4.3 and App. D.2), dequantized to the discrete data.

Every Gaussian diffusion has one probability-flow ODE in "variance-exploding" coordinates, where
the state is data plus σ times unit noise: dy/dσ = ε̂(y, σ) = (y - D(y; σ)) / σ, with D the
denoiser (Karras et al. 2022: their ODE with s(t) = 1 and σ(t) = t). A
:class:`ProbabilityFlow` holds that drift, the ends σ_min and σ_max and the prior at σ_max;
DDPM's (:meth:`ProbabilityFlow.of_process`) is the ODE of :mod:`~genbench.models.diffusion.samplers`
with y = x / √ᾱ, ε̂ = ε̂_θ(y / √(1+σ²), t(σ)) and the prior N(0, (1/ᾱ_T) I) (x_T ~ N(0, I)
seen in y-coordinates); EDM's native coordinates are these. The ODE is integrated in s = log σ
(dy/ds = σ ε̂) or in σ. It is a continuous normalizing flow between the data end σ_min and the
prior end σ_max, so by the instantaneous change of variables

    log p_{σ_min}(y_0) = log p_{σ_max}(y_1) + ∫ tr(∂f/∂y) ds,

with p_{σ_max} = N(0, v I), v the flow's ``prior_var``. The trace
is estimated with Hutchinson's estimator tr(J) ≈ mean_k z_kᵀ J z_k over ``probes`` Rademacher
vectors drawn once per example (``probes=0``: exact trace, D backward passes - for toys).

Class-conditional models pass ``labels`` ``[N]``: the flow's ``eps(y, σ, labels)`` then gets the
labels of the rows it evaluates (the adaptive solver evaluates only the rows still integrating),
and the number is the bound on -log P(x | label) under the conditional network.

Discrete data: level k sits at u_k = 2k/(K-1) - 1 (as in training), Δ = 2/(K-1) apart. Two
bounds on -log P(k) (``dequantization``), each returned as a single-sample (in the noise and in
the probes) estimate in nats per example; divide by D ln 2 for bits/dim:

- ``gaussian`` (default; the variational bound of VDM, Kingma et al. 2021, and ScoreFlow, Song
  et al. 2021): stop the ODE at σ_0 ≈ Δ/4 instead of σ_min and decode. With q(z | k) =
  N(u_k, σ_0² I), the model's density p_{σ_0}(z) from the ODE, and the decoder P(k | z) =
  N(z; u_k, σ_0²) / Σ_j N(z; u_j, σ_0²) (per dimension), the ELBO gives

      -log P(k) ≤ E_z[-log p_{σ_0}(z) + Σ_dims log Σ_j N(z; u_j, σ_0²)],  z = u_k + σ_0 ε.

  For data uniform over the K levels and the exact denoiser it equals D log K exactly, whatever
  σ_0: the number is a bound on the discrete NLL that is comparable with the flows'. σ_0 =
  max(Δ / 4, σ_min): neighbouring levels 4 σ_0 apart, so the decoder's own slack is small even
  for peaked data, and never below the noise levels the network was trained on.
- ``uniform``: u = u_k + (U - ½) Δ, U ~ Uniform[0, 1)^D, read as a density at σ_min; by Jensen
  -log P(k) ≤ E_U[-log p_{σ_min}(u)] + D log((K-1)/2). Valid, but a network trained on the
  un-dequantized levels puts its mass in narrow peaks of width σ_min around them, so on coarse
  data the bound is far from the NLL (≈ 13 bits/dim at K = 17 for the exact denoiser).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

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
from genbench.nn.random import Generator, rand, randn

Dequantization = Literal["gaussian", "uniform"]
DEQUANTIZATIONS: tuple[str, ...] = ("gaussian", "uniform")
#: σ_0 of the ``gaussian`` bound, as a fraction of the level spacing Δ
DECODER_SIGMA_FRACTION = 0.25
#: ε̂(y, σ) = dy/dσ: y ``[N, ...]`` VE-coordinate states, σ ``[N]`` float64 → ``[N, ...]``; a
#: conditional flow's is called ``eps(y, σ, labels)`` with the rows' labels ``[N]``
EpsFn = Callable[..., Tensor]
#: increasing σ grid of the fixed-step solvers: (steps, solver, starting σ or None) → [σ, ...]
GridFn = Callable[[int, Solver, float | None], list[float]]


@dataclass(frozen=True)
class ProbabilityFlow:
    """The probability-flow ODE dy/dσ = ``eps(y, σ)`` between ``sigma_min`` (data end) and
    ``sigma_max`` (prior end), with y_{σ_max} ~ N(0, ``prior_var`` · I); ``grid`` gives the
    fixed-step solvers' σ grid (see :func:`~genbench.models.diffusion.samplers.ode_grid`)."""

    eps: EpsFn
    sigma_min: float
    sigma_max: float
    prior_var: float
    grid: GridFn

    @classmethod
    def of_process(cls, net: NetFn, process: GaussianDiffusion) -> ProbabilityFlow:
        """DDPM's ODE: ε-network ``net`` over ``process``; prior N(0, I) on x_T = √ᾱ_T y."""
        return cls(
            eps=functools.partial(pf_ode_eps, net, process),
            sigma_min=float(process.sigmas[0]),
            sigma_max=float(process.sigmas[-1]),
            prior_var=1 / float(process.alphas_cumprod[-1]),
            grid=functools.partial(ode_grid, process),
        )

    def log_prior(self, y: Tensor) -> Tensor:
        """log N(y; 0, v I) ``[N]`` (nats, float64) of states ``y`` ``[N, D]`` at σ_max."""
        v = self.prior_var
        d = y.shape[1]
        return -0.5 * y.double().square().sum(1) / v - 0.5 * d * math.log(2 * math.pi * v)


def _drift_with_trace(
    flow: ProbabilityFlow,
    shape: tuple[int, ...],
    probes: Tensor | None,
    log_time: bool,
    labels: Tensor | None = None,
) -> Drift:
    """Augmented drift (dy/ds, tr ∂(dy/ds)/∂y) over a state ``[N, D + 1]``; ``labels`` ``[N]``:
    the batch's class labels (conditional flows)."""

    def drift(s: Tensor, state: Tensor, rows: Tensor) -> Tensor:
        """``[N, D + 1]`` (dy/ds, trace) at times ``s`` ``[N]`` (float64 σ, or log σ) for the
        states ``[N, D + 1]`` of the batch rows ``rows`` ``[N]`` (they pick the probes)."""
        with torch.inference_mode(False), torch.enable_grad():
            # clones: tensors made under inference_mode cannot enter an autograd graph
            sigma = (s.exp() if log_time else s).clone()
            y = state[:, :-1].detach().clone().requires_grad_(True)
            y_ = y.view(-1, *shape)
            f = flow.eps(y_, sigma) if labels is None else flow.eps(y_, sigma, labels[rows])
            f = f.flatten(1)
            if log_time:
                f = sigma.to(f.dtype)[:, None] * f
            div = jacobian_trace(f, y, None if probes is None else probes[rows].clone())
        return torch.cat([f.detach(), div.detach()[:, None]], dim=1)

    return drift


def jacobian_trace(f: Tensor, y: Tensor, probes: Tensor | None) -> Tensor:
    """tr ∂f/∂y ``[N]`` of outputs ``f`` ``[N, D]`` computed from ``y`` ``[N, D]`` (which requires
    grad): exact with ``probes=None`` (D backward passes), else Hutchinson's estimate, the mean of
    zᵀ (∂f/∂y) z over the ``probes`` ``[N, P, D]`` (one backward pass each)."""
    if probes is None:
        return sum(
            torch.autograd.grad(f[:, i].sum(), y, retain_graph=True)[0][:, i]
            for i in range(f.shape[1])
        )
    div = torch.zeros(y.shape[0], dtype=f.dtype, device=f.device)
    for k in range(probes.shape[1]):
        (g,) = torch.autograd.grad(
            (f * probes[:, k]).sum(), y, retain_graph=k < probes.shape[1] - 1
        )
        div = div + (g * probes[:, k]).sum(1) / probes.shape[1]
    return div


def rademacher_probes(x: Tensor, probes: int, generator: Generator) -> Tensor | None:
    """``[N, probes, D]`` Rademacher vectors (±1, dtype of ``x``) for the rows of ``x``
    ``[N, ...]`` (D = its sub-pixels), drawn from ``generator`` (one per row when a sequence);
    ``None`` for ``probes=0`` (the exact trace)."""
    if probes <= 0:
        return None
    shape = (x.shape[0], probes, math.prod(x.shape[1:]))
    u = rand(shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(u < 0.5, -1.0, 1.0).to(x.dtype)


def augmented(x: Tensor) -> Tensor:
    """The ODE state ``[N, D + 1]`` of ``x`` ``[N, ...]``: its flattened values and a zero
    column that integrates the Jacobian trace."""
    return torch.cat([x.flatten(1), torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)


def ode_settings(
    probes: int, solver: str, dequantization: str, rtol: float, atol: float, steps: int
) -> dict[str, Any]:
    """Protocol fields of an ODE likelihood: the trace estimator, ``probes``, ``solver``,
    ``dequantization`` and the solver's tolerances (``rk45``) or ``steps`` (fixed-step)."""
    return {
        "estimator": "hutchinson-rademacher" if probes > 0 else "exact-trace",
        "probes": probes,
        "solver": solver,
        "dequantization": dequantization,
        **({"rtol": rtol, "atol": atol} if solver == "rk45" else {"steps": steps}),
    }


def ode_log_density(
    net: NetFn, process: GaussianDiffusion, y: Tensor, **options: Any
) -> tuple[Tensor, Tensor]:
    """:func:`flow_log_density` of DDPM's ODE (``net`` an ε- or v-network over ``process``):
    log p ``[N]`` nats of ``y`` ``[N, ...]`` and the NFE ``[N]``."""
    return flow_log_density(ProbabilityFlow.of_process(net, process), y, **options)


def flow_log_density(
    flow: ProbabilityFlow,
    y: Tensor,
    *,
    generator: Generator = None,
    solver: Solver = "rk45",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    probes: int = 1,
    sigma_min: float | None = None,
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """log p_{σ_min}(y) ``[N]`` (nats, continuous density of y ``[N, ...]`` in the data scale)
    and the network evaluations per row ``[N]``. ``sigma_min``: where the ODE starts (default
    the flow's σ_min; larger values give the density of the data noised to it).

    ``solver``: ``rk45`` (adaptive in log σ, ``rtol``/``atol``; recommended) or ``euler``/``heun``
    in σ over ``steps`` noise levels (:func:`~genbench.models.diffusion.samplers.ode_grid`; Heun
    with 100 levels is off by ~0.01-0.02 nats per dimension on Gaussian toys). ``probes``:
    Rademacher vectors for Hutchinson's estimator (drawn from ``generator``), 0 for the exact
    trace. ``labels``: ``[N]`` class labels of a conditional flow.
    """
    shape, b = tuple(y.shape[1:]), y.shape[0]
    z = rademacher_probes(y, probes, generator)
    state = augmented(y)
    if solver == "rk45":
        drift = _drift_with_trace(flow, shape, z, log_time=True, labels=labels)
        lo = math.log(flow.sigma_min if sigma_min is None else sigma_min)
        hi = math.log(flow.sigma_max)
        state, nfe = integrate_rk45(drift, state, lo, hi, rtol=rtol, atol=atol)
    else:
        drift = _drift_with_trace(flow, shape, z, log_time=False, labels=labels)
        grid = flow.grid(int(steps), solver, sigma_min)
        state, n = integrate_fixed(drift, state, grid, solver)
        nfe = torch.full((b,), n, dtype=torch.float64, device=y.device)
    y1, trace_integral = state[:, :-1].double(), state[:, -1].double()
    return flow.log_prior(y1) + trace_integral, nfe


def dequantize(
    x: Tensor, levels: int, *, generator: Generator = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Levels ``[N, ...]`` in ``[0, K)`` → u = 2k/(K-1) - 1 + (U - ½)·2/(K-1), U ~ U[0, 1)."""
    u = rand(x.shape, generator=generator, device=x.device, dtype=dtype)
    return (2 * (x.to(dtype) + u - 0.5)) / (levels - 1) - 1


def decoder_sigma(sigma_min: float, levels: int) -> float:
    """σ_0 of the ``gaussian`` bound: max(Δ / 4, σ_min) with Δ = 2 / (K - 1)."""
    return max(DECODER_SIGMA_FRACTION * 2 / (levels - 1), float(sigma_min))


def decoder_log_normalizer(z: Tensor, levels: int, sigma0: float) -> Tensor:
    """Σ_dims log Σ_j N(z; u_j, σ_0²) ``[N]`` (nats) over the K level centres u_j, for
    ``z`` ``[N, ...]``: the decoder and encoder terms of the ``gaussian`` bound together."""
    centres = torch.linspace(-1, 1, levels, dtype=torch.float64, device=z.device)
    r = (z.double().flatten(1)[..., None] - centres) / sigma0  # [N, D, K]
    log_n = -0.5 * r.square() - math.log(sigma0) - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_n, -1).sum(1)


def ode_nll(
    net: NetFn, process: GaussianDiffusion, x: Tensor, levels: int, **options: Any
) -> NllEstimate:
    """:func:`flow_nll` of DDPM's ODE (``net`` an ε- or v-network over ``process``) for levels
    ``x`` ``[N, C, H, W]``: nats ``[N]`` and NFE ``[N]``."""
    return flow_nll(ProbabilityFlow.of_process(net, process), x, levels, **options)


def flow_nll(
    flow: ProbabilityFlow,
    x: Tensor,
    levels: int,
    *,
    generator: Generator = None,
    solver: Solver = "rk45",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    probes: int = 1,
    dequantization: Dequantization = "gaussian",
    dtype: torch.dtype = torch.float32,
    labels: Tensor | None = None,
) -> NllEstimate:
    """Probability-flow ODE bound on the NLL of discrete ``x`` ``[N, ...]`` (levels in
    ``[0, K)``), in nats per example (see the module docstring for the two bounds); with
    ``labels`` ``[N]`` (a conditional flow) the bound on -log P(x | label).

    Draws, per example from ``generator``: the dequantization noise, then the probe vectors.
    Returns ``nll`` ``[N]`` nats, ``nfe`` ``[N]`` network evaluations (each also runs
    ``probes`` backward passes) and the settings (estimator, probes, solver, tolerances,
    dequantization and, for ``gaussian``, σ_0).
    """
    d = math.prod(x.shape[1:])
    settings = ode_settings(probes, solver, dequantization, rtol, atol, steps)
    options = {"solver": solver, "steps": steps, "rtol": rtol, "atol": atol}
    options.update(probes=probes, labels=labels)
    if dequantization == "uniform":
        u = dequantize(x, levels, generator=generator, dtype=dtype)
        logp, nfe = flow_log_density(flow, u, generator=generator, **options)
        nll = -logp + d * math.log((levels - 1) / 2)
    elif dequantization == "gaussian":
        sigma0 = decoder_sigma(flow.sigma_min, levels)
        centres = x.to(dtype) * (2 / (levels - 1)) - 1
        z = centres + sigma0 * randn(x.shape, generator=generator, device=x.device, dtype=dtype)
        logp, nfe = flow_log_density(flow, z, generator=generator, sigma_min=sigma0, **options)
        nll = -logp + decoder_log_normalizer(z, levels, sigma0)
        settings["sigma0"] = sigma0
    else:
        raise ValueError(f"dequantization must be one of {DEQUANTIZATIONS}, got {dequantization!r}")
    return NllEstimate(nll=nll, nfe=nfe, settings=settings)
