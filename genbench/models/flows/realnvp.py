"""RealNVP (Dinh et al. 2017) and the multi-scale dequantized flow that RealNVP and Glow share.

Likelihood (``likelihood = "dequantized"``). Integer levels ``x`` in ``{0..K-1}^D`` are dequantized
to ``y = (x + u) / K`` with ``u ~ U[0, 1)^D`` and the flow models the density ``p(y)`` on
``[0, 1)^D``:

    log p(y) = log N(eps; 0, I) + log |det d eps / d y|,      eps = encode(y) in R^D

where ``encode`` is the pre-transform (logit or centring, its log-det counted), the invertible
layers of every scale, and the standardization of factored-out dims by their (standard or learned)
Gaussian prior. The discrete NLL reported by :meth:`MultiScaleFlow.nll` is

    nll(x) = -log p(y) + D log K   [nats],   bits/dim = -log p(y) / (D ln 2) + log2 K,

an upper bound on ``-log P(x)`` in expectation over ``u`` (Theis et al. 2016). For uniform data no
model reports less than ``log2 K`` bits/dim in expectation. With ``dequantization=variational``
the offsets come from a learned q(u | x) and the bound gains ``+ log q(u | x)``; with
``dequant_samples=k`` (``eval.dequant_samples``) it is the importance-weighted bound over k draws,
``D log K - log (1/k) Σ_j p(y_j) / q(u_j | x)``, tighter as k grows and still a bound
(:mod:`~genbench.models.flows.dequantization`).

Samples decode ``eps ~ N(0, T^2 I)`` and take the levels ``floor(K y)``. With the default logit
pre-transform (``logit_alpha = 0``) the map is a bijection ``(0, 1)^D <-> R^D``: every sample lands
in the cube and ``P(x)`` above is the probability of drawing ``x``. A logit with ``alpha > 0`` or
centring puts some density outside the cube (lost to ``P``, so the bound holds) and clamps the
samples that land there (see :class:`~genbench.models.flows.layers.LogitTransform`).

Class-conditional (``num_classes > 0``, ``model.conditional=true``): the contract's labels come as
the keyword ``y`` of ``nll`` / ``sample`` / ``training_losses`` (called ``labels`` inside, ``y``
above being the dequantized data) and ``N(eps; 0, I)`` becomes the learned per-class Gaussian
:class:`~genbench.models.flows.class_prior.ClassPrior` (Glow's class-conditional prior, zero at
init), which conditions the prior of every factored-out level and of the top latent. ``nll(x, y)``
is the same dequantized bound on ``-log P(x | y)``; q(u | x) does not see the label (any q gives a
bound). Samples decode ``eps = mu_y + T exp(s_y) e``. ``model.class_loss_weight > 0`` adds Glow's
auxiliary class prediction from the top latent to the training loss
(:class:`~genbench.models.flows.class_prior.ClassPredictor`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from genbench.models.base import GenerativeModel, Generator, Sampled, check_sampler_options
from genbench.models.flows.class_prior import ClassConditioning
from genbench.models.flows.dequantization import (
    DEQUANTIZATIONS,
    Dequantization,
    VariationalDequantizer,
)
from genbench.models.flows.layers import (
    ActNorm,
    AffineCoupling,
    LogitTransform,
    SplitPrior,
    Squeeze,
    dequantize,
)
from genbench.models.options import option_number
from genbench.nn.chunks import map_rows
from genbench.nn.random import randn


def _rows_of(generator: Generator, idx: Tensor) -> Generator:
    """The generators of rows ``idx`` when there is one per row, else ``generator``."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    return [generator[int(i)] for i in idx]


