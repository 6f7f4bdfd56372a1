"""StyleGAN2's networks (Karras et al. 2020): mapping network, synthesis network (``skip`` or
``resnet``, Fig. 7) and discriminator (``resnet`` or ``orig``), built from
:mod:`genbench.models.gan.style_layers`.

Resolutions follow :func:`genbench.models.gan.networks.upsampling_plan`: a learned constant at
``(h0, w0)`` (4x4 for 8x8 and 32x32 data, 7x7 for 28x28, 1x1 for 2-D toys, where every 3x3
convolution sees only its centre tap: a style-modulated MLP) and one block per x2 step. Channels
at side length r are ``min(channel_base // r, channel_max)`` (the released code's ``channel_base``
/ ``channel_max``; CIFAR-10: 32768 / 512, 512 channels everywhere).

Differences from the released code: upsampling is bilinear before the 3x3 convolution and
downsampling is 2x2 average pooling after it (instead of their FIR-filtered transposed and strided
convolutions); every modulated layer (convolutions and toRGB) gets its own w (the released code
lets toRGB share the next convolution's); no mixed precision or activation clamping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.models.base import Generator
from genbench.models.gan.networks import upsampling_plan
from genbench.models.gan.style_layers import (
    EqualConv,
    EqualLinear,
    ModulatedConv,
    minibatch_stddev,
)
from genbench.nn import random as rnd

G_ARCHS = ("skip", "resnet")
D_ARCHS = ("resnet", "orig")


def channels_at(side: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at side length ``side``: ``min(channel_base // side, channel_max)``, >= 1."""
    return max(1, min(int(channel_base) // int(side), int(channel_max)))


def resolutions(shape: Sequence[int]) -> list[tuple[int, int]]:
    """``[(h0, w0), (2 h0, 2 w0), ..., (H, W)]``: the sides of the synthesis blocks."""
    h0, w0, n = upsampling_plan(int(shape[1]), int(shape[2]))
    return [(h0 * 2**i, w0 * 2**i) for i in range(n + 1)]


class MappingNetwork(nn.Module):
    """z ``[N, z_dim]`` -> w ``[N, w_dim]``: z / sqrt(mean(z²) + 1e-8), then ``layers`` equalized
    fully connected layers with :func:`~genbench.models.gan.style_layers.lrelu` and learning-rate
    multiplier ``lr_mul`` (0.01 in the paper)."""

    def __init__(self, z_dim: int, w_dim: int, layers: int, lr_mul: float = 0.01) -> None:
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.net = nn.Sequential(
            *[EqualLinear(a, b, lr_mul=lr_mul, act=True) for a, b in zip(dims, dims[1:])]
        )

    def forward(self, z: Tensor) -> Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        return self.net(z)


class StyleGenerator(nn.Module):
    """Mapping + synthesis. ``forward(z)`` ``[N, z_dim]`` -> ``[N, C, H, W]`` (linear output, no
    tanh) with one w for every layer and fresh noise from the global RNG; the model
    (:class:`~genbench.models.gan.stylegan2.StyleGAN2`) drives :meth:`mapping`, :meth:`synthesis`
    and :meth:`draw_noise` itself for style mixing, truncation and seeded sampling.

    Buffers: ``w_avg`` ``[w_dim]``, the tracked average of w used by truncation (updated by the
    model during training).
    """

    def __init__(
        self,
        z_dim: int,
        shape: Sequence[int],
        *,
        w_dim: int,
        map_layers: int,
        channel_base: int,
        channel_max: int,
        arch: str = "skip",
    ) -> None:
        super().__init__()
        if arch not in G_ARCHS:
            raise ValueError(f"model.g_arch must be one of {list(G_ARCHS)}, got {arch!r}")
        self.arch, self.out_channels = arch, int(shape[0])
        self.mapping = MappingNetwork(z_dim, w_dim, map_layers)
        self.register_buffer("w_avg", torch.zeros(w_dim))
        sides = resolutions(shape)
        chans = [channels_at(max(s), channel_base, channel_max) for s in sides]
        self.const = nn.Parameter(torch.randn(chans[0], *sides[0]))
        self.convs = nn.ModuleList()  # per block: [conv0 (up), conv1] or [conv1] at the start
        self.skips = nn.ModuleList()  # resnet: 1x1 shortcut per upsampling block
        self.torgbs = nn.ModuleList()  # skip: one per block; resnet: the last block's
        for i, c in enumerate(chans):
            layers = [ModulatedConv(chans[i - 1], c, w_dim, up=True)] if i else []
            self.convs.append(nn.ModuleList([*layers, ModulatedConv(c, c, w_dim)]))
            if i and arch == "resnet":
                self.skips.append(EqualConv(chans[i - 1], c, 1, bias=False, act=False))
            if arch == "skip" or i == len(chans) - 1:
                self.torgbs.append(
                    ModulatedConv(
                        c, self.out_channels, w_dim, 1, demodulate=False, noise=False, act=False
                    )
                )
        self.noise_sides = [s for i, s in enumerate(sides) for _ in range(2 if i else 1)]
        self.num_ws = len(self.noise_sides) + len(self.torgbs)

    def draw_noise(
        self, n: int, *, generator: Generator = None, device: torch.device | None = None
    ) -> list[Tensor]:
        """One ``[n, 1, h, w]`` N(0, I) noise image per convolution (row i from ``generator[i]``
        when a list is given; the global RNG when ``None``)."""
        device = device if device is not None else self.const.device
        dtype = self.const.dtype  # drawn in float32 (the same numbers in any dtype), then cast
        return [
            rnd.randn((n, 1, h, w), generator=generator, device=device).to(dtype)
            for h, w in self.noise_sides
        ]

    def synthesis(self, ws: Tensor, noise: Sequence[Tensor]) -> Tensor:
        """``ws`` ``[N, num_ws, w_dim]`` (layer order: each block's convolutions then its toRGB)
        and :meth:`draw_noise`'s list -> images ``[N, C, H, W]``."""
        n = ws.shape[0]
        x = self.const.unsqueeze(0).expand(n, -1, -1, -1)
        img: Tensor | None = None
        k, j = 0, 0  # next w index, next noise index
        for i, block in enumerate(self.convs):
            shortcut = x
            for conv in block:
                x = conv(x, ws[:, k], noise[j])
                k, j = k + 1, j + 1
            if i and self.arch == "resnet":
                up = F.interpolate(shortcut, scale_factor=2, mode="bilinear", align_corners=False)
                x = (x + self.skips[i - 1](up)) * math.sqrt(0.5)
            if self.arch == "skip" or i == len(self.convs) - 1:
                rgb = self.torgbs[i if self.arch == "skip" else 0](x, ws[:, k])
                k += 1
                if img is not None:
                    img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
                img = rgb if img is None else img + rgb
        assert img is not None
        return img

    def forward(self, z: Tensor) -> Tensor:
        w = self.mapping(z)  # [N, w_dim]
        ws = w.unsqueeze(1).expand(-1, self.num_ws, -1)
        return self.synthesis(ws, self.draw_noise(z.shape[0], device=z.device))


class StyleDiscriminator(nn.Module):
    """``[N, C, H, W]`` -> ``[N]`` raw logits: fromRGB (1x1) at full resolution, one block per x2
    step (3x3 conv, 3x3 conv with 2x2 average pooling; ``resnet`` adds a 1x1 pooled shortcut and
    scales the sum by sqrt(1/2)), then the epilogue at ``(h0, w0)``: minibatch standard deviation
    (``mbstd_group`` rows, ``mbstd_channels`` statistics), 3x3 conv, fully connected, linear.

    The minibatch standard deviation couples the rows of a group, so D(x)_n depends on the other
    rows of its group (as in the paper)."""

    def __init__(
        self,
        shape: Sequence[int],
        *,
        channel_base: int,
        channel_max: int,
        arch: str = "resnet",
        mbstd_group: int = 4,
        mbstd_channels: int = 1,
    ) -> None:
        super().__init__()
        if arch not in D_ARCHS:
            raise ValueError(f"model.d_arch must be one of {list(D_ARCHS)}, got {arch!r}")
        sides = resolutions(shape)[::-1]  # full resolution first
        chans = [channels_at(max(s), channel_base, channel_max) for s in sides]
        self.arch = arch
        self.mbstd_group, self.mbstd_channels = int(mbstd_group), int(mbstd_channels)
        self.fromrgb = EqualConv(int(shape[0]), chans[0], 1)
        self.blocks = nn.ModuleList()
        self.skips = nn.ModuleList()
        for c, c_next in zip(chans, chans[1:]):
            self.blocks.append(
                nn.Sequential(EqualConv(c, c, 3), EqualConv(c, c_next, 3, down=True))
            )
            if arch == "resnet":
                self.skips.append(EqualConv(c, c_next, 1, bias=False, act=False, down=True))
        c0, (h0, w0) = chans[-1], sides[-1]
        self.conv = EqualConv(c0 + self.mbstd_channels, c0, 3)
        self.fc = EqualLinear(c0 * h0 * w0, c0, act=True)
        self.out = EqualLinear(c0, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fromrgb(x)
        for i, block in enumerate(self.blocks):
            y = block(h)
            h = (y + self.skips[i](h)) * math.sqrt(0.5) if self.arch == "resnet" else y
        h = minibatch_stddev(h, self.mbstd_group, self.mbstd_channels)
        h = self.conv(h).flatten(1)
        return self.out(self.fc(h)).squeeze(1)
