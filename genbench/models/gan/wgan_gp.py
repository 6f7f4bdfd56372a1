"""WGAN-GP (Gulrajani et al. 2017): Wasserstein critic with a gradient penalty, and its ResNet.

Critic loss (Algorithm 1): L = D(x̃) - D(x) + λ (‖∇_x̂ D(x̂)‖₂ - 1)² with x̃ = G(z),
x̂ = ε x + (1 - ε) x̃, ε ~ U[0, 1], λ = 10, n_critic = 5 critic steps per generator step
(``d_steps``), Adam (lr 1e-4, β1 = 0, β2 = 0.9). The critic has no batch norm (the penalty is per
example); ``d_norm: layer`` gives the layer-normalized critic the paper suggests instead. The
generator minimizes -D(G(z)).

The ResNet (Gulrajani et al. 2017, App. F; reused by SNGAN, Miyato et al. 2018, App. B) lives here
too: :class:`ResNetGenerator` (linear to ``[width, h0, w0]``, one up-block per x2 upsampling,
batch norm, ReLU, 3x3 conv, tanh) and :class:`ResNetDiscriminator` (an "optimized" first block,
down-blocks until the resolution is divided by 4 at most, two more blocks at that resolution, ReLU,
global pooling, linear). For CIFAR-10 this is the papers' 32 -> 16 -> 8 -> 8 -> 8 critic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from genbench.models.gan.base import (
    GAN,
    MLPDiscriminator,
    MLPGenerator,
    renamed_d_steps,
    resolve_arch,
    upsampling_plan,
)
from genbench.models.gan.dcgan import ConvDiscriminator, DCGANGenerator, init_dcgan_
from genbench.models.gan.losses import gradient_penalty, interpolate


class UpBlock(nn.Module):
    """Generator residual block ``[N, c_in, h, w]`` -> ``[N, c_out, 2h, 2w]``:
    BN, ReLU, nearest x2, conv3x3, BN, ReLU, conv3x3; shortcut nearest x2 and conv1x1."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 1))

    def forward(self, h: Tensor) -> Tensor:
        return self.main(h) + self.skip(h)


class DownBlock(nn.Module):
    """Critic residual block: [ReLU], conv3x3, ReLU, conv3x3, [avg-pool x2]; the shortcut is a
    conv1x1 (and pooling) when the shape changes. ``first`` is the "optimized" input block (no
    leading ReLU, pooling before the shortcut conv)."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool = False) -> None:
        super().__init__()
        pool: list[nn.Module] = [nn.AvgPool2d(2)] if down else []
        act: list[nn.Module] = [] if first else [nn.ReLU()]
        self.main = nn.Sequential(*act, nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, padding=1), *pool)
        if first:
            self.skip: nn.Module = nn.Sequential(*pool, nn.Conv2d(c_in, c_out, 1))
        elif down or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1), *pool)
        else:
            self.skip = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x) + self.skip(x)


class ResNetGenerator(nn.Module):
    """``[N, z_dim]`` -> ``[N, C, H, W]`` in ``[-1, 1]`` with ``width`` channels throughout."""

    def __init__(self, z_dim: int, shape: Sequence[int], width: int) -> None:
        super().__init__()
        c_out, h, w = shape
        h0, w0, n = upsampling_plan(h, w)
        self.net = nn.Sequential(
            nn.Linear(z_dim, width * h0 * w0), nn.Unflatten(1, (width, h0, w0)),
            *[UpBlock(width, width) for _ in range(n)],
            nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, c_out, 3, padding=1), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class ResNetDiscriminator(nn.Module):
    """``[N, C, H, W]`` -> ``[N]``; ``pool`` is ``mean`` (WGAN-GP) or ``sum`` (SNGAN)."""

    def __init__(self, shape: Sequence[int], width: int, pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "sum"):
            raise ValueError(f"pool must be 'mean' or 'sum', got {pool!r}")
        c_in, h, w = shape
        downs = min(upsampling_plan(h, w)[2], 2)
        blocks = [DownBlock(c_in, width, down=downs > 0, first=True)]
        blocks += [DownBlock(width, width, down=True) for _ in range(downs - 1)]
        blocks += [DownBlock(width, width, down=False) for _ in range(2)]
        self.blocks = nn.Sequential(*blocks, nn.ReLU())
        self.pool = pool
        self.linear = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(x)
        h = h.sum((2, 3)) if self.pool == "sum" else h.mean((2, 3))  # [N, width]
        return self.linear(h).squeeze(1)


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
    """

    loss = "wasserstein"

    def __init__(self, shape: Sequence[int], levels: int, *, arch: str = "auto", z_dim: int = 64,
                 g_width: int = 32, d_width: int = 24, hidden: int = 128, depth: int = 3,
                 d_steps: int | None = None, gp_weight: float = 10.0, d_norm: str = "none",
                 d_optimizer: Mapping[str, Any] | None = None,
                 g_optimizer: Mapping[str, Any] | None = None,
                 n_critic: int | None = None) -> None:
        super().__init__(shape, levels, z_dim=z_dim,
                         d_steps=renamed_d_steps(d_steps, 5, n_critic=n_critic),
                         d_optimizer=d_optimizer, g_optimizer=g_optimizer)
        if d_norm not in ("none", "layer"):
            raise ValueError(f"WGAN-GP critic norm must be 'none' or 'layer', got {d_norm!r}")
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        self.gp_weight = float(gp_weight)
        self.arch = resolve_arch(arch, self.shape, ("conv", "resnet", "mlp"))
        if self.arch == "mlp":
            self.generator = MLPGenerator(self.z_dim, self.shape, hidden, depth)
            self.discriminator = MLPDiscriminator(self.shape, hidden, depth)
        elif self.arch == "resnet":
            self.generator = ResNetGenerator(self.z_dim, self.shape, g_width)
            self.discriminator = ResNetDiscriminator(self.shape, d_width, pool="mean")
        else:
            self.generator = DCGANGenerator(self.z_dim, self.shape, g_width)
            self.discriminator = ConvDiscriminator(self.shape, d_width, norm=d_norm)
            init_dcgan_(self)

    def discriminator_losses(self, y: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """Critic terms: ``loss`` = D(x̃) - D(x) + ``gp``; ``wasserstein`` = D(x) - D(x̃) (the
        critic's per-pair estimate of W1); ``gp`` = λ (‖∇_x̂ D(x̂)‖₂ - 1)², all ``[N]``."""
        out = super().discriminator_losses(y, fake)
        eps = torch.rand(y.shape[0], device=y.device)  # ε ~ U[0, 1], one per pair
        gp = gradient_penalty(self.discriminator, interpolate(y, fake, eps), self.gp_weight)
        out["loss"] = out["loss"] + gp
        out["wasserstein"] = out["d_real"] - out["d_fake"]
        out["gp"] = gp.detach()
        return out
