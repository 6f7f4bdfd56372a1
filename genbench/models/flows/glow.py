"""Glow (Kingma & Dhariwal 2018): multi-scale flow of ActNorm, invertible 1x1 convolution and
affine coupling steps, with a learned Gaussian prior for the factored-out dimensions.

Architecture (paper, sec. 3 and Fig. 2): for each of ``scales`` levels, squeeze, then ``steps`` x
[ActNorm -> InvConv1x1 (LU) -> AffineCoupling (channel split, zero-initialized last conv,
``scale = sigmoid(raw + 2)``)], then (except at the last level) factor out half the channels with
prior ``N(mean(h), std(h)^2)`` computed from the kept half by a zero-initialized conv. The top
latent is standard normal (class-conditional with ``model.conditional=true``: a learned per-class
prior of the top latent, as in the paper's class-conditional Glow, and here of every factored-out
level too; :mod:`~genbench.models.flows.class_prior`). Data are centred (``y - 1/2``) as in the
paper, or logit-transformed with ``logit_alpha``. Likelihood, sampling and the meaning of ``nll``
are those of :class:`~genbench.models.flows.realnvp.MultiScaleFlow`; the sampler option
``temperature`` (default 1.0) scales the latent standard deviations (paper, sec. 5: T = 0.7 gives
smoother samples).

Levels squeeze only while H and W are even; data without spatial dims (2-D toys, ``[2, 1, 1]``)
get one level of steps with per-pixel MLP conditioners. With a single channel and nothing to
squeeze, couplings fall back to a checkerboard mask whose parity alternates from step to step (a
1-channel 1x1 convolution cannot permute, so a fixed parity would leave half the pixels untouched
by every coupling: independent of the rest). Channel couplings keep one parity: the 1x1
convolution before each mixes the channels (paper, sec. 3.2).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from genbench.models.flows.dequantization import Dequantization
from genbench.models.flows.layers import (
    ActNorm,
    AffineCoupling,
    Center,
    InvConv1x1,
    LogitTransform,
    SplitPrior,
    Squeeze,
)
from genbench.models.flows.realnvp import MultiScaleFlow, Scale


class Glow(MultiScaleFlow):
    """Glow.

    Args:
        shape, levels: data ``(C, H, W)`` and K.
        scales: number of levels L (one squeeze each where possible; L - 1 factor-outs).
        steps: flow steps K per level (ActNorm, 1x1 conv, coupling).
        hidden, blocks: width and residual blocks of each coupling's conditioner.
        learn_prior: learned conditional prior of factored-out dims (else ``N(0, I)``).
        logit_alpha: ``None`` centres ``y`` (paper); a float uses the logit pre-transform (0: a
            bijection of the data cube, see
            :class:`~genbench.models.flows.layers.LogitTransform`).
        dequantization: ``uniform`` (q(u | x) = 1) or ``variational`` (a learned conditional
            flow q(u | x), Flow++; :mod:`~genbench.models.flows.dequantization`), with
            ``dequant_hidden`` channels and ``dequant_couplings`` couplings.
        num_classes: C > 0 builds the class-conditional Glow p(x | y): a learned per-class
            prior of the top latent and of every factored-out level
            (:mod:`~genbench.models.flows.class_prior`), passed by the runner with
            ``model.conditional=true``.
        class_loss_weight: weight of the paper's class prediction from the top latent (cross
            entropy in bits per example, added to bits/dim) for a conditional model; 0: off.
    """

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        scales: int = 2,
        steps: int = 8,
        hidden: int = 64,
        blocks: int = 1,
        learn_prior: bool = True,
        logit_alpha: float | None = None,
        dequantization: Dequantization = "uniform",
        dequant_hidden: int = 32,
        dequant_couplings: int = 4,
        num_classes: int = 0,
        class_loss_weight: float = 0.0,
    ) -> None:
        super().__init__(shape, levels, num_classes)
        if scales < 1 or steps < 1:
            raise ValueError(f"scales and steps must be >= 1, got {scales}, {steps}")
        self.pre = Center() if logit_alpha is None else LogitTransform(logit_alpha)
        self._init_dequantization(dequantization, int(dequant_hidden), int(dequant_couplings))
        c, h, w = self.shape
        n_levels = 1 if h * w == 1 else int(scales)
        net = {"hidden": int(hidden), "blocks": int(blocks)}
        stages: list[Scale] = []
        for level in range(n_levels):
            layers: list[nn.Module] = []
            if h % 2 == 0 and w % 2 == 0:
                layers.append(Squeeze())
                c, h, w = 4 * c, h // 2, w // 2
            mask = "channel" if c >= 2 else "checkerboard"
            for step in range(int(steps)):
                parity = step % 2 if mask == "checkerboard" else 0
                layers += [
                    ActNorm(c),
                    InvConv1x1(c),
                    AffineCoupling((c, h, w), mask, parity, scale="sigmoid", **net),
                ]
            if level == n_levels - 1 or c < 2:
                stages.append(Scale(layers))
                break
            z_shape = (c - c // 2, h, w)
            prior = SplitPrior(c // 2, z_shape[0], (h, w), bool(learn_prior))
            stages.append(Scale(layers, prior, z_shape))
            c = c // 2
        self.scales = nn.ModuleList(stages)
        self.top_shape = (c, h, w)
        self._init_conditioning(class_loss_weight)
