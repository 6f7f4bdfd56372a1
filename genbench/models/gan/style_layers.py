"""StyleGAN2's layers (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN"): equalized learning rate, the modulated/demodulated convolution, per-layer noise and the
minibatch standard deviation layer. The networks built from them are
:mod:`genbench.models.gan.style_networks`.

Equalized learning rate (Karras et al. 2018, sec. 4.1): a weight is stored as ``w / c`` with
``c = lr_mul / sqrt(fan_in)`` and drawn N(0, 1 / lr_mul²), so every layer starts with unit-gain
outputs and Adam's per-parameter step moves all layers alike; ``lr_mul`` (0.01 in the mapping
network) slows a layer down by that factor. Activations are LeakyReLU(0.2) times sqrt(2), which
keeps the second moment of unit-variance inputs at about 1.

Modulated convolution (StyleGAN2, sec. 2.2, eq. 1 and 3), per sample n, input channel i, output
channel j, kernel tap k, with style s ``[N, c_in]`` from an affine map of w:

    w'_{n,j,i,k} = s_{n,i} w_{j,i,k}
    w''_{n,j,i,k} = w'_{n,j,i,k} / sqrt(Σ_{i,k} w'_{n,j,i,k}² + ε)     (demodulation)

applied either as one grouped convolution over the per-sample kernels (groups = N) or, equivalently
and by default, as the shared convolution of the style-scaled input followed by the per-output
scale 1 / sqrt(Σ w'² + ε) (:func:`modulated_conv2d`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: gain after LeakyReLU(0.2) (StyleGAN's ``def_gain`` for lrelu)
LRELU_GAIN = math.sqrt(2.0)
#: ε of demodulation (StyleGAN2, eq. 3)
DEMOD_EPS = 1e-8


def lrelu(x: Tensor) -> Tensor:
    """LeakyReLU(0.2) scaled by sqrt(2), elementwise: ``[N, ...]`` (e.g. ``[N, C, H, W]``) -> the
    same shape."""
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


class EqualLinear(nn.Module):
    """``[N, c_in]`` -> ``[N, c_out]`` with equalized learning rate (see the module docstring).

    Args:
        c_in, c_out: features.
        lr_mul: learning-rate multiplier of weight and bias (0.01 in the mapping network).
        bias_init: initial bias (1 for the style affines, so styles start near 1).
        act: apply :func:`lrelu` after the bias.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        *,
        lr_mul: float = 1.0,
        bias_init: float = 0.0,
        act: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((c_out,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(c_in)
        self.lr_mul, self.act = float(lr_mul), bool(act)

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return lrelu(y) if self.act else y


class EqualConv(nn.Module):
    """``[N, c_in, H, W]`` -> ``[N, c_out, H, W]`` (same padding), equalized learning rate, optional
    bias and :func:`lrelu`; ``down`` halves H and W by 2x2 average pooling after the convolution."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        *,
        bias: bool = True,
        act: bool = True,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(c_in * kernel * kernel)
        self.act, self.down = bool(act), bool(down)

    def forward(self, x: Tensor) -> Tensor:
        k = self.weight.shape[-1]
        y = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=k // 2)
        if self.down:
            y = F.avg_pool2d(y, 2)
        return lrelu(y) if self.act else y


def modulate(weight: Tensor, styles: Tensor, demodulate: bool, eps: float = DEMOD_EPS) -> Tensor:
    """Per-sample kernels ``[N, c_out, c_in, k, k]``: w' = s w, then (``demodulate``) w'' = w' /
    sqrt(Σ_{i,k} w'² + ε) over each output channel's input channels and taps.

    Args:
        weight: ``[c_out, c_in, k, k]`` shared kernel (already scaled by its equalized-lr gain).
        styles: ``[N, c_in]`` per-sample scales s.
    """
    w = weight.unsqueeze(0) * styles[:, None, :, None, None]  # w' [N, c_out, c_in, k, k]
    if demodulate:
        w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4), keepdim=True) + eps)
    return w


def modulated_conv2d(
    x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True, *, fused: bool = False
) -> Tensor:
    """``[N, c_in, H, W]`` -> ``[N, c_out, H, W]``: sample n convolved (same padding) with its own
    kernel :func:`modulate` (``weight`` ``[c_out, c_in, k, k]``, ``styles`` ``[N, c_in]``).

    ``fused``: as one grouped convolution with N groups over the per-sample kernels. Otherwise
    (the default, the released code's training path) with the shared kernel on scaled inputs:
    y_{n,j} = d_{n,j} Σ_{i,k} w_{j,i,k} (s_{n,i} x_{n,i}) with d_{n,j} = 1 / sqrt(Σ_{i,k} (s_{n,i}
    w_{j,i,k})² + ε) (1 without demodulation), the same numbers as the fused form; it is an
    ordinary batched convolution, which CPUs run faster and torch's FLOP counter counts right
    (it takes a grouped convolution's weight gradient for N times its cost).
    """
    n, c_in, h, w = x.shape
    k = weight.shape[-1]
    if not fused:
        y = F.conv2d(x * styles[:, :, None, None], weight, padding=k // 2)
        if demodulate:
            w2 = weight.square().sum(dim=(2, 3))  # Σ_k w²_{j,i,k}: [c_out, c_in]
            y = y * torch.rsqrt(styles.square() @ w2.T + DEMOD_EPS)[:, :, None, None]
        return y
    kernels = modulate(weight, styles, demodulate)  # [N, c_out, c_in, k, k]
    c_out = kernels.shape[1]
    y = F.conv2d(
        x.reshape(1, n * c_in, h, w),
        kernels.reshape(n * c_out, c_in, k, k),
        padding=k // 2,
        groups=n,
    )
    return y.reshape(n, c_out, h, w)


class ModulatedConv(nn.Module):
    """One synthesis layer: ``x`` ``[N, c_in, H, W]`` and ``w`` ``[N, w_dim]`` -> ``[N, c_out, H',
    W']`` (H' = 2H with ``up``, by bilinear upsampling before the convolution).

    ``s = affine(w)`` (bias 1), modulated convolution (demodulated unless ``demodulate`` is off, as
    in toRGB), then (``noise``) ``+ strength * noise`` with one learned strength per layer (zero at
    start) and one noise image ``[N, 1, H', W']`` per sample, then bias and :func:`lrelu`
    (``act``)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        w_dim: int,
        kernel: int = 3,
        *,
        up: bool = False,
        demodulate: bool = True,
        noise: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.noise_strength = nn.Parameter(torch.zeros(())) if noise else None
        self.weight_gain = 1.0 / math.sqrt(c_in * kernel * kernel)
        self.up, self.demodulate, self.act = bool(up), bool(demodulate), bool(act)

    @property
    def has_noise(self) -> bool:
        """Whether the layer takes a noise image."""
        return self.noise_strength is not None

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None = None) -> Tensor:
        """``noise`` ``[N, 1, H', W']`` (required when the layer has noise)."""
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        y = modulated_conv2d(x, self.weight * self.weight_gain, self.affine(w), self.demodulate)
        if self.noise_strength is not None:
            if noise is None:
                raise ValueError("this synthesis layer needs a noise image [N, 1, H, W]")
            y = y + self.noise_strength * noise
        y = y + self.bias[None, :, None, None]
        return lrelu(y) if self.act else y


def minibatch_stddev(x: Tensor, group_size: int, channels: int = 1) -> Tensor:
    """Append the minibatch standard deviation (Karras et al. 2018, sec. 3; StyleGAN2's form).

    ``x`` ``[N, C, H, W]`` -> ``[N, C + channels, H, W]``: rows are split into groups of
    ``G = min(group_size, N)`` consecutive-by-stride rows (row n belongs to group ``n % (N / G)``)
    and the C channels into ``channels`` slices; for each group and slice the statistic is the
    mean over (C / channels, H, W) of sqrt(Var_group + 1e-8), with the biased variance over the G
    rows. It is broadcast over H, W and appended to every row of the group. When G does not
    divide N the largest divisor of N below it is used (G = 1 gives sqrt(1e-8) everywhere).
    """
    n, c, h, w = x.shape
    g = min(int(group_size), n)
    while n % g:
        g -= 1
    f = int(channels)
    y = x.reshape(g, n // g, f, c // f, h, w)  # [G, M, F, c, H, W]
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [M, F, c, H, W]
    y = y.mean(dim=(2, 3, 4))  # [M, F]
    y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
    return torch.cat([x, y], dim=1)
