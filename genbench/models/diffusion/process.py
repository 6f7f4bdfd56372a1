"""The Gaussian diffusion of DDPM (Ho et al. 2020): schedules, q(x_t | x_0), the posterior
q(x_{t-1} | x_t, x_0), the ε / v parametrizations, L_simple and the variational bound L_vlb.

:class:`GaussianDiffusion` is a plain class with float64 tables; the network is passed in as a
function ``net(x_t, t_net) -> output`` (ε or v), so one process serves training, every sampler
and the likelihoods. A class-conditional network is called ``net(x_t, t_net, labels)`` with the
labels ``[N]`` of its rows: functions that evaluate it on other rows than the batch's (the
bound's timestep batching, an adaptive solver's active rows) take the batch's ``labels`` and
pass each call its rows' labels (:func:`apply_net`); ``labels=None`` calls ``net(x_t, t_net)``.

Indexing: code index ``t = 0..T-1`` is the paper's step ``t + 1``. So ``betas[t] = β_{t+1}``,
``alphas_cumprod[t] = ᾱ_{t+1}``, ``alphas_cumprod_prev[t] = ᾱ_t`` (with ``ᾱ_0 = 1``), and
``t = 0`` is the decoder step ``p(x_0 | x_1)``. The network sees ``timestep_map[t]``, the index
in the original process (a respaced process, used for step skipping, keeps the original times).

Symbols: β_t ``betas``; α_t = 1 - β_t ``alphas``; ᾱ_t = Π_{s≤t} α_s ``alphas_cumprod``;
posterior q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t) with μ̃_t = ``coef1`` x_0 + ``coef2`` x_t,
``coef1`` = β_t √ᾱ_{t-1} / (1 - ᾱ_t), ``coef2`` = √α_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t) and
β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t) ``posterior_variance``; σ_t = √((1 - ᾱ_t) / ᾱ_t) ``sigmas``
(noise-to-signal ratio, the time variable of the probability-flow ODE).

>>> p = GaussianDiffusion(linear_betas(1000))
>>> round(float(p.alphas_cumprod[-1]), 7)
4.04e-05
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from genbench.nn.random import Generator, randn

Schedule = Literal["linear", "cosine"]
Prediction = Literal["eps", "v"]
Variance = Literal["small", "large", "learned"]
#: λ of the hybrid objective L_simple + λ L_vlb (Nichol & Dhariwal 2021, sec. 3.1)
HYBRID_WEIGHT = 1e-3
#: ``net(x_t [N, ...], t_net [N]) -> [N, ...]``, or ``net(x_t, t_net, labels [N])`` when conditional
NetFn = Callable[..., Tensor]


def apply_net(net: NetFn, x_t: Tensor, t_net: Tensor, labels: Tensor | None = None) -> Tensor:
    """``net(x_t, t_net)`` (unconditional: ``labels`` None) or ``net(x_t, t_net, labels)`` with
    the labels ``[N]`` of the rows of ``x_t``."""
    return net(x_t, t_net) if labels is None else net(x_t, t_net, labels)


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β_1..β_T evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020), float64 [T]."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021): ᾱ_t = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2);
    β_t = min(1 - ᾱ_t / ᾱ_{t-1}, ``max_beta``). float64 [T]."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def make_betas(schedule: Schedule, timesteps: int) -> Tensor:
    """β_1..β_T of the named schedule with its published constants, float64 ``[T]``."""
    if schedule == "linear":
        return linear_betas(timesteps)
    if schedule == "cosine":
        return cosine_betas(timesteps)
    raise ValueError(f"schedule must be linear or cosine, got {schedule!r}")


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats, in the broadcast shape
    of the inputs (e.g. ``[N, C, H, W]``)."""
    return 0.5 * (
        logvar2
        - logvar1
        - 1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _log1mexp(d: Tensor) -> Tensor:
    """log(1 - e^d) for d ≤ 0, accurate at both ends."""
    return torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, logvar: Tensor, levels: int
) -> Tensor:
    """Elementwise log P(x) in nats of a Gaussian N(mean, e^logvar) discretized to K levels.

    ``x`` holds the levels scaled to ``[-1, 1]`` (``2 k / (K-1) - 1``); the bin of a level is
    ``x ± 1/(K-1)``, and the two edge bins extend to ``-inf`` and ``+inf``. Bin masses
    Φ(b) - Φ(a) are computed in log space (mirrored into the left tail) so they stay accurate
    when the bin lies many standard deviations away from the mean.
    """
    half = 1.0 / (levels - 1)
    inv_std = torch.exp(-0.5 * logvar)
    lo, hi = (x - mean - half) * inv_std, (x - mean + half) * inv_std
    flip = lo > 0  # Φ(b) - Φ(a) = Φ(-a) - Φ(-b): keep both ends in the accurate left tail
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    interior = log_b + _log1mexp(torch.minimum(log_a - log_b, torch.zeros_like(log_a)))
    bottom = torch.special.log_ndtr(hi)  # (-inf, x + half]
    top = torch.special.log_ndtr(-lo)  # [x - half, inf)
    return torch.where(x < -1 + half, bottom, torch.where(x > 1 - half, top, interior))


