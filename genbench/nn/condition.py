"""Class conditioning shared by the families: a label embedding with a "null" class, label
dropout and classifier-free guidance.

Classifier-free guidance (Ho & Salimans 2022) trains one network on labels that are replaced by a
null label with probability ``p_uncond`` (10 % by default), so the same network predicts both the
conditional and the unconditional quantity; at sampling time the two are combined as

    guided = (1 + w) · conditional - w · unconditional

with the guidance scale ``w`` (``sampler.guidance``): ``w = 0`` is plain conditional sampling,
larger ``w`` trades diversity for agreement with the label.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ClassEmbedding(nn.Module):
    """``[N]`` labels in ``[0, num_classes]`` -> ``[N, dim]`` vectors; label ``num_classes`` is the
    null (unconditional) label.

    Args:
        num_classes: number of real classes C.
        dim: embedding size.
        p_uncond: probability that a training label is replaced by the null label (label
            dropout; applied in training mode only, drawn from the global RNG).
    """

    def __init__(self, num_classes: int, dim: int, p_uncond: float = 0.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= float(p_uncond) < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")
        self.num_classes, self.p_uncond = int(num_classes), float(p_uncond)
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null(self) -> int:
        """The null label's index (C)."""
        return self.num_classes

    def drop(self, y: Tensor) -> Tensor:
        """``y`` ``[N]`` with each label replaced by the null label with probability
        ``p_uncond`` when training (unchanged in eval mode or when ``p_uncond = 0``)."""
        if not self.training or self.p_uncond == 0.0:
            return y
        mask = torch.rand(y.shape, device=y.device) < self.p_uncond
        return torch.where(mask, torch.full_like(y, self.null), y)

    def forward(self, y: Tensor) -> Tensor:
        """``[N, dim]`` embeddings of labels ``y`` ``[N]`` (after label dropout when training)."""
        return self.table(self.drop(y.long()))

    def unconditional(self, y: Tensor) -> Tensor:
        """``[N]`` null labels shaped and placed like ``y``."""
        return torch.full_like(y.long(), self.null)


def guided(conditional: Tensor, unconditional: Tensor, w: float) -> Tensor:
    """Classifier-free guidance: ``(1 + w) · conditional - w · unconditional``; both inputs have
    one shape, e.g. ``[N, C, H, W]`` noise predictions or ``[N, D, K]`` logits."""
    if w == 0:
        return conditional
    return (1.0 + w) * conditional - w * unconditional
