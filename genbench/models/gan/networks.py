"""The GAN family's networks and the one switch that picks a generator/discriminator pair.

``arch`` (every GAN's yaml) names the pair; :func:`build_networks` builds it:

- ``mlp``: :class:`MLPGenerator` / :class:`MLPDiscriminator`, for 2-D toys (``arch: auto`` picks it
  when H or W is under 4).
- ``conv``: :class:`DCGANGenerator` (Radford et al. 2016: a linear projection to ``[N, c0, h0,
  w0]``, batch norm and ReLU, then transposed convolutions (4x4, stride 2) that double the
  resolution and halve the channels, each with batch norm and ReLU, then a 3x3 convolution to C
  channels and tanh) and :class:`ConvDiscriminator` (a 3x3 convolution at full resolution, then
  strided 4x4 convolutions that halve the resolution and double the channels, then a linear
  layer). The discriminator's options give DCGAN's (batch norm, LeakyReLU(0.2)), the WGAN-GP
  critic (no or layer norm) and SNGAN's "standard CNN" (extra 3x3 layers, LeakyReLU(0.1)).
- ``resnet``: :class:`ResNetGenerator` / :class:`ResNetDiscriminator`, the ResNet of Gulrajani
  et al. 2017 (App. F), reused by SNGAN (Miyato et al. 2018, App. B): up-blocks per x2
  upsampling, and an "optimized" first critic block, down-blocks until the resolution is divided
  by 4 at most, two more blocks, ReLU, global pooling, linear (for CIFAR-10 the papers'
  32 -> 16 -> 8 -> 8 -> 8).

With ``num_classes`` > 0 every generator takes labels, ``G(z, y)``, and the discriminator is
wrapped for D(x, y) (projection or auxiliary classifier; see
:mod:`genbench.models.gan.conditional`). The discriminators expose ``features(x)`` (φ,
``[N, feature_dim]``) and ``head`` (ψ) for it.

Start sizes and the number of x2 steps adapt to the data (:func:`upsampling_plan`: 4x4 then one
upsampling for 8x8 digits, 7x7 and two for 28x28, 4x4 and three for 32x32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genbench.models.gan.conditional import (
    ConditionalDiscriminator,
    batch_norm,
    class_embedding_,
    run_conditioned,
)

Norm = Literal["batch", "layer", "none"]


def upsampling_plan(h: int, w: int, min_size: int = 4) -> tuple[int, int, int]:
    """Start resolution ``(h0, w0)`` and number of x2 upsamplings ``n`` with ``h = h0 * 2**n``.

    Halves both sides while they are even and larger than ``min_size``: 8 -> (4, 4, 1),
    28 -> (7, 7, 2), 32 -> (4, 4, 3). Discriminators mirror the plan with stride-2 downsampling.
    """
    n = 0
    while h % 2 == 0 and w % 2 == 0 and min(h, w) > min_size:
        h, w, n = h // 2, w // 2, n + 1
    return h, w, n


def resolve_arch(arch: str, shape: Sequence[int], choices: Sequence[str]) -> str:
    """``auto`` -> ``conv`` for images of at least 4x4, else ``mlp``; validates ``arch``."""
    if arch not in ("auto", *choices):
        raise ValueError(f"arch must be one of {['auto', *choices]}, got {arch!r}")
    if arch == "auto":
        return "conv" if min(shape[1], shape[2]) >= 4 else "mlp"
    return arch


def build_networks(
    arch: str,
    shape: Sequence[int],
    z_dim: int,
    *,
    g_width: int,
    d_width: int,
    hidden: int,
    depth: int,
    conv: Mapping[str, Any] | None = None,
    conv_init: bool = False,
    resnet_pool: str | None = None,
    num_classes: int = 0,
    cond_d: str = "projection",
) -> tuple[str, nn.Module, nn.Module]:
    """``(arch, generator, discriminator)`` for ``arch`` (``auto`` resolved, see
    :func:`resolve_arch`): a generator ``[N, z_dim]`` -> ``[N, C, H, W]`` and a discriminator
    ``[N, C, H, W]`` -> ``[N]``.

    Args:
        arch: ``auto``, ``conv``, ``mlp``, or ``resnet`` when ``resnet_pool`` is given.
        shape: data ``(C, H, W)``.
        z_dim: latent size.
        g_width, d_width: channel widths (conv: at full resolution, doubled per x2; resnet:
            throughout).
        hidden, depth: MLP width and number of hidden layers.
        conv: keyword arguments of :class:`ConvDiscriminator` (``norm``, ``slope``, ``deep``).
        conv_init: give the conv pair Radford et al.'s N(0, 0.02) initialization
            (:func:`init_dcgan_`).
        resnet_pool: ``mean`` or ``sum`` pooling of :class:`ResNetDiscriminator`; ``None``
            leaves ``resnet`` out of the choices.
        num_classes: 0 (unconditional), or C: class-conditional generator G(z, y) and a
            :class:`~genbench.models.gan.conditional.ConditionalDiscriminator` D(x, y) around
            the unconditional discriminator (:mod:`genbench.models.gan.conditional`).
        cond_d: the conditional discriminator's head, ``projection`` or ``ac``.

    The generator is built before the discriminator (then initialized in that order), so
    parameters are drawn from the global RNG in one fixed order.
    """
    choices = ("conv", "resnet", "mlp") if resnet_pool is not None else ("conv", "mlp")
    arch = resolve_arch(arch, shape, choices)
    generator: nn.Module
    discriminator: nn.Module
    if arch == "mlp":
        generator = MLPGenerator(z_dim, shape, hidden, depth, num_classes)
        discriminator = MLPDiscriminator(shape, hidden, depth)
    elif arch == "resnet":
        generator = ResNetGenerator(z_dim, shape, g_width, num_classes)
        discriminator = ResNetDiscriminator(shape, d_width, pool=str(resnet_pool))
    else:
        generator = DCGANGenerator(z_dim, shape, g_width, num_classes)
        discriminator = ConvDiscriminator(shape, d_width, **dict(conv or {}))
        if conv_init:
            init_dcgan_(generator)
            init_dcgan_(discriminator)
    if num_classes:
        discriminator = ConditionalDiscriminator(discriminator, num_classes, cond_d)
    return arch, generator, discriminator


# -- 2-D toys ------------------------------------------------------------------------------------
class MLPGenerator(nn.Module):
    """``[N, z_dim]`` -> ``[N, C, H, W]``: ``depth`` ReLU layers of ``hidden`` units and a linear
    output (used for 2-D toys, where H = W = 1). With ``num_classes`` C > 0 a class embedding
    ``[C, hidden]`` (zero at the start) is added to the first layer's pre-activation.

    The output is not squashed by tanh: toy mixtures lie well inside ``[-1, 1]``, and a tanh
    output saturates when an early critic pushes samples outwards, which stalls WGAN-GP there.
    :meth:`~genbench.models.gan.base.GAN.to_levels` clamps to the grid.
    """

    def __init__(
        self, z_dim: int, shape: Sequence[int], hidden: int, depth: int, num_classes: int = 0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = z_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers += [nn.Linear(width, int(torch.tensor(shape).prod())), nn.Unflatten(1, tuple(shape))]
        self.net = nn.Sequential(*layers)
        if num_classes:  # E[y] added to the first pre-activation, [C, out features of net[0]]
            self.embed = class_embedding_(nn.Embedding(num_classes, layers[0].out_features))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if not hasattr(self, "embed"):
            return self.net(z)
        if y is None:
            raise ValueError("this conditional generator needs labels y")
        return self.net[1:](self.net[0](z) + self.embed(y))  # W z + b + E[y], then the rest


class MLPDiscriminator(nn.Module):
    """``[N, C, H, W]`` -> ``[N]``: ``depth`` LeakyReLU(0.2) layers of ``hidden`` units and a linear
    output (no normalization, so rows never interact)."""

    def __init__(self, shape: Sequence[int], hidden: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(torch.tensor(shape).prod())
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        layers += [nn.Linear(width, 1), nn.Flatten(0)]
        self.net = nn.Sequential(*layers)
        self.feature_dim = width

    @property
    def head(self) -> nn.Linear:
        """ψ: the output layer, features ``[N, feature_dim]`` -> ``[N, 1]``."""
        return self.net[-2]

    def features(self, x: Tensor) -> Tensor:
        """φ(x) ``[N, feature_dim]``: the last hidden layer's activations."""
        return self.net[:-2](x)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# -- convolutional (DCGAN) -----------------------------------------------------------------------
