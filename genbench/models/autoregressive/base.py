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

Class conditioning (``num_classes > 0``, van den Oord et al. 2016b, eq. 4): a label ``y`` is
embedded into a conditioning vector ``h`` ``[N, F]`` (:class:`genbench.nn.condition.ClassEmbedding`)
and every gated layer adds ``V_f h`` and ``V_g h`` to the pre-activations of its ``tanh`` and
``sigmoid`` halves (a per-example bias, the same at every position, so causality is untouched). The
model is then p(x | y) with the same exact factorization; the trunk and the incremental evaluation
take ``h`` (``None`` for an unconditional model, which has no embedding and computes exactly what it
computed before conditioning existed).

Classifier-free guidance (Ho & Salimans 2022) on the logits: training replaces a label by the null
label with probability ``p_uncond`` (``model.p_uncond``), so the network also gives unconditional
logits; ``sampler.guidance=w`` draws each sub-pixel from ``softmax((1 + w) l(x_<d, y) - w l(x_<d))``
(one batched pass over the labels and the null label: 2 network evaluations per sub-pixel).
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
from genbench.models.options import OptionError, option_bool, option_number
from genbench.nn.chunks import map_rows
from genbench.nn.condition import ClassEmbedding, guided
from genbench.nn.masked import MaskedOutputHead
from genbench.nn.random import rand

SAMPLER_OPTIONS = ("temperature", "incremental", "guidance")


def exact_nll_terms(nll: Tensor, dims: int) -> dict[str, Tensor]:
    """Training terms of an exact model from its NLL ``[N]`` nats of examples of ``dims``
    sub-pixels: ``loss`` nats per sub-pixel, ``nll`` nats per example and ``bpd`` bits per
    sub-pixel (``nll`` and ``bpd`` detached), each ``[N]``."""
    return {
        "loss": nll / dims,
        "nll": nll.detach(),
        "bpd": nll.detach() / (dims * math.log(2)),
    }


