"""What every autoregressive image model shares: input encoding, exact NLL, ancestral sampling.

The data distribution is factorized over the D = C*H*W sub-pixels in raster order over pixels and
channel order inside a pixel (R -> G -> B for colour images):

    p(x) = prod_{i, j} prod_c p(x[c, i, j] | x[:, <(i, j)], x[<c, i, j]),

each factor a K-way categorical given by a softmax over logits. The NLL is therefore exact:
``nll(x) = -sum log softmax(logits)[x]`` in nats, no bound and no dequantization.

Input encoding: levels are scaled to ``[-1, 1]`` (``2 x / (K - 1) - 1``) and a constant channel of
ones is appended, so zero padding at the image border is distinguishable from a mid-grey pixel. The
constant channel is in mask group ``-1`` (visible to every sub-pixel; it carries no data).

Sampling draws sub-pixel after sub-pixel. A subclass provides an incremental evaluation:
``begin_row`` refreshes whatever depends only on finished rows, and ``pixel_features`` computes the
trunk features of one pixel from cached ones, touching one output position per layer.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from genbench.models.base import GenerativeModel, Generator, Sampled, check_sampler_options
from genbench.models.options import option_bool, option_number
from genbench.nn.chunks import map_rows
from genbench.nn.masked import MaskedOutputHead
from genbench.nn.random import rand

SAMPLER_OPTIONS = ("temperature", "incremental")


def exact_nll_terms(nll: Tensor, dims: int) -> dict[str, Tensor]:
    """Training terms of an exact model from its NLL ``[N]`` nats of examples of ``dims``
    sub-pixels: ``loss`` nats per sub-pixel, ``nll`` nats per example and ``bpd`` bits per
    sub-pixel (``nll`` and ``bpd`` detached), each ``[N]``."""
    return {
        "loss": nll / dims,
        "nll": nll.detach(),
        "bpd": nll.detach() / (dims * math.log(2)),
    }


def inverse_cdf(logits: Tensor, u: Tensor) -> Tensor:
    """Categorical draw ``[N]`` from ``logits`` ``[N, K]`` and uniforms ``u`` ``[N]`` in ``[0, 1)``,
    by the rule of :func:`genbench.nn.random.categorical` (which draws its own uniforms)."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1)
    idx = torch.searchsorted(cdf, u.unsqueeze(-1) * cdf[..., -1:]).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


