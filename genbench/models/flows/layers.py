"""Invertible layers shared by the flow models (RealNVP, Glow), and the dequantization helpers.

Every layer maps ``h -> (h', log|det dh'/dh|)`` in ``forward`` and ``h' -> h`` in ``inverse``.
Tensors are ``[N, C, H, W]`` floats; log-determinants are ``[N]`` tensors in nats, summed over all
dimensions of one example.

- :class:`LogitTransform` / :class:`Center`: pre-transforms of dequantized data ``y`` in ``[0, 1)``.
- :class:`Squeeze`: space-to-depth, ``[C, H, W] -> [4C, H/2, W/2]`` (Dinh et al. 2017, sec. 3.6).
- :class:`ActNorm`: per-channel affine with data-dependent init (Kingma & Dhariwal 2018, sec. 3.1).
- :class:`InvConv1x1`: invertible 1x1 convolution, LU-decomposed (Kingma & Dhariwal 2018, sec. 3.2).
- :class:`AffineCoupling`: affine coupling with a checkerboard or channel mask (Dinh et al. 2017,
  sec. 3.3-3.4); its conditioner is :class:`CouplingNet`.
- :class:`SplitPrior`: Gaussian prior of factored-out dimensions, standard or learned (Glow).
- :func:`dequantize` / :func:`quantize`: integer levels ``x`` <-> continuous ``y = (x + u) / K``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.nn.random import Generator, rand

_LOG_2PI = math.log(2 * math.pi)


def dequantize(
    x: Tensor, levels: int, *, generator: Generator = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Uniform dequantization ``y = (x + u) / K`` with ``u ~ U[0, 1)^D``.

    Args:
        x: ``[N, C, H, W]`` integer levels in ``[0, K)``.
        levels: K.
        generator: RNG for ``u`` (see :mod:`genbench.nn.random`; ``None`` = global RNG).

    Returns:
        ``[N, C, H, W]`` float ``y`` in ``[0, 1)``.
    """
    u = rand(x.shape, generator=generator, device=x.device, dtype=dtype)
    return (x.to(dtype) + u) / levels


def quantize(y: Tensor, levels: int) -> Tensor:
    """Levels of continuous ``y``: ``floor(y K)`` clamped to ``[0, K - 1]``, int64 (NaN -> K/2)."""
    y = torch.nan_to_num(y, nan=0.5)
    return torch.floor(y * levels).clamp(0, levels - 1).long()


def gaussian_log_prob(eps: Tensor) -> Tensor:
    """``[N]`` log N(eps; 0, I) in nats, summed over all dims but the first."""
    return (-0.5 * (eps**2 + _LOG_2PI)).flatten(1).sum(1)


class LogitTransform(nn.Module):
    """``h = logit(p)`` with ``p = alpha + (1 - 2 alpha) y`` (Dinh et al. 2017, sec. 4.1).

    ``alpha = 0`` (the default) is a bijection of the data cube: ``(0, 1)^D -> R^D``, inverse
    ``y = sigmoid(h)``, so every latent decodes inside the cube and the density integrates to 1
    over it; samples and the scored density are one distribution. To keep ``h`` finite when float
    rounding puts a dequantized ``y`` on the cube's faces, ``y`` is clamped to ``[e, 1 - e]``
    (``e`` = the dtype's machine epsilon: a set of probability ``2 e K`` per sub-pixel).

    ``alpha > 0`` (the paper's 0.05) keeps ``p`` off 0 and 1, but then ``h`` in ``R`` decodes to
    ``y`` in ``(-alpha, 1 - alpha) / (1 - 2 alpha)``, wider than the cube: the density puts mass
    outside ``[0, 1)^D`` (lost by the discrete model, whose NLL stays an upper bound) and samples
    that land there are clamped to the edge levels, so they do not follow the scored density.

    log-det per dim: ``log(1 - 2 alpha) - log p - log(1 - p)``. ``forward``: ``y`` ``[N, C, H, W]``
    in ``[0, 1)`` -> ``(h [N, C, H, W], log-det [N] nats)``; ``inverse``: ``h`` -> ``y``;
    :meth:`levels`: ``h`` -> the levels of ``y``.
    """

    def __init__(self, alpha: float = 0.0) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.alpha == 0:
            e = torch.finfo(y.dtype).eps
            p = y.clamp(e, 1 - e)
        else:
            p = self.alpha + (1 - 2 * self.alpha) * y
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        logdet = (math.log(1 - 2 * self.alpha) - log_p - log_1mp).flatten(1).sum(1)
        return log_p - log_1mp, logdet

    def inverse(self, h: Tensor) -> Tensor:
        return (torch.sigmoid(h) - self.alpha) / (1 - 2 * self.alpha)

    def levels(self, h: Tensor, levels: int) -> Tensor:
        """``[N, C, H, W]`` int64 levels ``floor(K inverse(h))`` of ``h`` ``[N, C, H, W]``. With
        ``alpha = 0``, counted in logit space (``h >= logit(k / K)`` for ``k = 1..K-1``): always
        in ``[0, K)`` with no clamping, even where ``sigmoid(h)`` rounds to 1. With
        ``alpha > 0``, :func:`quantize` of ``inverse(h)`` (clamped to the edge levels)."""
        if self.alpha > 0:
            return quantize(self.inverse(h), levels)
        k = torch.arange(1, levels, dtype=torch.float64)
        edges = (torch.log(k) - torch.log(levels - k)).to(h.device, h.dtype)  # logit(k / K)
        return torch.bucketize(h, edges, right=True)


