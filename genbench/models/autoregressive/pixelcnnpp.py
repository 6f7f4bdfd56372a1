"""PixelCNN++ (Salimans, Karpathy, Chen & Kingma 2017): a discretized logistic mixture per pixel.

Likelihood (paper sec. 2.1-2.2). Levels ``k`` of K map to centers ``v = 2k / (K - 1) - 1`` in
``[-1, 1]``; a bin is ``[v - h, v + h]`` with half-width ``h = 1 / (K - 1)``, and the two edge
bins are open (level 0 takes ``(-inf, -1 + h]``, level K-1 takes ``[1 - h, +inf)``). A pixel's
C channels share one mixture component ``m`` of M:

    p(x) = sum_m pi_m prod_c P_logistic(bin(x_c) | mu_mc(x_<c), s_mc),
    mu_mc(x_<c) = mu_mc + sum_{c' < c} a_mcc' v_c',

so the mean of channel c moves linearly with the channels before it in the same pixel (for RGB:
G with R, B with R and G, paper eq. 3); ``a = tanh(.)``. The network emits, per pixel and
component, ``1 + 2C + C(C-1)/2`` numbers: the mixture logit, C means, C log-scales (clamped
below at -7) and the coefficients. Bin masses are computed exactly in log space,

    log(sigmoid(a) - sigmoid(b)) = logsigmoid(a) + logsigmoid(-b) + log(-expm1(b - a)),

which neither underflows nor cancels, so the reference code's fallback (the log-density at the
bin center times the bin width, used where the CDF difference is below 1e-5) is not needed and the
K masses of every sub-pixel sum to exactly one (up to rounding): the NLL is exact.

Network (paper sec. 2.3-2.5, Fig. 2): two streams of gated ResNet blocks, ``u`` (rows above,
down-shifted ``2x3`` convolutions) and ``ul`` (rows above and the current row to the left,
down-right-shifted ``2x2`` convolutions, fed by ``u``), concat_elu non-linearities, dropout
inside each block, ``scales`` resolutions (stride-2 shifted convolutions down, transposed ones up,
cropped to the skip's size so odd and 1x1 images work), and short-cuts from every block of the
first pass into the matching block of the second. Unlike the reference code there is no weight
normalization (plain convolutions with torch's default initialization).

Class conditioning (``num_classes > 0``; the paper's code conditions the same way): a label ``y`` is
embedded into ``h`` ``[N, nr_filters]`` (:class:`genbench.nn.condition.ClassEmbedding`) and every
gated ResNet block adds ``V h`` ``[N, 2F]`` to the pre-activations ``[a, b]`` of its gate
``a * sigmoid(b)``, at every position: the model is p(x | y), still exact.

Sampling is ancestral, pixel by pixel in raster order: one network pass per pixel (NFE = H * W;
the pass for row i runs on rows 0..i only, which gives the same outputs there, since every layer
is anchored at the top), the component drawn by inverse CDF, each channel a logistic draw clamped to
``[-1, 1]`` and rounded to the nearest level, later channels conditioned on the drawn levels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.models.autoregressive.base import exact_nll_terms, inverse_cdf, plus
from genbench.models.base import GenerativeModel, Generator, Sampled, check_sampler_options
from genbench.models.options import option_number
from genbench.nn.chunks import map_rows
from genbench.nn.condition import ClassEmbedding
from genbench.nn.random import rand

#: lower clamp of the log-scales (the reference code's value)
LOG_SCALE_MIN = -7.0


def params_per_component(channels: int) -> int:
    """Numbers per mixture component: logit, C means, C log-scales, C(C-1)/2 coefficients."""
    return 1 + 2 * channels + channels * (channels - 1) // 2


def split_params(params: Tensor, channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Network output ``[N, M * P, H, W]`` -> logits ``[N, M, H, W]``, means and log-scales
    ``[N, M, C, H, W]``, coefficients ``[N, M, C(C-1)/2, H, W]`` (tanh-squashed). The P numbers
    of a component are contiguous; coefficient ``c(c-1)/2 + c'`` couples channel c to c' < c."""
    n, _, h, w = params.shape
    c = channels
    p = params.reshape(n, -1, params_per_component(c), h, w)
    log_scales = p[:, :, 1 + c : 1 + 2 * c].clamp(min=LOG_SCALE_MIN)
    return p[:, :, 0], p[:, :, 1 : 1 + c], log_scales, torch.tanh(p[:, :, 1 + 2 * c :])


