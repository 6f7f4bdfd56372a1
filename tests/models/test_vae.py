"""VAE bounds: IWAE tightens the ELBO, KL matches its closed form, decoders are normalized."""

from __future__ import annotations

import math

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