def plus(x: Tensor, bias: Tensor | None) -> Tensor:
    """``x + bias`` (``x`` ``[N, ...]``, ``bias`` broadcast to it, e.g. ``[N, 2F, 1, 1]``), or
    ``x`` itself when there is no ``bias`` (an unconditional layer)."""
    return x if bias is None else x + bias


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
        features: F, width of the subclass's trunk output, read by the masked output head; also
            the size of the class embedding ``h`` of a conditional model.
        num_classes: classes of a conditional model (0: unconditional, no embedding).
        p_uncond: label dropout rate of a conditional model (trains the null label that
            classifier-free guidance needs; unused when unconditional).
    """

    family = "autoregressive"
    likelihood = "exact"
    conditional_support = True

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        features: int,
        num_classes: int = 0,
        p_uncond: float = 0.0,
    ) -> None:
        super().__init__(shape, levels, num_classes)
        option_number("model.p_uncond", p_uncond, low=0, high=1)
        if p_uncond >= 1:
            raise OptionError("model.p_uncond", p_uncond, "model.p_uncond must be below 1")
        self.p_uncond = float(p_uncond)
        self.features = int(features)
        self.head = MaskedOutputHead(self.features, self.shape[0], self.levels)
        if self.conditional:
            self.embedding = ClassEmbedding(self.num_classes, self.features, self.p_uncond)

    def condition(self, y: Tensor | None, *, dropout: bool = True) -> Tensor | None:
        """``[N, F]`` conditioning vectors ``h`` of checked labels ``y`` ``[N]`` in
        ``[0, num_classes]`` (``num_classes``: the null label), after label dropout in training
        mode unless ``dropout=False`` (``None`` for ``None``: an unconditional model)."""
        if y is None:
            return None
        return self.embedding(y) if dropout else self.embedding.table(y)

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
    def trunk(self, u: Tensor, h: Tensor | None = None) -> Tensor:
        """``[N, C + 1, H, W]`` encoded input -> ``[N, F, H, W]`` features (grouped by channel);
        ``h`` ``[N, F]``: conditioning vectors (conditional models) or ``None``."""

    def network(self, u: Tensor, h: Tensor | None = None) -> Tensor:
        """``[N, C + 1, H, W]`` encoded input -> ``[N, C * K, H, W]`` logits (channel-major);
        ``h`` as in :meth:`trunk`."""
        return self.head(self.trunk(u, h))

    @abc.abstractmethod
    def begin_row(self, u: Tensor, i: int, state: Any, h: Tensor | None = None) -> Any:
        """Sampling state for row ``i`` (``state`` is the one of row ``i - 1``, or ``None``).

        Called when rows ``< i`` of the encoded input ``u`` ``[N, C + 1, H, W]`` hold their final
        values; ``h`` (``[N, F]`` or ``None``) is the conditioning of :meth:`trunk` and must be
        the same for every row (a state may keep what it needs of it).
        """

    @abc.abstractmethod
    def pixel_features(self, u: Tensor, state: Any, i: int, j: int) -> Tensor:
        """``[N, F, 1, 1]`` trunk features at ``(i, j)``; equals ``trunk(u, h)[:, :, i:i+1, j:j+1]``
        for the ``h`` given to :meth:`begin_row`.

        ``u`` holds final values before ``(i, j)`` and the channels sampled so far of ``(i, j)``.
        Group ``c`` of every feature at ``(i, j)`` ignores ``x[>=c, i, j]``, so the features
        computed for the last channel are final and may be cached for later pixels.
        """

    def pixel_logits(self, u: Tensor, state: Any, i: int, j: int) -> Tensor:
        """``[N, C * K]`` logits of pixel ``(i, j)``; equals ``network(u, h)[:, :, i, j]``."""
        return self.head(self.pixel_features(u, state, i, j)).flatten(1)

    def logits(self, x: Tensor, *, y: Tensor | None = None) -> Tensor:
        """``[N, C, H, W]`` levels -> ``[N, K, C, H, W]`` logits of each sub-pixel's categorical
        (given the labels ``y`` ``[N]`` of a conditional model)."""
        return self._logits(x, self.labels(y, x.shape[0], x.device))

    def _logits(self, x: Tensor, y: Tensor | None) -> Tensor:
        n, (c, h, w) = x.shape[0], self.shape
        logits = self.network(self.encode(x), self.condition(y))
        return logits.view(n, c, self.levels, h, w).transpose(1, 2)

    def nll(self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None) -> Tensor:
        """``[N]`` exact negative log-likelihood of the levels ``x`` in nats, -log p(x | y) for a
        conditional model with labels ``y`` ``[N]`` (deterministic: ``generator`` is unused).

        Without autograd (evaluation), rows run in chunks of a fixed size, at most 2^25 logits
        each (:func:`genbench.nn.chunks.map_rows`), so memory does not grow with N."""
        y = self.labels(y, x.shape[0], x.device)
        rows = (x,) if y is None else (x, y)
        return map_rows(self._nll, *rows, per_row=self.dims * self.levels)

    def _nll(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        logits = self._logits(x, y)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # no fp16 sums
        return F.cross_entropy(logits, x.long(), reduction="none").sum((1, 2, 3))

    def training_losses(
        self, x: Tensor, phase: str = "main", y: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``[N]`` terms of levels ``x`` ``[N, C, H, W]`` (labels ``y`` ``[N]`` of a conditional
        model): ``loss`` nats per sub-pixel, ``nll`` nats per example, ``bpd`` bits per sub-pixel
        (``nll`` and ``bpd`` detached)."""
        return exact_nll_terms(self.nll(x, y=y), self.dims)

    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """Options ``temperature`` (T > 0, default 1), ``incremental`` (true or false) and
        ``guidance`` (w >= 0, default 0; w > 0 needs ``model.p_uncond > 0`` and a conditional
        model, checked where ``hparams`` say: ``num_classes`` or ``conditional``)."""
        check_sampler_options(sampler, SAMPLER_OPTIONS, cls.__name__)
        option_number("sampler.temperature", sampler.get("temperature", 1.0), low=0, low_open=True)
        option_bool("sampler.incremental", sampler.get("incremental", True))
        w = option_number("sampler.guidance", sampler.get("guidance", 0.0), low=0)
        if w and (hparams.get("num_classes") == 0 or hparams.get("conditional") is False):
            raise OptionError(
                "sampler.guidance",
                w,
                f"sampler.guidance={w!r} needs a conditional model (model.conditional=true); "
                f"valid for an unconditional {cls.__name__}: 0",
            )
        if w and not hparams.get("p_uncond", 1.0):
            raise OptionError(
                "sampler.guidance",
                w,
                f"sampler.guidance={w!r} needs a null label trained by label dropout: "
                "model.p_uncond must be > 0",
            )

    def resolve_sampler(self, **sampler: Any) -> dict[str, Any]:
        """The options as given, checked against this model: guidance needs a conditional model
        trained with label dropout."""
        hparams = {"p_uncond": self.p_uncond, "num_classes": self.num_classes}
        self.validate_sampler(sampler, hparams)
        return dict(sampler)

    @torch.inference_mode()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """``[n, C, H, W]`` int64 levels, drawn one sub-pixel at a time (from p(x | y) given the
        labels ``y`` ``[n]`` of a conditional model); NFE = D per sample.

        Sampler options: ``temperature`` (default 1; logits are divided by it);
        ``incremental`` (default true; false runs the whole network for every sub-pixel, the
        reference the cached path is checked and benchmarked against: same draws, D times the
        work). Sample ``r`` uses D uniforms from its own generator, drawn up front (one call per
        generator instead of one per sub-pixel) and consumed in sampling order by inverse CDF.
        ``guidance`` (w >= 0, default 0; conditional models with ``p_uncond > 0``): the logits are
        ``(1 + w) l(y) - w l(null)``, both from one pass over a doubled batch (NFE = 2D).

        NFE counts one (incremental) network evaluation per sub-pixel: each recomputes only the
        sampled pixel's position in every layer; the per-row refresh of ``begin_row``
        (vertical stack / row-LSTM state, one row per layer) is shared by the ``W * C``
        evaluations of a row and not counted separately. ``incremental=false`` does the same
        draws with D full passes, also counted D.
        """
        self.resolve_sampler(**sampler)
        temperature = float(sampler.get("temperature", 1.0))
        incremental = bool(sampler.get("incremental", True))
        w = float(sampler.get("guidance", 0.0))
        c_, h_, w_ = self.shape
        k = self.levels
        device = next(self.parameters()).device
        y = self.labels(y, n, device)
        if w:  # rows n.. of the batch: the same images under the null label
            y = torch.cat([y, self.embedding.unconditional(y)])
        cond = self.condition(y, dropout=False)
        x = torch.zeros(n, c_, h_, w_, dtype=torch.long, device=device)
        uniforms = rand((n, h_, w_, c_), generator=generator, device=device)  # sampling order
        u = self.encode(x).repeat(2 if w else 1, 1, 1, 1)
        state = None
        for i in range(h_):
            if incremental:
                state = self.begin_row(u, i, state, cond)
            for j in range(w_):
                for c in range(c_):
                    logits = (
                        self.pixel_logits(u, state, i, j)
                        if incremental
                        else self.network(u, cond)[:, :, i, j]
                    )[:, c * k : (c + 1) * k]
                    if w:
                        logits = guided(logits[:n], logits[n:], w)
                    x[:, c, i, j] = inverse_cdf(logits / temperature, uniforms[:, i, j, c])
                    level = x[:, c, i, j].to(u.dtype) * (2.0 / (k - 1)) - 1.0
                    u[:, c, i, j] = level.repeat(2) if w else level
        return Sampled.constant(x, self.dims * (2 if w else 1))
