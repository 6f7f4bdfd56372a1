"""The model contract every family obeys.

The runner asks a model for losses, the evaluator asks it for samples (with what they cost) and,
where it has one, for a negative log-likelihood together with *what kind* of number that is.
Nothing else is required; a model may declare further likelihood estimators
(:meth:`GenerativeModel.likelihood_estimators`), which the evaluator runs the same way for all.

Data cross this boundary as integer levels: ``x`` is a ``[N, C, H, W]`` integer tensor with values
in ``{0, ..., levels - 1}``. Each family owns its own preprocessing (dequantization, scaling to
``[-1, 1]``, one-hot ...) and documents it.

A model built with ``num_classes > 0`` (``model.conditional=true``: the runner fills in the
dataset's number of classes) is *conditional*: ``training_losses``, ``sample``, ``nll`` and
``bound_terms`` take the class labels ``y`` (``[N]`` int64 in ``[0, num_classes)``) as the keyword
``y`` and model p(x | y). Unconditional models (``num_classes = 0``, the default) are called
exactly as before, without ``y``. A class declares that it can be built conditional with
``conditional_support = True``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from genbench.models.options import unknown_options

Family = Literal["autoregressive", "flow", "vae", "gan", "diffusion"]
Likelihood = Literal["exact", "dequantized", "elbo", "vlb", "ode", "none"]
Generator = torch.Generator | Sequence[torch.Generator] | None

FAMILIES: tuple[str, ...] = get_args(Family)
LIKELIHOODS: tuple[str, ...] = get_args(Likelihood)
#: likelihood kinds whose number is an upper bound on the discrete NLL (printed with ``≤``)
BOUND_KINDS: frozenset[str] = frozenset({"dequantized", "elbo", "vlb"})
#: likelihood kinds that are stochastic estimates of the exact value
ESTIMATE_KINDS: frozenset[str] = frozenset({"ode"})
#: what an estimator's number is: the exact NLL, an upper bound on it, or a stochastic estimate
EstimatorKind = Literal["exact", "bound", "estimate"]
ESTIMATOR_KINDS: tuple[str, ...] = get_args(EstimatorKind)


@dataclass(frozen=True)
class Phase:
    """One optimizer of a model: which parameters it trains and how often.

    Attributes:
        name: phase name passed to ``training_losses`` and ``parameters_for``.
        repeat: optimizer steps of this phase per training step (a WGAN critic uses 5).
        optimizer: keyword overrides for this phase's optimizer (e.g. ``{"lr": 1e-4,
            "betas": (0.0, 0.9)}``); everything else comes from ``conf/optimizer``.
        period: optimizer steps of this phase after which its cost repeats: a term added
            only on every k-th step (lazy regularization) makes it k. A FLOP budget charges the
            mean cost over one period, not the cost of the first step.
    """

    name: str = "main"
    repeat: int = 1
    optimizer: Mapping[str, Any] = field(default_factory=dict)
    period: int = 1


@dataclass(frozen=True)
class Sampled:
    """What :meth:`GenerativeModel.sample` returns: the samples and what they cost.

    Attributes:
        x: ``[N, C, H, W]`` int64 levels in ``[0, K)``.
        nfe: ``[N]`` float64 (CPU) network evaluations spent on each sample, as counted by the
            call that drew it (an adaptive solver reports the steps it took for that sample).
    """

    x: Tensor
    nfe: Tensor

    def __post_init__(self) -> None:
        nfe = torch.as_tensor(self.nfe).to("cpu", torch.float64)
        if tuple(nfe.shape) != (self.x.shape[0],):
            raise ValueError(
                f"nfe must be [N] = [{self.x.shape[0]}] (one count per sample), "
                f"got {tuple(nfe.shape)}"
            )
        object.__setattr__(self, "nfe", nfe)

    @classmethod
    def constant(cls, x: Tensor, nfe: float) -> Sampled:
        """``x`` ``[N, C, H, W]`` levels that cost ``nfe`` network evaluations each."""
        return cls(x, torch.full((x.shape[0],), float(nfe), dtype=torch.float64))


@dataclass(frozen=True)
class NllEstimate:
    """What a likelihood estimator returns for a batch of ``N`` examples.

    Attributes:
        nll: ``[N]`` negative log-likelihood of the discrete examples in nats.
        nfe: ``[N]`` network evaluations spent per example, or ``None`` when not counted.
        settings: protocol fields that depend on the call's options (solver, tolerances, number
            of probes ...); recorded with every number.
    """

    nll: Tensor
    nfe: Tensor | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


#: ``fn(x, *, generator, **options) -> NllEstimate`` (and ``y=`` labels ``[N]`` for a conditional
#: model): x is ``[N, C, H, W]`` levels; every random
#: draw comes from ``generator`` (one per example from the evaluator, so results do not depend
#: on the batch); ``options`` come from ``eval.estimator_options.<name>``
EstimatorFn = Callable[..., NllEstimate]


@dataclass(frozen=True)
class LikelihoodEstimator:
    """An optional likelihood estimator a model offers beside ``nll``.

    The evaluator reports it as ``nll_<name>`` (nats), ``bpd_<name>`` (bits/dim) and, when the
    estimator counts them, ``nfe_<name>`` (network evaluations per example).

    Attributes:
        kind: ``exact``, ``bound`` (an upper bound on the NLL, printed ``≤``) or ``estimate``
            (stochastic, printed ``≈``).
        fn: the estimator (:data:`EstimatorFn`).
        protocol: fixed protocol fields recorded with its numbers (the evaluator adds
            ``likelihood: <name>``, the seed and the call's ``settings``).
    """

    kind: EstimatorKind
    fn: EstimatorFn
    protocol: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ESTIMATOR_KINDS:
            raise ValueError(f"estimator kind must be one of {ESTIMATOR_KINDS}, got {self.kind!r}")
        if not callable(self.fn):
            raise ValueError(f"estimator fn must be callable, got {type(self.fn).__name__}")


def likelihood_kind(likelihood: str) -> str:
    """Metric kind of a likelihood number: ``exact``, ``bound``, ``estimate`` or ``none``."""
    if likelihood in BOUND_KINDS:
        return "bound"
    if likelihood in ESTIMATE_KINDS:
        return "estimate"
    return likelihood if likelihood in ("exact", "none") else "unknown"


class GenerativeModel(nn.Module, abc.ABC):
    """Base class of every genbench model.

    Args:
        shape: data shape ``(C, H, W)`` (passed by the runner from the dataset).
        levels: number of discrete levels K of each sub-pixel (passed by the runner).

    Subclasses set ``family`` and ``likelihood`` and implement ``training_losses``, ``sample`` and
    ``nll``; they may override ``likelihood_estimators``, ``bound_terms``, ``nll_settings`` and
    ``resolve_sampler``. Models never call ``backward`` or ``step``: the runner owns
    optimization.
    """

    family: ClassVar[Family]
    likelihood: ClassVar[Likelihood]
    #: whether the runner may pick the checkpoint with the lowest validation ``loss`` (a GAN's
    #: generator loss says nothing about quality, so GANs keep the last weights)
    select_best: ClassVar[bool] = True

    #: whether the class can be built conditional (``num_classes > 0``); see the module docstring
    conditional_support: ClassVar[bool] = False

    def __init__(self, shape: Sequence[int], levels: int, num_classes: int = 0) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
        if int(levels) < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.shape: tuple[int, int, int] = shape  # (C, H, W)
        self.levels: int = int(levels)
        if int(num_classes) < 0 or (int(num_classes) and not self.conditional_support):
            raise ValueError(
                f"{type(self).__name__} cannot be built conditional (num_classes={num_classes}): "
                "it has no conditional mode"
            )
        self.num_classes: int = int(num_classes)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "__abstractmethods__", None):
            return
        if getattr(cls, "family", None) not in FAMILIES:
            raise TypeError(f"{cls.__name__}.family must be one of {FAMILIES}")
        if getattr(cls, "likelihood", None) not in LIKELIHOODS:
            raise TypeError(f"{cls.__name__}.likelihood must be one of {LIKELIHOODS}")

    @property
    def dims(self) -> int:
        """D = C * H * W, the number of sub-pixels per example."""
        c, h, w = self.shape
        return c * h * w

    @property
    def conditional(self) -> bool:
        """Whether the model is conditional: it models p(x | y) and takes labels ``y``."""
        return self.num_classes > 0

    def labels(
        self, y: Tensor | None, n: int, device: torch.device | str | None = None
    ) -> Tensor | None:
        """Check the labels ``y`` of a batch of ``n`` examples: ``[n]`` int64 in
        ``[0, num_classes)`` on ``device`` for a conditional model, ``None`` for an unconditional
        one. Raises ``ValueError`` when an unconditional model gets labels or a conditional one
        gets none."""
        if not self.conditional:
            if y is not None:
                raise ValueError(f"{type(self).__name__} is unconditional: it takes no labels y")
            return None
        if y is None:
            raise ValueError(
                f"{type(self).__name__} is conditional ({self.num_classes} classes): "
                "labels y are required"
            )
        y = torch.as_tensor(y)
        if tuple(y.shape) != (n,) or y.dtype.is_floating_point:
            raise ValueError(
                f"labels y must be [N] = [{n}] integers, got {tuple(y.shape)} {y.dtype}"
            )
        if n and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"labels y must lie in [0, {self.num_classes}), "
                f"got [{int(y.min())}, {int(y.max())}]"
            )
        return y.to(device=device, dtype=torch.long)

    @property
    def phases(self) -> tuple[Phase, ...]:
        """Optimizers of this model, in the order the runner steps them."""
        return (Phase("main"),)

    def parameters_for(self, phase: str) -> Iterable[nn.Parameter]:
        """Parameters trained by ``phase`` (default: all of them)."""
        return self.parameters()

    @abc.abstractmethod
    def training_losses(self, x: Tensor, phase: str, y: Tensor | None = None) -> dict[str, Tensor]:
        """Per-example training terms.

        Args:
            x: ``[N, C, H, W]`` integer levels in ``[0, K)``.
            phase: one of ``self.phases``' names.
            y: ``[N]`` class labels of a conditional model (``None``, and not passed, otherwise).

        Returns:
            dict of ``[N]`` tensors; ``"loss"`` is required (the runner optimizes its mean), every
            other key is logged as it is.
        """

    @abc.abstractmethod
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """Draw ``n`` samples and count what they cost.

        Args:
            n: number of samples.
            y: ``[n]`` class labels to condition on (conditional models; ``None`` otherwise).
            generator: ``None`` (global RNG), one ``torch.Generator``, or a sequence of ``n``
                generators, one per sample, so sample *i* does not depend on the batch size (draw
                through :mod:`genbench.nn.random`).
            sampler: sampler options from ``conf/sampler`` (e.g. ``steps``, ``eta``,
                ``temperature``); unknown options raise ``ValueError``.

        Returns:
            :class:`Sampled`: ``x`` ``[n, C, H, W]`` int64 levels in ``[0, K)`` and ``nfe``
            ``[n]``, the network evaluations each sample took (nothing is left behind in
            attributes: the cost of a call is in its result).
        """

    @abc.abstractmethod
    def nll(self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None) -> Tensor:
        """``[N]`` negative log-likelihood of the discrete ``x`` in nats (exact or an upper bound,
        as ``likelihood`` says); for a conditional model -log p(x | y) with labels ``y`` ``[N]``.
        Models with ``likelihood = "none"`` raise ``NotImplementedError``.

        ``generator``: where a stochastic bound draws its noise (dequantization, latents,
        timesteps): ``None`` (global RNG), one generator, or one per example (the evaluator
        passes those, seeded from ``(eval.seed, example index)``, so an example's number does
        not depend on the batch it is scored in). A model without randomness ignores it; a model
        whose ``nll`` takes no ``generator`` gets the global RNG, seeded per batch."""

    def nll_settings(self, **options: Any) -> dict[str, Any]:
        """Settings the value of :meth:`nll` depends on beyond the weights (e.g. a VAE's
        ``iwae_samples`` or a flow's ``dequant_samples``: importance-weighted bounds tighten as k
        grows), as JSON scalars. ``options`` are the evaluation options the evaluator passes to
        ``nll`` (``eval.dequant_samples`` as ``dequant_samples``, when ``nll`` takes it). The
        evaluator records the result as ``protocol["nll_settings"]`` of the ``nll`` and ``bpd``
        rows, and the leaderboard never ranks bits/dim computed with different values of one
        field together. Default: none."""
        return {}

    def bound_terms(
        self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None
    ) -> dict[str, Tensor]:
        """Extra per-example likelihood terms, ``[N]`` in nats, reported beside ``nll`` for levels
        ``x`` ``[N, C, H, W]`` (e.g. a VAE's ``neg_elbo``, ``recon`` and ``kl``; labels ``y`` of a
        conditional model), with noise from ``generator`` as in :meth:`nll`. Default: none."""
        return {}

    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """Check sampler options before a model exists (no weights, no data): commands call it
        when they start, so a bad option stops them before any work instead of after training.

        Args:
            sampler: the options ``sample`` would get (``conf/sampler``).
            hparams: the model's constructor arguments (its config over the signature's
                defaults; no ``shape`` or ``levels``) and ``conditional`` (whether
                ``model.conditional=true``), for options whose range depends on them.

        Raises:
            :class:`~genbench.models.options.OptionError` naming the config key, the bad value
            and what is valid. ``sample`` and ``resolve_sampler`` apply the same check.

        Default: accepts anything (a model that does not override it checks in ``sample``).
        """

    @classmethod
    def validate_estimator(
        cls, name: str, options: Mapping[str, Any], hparams: Mapping[str, Any], *, key: str
    ) -> None:
        """Check the options of the likelihood estimator ``name`` (e.g. ``ode``) like
        :meth:`validate_sampler`; ``key`` is the config key the options come from. Default:
        accepts anything."""

    def resolve_sampler(self, **sampler: Any) -> dict[str, Any]:
        """The sampler settings ``sample(**sampler)`` actually uses (model defaults filled in);
        recorded in the protocol of every sample metric; bad options raise an
        :class:`~genbench.models.options.OptionError`. Default: the options as given, checked by
        :meth:`validate_sampler` (without hyperparameters)."""
        self.validate_sampler(sampler, {})
        return dict(sampler)

    def likelihood_estimators(self) -> dict[str, LikelihoodEstimator]:
        """Optional likelihood estimators by name (a lowercase identifier, e.g. ``ode``), run by
        the evaluator when ``eval.estimators`` names them. Default: none."""
        return {}

    def training_state(self) -> dict[str, float]:
        """Numbers that say where training left the model rather than how good it is (a GAN's
        final ADA probability ``ada_p``), by metric name; the evaluator records each as a
        metric of split ``train`` (:mod:`genbench.eval.state`, which declares how they read:
        never ranked). Default: none."""
        return {}


def with_labels(model: GenerativeModel, y: Tensor | None) -> dict[str, Tensor]:
    """Keyword arguments that pass labels ``y`` ``[N]`` to a conditional ``model``
    (``{"y": y}``) and nothing to an unconditional one (``{}``), so callers stay family-agnostic
    and unconditional models are called exactly as before. A conditional model without labels
    is an error."""
    if not getattr(model, "conditional", False):
        return {}
    if y is None:
        raise ValueError(f"{type(model).__name__} is conditional: labels y are required")
    return {"y": y}


def check_sampler_options(
    sampler: Mapping[str, Any], allowed: Iterable[str], model: str, *, prefix: str = "sampler"
) -> None:
    """Raise an :class:`~genbench.models.options.OptionError` (a ``ValueError``) naming the first
    sampler option ``model`` does not understand (config key ``<prefix>.<option>``)."""
    unknown_options(sampler, allowed, model, prefix=prefix)
