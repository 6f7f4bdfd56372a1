"""Variational autoencoder (Kingma & Welling 2014) over discrete levels.

Encoder q(z|x) = N(mu(x), diag sigma(x)^2), prior p(z) = N(0, I), decoder p(x|z) over the K levels
of every sub-pixel: a categorical (``decoder: categorical``) or a discretized logistic
(``decoder: logistic``, Salimans et al. 2017, with open edge bins). Training minimizes the negative
ELBO; ``nll`` is the importance-weighted bound (IWAE, Burda et al. 2016) with ``iwae_samples``
samples, an upper bound on the discrete NLL that tightens as k grows. Inputs reach the encoder
scaled to [-1, 1]. Convolutional for images (stride-2 stages down to 4..7 pixels), an MLP for
data with no spatial extent (2-D toys).

Conditional mode (``num_classes = C > 0``, ``model.conditional=true``): a conditional VAE (Sohn et
al. 2015) of p(x | y). The label enters the encoder, q(z | x, y), and the decoder, p(x | z, y), as a
learned per-class vector added to the first layer's pre-activation (the same as appending a one-hot
y to that layer's input), and the prior is learned and class-conditional, p(z | y) =
N(mu_y, diag sigma_y^2) (C x 2 latent numbers, initialized to N(0, I)), so the classes may occupy
their own regions of latent space. Every number keeps its kind: ``nll(x, y=y)`` is the IWAE bound
on -log p(x | y), ``bound_terms`` its ELBO terms (the KL against p(z | y), in closed form).
Unconditional models (C = 0) have none of these parameters and compute exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.models.base import GenerativeModel, Generator, Sampled, check_sampler_options
from genbench.models.options import option_number
from genbench.nn.chunks import map_rows, row_slices
from genbench.nn.random import categorical, randn


def _stages(size: int) -> int:
    """Number of stride-2 stages that keep the feature map at least 4 pixels wide."""
    n = 0
    while size % 2 == 0 and size // 2 >= 4:
        size, n = size // 2, n + 1
    return n


def _out_width(layer: nn.Module) -> int:
    """Output features of a linear layer or output channels of a convolution."""
    return int(getattr(layer, "out_features", None) or layer.out_channels)


def shifted(seq: nn.Sequential, inp: Tensor, shift: Tensor | None, cut: int) -> Tensor:
    """``seq(inp)`` with ``shift`` ``[N, F]`` added to the output of ``seq[:cut]`` (``[N, F]``, or
    ``[N, F, h, w]`` where it is broadcast over the positions); ``shift = None`` is ``seq(inp)``."""
    if shift is None:
        return seq(inp)
    h = seq[:cut](inp)
    return seq[cut:](h + shift.view(*shift.shape, *[1] * (h.dim() - 2)).to(h.dtype))


Decoder = Literal["categorical", "logistic"]
DECODERS: tuple[str, ...] = ("categorical", "logistic")


def level_log_probs(out: Tensor, kind: Decoder, levels: int) -> Tensor:
    """``[N, C, H, W, K]`` log-probabilities of the K levels of every sub-pixel under a decoder
    output ``out`` ``[N, C, H, W, P]``: P = K logits (``categorical``) or a logistic's mean and
    log-scale on the [-1, 1] scale (``logistic``: bins of width 2/(K-1) around the level centres,
    the edge bins open). Computed in at least float32."""
    dtype = torch.promote_types(out.dtype, torch.float32)
    if kind == "categorical":
        return F.log_softmax(out.to(dtype), dim=-1)
    mean, log_s = out[..., 0:1].to(dtype), out[..., 1:2].to(dtype).clamp(min=-7.0)
    centres = torch.linspace(-1.0, 1.0, levels, device=out.device, dtype=dtype)
    half = 1.0 / (levels - 1)
    upper = torch.sigmoid((centres + half - mean) * torch.exp(-log_s))
    lower = torch.sigmoid((centres - half - mean) * torch.exp(-log_s))
    upper = torch.where(centres < 1.0 - 1e-6, upper, torch.ones_like(upper))
    lower = torch.where(centres > -1.0 + 1e-6, lower, torch.zeros_like(lower))
    return torch.log((upper - lower).clamp(min=1e-12))


class VAE(GenerativeModel):
    """Args:
    hidden: base channel width (conv) or hidden units (MLP).
    latent: dimension of z.
    decoder: ``categorical`` or ``logistic``.
    iwae_samples: k for the importance-weighted bound reported as ``nll``.
    num_classes: C > 0 builds the conditional VAE of p(x | y) (see the module docstring); 0
        (default) the unconditional one.
    """

    family = "vae"
    likelihood = "elbo"
    conditional_support = True

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        hidden: int = 64,
        latent: int = 16,
        decoder: Literal["categorical", "logistic"] = "categorical",
        iwae_samples: int = 64,
        num_classes: int = 0,
    ) -> None:
        super().__init__(shape, levels, num_classes)
        if decoder not in ("categorical", "logistic"):
            raise ValueError(f"model.decoder={decoder!r}: expected categorical or logistic")
        c, h, w = self.shape
        self.latent, self.decoder_kind, self.iwae_samples = latent, decoder, int(iwae_samples)
        out_per_dim = levels if decoder == "categorical" else 2  # logits or (mean, log-scale)
        self.out_per_dim = out_per_dim
        n = min(_stages(h), _stages(w))
        if h * w == 1 or n == 0:
            d = c * h * w
            self.encoder = nn.Sequential(
                nn.Flatten(),
                nn.Linear(d, hidden),
                nn.SiLU(),
                nn.Linear(hidden, hidden),
                nn.SiLU(),
                nn.Linear(hidden, 2 * latent),
            )
            self.decoder = nn.Sequential(
                nn.Linear(latent, hidden),
                nn.SiLU(),
                nn.Linear(hidden, hidden),
                nn.SiLU(),
                nn.Linear(hidden, d * out_per_dim),
            )
        else:
            ch = [hidden * 2**i for i in range(n + 1)]
            hh, ww = h // 2**n, w // 2**n
            enc: list[nn.Module] = [nn.Conv2d(c, ch[0], 3, padding=1), nn.SiLU()]
            for i in range(n):
                enc += [nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1), nn.SiLU()]
            enc += [nn.Flatten(), nn.Linear(ch[n] * hh * ww, 2 * latent)]
            dec: list[nn.Module] = [
                nn.Linear(latent, ch[n] * hh * ww),
                nn.SiLU(),
                nn.Unflatten(1, (ch[n], hh, ww)),
            ]
            for i in reversed(range(n)):
                dec += [nn.ConvTranspose2d(ch[i + 1], ch[i], 4, stride=2, padding=1), nn.SiLU()]
            dec += [nn.Conv2d(ch[0], c * out_per_dim, 3, padding=1)]
            self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        #: index of the module after the encoder's first affine layer (the label is added there)
        self.encoder_cut = 2 if isinstance(self.encoder[0], nn.Flatten) else 1
        if self.conditional:  # created last: an unconditional model draws the same weights
            width = _out_width(self.encoder[self.encoder_cut - 1])
            self.encoder_label = nn.Embedding(self.num_classes, width)
            self.decoder_label = nn.Embedding(self.num_classes, _out_width(self.decoder[0]))
            #: p(z | y): per class mean and log-std, ``[C, 2 latent]``, starting at N(0, I)
            self.prior_table = nn.Embedding(self.num_classes, 2 * latent)
            nn.init.zeros_(self.prior_table.weight)

    # -- pieces ------------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        """The parameters' dtype (float32, or float64 after ``model.double()``)."""
        return next(self.parameters()).dtype

    def _scale(self, x: Tensor) -> Tensor:
        return x.to(self._dtype()) * (2.0 / (self.levels - 1)) - 1.0

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z|x) (q(z|x,y) with labels ``y`` ``[N]``): mean and log-std, each ``[N, latent]``."""
        shift = None if y is None else self.encoder_label(y)
        mu, log_std = shifted(self.encoder, self._scale(x), shift, self.encoder_cut).chunk(2, -1)
        return mu, log_std.clamp(-8.0, 4.0)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Decoder output ``[N, C, H, W, P]`` (P = K logits, or logistic mean and log-scale) of
        latents ``z`` ``[N, latent]`` (and labels ``y`` ``[N]`` of a conditional model)."""
        c, h, w = self.shape
        shift = None if y is None else self.decoder_label(y)
        out = shifted(self.decoder, z, shift, 1).reshape(z.shape[0], c, self.out_per_dim, h, w)
        return out.permute(0, 1, 3, 4, 2)

    def prior(self, y: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """p(z | y): mean and log-std ``[N, latent]`` of labels ``y`` ``[N]``; ``None`` for the
        unconditional model, whose prior is N(0, I)."""
        if y is None:
            return None
        mu, log_std = self.prior_table(y).chunk(2, dim=-1)
        return mu, log_std.clamp(-8.0, 4.0)

    def _level_log_probs(self, out: Tensor) -> Tensor:
        """``[N, C, H, W, K]`` log-probabilities of every level under the decoder output."""
        return level_log_probs(out, self.decoder_kind, self.levels)

    def _log_px_z(self, x: Tensor, z: Tensor, y: Tensor | None = None) -> Tensor:
        """``[R]`` log p(x|z) (log p(x|z,y)) in nats of latents ``z`` ``[R, latent]``, row ``r``
        paired with ``x[r % N]`` (and ``y[r % N]``) for ``x`` ``[N, C, H, W]`` (R = k N: k latent
        draws per example, draw-major).

        Without autograd the rows go through the decoder in chunks of a fixed size
        (:func:`genbench.nn.chunks.map_rows`: at most 2^25 level log-probabilities per chunk), so
        memory does not grow with R; with autograd (training), in one call.
        """
        n = x.shape[0]

        def _rows(r: Tensor, zc: Tensor) -> Tensor:  # row indices [M], latents [M, latent]
            whole = r.numel() == n and (n == 0 or int(r[0]) == 0)
            xc = x if whole else x[r % n]
            yc = y if whole or y is None else y[(r % n).to(y.device)]
            logp = self._level_log_probs(self.decode(zc, yc))
            return logp.gather(-1, xc.long().unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)

        index = torch.arange(z.shape[0])  # on the CPU: reading r[0] never waits for a GPU
        return map_rows(_rows, index, z, per_row=self.dims * self.levels)

    # -- contract ----------------------------------------------------------------------------
    def training_losses(
        self, x: Tensor, phase: str = "main", y: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``loss`` = ``neg_elbo``, ``recon``, ``kl``: ``[N]`` nats for levels ``x``
        ``[N, C, H, W]`` (labels ``y`` ``[N]`` of a conditional model)."""
        terms = self.bound_terms(x, y=y)
        return {"loss": terms["neg_elbo"], "recon": terms["recon"], "kl": terms["kl"]}

    def bound_terms(
        self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None
    ) -> dict[str, Tensor]:
        """``neg_elbo`` = ``recon`` + ``kl``, each ``[N]`` nats for levels ``x`` ``[N, C, H, W]``
        (one posterior sample from ``generator``: with generators seeded like ``nll``'s it is the
        first of the IWAE draws); with labels ``y`` the ELBO of log p(x | y), its KL against
        p(z | y) in closed form."""
        y = self.labels(y, x.shape[0], x.device)
        mu, log_std = self.encode(x, y)
        z = mu + log_std.exp() * randn(
            mu.shape, generator=generator, device=mu.device, dtype=mu.dtype
        )
        recon = -self._log_px_z(x, z, y)
        prior = self.prior(y)
        if prior is None:  # KL(N(mu, sigma^2) || N(0, 1))
            kl = 0.5 * (mu.pow(2) + (2 * log_std).exp() - 2 * log_std - 1).sum(-1)
        else:  # KL(N(mu, sigma^2) || N(mu_y, sigma_y^2))
            p_mu, p_ls = prior
            kl = 0.5 * (
                ((mu - p_mu) / p_ls.exp()).pow(2) + (2 * (log_std - p_ls)).exp()
                - 2 * (log_std - p_ls) - 1
            ).sum(-1)  # fmt: skip
        return {"neg_elbo": recon + kl, "recon": recon, "kl": kl}

    def nll(self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None) -> Tensor:
        """``[N]`` negative IWAE bound in nats with ``iwae_samples`` importance samples (example
        i's draws from ``generator`` i when it is one per example); with labels ``y`` ``[N]`` a
        bound on -log p(x | y).

        Memory: the k latent draws ``[k, N, latent]`` and log-weights ``[k, N]`` are held (a few
        bytes per draw); the decoder's ``[k N, C, H, W, K]`` level log-probabilities are never
        built at once (see ``_log_px_z``), so k and the batch size only cost time.
        """
        k, b = self.iwae_samples, x.shape[0]
        y = self.labels(y, b, x.device)
        mu, log_std = self.encode(x, y)
        dtype = torch.promote_types(mu.dtype, torch.float32)  # float32 under autocast, or wider
        eps = randn((b, k, self.latent), generator=generator, device=mu.device, dtype=dtype)
        eps = eps.transpose(0, 1)  # [k, B, latent]: row b's k draws come from its generator
        z = mu + log_std.exp() * eps  # [k, B, latent]
        log_q = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        prior = self.prior(y)
        if prior is None:  # log N(z; 0, I)
            log_p = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        else:  # log N(z; mu_y, sigma_y^2)
            p_mu, p_ls = prior
            log_p = (
                -0.5 * ((z - p_mu) / p_ls.exp()).pow(2) - p_ls - 0.5 * math.log(2 * math.pi)
            ).sum(-1)
        log_px = self._log_px_z(x, z.reshape(k * b, self.latent), y).reshape(k, b)
        log_w = log_px + log_p - log_q
        return -(torch.logsumexp(log_w, 0) - math.log(k))

    def nll_settings(self, **options: Any) -> dict[str, Any]:
        """``{"iwae_samples": k}``: the bound :meth:`nll` reports depends on k."""
        return {"iwae_samples": self.iwae_samples}

    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """Option ``temperature`` (T >= 0, default 1): latents are drawn from N(0, T² I)
        (conditional: N(mu_y, T² sigma_y²)). No ``guidance``: a conditional VAE samples p(x | y)
        as it is."""
        check_sampler_options(sampler, ("temperature",), cls.__name__)
        option_number("sampler.temperature", sampler.get("temperature", 1.0), low=0)

    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """``[n, C, H, W]`` int64 levels: z ~ N(0, T² I) (``temperature`` T, default 1; with
        labels ``y`` ``[n]``, z ~ N(mu_y, T² sigma_y²)), then a draw from the decoder's level
        distribution (given y); one network evaluation (the decoder)."""
        self.validate_sampler(sampler, {})
        ref = next(self.parameters())
        y = self.labels(y, n, ref.device)
        z = randn((n, self.latent), generator=generator, device=ref.device, dtype=ref.dtype)
        z = z * float(sampler.get("temperature", 1.0))
        prior = self.prior(y)
        if prior is not None:
            z = prior[0] + prior[1].exp() * z
        if generator is None or isinstance(generator, torch.Generator):
            x = self._draw_levels(z, generator, y)  # one stream: chunks would reorder its draws
        else:  # one generator per sample: decode and draw in chunks of a fixed size (same draws)
            x = torch.cat(
                [
                    self._draw_levels(z[i:j], generator[i:j], None if y is None else y[i:j])
                    for i, j in row_slices(n, self.dims * self.levels)
                ]
            )
        return Sampled.constant(x, 1)

    def _draw_levels(self, z: Tensor, generator: Generator, y: Tensor | None = None) -> Tensor:
        """``[n, C, H, W]`` levels drawn from the decoder at latents ``z`` ``[n, latent]`` (and
        labels ``y`` ``[n]``)."""
        logp = self._level_log_probs(self.decode(z, y))
        if self.decoder_kind == "logistic":  # the level probabilities (bins), as they are
            return categorical(probs=logp.exp(), generator=generator)
        return categorical(logp, generator=generator)
