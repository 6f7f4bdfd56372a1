"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").

Generator (:mod:`genbench.models.gan.style_networks`): a mapping network z -> w (normalized z,
``map_layers`` fully connected layers at 0.01x learning rate), a learned constant and one
modulated/demodulated 3x3 convolution per layer with a per-layer noise input (learned strength),
``skip`` (toRGB at every resolution, summed after upsampling) or ``resnet`` blocks. Discriminator:
``resnet`` (or ``orig``) blocks with a minibatch standard deviation layer in the epilogue.

Training (phases ``d`` and ``g`` of :class:`~genbench.models.gan.base.GAN`):

- non-saturating logistic loss (``loss``): L_D = softplus(D(G(z))) + softplus(-D(x)),
  L_G = softplus(-D(G(z))).
- style mixing (prob. ``style_mixing``, 0.9 in the paper): for a whole batch, layers from a random
  cutoff c in [1, num_ws) on take w of a second latent z2 (fakes of both phases).
- path-length regularization (sec. 3.2, eq. 4), lazily every ``pl_interval`` generator steps
  (sec. 3.1), with the term multiplied by the interval: per example,
  ``L_n = ||J_w^T y||`` with y ~ N(0, I) / sqrt(H W) image-shaped (the gradient of
  ``sum(G(w) * y)`` w.r.t. the ``[N, num_ws, w_dim]`` ws; squares summed over w_dim, averaged
  over layers, square-rooted), ``a <- a + pl_decay (mean_n L_n - a)`` (buffer ``pl_mean``), and the
  penalty ``pl_weight * pl_interval * (L_n - a)²`` is added to the generator's loss. It is taken
  on the generator batch itself (the released code draws a half-size batch for it).
- R1 on the discriminator, γ/2 ||∇_x D(x)||² on real batches, lazily every ``reg_interval``
  (16) D steps with weight γ·interval, is the GAN base's ``reg: r1`` (``reg_weight`` = γ); so are
  the other objectives / penalties and D's augmentation (``augment: ada`` for StyleGAN2-ADA), which
  the generator phase here goes through as well (:meth:`GAN.discriminate`).
- ``w_avg`` (buffer of the generator) tracks the mean w of the generator phase's batches:
  w_avg <- w_avg + (1 - w_avg_beta) (mean_n w_n - w_avg).

Sampling: one network evaluation; sampler option ``psi`` (ψ, default 1) truncates toward the
tracked average, w' = w_avg + ψ (w - w_avg) (ψ = 0: every sample uses w_avg, the "average image"
up to noise; ψ = 1: unchanged), and the base's ``truncation`` (z truncated to [-t, t]) still
applies. Every random draw of ``sample`` (z, then the noise images) comes from ``generator``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from genbench.models.base import Generator, Phase, Sampled, check_sampler_options
from genbench.models.gan.augment import DIFFAUGMENT_POLICY
from genbench.models.gan.base import GAN, frozen
from genbench.models.gan.losses import G_LOSSES
from genbench.models.gan.style_networks import StyleDiscriminator, StyleGenerator
from genbench.models.options import option_number

SAMPLER_OPTIONS = ("truncation", "psi")


def path_lengths(img: Tensor, ws: Tensor, y: Tensor) -> Tensor:
    """``[N]`` ||J_w^T y||: the gradient of ``sum(img * y)`` w.r.t. ``ws`` ``[N, L, w_dim]``,
    squared and summed over w_dim, averaged over the L layers, square-rooted. ``img`` ``[N, C, H,
    W]`` must be a function of ``ws``; ``y`` has its shape. The graph is kept when gradients are
    enabled (the penalty trains the generator)."""
    (grad,) = torch.autograd.grad(
        (img * y).sum(), ws, create_graph=torch.is_grad_enabled(), retain_graph=True
    )
    return grad.square().sum(dim=2).mean(dim=1).sqrt()


def path_length_penalty(lengths: Tensor, pl_mean: Tensor, decay: float) -> tuple[Tensor, Tensor]:
    """``((L_n - a)² [N], a)`` with ``a = pl_mean + decay (mean(L) - pl_mean)``, the updated
    running mean (kept in the graph as in the released code; store ``a.detach()``)."""
    a = pl_mean + decay * (lengths.mean() - pl_mean)
    return (lengths - a).square(), a


