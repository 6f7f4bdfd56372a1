"""Class conditioning of the multi-scale flows (RealNVP, Glow): a learned per-class Gaussian prior
over the whole latent, and Glow's optional class prediction from the top latent.

Kingma & Dhariwal (2018) make the prior's mean and log-scale a learned function of the class in
their class-conditional Glow. In genbench's multi-scale flows every Gaussian the log-density uses
is one block of the latent ``eps [N, D]`` that ``MultiScaleFlow.encode`` returns
(:class:`~genbench.models.flows.realnvp.MultiScaleFlow`): the factored-out part of each level
(already standardized by its split prior, standard or learned from the kept channels) and the top
latent. :class:`ClassPrior`
replaces ``N(eps; 0, I)`` by

    p(eps | c) = N(eps; mu_c, diag(exp(2 s_c))),      mu_c, s_c in R^D (one row per class c),

so the factored-out ``z`` of a level has prior ``N(m(h) + sigma(h) mu_c, (sigma(h) exp(s_c))^2)``
given the kept ``h`` and the class (``m, sigma`` = its split prior), and the top latent has
``N(mu_c, exp(2 s_c))``: every level is conditioned. One table entry per latent dimension (and
class) learns, e.g., a class's mean image in latent space. The tables start at zero, so a fresh
conditional model has exactly the log-density of the unconditional one with the same flow weights.

Sampling at temperature T draws ``eps = mu_c + T exp(s_c) e`` with ``e ~ N(0, I)`` (Glow scales
the prior's standard deviation, not its mean).

:class:`ClassPredictor` is Glow's auxiliary classifier (its ``ycond`` objective): a zero-init linear
map from the spatial mean of the top latent ``[N, C_top]`` to class logits; its cross-entropy (in
bits) is added to the training loss with a configurable weight (``model.class_loss_weight``).

:class:`ClassConditioning` is the mixin through which
:class:`~genbench.models.flows.realnvp.MultiScaleFlow` uses both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.models.flows.layers import gaussian_log_prob
from genbench.models.options import bad_option, option_number

_LOG_2PI = math.log(2 * math.pi)


class ClassPrior(nn.Module):
    """Per-class diagonal Gaussian ``N(mean[c], exp(log_scale[c])^2)`` over latents ``[N, D]``.

    Args:
        num_classes: number of classes C.
        dims: D, the size of the flow's latent.

    Parameters ``mean`` and ``log_scale`` are ``[C, D]`` tables, zero at init (``N(0, I)`` for
    every class).
    """

    def __init__(self, num_classes: int, dims: int) -> None:
        super().__init__()
        if num_classes < 1 or dims < 1:
            raise ValueError(f"num_classes and dims must be >= 1, got {num_classes}, {dims}")
        self.mean = nn.Parameter(torch.zeros(num_classes, dims))  # mu_c
        self.log_scale = nn.Parameter(torch.zeros(num_classes, dims))  # s_c

    def standardize(self, eps: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(e [N, D], log|det de/d eps| [N] nats)`` with ``e = (eps - mu_c) exp(-s_c)``, for
        latents ``eps`` ``[N, D]`` and labels ``[N]`` int64."""
        log_scale = self.log_scale[labels]
        return (eps - self.mean[labels]) * torch.exp(-log_scale), -log_scale.sum(1)

    def unstandardize(self, e: Tensor, labels: Tensor) -> Tensor:
        """Inverse of :meth:`standardize`: ``eps = mu_c + exp(s_c) e`` ``[N, D]``."""
        return self.mean[labels] + torch.exp(self.log_scale[labels]) * e

    def log_prob(self, eps: Tensor, labels: Tensor) -> Tensor:
        """``[N]`` log N(eps; mu_c, exp(2 s_c)) in nats for ``eps`` ``[N, D]``, labels ``[N]``."""
        e, logdet = self.standardize(eps, labels)
        return (-0.5 * (e**2 + _LOG_2PI)).sum(1) + logdet


