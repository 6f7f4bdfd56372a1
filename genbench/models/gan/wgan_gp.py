"""WGAN-GP (Gulrajani et al. 2017): Wasserstein critic with a gradient penalty.

Critic loss (Algorithm 1): L = D(x̃) - D(x) + λ (‖∇_x̂ D(x̂)‖₂ - 1)² with x̃ = G(z),
x̂ = ε x + (1 - ε) x̃, ε ~ U[0, 1], λ = 10, n_critic = 5 critic steps per generator step
(``d_steps``), Adam (lr 1e-4, β1 = 0, β2 = 0.9). The critic has no batch norm (the penalty is per
example); ``d_norm: layer`` gives the layer-normalized critic the paper suggests instead. The
generator minimizes -D(G(z)).

Backbones (``arch``, :mod:`genbench.models.gan.networks`): ``conv`` = a DCGAN generator and
the DCGAN discriminator without batch norm; ``resnet`` = the paper's ResNet (App. F, mean
pooling; for CIFAR-10 the 32 -> 16 -> 8 -> 8 -> 8 critic); ``mlp`` for 2-D toys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from genbench.models.gan.base import GAN, renamed_d_steps
from genbench.models.gan.losses import gradient_penalty, interpolate
from genbench.models.gan.networks import build_networks


class WGANGP(GAN):
    """Gulrajani et al. 2017.

    Args:
        shape, levels: data shape ``(C, H, W)`` and number of levels K.
        arch: ``auto`` (conv for images >= 4x4, MLP for 2-D toys), ``conv``, ``resnet``, ``mlp``.
        z_dim: latent size (128 in the paper).
        g_width, d_width: channels (conv: at full resolution, doubled per x2; resnet: throughout).
        hidden, depth: MLP width and number of hidden layers.
        d_steps: critic steps per generator step, the paper's n_critic (5). ``n_critic=`` is a
            deprecated alias.
        gp_weight: λ of the gradient penalty (10; the paper's toy experiments use 0.1, and with
            data scaled to ``[-1, 1]`` λ = 10 makes 2-D toy training oscillate).
        d_norm: critic normalization for ``conv``: ``none`` or ``layer`` (never batch norm).
        d_optimizer, g_optimizer: per-phase optimizer overrides (Adam 1e-4, betas (0, 0.9)).
        num_classes, cond_d, ac_weight: conditional GAN (C > 0 classes; ``projection`` or ``ac``
            discriminator; weight of the AC cross-entropy), see
            :mod:`genbench.models.gan.conditional`.
    """

    loss = "wasserstein"

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        arch: str = "auto",
        z_dim: int = 64,
        g_width: int = 32,
        d_width: int = 24,
        hidden: int = 128,
        depth: int = 3,
        d_steps: int | None = None,
        gp_weight: float = 10.0,
        d_norm: str = "none",
        d_optimizer: Mapping[str, Any] | None = None,
        g_optimizer: Mapping[str, Any] | None = None,
        num_classes: int = 0,
        cond_d: str = "projection",
        ac_weight: float = 1.0,
        n_critic: int | None = None,
    ) -> None:
        super().__init__(
            shape,
            levels,
            z_dim=z_dim,
            d_steps=renamed_d_steps(d_steps, 5, n_critic=n_critic),
            d_optimizer=d_optimizer,
            g_optimizer=g_optimizer,
            num_classes=num_classes,
            cond_d=cond_d,
            ac_weight=ac_weight,
        )
        if d_norm not in ("none", "layer"):
            raise ValueError(f"WGAN-GP critic norm must be 'none' or 'layer', got {d_norm!r}")
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        self.gp_weight = float(gp_weight)
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
            conv={"norm": d_norm},
            conv_init=True,
            resnet_pool="mean",
        )

    def discriminator_losses(
        self, y: Tensor, fake: Tensor, labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Critic terms: ``loss`` = D(x̃) - D(x) + ``gp``; ``wasserstein`` = D(x) - D(x̃) (the
        critic's per-pair estimate of W1); ``gp`` = λ (‖∇_x̂ D(x̂)‖₂ - 1)², all ``[N]``. A
        conditional critic is penalized at x̂ given the pair's label: ∇_x̂ D(x̂, y)."""
        out = super().discriminator_losses(y, fake, labels)
        eps = torch.rand(y.shape[0], device=y.device)  # ε ~ U[0, 1], one per pair

        def critic(x: Tensor) -> Tensor:
            return self.judge(x, labels)[0]

        gp = gradient_penalty(critic, interpolate(y, fake, eps), self.gp_weight)
        out["loss"] = out["loss"] + gp
        out["wasserstein"] = out["d_real"] - out["d_fake"]
        out["gp"] = gp.detach()
        return out
