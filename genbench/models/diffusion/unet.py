"""Denoising networks of DDPM: the U-Net of Ho et al. (2020) and a residual MLP for 1x1 data.

Both map ``(x_t, t)`` to a tensor shaped like ``x_t`` (ε or v, as the process asks). ``t`` is a
``[N]`` float tensor of network times (the original step index ``0..T-1``; fractional values come
from the probability-flow ODE) and enters through a sinusoidal embedding followed by an MLP.

Class conditioning (``num_classes > 0``): ``forward(x_t, t, y)`` takes labels ``y`` ``[N]`` in
``[0, C]`` (C = the null label of classifier-free guidance) whose learned embedding
(:class:`~genbench.nn.condition.ClassEmbedding`, the time embedding's width) is added to the
time embedding, so it reaches every block the way time does (Ho & Salimans 2022; Dhariwal &
Nichol 2021 add it the same way). In training mode labels are replaced by the null label with
probability ``p_uncond``. With ``num_classes = 0`` the network has no embedding and takes no
labels (its parameters and outputs are those of the unconditional network).

U-Net (Ho et al. 2020, Appendix B; the PixelCNN++-style backbone of their ``diffusion_tf``):
``conv_in`` → per resolution level ``num_res_blocks`` residual blocks (self-attention after each
block at the resolutions in ``attn_resolutions``) then a stride-2 conv, except at the last level →
middle ``res, attn, res`` → mirrored up path with ``num_res_blocks + 1`` blocks per level fed
with the skip connections, nearest-neighbour upsampling + conv → ``GroupNorm, SiLU, conv_out``.
Residual blocks are ``GN, SiLU, conv3x3, + Dense(SiLU(temb)), GN, SiLU, dropout, conv3x3`` with a
1x1 shortcut when the width changes. The last conv of every block, of every attention block and
``conv_out`` start at zero, as in the paper's code. With ``ch=128, ch_mult=(1, 2, 2, 2),
num_res_blocks=2, attn_resolutions=(16,)`` on 32x32x3 this is the 35.7M-parameter CIFAR-10 model.
Odd sizes (28 → 14 → 7 → 4) work: the upsampler resizes to the size of the matching skip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.nn.condition import ClassEmbedding

NetKind = Literal["auto", "unet", "mlp"]


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of network times ``t`` ``[N]`` → ``[N, dim]`` (Ho et al. 2020).

    Frequencies are ``10000^(-i / (dim/2 - 1))`` for ``i = 0..dim/2-1``; the first half of the
    features are sines, the second half cosines (zero-padded when ``dim`` is odd).
    """
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    freqs = torch.exp(-scale * torch.arange(half, device=t.device, dtype=torch.float32))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with ``gcd(groups, channels)`` groups, so every width is accepted."""
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _labels(num_classes: int, dim: int, p_uncond: float) -> ClassEmbedding | None:
    """The class embedding of a conditional network (``None`` when ``num_classes = 0``)."""
    return ClassEmbedding(num_classes, dim, p_uncond) if num_classes > 0 else None


def _add_label(net: nn.Module, temb: Tensor, y: Tensor | None) -> Tensor:
    """``temb`` ``[N, dim]`` plus the embedding of labels ``y`` ``[N]`` (a conditional ``net``);
    unchanged for an unconditional one, which refuses labels."""
    label = net.label
    if label is None:
        if y is not None:
            raise ValueError("labels y given to an unconditional network (num_classes = 0)")
        return temb
    if y is None:
        raise ValueError(f"a conditional network ({label.num_classes} classes) needs labels y")
    return temb + label(y).to(temb.dtype)


class TimeEmbedding(nn.Module):
    """``t`` ``[N]`` → ``[N, out]`` (``4 ch`` in the U-Net): sinusoid(ch) → Dense → SiLU → Dense."""

    def __init__(self, ch: int, out: int) -> None:
        super().__init__()
        self.ch = ch
        self.dense0 = nn.Linear(ch, out)
        self.dense1 = nn.Linear(out, out)

    def forward(self, t: Tensor) -> Tensor:  # noqa: D102
        return self.dense1(F.silu(self.dense0(timestep_embedding(t, self.ch))))


class ResBlock(nn.Module):
    """Residual block with a time-embedding bias: ``[N, c_in, H, W]`` → ``[N, c_out, H, W]``."""

    def __init__(self, c_in: int, c_out: int, temb: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb_proj = nn.Linear(temb, c_out)
        self.norm2 = _norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:  # noqa: D102
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H*W`` positions, residual: ``[N, C, H, W]`` →
    ``[N, C, H, W]``."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])  # [N, 1, HW, C]
        return x + self.proj(a[:, 0].transpose(1, 2).reshape(b, c, h, w))


class Upsample(nn.Module):
    """Nearest-neighbour resize to a given size, then a 3x3 conv: ``[N, C, h, w]`` →
    ``[N, C, size[0], size[1]]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:  # noqa: D102
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class UNet(nn.Module):
    """DDPM U-Net: ``(x [N, C, H, W], t [N]) → [N, C, H, W]``.

    Args:
        in_channels: C of the data.
        out_channels: channels of the output (default ``in_channels``; a DDPM with learned
            variances asks for ``2 C``).
        resolution: H of the data (decides where attention goes; W may differ).
        ch: base width; level ``i`` has ``ch * ch_mult[i]`` channels.
        ch_mult: width multipliers per resolution level (one downsampling between levels).
        num_res_blocks: residual blocks per level on the way down (``+ 1`` on the way up).
        attn_resolutions: feature-map heights that get a self-attention block.
        dropout: dropout rate inside residual blocks.
        norm_groups: GroupNorm groups (``gcd`` with the width is used).
        num_classes: classes C of a conditional network (0: unconditional, no labels).
        p_uncond: label dropout of a conditional network (training mode only).
    """

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        *,
        out_channels: int | None = None,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        norm_groups: int = 32,
        num_classes: int = 0,
        p_uncond: float = 0.0,
    ) -> None:
        super().__init__()
        ch_mult, attn = tuple(int(m) for m in ch_mult), {int(r) for r in attn_resolutions}
        temb, g = 4 * ch, norm_groups
        self.temb = TimeEmbedding(ch, temb)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down, skips, res, c = nn.ModuleList(), [ch], int(resolution), ch
        for i, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                blk = nn.ModuleList([ResBlock(c, ch * mult, temb, dropout, g)])
                c = ch * mult
                if res in attn:
                    blk.append(AttnBlock(c, g))
                self.down.append(blk)
                skips.append(c)
            if i != len(ch_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
                res = (res + 1) // 2
        self.mid = nn.ModuleList(
            [ResBlock(c, c, temb, dropout, g), AttnBlock(c, g), ResBlock(c, c, temb, dropout, g)]
        )
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                blk = nn.ModuleList([ResBlock(c + skips.pop(), ch * mult, temb, dropout, g)])
                c = ch * mult
                if res in attn:
                    blk.append(AttnBlock(c, g))
                self.up.append(blk)
            if i != 0:
                self.up.append(nn.ModuleList([Upsample(c)]))
                res = res * 2
        self.norm_out = _norm(c, g)
        self.conv_out = _zero(nn.Conv2d(c, out_channels or in_channels, 3, padding=1))
        self.label = _labels(num_classes, temb, p_uncond)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:  # noqa: D102
        temb = _add_label(self, self.temb(t), y)
        hs = [self.conv_in(x)]
        for blk in self.down:
            h = hs[-1]
            for layer in blk:
                h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](hs[-1], temb)), temb)
        for blk in self.up:
            if isinstance(blk[0], Upsample):
                h = blk[0](h, hs[-1].shape[-2:])
                continue
            h = blk[0](torch.cat([h, hs.pop()], dim=1), temb)
            for layer in blk[1:]:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class MLPDenoiser(nn.Module):
    """Residual MLP for flat data (2-D toys): ``(x [N, C, H, W], t [N]) → [N, out C, H, W]``
    (``out``: output channels per input channel, 2 for a DDPM with learned variances); with
    ``num_classes > 0`` also labels ``y`` ``[N]``, embedded and added to the time embedding.

    ``Linear(D, hidden)`` → ``blocks`` × [``h + Linear(dropout(SiLU(Linear(SiLU(h)) +
    Dense(SiLU(temb)))))``] → ``SiLU, Linear(hidden, D)`` (zero-initialized).
    """

    def __init__(
        self,
        dims: int,
        *,
        hidden: int = 256,
        blocks: int = 3,
        dropout: float = 0.0,
        out: int = 1,
        num_classes: int = 0,
        p_uncond: float = 0.0,
    ) -> None:
        super().__init__()
        self.temb = TimeEmbedding(hidden, hidden)
        self.inp = nn.Linear(dims, hidden)
        self.fc1 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(blocks))
        self.temb_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(blocks))
        self.fc2 = nn.ModuleList(_zero(nn.Linear(hidden, hidden)) for _ in range(blocks))
        self.dropout = nn.Dropout(dropout)
        self.out = _zero(nn.Linear(hidden, dims * out))
        self.label = _labels(num_classes, hidden, p_uncond)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:  # noqa: D102
        temb = F.silu(_add_label(self, self.temb(t), y))
        h = self.inp(x.flatten(1))
        for fc1, proj, fc2 in zip(self.fc1, self.temb_proj, self.fc2):
            h = h + fc2(self.dropout(F.silu(fc1(F.silu(h)) + proj(temb))))
        return self.out(F.silu(h)).reshape(x.shape[0], -1, *x.shape[2:])