def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # layer norm over (C, H, W) per example: rows stay independent
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'layer' or 'none', got {kind!r}")


class DCGANGenerator(nn.Module):
    """``[N, z_dim]`` -> ``[N, C, H, W]`` in ``[-1, 1]`` (see the module docstring).

    Args:
        z_dim: latent size.
        shape: output ``(C, H, W)``.
        width: channels at the output resolution; the start has ``width * 2**n``.
        num_classes: > 0: conditional batch norm in place of every batch norm, and
            ``forward(z, y)`` takes labels ``y`` ``[N]``.
    """

    def __init__(self, z_dim: int, shape: Sequence[int], width: int, num_classes: int = 0) -> None:
        super().__init__()
        c_out, h, w = shape
        h0, w0, n = upsampling_plan(h, w)
        c = width * 2**n
        layers: list[nn.Module] = [
            nn.Linear(z_dim, c * h0 * w0, bias=False),
            nn.Unflatten(1, (c, h0, w0)),
            batch_norm(c, num_classes),
            nn.ReLU(),
        ]
        for _ in range(n):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False),
                batch_norm(c // 2, num_classes),
                nn.ReLU(),
            ]
            c //= 2
        layers += [nn.Conv2d(c, c_out, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return run_conditioned(self.net, z, y)


class ConvDiscriminator(nn.Module):
    """``[N, C, H, W]`` -> ``[N]`` raw outputs; mirrors :class:`DCGANGenerator`.

    Args:
        shape: input ``(C, H, W)``.
        width: channels of the first layer; doubled at every downsampling.
        norm: ``batch`` (DCGAN), ``layer`` or ``none`` (WGAN-GP critic, SNGAN).
        slope: LeakyReLU negative slope (0.2 DCGAN, 0.1 SNGAN).
        deep: add a 3x3 convolution after every downsampling (SNGAN's standard CNN).
    """

    def __init__(
        self,
        shape: Sequence[int],
        width: int,
        norm: Norm = "batch",
        slope: float = 0.2,
        deep: bool = False,
    ) -> None:
        super().__init__()
        c_in, h, w = shape
        h0, w0, n = upsampling_plan(h, w)
        c = width
        layers: list[nn.Module] = [nn.Conv2d(c_in, c, 3, padding=1), nn.LeakyReLU(slope)]
        for _ in range(n):
            layers += [
                nn.Conv2d(c, 2 * c, 4, stride=2, padding=1),
                _norm(norm, 2 * c),
                nn.LeakyReLU(slope),
            ]
            c *= 2
            if deep:
                layers += [nn.Conv2d(c, c, 3, padding=1), _norm(norm, c), nn.LeakyReLU(slope)]
        layers += [nn.Flatten(), nn.Linear(c * h0 * w0, 1), nn.Flatten(0)]
        self.net = nn.Sequential(*layers)
        self.feature_dim = c * h0 * w0

    @property
    def head(self) -> nn.Linear:
        """ψ: the output layer, features ``[N, feature_dim]`` -> ``[N, 1]``."""
        return self.net[-2]

    def features(self, x: Tensor) -> Tensor:
        """φ(x) ``[N, feature_dim]``: the last feature map, flattened."""
        return self.net[:-2](x)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def init_dcgan_(module: nn.Module) -> None:
    """Radford et al.'s initialization: conv/linear weights ~ N(0, 0.02), batch-norm scale
    ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:  # conditional BN keeps its 1 / 0
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# -- ResNet (WGAN-GP, SNGAN) ---------------------------------------------------------------------
class UpBlock(nn.Module):
    """Generator residual block ``[N, c_in, h, w]`` -> ``[N, c_out, 2h, 2w]``:
    BN, ReLU, nearest x2, conv3x3, BN, ReLU, conv3x3; shortcut nearest x2 and conv1x1.
    With ``num_classes`` > 0 both BNs are conditional and ``forward`` takes labels ``y``."""

    takes_labels = True  # run_conditioned hands y on (None for an unconditional block)

    def __init__(self, c_in: int, c_out: int, num_classes: int = 0) -> None:
        super().__init__()
        self.main = nn.Sequential(
            batch_norm(c_in, num_classes),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            batch_norm(c_out, num_classes),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 1))

    def forward(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        return run_conditioned(self.main, h, y) + self.skip(h)


class DownBlock(nn.Module):
    """Critic residual block: [ReLU], conv3x3, ReLU, conv3x3, [avg-pool x2]; the shortcut is a
    conv1x1 (and pooling) when the shape changes. ``first`` is the "optimized" input block (no
    leading ReLU, pooling before the shortcut conv)."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool = False) -> None:
        super().__init__()
        pool: list[nn.Module] = [nn.AvgPool2d(2)] if down else []
        act: list[nn.Module] = [] if first else [nn.ReLU()]
        self.main = nn.Sequential(
            *act,
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            *pool,
        )
        if first:
            self.skip: nn.Module = nn.Sequential(*pool, nn.Conv2d(c_in, c_out, 1))
        elif down or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1), *pool)
        else:
            self.skip = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x) + self.skip(x)


