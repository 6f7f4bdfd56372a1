"""The conformance kit (genbench.testing) passes a correct model and names what each broken
variant of it breaks: the check and the problem."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from genbench.models.base import GenerativeModel, LikelihoodEstimator, NllEstimate, Phase
from genbench.nn.random import randn
from genbench.testing import CHECKS, ConformanceError, check_model
from genbench.testing.subject import enumeration_size

FIXTURE = Path(__file__).parent / "fixtures" / "genbench-tinylab" / "tinylab" / "histogram.py"


def _load_histogram() -> type[GenerativeModel]:
    """tinylab's Histogram, loaded from its file (the package need not be installed)."""
    spec = importlib.util.spec_from_file_location("_kit_histogram", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Histogram


Histogram = _load_histogram()


def test_a_correct_model_passes_every_check():
    report = check_model(Histogram, shape=(1, 4, 4), levels=4, init_scale=0.5)
    assert list(report) == list(CHECKS)
    assert report["estimators"] == "skipped: no likelihood estimators declared"
    assert report["conditional"].startswith("skipped: no conditional mode")
    skipped = ("estimators", "conditional")
    assert all(v == "passed" for k, v in report.items() if k not in skipped)


def test_unknown_check_names_are_refused():
    with pytest.raises(ValueError, match=r"unknown check\(s\) \['nope'\]"):
        check_model(Histogram, only=["nope"])


@pytest.mark.parametrize(
    "shape,levels,expect",
    [
        ((1, 4, 4), 4, ((1, 2, 2), 4)),  # 4^4 = 256 inputs
        ((1, 8, 8), 17, ((1, 2, 2), 4)),  # the level count shrinks to fit
        ((2, 1, 1), 64, ((2, 1, 1), 16)),  # 2-D toys: 16^2
        ((3, 8, 8), 256, ((3, 1, 1), 6)),  # colour: 2^12 > 256, so one pixel
        ((2, 1, 1), 3, ((2, 1, 1), 3)),  # small enough as it is
    ],
)
def test_enumeration_size_fits_the_budget(shape, levels, expect):
    got = enumeration_size(shape, levels)
    assert got == expect and expect[1] ** math.prod(expect[0]) <= 256


# -- broken variants: each breaks one rule ---------------------------------------------------


class PerDimension(Histogram):
    def nll(self, x):
        return super().nll(x) / self.dims


class InBits(Histogram):
    def nll(self, x):
        return super().nll(x) / math.log(2)


class MeanLoss(Histogram):
    def training_losses(self, x, phase="main"):
        return {"loss": super().training_losses(x, phase)["loss"].mean()}


class GlobalNoise(Histogram):
    def sample(self, n, *, generator=None, **sampler):
        return super().sample(n, generator=None, **sampler)


class BareTensor(Histogram):
    def sample(self, n, *, generator=None, **sampler):
        return super().sample(n, generator=generator, **sampler).x


class RemembersCost(Histogram):
    def sample(self, n, *, generator=None, **sampler):
        out = super().sample(n, generator=generator, **sampler)
        self.last_nfe = float(out.nfe.sum())
        return out


class AcceptsAnything(Histogram):
    def sample(self, n, *, generator=None, **sampler):
        return super().sample(n, generator=generator)


class OptimisticBound(Histogram):
    likelihood = "elbo"

    def nll(self, x):
        return super().nll(x) - 0.5  # below the exact value: not an upper bound


class LooseBound(Histogram):
    likelihood = "elbo"

    def nll(self, x):  # a noisy bound at or above the exact value: passes
        return super().nll(x) + torch.rand(x.shape[0]).mul(0.5)


class NoneThatScores(Histogram):
    likelihood = "none"


class CountsCalls(Histogram):
    """Ramps a penalty with a call counter kept outside the state dict: resume cannot be
    exact."""

    def __init__(self, shape, levels, **kw):
        super().__init__(shape, levels, **kw)
        self.calls = 0

    def training_losses(self, x, phase="main"):
        self.calls += 1
        penalty = 0.01 * self.calls * self.logits.pow(2).sum()
        return {"loss": super().training_losses(x, phase)["loss"] + penalty}


class OwnGenerator(Histogram):
    """Draws training noise from a private generator that no checkpoint holds."""

    def __init__(self, shape, levels, **kw):
        super().__init__(shape, levels, **kw)
        self.rng = torch.Generator().manual_seed(0)

    def training_losses(self, x, phase="main"):
        jitter = torch.rand(x.shape[0], generator=self.rng)
        return {"loss": super().training_losses(x, phase)["loss"] * (1 + jitter)}


class NumpyNoise(Histogram):
    """Draws training noise from NumPy's global generator, which checkpoints hold: resumes."""

    def training_losses(self, x, phase="main"):
        jitter = torch.from_numpy(np.random.rand(x.shape[0])).float()
        return {"loss": super().training_losses(x, phase)["loss"] * (1 + jitter)}


class Opaque:
    pass


class PicklesState(Histogram):
    def get_extra_state(self):
        return Opaque()

    def set_extra_state(self, state):
        pass


class TwoPhase(Histogram):
    """Two phases, as GANs have: a toy critic ``d`` and the histogram ``g``."""

    def __init__(self, shape, levels, **kw):
        super().__init__(shape, levels, **kw)
        self.d = nn.Parameter(torch.ones(3))

    @property
    def phases(self):
        return (Phase("d"), Phase("g"))

    def parameters_for(self, phase):
        return [self.d] if phase == "d" else [self.logits]

    def training_losses(self, x, phase="main"):
        if phase == "d":
            return {"loss": (self.d.sum() * x.float().flatten(1).mean(1)).pow(2)}
        return super().training_losses(x, phase)


class DecaysInTheWrongPhase(TwoPhase):
    """Decays the critic's weights in place during phase ``g``."""

    def training_losses(self, x, phase="main"):
        if phase == "g":
            with torch.no_grad():
                self.d.mul_(0.99)
        return super().training_losses(x, phase)


class LeakyEstimator(Histogram):
    """An estimator whose noise is drawn for the whole batch from the global RNG."""

    def likelihood_estimators(self):
        def noisy(x, *, generator=None):
            return NllEstimate(self.nll(x) + randn((x.shape[0],)).abs())

        return {"noisy": LikelihoodEstimator("bound", noisy)}


class ExactEstimator(Histogram):
    def likelihood_estimators(self):
        def same(x, *, generator=None):
            return NllEstimate(self.nll(x), torch.ones(x.shape[0]), {"how": "table"})

        return {"table": LikelihoodEstimator("exact", same)}


class UnrecordableSettings(Histogram):
    """nll settings that no protocol can record (a tensor is not a JSON scalar)."""

    def nll_settings(self):
        return {"k": torch.tensor(3)}


class NotAModel:
    def __init__(self, shape, levels, **kw):
        pass


@pytest.mark.parametrize(
    "cls,check,message",
    [
        (PerDimension, "nll", "below the uniform distribution's D log K"),
        (PerDimension, "enumeration", "sum to"),
        (InBits, "enumeration", "not 1"),
        (MeanLoss, "losses", "term 'loss' has shape ()"),
        (GlobalNoise, "sample", "the same generators gave different samples"),
        (BareTensor, "sample", "returned a Tensor"),
        (RemembersCost, "sample", "left state behind in attributes: last_nfe"),
        (AcceptsAnything, "sample", "sample(not_an_option=1) was accepted"),
        (OptimisticBound, "enumeration", "> 1"),
        (NoneThatScores, "nll", "did not raise NotImplementedError"),
        (CountsCalls, "resume", "differs from 2 uninterrupted steps in model: logits"),
        (OwnGenerator, "resume", "in model: logits"),
        (PicklesState, "state_dict", "torch.load(weights_only=True)"),
        (
            DecaysInTheWrongPhase,
            "phases",
            "a step of phase 'g' changed parameters outside parameters_for('g'): d",
        ),
        (LeakyEstimator, "estimators", "example 2 scores"),
        (NotAModel, "declares", "not a GenerativeModel"),
        (UnrecordableSettings, "declares", "nll_settings() must return a dict of JSON scalars"),
    ],
)
def test_each_broken_variant_fails_its_check(cls, check, message):
    with pytest.raises(ConformanceError) as err:
        check_model(cls, only=[check], init_scale=0.5)
    text = str(err.value)
    assert f"{cls.__qualname__} fails the genbench contract check {check!r}" in text
    assert message in text, text


@pytest.mark.parametrize("cls", [LooseBound, ExactEstimator, TwoPhase, NumpyNoise])
def test_variants_within_the_contract_pass(cls):
    report = check_model(cls, init_scale=0.5)
    assert all(v == "passed" or v.startswith("skipped") for v in report.values()), report
    if cls is ExactEstimator:
        assert report["estimators"] == "passed"


def test_the_conditional_check_catches_a_model_that_ignores_its_labels():
    """A conditional class whose labels never reach its outputs fails the kit's check."""

    class Deaf(Histogram):
        conditional_support = True

        def __init__(self, shape, levels, num_classes=0, **kw):
            GenerativeModel.__init__(self, shape, levels, num_classes)
            self.logits = torch.nn.Parameter(0.5 * torch.randn(*self.shape, self.levels))
            self.lr = None

        def training_losses(self, x, phase="main", y=None):
            self.labels(y, len(x))
            return super().training_losses(x, phase)

        def nll(self, x, *, y=None):
            self.labels(y, len(x))
            return super().nll(x)

        def sample(self, n, *, y=None, generator=None, **sampler):
            self.labels(y, n)
            return super().sample(n, generator=generator, **sampler)

    with pytest.raises(ConformanceError, match="samples for label 0 and label 1 are identical"):
        check_model(Deaf, shape=(1, 2, 2), levels=4, only=["conditional"])
