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

Options every GAN takes (its yaml sets the model's defaults; checked with errors naming the key):

- ``loss``: ``nonsaturating`` | ``hinge`` | ``wasserstein`` (:mod:`genbench.models.gan.losses`);
  ``null`` keeps the model's own (:attr:`GAN.default_loss`).
- ``reg``: ``none`` | ``r1`` | ``r2`` | ``gp``, a penalty added to the D loss: R1 = γ/2
  ‖∇_x D(x)‖² at the real batch, R2 the same at the fake batch (Mescheder et al. 2018), gp =
  λ (‖∇_x̂ D(x̂)‖ - 1)² at random interpolates (Gulrajani et al. 2017); ``null`` keeps the model's
  own (:attr:`GAN.default_reg`: ``gp`` for WGAN-GP, ``none`` otherwise). The term is logged
  under its name (``d/r1``, ``d/gp``).
- ``reg_weight``: γ or λ (>= 0).
- ``reg_interval``: lazy regularization (Karras et al. 2020, StyleGAN2 sec. 4 and App. B): the
  penalty is computed on every k-th D step only, with weight k·γ, so its average over steps is
  the same; the logged term is what was added (k·γ/2 ‖∇‖² on those steps, 0 on the others). The
  D-step counter is a buffer (``reg_steps``, present when k > 1), so a resumed run regularizes on
  the same steps. (StyleGAN2 also rescales Adam's lr and betas by k/(k+1); set them in
  ``d_optimizer`` if wanted.)
- ``augment``: ``none`` | ``diffaugment`` | ``ada``, differentiable augmentation of every image
  D sees, real and generated, in both phases (:mod:`genbench.models.gan.augment`);
  ``diffaugment`` is DiffAugment's policy (``[color, translation, cutout]``), ``ada`` ADA's
  settings (``target`` 0.6, ``interval`` 4, ``speed_images``, ``p``, ``transforms``). With ADA
  the D phase logs ``ada_p`` (p used in that step) and ``ada_sign`` (sign(D(x_real)) per
  example, whose mean is r_t); p is the buffer ``augment_pipe.p`` (checkpointed).
- ``d_optimizer`` / ``g_optimizer``: per-phase optimizer overrides, e.g. separate learning rates
  for D and G (TTUR, Heusel et al. 2017: ``model.d_optimizer.lr=4e-4 model.g_optimizer.lr=1e-4``);
  the rest comes from ``conf/optimizer``.
- ``toy``: overrides of any of the model's own options (``{hidden: 256, d_optimizer: {lr:
  1e-3}}``), merged into them when the data are 2-D toys (:func:`genbench.data.base.is_toy`:
  ``H = W = 1``), so one yaml carries the settings that work on images and on toys.

