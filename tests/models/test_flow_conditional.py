"""Class-conditional RealNVP / Glow (``num_classes > 0``): the per-class prior against a closed-form
diagonal Gaussian, the zero-initialised prior against the unconditional model, labels changing
samples and NLLs, the unconditional models against values computed before the conditional mode
existed, and a short training on toy_moons scored with the toy's exact class posterior."""

from __future__ import annotations

import math

import pytest
import torch

from genbench.data.toy2d import toy
from genbench.models.flows.class_prior import ClassPrior
from genbench.models.flows.glow import Glow
from genbench.models.flows.realnvp import RealNVP
from genbench.models.options import OptionError
from genbench.nn.random import per_sample_generators

pytestmark = pytest.mark.usefixtures("float64")  # closed forms in float64

K = 16


def build(kind: str, shape=(1, 4, 4), **kw) -> torch.nn.Module:
    """A tiny RealNVP or Glow, its random init drawn from seed 0."""
    torch.manual_seed(0)
    if kind == "realnvp":
        small = {"checker_couplings": 2, "channel_couplings": 2, "final_couplings": 2}
        return RealNVP(shape, K, flat_couplings=2, hidden=8, blocks=1, **small, **kw)
    return Glow(shape, K, steps=2, hidden=8, blocks=1, **kw)


