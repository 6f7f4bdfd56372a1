"""Conditional latent-variable models (issue 21): the VAE, the hierarchical VAE and the VQ-VAE with
``num_classes > 0`` model p(x | y). Their bounds against hand computations and an exact marginal,
the label's effect, per-example generators, unchanged unconditional models and a short training
on a labelled toy whose samples land in their class (the toy's exact class posterior)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from genbench.data.toy2d import toy
from genbench.models.hvae import HVAE
from genbench.models.vae import VAE
from genbench.models.vqvae import VQVAE
from genbench.nn.random import per_sample_generators as gens

MODELS = ("vae", "hvae", "vqvae")


def build(name: str, shape=(1, 8, 8), levels=5, num_classes=0):
    """A tiny model seeded 0 (the unconditional one draws exactly main's weights)."""
    torch.manual_seed(0)
    if name == "vae":
        return VAE(shape, levels, hidden=8, latent=2, iwae_samples=4, num_classes=num_classes)
    if name == "hvae":
        return HVAE(shape, levels, hidden=8, zdim=2, iwae_samples=4, num_classes=num_classes)
    return VQVAE(
        shape, levels, hidden=8, code_dim=3, codebook_size=6, prior_features=8, prior_layers=2,
        num_classes=num_classes,
    )  # fmt: skip


def randomized(m):
    """``m`` with its zero-initialized label tables (priors) set to random values, so every path
    the label takes is exercised."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "label" in name or "prior_table" in name:
                p.normal_(0.0, 0.5)
    return m.eval()


#: computed on main (4c47a0c) before conditioning existed, with :func:`build` at (1, 8, 8), 5
#: levels: state_dict size, nll and neg_elbo of three inputs (generators seeded 2), the first six
#: levels of three samples (generators seeded 5)
GOLDEN = {
    "vae": (
        12,
        [104.119507, 103.211357, 102.241402],
        [104.145477, 103.716995, 102.573601],
        [[3, 4, 3, 1, 3, 1], [3, 2, 0, 2, 0, 3], [1, 2, 2, 3, 2, 1]],
    ),
    "hvae": (
        73,
        [105.125732, 103.296379, 104.760368],
        [114.623001, 109.308235, 106.336929],
        [[1, 0, 2, 2, 1, 4], [3, 4, 1, 2, 2, 1], [1, 2, 2, 0, 2, 1]],
    ),
    "vqvae": (
        45,
        [112.888901, 111.797798, 112.435623],
        [112.888901, 111.797798, 112.435623],
        [[3, 4, 3, 1, 3, 1], [3, 2, 0, 2, 0, 3], [1, 2, 2, 3, 3, 1]],
    ),
}


@pytest.mark.parametrize("name", MODELS)
def test_unconditional_models_keep_their_parameters_and_numbers(name):
    """num_classes = 0: the same state_dict, weights, bound and samples as before issue 21; the
    conditional model only adds its label tables; labels are refused by the unconditional one."""
    keys, nll, neg_elbo, sample = GOLDEN[name]
    m = build(name).eval()
    x = torch.randint(0, 5, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got_nll = m.nll(x, generator=gens(2, 0, 3))
        got_elbo = m.bound_terms(x, generator=gens(2, 0, 3))["neg_elbo"]
        got_sample = m.sample(3, generator=gens(5, 0, 3)).x.flatten(1)[:, :6]
    assert len(m.state_dict()) == keys and not m.conditional
    torch.testing.assert_close(got_nll, torch.tensor(nll), rtol=0, atol=2e-4)
    torch.testing.assert_close(got_elbo, torch.tensor(neg_elbo), rtol=0, atol=2e-4)
    assert got_sample.tolist() == sample
    with pytest.raises(ValueError, match="unconditional"):
        m.nll(x, y=torch.zeros(3, dtype=torch.long))
    cond = build(name, num_classes=3)
    shared = {k: v for k, v in cond.state_dict().items() if k in m.state_dict()}
    assert len(shared) == keys
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in shared.items())  # same draws
    extra = set(cond.state_dict()) - set(m.state_dict())
    assert extra and all("label" in k or "prior_table" in k for k in extra), extra


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape,levels", [((1, 8, 8), 5), ((2, 1, 1), 16)])
def test_the_label_changes_samples_and_nll_and_per_example_generators_hold(name, shape, levels):
    m = randomized(build(name, shape, levels, num_classes=2))
    x = torch.randint(0, levels, (4, *shape), generator=torch.Generator().manual_seed(1))
    y0, y1 = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    with torch.no_grad():
        s0 = m.sample(64, y=y0.repeat(16), generator=gens(0, 0, 64)).x
        s1 = m.sample(64, y=y1.repeat(16), generator=gens(0, 0, 64)).x
        a, b = m.nll(x, y=y0, generator=gens(3, 0, 4)), m.nll(x, y=y1, generator=gens(3, 0, 4))
        y = torch.tensor([0, 1, 1, 0])
        whole = m.nll(x, y=y, generator=gens(3, 0, 4))
        part = m.nll(x[2:], y=y[2:], generator=gens(3, 2, 2))
        s_whole = m.sample(4, y=y, generator=gens(4, 0, 4))
        s_part = m.sample(2, y=y[2:], generator=gens(4, 2, 2))
        terms = m.bound_terms(x, y=y, generator=gens(3, 0, 4))
    assert not torch.equal(s0, s1)
    assert float((a - b).abs().min()) > 1e-3
    torch.testing.assert_close(whole, torch.where(y == 0, a, b))  # example i depends on y_i only
    torch.testing.assert_close(whole[2:], part)
    assert torch.equal(s_whole.x[2:], s_part.x) and torch.equal(s_whole.nfe[2:], s_part.nfe)
    assert set(terms) >= {"neg_elbo", "recon"} and terms["neg_elbo"].shape == (4,)
    with pytest.raises(ValueError, match="labels y are required"):
        m.nll(x)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        m.sample(2, y=torch.tensor([0, 2]))


GRID = torch.linspace(-10.0, 10.0, 20001, dtype=torch.float64)


def exact_conditional(m: VAE, x: torch.Tensor, y: int) -> tuple[float, float, float]:
    """log p(x | y) = log ∫ p(x | z, y) p(z | y) dz (trapezoid rule on [-10, 10], 20001 points) of
    a one-latent VAE for one ``x`` ``[1, C, H, W]``, and the posterior's mean and std."""
    z, labels = GRID.unsqueeze(1), torch.full((len(GRID),), y)
    log_w = torch.full_like(GRID, math.log(20.0 / 20000))
    log_w[[0, -1]] -= math.log(2.0)
    with torch.no_grad():
        logp = m._level_log_probs(m.decode(z, labels))
        idx = x.expand(len(GRID), *x.shape[1:]).unsqueeze(-1)
        log_px_z = logp.gather(-1, idx).squeeze(-1).flatten(1).sum(1)
        p_mu, p_ls = m.prior(labels[:1])
    prior = torch.distributions.Normal(p_mu[0, 0], p_ls[0, 0].exp()).log_prob(GRID)
    joint = log_px_z + prior + log_w
    log_px = torch.logsumexp(joint, 0)
    post = (joint - log_px).exp()
    mean = float((post * GRID).sum())
    return float(log_px), mean, float((post * (GRID - mean) ** 2).sum().sqrt())


def one_latent_cvae(k: int) -> VAE:
    """A float64 conditional MLP VAE on 2x2 images, 5 levels, one latent dim, 2 classes, with
    class priors N(0.8, 0.6²) and N(-0.5, 1.3²) and a decoder that depends strongly on z."""
    torch.manual_seed(0)
    m = VAE((1, 2, 2), 5, hidden=16, latent=1, iwae_samples=k, num_classes=2).double().eval()
    with torch.no_grad():
        m.decoder[0].weight.mul_(12.0)
        m.prior_table.weight.copy_(torch.tensor([[0.8, math.log(0.6)], [-0.5, math.log(1.3)]]))
    return m


def test_conditional_iwae_with_many_samples_matches_the_exact_conditional_marginal():
    """-log p(x | y) by quadrature against the k = 5000 IWAE bound with q(z | x, y) set to the
    exact posterior: within [-0.01, +0.02] nats (an upper bound up to Monte-Carlo noise); a
    log p(z | y) that ignored the class prior would be off by several tenths."""
    m = one_latent_cvae(5000)
    for levels, y in (([0, 4, 1, 2], 0), ([0, 4, 1, 2], 1), ([3, 3, 0, 0], 1)):
        x = torch.tensor(levels).view(1, 1, 2, 2)
        log_px, mean, std = exact_conditional(m, x, y)
        with torch.no_grad():
            m.encoder[-1].weight.zero_()
            m.encoder[-1].bias.copy_(torch.tensor([mean, math.log(std)]))
            gap = float(m.nll(x, y=torch.tensor([y]), generator=gens(1, 0, 1))) + log_px
        assert -0.01 <= gap <= 0.02, f"x={levels} y={y}: IWAE - exact = {gap:.5f} nats"


def test_conditional_single_sample_iwae_is_the_elbo_of_the_same_draw():
    """k = 1: nll(x, y) = -log p(x | z, y) - log p(z | y) + log q(z | x, y) at the z that
    ``bound_terms`` draws from the same generators; its KL is the closed form of
    KL(q(z | x, y) || p(z | y)) (torch.distributions)."""
    m = one_latent_cvae(1)
    x = torch.tensor([[0, 4, 1, 2], [3, 3, 0, 0], [2, 1, 4, 0]]).view(3, 1, 2, 2)
    y = torch.tensor([1, 0, 1])
    normal = torch.distributions.Normal
    with torch.no_grad():
        nll = m.nll(x, y=y, generator=gens(7, 0, 3))
        terms = m.bound_terms(x, y=y, generator=gens(7, 0, 3))
        mu, log_std = m.encode(x, y)
        p_mu, p_ls = m.prior(y)
    eps = torch.stack([torch.randn(1, generator=g, dtype=torch.float64) for g in gens(7, 0, 3)])
    z = mu + log_std.exp() * eps
    log_q = normal(mu, log_std.exp()).log_prob(z).sum(-1)
    log_p = normal(p_mu, p_ls.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(nll, terms["recon"] + log_q - log_p, rtol=1e-12, atol=1e-12)
    kl = torch.distributions.kl_divergence(normal(mu, log_std.exp()), normal(p_mu, p_ls.exp()))
    torch.testing.assert_close(terms["kl"], kl.sum(-1), rtol=1e-12, atol=1e-12)


def test_conditional_hvae_single_draw_iwae_is_the_sampled_elbo():
    """k = 1: -log p(x | z, y) - log p(z | y) + log q(z | x, y) of the draw ``bound_terms`` makes
    (same generators), the top-down pass started from the labels' state."""
    m = randomized(build("hvae", num_classes=3)).double()
    x = torch.randint(0, 5, (3, 1, 8, 8), generator=torch.Generator().manual_seed(2))
    y = torch.tensor([2, 0, 1])
    m.iwae_samples = 1
    with torch.no_grad():
        one = m.nll(x, y=y, generator=gens(3, 0, 3))
        noise = m._noise(3, gens(3, 0, 3))
        out, kl, log_p, log_q = m._descend(m._features(x, y), noise, 3, y=y)
        terms = m.bound_terms(x, y=y, generator=gens(3, 0, 3))
        out0, *_ = m._descend(m._features(x, y), noise, 3, y=torch.tensor([0, 0, 0]))
    torch.testing.assert_close(one, -(m._log_px(x, out) + log_p - log_q))
    torch.testing.assert_close(terms["recon"], -m._log_px(x, out))
    torch.testing.assert_close(terms["kl"], kl)
    assert not torch.allclose(out, out0)  # the label reaches the decoder through the ladder


def test_conditional_vqvae_bound_by_hand_and_a_normalized_class_prior():
    """recon and prior from the parts: the prior's logits are the PixelCNN's plus b[y]; summed
    over all 6^4 code maps of a 2x2 map, p(codes | y) is 1 for every class."""
    m = randomized(build("vqvae", num_classes=2)).double()
    x = torch.randint(0, 5, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 0, 1])
    with torch.no_grad():
        idx, z_q = m.quantize(m.encode(x, y))
        logits = m.decode(z_q, y)  # [N, C, H, W, K]
        recon = F.cross_entropy(logits.permute(0, 4, 1, 2, 3), x, reduction="none").sum((1, 2, 3))
        offset = m.prior_label.weight[y].view(3, 6, 1, 2, 2)
        prior_logits = m.prior.logits(idx.unsqueeze(1)) + offset
        prior = F.cross_entropy(prior_logits, idx.unsqueeze(1), reduction="none").sum((1, 2, 3))
        terms = m.bound_terms(x, y=y)
        codes = torch.cartesian_prod(*[torch.arange(6)] * 4).view(-1, 2, 2)
        for label in (0, 1):
            labels = torch.full((len(codes),), label)
            total = torch.logsumexp(-m.prior_nll(codes, labels), 0)
            assert abs(float(total)) < 1e-9, (label, float(total))
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["prior"], prior)
    torch.testing.assert_close(m.nll(x, y=y), recon + prior)