Conditional GANs (``num_classes`` C > 0, ``model.conditional=true``; layers in
:mod:`genbench.models.gan.conditional`): the generator is G(z, y) and the discriminator D(x, y)
(``cond_d``: ``projection`` or ``ac``). The fakes of both phases are drawn with the labels of the
real batch (fake row i gets real row i's label), so the fake labels follow the data's class
frequencies and cost no random draws. With ``cond_d: ac`` the D loss gains ``ac_weight`` times
the cross-entropy of D's class logits on the real and the fake batch (terms ``ac_real``,
``ac_fake``) and the G loss the cross-entropy on the fake batch (term ``ac``), as in AC-GAN
(Odena et al. 2017).
"""

from __future__ import annotations

import contextlib
import functools
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
from genbench.models.gan.augment import ADA, DIFFAUGMENT_POLICY, build_augment
from genbench.models.gan.conditional import COND_D, classifier_terms
from genbench.models.gan.losses import (
    D_LOSSES,
    G_LOSSES,
    REGULARIZERS,
    gradient_penalty,
    interpolate,
    r1_penalty,
)
from genbench.models.gan.toy import applying_toy_overrides, plain
from genbench.models.options import option_choice, option_number
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
            "betas": [0.5, 0.999]}``); the rest comes from ``conf/optimizer``. Different
            learning rates for the two phases are the two time-scale update rule (TTUR).
        loss: ``nonsaturating``, ``hinge`` or ``wasserstein``; ``None``: :attr:`default_loss`.
        reg: ``none``, ``r1``, ``r2`` or ``gp``; ``None``: :attr:`default_reg`.
        reg_weight: γ of R1/R2, λ of the gradient penalty (>= 0).
        reg_interval: k of lazy regularization: the penalty on every k-th D step, weighted k·γ.
        augment: ``none``, ``diffaugment`` or ``ada``; ``diffaugment``: DiffAugment's policy;
            ``ada``: ADA's settings (:data:`~genbench.models.gan.augment.ADA_DEFAULTS`).
        toy: overrides of the constructor's arguments for 2-D toy data (merged in by the
            subclass's wrapped ``__init__`` before it runs; stored here as ``toy_options``).
        num_classes: 0 (unconditional) or the number of classes C of a conditional GAN.
        cond_d: conditional discriminator head, ``projection`` (Miyato & Koyama 2018) or ``ac``
            (auxiliary classifier, Odena et al. 2017); unused when unconditional.
        ac_weight: weight of the auxiliary classifier's cross-entropy (``cond_d: ac``), >= 0.

    Subclasses assign ``self.generator`` and ``self.discriminator`` after calling this, and set
    :attr:`default_loss` / :attr:`default_reg`. A subclass's ``__init__`` is wrapped to apply
    ``toy`` (it must take ``toy`` as a keyword and pass it on here).

    The D phase's terms (:meth:`discriminator_losses`): ``loss``, ``d_real``, ``d_fake`` and,
    with a regularizer, the term under its name (``r1``, ``r2``, ``gp``), with ``cond_d: ac``
    ``ac_real`` / ``ac_fake``; the G phase's: ``loss`` (and ``ac``). Subclasses can override
    :meth:`judge` (D on a batch: output and class logits) and :meth:`regularizer` (the penalty
    ``[N]``), which every loss and penalty go through.
    """

    family: ClassVar[str] = "gan"
    conditional_support: ClassVar[bool] = True
    likelihood: ClassVar[str] = "none"
    select_best: ClassVar[bool] = False
    #: the objective when ``loss`` is not given, a key of ``D_LOSSES`` / ``G_LOSSES``
    default_loss: ClassVar[str] = "nonsaturating"
    #: the penalty when ``reg`` is not given, one of ``REGULARIZERS``
    default_reg: ClassVar[str] = "none"

    generator: nn.Module
    discriminator: nn.Module

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = applying_toy_overrides(cls.__dict__["__init__"])  # type: ignore[method-assign]

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        z_dim: int,
        d_steps: int = 1,
        d_optimizer: Mapping[str, Any] | None = None,
        g_optimizer: Mapping[str, Any] | None = None,
        loss: str | None = None,
        reg: str | None = None,
        reg_weight: float = 10.0,
        reg_interval: int = 1,
        augment: str = "none",
        diffaugment: Sequence[str] = DIFFAUGMENT_POLICY,
        ada: Mapping[str, Any] | None = None,
        toy: Mapping[str, Any] | None = None,
        num_classes: int = 0,
        cond_d: str = "projection",
        ac_weight: float = 1.0,
    ) -> None:
        super().__init__(shape, levels, num_classes)
        self.cond_d = option_choice("model.cond_d", cond_d, COND_D)
        self.ac_weight = option_number("model.ac_weight", ac_weight, low=0)
        self.loss = option_choice(
            "model.loss", self.default_loss if loss is None else loss, sorted(D_LOSSES)
        )
        self.reg = option_choice(
            "model.reg", self.default_reg if reg is None else reg, REGULARIZERS
        )
        self.reg_weight = option_number("model.reg_weight", reg_weight, low=0)
        self.reg_interval = int(
            option_number("model.reg_interval", reg_interval, low=1, integer=True)
        )
        self.z_dim = int(option_number("model.z_dim", z_dim, low=1, integer=True))
        self.d_steps = int(option_number("model.d_steps", d_steps, low=1, integer=True))
        self.d_optimizer = optimizer_overrides(d_optimizer)
        self.g_optimizer = optimizer_overrides(g_optimizer)
        for key, opt in (("d_optimizer", self.d_optimizer), ("g_optimizer", self.g_optimizer)):
            if "lr" in opt:
                option_number(f"model.{key}.lr", opt["lr"], low=0, low_open=True)
        self.toy_options = plain(toy or {})
        self.augment = augment
        self.augment_pipe = build_augment(augment, diffaugment=diffaugment, ada=plain(ada))
        if self.reg != "none" and self.reg_interval > 1:  # D steps taken, for lazy regularization
            self.register_buffer("reg_steps", torch.zeros((), dtype=torch.long))

    # -- contract -------------------------------------------------------------------------------
    @property
    def phases(self) -> tuple[Phase, ...]:
        lazy = self.reg_interval if self.reg != "none" else 1  # the penalty's D-step cycle
        return (
            Phase("d", repeat=self.d_steps, optimizer=self.d_optimizer, period=lazy),
            Phase("g", optimizer=self.g_optimizer),
        )

    def training_state(self) -> dict[str, float]:
        """With ADA: ``{"ada_p": p}``, the augmentation probability training ended with."""
        if isinstance(self.augment_pipe, ADA):
            return {"ada_p": float(self.augment_pipe.p)}
        return {}

    def parameters_for(self, phase: str) -> Iterable[nn.Parameter]:
        """``"d"``: discriminator parameters; ``"g"``: generator parameters."""
        return self._network(phase).parameters()

    def training_losses(self, x: Tensor, phase: str, y: Tensor | None = None) -> dict[str, Tensor]:
        """``"d"``: ``loss``, ``d_real`` = D(x), ``d_fake`` = D(G(z)) (``[N]`` each, plus the
        regularizer's term and the subclass's extra terms); ``"g"``: ``loss``. ``x`` only sets
        the batch size in ``"g"``. A conditional GAN takes the batch's labels ``y`` ``[N]``; its
        fakes get the same labels (``ac`` adds the terms of the module docstring)."""
        self._network(phase)  # rejects unknown phases
        labels = self.labels(y, x.shape[0], x.device)
        if phase == "d":
            fake = self.fake_batch(x.shape[0], x.device, labels)
            return self.discriminator_losses(self.to_unit(x), fake, labels)
        z = torch.randn(x.shape[0], self.z_dim, device=x.device)
        with frozen(self.discriminator):
            fake_out, logits = self.judge(self.generate(z, labels), labels)  # D(G(z, y), y), [N]
        out = {"loss": G_LOSSES[self.loss](fake_out)}
        return classifier_terms(out, {"ac": (logits, labels)}, self.ac_weight)

    def judge(self, y: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """D's raw outputs ``[N]`` on ``y`` ``[N, C, H, W]`` in ``[-1, 1]`` (augmented first,
        given the labels ``[N]`` when conditional) and, with ``cond_d: ac``, its class logits
        ``[N, C]`` (else ``None``)."""
        if self.augment_pipe is not None:
            y = self.augment_pipe(y)
        if labels is None:
            return self.discriminator(y), None
        return self.discriminator.judge(y, labels)

    def discriminate(self, y: Tensor, labels: Tensor | None = None) -> Tensor:
        """D's raw outputs ``[N]`` on ``y`` ``[N, C, H, W]`` in ``[-1, 1]`` (D(x, y) given the
        labels ``[N]`` when conditional); every loss and penalty goes through :meth:`judge`."""
        return self.judge(y, labels)[0]

    def discriminator_losses(
        self, y: Tensor, fake: Tensor, labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """D-phase terms for real data ``y`` and detached fakes ``fake``, both ``[N, C, H, W]`` in
        ``[-1, 1]``, with the labels ``[N]`` of both (conditional GANs): ``loss`` (the objective
        plus the penalty of ``reg`` and the AC terms), ``d_real``, ``d_fake``, the penalty under
        its name (``r1``, ``r2``, ``gp``) and ``ac_real`` / ``ac_fake``, all ``[N]``."""
        real_out, real_logits = self.judge(y, labels)  # D(x, y), [N]
        fake_out, fake_logits = self.judge(fake, labels)  # D(G(z, y), y), [N]
        out = {
            "loss": D_LOSSES[self.loss](real_out, fake_out),
            "d_real": real_out.detach(),
            "d_fake": fake_out.detach(),
        }
        if isinstance(self.augment_pipe, ADA):
            out["ada_p"] = torch.full_like(out["d_real"], float(self.augment_pipe.p))
            out["ada_sign"] = out["d_real"].sign()
            if self.training and torch.is_grad_enabled():
                self.augment_pipe.observe(real_out)
        if self.reg != "none":
            penalty = self.regularizer(y, fake, labels)
            out["loss"] = out["loss"] + penalty
            out[self.reg] = penalty.detach()
        terms = {"ac_real": (real_logits, labels), "ac_fake": (fake_logits, labels)}
        return classifier_terms(out, terms, self.ac_weight)

    def regularizer(self, y: Tensor, fake: Tensor, labels: Tensor | None = None) -> Tensor:
        """``[N]`` the ``reg`` penalty for real ``y`` and fake ``fake`` ``[N, C, H, W]`` (of a
        conditional D at the pair's labels ``[N]``: ∇_x D(x, y)), weighted
        ``reg_weight * reg_interval`` on the D steps it is due (every ``reg_interval``-th, counted
        in training only) and 0 on the others."""
        k = self.reg_interval
        if k > 1:
            counting = self.training and torch.is_grad_enabled()
            due = int(self.reg_steps) % k == 0
            if counting:
                self.reg_steps += 1
            if not due:
                return torch.zeros(y.shape[0], device=y.device)
        weight = self.reg_weight * k
        critic = self.discriminate  # D(x), or D(x, y) with the pair's labels: [N]
        if labels is not None:
            critic = functools.partial(self.discriminate, labels=labels)
        if self.reg == "r1":
            return r1_penalty(critic, y, weight)
        if self.reg == "r2":
            return r1_penalty(critic, fake, weight)
        eps = torch.rand(y.shape[0], device=y.device)  # ε ~ U[0, 1], one per pair
        return gradient_penalty(critic, interpolate(y, fake, eps), weight)

    def generate(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """G(z), or G(z, y) given labels ``[N]``: ``[N, C, H, W]`` for latents ``[N, z_dim]``."""
        return self.generator(z) if labels is None else self.generator(z, labels)

    def fake_batch(self, n: int, device: torch.device, labels: Tensor | None = None) -> Tensor:
        """``[n, C, H, W]`` fakes G(z) (G(z, y) given labels ``[n]``) in ``[-1, 1]`` from the
        global RNG, without a graph."""
        with torch.no_grad():
            return self.generate(torch.randn(n, self.z_dim, device=device), labels).detach()

    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """Option ``truncation``: null (none) or t > 0."""
        check_sampler_options(sampler, SAMPLER_OPTIONS, cls.__name__)
        if sampler.get("truncation") is not None:
            option_number("sampler.truncation", sampler["truncation"], low=0, low_open=True)

    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """``[n, C, H, W]`` int64 levels (of classes ``y`` ``[n]`` for a conditional GAN); one
        network evaluation per sample.

        Sampler options: ``truncation`` (``None`` or t > 0): draw z from N(0, I) truncated to
        ``[-t, t]`` per coordinate (the truncation trick) by inverse-CDF sampling.
        """
        self.validate_sampler(sampler, {})
        z = self.latent(n, generator=generator, truncation=sampler.get("truncation"))
        labels = self.labels(y, n, z.device)
        return Sampled.constant(self.to_levels(self.generate(z, labels)), 1)

    def nll(self, x: Tensor, *, y: Tensor | None = None, generator: rnd.Generator = None) -> Tensor:
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