class GaussianDiffusion:
    """DDPM forward process with float64 tables (see the module docstring for the symbols).

    Args:
        betas: β_1..β_T, float64 ``[T]`` in ``(0, 1]``.
        prediction: what the network outputs: ``"eps"`` (ε, Ho et al.) or ``"v"``
            (v = √ᾱ ε - √(1-ᾱ) x_0, Salimans & Ho 2022).
        timestep_map: ``[T]`` network times (default ``0..T-1``); set by :meth:`respace`.
    """

    def __init__(
        self, betas: Tensor, *, prediction: Prediction = "eps", timestep_map: Tensor | None = None
    ) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be eps or v, got {prediction!r}")
        self.prediction: Prediction = prediction
        self.T = len(betas)
        self.betas = betas
        self.alphas = 1 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat(
            [torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]]
        )
        ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.posterior_variance = betas * (1 - ab_prev) / (1 - ab)
        # β̃ is 0 at t = 0; the decoder (and the log) use the t = 1 value there, as Ho et al.
        var_floor = self.posterior_variance[1] if self.T > 1 else betas[0]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([var_floor.reshape(1), self.posterior_variance[1:]])
        )
        self.large_log_variance = torch.log(torch.cat([var_floor.reshape(1), betas[1:]]))
        self.coef1 = betas * ab_prev.sqrt() / (1 - ab)
        self.coef2 = self.alphas.sqrt() * (1 - ab_prev) / (1 - ab)
        self.sigmas = ((1 - ab) / ab).sqrt()
        self.timestep_map = (
            torch.arange(self.T, dtype=torch.float64)
            if timestep_map is None
            else torch.as_tensor(timestep_map, dtype=torch.float64)
        )

    @classmethod
    def from_schedule(
        cls, schedule: Schedule = "linear", timesteps: int = 1000, *, prediction: Prediction = "eps"
    ) -> GaussianDiffusion:
        """Process with the named schedule (``linear``: 1e-4..0.02; ``cosine``: s = 0.008)."""
        return cls(make_betas(schedule, timesteps), prediction=prediction)

    def respace(self, timesteps: Sequence[int]) -> GaussianDiffusion:
        """The process restricted to the increasing indices ``timesteps``: ᾱ'_i = ᾱ_{τ_i}, so
        β'_i = 1 - ᾱ_{τ_i} / ᾱ_{τ_{i-1}}; the network still receives the original times."""
        idx = torch.as_tensor(list(timesteps), dtype=torch.long)
        if idx.numel() == 0 or bool((idx[1:] <= idx[:-1]).any()) or int(idx[-1]) >= self.T:
            raise ValueError("respace needs strictly increasing indices in [0, T)")
        ab = self.alphas_cumprod[idx]
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return GaussianDiffusion(
            1 - ab / ab_prev, prediction=self.prediction, timestep_map=self.timestep_map[idx]
        )

    # ---- table access -------------------------------------------------------------------
    @staticmethod
    def extract(table: Tensor, t: Tensor, ref: Tensor) -> Tensor:
        """``table[t]`` as ``[N, 1, ..., 1]`` broadcastable to ``ref`` (its dtype and device)."""
        vals = table.to(t.device)[t].to(device=ref.device, dtype=ref.dtype)
        return vals.reshape(-1, *([1] * (ref.ndim - 1)))

    def net_time(self, t: Tensor) -> Tensor:
        """Network times ``[N]`` (float32) of integer indices ``t``."""
        return self.timestep_map.to(t.device)[t].float()

    def _log_sigma_spline(self) -> tuple[Tensor, Tensor]:
        """Knots L_i = log σ_i and second derivatives M_i of the natural cubic spline through
        them (unit spacing): M_{i-1} + 4 M_i + M_{i+1} = 6 (L_{i+1} - 2 L_i + L_{i-1})."""
        if getattr(self, "_spline", None) is None:
            knots = self.sigmas.log()
            n, rhs = self.T, (6 * (knots[2:] - 2 * knots[1:-1] + knots[:-2])).tolist()
            m = [0.0] * n
            if n > 2:  # Thomas algorithm on the tridiagonal system (diagonal 4, off-diagonal 1)
                diag, vals = [4.0], [rhs[0]]
                for r in rhs[1:]:
                    diag.append(4.0 - 1.0 / diag[-1])
                    vals.append(r - vals[-1] / diag[-2])
                for i in range(n - 3, -1, -1):
                    m[i + 1] = (vals[i] - (m[i + 2] if i + 2 < n - 1 else 0.0)) / diag[i]
            self._spline = (knots, torch.tensor(m, dtype=torch.float64))
        return self._spline

    def _spline_eval(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """log σ(t) and d log σ / dt at fractional indices ``t`` (float64, clamped to [0, T-1])."""
        knots, m = (a.to(t.device) for a in self._log_sigma_spline())
        t = t.double().clamp(0, self.T - 1)
        i = t.floor().long().clamp(max=max(self.T - 2, 0))
        j = (i + 1).clamp(max=self.T - 1)
        w, v = t - i, 1 - (t - i)
        value = v * knots[i] + w * knots[j] + ((v**3 - v) * m[i] + (w**3 - w) * m[j]) / 6
        slope = knots[j] - knots[i] + ((1 - 3 * v**2) * m[i] + (3 * w**2 - 1) * m[j]) / 6
        return value, slope

    def sigma_at(self, t: Tensor) -> Tensor:
        """σ at fractional indices ``t`` ``[N]``, float64: a natural cubic spline of log σ through
        the T steps, so the probability-flow ODE's drift is smooth in σ (adaptive solvers stall
        on the kinks of a piecewise-linear map)."""
        return self._spline_eval(t)[0].exp()

    def t_at(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma_at`: fractional index of σ ``[N]`` (float64), by Newton steps
        from the piecewise-linear inverse."""
        knots = self._log_sigma_spline()[0].to(sigma.device)
        ls = sigma.double().log()
        i = (torch.searchsorted(knots, ls) - 1).clamp(0, max(self.T - 2, 0))
        j = (i + 1).clamp(max=self.T - 1)
        w = torch.where(j > i, (ls - knots[i]) / (knots[j] - knots[i]), torch.zeros_like(ls))
        t = (i + w).clamp(0, self.T - 1)
        for _ in range(8):
            value, slope = self._spline_eval(t)
            t = (t - (value - ls) / slope).clamp(0, self.T - 1)
        return t

    def net_time_at(self, t: Tensor) -> Tensor:
        """Network times ``[N]`` (float32) of fractional indices ``t`` ``[N]`` in ``[0, T-1]``
        (``timestep_map`` interpolated linearly)."""
        i = t.floor().long().clamp(0, self.T - 1)
        j = (i + 1).clamp(max=self.T - 1)
        tm = self.timestep_map.to(t.device)
        return (tm[i] + (tm[j] - tm[i]) * (t - i)).float()

    # ---- forward process and posterior --------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε, all ``[N, ...]``."""
        ab = self.extract(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean μ̃_t(x_t, x_0) ``[N, ...]`` and clipped log-variance ``[N, 1, ..., 1]`` of
        q(x_{t-1} | x_t, x_0), from ``x0``, ``x_t`` ``[N, ...]`` and int64 indices ``t`` ``[N]``."""
        mean = self.extract(self.coef1, t, x_t) * x0 + self.extract(self.coef2, t, x_t) * x_t
        return mean, self.extract(self.posterior_log_variance_clipped, t, x_t)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Regression target ``[N, ...]`` of the network: ε, or v = √ᾱ ε - √(1-ᾱ) x_0, from ``x0``,
        ``eps`` ``[N, ...]`` and int64 indices ``t`` ``[N]``."""
        if self.prediction == "eps":
            return eps
        ab = self.extract(self.alphas_cumprod, t, x0)
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0

    def split(self, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
        """(ε̂, x̂_0), each ``[N, ...]``, from the network output ``out`` ``[N, ...]`` at ``x_t``
        ``[N, ...]`` and ᾱ ``alpha_bar`` (broadcastable to ``x_t``, e.g. ``[N, 1, ..., 1]``)."""
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        if self.prediction == "eps":
            return out, (x_t - s * out) / a
        return s * x_t + a * out, a * x_t - s * out

    def p_mean_variance(
        self,
        out: Tensor,
        x_t: Tensor,
        t: Tensor,
        *,
        variance: Variance = "small",
        clip: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, log-variance of p(x_{t-1} | x_t) and x̂_0: μ = μ̃_t(x_t, x̂_0) with x̂_0 clipped
        to ``[-1, 1]`` if ``clip``; variance β̃_t (``small``), β_t (``large``) or ``learned``:
        then ``out`` has twice the channels of ``x_t`` (dim 1), the prediction and v ∈ [-1, 1]
        (unconstrained), and log σ² = f log β_t + (1 - f) log β̃_t with f = (v + 1) / 2
        (Nichol & Dhariwal 2021, eq. 15; the tables of this process, so a respaced process
        interpolates between its own β and β̃). At t = 0 the range is [β̃ of t = 1, β of t = 0]
        (the fixed variances both use β̃ of t = 1 there), so the decoder's variance is learned
        too."""
        if variance == "learned":
            out, v = out.chunk(2, dim=1)
        _, x0_hat = self.split(out, x_t, self.extract(self.alphas_cumprod, t, x_t))
        if clip:
            x0_hat = x0_hat.clamp(-1, 1)
        mean, small = self.q_posterior(x0_hat, x_t, t)
        if variance == "small":
            return mean, small, x0_hat
        large = self.extract(self.large_log_variance, t, x_t)
        if variance == "large":
            return mean, large, x0_hat
        if variance == "learned":  # between log β̃_t and log β_t, β_1 (not β̃_2) at t = 0
            frac = (v.to(x_t.dtype) + 1) / 2
            high = self.extract(self.betas, t, x_t).log()
            return mean, frac * high + (1 - frac) * small, x0_hat
        raise ValueError(f"variance must be small, large or learned, got {variance!r}")

    def term(
        self,
        out: Tensor,
        x0: Tensor,
        x_t: Tensor,
        t: Tensor,
        levels: int,
        *,
        variance: Variance = "small",
        clip: bool = True,
    ) -> Tensor:
        """L_t of the bound, ``[N]`` nats, float64, for the network output ``out`` at ``x_t``
        ``[N, ...]`` (from ``x0`` at int64 indices ``t`` ``[N]``): KL(q(x_{t-1} | x_t, x_0) ||
        p(x_{t-1} | x_t)) for t ≥ 1 and the discretized-Gaussian decoder -log p(x_0 | x_1) over
        ``levels`` levels for t = 0."""
        x0d, x_td = x0.double(), x_t.double()
        mean, logvar, _ = self.p_mean_variance(out.double(), x_td, t, variance=variance, clip=clip)
        q_mean, q_logvar = self.q_posterior(x0d, x_td, t)
        out = normal_kl(q_mean, q_logvar, mean, logvar).flatten(1).sum(1)
        dec = t == 0  # only these rows: the decoder of far-off rows may be infinite
        if bool(dec.any()):
            ll = discretized_gaussian_log_likelihood(x0d[dec], mean[dec], logvar[dec], levels)
            out = out.index_put((dec.nonzero().squeeze(1),), -ll.flatten(1).sum(1))
        return out

    # ---- losses --------------------------------------------------------------------------
    def simple_loss(self, net: NetFn, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """L_simple ``[N]``: mean squared error of the network output against its target."""
        out = net(self.q_sample(x0, t, eps), self.net_time(t))
        return (out - self.target(x0, eps, t)).square().flatten(1).mean(1)

    def hybrid_loss(
        self,
        net: NetFn,
        x0: Tensor,
        t: Tensor,
        eps: Tensor,
        levels: int,
        *,
        weight: float = HYBRID_WEIGHT,
    ) -> dict[str, Tensor]:
        """L_hybrid = L_simple + λ L_vlb for a network with learned variances (``out`` has
        twice the channels of ``x0``; Nichol & Dhariwal 2021, sec. 3.1), each ``[N]``.

        L_vlb is estimated at the sampled t by T · L_t in bits per dimension (their
        normalization) and sees the prediction through a stop-gradient: the bound trains only
        the variances, L_simple only the prediction. Unclipped x̂_0. Returns ``loss``,
        ``simple`` and ``vlb`` (the T · L_t estimate, bits/dim)."""
        x_t = self.q_sample(x0, t, eps)
        pred, v = net(x_t, self.net_time(t)).chunk(2, dim=1)
        simple = (pred - self.target(x0, eps, t)).square().flatten(1).mean(1)
        out = torch.cat([pred.detach(), v], dim=1)
        lt = self.term(out, x0, x_t, t, levels, variance="learned", clip=False)
        vlb = (self.T * lt / (x0[0].numel() * math.log(2))).to(simple.dtype)
        return {"loss": simple + weight * vlb, "simple": simple, "vlb": vlb}

    def vlb_loss(
        self,
        net: NetFn,
        x0: Tensor,
        t: Tensor,
        eps: Tensor,
        levels: int,
        probs: Tensor,
        *,
        variance: Variance = "small",
    ) -> dict[str, Tensor]:
        """L_vlb alone, estimated at timesteps ``t`` ``[N]`` drawn with probabilities ``probs``
        ``[N]``: L_t / p_t in bits per dimension (unbiased for Σ_{t<T} L_t; the prior term L_T
        has no parameters and is left out). Unclipped x̂_0; gradients reach the prediction
        and, when learned, the variances. Returns ``loss`` ``[N]`` and ``term`` (L_t, nats,
        detached: what an importance sampler records)."""
        x_t = self.q_sample(x0, t, eps)
        out = net(x_t, self.net_time(t))
        lt = self.term(out, x0, x_t, t, levels, variance=variance, clip=False)
        loss = lt / (probs.to(lt.dtype) * x0[0].numel() * math.log(2))
        return {"loss": loss.to(x0.dtype), "term": lt.detach()}

    def prior_kl(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) summed over dims, ``[N]`` nats."""
        t = torch.full((x0.shape[0],), self.T - 1, device=x0.device, dtype=torch.long)
        x0 = x0.double()
        ab = self.extract(self.alphas_cumprod, t, x0)
        kl = normal_kl(ab.sqrt() * x0, (1 - ab).log(), torch.zeros_like(x0), torch.zeros_like(ab))
        return kl.flatten(1).sum(1)

    def vlb_terms(
        self,
        net: NetFn,
        x0: Tensor,
        levels: int,
        *,
        variance: Variance = "small",
        clip: bool = True,
        generator: Generator = None,
        max_batch: int = 4096,
        labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The variational bound on -log P(x_0) of discrete data, every term in ``[N]`` nats.

        ``x0``: ``[N, ...]`` levels scaled to ``[-1, 1]``. For each t one x_t ~ q(x_t | x_0)
        is drawn (noise from ``generator`` in the order t = 0..T-1, so results do not depend on
        batching). Returns ``prior`` L_T, ``diffusion`` Σ_{t=2..T} L_{t-1} =
        KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), ``decoder`` L_0 = -log p(x_0 | x_1) under the
        discretized Gaussian, ``vlb`` (their sum, an upper bound on the discrete NLL) and
        ``per_t`` ``[N, T]`` (column 0 is L_0, column t ≥ 1 is L_t's KL term).
        ``max_batch`` caps the rows per network call (timesteps are batched together; a batch
        larger than ``max_batch`` is split), so the network's memory does not grow with T or N.
        ``labels``: ``[N]`` class labels of a conditional ``net`` (each call gets its rows').
        """
        b = x0.shape[0]
        chunk = max(1, max_batch // b)
        per_t = torch.zeros(self.T, b, dtype=torch.float64, device=x0.device)
        for start in range(0, self.T, chunk):
            ts = list(range(start, min(start + chunk, self.T)))
            eps = torch.cat(
                [randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) for _ in ts]
            )
            t = torch.tensor(ts, device=x0.device).repeat_interleave(b)
            x0r = x0.repeat(len(ts), *([1] * (x0.ndim - 1)))
            yr = None if labels is None else labels.repeat(len(ts))
            x_t, net_t = self.q_sample(x0r, t, eps), self.net_time(t)
            out = torch.cat(
                [
                    apply_net(
                        net,
                        x_t[i : i + max_batch],
                        net_t[i : i + max_batch],
                        None if yr is None else yr[i : i + max_batch],
                    )
                    for i in range(0, x_t.shape[0], max_batch)
                ]
            ).double()
            kl = self.term(out, x0r, x_t, t, levels, variance=variance, clip=clip)
            kl = kl.view(len(ts), b)
            per_t[ts[0] : ts[-1] + 1] = kl
        prior = self.prior_kl(x0)
        diffusion, decoder = per_t[1:].sum(0), per_t[0]
        return {
            "prior": prior,
            "diffusion": diffusion,
            "decoder": decoder,
            "vlb": prior + diffusion + decoder,
            "per_t": per_t.T,
        }