def build_denoiser(
    shape: Sequence[int],
    net: NetKind = "auto",
    *,
    ch: int = 128,
    ch_mult: Sequence[int] = (1, 2, 2, 2),
    num_res_blocks: int = 2,
    attn_resolutions: Sequence[int] = (16,),
    dropout: float = 0.1,
    norm_groups: int = 32,
    mlp_hidden: int = 256,
    mlp_blocks: int = 3,
    out_mult: int = 1,
    num_classes: int = 0,
    p_uncond: float = 0.0,
) -> nn.Module:
    """The denoiser for data of ``shape`` ``(C, H, W)``: ``net="auto"`` picks the MLP when
    ``H = W = 1`` and the U-Net otherwise; its output has ``out_mult * C`` channels. With
    ``num_classes > 0`` it takes labels (class embedding with label dropout ``p_uncond``)."""
    c, h, w = (int(s) for s in shape)
    if net not in ("auto", "unet", "mlp"):
        raise ValueError(f"net must be auto, unet or mlp, got {net!r}")
    if net == "mlp" or (net == "auto" and h == w == 1):
        return MLPDenoiser(
            c * h * w,
            hidden=mlp_hidden,
            blocks=mlp_blocks,
            dropout=dropout,
            out=out_mult,
            num_classes=num_classes,
            p_uncond=p_uncond,
        )
    return UNet(
        c,
        h,
        out_channels=out_mult * c,
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        attn_resolutions=attn_resolutions,
        dropout=dropout,
        norm_groups=norm_groups,
        num_classes=num_classes,
        p_uncond=p_uncond,
    )