class Scale(nn.Module):
    """One scale: invertible ``layers``, then (when ``split`` is given) the last ``z_shape[0]``
    channels are factored out and standardized by their prior.

    Args:
        layers: modules with ``forward(h) -> (h, logdet)`` and ``inverse(h) -> h``.
        split: prior of the factored-out channels, or ``None`` (keep everything).
        z_shape: ``(C_z, H, W)`` of the factored-out part (ignored without ``split``).
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        split: SplitPrior | None = None,
        z_shape: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.split = split
        self.z_shape = tuple(z_shape) if split is not None else (0, 0, 0)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """``h [N, C, H, W] -> (kept h, eps [N, C_z, H, W] or None, logdet [N])``."""
        logdet = h.new_zeros(h.shape[0])
        for layer in self.layers:
            h, ld = layer(h)
            logdet = logdet + ld
        if self.split is None:
            return h, None, logdet
        h, z = h[:, : h.shape[1] - self.z_shape[0]], h[:, h.shape[1] - self.z_shape[0] :]
        eps, ld = self.split.standardize(z, h)
        return h, eps, logdet + ld

    def inverse(self, h: Tensor, eps: Tensor | None) -> Tensor:
        """Inverse of :meth:`forward` given the kept ``h`` and the factored-out ``eps``."""
        if self.split is not None:
            h = torch.cat([h, self.split.unstandardize(eps, h)], dim=1)
        for layer in reversed(self.layers):
            h = layer.inverse(h)
        return h


class MultiScaleFlow(ClassConditioning, GenerativeModel):
    """A dequantized flow ``y -> eps``: pre-transform, then :class:`Scale` s.

    Subclasses build ``self.pre`` (pre-transform), ``self.scales`` and ``self.top_shape`` (shape of
    what the last scale keeps), then call :meth:`_init_conditioning` (class prior of a
    conditional model). Sampler option: ``temperature`` (default 1.0; ``eps ~ N(0, T^2 I)``,
    which also scales the learned priors' std by T).

    :meth:`nll` draws the dequantization noise ``u`` from the global RNG (the evaluator fixes the
    global seed), so a test-set NLL is one Monte-Carlo draw of the bound per example.
    """

    family = "flow"
    likelihood = "dequantized"
    sampler_options: tuple[str, ...] = ("temperature",)

    conditional_support = True

    pre: nn.Module
    scales: nn.ModuleList
    top_shape: tuple[int, int, int]

    def encode(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``y [N, C, H, W]`` in ``[0, 1)`` -> ``(eps [N, D], log|det d eps/d y| [N] nats)``."""
        h, logdet = self.pre(y)
        pieces = []
        for scale in self.scales:
            h, eps, ld = scale(h)
            logdet = logdet + ld
            if eps is not None:
                pieces.append(eps.flatten(1))
        pieces.append(h.flatten(1))
        return torch.cat(pieces, dim=1), logdet

    def decode(self, eps: Tensor) -> Tensor:
        """Inverse of :meth:`encode`: ``eps [N, D] -> y [N, C, H, W]``."""
        return self.pre.inverse(self._unflow(eps))

    def _unflow(self, eps: Tensor) -> Tensor:
        """``eps [N, D]`` -> ``h [N, C, H, W]``, the input of the scales (pre-transform space)."""
        n = eps.shape[0]
        sizes = [math.prod(s.z_shape) for s in self.scales if s.split is not None]
        pieces = list(eps.split([*sizes, math.prod(self.top_shape)], dim=1))
        h = pieces.pop().reshape(n, *self.top_shape)
        for scale in reversed(self.scales):
            z = pieces.pop().reshape(n, *scale.z_shape) if scale.split is not None else None
            h = scale.inverse(h, z)
        return h

    def log_prob(self, y: Tensor, labels: Tensor | None = None) -> Tensor:
        """``[N]`` log p(y) (log p(y | labels) for a conditional model, labels ``[N]``) in nats of
        dequantized ``y`` ``[N, C, H, W]`` in ``[0, 1)``."""
        eps, logdet = self.encode(y)
        return self.prior_log_prob(eps, labels) + logdet

    def _ref(self) -> Tensor:
        return next(self.parameters())

    def _init_dequantization(self, kind: str, hidden: int, couplings: int) -> None:
        """``uniform``: q(u | x) = 1; ``variational``: a learned
        :class:`~genbench.models.flows.dequantization.VariationalDequantizer`."""
        if kind not in DEQUANTIZATIONS:
            raise ValueError(
                f"model.dequantization={kind!r}: expected one of {', '.join(DEQUANTIZATIONS)}"
            )
        self.dequantization = kind
        self.dequantizer = (
            VariationalDequantizer(self.shape, self.levels, hidden=hidden, couplings=couplings)
            if kind == "variational"
            else None
        )

    def _weight_and_latent(
        self, x: Tensor, generator: Generator, labels: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``([N] log w, eps [N, D])`` for one draw u ~ q(u | x), y = (x + u) / K:
        ``log w = log p(y | labels) - log q(u | x) - D log K`` (its negative is one draw of the
        dequantized bound on -log P(x | labels), nats) and the latent ``eps = encode(y)``."""
        dtype, const = self._ref().dtype, self.dims * math.log(self.levels)
        if self.dequantizer is None:
            y = dequantize(x, self.levels, generator=generator, dtype=dtype)
            log_q = None
        else:
            u, log_q = self.dequantizer.sample(x, generator=generator, dtype=dtype)
            y = (x.to(dtype) + u) / self.levels
        eps, logdet = self.encode(y)
        log_p = self.prior_log_prob(eps, labels) + logdet
        return (log_p if log_q is None else log_p - log_q) - const, eps

    def _log_weight(self, x: Tensor, generator: Generator, labels: Tensor | None = None) -> Tensor:
        """``[N]`` log w of :meth:`_weight_and_latent`."""
        return self._weight_and_latent(x, generator, labels)[0]

    def nll(
        self,
        x: Tensor,
        *,
        y: Tensor | None = None,
        generator: Generator = None,
        dequant_samples: int = 1,
    ) -> Tensor:
        """``[N]`` upper bound on ``-log P(x)`` (``-log P(x | y)`` with labels ``y`` ``[N]`` for a
        conditional model) in nats: with k = ``dequant_samples`` draws u_j ~ q(u | x) (from
        ``generator``, k per example, in order), ``D log K - log (1/k) Σ_j p(y_j) / q(u_j | x)``
        (k = 1: the plain dequantized bound; larger k is tighter and still a bound)."""
        labels = self.labels(y, x.shape[0], x.device)
        k = int(dequant_samples)
        if k < 1:
            raise ValueError(f"dequant_samples must be >= 1, got {dequant_samples}")
        if k == 1:
            return -self._log_weight(x, generator, labels)
        n = x.shape[0]
        rows = x.repeat_interleave(k, dim=0)  # example-major: row i k + j is draw j of example i
        row_labels = None if labels is None else labels.repeat_interleave(k)
        if generator is not None and not isinstance(generator, torch.Generator):
            generator = [g for g in generator for _ in range(k)]  # example i's k draws from gen i
        log_w = map_rows(
            lambda r, idx: self._log_weight(
                r, _rows_of(generator, idx), None if row_labels is None else row_labels[idx]
            ),
            rows,
            torch.arange(n * k),
            per_row=4 * self.dims * max(1, self._hidden_width()),
        ).view(n, k)
        return -(torch.logsumexp(log_w, dim=1) - math.log(k))

    def _hidden_width(self) -> int:
        """Widest feature map per sub-pixel (sizes the row chunks of the k-sample bound)."""
        return max((m.out_channels for m in self.modules() if isinstance(m, nn.Conv2d)), default=1)

    def nll_settings(self, dequant_samples: int = 1, **options: Any) -> dict[str, Any]:
        """``{"dequant_samples": k}``: the k of the importance-weighted bound :meth:`nll`
        reports (q(u | x), uniform or variational, is part of the model, not of the protocol)."""
        return {"dequant_samples": int(dequant_samples)}

    def training_losses(
        self, x: Tensor, phase: str = "main", y: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"loss": [N] bits/dim}`` of the dequantized bound (:meth:`nll` with one draw, labels
        ``y`` ``[N]`` for a conditional model; with variational dequantization it trains the flow
        and q(u | x) together). With ``class_loss_weight = w > 0`` (Glow's class prediction):
        ``loss = bits/dim + w * class_bits``, ``class_bits`` ``[N]`` the cross-entropy of the
        top-latent classifier in bits per example, also logged with ``bpd``."""
        labels = self.labels(y, x.shape[0], x.device)
        log_w, eps = self._weight_and_latent(x, None, labels)
        return self.with_class_term(-log_w / (self.dims * math.log(2)), eps, labels)

    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """Option ``temperature`` (T >= 0, default 1)."""
        check_sampler_options(sampler, cls.sampler_options, cls.__name__)
        option_number("sampler.temperature", sampler.get("temperature", 1.0), low=0)

    def resolve_sampler(self, **sampler: Any) -> dict[str, Any]:
        """``{"temperature": T}`` (default 1.0); unknown options or ``T < 0`` raise ValueError."""
        self.validate_sampler(sampler, {})
        return {"temperature": float(sampler.get("temperature", 1.0))}

    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """``[n, C, H, W]`` int64 levels ``x = floor(K decode(T eps))`` (computed by the
        pre-transform's ``levels``: with the bijective logit never clamped, with ``alpha > 0`` or
        centring clamped to ``[0, K)``); one network evaluation (the inverse pass). A conditional
        model decodes ``mu_y + T exp(s_y) eps`` for labels ``y`` ``[n]`` (the class prior at
        temperature T)."""
        temperature = self.resolve_sampler(**sampler)["temperature"]
        ref = self._ref()
        labels = self.labels(y, n, ref.device)
        eps = randn((n, self.dims), generator=generator, device=ref.device, dtype=ref.dtype)
        eps = self.prior_latent(temperature * eps, labels)
        return Sampled.constant(self.pre.levels(self._unflow(eps), self.levels), 1)


class RealNVP(MultiScaleFlow):
    """RealNVP (Dinh et al. 2017, sec. 3.6): logit pre-transform; per scale 3 checkerboard
    couplings, squeeze, 3 channel couplings, factor out half the channels; the last scale has
    ``final_couplings`` checkerboard couplings. ActNorm after each coupling stands in for the
    paper's batch norm (no batch statistics, so EMA copies and per-example NLLs need no care).

    Scales stop early where H or W is odd; data without spatial dims (``H = W = 1``, 2-D toys) get
    one scale of ``flat_couplings`` alternating channel couplings with MLP conditioners.

    Args:
        shape, levels: data ``(C, H, W)`` and K.
        scales: number of scales (``scales - 1`` squeezes and factor-outs).
        hidden, blocks: width and residual blocks of each coupling's conditioner.
        checker_couplings, channel_couplings, final_couplings: couplings per stage.
        flat_couplings: couplings for data without spatial dims (``H = W = 1``).
        actnorm: ActNorm after each coupling.
        logit_alpha: alpha of the logit pre-transform: 0 (default) is a bijection of the data
            cube (samples follow the scored density); the paper's 0.05 leaks mass outside it
            (see :class:`~genbench.models.flows.layers.LogitTransform`).
        dequantization, dequant_hidden, dequant_couplings: ``uniform`` or ``variational``
            dequantization and the size of q(u | x) (see :class:`~genbench.models.flows.glow.Glow`).
        num_classes: C > 0 builds the class-conditional model p(x | y) (per-class prior, see the
            module docstring); passed by the runner with ``model.conditional=true``.
        class_loss_weight: weight of the top-latent class prediction term (bits per example) in
            the training loss of a conditional model (0: off, no classifier).
    """

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        scales: int = 2,
        hidden: int = 32,
        blocks: int = 1,
        checker_couplings: int = 3,
        channel_couplings: int = 3,
        final_couplings: int = 4,
        flat_couplings: int = 8,
        actnorm: bool = True,
        logit_alpha: float = 0.0,
        dequantization: Dequantization = "uniform",
        dequant_hidden: int = 32,
        dequant_couplings: int = 4,
        num_classes: int = 0,
        class_loss_weight: float = 0.0,
    ) -> None:
        super().__init__(shape, levels, num_classes)
        if scales < 1:
            raise ValueError(f"scales must be >= 1, got {scales}")
        self.pre = LogitTransform(logit_alpha)
        self._init_dequantization(dequantization, int(dequant_hidden), int(dequant_couplings))
        self._net = {"hidden": int(hidden), "blocks": int(blocks)}
        self._actnorm = bool(actnorm)
        c, h, w = self.shape
        stages: list[Scale] = []
        for _ in range(int(scales) - 1):
            if h % 2 or w % 2:
                break
            layers = self._couplings((c, h, w), "checkerboard", checker_couplings)
            layers.append(Squeeze())
            c, h, w = 4 * c, h // 2, w // 2
            layers += self._couplings((c, h, w), "channel", channel_couplings)
            z_shape = (c - c // 2, h, w)
            stages.append(Scale(layers, SplitPrior(c // 2, z_shape[0], (h, w), False), z_shape))
            c = c // 2
        if h * w > 1:
            final = self._couplings((c, h, w), "checkerboard", final_couplings)
        else:
            final = self._couplings((c, h, w), "channel", flat_couplings)
        stages.append(Scale(final))
        self.scales = nn.ModuleList(stages)
        self.top_shape = (c, h, w)
        self._init_conditioning(class_loss_weight)

    def _couplings(self, shape: tuple[int, int, int], mask: str, count: int) -> list[nn.Module]:
        """``count`` couplings of alternating parity, each followed by ActNorm if enabled."""
        layers: list[nn.Module] = []
        for i in range(int(count)):
            layers.append(AffineCoupling(shape, mask, i % 2, scale="tanh", **self._net))
            if self._actnorm:
                layers.append(ActNorm(shape[0]))
        return layers