class StyleGAN2(GAN):
    """Karras et al. 2020 (see the module docstring).

    Args:
        shape, levels: data shape ``(C, H, W)`` and number of levels K.
        z_dim, w_dim: latent and intermediate latent sizes (512 / 512 in the paper).
        map_layers: mapping network depth (8 in the paper, 2 in the released CIFAR-10 config).
        channel_base, channel_max: feature maps at side r are min(channel_base // r, channel_max).
        g_arch: ``skip`` (the paper's config E/F generator) or ``resnet``.
        d_arch: ``resnet`` (paper) or ``orig`` (no shortcuts; the released CIFAR-10 config).
        mbstd_group, mbstd_channels: minibatch standard deviation group size and statistics.
        style_mixing: probability of mixing two latents in a batch (0.9; 0 disables).
        pl_weight: path-length weight (2; 0 disables), ``pl_interval`` its lazy interval (4),
            ``pl_decay`` the running-mean rate of ``a`` (0.01).
        w_avg_beta: decay of the tracked average w (0.995).
        d_steps: discriminator steps per generator step (1).
        d_optimizer, g_optimizer: per-phase optimizer overrides (Adam lr 2e-3/2.5e-3, betas (0,
            0.99) in the paper; the released code rescales each phase's lr by k/(k+1) and its
            betas to the power k/(k+1) for a lazy interval k, which the yaml does).
        loss, reg, reg_weight, reg_interval, augment, diffaugment, ada, toy: the objective
            (non-saturating logistic), D's penalty (``r1``, γ = ``reg_weight``, lazily every
            ``reg_interval`` steps), D's augmentation and the 2-D toy overrides (see
            :class:`~genbench.models.gan.base.GAN`).
    """

    default_loss = "nonsaturating"
    #: no class-conditional StyleGAN2 yet (the conditional GANs are DCGAN, SNGAN and WGAN-GP)
    conditional_support = False
    default_reg = "r1"

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        z_dim: int = 64,
        w_dim: int = 64,
        map_layers: int = 2,
        channel_base: int = 256,
        channel_max: int = 32,
        g_arch: str = "skip",
        d_arch: str = "resnet",
        mbstd_group: int = 4,
        mbstd_channels: int = 1,
        style_mixing: float = 0.9,
        pl_weight: float = 2.0,
        pl_interval: int = 4,
        pl_decay: float = 0.01,
        w_avg_beta: float = 0.995,
        d_steps: int = 1,
        d_optimizer: Mapping[str, Any] | None = None,
        g_optimizer: Mapping[str, Any] | None = None,
        loss: str | None = None,
        reg: str | None = None,
        reg_weight: float = 0.01,
        reg_interval: int = 16,
        augment: str = "none",
        diffaugment: Sequence[str] = DIFFAUGMENT_POLICY,
        ada: Mapping[str, Any] | None = None,
        toy: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            shape,
            levels,
            z_dim=z_dim,
            d_steps=d_steps,
            d_optimizer=d_optimizer,
            g_optimizer=g_optimizer,
            loss=loss,
            reg=reg,
            reg_weight=reg_weight,
            reg_interval=reg_interval,
            augment=augment,
            diffaugment=diffaugment,
            ada=ada,
            toy=toy,
        )
        self.style_mixing = option_number("model.style_mixing", style_mixing, low=0, high=1)
        self.pl_weight = option_number("model.pl_weight", pl_weight, low=0)
        self.pl_interval = option_number("model.pl_interval", pl_interval, low=1, integer=True)
        self.pl_decay = option_number("model.pl_decay", pl_decay, low=0, high=1)
        self.w_avg_beta = option_number("model.w_avg_beta", w_avg_beta, low=0, high=1)
        option_number("model.w_dim", w_dim, low=1, integer=True)
        option_number("model.map_layers", map_layers, low=1, integer=True)
        self.generator = StyleGenerator(
            self.z_dim,
            self.shape,
            w_dim=int(w_dim),
            map_layers=int(map_layers),
            channel_base=int(channel_base),
            channel_max=int(channel_max),
            arch=g_arch,
        )
        self.discriminator = StyleDiscriminator(
            self.shape,
            channel_base=int(channel_base),
            channel_max=int(channel_max),
            arch=d_arch,
            mbstd_group=option_number("model.mbstd_group", mbstd_group, low=1, integer=True),
            mbstd_channels=option_number(
                "model.mbstd_channels", mbstd_channels, low=1, integer=True
            ),
        )
        self.register_buffer("pl_mean", torch.zeros(()))
        self.register_buffer("g_steps", torch.zeros((), dtype=torch.long))

    # -- styles ---------------------------------------------------------------------------------
    def styles(self, z: Tensor, *, mix: bool = False) -> Tensor:
        """``[N, num_ws, w_dim]`` ws of latents ``z`` ``[N, z_dim]``; with ``mix`` and probability
        ``style_mixing``, layers from a cutoff c ~ U{1, ..., num_ws - 1} on take the w of a second
        latent drawn from the global RNG (one cutoff per batch)."""
        g = self.generator
        w = g.mapping(z)
        ws = w.unsqueeze(1).repeat(1, g.num_ws, 1)
        if mix and self.style_mixing > 0 and g.num_ws > 1:
            if float(torch.rand(())) < self.style_mixing:
                cutoff = int(torch.randint(1, g.num_ws, ()))
                w2 = g.mapping(torch.randn_like(z))
                ws = torch.cat(
                    [ws[:, :cutoff], w2.unsqueeze(1).expand(-1, g.num_ws - cutoff, -1)], 1
                )
        return ws

    def fake_batch(self, n: int, device: torch.device, labels: Tensor | None = None) -> Tensor:
        """``[n, C, H, W]`` fakes with style mixing and fresh noise (global RNG), no graph
        (``labels``: always ``None``, StyleGAN2 has no conditional mode)."""
        with torch.no_grad():
            ws = self.styles(torch.randn(n, self.z_dim, device=device), mix=self.training)
            return self.generator.synthesis(ws, self.generator.draw_noise(n, device=device))

    # -- generator phase ------------------------------------------------------------------------
    @property
    def phases(self) -> tuple[Phase, ...]:
        """The GAN's D and G phases; G's cost repeats every ``pl_interval`` steps (the lazy
        path-length term)."""
        d, g = super().phases
        return d, dataclasses.replace(g, period=self.pl_interval if self.pl_weight > 0 else 1)

    def training_losses(self, x: Tensor, phase: str, y: Tensor | None = None) -> dict[str, Tensor]:
        """``"d"``: the base's terms. ``"g"``: ``loss`` = softplus(-D(G(z))) (+ the path-length
        penalty on every ``pl_interval``-th training step, also logged as ``pl_penalty`` with the
        lengths ``pl_length``), all ``[N]``. ``y``: unconditional, so never given."""
        self.labels(y, x.shape[0])  # refuses labels
        if phase != "g":
            return super().training_losses(x, phase)
        n, device = x.shape[0], x.device
        train = self.training and torch.is_grad_enabled()
        g = self.generator
        ws = self.styles(torch.randn(n, self.z_dim, device=device), mix=self.training)
        if train:
            with torch.no_grad():
                g.w_avg.lerp_(ws[:, 0].mean(dim=0), 1.0 - self.w_avg_beta)
        img = g.synthesis(ws, g.draw_noise(n, device=device))
        with frozen(self.discriminator):
            out = {"loss": G_LOSSES[self.loss](self.discriminate(img))}
        if train and self.pl_weight > 0:
            if int(self.g_steps) % self.pl_interval == 0:
                h, w = img.shape[2], img.shape[3]
                y = torch.randn_like(img) / math.sqrt(h * w)
                lengths = path_lengths(img, ws, y)
                penalty, a = path_length_penalty(lengths, self.pl_mean, self.pl_decay)
                self.pl_mean.copy_(a.detach())
                out["loss"] = out["loss"] + self.pl_weight * self.pl_interval * penalty
                out["pl_penalty"], out["pl_length"] = penalty.detach(), lengths.detach()
            self.g_steps += 1
        return out

    def to_unit(self, x: Tensor) -> Tensor:
        """Levels -> ``[-1, 1]`` in the networks' dtype (float64 models get float64 data)."""
        return super().to_unit(x).to(self.generator.const.dtype)

    # -- sampling -------------------------------------------------------------------------------
    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """Options ``truncation`` (null or t > 0, z truncated to [-t, t]) and ``psi`` (ψ, a
        finite number; 1 = none)."""
        check_sampler_options(sampler, SAMPLER_OPTIONS, cls.__name__)
        if sampler.get("truncation") is not None:
            option_number("sampler.truncation", sampler["truncation"], low=0, low_open=True)
        if sampler.get("psi") is not None:
            option_number("sampler.psi", sampler["psi"])

    def synthesize(
        self,
        z: Tensor,
        *,
        psi: float = 1.0,
        generator: Generator = None,
        noise: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """``[N, C, H, W]`` images of latents ``z`` ``[N, z_dim]`` with w' = w_avg + ψ (w - w_avg)
        (no style mixing) and ``noise`` (default: drawn from ``generator``)."""
        g = self.generator
        ws = self.styles(z)
        if psi != 1.0:
            ws = g.w_avg + psi * (ws - g.w_avg)
        if noise is None:
            noise = g.draw_noise(z.shape[0], generator=generator, device=z.device)
        return g.synthesis(ws, noise)

    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """``[n, C, H, W]`` int64 levels, one network evaluation each (options: see
        :meth:`validate_sampler`; ``y``: unconditional, so never given)."""
        self.labels(y, n)  # refuses labels
        self.validate_sampler(sampler, {})
        z = self.latent(n, generator=generator, truncation=sampler.get("truncation"))
        z = z.to(self.generator.const.dtype)
        psi = 1.0 if sampler.get("psi") is None else float(sampler["psi"])
        return Sampled.constant(self.to_levels(self.synthesize(z, psi=psi, generator=generator)), 1)

    def resolve_sampler(self, **sampler: Any) -> dict[str, Any]:
        """The options with ``psi`` filled in (1 = no truncation toward w_avg)."""
        self.validate_sampler(sampler, {})
        psi = sampler.get("psi")
        return {**sampler, "psi": 1.0 if psi is None else float(psi)}