def test_conditional_vqvae_draws_codes_from_its_class_prior():
    """On a 1x1 code map p(codes | y) is one categorical, softmax(PixelCNN + b[y]); 20000 draws
    per class match it within 5 standard errors per code, and the two classes differ."""
    m = randomized(build("vqvae", (2, 1, 1), 16, num_classes=2)).double()
    n = 20000
    for label in (0, 1):
        y = torch.full((n,), label)
        with torch.no_grad():
            idx, nfe = m.sample_codes(y, torch.Generator().manual_seed(label), 1.0)
            probs = torch.softmax(m.prior_logits(idx[:1], y[:1])[0, :, 0, 0, 0], 0)
        freq = torch.bincount(idx.flatten(), minlength=6).double() / n
        se = (probs * (1 - probs) / n).sqrt()
        assert ((freq - probs).abs() <= 5 * se + 1e-3).all(), (label, freq, probs)
        assert nfe.tolist() == [1.0] * n
        if label == 0:
            first = probs
    assert float((first - probs).abs().max()) > 0.05


#: model, labelled toy, training steps and Adam learning rate (batches of 128). Two moons needs the
#: VAE's latents (p(x1 | y) p(x2 | y) alone puts ~15 % of samples on the other moon), so the VAE's
#: run there is longer (slow); the HVAE trains on 8 Gaussians only: on two moons a short run of it
#: leaves its latents unused (KL -> 0, as the unconditional HVAE's does) and reaches 0.85-0.87.
TRAINING = [
    ("vae", "8gaussians", 300, 1e-2),
    pytest.param("vae", "moons", 1000, 3e-3, marks=pytest.mark.slow),
    ("hvae", "8gaussians", 300, 1e-2),
    ("vqvae", "moons", 400, 1e-2),
]


