"""VAE bounds: IWAE tightens the ELBO, KL matches its closed form, decoders are normalized."""

from __future__ import annotations

import math

import pytest
import torch

from genbench.models.vae import VAE
from genbench.nn.random import per_sample_generators


def test_iwae_bound_is_tighter_than_the_elbo():
    torch.manual_seed(0)
    m = VAE((1, 8, 8), 17, hidden=8, latent=4, iwae_samples=256).eval()
    x = torch.randint(0, 17, (4, 1, 8, 8))
    with torch.no_grad():
        elbo = torch.stack([m.bound_terms(x)["neg_elbo"] for _ in range(200)]).mean(0)
        iwae = m.nll(x)
        m.iwae_samples = 1
        single = torch.stack([m.nll(x) for _ in range(200)]).mean(0)
    assert float(iwae.mean()) <= float(elbo.mean()) + 0.01  # up to Monte-Carlo noise
    torch.testing.assert_close(single, elbo, rtol=0.01, atol=0.0)


def test_kl_term_matches_closed_form():
    torch.manual_seed(0)
    m = VAE((2, 1, 1), 64, hidden=8, latent=3).eval()
    x = torch.randint(0, 64, (5, 2, 1, 1))
    mu, log_std = m.encode(x)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, log_std.exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    torch.testing.assert_close(m.bound_terms(x)["kl"], expected)


def test_decoders_are_normalized_over_the_levels():
    torch.manual_seed(0)
    for kind in ("categorical", "logistic"):
        m = VAE((1, 8, 8), 17, hidden=8, latent=4, decoder=kind)
        logp = m._level_log_probs(m.decode(torch.randn(3, 4)))
        torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 1, 8, 8), rtol=0, atol=1e-5)


def test_untrained_vae_is_near_uniform_on_random_data():
    torch.manual_seed(0)
    m = VAE((1, 8, 8), 17, hidden=8, latent=4).eval()
    x = torch.randint(0, 17, (16, 1, 8, 8))
    with torch.no_grad():
        bpd = m.nll(x).mean() / (64 * math.log(2))
    assert bpd > math.log2(17) - 0.05


def test_samples_are_inverse_cdf_draws_from_the_decoders_level_probabilities():
    """Both decoders sample through nn.random.categorical: one uniform per sub-pixel from the
    sample's own generator, searched in the cumulative level probabilities (softmax of the logits,
    or the logistic's bin masses as they are)."""
    torch.manual_seed(0)
    for kind in ("categorical", "logistic"):
        m = VAE((1, 8, 8), 17, hidden=8, latent=4, decoder=kind).eval()
        with torch.no_grad():
            x = m.sample(5, generator=per_sample_generators(3, 0, 5), temperature=0.5).x
        gens = per_sample_generators(3, 0, 5)
        z = torch.stack([torch.randn(4, generator=g) for g in gens]) * 0.5
        with torch.no_grad():
            logp = m._level_log_probs(m.decode(z))
        probs = torch.softmax(logp, -1) if kind == "categorical" else logp.exp()
        cdf = probs.cumsum(-1)
        u = torch.stack([torch.rand(1, 8, 8, generator=g) for g in gens]).unsqueeze(-1)
        expected = torch.searchsorted(cdf, u * cdf[..., -1:]).squeeze(-1).clamp(max=16)
        assert x.dtype == torch.int64 and torch.equal(x, expected), kind


def test_double_precision_model_computes_in_float64():
    """``model.double()`` is enough: no float32 is hard-coded in the bound, the losses or
    sampling (both decoders)."""
    for kind in ("categorical", "logistic"):
        torch.manual_seed(0)
        m = VAE((1, 8, 8), 17, hidden=8, latent=4, decoder=kind, iwae_samples=8).double().eval()
        x = torch.randint(0, 17, (3, 1, 8, 8))
        losses = m.training_losses(x, "main")
        assert all(v.dtype == torch.float64 for v in losses.values()), kind
        assert m.nll(x).dtype == torch.float64, kind
        logp = m._level_log_probs(m.decode(torch.randn(2, 4, dtype=torch.float64)))
        assert logp.dtype == torch.float64, kind
        out = m.sample(3, generator=per_sample_generators(0, 0, 3))
        assert out.x.dtype == torch.int64 and int(out.x.max()) < 17, kind


