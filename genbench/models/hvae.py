"""Hierarchical VAE: a top-down ladder of spatial latent groups (in the style of NVAE, Vahdat &
Kautz 2020, and VDVAE, Child 2021), at small scale.

Generative model: p(z_1) p(z_2 | z_1) ... p(z_L | z_<L) p(x | z), where each z_l is a
``[zdim, h_l, w_l]`` map at one resolution of the ladder (lowest first) and every conditional is
a diagonal Gaussian computed by the top-down network from the groups above it. Inference shares
that path (q(z_l | x, z_<l), the bidirectional inference of Kingma et al. 2016): a bottom-up pass
over x gives features at every resolution, and each posterior is the prior's Gaussian shifted and
rescaled by a function of the top-down state and the bottom-up features. The decoder p(x | z) is
the VAE's: a categorical over the K levels or a discretized logistic per sub-pixel.

Numbers: training minimizes the negative ELBO, -E_q[log p(x | z)] + Σ_l E_q[KL(q(z_l | ·) ||
p(z_l | ·))] (each KL in closed form given the groups above, sampled through them); ``nll`` is the
importance-weighted bound with ``iwae_samples`` draws of the whole hierarchy (Burda et al. 2016),
log w = log p(x | z) + Σ_l log p(z_l | z_<l) - Σ_l log q(z_l | x, z_<l); both are upper bounds
on the discrete NLL (``likelihood = "elbo"``).

Shapes: the ladder halves the resolution while both sides are even and above ``min_size``
(8x8 digits: 8, 4, 2, 1; 28x28: 28, 14, 7), with latent groups below the data's resolution (a
latent map as large as the data mostly copies it at a high KL price); data with no spatial extent
(2-D toys, ``(C, 1, 1)``) get one 1x1 resolution with the latents, where the 3x3 convolutions
act as dense layers.

Conditional mode (``num_classes = C > 0``, ``model.conditional=true``): p(x | y) with a learned,
class-conditional prior. A per-class vector is added to the top-down state where the ladder
starts (``h_top``), so every prior p(z_l | z_<l, y) and the decoder p(x | z, y) depend on the
label, and another to the bottom-up stem, so the posteriors q(z_l | x, y, z_<l) see it on both
paths. ``nll(x, y=y)`` is the IWAE bound on -log p(x | y), ``bound_terms`` its ELBO terms.
Unconditional models (C = 0) have none of these parameters and compute exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.models.base import GenerativeModel, Generator, Sampled, check_sampler_options
from genbench.models.options import option_choice, option_number
from genbench.models.vae import DECODERS, Decoder, level_log_probs
from genbench.nn.chunks import rows_per_chunk
from genbench.nn.random import categorical, randn

#: IWAE draws per pass: the noise of example i is drawn in passes of this many draws, so its
#: values do not depend on how many examples share the batch
DRAWS_PER_PASS = 8
LOG_2PI = math.log(2 * math.pi)


def _gauss_logpdf(z: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
    """``[N]`` log N(z; mu, exp(log_std)²) summed over every non-batch dimension."""
    return (-0.5 * ((z - mu) / log_std.exp()).square() - log_std - 0.5 * LOG_2PI).flatten(1).sum(1)


class ResBlock(nn.Module):
    """x + conv(silu(conv(silu(x)))), the last convolution initialized to zero (starts as the
    identity, which keeps a deep ladder stable at the start of training)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, ch, h, w]`` → ``[N, ch, h, w]``."""
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class LatentGroup(nn.Module):
    """One stochastic layer of the ladder: prior p(z | h), posterior q(z | h, features) as a
    shift and log-scale of the prior, and the update h ← h + proj(z) + prior features."""

    def __init__(self, ch: int, zdim: int) -> None:
        super().__init__()
        self.zdim = zdim
        self.prior = nn.Conv2d(ch, 2 * zdim + ch, 3, padding=1)
        self.posterior = nn.Conv2d(2 * ch, 2 * zdim, 3, padding=1)
        self.proj = nn.Conv2d(zdim, ch, 1)
        for conv in (self.prior, self.posterior):  # start at p = N(0, I) and q = p
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(
        self, h: Tensor, feats: Tensor | None, noise: Tensor, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draw z (from q when ``feats`` are given, else from p at ``temperature``) with the
        standard normal ``noise`` ``[N, zdim, h, w]``. Returns (new h, KL(q || p) ``[N]``,
        log p(z) ``[N]``, log q(z) ``[N]``); without ``feats`` the KL and log q are zeros."""
        p_mu, p_ls, h_feat = self.prior(h).split([self.zdim, self.zdim, h.shape[1]], dim=1)
        p_ls = p_ls.clamp(-7.0, 2.0)
        if feats is None:
            z = p_mu + temperature * p_ls.exp() * noise
            zero = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
            return h + h_feat + self.proj(z), zero, _gauss_logpdf(z, p_mu, p_ls), zero
        d_mu, d_ls = self.posterior(torch.cat([h, feats], dim=1)).chunk(2, dim=1)
        q_mu, q_ls = p_mu + d_mu, (p_ls + d_ls).clamp(-7.0, 2.0)
        z = q_mu + q_ls.exp() * noise
        kl = 0.5 * (
            ((q_mu - p_mu) / p_ls.exp()).square()
            + (2 * (q_ls - p_ls)).exp()
            - 1
            - 2 * (q_ls - p_ls)
        )
        log_p, log_q = _gauss_logpdf(z, p_mu, p_ls), _gauss_logpdf(z, q_mu, q_ls)
        return h + h_feat + self.proj(z), kl.flatten(1).sum(1), log_p, log_q


