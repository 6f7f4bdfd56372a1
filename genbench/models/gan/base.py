"""Shared machinery of the GAN family: phases, data scaling and latent draws (the networks are
:mod:`genbench.models.gan.networks`).

A GAN has two phases, each with its own optimizer: ``"d"`` trains the discriminator (critic)
``d_steps`` times per training step (``model.d_steps`` for every GAN: k of Goodfellow et al.,
n_critic of WGAN-GP, n_dis of SNGAN) and ``"g"`` trains the generator once. Subclasses build
``self.generator`` (``[N, z_dim]`` latents -> ``[N, C, H, W]``, in ``[-1, 1]`` up to the
MLP generator's unsquashed output) and
``self.discriminator`` (``[N, C, H, W]`` -> ``[N]`` raw outputs) and name their objective in
``loss`` (a key of :data:`genbench.models.gan.losses.D_LOSSES`).

Data: integer levels x in ``{0..K-1}`` are mapped to ``y = x / (K - 1) * 2 - 1`` in ``[-1, 1]``;
generated ``y`` is mapped back by ``round((y + 1) / 2 * (K - 1))``, clamped to ``[0, K)``.

Gradients stay inside their phase: in the ``"d"`` phase the fake batch is generated under
``torch.no_grad`` (the generator gets no gradient), and in the ``"g"`` phase the discriminator's
parameters are frozen (``requires_grad=False``) while the graph is built, so ``loss.backward()``
only writes ``.grad`` of ``parameters_for(phase)``. Batch-norm running statistics are buffers and
do move in both phases (the runner should still zero all model grads before each phase).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from genbench.models.base import (
    GenerativeModel,
    Generator,
    Phase,
    Sampled,
    check_sampler_options,
)
from genbench.models.gan.losses import D_LOSSES, G_LOSSES
from genbench.models.options import option_number
from genbench.nn import random as rnd

SAMPLER_OPTIONS = ("truncation",)


def optimizer_overrides(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Plain dict of optimizer keyword overrides from yaml (lists such as ``betas`` -> tuples)."""
    out: dict[str, Any] = {}
    for key, value in dict(cfg or {}).items():
        if isinstance(value, Sequence) and not isinstance(value, str):
            value = tuple(float(v) for v in value)
        out[str(key)] = value
    return out