def shifted_means(means: Tensor, coeffs: Tensor, v: Tensor) -> Tensor:
    """``[N, M, C, H, W]`` means of each channel given the centers ``v`` ``[N, C, H, W]`` of the
    channels before it in the same pixel: ``mu_c + sum_{c' < c} a_cc' v_c'``."""
    out = [means[:, :, 0]]
    for c in range(1, means.shape[2]):
        k = c * (c - 1) // 2
        out.append(means[:, :, c] + (coeffs[:, :, k : k + c] * v[:, None, :c]).sum(2))
    return torch.stack(out, 2)


def bin_log_probs(v: Tensor, mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """Log-mass (nats) of the bin around each center ``v`` under ``Logistic(mean,
    exp(log_scale))``; the inputs broadcast to one shape, e.g. ``[N, M, C, H, W]``, and so does
    the result. Edge bins (``v = -1`` and ``v = 1``) are open."""
    half = 1.0 / (levels - 1)
    k = torch.round((v.detach() + 1) * (levels - 1) / 2)
    inv_s = torch.exp(-log_scale)
    upper = inv_s * (v - mean + half)  # standardized upper bin edge
    lower = inv_s * (v - mean - half)
    below = torch.where(k < levels - 1, F.logsigmoid(upper), 0.0)  # log P(X <= upper)
    above = torch.where(k > 0, F.logsigmoid(-lower), 0.0)  # log P(X > lower)
    # sigma(u) - sigma(l) = sigma(u) sigma(-l) (1 - e^(l - u)); the last factor only inside
    width = torch.where((k > 0) & (k < levels - 1), torch.log(-torch.expm1(lower - upper)), 0.0)
    return below + above + width


def conditional_log_probs(params: Tensor, v: Tensor, levels: int) -> Tensor:
    """``[N, C, H, W]`` log p(x_c | x_<c, earlier pixels) in nats, from the network output
    ``params`` ``[N, M * P, H, W]`` and the level centers ``v`` ``[N, C, H, W]`` in ``[-1, 1]``.
    Summed over C it is the log-probability of the whole pixel (a telescoping sum)."""
    c = v.shape[1]
    logits, means, log_scales, coeffs = split_params(params, c)
    mu = shifted_means(means, coeffs, v)
    per_channel = bin_log_probs(v[:, None], mu, log_scales, levels)  # [N, M, C, H, W]
    log_pi = torch.log_softmax(logits, 1)[:, :, None]
    upto = torch.logsumexp(log_pi + per_channel.cumsum(2), 1)  # log p(x_<=c), [N, C, H, W]
    return upto - F.pad(upto, (0, 0, 0, 0, 1, 0))[:, :-1]


def concat_elu(x: Tensor) -> Tensor:
    """``elu([x, -x])`` over channels: ``[N, F, ...]`` -> ``[N, 2F, ...]``."""
    return F.elu(torch.cat([x, -x], 1))


def down_shift(x: Tensor) -> Tensor:
    """Move ``[N, F, H, W]`` one row down (zeros in row 0)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: Tensor) -> Tensor:
    """Move ``[N, F, H, W]`` one column right (zeros in column 0)."""
    return F.pad(x, (1, 0))[..., :-1]


class ShiftedConv2d(nn.Conv2d):
    """Convolution whose ``kh x kw`` window ends at the output row (padded above): centred on
    the output column (``right=False``: sees rows up to its own) or ending at it (``right=True``:
    sees the current row up to its own column). Stride 2 gives ``ceil(H/2) x ceil(W/2)``."""

    def __init__(
        self, cin: int, cout: int, kernel: tuple[int, int], stride: int = 1, right: bool = False
    ) -> None:
        super().__init__(cin, cout, kernel, stride=stride)
        kh, kw = kernel
        self.pads = (kw - 1, 0, kh - 1, 0) if right else ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, cin, H, W]`` -> ``[N, cout, H', W']``."""
        return super().forward(F.pad(x, self.pads))


class ShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Stride-2 transposed convolution, cropped to ``size``: output ``(r, q)`` reads input row
    ``r // 2`` (and columns around ``q // 2``, or up to it when ``right``)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], right: bool = False) -> None:
        super().__init__(cin, cout, kernel, stride=2)
        self.col = 0 if right else (kernel[1] - 1) // 2

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:  # type: ignore[override]
        """``[N, cin, h, w]`` -> ``[N, cout, H, W]`` with ``(H, W) = size <= (2h, 2w)``."""
        h, w = size
        return super().forward(x)[:, :, :h, self.col : self.col + w]


class GatedResnet(nn.Module):
    """``x + a * sigmoid(b)`` with ``[a, b] = conv(dropout(concat_elu(conv(concat_elu(x)) +
    nin(concat_elu(aux))))) (+ V h)`` (paper Fig. 2); ``aux`` is ``[N, aux, H, W]`` or absent,
    ``V h`` the conditioning term of a conditional model (``cond_dim > 0``)."""

    def __init__(
        self, filters: int, aux: int, dropout: float, right: bool, cond_dim: int = 0
    ) -> None:
        super().__init__()
        kernel = (2, 2) if right else (2, 3)
        self.conv1 = ShiftedConv2d(2 * filters, filters, kernel, right=right)
        self.nin = nn.Conv2d(2 * aux, filters, 1) if aux else None
        self.drop = nn.Dropout(dropout)
        self.conv2 = ShiftedConv2d(2 * filters, 2 * filters, kernel, right=right)
        if cond_dim:  # V: conditioning vector -> [a, b] (conv2 carries the bias)
            self.cond = nn.Linear(cond_dim, 2 * filters, bias=False)

    def forward(self, x: Tensor, aux: Tensor | None = None, h: Tensor | None = None) -> Tensor:
        """``[N, F, H, W]`` -> ``[N, F, H, W]``; ``h`` ``[N, cond_dim]``: conditioning vectors
        or ``None``."""
        z = self.conv1(concat_elu(x))
        if self.nin is not None:
            z = z + self.nin(concat_elu(aux))
        bias = None if h is None else self.cond(h)[:, :, None, None]
        a, b = plus(self.conv2(self.drop(concat_elu(z))), bias).chunk(2, 1)
        return x + a * torch.sigmoid(b)


class Scale(nn.Module):
    """One resolution of one pass: ``blocks`` gated ResNet blocks per stream and the resampling
    to the next resolution (``None`` at the last one); ``cond_dim``: size of the conditioning
    vector (0: unconditional)."""

    def __init__(
        self,
        filters: int,
        blocks: int,
        dropout: float,
        skips: bool,
        resample: str | None,
        cond_dim: int = 0,
    ) -> None:
        super().__init__()
        f = filters
        u_aux, ul_aux = (f, 2 * f) if skips else (0, f)  # skip; skip and u; or u
        self.u = nn.ModuleList(
            GatedResnet(f, u_aux, dropout, False, cond_dim) for _ in range(blocks)
        )
        self.ul = nn.ModuleList(
            GatedResnet(f, ul_aux, dropout, True, cond_dim) for _ in range(blocks)
        )
        self.resample = resample
        if resample == "down":
            self.u_next = ShiftedConv2d(f, f, (2, 3), stride=2)
            self.ul_next = ShiftedConv2d(f, f, (2, 2), stride=2, right=True)
        elif resample == "up":
            self.u_next = ShiftedConvTranspose2d(f, f, (2, 3))
            self.ul_next = ShiftedConvTranspose2d(f, f, (2, 2), right=True)


class PixelCNNpp(GenerativeModel):
    """PixelCNN++ with a discretized logistic mixture per pixel (exact NLL over K levels).

    Args:
        shape: ``(C, H, W)``.
        levels: K.
        nr_resnet: gated ResNet blocks per stream and resolution (the paper: 5).
        nr_filters: features of every block (the paper: 160).
        nr_logistic_mix: mixture components M (the paper: 10).
        dropout: dropout probability inside the blocks (the paper: 0.5).
        scales: resolutions, halved between them (the paper: 3, 32 -> 16 -> 8).
        num_classes: classes of a conditional model p(x | y) (``model.conditional=true`` sets
            it; 0: unconditional). The class embedding has ``nr_filters`` entries.
    """

    family = "autoregressive"
    likelihood = "exact"
    conditional_support = True

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        nr_resnet: int = 1,
        nr_filters: int = 32,
        nr_logistic_mix: int = 5,
        dropout: float = 0.0,
        scales: int = 3,
        num_classes: int = 0,
    ) -> None:
        super().__init__(shape, levels, num_classes)
        for key, value in (
            ("nr_resnet", nr_resnet),
            ("nr_filters", nr_filters),
            ("nr_logistic_mix", nr_logistic_mix),
            ("scales", scales),
        ):
            option_number(f"model.{key}", value, low=1, integer=True)
        option_number("model.dropout", dropout, low=0, high=1)
        if dropout >= 1:
            raise ValueError(f"model.dropout={dropout!r} is invalid: expected a number in [0, 1)")
        c, f = self.shape[0], int(nr_filters)
        self.mix = int(nr_logistic_mix)
        self.nr_filters = f
        cin = c + 1  # levels in [-1, 1] and a channel of ones (tells padding from data)
        self.u_init = ShiftedConv2d(cin, f, (2, 3))
        self.ul_init_up = ShiftedConv2d(cin, f, (1, 3))
        self.ul_init_left = ShiftedConv2d(cin, f, (2, 1), right=True)
        last, cond_dim = int(scales) - 1, f if self.conditional else 0
        self.up = nn.ModuleList(
            Scale(f, int(nr_resnet), dropout, False, "down" if s < last else None, cond_dim)
            for s in range(last + 1)
        )
        self.down = nn.ModuleList(
            Scale(f, int(nr_resnet) + (s > 0), dropout, True, "up" if s < last else None, cond_dim)
            for s in range(last + 1)
        )
        self.out = nn.Conv2d(f, self.mix * params_per_component(c), 1)
        if self.conditional:
            self.embedding = ClassEmbedding(self.num_classes, f)

    def condition(self, y: Tensor | None) -> Tensor | None:
        """``[N, nr_filters]`` conditioning vectors of checked labels ``y`` ``[N]`` (``None``
        for ``None``: an unconditional model)."""
        return None if y is None else self.embedding(y)

    def centers(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` levels -> bin centers in ``[-1, 1]`` (the parameters' dtype)."""
        dtype = self.out.weight.dtype
        return x.to(dtype) * (2.0 / (self.levels - 1)) - 1.0

    def network(self, v: Tensor, h: Tensor | None = None) -> Tensor:
        """Centers ``[N, C, H, W]`` -> mixture parameters ``[N, M * P, H, W]``; those at pixel
        ``(i, j)`` depend only on pixels before it in raster order (and on the conditioning
        vectors ``h`` ``[N, nr_filters]`` of a conditional model)."""
        x = torch.cat([v, torch.ones_like(v[:, :1])], 1)
        u = down_shift(self.u_init(x))
        ul = down_shift(self.ul_init_up(x)) + right_shift(self.ul_init_left(x))
        us, uls = [u], [ul]
        for scale in self.up:
            for block_u, block_ul in zip(scale.u, scale.ul):
                u = block_u(u, None, h)
                ul = block_ul(ul, u, h)
                us.append(u)
                uls.append(ul)
            if scale.resample is not None:
                u, ul = scale.u_next(u), scale.ul_next(ul)
                us.append(u)
                uls.append(ul)
        u, ul = us.pop(), uls.pop()
        for scale in self.down:
            for block_u, block_ul in zip(scale.u, scale.ul):
                u = block_u(u, us.pop(), h)
                ul = block_ul(ul, torch.cat([u, uls.pop()], 1), h)
            if scale.resample is not None:
                size = us[-1].shape[-2:]
                u, ul = scale.u_next(u, size), scale.ul_next(ul, size)
        return self.out(F.elu(ul))

    def nll(self, x: Tensor, *, y: Tensor | None = None) -> Tensor:
        """``[N]`` exact negative log-likelihood of the levels ``x`` ``[N, C, H, W]`` in nats,
        -log p(x | y) for a conditional model with labels ``y`` ``[N]`` (evaluated in row chunks
        of bounded memory without autograd)."""
        outputs = self.mix * params_per_component(self.shape[0])
        per_row = self.dims * max(4 * self.nr_filters, outputs)
        y = self.labels(y, x.shape[0], x.device)
        rows = (x,) if y is None else (x, y)
        return map_rows(self._nll, *rows, per_row=per_row)

    def _nll(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        v = self.centers(x)
        params = self.network(v, self.condition(y))
        params = params.to(torch.promote_types(params.dtype, torch.float32))  # no fp16 sums
        return -conditional_log_probs(params, v.to(params.dtype), self.levels).sum((1, 2, 3))

    def training_losses(
        self, x: Tensor, phase: str = "main", y: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``[N]`` terms of levels ``x`` ``[N, C, H, W]`` (labels ``y`` ``[N]`` of a conditional
        model): ``loss`` nats per sub-pixel, ``nll`` nats per example, ``bpd`` bits per sub-pixel
        (``nll`` and ``bpd`` detached)."""
        return exact_nll_terms(self.nll(x, y=y), self.dims)

    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """No sampler options: the draws follow the model's distribution exactly."""
        check_sampler_options(sampler, (), cls.__name__)

    @torch.inference_mode()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """``[n, C, H, W]`` int64 levels drawn pixel by pixel (from p(x | y) given the labels
        ``y`` ``[n]`` of a conditional model); NFE = H * W per sample.

        Sample ``r`` uses ``H * W * (1 + C)`` uniforms of its own generator, drawn up front: per
        pixel one for the component (inverse CDF of the mixture weights) and one per channel
        for its logistic draw ``mu + s * logit(u)``, clamped to ``[-1, 1]`` and rounded to the
        nearest level (that is a draw from the bin masses, edge bins open); channel c's mean
        uses the levels drawn for the channels before it."""
        self.validate_sampler(sampler, {})
        c_, h_, w_ = self.shape
        k = self.levels
        device = self.out.weight.device
        cond = self.condition(self.labels(y, n, device))
        x = torch.zeros(n, c_, h_, w_, dtype=torch.long, device=device)
        u = rand((n, h_, w_, 1 + c_), generator=generator, device=device, dtype=torch.float64)
        v = self.centers(x)
        for i in range(h_):
            for j in range(w_):
                params = self.network(v[:, :, : i + 1], cond)[:, :, i:, j : j + 1].double()
                logits, means, log_scales, coeffs = split_params(params, c_)
                m = inverse_cdf(logits[:, :, 0, 0], u[:, i, j, 0])  # [n] components
                pick = m.view(n, 1, 1, 1, 1).expand(n, 1, c_, 1, 1)
                means, log_scales = means.gather(1, pick), log_scales.gather(1, pick)
                coeffs = coeffs.gather(1, m.view(n, 1, 1, 1, 1).expand(n, 1, *coeffs.shape[2:]))
                cur = torch.zeros(n, c_, 1, 1, dtype=torch.float64, device=device)
                for c in range(c_):
                    mu = shifted_means(means, coeffs, cur)[:, 0, c, 0, 0]
                    q = u[:, i, j, 1 + c]
                    draw = mu + torch.exp(log_scales[:, 0, c, 0, 0]) * (q.log() - (-q).log1p())
                    level = torch.round((draw.clamp(-1, 1) + 1) * (k - 1) / 2).long()
                    x[:, c, i, j] = level
                    cur[:, c] = level.double().view(n, 1, 1) * (2.0 / (k - 1)) - 1.0
                v[:, :, i, j] = cur[:, :, 0, 0].to(v.dtype)
        return Sampled.constant(x, h_ * w_)
