"""Gated PixelCNN (van den Oord et al. 2016b, Conditional Image Generation with PixelCNN Decoders).

Each layer has two stacks (Fig. 1 and 2 of the paper):

- the **vertical stack** ``v`` sees whole rows above: a ``(k//2 + 1) x k`` convolution over rows
  ``i - k//2 .. i``. Its pre-activation is shifted down one row before it feeds the horizontal
  stack, so position ``(i, j)`` only receives rows ``< i`` from it (no masking needed there);
- the **horizontal stack** ``h`` sees the current row left of ``j``: a ``1 x (k//2 + 1)`` masked
  convolution (mask A in the first layer, B after) whose anchor tap is channel-masked, plus a
  1x1 convolution of the shifted vertical pre-activation, a 1x1 masked output and a residual.

Together they cover every pixel above and to the left: no blind spot. Both stacks use the gated
activation ``y = tanh(W_f * x) * sigmoid(W_g * x)`` (paper eq. 2), the ``2F`` pre-activation
features split into the ``f`` half and the ``g`` half. Logits come from a masked 1x1 head, one
K-way softmax per sub-pixel (see :mod:`genbench.models.autoregressive.base` for the encoding).

Class conditioning (paper eq. 4): with the conditioning vector ``h`` (a class embedding, see
:mod:`genbench.models.autoregressive.base`) each stack of each layer adds ``V h`` ``[N, 2F]`` (the
``V_f h`` and ``V_g h`` halves) to its pre-activation, at every position. In the horizontal stack it
joins the link term, so the cached sampler computes it once per row with the links.

Sampling caches, per layer, the last ``k//2`` rows of the vertical stack's input and the current
row of the horizontal stack's input, so drawing a sub-pixel evaluates one position per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.models.autoregressive.base import AutoregressiveModel, plus
from genbench.nn.masked import MaskedConv2d, feature_groups


def gate(z: Tensor) -> Tensor:
    """Gated activation ``tanh(f) * sigmoid(g)`` of ``[N, 2F, ...]`` -> ``[N, F, ...]``."""
    f, g = z.chunk(2, 1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One gated PixelCNN layer with a vertical and a horizontal stack.

    Args:
        in_groups: mask group of each input feature.
        features: F, output features per stack (``2F`` pre-activations).
        channels: data channels C (feature groups).
        kernel: odd kernel width k.
        first: first layer (mask A, no residual on the horizontal stack).
        cond_dim: size of the conditioning vector ``h`` (0: unconditional, no ``V`` weights).
    """

    def __init__(
        self,
        in_groups: Sequence[int],
        features: int,
        channels: int,
        kernel: int,
        first: bool,
        cond_dim: int = 0,
    ) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and positive, got {kernel}")
        p = kernel // 2
        groups = feature_groups(features, channels)
        self.pad = p
        self.residual = not first
        # vertical: output row r reads rows r-p..r, columns j-p..j+p
        self.v_conv = nn.Conv2d(len(in_groups), 2 * features, (p + 1, kernel))
        # horizontal: output (i, j) reads (i, j-p..j); channel mask at (i, j)
        self.h_conv = MaskedConv2d(
            in_groups, groups * 2, (1, p + 1), "A" if first else "B", anchor=(0, p)
        )
        self.link = nn.Conv2d(2 * features, 2 * features, 1)  # vertical -> horizontal
        self.h_out = MaskedConv2d(groups, groups, 1, "B")
        if cond_dim:  # V of eq. 4 for each stack, [V_f; V_g] stacked (the convs carry the bias)
            self.v_cond = nn.Linear(cond_dim, 2 * features, bias=False)
            self.h_cond = nn.Linear(cond_dim, 2 * features, bias=False)

    def condition(self, h: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """``V h`` of the vertical and the horizontal stack, ``[N, 2F, 1, 1]`` each, from the
        conditioning vectors ``h`` ``[N, cond_dim]`` (``None, None`` without conditioning)."""
        if h is None:
            return None, None
        return self.v_cond(h)[:, :, None, None], self.h_cond(h)[:, :, None, None]

    def vertical(self, v: Tensor, top: Tensor) -> Tensor:
        """Vertical pre-activation ``[N, 2F, R, W]`` of rows ``v`` ``[N, in, R, W]``.

        ``top`` ``[N, in, k//2, W]`` holds the rows just above ``v`` (zeros at the image top).
        """
        return self.v_conv(F.pad(torch.cat([top, v], 2), (self.pad, self.pad, 0, 0)))

    def horizontal(self, h_pre: Tensor, link: Tensor, h: Tensor) -> Tensor:
        """Horizontal output from ``h_conv(h)``, ``link(shifted v_pre)`` (``[N, 2F, ...]``) and
        the layer input ``h`` (residual)."""
        out = self.h_out(gate(h_pre + link))
        return h + out if self.residual else out


@dataclass
class _RowCache:
    tops: list[Tensor]  # per layer: [N, in, k//2, W] vertical-stack input rows above row i
    links: list[Tensor]  # per layer: [N, 2F, 1, W] link(v_pre of row i - 1)
    rows: list[Tensor]  # per layer l >= 1: [N, F, 1, W] horizontal input of row i
    conds: list[tuple[Tensor | None, Tensor | None]]  # per layer: V h of both stacks, or None


class PixelCNN(AutoregressiveModel):
    """Gated PixelCNN with a K-way categorical per sub-pixel (exact NLL).

    Args:
        shape: ``(C, H, W)``.
        levels: K.
        features: F, features per stack in every layer (at least C).
        layers: number of gated layers.
        kernel: odd kernel width k of layers 2.. (the paper uses 3).
        first_kernel: odd kernel width of the first layer (the paper uses 7).
        num_classes: classes of a conditional model p(x | y) (``model.conditional=true`` sets
            it; 0: unconditional). The class embedding has F entries.
        p_uncond: label dropout rate of a conditional model (the null label of classifier-free
            guidance, ``sampler.guidance``; unused when unconditional).
    """

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        features: int = 32,
        layers: int = 4,
        kernel: int = 3,
        first_kernel: int = 5,
        num_classes: int = 0,
        p_uncond: float = 0.1,
    ) -> None:
        super().__init__(shape, levels, features, num_classes, p_uncond)
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        c = self.shape[0]
        groups = feature_groups(features, c)
        self.layers = nn.ModuleList(
            GatedLayer(
                self.input_groups if n == 0 else groups,
                features,
                c,
                first_kernel if n == 0 else kernel,
                first=n == 0,
                cond_dim=features if self.conditional else 0,
            )
            for n in range(layers)
        )

    def trunk(self, u: Tensor, h: Tensor | None = None) -> Tensor:
        """``[N, C + 1, H, W]`` encoded input -> ``[N, F, H, W]`` last horizontal-stack output;
        ``h`` ``[N, F]``: conditioning vectors or ``None``."""
        v = x = u
        for layer in self.layers:
            v_bias, h_bias = layer.condition(h)
            top = v.new_zeros(*v.shape[:2], layer.pad, v.shape[3])  # zeros above the image
            v_pre = plus(layer.vertical(v, top), v_bias)
            shifted = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # row i holds v_pre of row i - 1
            x = layer.horizontal(layer.h_conv(x), plus(layer.link(shifted), h_bias), x)
            v = gate(v_pre)
        return x

    def begin_row(self, u: Tensor, i: int, state: Any, h: Tensor | None = None) -> _RowCache:
        """Advance the vertical stack by row ``i - 1`` of the encoded input ``u``
        ``[N, C + 1, H, W]`` (one row per layer); ``h`` ``[N, F]`` or ``None`` (conditioning,
        projected once, at row 0, and kept in the state)."""
        n, w = u.shape[0], u.shape[3]
        if state is None:
            tops = [u.new_zeros(n, layer.v_conv.in_channels, layer.pad, w) for layer in self.layers]
            rows = [u.new_zeros(n, self.features, 1, w) for _ in self.layers[1:]]
            v_pres = [u.new_zeros(n, 2 * self.features, 1, w)] * len(self.layers)
            conds = [layer.condition(h) for layer in self.layers]
        else:
            tops, rows, v_pres, conds = [], state.rows, [], state.conds
            v = u[:, :, i - 1 : i]
            for layer, top, (v_bias, _) in zip(self.layers, state.tops, conds):
                v_pre = plus(layer.vertical(v, top), v_bias)
                tops.append(torch.cat([top, v], 2)[:, :, 1:])
                v_pres.append(v_pre)
                v = gate(v_pre)
        links = [
            plus(layer.link(v_pre), h_bias)
            for layer, v_pre, (_, h_bias) in zip(self.layers, v_pres, conds)
        ]
        return _RowCache(tops, links, rows, conds)

    def pixel_features(self, u: Tensor, state: _RowCache, i: int, j: int) -> Tensor:
        """``[N, F, 1, 1]`` features at ``(i, j)``: one horizontal-stack position per layer."""
        h = u[:, :, i : i + 1]
        for n, layer in enumerate(self.layers):
            out = layer.horizontal(
                layer.h_conv.at(h, 0, j), state.links[n][..., j : j + 1], h[..., j : j + 1]
            )
            if n < len(state.rows):
                h = state.rows[n]
                h[..., j : j + 1] = out
        return out