def renamed_d_steps(d_steps: int | None, default: int, **old: int | None) -> int:
    """``d_steps``, or the value given under its deprecated spelling (``n_dis=``, ``n_critic=``,
    accepted with a ``FutureWarning`` for one release, so older run configs still build)."""
    for name, value in old.items():
        if value is None:
            continue
        warnings.warn(
            f"model.{name} is deprecated and will be removed in the next release: "
            "use model.d_steps (discriminator steps per training step)",
            FutureWarning,
            stacklevel=3,
        )
        if d_steps is not None and int(d_steps) != int(value):
            raise ValueError(
                f"model.{name}={value} and model.d_steps={d_steps} disagree; set model.d_steps only"
            )
        d_steps = value
    return default if d_steps is None else int(d_steps)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Build graphs through ``module`` without making its parameters leaves of the graph."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class GAN(GenerativeModel):
    """Generator/discriminator pair trained in two phases (see the module docstring).

    Args:
        shape, levels: data shape ``(C, H, W)`` and number of levels K.
        z_dim: latent size; z ~ N(0, I) ``[N, z_dim]``.
        d_steps: discriminator steps per generator step (k of Goodfellow et al., n_critic of
            WGAN, n_dis of SNGAN).
        d_optimizer, g_optimizer: per-phase optimizer overrides (e.g. ``{"lr": 2e-4,
            "betas": [0.5, 0.999]}``); the rest comes from ``conf/optimizer``.

    Subclasses assign ``self.generator`` and ``self.discriminator`` after calling this.
    """

    family: ClassVar[str] = "gan"
    likelihood: ClassVar[str] = "none"
    select_best: ClassVar[bool] = False
    #: objective, a key of ``D_LOSSES`` / ``G_LOSSES``
    loss: ClassVar[str] = "nonsaturating"

    generator: nn.Module
    discriminator: nn.Module

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        z_dim: int,
        d_steps: int = 1,
        d_optimizer: Mapping[str, Any] | None = None,
        g_optimizer: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(shape, levels)
        if self.loss not in D_LOSSES:
            raise ValueError(f"unknown GAN loss {self.loss!r}; valid: {sorted(D_LOSSES)}")
        if int(z_dim) < 1 or int(d_steps) < 1:
            raise ValueError(f"z_dim and d_steps must be >= 1, got {z_dim}, {d_steps}")
        self.z_dim, self.d_steps = int(z_dim), int(d_steps)
        self.d_optimizer = optimizer_overrides(d_optimizer)
        self.g_optimizer = optimizer_overrides(g_optimizer)

    # -- contract -------------------------------------------------------------------------------
    @property
    def phases(self) -> tuple[Phase, ...]:
        return (
            Phase("d", repeat=self.d_steps, optimizer=self.d_optimizer),
            Phase("g", optimizer=self.g_optimizer),
        )

    def parameters_for(self, phase: str) -> Iterable[nn.Parameter]:
        """``"d"``: discriminator parameters; ``"g"``: generator parameters."""
        return self._network(phase).parameters()

    def training_losses(self, x: Tensor, phase: str) -> dict[str, Tensor]:
        """``"d"``: ``loss``, ``d_real`` = D(x), ``d_fake`` = D(G(z)) (``[N]`` each, plus the
        subclass's extra terms); ``"g"``: ``loss``. ``x`` only sets the batch size in ``"g"``."""
        self._network(phase)  # rejects unknown phases
        if phase == "d":
            return self.discriminator_losses(self.to_unit(x), self.fake_batch(x.shape[0], x.device))
        z = torch.randn(x.shape[0], self.z_dim, device=x.device)
        with frozen(self.discriminator):
            fake_out = self.discriminator(self.generator(z))  # D(G(z)), [N]
        return {"loss": G_LOSSES[self.loss](fake_out)}

    def discriminator_losses(self, y: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """D-phase terms for real data ``y`` and detached fakes ``fake``, both ``[N, C, H, W]`` in
        ``[-1, 1]``; subclasses add regularizers (WGAN-GP's gradient penalty)."""
        real_out, fake_out = self.discriminator(y), self.discriminator(fake)  # D(x), D(G(z)): [N]
        return {
            "loss": D_LOSSES[self.loss](real_out, fake_out),
            "d_real": real_out.detach(),
            "d_fake": fake_out.detach(),
        }

    def fake_batch(self, n: int, device: torch.device) -> Tensor:
        """``[n, C, H, W]`` fakes G(z) in ``[-1, 1]`` from the global RNG, without a graph."""
        with torch.no_grad():
            return self.generator(torch.randn(n, self.z_dim, device=device)).detach()

    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """Option ``truncation``: null (none) or t > 0."""
        check_sampler_options(sampler, SAMPLER_OPTIONS, cls.__name__)
        if sampler.get("truncation") is not None:
            option_number("sampler.truncation", sampler["truncation"], low=0, low_open=True)

    def sample(self, n: int, *, generator: Generator = None, **sampler: Any) -> Sampled:
        """``[n, C, H, W]`` int64 levels; one network evaluation per sample.

        Sampler options: ``truncation`` (``None`` or t > 0): draw z from N(0, I) truncated to
        ``[-t, t]`` per coordinate (the truncation trick) by inverse-CDF sampling.
        """
        self.validate_sampler(sampler, {})
        z = self.latent(n, generator=generator, truncation=sampler.get("truncation"))
        return Sampled.constant(self.to_levels(self.generator(z)), 1)

    def nll(self, x: Tensor, *, generator: rnd.Generator = None) -> Tensor:
        """No likelihood: ``x`` ``[N, C, H, W]`` gets ``NotImplementedError`` (kind ``none``)."""
        raise NotImplementedError(f"{type(self).__name__} has no likelihood (likelihood='none')")

    # -- helpers --------------------------------------------------------------------------------
    def _network(self, phase: str) -> nn.Module:
        if phase == "d":
            return self.discriminator
        if phase == "g":
            return self.generator
        raise ValueError(f"unknown phase {phase!r} for {type(self).__name__}; valid: d, g")

    def latent(
        self, n: int, *, generator: Generator = None, truncation: float | None = None
    ) -> Tensor:
        """``[n, z_dim]`` z ~ N(0, I), or truncated to ``[-t, t]``: z = Φ⁻¹(Φ(-t) + u (Φ(t) -
        Φ(-t))) with u ~ U[0, 1). Row i is drawn from ``generator[i]`` when a list is given."""
        device = next(self.generator.parameters()).device
        if truncation is None:
            return rnd.randn((n, self.z_dim), generator=generator, device=device)
        t = float(truncation)
        if not t > 0:
            raise ValueError(f"truncation must be > 0, got {truncation}")
        u = rnd.rand((n, self.z_dim), generator=generator, device=device, dtype=torch.float64)
        lo = torch.special.ndtr(torch.tensor(-t, dtype=torch.float64, device=device))
        z = torch.special.ndtri(lo + u * (1 - 2 * lo))
        return z.clamp(-t, t).float()

    def to_unit(self, x: Tensor) -> Tensor:
        """Levels ``{0..K-1}`` -> floats in ``[-1, 1]``."""
        return x.float() / (self.levels - 1) * 2 - 1

    def to_levels(self, y: Tensor) -> Tensor:
        """Floats in ``[-1, 1]`` -> int64 levels, rounded and clamped to ``[0, K)``."""
        return torch.round((y.float() + 1) / 2 * (self.levels - 1)).clamp(0, self.levels - 1).long()
