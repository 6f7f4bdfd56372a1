"""The hierarchical VAE: its bound against closed forms and its own pieces, batch-independent
noise, and the ladder's shapes."""

from __future__ import annotations

import math

import pytest
import torch

from genbench.models.hvae import HVAE, LatentGroup
from genbench.nn.random import per_sample_generators


def trained(shape=(1, 8, 8), levels=5, steps=30, **kw):
    torch.manual_seed(0)
    m = HVAE(shape, levels, hidden=8, zdim=2, **kw)
    x = torch.randint(0, levels, (16, *shape))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        m.training_losses(x)["loss"].mean().backward()
        opt.step()
    return m.eval(), x


@pytest.mark.parametrize(
    "shape,kw,sizes,groups",
    [
        ((1, 8, 8), {}, [(1, 1), (2, 2), (4, 4), (8, 8)], [2, 2, 2, 0]),
        ((1, 8, 8), {"min_size": 4, "data_latents": True}, [(4, 4), (8, 8)], [2, 2]),
        ((1, 28, 28), {}, [(7, 7), (14, 14), (28, 28)], [2, 2, 0]),
        ((2, 1, 1), {}, [(1, 1)], [2]),
        ((3, 6, 6), {}, [(3, 3), (6, 6)], [2, 0]),
    ],
)
def test_the_ladder_halves_the_resolution_with_latents_below_the_datas(shape, kw, sizes, groups):
    m = HVAE(shape, 4, hidden=4, zdim=2, groups=2, **kw)
    assert m.sizes == sizes and m.group_counts == groups
    assert len(m.noise_shapes()) == sum(groups)


def test_a_fresh_model_is_uniform_with_zero_kl():
    """At initialization every prior is N(0, I), every posterior equals it (zero-initialized
    convolutions) and the head outputs zeros: the bound is exactly D log K with zero KL."""
    m = HVAE((1, 8, 8), 5, hidden=8, zdim=2)
    torch.nn.init.zeros_(m.head.weight)
    torch.nn.init.zeros_(m.head.bias)
    x = torch.randint(0, 5, (3, 1, 8, 8))
    terms = m.bound_terms(x)
    assert torch.allclose(terms["kl"], torch.zeros(3), atol=1e-6)
    assert torch.allclose(m.nll(x), torch.full((3,), 64 * math.log(5)), atol=1e-4)


def test_group_kl_is_the_closed_form_and_matches_its_log_densities():
    """KL(q || p) of a group equals E_q[log q - log p] (Monte Carlo over many draws)."""
    torch.manual_seed(1)
    g = LatentGroup(3, 2)
    for conv in (g.prior, g.posterior):
        torch.nn.init.normal_(conv.weight, std=0.3)
        torch.nn.init.normal_(conv.bias, std=0.3)
    h, feats = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    noise = torch.randn(20000, 2, 2, 2)
    with torch.no_grad():
        _, kl, log_p, log_q = g(h.expand(20000, -1, -1, -1), feats.expand(20000, -1, -1, -1), noise)
    assert torch.allclose(kl, kl[0].expand(20000))
    mc = (log_q - log_p).mean()
    se = (log_q - log_p).std() / math.sqrt(20000)
    assert abs(float(mc - kl[0])) < 4 * float(se)


def test_iwae_with_one_draw_is_the_sampled_elbo_and_more_draws_tighten_it():
    """k = 1: -log p(x|z) - log p(z) + log q(z|x) at the same draw as ``bound_terms`` (whose KL
    is the closed form of that Monte-Carlo term: equal on average); larger k is tighter."""
    m, x = trained()
    with torch.no_grad():
        n = len(x)
        m.iwae_samples = 1
        one = m.nll(x, generator=per_sample_generators(3, 0, n))
        noise = m._noise(n, per_sample_generators(3, 0, n))
        out, kl, log_p, log_q = m._descend(m._features(x), noise, n)
        assert torch.allclose(one, -(m._log_px(x, out) + log_p - log_q), atol=1e-4)
        terms = m.bound_terms(x, generator=per_sample_generators(3, 0, n))
        assert torch.allclose(terms["recon"], -m._log_px(x, out), atol=1e-5)
        draws = torch.stack(
            [m.nll(x, generator=per_sample_generators(s, 0, n)) for s in range(200)]
        )
        elbo = torch.stack(
            [
                m.bound_terms(x, generator=per_sample_generators(s, 0, n))["neg_elbo"]
                for s in range(200)
            ]
        )
        diff = draws.mean(0) - elbo.mean(0)  # same recon draws: the difference is the KL's MC error
        assert (
            float(diff.abs().max()) < 5 * float((draws - elbo).std(0).max()) / math.sqrt(200) + 1e-3
        )
        m.iwae_samples = 64
        many = m.nll(x, generator=per_sample_generators(3, 0, n))
    assert float(many.mean()) < float(draws.mean()) - 0.1
    assert (many >= 0).all()


def test_training_lowers_the_bound():
    m0, x = trained(steps=0)
    m1, _ = trained(steps=60)
    torch.manual_seed(0)
    before = m0.bound_terms(x)["neg_elbo"].detach().mean()
    torch.manual_seed(0)
    after = m1.bound_terms(x)["neg_elbo"].detach().mean()
    assert float(after) < float(before) - 5.0


def test_iwae_does_not_depend_on_the_batch_or_the_chunking(monkeypatch):
    m, x = trained(steps=5)
    m.iwae_samples = 11  # two passes of draws, the second partial
    whole = m.nll(x[:6], generator=per_sample_generators(0, 0, 6))
    monkeypatch.setattr("genbench.models.hvae.rows_per_chunk", lambda per_row: 5)
    part = m.nll(x[4:6], generator=per_sample_generators(0, 4, 2))
    assert torch.allclose(whole[4:], part, atol=1e-5)


def test_samples_are_levels_and_temperature_zero_is_the_prior_mean_path():
    m, _ = trained(steps=5)
    s = m.sample(4, generator=per_sample_generators(0, 0, 4))
    assert s.x.shape == (4, 1, 8, 8) and s.x.dtype == torch.int64
    assert int(s.x.min()) >= 0 and int(s.x.max()) < 5
    assert s.nfe.tolist() == [1.0] * 4
    one = m.sample(1, generator=per_sample_generators(0, 2, 1))
    assert torch.equal(one.x[0], s.x[2])
    with pytest.raises(ValueError, match="sampler.temperature"):
        m.sample(2, temperature=-1)


def test_double_precision_runs_through():
    m = HVAE((1, 8, 8), 5, hidden=4, zdim=2).double()
    x = torch.randint(0, 5, (2, 1, 8, 8))
    assert m.nll(x).dtype == torch.float64
    assert m.training_losses(x)["loss"].dtype == torch.float64
