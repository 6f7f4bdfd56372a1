"""SNGAN (Miyato et al. 2018): spectral normalization on every discriminator layer, hinge loss.

Each weight W of the discriminator is replaced by W / σ(W), with σ(W) its largest singular value
estimated by one power iteration per training forward pass (u, v are persistent buffers; the
estimate is refined across steps, and the layer's parameter is ``parametrizations.weight.original``,
see :func:`torch.nn.utils.parametrizations.spectral_norm`). Convolution kernels are reshaped to
``[c_out, c_in * kh * kw]`` for σ. This makes every layer 1-Lipschitz (in the reshaped sense).

Backbones (``arch``): ``conv`` = the paper's "standard CNN" (App. B.4, Table 3: 3x3 and strided 4x4
convolutions, LeakyReLU(0.1)) with a DCGAN generator; ``resnet`` = the ResNet of App. B (Table 4,
shared with WGAN-GP, global sum pooling); ``mlp`` for 2-D toys (all in
:mod:`genbench.models.gan.networks`). Loss: hinge,
L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))], L_G = -E[D(G(z))]. The paper's CIFAR-10
setting: n_dis = 5 (``d_steps``), Adam lr 2e-4, betas (0, 0.9), batch 64, 50k generator updates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from genbench.models.gan.augment import DIFFAUGMENT_POLICY
from genbench.models.gan.base import GAN, renamed_d_steps
from genbench.models.gan.networks import build_networks


def spectral_normalize_(module: nn.Module, n_power_iterations: int = 1) -> nn.Module:
    """Put spectral normalization on every ``Linear``, ``Conv2d`` and ``Embedding`` (the
    projection discriminator's class embedding, ``[C, F]``) of ``module`` (in place)."""
    kinds = nn.Linear | nn.Conv2d | nn.Embedding
    layers = [m for m in module.modules() if isinstance(m, kinds)]
    for layer in layers:
        spectral_norm(layer, n_power_iterations=n_power_iterations)
    return module


class SNGAN(GAN):
    """Miyato et al. 2018.

    Args:
        shape, levels: data shape ``(C, H, W)`` and number of levels K.
        arch: ``auto`` (conv for images >= 4x4, MLP for 2-D toys), ``conv``, ``resnet``, ``mlp``.
        z_dim: latent size (128 in the paper).
        g_width, d_width: channels (conv: at full resolution, doubled per x2; resnet: throughout;
            the paper's CIFAR ResNet has 256 / 128).
        hidden, depth: MLP width and number of hidden layers.
        d_steps: discriminator steps per generator step, the paper's n_dis (5 in its ResNet runs;
            1 with its settings B/C for the standard CNN). ``n_dis=`` is a deprecated alias.
        n_power_iterations: power iterations per forward pass for σ(W) (1).
        d_optimizer, g_optimizer: per-phase optimizer overrides.
        loss, reg, reg_weight, reg_interval, augment, diffaugment, ada, toy: the objective, its
            penalty, D's augmentation and the 2-D toy overrides (see
            :class:`~genbench.models.gan.base.GAN`).
        num_classes, cond_d, ac_weight: conditional GAN (C > 0 classes; ``projection`` or ``ac``
            discriminator; weight of the AC cross-entropy), see
            :mod:`genbench.models.gan.conditional`; the projection embedding is spectrally
            normalized too (Miyato & Koyama 2018).
    """

    default_loss = "hinge"

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
        d_steps: int | None = None,
        n_power_iterations: int = 1,
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
        n_dis: int | None = None,
    ) -> None:
        super().__init__(
            shape,
            levels,
            z_dim=z_dim,
            d_steps=renamed_d_steps(d_steps, 1, n_dis=n_dis),
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
            conv={"norm": "none", "slope": 0.1, "deep": True},
            resnet_pool="sum",
        )
        spectral_normalize_(self.discriminator, int(n_power_iterations))
