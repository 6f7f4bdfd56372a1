"""PixelRNN with Row LSTM layers (van den Oord et al. 2016a, "Pixel Recurrent Neural Networks").

A Row LSTM layer processes the image one row at a time (paper Sec. 3.1, eq. 3). With ``x_i`` the
layer input of row ``i`` and ``h_{i-1}``, ``c_{i-1}`` the hidden and cell state of the row above:

    [o_i, f_i, i_i, g_i] = sigma(K_ss (*) h_{i-1} + K_is (*) x_i)
    c_i = f_i . c_{i-1} + i_i . g_i,        h_i = o_i . tanh(c_i)

where ``sigma`` is the logistic sigmoid for o, f, i and tanh for g. ``K_is`` (input-to-state) is a
``1 x k`` convolution along the row masked to columns ``<= j`` (mask B, the anchor tap
channel-masked), computed for the whole map at once; ``K_ss`` (state-to-state) is an unmasked 1-D
convolution of width k over the previous row's state. Rows are the recurrence: H sequential steps.
Each layer adds a masked 1x1 convolution of ``h_i`` to its input (residual connection).

The network is: a ``k0 x k0`` masked convolution (mask A) on the encoded input, Row LSTM layers,
and the masked 1x1 head of :mod:`genbench.nn.masked` giving a K-way softmax per sub-pixel. The
receptive field of a Row LSTM is a triangle above the pixel (it misses part of the context to the
upper left and right on large images); it is causal, so the NLL is exact.

Class conditioning (as in the gated PixelCNN, van den Oord et al. 2016b, eq. 4): with the
conditioning vector ``h`` (a class embedding, see :mod:`genbench.models.autoregressive.base`) every
Row LSTM adds ``V h`` ``[N, 4F]`` to its gate pre-activations, at every position; it joins the
state-to-state term, so the cached sampler adds it once per row. The first masked convolution
gets its own ``V_0 h`` ``[N, F]``: it feeds the residual stream that reaches the head directly, so
the label moves the logits by as much as the gates do (with the gates alone an untrained model's
conditionals hardly depend on the label).

Sampling keeps each layer's row state: drawing a sub-pixel evaluates one column per layer, and the
state-to-state convolution runs once per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from genbench.models.autoregressive.base import AutoregressiveModel, plus
from genbench.nn.masked import MaskedConv2d, feature_groups


class RowLSTM(nn.Module):
    """One Row LSTM layer with a residual connection, ``[N, F, H, W] -> [N, F, H, W]``.

    Args:
        features: F, input and hidden features (grouped by channel).
        channels: data channels C.
        kernel: odd width k of the input-to-state (masked) and state-to-state convolutions.
        cond_dim: size of the conditioning vector ``h`` (0: unconditional, no ``V`` weights).
    """

    def __init__(self, features: int, channels: int, kernel: int, cond_dim: int = 0) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and positive, got {kernel}")
        p = kernel // 2
        groups = feature_groups(features, channels)
        self.input_to_state = MaskedConv2d(groups, groups * 4, (1, p + 1), "B", anchor=(0, p))
        self.state_to_state = nn.Conv1d(features, 4 * features, kernel, padding=p)
        self.out = MaskedConv2d(groups, groups, 1, "B")
        if cond_dim:  # V of the gates o, f, i, g (the convolutions carry the bias)
            self.cond = nn.Linear(cond_dim, 4 * features, bias=False)

    def condition(self, h: Tensor | None) -> Tensor | None:
        """``V h`` ``[N, 4F, 1]`` (one value per row position) of the conditioning vectors ``h``
        ``[N, cond_dim]``, or ``None`` without conditioning."""
        return None if h is None else self.cond(h)[:, :, None]

    def state_term(self, h_prev: Tensor, bias: Tensor | None) -> Tensor:
        """``K_ss (*) h_{i-1} (+ V h)``: ``[N, 4F, W]`` from the hidden state above ``[N, F, W]``
        and the conditioning term of :meth:`condition`."""
        return plus(self.state_to_state(h_prev), bias)

    @staticmethod
    def cell(z: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        """LSTM update from gate pre-activations ``z`` ``[N, 4F, ...]`` (o, f, i, g) and the cell
        state above ``c_prev`` ``[N, F, ...]``; returns ``(h, c)``."""
        o, f, i, g = z.chunk(4, 1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Run the recurrence over the H rows of ``x`` ``[N, F, H, W]``; ``cond`` ``[N, cond_dim]``
        is the conditioning vector ``h`` (or ``None``)."""
        n, f, _, w = x.shape
        h = c = x.new_zeros(n, f, w)
        bias, hs = self.condition(cond), []
        for k_is in self.input_to_state(x).unbind(2):  # row i: [N, 4F, W]
            h, c = self.cell(k_is + self.state_term(h, bias), c)
            hs.append(h)
        return x + self.out(torch.stack(hs, 2))