class ClassPredictor(nn.Module):
    """Glow's class prediction from the top latent: ``logits = W mean_{H,W}(z_top) + b``.

    Args:
        channels: channels of the top latent.
        num_classes: C.

    ``forward``: top latent ``[N, C_top, H, W]`` -> logits ``[N, C]`` (all zero at init: ``W``
    and ``b`` start at zero, as Glow's ``linear_zeros``).
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, top: Tensor) -> Tensor:
        return self.linear(top.mean((2, 3)))


class ClassConditioning:
    """Mixin of :class:`~genbench.models.flows.realnvp.MultiScaleFlow` (a
    :class:`~genbench.models.base.GenerativeModel` with ``top_shape``): the latent prior, plain
    ``N(0, I)`` or the :class:`ClassPrior` of a conditional model, and the optional
    :class:`ClassPredictor` term. The model calls :meth:`_init_conditioning` last in its
    constructor, so an unconditional model gets no parameters and the flow's random init does not
    depend on the labels."""

    num_classes: int
    conditional: bool
    dims: int
    top_shape: tuple[int, int, int]
    class_prior: ClassPrior | None
    class_predictor: ClassPredictor | None
    class_loss_weight: float

    def _init_conditioning(self, class_loss_weight: float) -> None:
        """The class prior (``[num_classes, D]`` zero tables) of a conditional model and, with
        ``class_loss_weight > 0``, the class predictor of the top latent."""
        weight = option_number("model.class_loss_weight", class_loss_weight, low=0)
        if weight > 0 and not self.conditional:
            raise bad_option(
                "model.class_loss_weight", class_loss_weight, "0 unless model.conditional=true"
            )
        self.class_loss_weight = float(weight)
        self.class_prior = ClassPrior(self.num_classes, self.dims) if self.conditional else None
        self.class_predictor = (
            ClassPredictor(self.top_shape[0], self.num_classes) if weight > 0 else None
        )

    def prior_log_prob(self, eps: Tensor, labels: Tensor | None = None) -> Tensor:
        """``[N]`` log-density in nats of latents ``eps`` ``[N, D]``: ``log N(eps; 0, I)``, or of
        the class prior given ``labels`` ``[N]`` (conditional models)."""
        if self.class_prior is None:
            return gaussian_log_prob(eps)
        return self.class_prior.log_prob(eps, labels)

    def prior_latent(self, e: Tensor, labels: Tensor | None = None) -> Tensor:
        """Latents ``[N, D]`` of standard normal (temperature-scaled) draws ``e`` ``[N, D]``:
        ``e`` itself, or ``mu_c + exp(s_c) e`` under the class prior given ``labels``."""
        if self.class_prior is None:
            return e
        return self.class_prior.unstandardize(e, labels)

    def class_logits(self, eps: Tensor) -> Tensor:
        """``[N, num_classes]`` logits of the class predictor from latents ``eps`` ``[N, D]``
        (its top-latent block, the last ``prod(top_shape)`` entries)."""
        if self.class_predictor is None:
            raise ValueError(f"{type(self).__name__} has no class predictor (class_loss_weight=0)")
        top = eps[:, eps.shape[1] - math.prod(self.top_shape) :]
        return self.class_predictor(top.reshape(eps.shape[0], *self.top_shape))

    def with_class_term(self, bpd: Tensor, eps: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        """Training terms from the bits/dim ``bpd`` ``[N]`` of latents ``eps`` ``[N, D]``:
        ``{"loss": bpd}``, or with the class predictor ``{"loss": bpd + w class_bits, "bpd",
        "class_bits"}`` (``class_bits`` ``[N]``: cross-entropy of ``labels`` in bits)."""
        if self.class_predictor is None:
            return {"loss": bpd}
        ce = F.cross_entropy(self.class_logits(eps), labels, reduction="none") / math.log(2)
        return {"loss": bpd + self.class_loss_weight * ce, "bpd": bpd, "class_bits": ce}