class ResNetGenerator(nn.Module):
    """``[N, z_dim]`` -> ``[N, C, H, W]`` in ``[-1, 1]`` with ``width`` channels throughout;
    every batch norm is conditional when ``num_classes`` > 0 (``forward(z, y)``)."""

    def __init__(self, z_dim: int, shape: Sequence[int], width: int, num_classes: int = 0) -> None:
        super().__init__()
        c_out, h, w = shape
        h0, w0, n = upsampling_plan(h, w)
        self.net = nn.Sequential(
            nn.Linear(z_dim, width * h0 * w0),
            nn.Unflatten(1, (width, h0, w0)),
            *[UpBlock(width, width, num_classes) for _ in range(n)],
            batch_norm(width, num_classes),
            nn.ReLU(),
            nn.Conv2d(width, c_out, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return run_conditioned(self.net, z, y)


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
        self.feature_dim = width

    @property
    def head(self) -> nn.Linear:
        """ψ: the output layer, pooled features ``[N, width]`` -> ``[N, 1]``."""
        return self.linear

    def features(self, x: Tensor) -> Tensor:
        """φ(x) ``[N, width]``: the last blocks' activations, pooled over space."""
        h = self.blocks(x)
        return h.sum((2, 3)) if self.pool == "sum" else h.mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x)).squeeze(1)