@dataclass
class _RowState:
    k_ss: list[Tensor]  # per layer: [N, 4F, W] state-to-state term of row i
    c_prev: list[Tensor]  # per layer: [N, F, W] cell state of row i - 1
    h: list[Tensor]  # per layer: [N, F, W] hidden state of row i (being filled)
    c: list[Tensor]  # per layer: [N, F, W] cell state of row i (being filled)
    rows: list[Tensor]  # per layer: [N, F, 1, W] layer input of row i (being filled)
    conds: list[Tensor | None]  # per layer: [N, 4F, 1] V h, or None (unconditional)
    first: Tensor | None  # [N, F, 1, 1] V_0 h of the first convolution, or None


class PixelRNN(AutoregressiveModel):
    """Row LSTM PixelRNN with a K-way categorical per sub-pixel (exact NLL).

    Args:
        shape: ``(C, H, W)``.
        levels: K.
        features: F, features of the input convolution and of every Row LSTM (at least C).
        layers: number of Row LSTM layers.
        kernel: odd width of the Row LSTM convolutions (the paper uses 3).
        first_kernel: odd size of the first masked convolution (the paper uses 7).
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
        layers: int = 2,
        kernel: int = 3,
        first_kernel: int = 5,
        num_classes: int = 0,
        p_uncond: float = 0.1,
    ) -> None:
        super().__init__(shape, levels, features, num_classes, p_uncond)
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if first_kernel < 1 or first_kernel % 2 == 0:
            raise ValueError(f"first_kernel must be odd and positive, got {first_kernel}")
        c = self.shape[0]
        self.input_conv = MaskedConv2d(
            self.input_groups, feature_groups(features, c), first_kernel, "A"
        )
        cond_dim = features if self.conditional else 0
        if cond_dim:  # V_0: conditioning of the first convolution's output
            self.input_cond = nn.Linear(cond_dim, features, bias=False)
        self.layers = nn.ModuleList(RowLSTM(features, c, kernel, cond_dim) for _ in range(layers))

    def first_condition(self, h: Tensor | None) -> Tensor | None:
        """``V_0 h`` ``[N, F, 1, 1]`` of the conditioning vectors ``h`` ``[N, F]``, or ``None``."""
        return None if h is None else self.input_cond(h)[:, :, None, None]

    def trunk(self, u: Tensor, h: Tensor | None = None) -> Tensor:
        """``[N, C + 1, H, W]`` encoded input -> ``[N, F, H, W]`` last Row LSTM output; ``h``
        ``[N, F]``: conditioning vectors or ``None``."""
        x = plus(self.input_conv(u), self.first_condition(h))
        for layer in self.layers:
            x = layer(x, h)
        return x

    def begin_row(self, u: Tensor, i: int, state: Any, h: Tensor | None = None) -> _RowState:
        """Move the finished row's states up and precompute ``K_ss (*) h_{i-1} (+ V h)``
        (``[N, 4F, W]`` per layer); ``u`` is the encoded input ``[N, C + 1, H, W]``, ``h``
        ``[N, F]`` or ``None`` the conditioning (projected once, at row 0, kept in the state)."""
        n, w = u.shape[0], u.shape[3]
        size = (len(self.layers), n, self.features, w)
        if state is None:
            h_prev, c_prev = u.new_zeros(size).unbind(), u.new_zeros(size).unbind()
            rows = u.new_zeros(size).unsqueeze(3).unbind()
            conds = [layer.condition(h) for layer in self.layers]
            first = self.first_condition(h)
        else:
            h_prev, c_prev, rows, conds = state.h, state.c, state.rows, state.conds
            first = state.first
        k_ss = [layer.state_term(h, bias) for layer, h, bias in zip(self.layers, h_prev, conds)]
        return _RowState(
            k_ss,
            list(c_prev),
            list(u.new_zeros(size).unbind()),
            list(u.new_zeros(size).unbind()),
            list(rows),
            conds,
            first,
        )

    def pixel_features(self, u: Tensor, state: _RowState, i: int, j: int) -> Tensor:
        """``[N, F, 1, 1]`` features at ``(i, j)``: one column of every layer."""
        x = plus(self.input_conv.at(u, i, j), state.first)  # [N, F, 1, 1]
        for n, layer in enumerate(self.layers):
            state.rows[n][..., j : j + 1] = x
            z = layer.input_to_state.at(state.rows[n], 0, j)[:, :, 0, 0] + state.k_ss[n][..., j]
            h, c = layer.cell(z, state.c_prev[n][..., j])
            state.h[n][..., j] = h
            state.c[n][..., j] = c
            x = x + layer.out(h[:, :, None, None])
        return x