@pytest.mark.parametrize("name,density,steps,lr", TRAINING)
def test_a_short_training_on_a_labelled_toy_puts_samples_in_their_class(name, density, steps, lr):
    """Trained on a labelled toy (16 levels) with its labels, samples drawn for class y lie where
    the toy's exact posterior p(class | x) picks y: accuracy above 0.9 on 400 samples (chance:
    1 / classes; the Bayes accuracy of both toys is above 0.9999)."""
    data = toy(density, levels=16, n_train=2000, n_val=8, n_test=8, seed=0)
    kw = {
        "vae": {"hidden": 32, "latent": 2},
        "hvae": {"hidden": 16, "zdim": 2, "groups": 1},
        "vqvae": {
            "hidden": 16,
            "code_dim": 4,
            "codebook_size": 16,
            "prior_features": 8,
            "prior_layers": 1,
        },
    }[name]
    torch.manual_seed(0)
    model = {"vae": VAE, "hvae": HVAE, "vqvae": VQVAE}[name]
    m = model((2, 1, 1), 16, num_classes=data.num_classes, **kw)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(data.train), (128,), generator=g)
        loss = m.training_losses(data.train[i], "main", y=data.train_labels[i])["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = torch.arange(400) % data.num_classes
    with torch.no_grad():
        x = m.eval().sample(400, y=y, generator=gens(0, 0, 400)).x
    accuracy = float((data.density.class_posterior(x).argmax(1) == y).double().mean())
    assert accuracy > 0.9, f"{name} on {density}: sample accuracy {accuracy:.3f}"