class AutoregressiveModel(GenerativeModel):
    """Base of the PixelCNN / PixelRNN models (exact discrete likelihood over K levels).

    Args:
        shape: ``(C, H, W)``.
        levels: K.
        features: F, width of the subclass's trunk output, read by the masked output head.
    """

    family = "autoregressive"
    likelihood = "exact"

    def __init__(self, shape: Sequence[int], levels: int, features: int) -> None:
        super().__init__(shape, levels)
        self.features = int(features)
        self.head = MaskedOutputHead(self.features, self.shape[0], self.levels)

    @property
    def input_groups(self) -> list[int]:
        """Mask group of each encoded input channel: ``0..C-1`` for the data, ``-1`` for ones."""
        return [*range(self.shape[0]), -1]

    def encode(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` levels -> ``[N, C + 1, H, W]`` floats: levels in ``[-1, 1]``, ones."""
        dtype = next(self.parameters()).dtype
        u = x.to(dtype) * (2.0 / (self.levels - 1)) - 1.0
        return torch.cat([u, torch.ones_like(u[:, :1])], 1)

    @abc.abstractmethod
    def trunk(self, u: Tensor) -> Tensor:
        """``[N, C + 1, H, W]`` encoded input -> ``[N, F, H, W]`` features (grouped by channel)."""

    def network(self, u: Tensor) -> Tensor:
        """``[N, C + 1, H, W]`` encoded input -> ``[N, C * K, H, W]`` logits (channel-major)."""
        return self.head(self.trunk(u))

    @abc.abstractmethod
    def begin_row(self, u: Tensor, i: int, state: Any) -> Any:
        """Sampling state for row ``i`` (``state`` is the one of row ``i - 1``, or ``None``).

        Called when rows ``< i`` of the encoded input ``u`` ``[N, C + 1, H, W]`` hold their final
        values.
        """

    @abc.abstractmethod
    def pixel_features(self, u: Tensor, state: Any, i: int, j: int) -> Tensor:
        """``[N, F, 1, 1]`` trunk features at ``(i, j)``; equals ``trunk(u)[:, :, i:i+1, j:j+1]``.

        ``u`` holds final values before ``(i, j)`` and the channels sampled so far of ``(i, j)``.
        Group ``c`` of every feature at ``(i, j)`` ignores ``x[>=c, i, j]``, so the features
        computed for the last channel are final and may be cached for later pixels.
        """

    def pixel_logits(self, u: Tensor, state: Any, i: int, j: int) -> Tensor:
        """``[N, C * K]`` logits of pixel ``(i, j)``; equals ``network(u)[:, :, i, j]``."""
        return self.head(self.pixel_features(u, state, i, j)).flatten(1)

    def logits(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` levels -> ``[N, K, C, H, W]`` logits of each sub-pixel's categorical."""
        n, (c, h, w) = x.shape[0], self.shape
        return self.network(self.encode(x)).view(n, c, self.levels, h, w).transpose(1, 2)

    def nll(self, x: Tensor, *, generator: Generator = None) -> Tensor:
        """``[N]`` exact negative log-likelihood of the levels ``x`` in nats (deterministic:
        ``generator`` is unused).

        Without autograd (evaluation), rows run in chunks of a fixed size, at most 2^25 logits
        each (:func:`genbench.nn.chunks.map_rows`), so memory does not grow with N."""
        return map_rows(self._nll, x, per_row=self.dims * self.levels)

    def _nll(self, x: Tensor) -> Tensor:
        logits = self.logits(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # no fp16 sums
        return F.cross_entropy(logits, x.long(), reduction="none").sum((1, 2, 3))

    def training_losses(self, x: Tensor, phase: str = "main") -> dict[str, Tensor]:
        """``[N]`` terms of levels ``x`` ``[N, C, H, W]``: ``loss`` nats per sub-pixel, ``nll`` nats
        per example, ``bpd`` bits per sub-pixel (``nll`` and ``bpd`` detached)."""
        return exact_nll_terms(self.nll(x), self.dims)

    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """Options ``temperature`` (T > 0, default 1) and ``incremental`` (true or false)."""
        check_sampler_options(sampler, SAMPLER_OPTIONS, cls.__name__)
        option_number("sampler.temperature", sampler.get("temperature", 1.0), low=0, low_open=True)
        option_bool("sampler.incremental", sampler.get("incremental", True))

    @torch.inference_mode()
    def sample(self, n: int, *, generator: Generator = None, **sampler: Any) -> Sampled:
        """``[n, C, H, W]`` int64 levels, drawn one sub-pixel at a time; NFE = D per sample.

        Sampler options: ``temperature`` (default 1; logits are divided by it);
        ``incremental`` (default true; false runs the whole network for every sub-pixel, the
        reference the cached path is checked and benchmarked against: same draws, D times the
        work). Sample ``r`` uses D uniforms from its own generator, drawn up front (one call per
        generator instead of one per sub-pixel) and consumed in sampling order by inverse CDF.

        NFE counts one (incremental) network evaluation per sub-pixel: each recomputes only the
        sampled pixel's position in every layer; the per-row refresh of ``begin_row``
        (vertical stack / row-LSTM state, one row per layer) is shared by the ``W * C``
        evaluations of a row and not counted separately. ``incremental=false`` does the same
        draws with D full passes, also counted D.
        """
        self.validate_sampler(sampler, {})
        temperature = float(sampler.get("temperature", 1.0))
        incremental = bool(sampler.get("incremental", True))
        c_, h_, w_ = self.shape
        k = self.levels
        device = next(self.parameters()).device
        x = torch.zeros(n, c_, h_, w_, dtype=torch.long, device=device)
        uniforms = rand((n, h_, w_, c_), generator=generator, device=device)  # sampling order
        u = self.encode(x)
        state = None
        for i in range(h_):
            if incremental:
                state = self.begin_row(u, i, state)
            for j in range(w_):
                for c in range(c_):
                    logits = (
                        self.pixel_logits(u, state, i, j)
                        if incremental
                        else self.network(u)[:, :, i, j]
                    )[:, c * k : (c + 1) * k]
                    x[:, c, i, j] = inverse_cdf(logits / temperature, uniforms[:, i, j, c])
                    u[:, c, i, j] = x[:, c, i, j].to(u.dtype) * (2.0 / (k - 1)) - 1.0
        return Sampled.constant(x, self.dims)