class Center(nn.Module):
    """``h = y - 1/2`` (Glow's pre-transform): ``forward`` maps ``y`` ``[N, C, H, W]`` in ``[0, 1)``
    to ``(h [N, C, H, W], log-det [N] = 0)``; ``inverse`` maps ``h`` back to ``y``; :meth:`levels`
    quantizes ``inverse(h)``. The density lives on ``R^D``: mass outside the cube is lost by the
    discrete model and samples there are clamped to the edge levels (as in the paper)."""

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y - 0.5, y.new_zeros(y.shape[0])

    def inverse(self, h: Tensor) -> Tensor:
        return h + 0.5

    def levels(self, h: Tensor, levels: int) -> Tensor:
        """``[N, C, H, W]`` int64: :func:`quantize` of ``inverse(h)``."""
        return quantize(self.inverse(h), levels)


class Squeeze(nn.Module):
    """Space-to-depth: ``[N, C, H, W] -> [N, 4C, H/2, W/2]``; channel ``4c + 2 dy + dx`` holds the
    sub-pixel ``(dy, dx)`` of input channel ``c``. A permutation: log-det 0."""

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        n, c, height, width = h.shape
        if height % 2 or width % 2:
            raise ValueError(f"squeeze needs even height and width, got {height}x{width}")
        h = h.reshape(n, c, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return h.reshape(n, 4 * c, height // 2, width // 2), h.new_zeros(n)

    def inverse(self, h: Tensor) -> Tensor:
        n, c4, height, width = h.shape
        h = h.reshape(n, c4 // 4, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
        return h.reshape(n, c4 // 4, 2 * height, 2 * width)


class ActNorm(nn.Module):
    """``h' = (h + b) * exp(log_s)`` per channel; log-det ``H W sum(log_s)``. ``forward``: ``h``
    ``[N, C, H, W]`` -> ``(h' [N, C, H, W], log-det [N] nats)``; ``inverse``: ``h'`` -> ``h``.

    On the first forward pass in training mode, ``b`` and ``log_s`` are set so that this batch comes
    out with zero mean and unit variance per channel. The ``initialized`` buffer (float 0/1, so it
    survives averaging and copying) records that: a reloaded or copied model never re-initializes.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))  # b
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))  # log_s
        self.register_buffer("initialized", torch.zeros(()))
        self._init_checked = False  # host copy of `initialized`: no device sync per step

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self._init_checked = False

    @torch.no_grad()
    def initialize(self, h: Tensor) -> None:
        """Data-dependent init from ``h`` ``[N, C, H, W]``: per-channel mean 0, std 1."""
        per_channel = h.transpose(0, 1).flatten(1)  # [C, N*H*W]
        self.bias.copy_(-per_channel.mean(1).view_as(self.bias))
        if per_channel.shape[1] > 1:
            std = per_channel.std(1, unbiased=False).clamp_min(1e-6)
            self.log_scale.copy_(-torch.log(std).view_as(self.log_scale))
        self.initialized.fill_(1.0)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self._init_checked:
            if not bool(self.initialized):
                self.initialize(h)
            self._init_checked = True
        logdet = h.shape[2] * h.shape[3] * self.log_scale.sum()
        return (h + self.bias) * torch.exp(self.log_scale), logdet.expand(h.shape[0])

    def inverse(self, h: Tensor) -> Tensor:
        return h * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """``h' = W h`` at every pixel, ``W = P L (U + diag(sign_s * exp(log_s)))``; log-det
    ``H W sum(log_s)``. ``P`` (permutation) and ``sign_s`` are fixed; ``W`` starts as a random
    rotation drawn from the global RNG. ``forward``: ``h`` ``[N, C, H, W]`` -> ``(h' [N, C, H, W],
    log-det [N] nats)``; ``inverse``: ``h'`` -> ``h``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        w0 = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, lower, upper = torch.linalg.lu(w0)
        s = upper.diagonal()
        self.register_buffer("perm", p)  # P
        self.register_buffer("sign_s", s.sign())
        self.register_buffer(
            "lower_mask", torch.tril(torch.ones(channels, channels), -1), persistent=False
        )
        self.register_buffer("eye", torch.eye(channels), persistent=False)
        self.lower = nn.Parameter(lower)  # L (strictly lower part used; unit diagonal)
        self.upper = nn.Parameter(torch.triu(upper, 1))  # U (strictly upper part used)
        self.log_s = nn.Parameter(s.abs().log())

    def weight(self) -> Tensor:
        """``W`` ``[C, C]``."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weight()
        logdet = h.shape[2] * h.shape[3] * self.log_s.sum()
        return F.conv2d(h, w[:, :, None, None]), logdet.expand(h.shape[0])

    def inverse(self, h: Tensor) -> Tensor:
        w_inv = torch.linalg.inv(self.weight())
        return F.conv2d(h, w_inv[:, :, None, None])


def _zero_conv(c_in: int, c_out: int, kernel: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class CouplingNet(nn.Module):
    """Conditioner of a coupling: ``[N, c_in, H, W] -> [N, c_out, H, W]``.

    conv(k) -> ReLU -> conv(1x1) -> ``blocks`` x residual (ReLU, conv(k), ReLU, conv(1x1)) -> ReLU
    -> conv(k). With ``blocks=0`` this is Glow's three-layer conditioner; the residual blocks give
    RealNVP's ResNet. The last conv starts at zero, so the coupling starts as (a fixed scaling of)
    the identity. With ``kernel=1`` it is a per-pixel MLP (used when H = W = 1).
    """

    def __init__(self, c_in: int, c_out: int, hidden: int, blocks: int, kernel: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.inp = nn.Conv2d(c_in, hidden, kernel, padding=pad)
        self.mid = nn.Conv2d(hidden, hidden, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, kernel, padding=pad),
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 1),
            )
            for _ in range(blocks)
        )
        self.out = _zero_conv(hidden, c_out, kernel)

    def forward(self, h: Tensor) -> Tensor:
        a = self.mid(F.relu(self.inp(h)))
        for block in self.blocks:
            a = a + block(a)
        return self.out(F.relu(a))


class AffineCoupling(nn.Module):
    """Affine coupling ``h'_b = h_b * exp(log_s(h_a)) + t(h_a)``, ``h'_a = h_a``.

    Args:
        shape: ``(C, H, W)`` of the input.
        mask: ``checkerboard`` (``h_a`` = pixels with ``(i + j + parity)`` even, all channels; the
            mask is fed to the conditioner as an extra channel) or ``channel`` (``h_a`` = first
            ``C // 2`` channels, or the last ones when ``parity`` is 1).
        scale: ``tanh``: ``log_s = g * tanh(raw)`` with a learned per-channel gain ``g`` (RealNVP);
            ``sigmoid``: ``log_s = log sigmoid(raw + 2)`` (Glow).
        hidden, blocks: width and depth of the :class:`CouplingNet`; its kernel is 3, or 1 when
            ``H = W = 1``.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        mask: Literal["checkerboard", "channel"],
        parity: int,
        *,
        hidden: int,
        blocks: int,
        scale: Literal["tanh", "sigmoid"] = "tanh",
    ) -> None:
        super().__init__()
        c, height, width = shape
        if scale not in ("tanh", "sigmoid"):
            raise ValueError(f"coupling scale must be 'tanh' or 'sigmoid', got {scale!r}")
        self.mask_type, self.parity = mask, int(parity) % 2
        kernel = 1 if height == width == 1 else 3
        if mask == "checkerboard":
            if height * width < 2:
                raise ValueError("a checkerboard coupling needs at least 2 pixels")
            ij = torch.arange(height)[:, None] + torch.arange(width)[None]
            self.register_buffer(
                "mask", ((ij + self.parity) % 2 == 0).float()[None, None], persistent=False
            )
            c_in, c_change = c + 1, c
        elif mask == "channel":
            if c < 2:
                raise ValueError("a channel coupling needs at least 2 channels")
            self.c_first = c // 2 if self.parity == 0 else c - c // 2
            c_in, c_change = (c // 2, c - c // 2)
        else:
            raise ValueError(f"coupling mask must be 'checkerboard' or 'channel', got {mask!r}")
        self.net = CouplingNet(c_in, 2 * c_change, hidden, blocks, kernel)
        self.gain = nn.Parameter(torch.ones(1, c_change, 1, 1)) if scale == "tanh" else None

    def _log_s_t(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        raw, t = self.net(cond).chunk(2, dim=1)
        if self.gain is not None:
            return self.gain * torch.tanh(raw), t
        return F.logsigmoid(raw + 2.0), t

    def _split(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(h_a, h_b)`` of a channel coupling."""
        first, second = h[:, : self.c_first], h[:, self.c_first :]
        return (first, second) if self.parity == 0 else (second, first)

    def _join(self, h_a: Tensor, h_b: Tensor) -> Tensor:
        return torch.cat((h_a, h_b) if self.parity == 0 else (h_b, h_a), dim=1)

    def _checker_params(self, h: Tensor) -> tuple[Tensor, Tensor]:
        b = self.mask
        cond = torch.cat([h * b, b.expand(h.shape[0], 1, -1, -1)], dim=1)
        log_s, t = self._log_s_t(cond)
        return log_s * (1 - b), t * (1 - b)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask_type == "checkerboard":
            log_s, t = self._checker_params(h)
            return h * torch.exp(log_s) + t, log_s.flatten(1).sum(1)
        h_a, h_b = self._split(h)
        log_s, t = self._log_s_t(h_a)
        return self._join(h_a, h_b * torch.exp(log_s) + t), log_s.flatten(1).sum(1)

    def inverse(self, h: Tensor) -> Tensor:
        if self.mask_type == "checkerboard":
            log_s, t = self._checker_params(h)  # h * b is unchanged by the forward map
            return (h - t) * torch.exp(-log_s)
        h_a, h_b = self._split(h)
        log_s, t = self._log_s_t(h_a)
        return self._join(h_a, (h_b - t) * torch.exp(-log_s))


class SplitPrior(nn.Module):
    """Prior of factored-out dims ``z`` ``[N, c_out, H, W]`` given the kept ``h`` ``[N, c_keep, H,
    W]``: ``N(0, I)``, or with ``learned=True`` ``N(mean(h), exp(log_std(h))^2)`` from a zero-init
    conv (Glow's split prior; starts as ``N(0, I)``).

    :meth:`standardize` maps ``z`` to ``eps = (z - mean) / std`` (log-det ``-sum(log_std)``), so
    ``log p(z | h) = log N(eps; 0, I) - sum(log_std)``.
    """

    def __init__(self, c_keep: int, c_out: int, spatial: tuple[int, int], learned: bool) -> None:
        super().__init__()
        kernel = 1 if tuple(spatial) == (1, 1) else 3
        self.net = _zero_conv(c_keep, 2 * c_out, kernel) if learned else None

    def standardize(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(eps [N, c_out, H, W], log|det d eps/d z| [N])``."""
        if self.net is None:
            return z, z.new_zeros(z.shape[0])
        mean, log_std = self.net(h).chunk(2, dim=1)
        return (z - mean) * torch.exp(-log_std), -log_std.flatten(1).sum(1)

    def unstandardize(self, eps: Tensor, h: Tensor) -> Tensor:
        """Inverse of :meth:`standardize`: ``z = mean + std * eps`` ``[N, c_out, H, W]`` from
        ``eps`` ``[N, c_out, H, W]`` and the kept ``h`` ``[N, c_keep, H, W]``."""
        if self.net is None:
            return eps
        mean, log_std = self.net(h).chunk(2, dim=1)
        return mean + torch.exp(log_std) * eps
