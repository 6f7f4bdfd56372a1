"""DCGAN (Radford et al. 2016): convolutional generator and discriminator, non-saturating loss.

Generator: z ``[N, z_dim]`` -> linear projection to ``[N, c0, h0, w0]`` -> batch norm, ReLU ->
``n`` transposed convolutions (4x4, stride 2) that double the resolution and halve the channels,
each followed by batch norm and ReLU -> a 3x3 convolution to C channels and tanh. The start size
``(h0, w0)`` and ``n`` adapt to the data (:func:`~genbench.models.gan.base.upsampling_plan`:
4x4 then one upsampling for 8x8 digits, 7x7 and two for 28x28, 4x4 and three for 32x32).

Discriminator: a 3x3 convolution at full resolution (no batch norm on the input layer), then ``n``
strided 4x4 convolutions that halve the resolution and double the channels, each with batch norm
and LeakyReLU(0.2), then a linear layer to one logit. The same stack without batch norm is the
WGAN-GP critic; with extra 3x3 layers and LeakyReLU(0.1) it is SNGAN's "standard CNN".

For 2-D toys (H = W = 1) ``arch: auto`` picks small MLPs instead (no batch norm).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from torch import Tensor, nn

from genbench.models.gan.base import (
    GAN,
    MLPDiscriminator,
    MLPGenerator,
    resolve_arch,
    upsampling_plan,
)

Norm = Literal["batch", "layer", "none"]


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
    """

    def __init__(self, z_dim: int, shape: Sequence[int], width: int) -> None:
        super().__init__()
        c_out, h, w = shape
        h0, w0, n = upsampling_plan(h, w)
        c = width * 2**n
        layers: list[nn.Module] = [nn.Linear(z_dim, c * h0 * w0, bias=False),
                                   nn.Unflatten(1, (c, h0, w0)), nn.BatchNorm2d(c), nn.ReLU()]
        for _ in range(n):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c // 2), nn.ReLU()]
            c //= 2
        layers += [nn.Conv2d(c, c_out, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class ConvDiscriminator(nn.Module):
    """``[N, C, H, W]`` -> ``[N]`` raw outputs; mirrors :class:`DCGANGenerator`.

    Args:
        shape: input ``(C, H, W)``.
        width: channels of the first layer; doubled at every downsampling.
        norm: ``batch`` (DCGAN), ``layer`` or ``none`` (WGAN-GP critic, SNGAN).
        slope: LeakyReLU negative slope (0.2 DCGAN, 0.1 SNGAN).
        deep: add a 3x3 convolution after every downsampling (SNGAN's standard CNN).
    """

    def __init__(self, shape: Sequence[int], width: int, norm: Norm = "batch",
                 slope: float = 0.2, deep: bool = False) -> None:
        super().__init__()
        c_in, h, w = shape
        h0, w0, n = upsampling_plan(h, w)
        c = width
        layers: list[nn.Module] = [nn.Conv2d(c_in, c, 3, padding=1), nn.LeakyReLU(slope)]
        for _ in range(n):
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), _norm(norm, 2 * c),
                       nn.LeakyReLU(slope)]
            c *= 2
            if deep:
                layers += [nn.Conv2d(c, c, 3, padding=1), _norm(norm, c), nn.LeakyReLU(slope)]
        layers += [nn.Flatten(), nn.Linear(c * h0 * w0, 1), nn.Flatten(0)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class DCGAN(GAN):
    """Radford et al. 2016 with the non-saturating loss of Goodfellow et al. 2014.

    Args:
        shape, levels: data shape ``(C, H, W)`` and number of levels K.
        arch: ``auto`` (conv for images >= 4x4, MLP for 2-D toys), ``conv`` or ``mlp``; the conv
            nets get the paper's N(0, 0.02) initialization, the MLPs PyTorch's default.
        z_dim: latent size (100 in the paper).
        g_width, d_width: channel widths of the conv stacks (see the classes above).
        hidden, depth: MLP width and number of hidden layers (``arch: mlp``).
        d_steps: discriminator steps per generator step (1 in the paper).
        d_optimizer, g_optimizer: per-phase optimizer overrides (paper: Adam lr 2e-4, β1 0.5).
    """

    loss = "nonsaturating"

    def __init__(self, shape: Sequence[int], levels: int, *, arch: str = "auto", z_dim: int = 64,
                 g_width: int = 32, d_width: int = 16, hidden: int = 128, depth: int = 3,
                 d_steps: int = 1, d_optimizer: Mapping[str, Any] | None = None,
                 g_optimizer: Mapping[str, Any] | None = None) -> None:
        super().__init__(shape, levels, z_dim=z_dim, d_steps=d_steps, d_optimizer=d_optimizer,
                         g_optimizer=g_optimizer)
        self.arch = resolve_arch(arch, self.shape, ("conv", "mlp"))
        if self.arch == "mlp":
            self.generator = MLPGenerator(self.z_dim, self.shape, hidden, depth)
            self.discriminator = MLPDiscriminator(self.shape, hidden, depth)
        else:
            self.generator = DCGANGenerator(self.z_dim, self.shape, g_width)
            self.discriminator = ConvDiscriminator(self.shape, d_width, norm="batch")
            init_dcgan_(self)


def init_dcgan_(module: nn.Module) -> None:
    """Radford et al.'s initialization: conv/linear weights ~ N(0, 0.02), batch-norm scale
    ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
