"""Classifier-free guidance of the diffusion-family networks (DDPM, EDM, flow matching).

A class-conditional network (:mod:`.unet`, built with ``num_classes > 0``) is trained with label
dropout, so it predicts both the conditional output (labels y) and the unconditional one (the
null label ∅). Sampling with guidance scale w (``sampler.guidance``, w >= 0) replaces the
network's output by

    out̃ = (1 + w) · out(x, t, y) - w · out(x, t, ∅)            (Ho & Salimans 2022, eq. 6)

where ``out`` is ε, v, the EDM network F or the flow-matching velocity: each is affine in the
others with the same coefficient on x (ε = (x - D)/σ, D = c_skip x + c_out F, x̂_0 = x_t - t v), so
guiding any of them guides ε alike. w = 0 is the plain conditional model and costs one network
evaluation; w > 0 evaluates both labels in one batched pass and counts as two network
evaluations (:func:`guided_nfe`). Likelihoods never use guidance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from genbench.models.options import OptionError, bad_option, option_number
from genbench.nn.condition import guided

#: the sampler option of the guidance scale w (``sampler.guidance``)
OPTION = "guidance"


def check_guidance(value: Any, conditional: bool | None, *, prefix: str = "sampler") -> float:  # noqa: ANN401
    """The guidance scale w >= 0 of config key ``<prefix>.guidance`` (``None`` = 0); an
    :class:`OptionError` when it is invalid, or when it is not 0 and the model is unconditional
    (``conditional`` False; ``None``: not known yet, only the value is checked)."""
    key = f"{prefix}.{OPTION}"
    w = 0.0 if value is None else float(option_number(key, value, low=0))
    if w != 0 and conditional is False:
        raise OptionError(
            key,
            value,
            f"{key}={value!r} needs a class-conditional model (model.conditional=true): "
            "classifier-free guidance mixes the conditional and unconditional predictions; "
            "valid for an unconditional model: 0",
        )
    return w


def check_p_uncond(value: Any) -> float:  # noqa: ANN401
    """``model.p_uncond``, the label dropout rate, as a number in [0, 1) (else an
    :class:`OptionError`)."""
    p = option_number("model.p_uncond", value, low=0, high=1)
    if p >= 1:
        raise bad_option("model.p_uncond", value, "a number in [0, 1)")
    return p


def conditional_of(hparams: Mapping[str, Any]) -> bool | None:
    """Whether the hyperparameters ``hparams`` (a model config, as ``validate_sampler`` gets it)
    describe a conditional model: from ``num_classes`` or ``conditional`` when present, else
    ``None`` (unknown: the runner's validation does not pass them yet)."""
    n = hparams.get("num_classes")
    if n is not None:
        return int(n) > 0
    flag = hparams.get("conditional")
    return flag if isinstance(flag, bool) else None


def guided_output(
    net: nn.Module,
    x: Tensor,
    t: Tensor,
    labels: Tensor | None = None,
    guidance: float = 0.0,
    *,
    channels: int | None = None,
) -> Tensor:
    """The network output ``[N, ...]`` at inputs ``x`` ``[N, ...]`` and network times ``t``
    ``[N]``: ``net(x, t)`` for an unconditional network (``labels`` None), ``net(x, t, labels)``
    for labels ``[N]`` at ``guidance`` 0, and for w > 0 the guided output from one batched pass
    over the labels and the null labels. ``channels``: only the first ``channels`` output
    channels are guided (a DDPM's prediction), the rest (its learned variances) are the
    conditional pass's."""
    if labels is None:
        if guidance:
            raise ValueError("classifier-free guidance needs labels (a conditional network)")
        return net(x, t)
    if not guidance:
        return net(x, t, labels)
    null = net.label.unconditional(labels)
    out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
    cond, uncond = out.chunk(2)
    c = cond.shape[1] if channels is None else channels
    mixed = guided(cond[:, :c], uncond[:, :c], guidance)
    return mixed if c == cond.shape[1] else torch.cat([mixed, cond[:, c:]], dim=1)


def guided_nfe(nfe: Tensor | float, guidance: float) -> Tensor | float:
    """Network evaluations (a number, or ``[N]`` per sample) of a sampler that counted ``nfe``
    calls of the (guided) network: each guided call evaluates the network twice (conditional
    and unconditional)."""
    return nfe * 2 if guidance else nfe
