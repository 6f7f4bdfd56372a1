"""The VQ-VAE: its bound from its parts by hand, quantization, the straight-through gradient, a
normalized prior, training, batch-independent sampling and float64."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from genbench.models.options import OptionError
from genbench.models.vqvae import VQVAE
from genbench.nn.random import per_sample_generators


def small(shape=(1, 8, 8), levels=5, **kw):
    torch.manual_seed(0)
    return VQVAE(
        shape, levels, hidden=8, code_dim=3, codebook_size=kw.pop("codebook_size", 6),
        prior_features=8, prior_layers=2, **kw,
    )  # fmt: skip


@pytest.mark.parametrize(
    "shape,downsample,code_shape",
    [
        ((1, 8, 8), 1, (4, 4)),
        ((1, 8, 8), 2, (2, 2)),
        ((1, 28, 28), 3, (7, 7)),
        ((2, 1, 1), 1, (1, 1)),
    ],
)
def test_the_code_map_halves_while_the_sides_are_even(shape, downsample, code_shape):
    m = small(shape, downsample=downsample)
    assert m.code_shape == code_shape
    assert m.encode(torch.zeros(2, *shape, dtype=torch.long)).shape == (2, 3, *code_shape)


def test_the_bound_is_recon_plus_prior_computed_by_hand():
    m = small().double().eval()
    x = torch.randint(0, 5, (4, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z_e = m.encoder(x.double() * 0.5 - 1.0)  # levels 0..4 -> [-1, 1]
        d = ((z_e.permute(0, 2, 3, 1).unsqueeze(-2) - m.codebook) ** 2).sum(-1)  # [N,h,w,S]
        idx = d.argmin(-1)
        logits = m.decoder(m.codebook[idx].permute(0, 3, 1, 2)).view(4, 1, 5, 8, 8).transpose(1, 2)
        recon = F.cross_entropy(logits, x, reduction="none").sum((1, 2, 3))
        prior_logits = m.prior.logits(idx.unsqueeze(1))  # [N, S, 1, h, w]
        prior = F.cross_entropy(prior_logits, idx.unsqueeze(1), reduction="none").sum((1, 2, 3))
        terms = m.bound_terms(x)
        nll = m.nll(x)
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["prior"], prior)
    torch.testing.assert_close(nll, recon + prior)
    torch.testing.assert_close(m.nll(x), nll)  # deterministic
    assert nll.dtype == torch.float64


def test_quantization_returns_the_nearest_codebook_vector():
    m = small()
    z_e = torch.randn(3, 3, 4, 4)
    idx, z_q = m.quantize(z_e)
    brute = torch.cdist(z_e.permute(0, 2, 3, 1).reshape(-1, 3), m.codebook).argmin(1)
    assert torch.equal(idx.flatten(), brute)
    torch.testing.assert_close(z_q, m.codebook[idx].permute(0, 3, 1, 2))
    with torch.no_grad():
        m.codebook[2] = z_e[0, :, 1, 3]  # a codebook vector equal to one position
    assert m.quantize(z_e)[0][0, 1, 3] == 2


def test_the_straight_through_gradient_reaches_the_encoder_and_the_codebook():
    m = small()
    x = torch.randint(0, 5, (4, 1, 8, 8))
    terms = m.training_losses(x)
    terms["loss"].sum().backward()
    for p in (m.encoder[0].weight, m.codebook, m.decoder[0].weight, m.prior.head.out.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the reconstruction alone reaches the encoder through z_q (straight-through)
    m.zero_grad()
    z_e = m.encode(x)
    _, z_q = m.quantize(z_e)
    (-m._log_px(x, m.decode(z_e + (z_q - z_e).detach()))).sum().backward()
    assert m.encoder[0].weight.grad.abs().sum() > 0 and m.codebook.grad is None


@pytest.mark.parametrize("shape,downsample", [((2, 1, 1), 0), ((1, 1, 2), 0)])
def test_the_prior_sums_to_one_over_every_code_map(shape, downsample):
    m = small(shape, codebook_size=4, downsample=downsample).double()
    h, w = m.code_shape
    maps = torch.tensor(list(itertools.product(range(4), repeat=h * w))).view(-1, h, w)
    with torch.no_grad():
        total = torch.exp(-m.prior_nll(maps)).sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))


def test_a_few_training_steps_lower_the_bound():
    m = small(downsample=1)  # a 4x4 code map: 16 random images are memorized quickly
    x = torch.randint(0, 5, (16, 1, 8, 8), generator=torch.Generator().manual_seed(2))
    before = m.nll(x).mean().item()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        m.training_losses(x)["loss"].mean().backward()
        opt.step()
    with torch.no_grad():
        after = m.nll(x).mean().item()
    assert after < before - 5.0


@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 1, 1)])
def test_sample_i_depends_only_on_its_own_generator(shape):
    m = small(shape).eval()
    big = m.sample(5, generator=per_sample_generators(seed=3, start=0, n=5))
    part = m.sample(2, generator=per_sample_generators(seed=3, start=3, n=2))
    assert torch.equal(big.x[3:], part.x)
    assert big.x.dtype == torch.long and big.x.shape == (5, *shape)
    h, w = m.code_shape
    assert big.nfe.tolist() == [h * w + 1.0] * 5


def test_float64_trains_and_scores():
    m = small().double()
    x = torch.randint(0, 5, (3, 1, 8, 8))
    terms = m.training_losses(x)
    terms["loss"].mean().backward()
    assert terms["loss"].dtype == torch.float64 and m.nll(x).dtype == torch.float64
    assert m.sample(2).x.shape == (2, 1, 8, 8)


def test_bad_options_name_the_key():
    with pytest.raises(OptionError, match="model.codebook_size=1"):
        VQVAE((1, 8, 8), 5, codebook_size=1)
    with pytest.raises(OptionError, match="model.decoder='gauss'.*categorical, logistic"):
        VQVAE((1, 8, 8), 5, decoder="gauss")
    with pytest.raises(OptionError, match="sampler.temperature"):
        VQVAE.validate_sampler({"temperature": 0}, {})
