"""Importance-sampled timesteps for training on the variational bound."""

import math

import torch

from genbench.models.diffusion.ddpm import DDPM
from genbench.models.diffusion.importance import HISTORY, UNIFORM_SHARE, LossAwareTimesteps
from genbench.models.diffusion.process import GaussianDiffusion, linear_betas


def test_uniform_until_every_history_is_full_then_proportional_to_rms_loss():
    s = LossAwareTimesteps(4)
    losses = torch.tensor([8.0, 4.0, 2.0, 1.0])
    for r in range(HISTORY):
        assert torch.allclose(s.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
        s.update(torch.arange(4), losses * (1 + 0.1 * r))
    rms = (losses.double()[:, None] * (1 + 0.1 * torch.arange(HISTORY).double())).square()
    w = rms.mean(1).sqrt()
    expected = w / w.sum() * (1 - UNIFORM_SHARE) + UNIFORM_SHARE / 4
    assert torch.allclose(s.probabilities(), expected)
    assert math.isclose(float(s.probabilities().sum()), 1.0)
    s.update(torch.tensor([3] * (HISTORY + 2)), torch.full((HISTORY + 2,), 8.0))
    assert int(s.count[3]) == HISTORY and bool((s.history[3] == 8.0).all())


def test_importance_weights_keep_the_estimate_unbiased_and_cut_its_variance():
    """For per-step losses L_t: E_p[L_t / p_t] = Σ L_t exactly, and the variance under the
    learned p is far below the uniform one for a bound dominated by its early terms."""
    T = 50
    lt = 100.0 / (torch.arange(T, dtype=torch.float64) + 1) ** 2
    s = LossAwareTimesteps(T)
    for _ in range(HISTORY):
        s.update(torch.arange(T), lt)
    p = s.probabilities()
    uniform = torch.full_like(p, 1 / T)
    for q in (p, uniform):
        assert math.isclose(float((q * lt / q).sum()), float(lt.sum()), rel_tol=1e-12)

    def variance(q):
        return float((q * (lt / q) ** 2).sum() - lt.sum() ** 2)

    assert variance(p) < 0.01 * variance(uniform)


def test_vlb_loss_with_uniform_probabilities_is_the_hybrid_vlb_term():
    p = GaussianDiffusion(linear_betas(40))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 2, 2, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 9, 39])
    out = 0.1 * torch.randn(3, 2, 2, 2, generator=g)
    hybrid = p.hybrid_loss(lambda x, tn: out, x0, t, eps, 17)
    vlb = p.vlb_loss(
        lambda x, tn: out, x0, t, eps, 17, torch.full((3,), 1 / 40), variance="learned"
    )
    assert torch.allclose(vlb["loss"], hybrid["vlb"])


def tiny(**kw):
    torch.manual_seed(0)
    return DDPM((1, 4, 4), 17, timesteps=6, ch=8, ch_mult=(1,), attn_resolutions=(), **kw)


def test_vlb_objective_trains_records_only_in_training_mode_and_resumes_exactly():
    m = tiny(objective="vlb", learn_sigma=True)
    x = torch.randint(0, 17, (8, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    m.eval()
    m.training_losses(x)
    assert int(m.timestep_sampler.count.sum()) == 0  # validation does not move the sampler
    m.train()
    for _ in range(12):
        out = m.training_losses(x)
        out["loss"].mean().backward()
    assert set(out) == {"loss"} and torch.isfinite(out["loss"]).all()
    assert bool((m.timestep_sampler.count == HISTORY).all())  # 96 draws over 6 steps
    assert "timestep_sampler.history" in m.state_dict()
    copy = tiny(objective="vlb", learn_sigma=True)
    copy.load_state_dict(m.state_dict())
    torch.manual_seed(5)
    a = m.training_losses(x)["loss"]
    torch.manual_seed(5)
    b = copy.training_losses(x)["loss"]
    assert torch.equal(a, b) and torch.equal(
        m.timestep_sampler.history, copy.timestep_sampler.history
    )


def test_default_objective_has_no_sampler_state():
    assert not any("timestep_sampler" in k for k in tiny().state_dict())
