"""Class-conditional layers of the GAN family: conditional batch norm in the generator, and the
projection or auxiliary-classifier head of the discriminator.

Generator (labels ``y`` ``[N]`` int64 in ``[0, C)``):

- :class:`ConditionalBatchNorm2d` (de Vries et al. 2017, Dumoulin et al. 2017; the generator of
  Miyato & Koyama 2018): batch norm without its own affine, followed by a per-class gain and bias
  looked up in two ``[C, channels]`` tables initialised to 1 and 0, so a fresh layer equals plain
  batch norm with the default affine (weight 1, bias 0) for every class.
  The conv and ResNet generators (:mod:`genbench.models.gan.networks`) use it in place of every
  ``BatchNorm2d`` when built with ``num_classes > 0``; :func:`run_conditioned` runs their
  ``nn.Sequential`` stacks, handing ``y`` to these layers only.
- The MLP generator of the 2-D toys has no normalization; it adds a learned class embedding
  ``[C, hidden]`` to its first hidden pre-activation (``W z + b + E[y]``), which is the same
  function class as concatenating a one-hot ``y`` to ``z`` (Mirza & Osindero 2014). The table
  starts at zero, so the fresh generator ignores the label.

Discriminator (:class:`ConditionalDiscriminator`, wrapping an unconditional one that exposes
``features(x)`` = φ(x) ``[N, F]`` and ``head``, the final linear ψ ``F -> 1``):

- ``projection`` (Miyato & Koyama 2018, eq. 3): D(x, y) = ψ(φ(x)) + ⟨embed(y), φ(x)⟩ with an
  embedding table ``[C, F]`` (Xavier-uniform initialised; spectrally normalized in SNGAN, as the
  paper's ``SNEmbedID``).
- ``ac`` (AC-GAN, Odena et al. 2017): D(x) = ψ(φ(x)) is unconditional and a linear classifier
  ``F -> C`` on the same features gives class logits; the GAN adds the cross-entropy of those
  logits to the D loss (real and fake batches) and to the G loss (fake batch), times
  ``ac_weight`` (:class:`genbench.models.gan.base.GAN`).

Unconditional GANs (``num_classes = 0``) build none of these modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

COND_D = ("projection", "ac")


class ConditionalBatchNorm2d(nn.Module):
    """``[N, C, H, W]`` and labels ``[N]`` -> ``[N, C, H, W]``: BN(h) · γ[y] + β[y].

    Args:
        channels: feature channels.
        num_classes: number of classes; ``gain`` and ``bias`` are ``[num_classes, channels]``
            tables (initialised to 1 and 0).
    """

    #: :func:`run_conditioned` hands the labels to modules with this flag
    takes_labels = True

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, h: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            raise ValueError("a conditional generator needs labels y")
        gain = self.gain(y)[:, :, None, None]  # γ[y], [N, C, 1, 1]
        bias = self.bias(y)[:, :, None, None]  # β[y], [N, C, 1, 1]
        return self.norm(h) * gain + bias


def batch_norm(channels: int, num_classes: int = 0) -> nn.Module:
    """``BatchNorm2d(channels)`` when unconditional, else :class:`ConditionalBatchNorm2d`."""
    if num_classes:
        return ConditionalBatchNorm2d(channels, num_classes)
    return nn.BatchNorm2d(channels)


def run_conditioned(layers: Iterable[nn.Module], h: Tensor, y: Tensor | None) -> Tensor:
    """Apply ``layers`` in order; those flagged ``takes_labels`` also get the labels ``y``
    ``[N]`` (``None`` for an unconditional stack)."""
    for layer in layers:
        h = layer(h, y) if getattr(layer, "takes_labels", False) else layer(h)
    return h


class ConditionalDiscriminator(nn.Module):
    """D(x, y) ``[N]`` from an unconditional discriminator ``body`` (see the module docstring).

    Args:
        body: a discriminator with ``features(x)`` -> φ(x) ``[N, F]``, ``feature_dim`` = F and
            ``head`` = ψ (``nn.Linear(F, 1)``), whose ``forward`` is ψ(φ(x)) ``[N]``.
        num_classes: number of classes C.
        mode: ``projection`` or ``ac``.
    """

    def __init__(self, body: nn.Module, num_classes: int, mode: str = "projection") -> None:
        super().__init__()
        if mode not in COND_D:
            raise ValueError(f"mode must be one of {COND_D}, got {mode!r}")
        self.body, self.mode, self.num_classes = body, mode, int(num_classes)
        dim = int(body.feature_dim)
        if mode == "projection":
            self.embed = nn.Embedding(num_classes, dim)  # embed(y) = V[y], [C, F]
            nn.init.xavier_uniform_(self.embed.weight)
        else:
            self.classifier = nn.Linear(dim, num_classes)  # class logits, F -> C

    def judge(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(out, logits)``: D(x, y) ``[N]`` and, in ``ac`` mode, class logits ``[N, C]``
        (``None`` in ``projection`` mode)."""
        phi = self.body.features(x)  # φ(x), [N, F]
        out = self.body.head(phi).squeeze(1)  # ψ(φ(x)), [N]
        if self.mode == "projection":
            return out + (self.embed(y) * phi).sum(1), None  # + ⟨embed(y), φ(x)⟩
        return out, self.classifier(phi)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """D(x, y) ``[N]`` for inputs ``x`` ``[N, C, H, W]`` and labels ``y`` ``[N]``."""
        return self.judge(x, y)[0]


def class_embedding_(table: nn.Embedding) -> nn.Embedding:
    """Zero ``table`` in place (a label embedding that starts with no effect) and return it."""
    with torch.no_grad():
        table.weight.zero_()
    return table


def classifier_terms(
    out: dict[str, Tensor],
    terms: Mapping[str, tuple[Tensor | None, Tensor | None]],
    weight: float,
) -> dict[str, Tensor]:
    """AC-GAN's terms: ``out`` with each ``name: (logits [N, C], labels [N])`` of ``terms`` added
    to ``out["loss"]`` as ``weight`` · cross-entropy -log p(y | x) (nats, ``[N]``) and logged
    under ``name``; entries without logits (unconditional or ``projection``) are skipped."""
    for name, (logits, labels) in terms.items():
        if logits is None or labels is None:
            continue
        ce = F.cross_entropy(logits.float(), labels, reduction="none")  # -log p(y | x), [N]
        out["loss"] = out["loss"] + weight * ce
        out[name] = ce.detach()
    return out
