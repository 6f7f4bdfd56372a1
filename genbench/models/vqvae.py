"""VQ-VAE (van den Oord et al. 2017, Neural Discrete Representation Learning) with a gated
PixelCNN prior over its code map, both trained in one run.

Encoder: levels scaled to [-1, 1] → convolutions with ``downsample`` stride-2 halvings (while both
sides are even) → ``z_e`` ``[N, code_dim, h, w]``; 8x8 digits give a 2x2 code map by default (4x4
with ``downsample: 1``), 28x28 gives 7x7, and data with no spatial extent (2-D toys, ``(C, 1, 1)``)
a 1x1 map, where the 3x3 convolutions act as dense layers. Every position is replaced by its
nearest codebook vector (Euclidean), ``z_q``; gradients pass from ``z_q`` to ``z_e`` straight
through. The codebook is a parameter trained by the paper's loss, ||sg(z_e) - e||² + β ||z_e -
sg(e)||² (β = ``beta``, 0.25), summed over the code map; no EMA updates, so the whole state is in
``parameters()`` and checkpoints, weight averages and resume need nothing special.
Decoder: ``z_q`` → transposed convolutions back to ``(C, H, W)`` → the VAE's categorical or
discretized-logistic distribution over the K levels of every sub-pixel. Prior: a gated PixelCNN
(:class:`~genbench.models.autoregressive.pixelcnn.PixelCNN`) over the code indices as a
``(1, h, w)`` image with ``codebook_size`` levels.

Numbers: with the deterministic encoder, q(z | x) = δ(z = e(x)) is a one-point posterior over the
discrete codes (entropy 0), so the ELBO gives -log P(x) ≤ -log p(x | z_q(e(x))) - log p(e(x)):
``recon`` + ``prior`` nats, deterministic (``likelihood = "elbo"``). Training minimizes
``recon`` + ``vq`` (codebook and commitment terms) + ``prior``, the prior scored on the detached
codes so it does not pull the encoder: the autoencoder and the prior share the run and its budget.

Conditional mode (``num_classes = C > 0``, ``model.conditional=true``): p(x | y) =
Σ_codes p(x | codes, y) p(codes | y). A per-class vector is added to the first convolution's
output of the encoder (the codes of x given y) and of the decoder, p(x | z_q, y), and the prior
over codes is learned and class-conditional: the PixelCNN's logits plus a learned per-class,
per-position offset to the logits, p(codes | y) = Π_i softmax(PixelCNN_i(codes_<i) + b[y, i])
(C x codebook_size x h x w numbers, starting at zero; on a 1x1 code map, a free categorical per
class). ``nll(x, y=y)`` is the same deterministic bound on -log P(x | y); conditional sampling
draws the codes with one full PixelCNN pass per code position. Unconditional models (C = 0) have
none of these parameters and compute exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.models.autoregressive.base import inverse_cdf
from genbench.models.autoregressive.pixelcnn import PixelCNN
from genbench.models.base import GenerativeModel, Generator, Sampled, check_sampler_options
from genbench.models.hvae import ResBlock
from genbench.models.options import option_choice, option_number
from genbench.models.vae import DECODERS, Decoder, level_log_probs, shifted
from genbench.nn.chunks import map_rows
from genbench.nn.random import categorical, rand


class VQVAE(GenerativeModel):
    """VQ-VAE with a PixelCNN prior (see the module docstring).

    Args:
        shape, levels: data shape ``(C, H, W)`` and levels K (from the runner).
        hidden: channels of the encoder's and decoder's feature maps.
        code_dim: dimension of every code vector.
        codebook_size: number of codebook vectors (the prior's categories).
        downsample: stride-2 halvings of the encoder (fewer when a side stops being even).
        blocks: residual blocks in the encoder and in the decoder at the code resolution.
        beta: weight of the commitment term.
        decoder: ``categorical`` or ``logistic`` (as the VAE's).
        prior_features, prior_layers: width and depth of the PixelCNN prior.
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
        code_dim: int = 8,
        codebook_size: int = 64,
        downsample: int = 2,
        blocks: int = 1,
        beta: float = 0.25,
        decoder: Decoder = "categorical",
        prior_features: int = 32,
        prior_layers: int = 4,
        num_classes: int = 0,
    ) -> None:
        super().__init__(shape, levels, num_classes)
        option_choice("model.decoder", decoder, DECODERS)
        for key, value, low in (
            ("hidden", hidden, 1),
            ("code_dim", code_dim, 1),
            ("codebook_size", codebook_size, 2),
            ("prior_features", prior_features, 1),
            ("prior_layers", prior_layers, 1),
            ("downsample", downsample, 0),
            ("blocks", blocks, 0),
        ):
            option_number(f"model.{key}", value, low=low, integer=True)
        beta = option_number("model.beta", beta, low=0)
        c, h, w = self.shape
        stages = 0
        while stages < int(downsample) and (h >> stages) % 2 == 0 and (w >> stages) % 2 == 0:
            stages += 1
        #: (h, w) of the code map
        self.code_shape = (h >> stages, w >> stages)
        self.decoder_kind: Decoder = decoder
        self.code_dim, self.codebook_size, self.beta = int(code_dim), int(codebook_size), beta
        self.out_per_dim = levels if decoder == "categorical" else 2

        enc: list[nn.Module] = [nn.Conv2d(c, hidden, 3, padding=1)]
        for _ in range(stages):
            enc += [nn.SiLU(), nn.Conv2d(hidden, hidden, 4, stride=2, padding=1)]
        enc += [ResBlock(hidden) for _ in range(blocks)]
        enc += [nn.SiLU(), nn.Conv2d(hidden, self.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        # the paper's initialization of the codebook: uniform in ±1/codebook_size
        self.codebook = nn.Parameter(
            torch.empty(self.codebook_size, self.code_dim).uniform_(
                -1.0 / self.codebook_size, 1.0 / self.codebook_size
            )
        )
        dec: list[nn.Module] = [nn.Conv2d(self.code_dim, hidden, 3, padding=1)]
        dec += [ResBlock(hidden) for _ in range(blocks)]
        for _ in range(stages):
            dec += [nn.SiLU(), nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1)]
        dec += [nn.SiLU(), nn.Conv2d(hidden, c * self.out_per_dim, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.prior = PixelCNN(
            (1, *self.code_shape),
            self.codebook_size,
            features=int(prior_features),
            layers=int(prior_layers),
        )
        if self.conditional:  # created last: an unconditional model draws the same weights
            self.encoder_label = nn.Embedding(self.num_classes, hidden)  # after encoder[0]
            self.decoder_label = nn.Embedding(self.num_classes, hidden)  # after decoder[0]
            #: b[y]: per-class offsets of the prior's logits, ``[C, codebook_size * h * w]``
            self.prior_label = nn.Embedding(
                self.num_classes, self.codebook_size * self.code_shape[0] * self.code_shape[1]
            )
            nn.init.zeros_(self.prior_label.weight)

    # -- pieces -------------------------------------------------------------------------------
    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``z_e`` ``[N, code_dim, h, w]`` of levels ``x`` ``[N, C, H, W]`` (and labels ``y``
        ``[N]`` of a conditional model)."""
        u = x.to(self.codebook.dtype) * (2.0 / (self.levels - 1)) - 1.0
        return shifted(self.encoder, u, None if y is None else self.encoder_label(y), 1)

    def quantize(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codebook vectors: (indices ``[N, h, w]`` int64, ``z_q`` ``[N, code_dim, h, w]``,
        no gradient to ``z_e``)."""
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        dist = (
            flat.square().sum(1, keepdim=True)
            - 2 * flat @ self.codebook.t()
            + self.codebook.square().sum(1)
        )
        idx = dist.argmin(1).view(z_e.shape[0], *z_e.shape[2:])
        return idx, self.lookup(idx)

    def lookup(self, idx: Tensor) -> Tensor:
        """Code vectors ``[N, code_dim, h, w]`` of indices ``[N, h, w]``."""
        return self.codebook[idx].permute(0, 3, 1, 2)

    def decode(self, z_q: Tensor, y: Tensor | None = None) -> Tensor:
        """Decoder output ``[N, C, H, W, P]`` of code vectors ``[N, code_dim, h, w]`` (and labels
        ``y`` ``[N]`` of a conditional model)."""
        c, h, w = self.shape
        out = shifted(self.decoder, z_q, None if y is None else self.decoder_label(y), 1)
        return out.reshape(len(z_q), c, self.out_per_dim, h, w).permute(0, 1, 3, 4, 2)

    def _log_px(self, x: Tensor, out: Tensor) -> Tensor:
        """``[N]`` log p(x | z) of levels ``x`` under decoder outputs ``out``."""
        logp = level_log_probs(out, self.decoder_kind, self.levels)
        return logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)

    def prior_logits(self, idx: Tensor, y: Tensor) -> Tensor:
        """``[N, codebook_size, 1, h, w]`` logits of p(codes | y) at every code position given
        the codes before it: the PixelCNN's plus the offsets b[y] of labels ``y`` ``[N]``."""
        offset = self.prior_label(y).view(len(y), self.codebook_size, 1, *self.code_shape)
        return self.prior.logits(idx.unsqueeze(1)) + offset.to(self.codebook.dtype)

    def prior_nll(self, idx: Tensor, y: Tensor | None = None) -> Tensor:
        """``[N]`` -log p(codes) (-log p(codes | y) with labels ``y`` ``[N]``) in nats of code
        indices ``[N, h, w]`` under the prior."""
        if y is None:
            return self.prior.nll(idx.unsqueeze(1))
        logits = self.prior_logits(idx, y)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.cross_entropy(logits, idx.unsqueeze(1), reduction="none").flatten(1).sum(1)

    def sample_codes(
        self, y: Tensor, generator: Generator, temperature: float
    ) -> tuple[Tensor, Tensor]:
        """Codes ``[n, h, w]`` drawn from p(codes | y) (logits divided by ``temperature``) for
        labels ``y`` ``[n]``, one full PixelCNN pass per code position, and that count ``[n]``.
        Draws as the PixelCNN's own sampler does: h·w uniforms per sample from its generator,
        used in raster order by inverse CDF."""
        n, (h, w) = len(y), self.code_shape
        idx = torch.zeros(n, h, w, dtype=torch.long, device=y.device)
        uniforms = rand((n, h, w, 1), generator=generator, device=y.device)
        for i in range(h):
            for j in range(w):
                logits = self.prior_logits(idx, y)[:, :, 0, i, j]
                idx[:, i, j] = inverse_cdf(logits / temperature, uniforms[:, i, j, 0])
        return idx, torch.full((n,), float(h * w), dtype=torch.float64)

    # -- contract -----------------------------------------------------------------------------
    def training_losses(
        self, x: Tensor, phase: str = "main", y: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``[N]`` terms of levels ``x`` ``[N, C, H, W]`` (labels ``y`` ``[N]`` of a conditional
        model): ``loss`` = ``recon`` + ``vq`` + ``prior`` (nats, except ``vq``: squared
        distances), and the bound ``neg_elbo`` = ``recon`` + ``prior`` (detached)."""
        y = self.labels(y, x.shape[0], x.device)
        z_e = self.encode(x, y)
        idx, z_q = self.quantize(z_e)
        z_st = z_e + (z_q - z_e).detach()  # straight-through: forward z_q, backward to z_e
        recon = -self._log_px(x, self.decode(z_st, y))
        codebook = (z_e.detach() - z_q).square().flatten(1).sum(1)
        commit = (z_e - z_q.detach()).square().flatten(1).sum(1)
        vq = codebook + self.beta * commit
        prior = self.prior_nll(idx.detach(), y)
        return {
            "loss": recon + vq + prior,
            "neg_elbo": (recon + prior).detach(),
            "recon": recon.detach(),
            "prior": prior.detach(),
            "vq": vq.detach(),
        }

    def bound_terms(
        self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None
    ) -> dict[str, Tensor]:
        """``neg_elbo`` = ``recon`` + ``prior``: -log p(x | z_q(x)) and -log p(codes of x),
        ``[N]`` nats of levels ``x`` ``[N, C, H, W]`` (deterministic; ``generator`` unused); with
        labels ``y`` ``[N]``, -log p(x | z_q(x, y), y) and -log p(codes | y)."""
        y = self.labels(y, x.shape[0], x.device)
        idx, z_q = self.quantize(self.encode(x, y))
        recon = -self._log_px(x, self.decode(z_q, y))
        prior = self.prior_nll(idx, y)
        return {"neg_elbo": recon + prior, "recon": recon, "prior": prior}

    def nll(self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None) -> Tensor:
        """``[N]`` upper bound on -log P(x) (-log P(x | y) with labels ``y`` ``[N]``) in nats:
        ``recon`` + ``prior`` (see :meth:`bound_terms`); deterministic, ``generator`` unused.
        Rows run in chunks of at most 2^25 level log-probabilities, so memory does not grow
        with N."""
        per_row = self.dims * self.levels
        y = self.labels(y, x.shape[0], x.device)
        if y is None:
            return map_rows(lambda xs: self.bound_terms(xs)["neg_elbo"], x, per_row=per_row)
        return map_rows(
            lambda xs, ys: self.bound_terms(xs, y=ys)["neg_elbo"], x, y, per_row=per_row
        )

    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """Option ``temperature`` (T > 0, default 1): the prior's logits are divided by T (the
        decoder's draw is untouched)."""
        check_sampler_options(sampler, ("temperature",), cls.__name__)
        option_number("sampler.temperature", sampler.get("temperature", 1.0), low=0, low_open=True)

    def resolve_sampler(self, **sampler: Any) -> dict[str, Any]:
        """``{"temperature": T}`` (default 1.0)."""
        self.validate_sampler(sampler, {})
        return {"temperature": float(sampler.get("temperature", 1.0))}

    @torch.inference_mode()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """``[n, C, H, W]`` int64 levels: codes from the prior (one PixelCNN evaluation per
        code position), decoded (one more evaluation), levels drawn from the decoder; with labels
        ``y`` ``[n]`` from p(codes | y) and p(x | codes, y). Sample i draws all its randomness
        from generator i when there is one per sample."""
        temperature = self.resolve_sampler(**sampler)["temperature"]
        y = self.labels(y, n, self.codebook.device)
        if y is None:
            codes = self.prior.sample(n, generator=generator, temperature=temperature)
            idx, nfe = codes.x[:, 0], codes.nfe
        else:
            idx, nfe = self.sample_codes(y, generator, temperature)
        logp = level_log_probs(self.decode(self.lookup(idx), y), self.decoder_kind, self.levels)
        if self.decoder_kind == "logistic":
            x = categorical(probs=logp.exp(), generator=generator)
        else:
            x = categorical(logp, generator=generator)
        return Sampled(x, nfe + 1)