GRID = torch.linspace(-10.0, 10.0, 20001, dtype=torch.float64)  # z grid of the exact integral


def exact_log_marginal(m: VAE, x: torch.Tensor) -> tuple[float, float, float]:
    """log p(x) = log ∫ p(x|z) N(z; 0, 1) dz in nats for one ``x`` ``[1, C, H, W]`` of a VAE with
    one latent dim (trapezoid rule on 20001 points of [-10, 10], in log space), and the posterior's
    mean and standard deviation on the same grid."""
    z = GRID.unsqueeze(1)
    log_w = torch.full_like(GRID, math.log(20.0 / 20000))  # trapezoid weights: h, h/2 at the ends
    log_w[[0, -1]] -= math.log(2.0)
    with torch.no_grad():
        logp = m._level_log_probs(m.decode(z))  # [G, C, H, W, K]
        idx = x.expand(len(GRID), *x.shape[1:]).unsqueeze(-1)
        log_px_z = logp.gather(-1, idx).squeeze(-1).flatten(1).sum(1)
    joint = log_px_z - 0.5 * GRID**2 - 0.5 * math.log(2 * math.pi) + log_w
    log_px = torch.logsumexp(joint, 0)
    post = (joint - log_px).exp()
    mean = float((post * GRID).sum())
    return float(log_px), mean, float((post * (GRID - mean) ** 2).sum().sqrt())


def one_latent_vae(kind: str, k: int) -> VAE:
    """A float64 MLP VAE on 2x2 images with 5 levels and latent_dim = 1 whose decoder depends
    strongly on z (first layer scaled up), so posteriors are narrower than the prior."""
    torch.manual_seed(0)
    m = VAE((1, 2, 2), 5, hidden=16, latent=1, decoder=kind, iwae_samples=k).double().eval()
    with torch.no_grad():
        m.decoder[0].weight.mul_(12.0)
    return m


@pytest.mark.parametrize("kind", ["categorical", "logistic"])
def test_iwae_with_many_samples_matches_the_exact_marginal_likelihood(kind):
    """With one latent dim, -log p(x) is a 1-D integral. With q(z|x) set to the posterior's mean
    and std, the k = 5000 IWAE NLL lies within [-0.01, +0.02] nats of it (it is an upper bound up
    to Monte-Carlo noise, here about 0.003 nats); a log q(z|x) missing its -log sigma would be off
    by log sigma (0.29 to 0.44 nats too low on the first example)."""
    m = one_latent_vae(kind, 5000)
    for levels in ([0, 4, 1, 2], [3, 3, 0, 0], [2, 1, 4, 0]):
        x = torch.tensor(levels).view(1, 1, 2, 2)
        log_px, mean, std = exact_log_marginal(m, x)
        with torch.no_grad():  # encoder output: exactly the posterior's (mean, log std)
            m.encoder[-1].weight.zero_()
            m.encoder[-1].bias.copy_(torch.tensor([mean, math.log(std)]))
        torch.manual_seed(1)
        with torch.no_grad():
            gap = float(m.nll(x)) + log_px
        assert -0.01 <= gap <= 0.02, f"{kind} x={levels}: IWAE - exact = {gap:.5f} nats"


@pytest.mark.parametrize("kind", ["categorical", "logistic"])
def test_single_sample_iwae_is_the_elbo_of_the_same_draw(kind):
    """k = 1: nll = -log p(x|z) - log N(z; 0, 1) + log N(z; mu, sigma^2) at the z that
    ``bound_terms`` draws from the same seed (its ``recon``), log-densities from
    torch.distributions; averaged over draws, log q - log p is the closed-form KL."""
    m = one_latent_vae(kind, 1)
    x = torch.tensor([[0, 4, 1, 2], [3, 3, 0, 0], [2, 1, 4, 0]]).view(3, 1, 2, 2)
    normal = torch.distributions.Normal
    with torch.no_grad():
        torch.manual_seed(7)
        nll = m.nll(x)
        torch.manual_seed(7)
        terms = m.bound_terms(x)
        mu, log_std = m.encode(x)
        torch.manual_seed(7)
        z = mu + log_std.exp() * torch.randn_like(mu)
    log_q = normal(mu, log_std.exp()).log_prob(z).sum(-1)
    log_p = normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(nll, terms["recon"] + log_q - log_p, rtol=1e-12, atol=1e-12)
