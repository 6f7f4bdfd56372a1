"""Masked convolutions for autoregressive image models (van den Oord et al. 2016a, Sec. 3.4).

Sub-pixels are ordered raster-wise over pixels and, inside a pixel, by channel: sub-pixel
``(c, i, j)`` may depend on every channel of the pixels before ``(i, j)`` and on channels ``< c`` of
pixel ``(i, j)`` itself. Feature maps keep this order by splitting their features into ``C``
*groups*: group ``c`` of a feature at ``(i, j)`` may only carry information about sub-pixels before
``(c, i, j)``. A convolution keeps the invariant when, at its *anchor* tap (the tap that reads the
output position itself), output group ``g`` reads input groups

- ``< g`` with mask **A** (the first layer, which reads the data: ``x[c, i, j]`` must not see
  itself),
- ``<= g`` with mask **B** (later layers, whose group ``g`` already excludes ``x[g, i, j]``).

Taps before the anchor in raster order are fully open and taps after it are closed. Group ``-1``
marks inputs that carry no data (a constant channel) and is visible to every output group.

>>> conv = MaskedConv2d([0, 1], [0, 1], (3, 3), "A")
>>> conv.mask[:, :, 1, 1]  # anchor tap: output group 1 reads input channel 0 only
tensor([[0., 0.],
        [1., 0.]])
>>> conv.mask[0, 0]
tensor([[1., 1., 1.],
        [1., 0., 0.],
        [0., 0., 0.]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MaskType = Literal["A", "B"]


def feature_groups(features: int, channels: int) -> list[int]:
    """Group of each of ``features`` features: ``C`` contiguous, near-equal blocks ``0..C-1``."""
    if features < channels:
        raise ValueError(f"need at least one feature per channel: {features} < {channels}")
    return [f * channels // features for f in range(features)]


def causal_mask(
    in_groups: Sequence[int],
    out_groups: Sequence[int],
    kernel_size: tuple[int, int],
    mask_type: MaskType,
    anchor: tuple[int, int],
) -> Tensor:
    """``[out, in, kh, kw]`` 0/1 mask: open before the anchor (raster order), channel-masked at
    the anchor, closed after it."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    kh, kw = kernel_size
    ar, ac = anchor
    if not (0 <= ar < kh and 0 <= ac < kw):
        raise ValueError(f"anchor {anchor} outside kernel {kernel_size}")
    g_in = torch.tensor(list(in_groups)).view(1, -1)
    g_out = torch.tensor(list(out_groups)).view(-1, 1)
    at_anchor = g_in < g_out if mask_type == "A" else g_in <= g_out  # [out, in]
    mask = torch.zeros(len(out_groups), len(in_groups), kh, kw)
    mask[:, :, :ar] = 1.0
    mask[:, :, ar, :ac] = 1.0
    mask[:, :, ar, ac] = at_anchor.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A 2-D convolution whose output at ``(i, j)`` only sees sub-pixels before its own.

    Args:
        in_groups: group of each input channel (``-1``: no data, always visible).
        out_groups: group of each output channel.
        kernel_size: ``(kh, kw)`` (an int means square).
        mask_type: ``"A"`` (strictly before) or ``"B"`` (up to and including the group).
        anchor: kernel tap aligned with the output position; default the centre. The input is
            zero-padded so that the output has the input's ``H x W``.
    """

    def __init__(
        self,
        in_groups: Sequence[int],
        out_groups: Sequence[int],
        kernel_size: int | tuple[int, int],
        mask_type: MaskType,
        anchor: tuple[int, int] | None = None,
        bias: bool = True,
    ) -> None:
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        super().__init__(len(in_groups), len(out_groups), (kh, kw), bias=bias)
        self.anchor = (kh // 2, kw // 2) if anchor is None else tuple(anchor)
        self.register_buffer(
            "mask",
            causal_mask(in_groups, out_groups, (kh, kw), mask_type, self.anchor),
            persistent=False,
        )
        ar, ac = self.anchor
        self._pad = (ac, kw - 1 - ac, ar, kh - 1 - ar)  # F.pad order: left, right, top, bottom

    def masked_weight(self) -> Tensor:
        """``[out, in, kh, kw]`` weight with the closed taps zeroed."""
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        """``[N, in, H, W] -> [N, out, H, W]``."""
        if x.shape[-2:] == (1, 1) and self.kernel_size == (1, 1):
            return self.at(x, 0, 0)  # one position (sampling): a matrix product is faster
        if any(self._pad):
            x = F.pad(x, self._pad)
        return F.conv2d(x, self.masked_weight(), self.bias)

    def at(self, x: Tensor, i: int, j: int) -> Tensor:
        """``self(x)[:, :, i:i+1, j:j+1]`` (``[N, out, 1, 1]``), computed from its window only.

        Rows below the anchor are closed, so only rows ``<= i`` of ``x`` are read; this is what
        makes one sampling step cost one output position (a matrix product over the window).
        """
        ar, ac = self.anchor
        kw = self.kernel_size[1]
        h, w = x.shape[-2:]
        r0, c0, c1 = i - ar, j - ac, j - ac + kw
        window = x[:, :, max(r0, 0) : i + 1, max(c0, 0) : min(c1, w)]
        pad = (max(-c0, 0), max(c1 - w, 0), max(-r0, 0), 0)
        if any(pad):
            window = F.pad(window, pad)
        weight = self.masked_weight()[:, :, : ar + 1].flatten(1)  # [out, in * (ar + 1) * kw]
        return F.linear(window.flatten(1), weight, self.bias)[:, :, None, None]


class MaskedOutputHead(nn.Module):
    """ReLU -> 1x1 conv (mask B) -> ReLU -> 1x1 conv (mask B) to ``C * K`` logits.

    Logit ``c * K + k`` belongs to channel group ``c``, so sub-pixel ``(c, i, j)`` gets its ``K``
    logits from group-``c`` features only.

    Args:
        features: input features (grouped by :func:`feature_groups`).
        channels: data channels C.
        levels: K, categories per sub-pixel.
    """

    def __init__(self, features: int, channels: int, levels: int) -> None:
        super().__init__()
        groups = feature_groups(features, channels)
        self.hidden = MaskedConv2d(groups, groups, 1, "B")
        self.out = MaskedConv2d(groups, feature_groups(channels * levels, channels), 1, "B")

    def forward(self, h: Tensor) -> Tensor:
        """``[N, features, H, W] -> [N, C * K, H, W]`` logits."""
        return self.out(torch.relu(self.hidden(torch.relu(h))))