class HVAE(GenerativeModel):
    """Hierarchical VAE (see the module docstring).

    Args:
        shape, levels: data shape ``(C, H, W)`` and levels K (from the runner).
        hidden: channels of every feature map.
        zdim: channels of every latent group.
        groups: latent groups per resolution.
        min_size: the ladder halves the resolution while both sides are even and larger than
            this (8x8: 8, 4, 2, 1; 28x28: 28, 14, 7).
        data_latents: latent groups at the data's own resolution too (default: only below it,
            unless the ladder has a single resolution).
        blocks: residual blocks per resolution, in each direction.
        decoder: ``categorical`` or ``logistic`` (as the VAE's).
        iwae_samples: k of the importance-weighted bound reported as ``nll``.
        num_classes: C > 0 builds the conditional model of p(x | y) (see the module
            docstring); 0 (default) the unconditional one.
    """

    family = "vae"
    likelihood = "elbo"
    conditional_support = True

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        hidden: int = 32,
        zdim: int = 8,
        groups: int = 2,
        blocks: int = 1,
        decoder: Decoder = "categorical",
        iwae_samples: int = 64,
        min_size: int = 1,
        data_latents: bool = False,
        num_classes: int = 0,
    ) -> None:
        super().__init__(shape, levels, num_classes)
        option_choice("model.decoder", decoder, DECODERS)
        for key, value, low in (
            ("hidden", hidden, 1),
            ("zdim", zdim, 1),
            ("groups", groups, 1),
            ("blocks", blocks, 0),
            ("iwae_samples", iwae_samples, 1),
            ("min_size", min_size, 1),
        ):
            option_number(f"model.{key}", value, low=low, integer=True)
        c, h, w = self.shape
        stages = 0
        while (h >> stages) % 2 == 0 and (w >> stages) % 2 == 0 and min(h, w) >> stages > min_size:
            stages += 1
        #: (h, w) of every resolution, lowest (top of the ladder) first
        self.sizes = [(h >> s, w >> s) for s in reversed(range(stages + 1))]
        #: latent groups at every resolution (none at the data's own unless asked, or alone)
        self.group_counts = [
            int(groups) if (i < stages or data_latents or stages == 0) else 0
            for i in range(stages + 1)
        ]
        self.decoder_kind: Decoder = decoder
        self.zdim, self.groups, self.iwae_samples = int(zdim), int(groups), int(iwae_samples)
        self.out_per_dim = levels if decoder == "categorical" else 2

        def stack() -> nn.Sequential:
            return nn.Sequential(*[ResBlock(hidden) for _ in range(blocks)])

        self.stem = nn.Conv2d(c, hidden, 3, padding=1)
        self.up = nn.ModuleList([stack() for _ in self.sizes])  # bottom-up, lowest first
        hl, wl = self.sizes[0]
        self.h_top = nn.Parameter(torch.zeros(1, hidden, hl, wl))
        self.latents = nn.ModuleList(
            [
                nn.ModuleList([LatentGroup(hidden, self.zdim) for _ in range(count)])
                for count in self.group_counts
            ]
        )
        self.down = nn.ModuleList([stack() for _ in self.sizes])  # top-down, lowest first
        self.head = nn.Conv2d(hidden, c * self.out_per_dim, 3, padding=1)
        if self.conditional:  # created last: an unconditional model draws the same weights
            self.top_label = nn.Embedding(self.num_classes, hidden)  # added to h_top
            self.stem_label = nn.Embedding(self.num_classes, hidden)  # added to the stem's output

    # -- pieces -------------------------------------------------------------------------------
    def _param(self) -> Tensor:
        return self.h_top

    def noise_shapes(self) -> list[tuple[int, int, int]]:
        """``(zdim, h, w)`` of every latent group, in top-down order."""
        return [
            (self.zdim, hh, ww)
            for (hh, ww), count in zip(self.sizes, self.group_counts)
            for _ in range(count)
        ]

    def _features(self, x: Tensor, y: Tensor | None = None) -> list[Tensor]:
        """Bottom-up features of levels ``x`` ``[N, C, H, W]`` (and labels ``y`` ``[N]``), one map
        per resolution (lowest first)."""
        h = self.stem(x.to(self._param().dtype) * (2.0 / (self.levels - 1)) - 1.0)
        if y is not None:
            h = h + self.stem_label(y)[:, :, None, None]
        feats = []
        for i in reversed(range(len(self.sizes))):
            h = self.up[i](h)
            feats.append(h)
            if i > 0:
                h = F.avg_pool2d(h, 2)
        return feats[::-1]

    def _descend(
        self,
        feats: list[Tensor] | None,
        noise: list[Tensor],
        n: int,
        temperature: float = 1.0,
        y: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The top-down pass with one standard normal ``[n, zdim, h, w]`` per group (from the
        labels' starting state with labels ``y`` ``[n]``). Returns the decoder output
        ``[n, C, H, W, P]``, KL ``[n]``, log p(z) ``[n]`` and log q(z) ``[n]`` (posterior draws
        when ``feats`` are given, prior draws otherwise)."""
        h = self.h_top.expand(n, -1, -1, -1)
        if y is not None:
            h = h + self.top_label(y)[:, :, None, None]
        kl = log_p = log_q = torch.zeros(n, dtype=h.dtype, device=h.device)
        k = 0
        for i, size in enumerate(self.sizes):
            if h.shape[-2:] != size:
                h = F.interpolate(h, size=size, mode="nearest")
            for group in self.latents[i]:
                f = None if feats is None else feats[i]
                h, kl_g, lp_g, lq_g = group(h, f, noise[k], temperature)
                kl, log_p, log_q, k = kl + kl_g, log_p + lp_g, log_q + lq_g, k + 1
            h = self.down[i](h)
        c, hh, ww = self.shape
        out = self.head(F.silu(h)).reshape(n, c, self.out_per_dim, hh, ww).permute(0, 1, 3, 4, 2)
        return out, kl, log_p, log_q

    def _log_px(self, x: Tensor, out: Tensor) -> Tensor:
        """``[N]`` log p(x | z) of levels ``x`` under decoder outputs ``out``."""
        logp = level_log_probs(out, self.decoder_kind, self.levels)
        return logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)

    def _noise(self, rows: int, generator: Generator, draws: int | None = None) -> list[Tensor]:
        """Standard normal noise of every group: ``[rows, shape]``, or ``[rows, draws, shape]``
        when ``draws`` is given (row i from generator i when it is one per row)."""
        p = self._param()
        lead = (rows,) if draws is None else (rows, draws)
        return [
            randn((*lead, *s), generator=generator, device=p.device, dtype=p.dtype)
            for s in self.noise_shapes()
        ]

    # -- contract -----------------------------------------------------------------------------
    def training_losses(
        self, x: Tensor, phase: str = "main", y: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``loss`` = ``neg_elbo``, ``recon``, ``kl``: ``[N]`` nats for levels ``x``
        ``[N, C, H, W]`` (labels ``y`` ``[N]`` of a conditional model; one posterior draw per
        group, global RNG)."""
        terms = self.bound_terms(x, y=y)
        return {"loss": terms["neg_elbo"], "recon": terms["recon"], "kl": terms["kl"]}

    def bound_terms(
        self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None
    ) -> dict[str, Tensor]:
        """``neg_elbo`` = ``recon`` + ``kl`` (the KL of every group in closed form given the
        groups above), ``[N]`` nats of levels ``x`` ``[N, C, H, W]`` (of log p(x | y) with labels
        ``y`` ``[N]``)."""
        y = self.labels(y, x.shape[0], x.device)
        noise = self._noise(x.shape[0], generator)
        out, kl, _, _ = self._descend(self._features(x, y), noise, len(x), y=y)
        recon = -self._log_px(x, out)
        return {"neg_elbo": recon + kl, "recon": recon, "kl": kl}

    def nll(self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None) -> Tensor:
        """``[N]`` negative IWAE bound in nats with ``iwae_samples`` draws of the hierarchy (on
        -log p(x | y) with labels ``y`` ``[N]``).

        Example i's draws come from generator i, :data:`DRAWS_PER_PASS` at a time, so its number
        does not depend on the batch; rows go through the network in chunks whose size depends
        only on the data shape (at most 2^25 level log-probabilities), so memory does not grow
        with the batch or with k."""
        n, k = x.shape[0], self.iwae_samples
        y = self.labels(y, n, x.device)
        feats = self._features(x, y)
        chunk = rows_per_chunk(self.dims * self.levels)
        log_w = []
        for start in range(0, k, DRAWS_PER_PASS):
            draws = min(DRAWS_PER_PASS, k - start)
            noise = [z.flatten(0, 1) for z in self._noise(n, generator, draws)]  # [n·draws, ...]
            rows = torch.arange(n * draws, device=x.device) // draws  # example of every row
            parts = []
            for i in range(0, n * draws, chunk):
                r = rows[i : i + chunk]
                out, _, log_p, log_q = self._descend(
                    [f[r] for f in feats],
                    [z[i : i + chunk] for z in noise],
                    len(r),
                    y=None if y is None else y[r],
                )
                parts.append(self._log_px(x[r], out) + log_p - log_q)
            log_w.append(torch.cat(parts).view(n, draws))
        return -(torch.logsumexp(torch.cat(log_w, dim=1), dim=1) - math.log(k))

    def nll_settings(self, **options: Any) -> dict[str, Any]:
        """``{"iwae_samples": k}``: the bound :meth:`nll` reports depends on k."""
        return {"iwae_samples": self.iwae_samples}

    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """Option ``temperature`` (T >= 0, default 1): every group is drawn from its prior with
        its standard deviation scaled by T (T = 1: the model's own distribution)."""
        check_sampler_options(sampler, ("temperature",), cls.__name__)
        option_number("sampler.temperature", sampler.get("temperature", 1.0), low=0)

    def resolve_sampler(self, **sampler: Any) -> dict[str, Any]:
        """``{"temperature": T}`` (default 1.0)."""
        self.validate_sampler(sampler, {})
        return {"temperature": float(sampler.get("temperature", 1.0))}

    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """``[n, C, H, W]`` int64 levels: every group from its prior top-down, then a draw from
        the decoder (given labels ``y`` ``[n]`` of a conditional model); one network evaluation
        (the top-down pass). Sample i's noise comes from generator i when there is one per
        sample."""
        temperature = self.resolve_sampler(**sampler)["temperature"]
        y = self.labels(y, n, self._param().device)
        noise = self._noise(n, generator)
        per_sample = generator is not None and not isinstance(generator, torch.Generator)
        step = rows_per_chunk(self.dims * self.levels) if per_sample else max(n, 1)
        xs = []
        for i in range(0, n, step):
            j = min(i + step, n)
            yc = None if y is None else y[i:j]
            out, *_ = self._descend(None, [z[i:j] for z in noise], j - i, temperature, yc)
            logp = level_log_probs(out, self.decoder_kind, self.levels)
            gen = generator[i:j] if per_sample else generator
            if self.decoder_kind == "logistic":
                xs.append(categorical(probs=logp.exp(), generator=gen))
            else:
                xs.append(categorical(logp, generator=gen))
        return Sampled.constant(torch.cat(xs) if xs else torch.zeros(0, *self.shape).long(), 1)
