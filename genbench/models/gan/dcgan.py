"""DCGAN (Radford et al. 2016): convolutional generator and discriminator, non-saturating loss.

Generator: z ``[N, z_dim]`` -> linear projection to ``[N, c0, h0, w0]`` -> batch norm, ReLU ->
``n`` transposed convolutions (4x4, stride 2) that double the resolution and halve the channels,
each followed by batch norm and ReLU -> a 3x3 convolution to C channels and tanh. Discriminator:
a 3x3 convolution at full resolution (no batch norm on the input layer), then ``n`` strided 4x4
convolutions that halve the resolution and double the channels, each with batch norm and
LeakyReLU(0.2), then a linear layer to one logit. Both are ``arch: conv`` of
:mod:`genbench.models.gan.networks`, where the start size ``(h0, w0)`` and ``n`` adapt to the data.

For 2-D toys (H = W = 1) ``arch: auto`` picks small MLPs instead (no batch norm).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from genbench.models.gan.augment import DIFFAUGMENT_POLICY
from genbench.models.gan.base import GAN
from genbench.models.gan.networks import build_networks


class DCGAN(GAN):
    """Radford et al. 2016 with the non-saturating loss of Goodfellow et al. 2014.

    Args:
        shape, levels: data shape ``(C, H, W)`` and number of levels K.
        arch: ``auto`` (conv for images >= 4x4, MLP for 2-D toys), ``conv`` or ``mlp``; the conv
            nets get the paper's N(0, 0.02) initialization, the MLPs PyTorch's default.
        z_dim: latent size (100 in the paper).
        g_width, d_width: channel widths of the conv stacks (see the module docstring).
        hidden, depth: MLP width and number of hidden layers (``arch: mlp``).
        d_steps: discriminator steps per generator step (1 in the paper).
        d_optimizer, g_optimizer: per-phase optimizer overrides (paper: Adam lr 2e-4, β1 0.5).
        loss, reg, reg_weight, reg_interval, augment, diffaugment, ada, toy: the objective, its
            penalty, D's augmentation and the 2-D toy overrides (see
            :class:`~genbench.models.gan.base.GAN`).
        num_classes, cond_d, ac_weight: conditional GAN (C > 0 classes; ``projection`` or ``ac``
            discriminator; weight of the AC cross-entropy), see
            :mod:`genbench.models.gan.conditional`.
    """

    default_loss = "nonsaturating"

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        arch: str = "auto",
        z_dim: int = 64,
        g_width: int = 32,
        d_width: int = 16,
        hidden: int = 128,
        depth: int = 3,
        d_steps: int = 1,
        d_optimizer: Mapping[str, Any] | None = None,
        g_optimizer: Mapping[str, Any] | None = None,
        loss: str | None = None,
        reg: str | None = None,
        reg_weight: float = 10.0,
        reg_interval: int = 1,
        augment: str = "none",
        diffaugment: Sequence[str] = DIFFAUGMENT_POLICY,
        ada: Mapping[str, Any] | None = None,
        toy: Mapping[str, Any] | None = None,
        num_classes: int = 0,
        cond_d: str = "projection",
        ac_weight: float = 1.0,
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
            num_classes=num_classes,
            cond_d=cond_d,
            ac_weight=ac_weight,
        )
        self.arch, self.generator, self.discriminator = build_networks(
            arch,
            self.shape,
            self.z_dim,
            g_width=g_width,
            d_width=d_width,
            hidden=hidden,
            depth=depth,
            num_classes=self.num_classes,
            cond_d=self.cond_d,
            conv={"norm": "batch"},
            conv_init=True,
        )