def perturb(model: torch.nn.Module, scale: float = 0.1, seed: int = 1) -> torch.nn.Module:
    """Small random offsets on every parameter (a fresh flow is close to trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def levels(shape, n: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, K, (n, *shape), generator=torch.Generator().manual_seed(seed))


KINDS = [
    ("realnvp", (1, 4, 4)),
    ("realnvp", (2, 1, 1)),
    ("glow", (1, 4, 4)),
    ("glow", (2, 1, 1)),
]


def test_class_prior_log_density_is_the_closed_form_diagonal_gaussian():
    prior = perturb(ClassPrior(3, 5), scale=0.7)
    eps = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([2, 0, 1, 2])
    mu, s = prior.mean[labels], prior.log_scale[labels]
    by_hand = (-0.5 * ((eps - mu) / s.exp()) ** 2 - s - 0.5 * math.log(2 * math.pi)).sum(1)
    with torch.no_grad():
        torch.testing.assert_close(prior.log_prob(eps, labels), by_hand, rtol=1e-12, atol=1e-12)
        e, _ = prior.standardize(eps, labels)
        torch.testing.assert_close(prior.unstandardize(e, labels), eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,shape", KINDS)
def test_model_density_is_the_class_gaussian_of_the_latent_plus_the_flow_logdet(kind, shape):
    """log p(y | c) = sum_d log N(eps_d; mu_cd, exp(s_cd)^2) + log|det d eps / d y|, with eps the
    whole latent: every factored-out level and the top latent are conditioned."""
    model = perturb(build(kind, shape, num_classes=3), scale=0.2)
    y = torch.rand(4, *shape, generator=torch.Generator().manual_seed(4)) * 0.9 + 0.05
    labels = torch.tensor([0, 2, 1, 0])
    with torch.no_grad():
        eps, logdet = model.encode(y)
        mu, s = model.class_prior.mean[labels], model.class_prior.log_scale[labels]
        gauss = torch.distributions.Normal(mu, s.exp()).log_prob(eps).sum(1)
        torch.testing.assert_close(model.log_prob(y, labels), gauss + logdet)
    assert model.class_prior.mean.shape == (3, model.dims)  # one entry per latent dim


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
@pytest.mark.parametrize("kind,shape", KINDS)
def test_a_zero_class_prior_gives_the_unconditional_numbers_with_the_same_flow(
    kind, shape, dequantization
):
    plain = perturb(build(kind, shape, dequantization=dequantization))
    cond = build(kind, shape, dequantization=dequantization, num_classes=2)
    missing, unexpected = cond.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["class_prior.log_scale", "class_prior.mean"] and not unexpected
    cond.eval()
    x = levels(shape)
    with torch.no_grad():
        for k in (1, 3):
            ref = plain.nll(x, generator=per_sample_generators(5, 0, 3), dequant_samples=k)
            for label in (0, 1):
                y = torch.full((3,), label)
                out = cond.nll(x, y=y, generator=per_sample_generators(5, 0, 3), dequant_samples=k)
                assert torch.equal(out, ref)
        ref = plain.sample(4, generator=per_sample_generators(6, 0, 4), temperature=0.8).x
        y = torch.tensor([0, 1, 1, 0])
        out = cond.sample(4, y=y, generator=per_sample_generators(6, 0, 4), temperature=0.8).x
        assert torch.equal(out, ref)


@pytest.mark.parametrize("kind,shape", KINDS)
def test_the_label_changes_samples_and_nll(kind, shape):
    model = perturb(build(kind, shape, num_classes=2, dequantization="variational"), scale=0.3)
    x = levels(shape, n=4)
    a, b = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    with torch.no_grad():
        for k in (1, 3):
            nll_a = model.nll(x, y=a, generator=per_sample_generators(7, 0, 4), dequant_samples=k)
            nll_b = model.nll(x, y=b, generator=per_sample_generators(7, 0, 4), dequant_samples=k)
            assert (nll_a - nll_b).abs().min() > 1e-3
        s_a = model.sample(64, y=a.repeat(16), generator=per_sample_generators(8, 0, 64)).x
        s_b = model.sample(64, y=b.repeat(16), generator=per_sample_generators(8, 0, 64)).x
        assert not torch.equal(s_a, s_b)
        cold = model.sample(2, y=torch.tensor([0, 1]), temperature=0.0).x
        modes = model.pre.levels(model._unflow(model.class_prior.mean), K)  # decode(mu_c)
        assert torch.equal(cold, modes)


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_k_sample_bound_with_labels_is_batch_independent(kind):
    model = perturb(build(kind, num_classes=3, dequantization="variational"))
    x, y = levels((1, 4, 4), n=3), torch.tensor([2, 0, 1])
    with torch.no_grad():
        batch = model.nll(x, y=y, generator=per_sample_generators(9, 0, 3), dequant_samples=4)
        singles = [
            model.nll(x[i : i + 1], y=y[i : i + 1], generator=per_sample_generators(9, i, 1),
                      dequant_samples=4)
            for i in range(3)
        ]  # fmt: skip
    torch.testing.assert_close(batch, torch.cat(singles), rtol=1e-12, atol=1e-12)


#: values computed on the branch point (before the conditional mode): nll with per-example
#: generators seeded 3, samples with generators seeded 5 at temperature 0.8, state_dict sizes
BEFORE = {
    ("realnvp", (1, 4, 4), "uniform"): (
        [57.2590124333, 47.8877165189, 59.5574568233],
        [1, 4, 7, 7, 11, 8, 8, 4, 11, 8, 4, 10, 6, 8, 12, 9],
        84,
    ),
    ("realnvp", (2, 1, 1), "variational"): (
        [14.2240640944, 5.3483550048, 4.5936434027],
        [9, 7, 10, 7, 1, 12, 9, 10],
        56,
    ),
    ("glow", (1, 4, 4), "variational"): (
        [67.6544709757, 69.037614342, 67.3719205386],
        [2, 0, 15, 0, 0, 13, 0, 0, 8, 15, 0, 0, 0, 3, 0, 15],
        102,
    ),
    ("glow", (2, 1, 1), "uniform"): (
        [8.1027708279, 8.1478000188, 8.0884245799],
        [5, 10, 4, 3, 15, 15, 15, 15],
        36,
    ),
}


@pytest.mark.parametrize("key", list(BEFORE), ids=lambda k: "-".join(map(str, k)))
def test_unconditional_models_are_unchanged(key):
    kind, shape, dequantization = key
    nll, sample, n_keys = BEFORE[key]
    model = build(kind, shape, dequantization=dequantization)
    assert model.class_prior is None and model.class_predictor is None
    assert len(model.state_dict()) == n_keys
    assert not [k for k in model.state_dict() if k.startswith("class_")]
    model = perturb(model)
    x = levels(shape)
    with torch.no_grad():
        out = model.nll(x, generator=per_sample_generators(3, 0, 3))
        drawn = model.sample(4, generator=per_sample_generators(5, 0, 4), temperature=0.8).x
    torch.testing.assert_close(out, torch.tensor(nll), rtol=1e-9, atol=1e-8)
    assert drawn.flatten().tolist()[:16] == sample
    with pytest.raises(ValueError, match="unconditional"):
        model.nll(x, y=torch.zeros(3, dtype=torch.long))


def test_labels_are_required_and_checked():
    model = build("glow", (2, 1, 1), num_classes=2).eval()
    x = levels((2, 1, 1))
    with pytest.raises(ValueError, match="labels y are required"):
        model.nll(x)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        model.sample(2, y=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="sampler.guidance"):
        model.sample(2, y=torch.tensor([0, 1]), guidance=1.0)


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_class_prediction_term_starts_at_log2_c_bits_and_needs_labels(kind):
    """Glow's y-condition classifier starts at zero logits: cross-entropy log2(C) bits, added to
    bits/dim with weight w; an unconditional model rejects the option, naming the key."""
    model = build(kind, num_classes=4, class_loss_weight=0.5)
    x, y = levels((1, 4, 4), n=5), torch.tensor([0, 1, 2, 3, 0])
    torch.manual_seed(11)
    terms = model.training_losses(x, "main", y=y)
    torch.testing.assert_close(terms["class_bits"], torch.full((5,), 2.0))
    torch.testing.assert_close(terms["loss"], terms["bpd"] + 0.5 * terms["class_bits"])
    torch.manual_seed(11)
    torch.testing.assert_close(terms["bpd"], model.nll(x, y=y) / (16 * math.log(2)))
    assert "loss" in build(kind, num_classes=4).training_losses(x, "main", y=y)
    with pytest.raises(OptionError, match="model.class_loss_weight"):
        build(kind, class_loss_weight=0.5)
    with pytest.raises(OptionError, match="model.class_loss_weight"):
        build(kind, num_classes=2, class_loss_weight=-1.0)


def train_on_moons(model: torch.nn.Module, data, steps: int, lr: float) -> torch.nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, data.train.shape[0], (256,), generator=g)
        loss = model.training_losses(data.train[idx], "main", y=data.train_labels[idx])["loss"]
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    return model.eval()


def sample_accuracy(model: torch.nn.Module, data, n: int = 600) -> float:
    """Mean exact posterior p(y | x) of the requested class y over samples x ~ p(x | y)."""
    y = torch.arange(2).repeat_interleave(n // 2)
    with torch.no_grad():
        x = model.sample(n, y=y, generator=torch.Generator().manual_seed(2)).x
    return float(data.density.class_posterior(x)[torch.arange(n), y].mean())


@pytest.fixture(scope="module")
def moons():
    return toy("moons", levels=32, n_train=4000, n_val=10, n_test=10, seed=0)


def test_brief_training_on_toy_moons_gives_class_faithful_samples(moons):
    """200 Adam steps of RealNVP on moons (2 classes): samples of class c lie where the exact
    posterior puts class c (Bayes accuracy ~1; chance 1/2), NLL prefers the true label."""
    torch.manual_seed(0)
    model = RealNVP((2, 1, 1), 32, flat_couplings=6, hidden=32, blocks=0, num_classes=2)
    model = train_on_moons(model, moons, steps=200, lr=1e-2)
    accuracy = sample_accuracy(model, moons)
    x, y = moons.train[:1000], moons.train_labels[:1000]
    with torch.no_grad():
        right, wrong = model.nll(x, y=y).mean(), model.nll(x, y=1 - y).mean()
    assert accuracy > 0.9, f"sample accuracy {accuracy:.3f}"
    assert wrong > right + 3.0, f"nll with the true label {right:.2f}, the other {wrong:.2f}"


@pytest.mark.slow
@pytest.mark.parametrize("class_loss_weight", [0.0, 1.0])
def test_glow_trained_on_toy_moons_samples_each_class(moons, class_loss_weight):
    torch.manual_seed(0)
    model = Glow(
        (2, 1, 1), 32, steps=6, hidden=32, blocks=0, num_classes=2,
        class_loss_weight=class_loss_weight,
    )  # fmt: skip
    model = train_on_moons(model, moons, steps=400, lr=1e-2)
    accuracy = sample_accuracy(model, moons)
    assert accuracy > 0.95, f"sample accuracy {accuracy:.3f}"
