"""GaussianDiffusion (schedules, q, posterior, ε/v, the variational bound) against closed forms."""

import math

import pytest
import torch
from scipy.stats import norm

from genbench.models.diffusion.process import (
    GaussianDiffusion,
    cosine_betas,
    discretized_gaussian_log_likelihood,
    linear_betas,
)

pytestmark = pytest.mark.usefixtures("float64")  # closed forms in float64


def gaussian_eps_net(process, mu, s):
    """Exact E[ε | x_t] for x_0 ~ N(mu, diag s²): √(1-ᾱ)(x_t - √ᾱ μ) / (ᾱ s² + 1 - ᾱ)."""
    mu, s2 = torch.as_tensor(mu).view(1, -1, 1, 1), torch.as_tensor(s).view(1, -1, 1, 1) ** 2

    def net(x_t, t_net):
        ab = (1 / (1 + process.sigma_at(t_net.double()) ** 2)).view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / (ab * s2 + 1 - ab)

    return net


def as_v_net(process, eps_net):
    """The same predictor expressed as v = √ᾱ ε̂ - √(1-ᾱ) x̂_0."""

    def net(x_t, t_net):
        ab = (1 / (1 + process.sigma_at(t_net.double()) ** 2)).view(-1, 1, 1, 1)
        eps = eps_net(x_t, t_net)
        x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0

    return net


def test_linear_schedule_matches_closed_form():
    p = GaussianDiffusion(linear_betas(1000))
    for t in (0, 1, 420, 999):
        beta = 1e-4 + t * (0.02 - 1e-4) / 999
        ab = math.exp(
            math.fsum(math.log(1 - (1e-4 + s * (0.02 - 1e-4) / 999)) for s in range(t + 1))
        )
        assert float(p.betas[t]) == pytest.approx(beta, rel=1e-12)
        assert float(p.alphas_cumprod[t]) == pytest.approx(ab, rel=1e-10)
    assert float(p.alphas_cumprod[-1]) == pytest.approx(4.0358e-5, rel=1e-4)
    assert p.betas.dtype == torch.float64


def test_cosine_schedule_matches_closed_form():
    T, s = 1000, 0.008
    p = GaussianDiffusion(cosine_betas(T))

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):  # unclipped region: ᾱ_{t+1} = f(t+1) / f(0)
        assert float(p.alphas_cumprod[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert float(p.betas.max()) == pytest.approx(0.999)  # clipped at the end
    assert bool((p.betas[:-1] < p.betas[1:]).all())


def test_posterior_matches_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) by conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0."""
    p = GaussianDiffusion(linear_betas(1000))
    x0, x_t = torch.tensor([[[[0.3]]]]), torch.tensor([[[[-0.7]]]])
    for t in (1, 2, 420, 999):
        ab_prev, ab = float(p.alphas_cumprod[t - 1]), float(p.alphas_cumprod[t])
        alpha, beta = 1 - float(p.betas[t]), float(p.betas[t])
        v1 = 1 - ab_prev  # Var(x_{t-1} | x_0)
        c = math.sqrt(alpha) * v1  # Cov(x_{t-1}, x_t | x_0)
        v2 = alpha * v1 + beta  # Var(x_t | x_0)
        mean = math.sqrt(ab_prev) * 0.3 + c / v2 * (-0.7 - math.sqrt(ab) * 0.3)
        var = v1 - c * c / v2
        tt = torch.tensor([t])
        got_mean, got_logvar = p.q_posterior(x0, x_t, tt)
        assert float(got_mean) == pytest.approx(mean, rel=1e-10, abs=1e-12)
        assert math.exp(float(got_logvar)) == pytest.approx(var, rel=1e-10)
        assert float(p.posterior_variance[t]) == pytest.approx(var, rel=1e-10)
    # at t = 0 (paper step 1) the posterior mean is x_0 itself
    assert float(p.coef1[0]) == pytest.approx(1.0) and float(p.coef2[0]) == 0.0


def test_q_sample_moments():
    p = GaussianDiffusion(linear_betas(1000))
    g = torch.Generator().manual_seed(0)
    n, t = 200_000, torch.tensor([300])
    x0 = torch.full((n, 1, 1, 1), 0.5)
    x_t = p.q_sample(x0, t.expand(n), torch.randn(n, 1, 1, 1, generator=g))
    ab = float(p.alphas_cumprod[300])
    # standard errors: sqrt(var / n) = 0.0018 for the mean; 0.3% for the variance
    assert float(x_t.mean()) == pytest.approx(math.sqrt(ab) * 0.5, abs=0.01)
    assert float(x_t.var()) == pytest.approx(1 - ab, rel=0.015)


def test_respace_and_sigma_roundtrip():
    p = GaussianDiffusion(linear_betas(1000))
    r = p.respace([0, 249, 499, 749, 999])
    assert torch.allclose(r.alphas_cumprod, p.alphas_cumprod[[0, 249, 499, 749, 999]], rtol=1e-12)
    assert r.timestep_map.tolist() == [0, 249, 499, 749, 999]
    t = torch.tensor([0.0, 0.5, 17.25, 998.9, 999.0])
    assert torch.allclose(p.t_at(p.sigma_at(t)), t, atol=1e-9)
    assert torch.allclose(p.sigma_at(torch.arange(1000.0)), p.sigmas, rtol=1e-12)


def test_discretized_gaussian_is_a_distribution_and_matches_cdf_differences():
    K = 17
    levels = torch.linspace(-1, 1, K).view(K, 1)
    for mean, std in ((0.1, 0.05), (0.9, 0.3), (-3.0, 0.2), (5.0, 0.01), (0.03, 1e-3)):
        logp = discretized_gaussian_log_likelihood(
            levels, torch.tensor(mean), torch.tensor(2 * math.log(std)), K
        )
        assert torch.isfinite(logp).all()
        assert float(torch.logsumexp(logp, 0)) == pytest.approx(0.0, abs=1e-10)
    # an interior bin far in the right tail (Φ(b) - Φ(a) underflows when computed naively)
    x, half = torch.tensor([0.5]), 1 / 16
    logp = discretized_gaussian_log_likelihood(
        x, torch.tensor(0.0), torch.tensor(2 * math.log(0.02)), K
    )
    ref = norm.logsf((0.5 - half) / 0.02) + math.log1p(
        -math.exp(norm.logsf((0.5 + half) / 0.02) - norm.logsf((0.5 - half) / 0.02))
    )
    assert float(logp) == pytest.approx(ref, rel=1e-9)


def test_eps_and_v_prediction_are_consistent():
    pe = GaussianDiffusion(linear_betas(100), prediction="eps")
    pv = GaussianDiffusion(linear_betas(100), prediction="v")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(6, 2, 1, 1, generator=g) * 2 - 1, torch.randn(6, 2, 1, 1, generator=g)
    t = torch.tensor([0, 5, 20, 50, 80, 99])
    x_t = pe.q_sample(x0, t, eps)
    ab = pe.extract(pe.alphas_cumprod, t, x0)
    v = pv.target(x0, eps, t)
    for proc, out in ((pe, eps), (pv, v)):  # the true targets recover (ε, x_0) exactly
        e_hat, x0_hat = proc.split(out, x_t, ab)
        assert torch.allclose(e_hat, eps, atol=1e-12) and torch.allclose(x0_hat, x0, atol=1e-10)
    # the same (wrong) predictor: ε-MSE = ᾱ · v-MSE for every example
    net_e = gaussian_eps_net(pe, [0.2, -0.1], [0.4, 0.3])
    net_v = as_v_net(pe, net_e)
    le = pe.simple_loss(net_e, x0, t, eps)
    lv = pv.simple_loss(net_v, x0, t, eps)
    assert torch.allclose(le, ab.flatten() * lv, rtol=1e-9)
    # and the same variational bound
    gen = [torch.Generator().manual_seed(i) for i in range(2)]
    be = pe.vlb_terms(net_e, x0[:2], 64, generator=gen)["vlb"]
    gen = [torch.Generator().manual_seed(i) for i in range(2)]
    bv = pv.vlb_terms(net_v, x0[:2], 64, generator=gen)["vlb"]
    assert torch.allclose(be, bv, rtol=1e-9)


def test_vlb_terms_finite_nonnegative_and_chunk_independent():
    p = GaussianDiffusion(linear_betas(200))
    K = 17
    x0 = (
        torch.randint(0, K, (5, 1, 2, 2), generator=torch.Generator().manual_seed(0))
        * 2.0
        / (K - 1)
        - 1
    )
    net = gaussian_eps_net(p, [0.5], [0.1])  # a poor model for this data: large KL terms
    gens = [torch.Generator().manual_seed(i) for i in range(5)]
    a = p.vlb_terms(net, x0, K, generator=gens, max_batch=40)
    gens = [torch.Generator().manual_seed(i) for i in range(5)]
    b = p.vlb_terms(net, x0, K, generator=gens, max_batch=10_000)
    assert torch.allclose(a["vlb"], b["vlb"], rtol=1e-12)
    per_t = a["per_t"]
    assert per_t.shape == (5, 200) and torch.isfinite(per_t).all()
    assert bool((per_t >= -1e-9).all())  # KLs and -log P are non-negative
    assert torch.allclose(a["vlb"], a["prior"] + per_t.sum(1), rtol=1e-12)
    assert bool((a["vlb"] >= a["decoder"]).all()) and bool((a["prior"] > 0).all())


def optimal_fraction(p, s, t):
    """f ∈ [0, 1] such that exp(f log β_t + (1 - f) log β̃_t) is the variance minimizing
    E[KL_t] for x_0 ~ N(·, s²) under the exact ε-model: β̃_t + coef1² Var(x_0 | x_t)."""
    beta, ab = float(p.betas[t]), float(p.alphas_cumprod[t])
    ab_prev = float(p.alphas_cumprod_prev[t])
    var_x0 = s * s * (1 - ab) / (ab * s * s + 1 - ab)
    if t == 0:  # the decoder: σ² = Var(x_0 | x_1), between β̃ of t = 1 and β of t = 0
        bt, best = float(p.posterior_log_variance_clipped[0].exp()), var_x0
    else:
        bt = beta * (1 - ab_prev) / (1 - ab)
        best = bt + (beta * math.sqrt(ab_prev) / (1 - ab)) ** 2 * var_x0
    return min(max(math.log(best / bt) / math.log(beta / bt), 0.0), 1.0)


def expected_gap_per_dim(p, s, mu, variance):
    """Closed-form E[L_vlb] - H(x_0) per dimension for x_0 ~ N(mu, s²) and the exact ε-model
    (continuous data, fine-bin limit): E[KL_t] = ½[log(σ_p²/β̃_t) - 1 + β̃_t/σ_p²
    + coef1² Var(x_0 | x_t)/σ_p²], E[L_0] = ½ log(2π σ_0²) + Var(x_0 | x_1)/(2 σ_0²),
    E[L_T] = ½[-log(1-ᾱ_T) - ᾱ_T + ᾱ_T (mu² + s²)]. ``variance``: small, large or optimal
    (the learned interpolation at :func:`optimal_fraction`)."""
    beta, ab = p.betas.tolist(), p.alphas_cumprod.tolist()

    def var_x0(t):
        return s * s * (1 - ab[t]) / (ab[t] * s * s + 1 - ab[t])

    total = 0.0
    for t in range(1, p.T):
        bt = beta[t] * (1 - ab[t - 1]) / (1 - ab[t])
        c1 = beta[t] * math.sqrt(ab[t - 1]) / (1 - ab[t])
        sp2 = {"small": bt, "large": beta[t]}.get(variance)
        if sp2 is None:
            f = optimal_fraction(p, s, t)
            sp2 = math.exp(f * math.log(beta[t]) + (1 - f) * math.log(bt))
        total += 0.5 * (math.log(sp2 / bt) - 1 + bt / sp2 + c1 * c1 * var_x0(t) / sp2)
    s0 = beta[1] * (1 - ab[0]) / (1 - ab[1])
    if variance == "optimal":
        f = optimal_fraction(p, s, 0)
        s0 = math.exp(f * math.log(beta[0]) + (1 - f) * math.log(s0))
    total += 0.5 * math.log(2 * math.pi * s0) + var_x0(0) / (2 * s0)
    total += 0.5 * (-math.log(1 - ab[-1]) - ab[-1] + ab[-1] * (mu * mu + s * s))
    return total - 0.5 * math.log(2 * math.pi * math.e * s * s)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_vlb_of_the_exact_model_matches_the_closed_form_gap(variance):
    """Finely discretized 2-D Gaussian (K = 4097), exact ε-model, T = 1000. The bound exceeds
    the true discrete NLL by the closed-form gap of the fixed-variance reverse process (0.54
    nats/dim with β̃_t, 0.12 with β_t: mostly the t = 1 decoder, whose fixed variance β̃_2 is half
    of Var(x_0 | x_1)). The Monte-Carlo mean over 1500 examples must match it within 3 standard
    errors (~0.06) + 0.01 nats; the gap itself is ≥ 0 (an honest bound) and < 0.6 nats/dim."""
    mu, s, K = torch.tensor([0.1, -0.2]), torch.tensor([0.15, 0.2]), 4097
    p = GaussianDiffusion(linear_betas(1000))
    expected = sum(expected_gap_per_dim(p, float(si), float(mi), variance) for si, mi in zip(s, mu))
    assert 0 < expected < 1.2
    g = torch.Generator().manual_seed(3)
    n = 1500
    xc = mu + s * torch.randn(n, 2, generator=g)
    k = ((xc + 1) * (K - 1) / 2).round().clamp(0, K - 1)
    x0 = (k * 2 / (K - 1) - 1).view(n, 2, 1, 1)
    half = 1 / (K - 1)
    lo = torch.where(k == 0, -math.inf, (x0.view(n, 2) - half - mu) / s)
    hi = torch.where(k == K - 1, math.inf, (x0.view(n, 2) + half - mu) / s)
    true_nll = -torch.log(torch.as_tensor(norm.cdf(hi.numpy()) - norm.cdf(lo.numpy()))).sum(1)
    terms = p.vlb_terms(
        gaussian_eps_net(p, mu, s),
        x0,
        K,
        variance=variance,
        clip=False,
        generator=g,
        max_batch=100_000,
    )
    gap = terms["vlb"] - true_nll
    se = float(gap.std()) / math.sqrt(n)
    assert abs(float(gap.mean()) - expected) < 3 * se + 0.01, (float(gap.mean()), expected, se)


def learned_net(process, mu, s, frac):
    """The exact ε-model with a variance channel v = 2 f - 1 per dimension, where
    ``frac(t) -> [C]`` gives f at integer index t."""
    eps_net = gaussian_eps_net(process, mu, s)

    def net(x_t, t_net):
        t = process.t_at(process.sigma_at(t_net.double())).round().long()
        f = torch.stack([torch.as_tensor(frac(int(i)), dtype=x_t.dtype) for i in t])
        return torch.cat([eps_net(x_t, t_net), (2 * f - 1).view(*f.shape, 1, 1).expand_as(x_t)], 1)

    return net


@pytest.mark.parametrize("variance,f", [("small", 0.0), ("large", 1.0)])
def test_learned_variance_interpolates_between_the_fixed_ones(variance, f):
    """v = -1 is β̃_t and v = +1 is β_t: the learned bound's terms equal the fixed ones."""
    mu, s, K = [0.1, -0.2], [0.15, 0.2], 255
    p = GaussianDiffusion(linear_betas(100))
    x0 = torch.tensor([[0.3, -0.1], [-0.5, 0.2]]).view(2, 2, 1, 1)

    def bound(net, var):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return p.vlb_terms(net, x0, K, variance=var, clip=False, generator=gens)

    fixed = bound(gaussian_eps_net(p, mu, s), variance)
    learned = bound(learned_net(p, mu, s, lambda t: [f, f]), "learned")
    if variance == "small":
        assert torch.allclose(learned["vlb"], fixed["vlb"], rtol=1e-12)
    else:  # at t = 0 the learned range ends at β of t = 0, the fixed large variance at β̃_1
        assert torch.allclose(learned["per_t"][:, 1:], fixed["per_t"][:, 1:], rtol=1e-12)
        assert not torch.allclose(learned["decoder"], fixed["decoder"])


def test_vlb_with_learned_optimal_variances_matches_its_closed_form_gap():
    """The exact ε-model with the variance interpolation set to its optimum: the Monte-Carlo
    bound matches the closed-form gap, which vanishes (< 1e-6 nats/dim, against 0.54 with β̃_t
    and 0.12 with β_t): for Gaussian data the whole gap of the exact model is the fixed reverse
    variance, which learning the variances removes (Nichol & Dhariwal 2021)."""
    mu, s, K = torch.tensor([0.1, -0.2]), torch.tensor([0.15, 0.2]), 4097
    p = GaussianDiffusion(linear_betas(1000))
    gaps = {
        v: sum(expected_gap_per_dim(p, float(si), float(mi), v) for si, mi in zip(s, mu))
        for v in ("small", "large", "optimal")
    }
    assert abs(gaps["optimal"]) < 2e-3 and min(gaps["small"], gaps["large"]) > 0.2
    g = torch.Generator().manual_seed(4)
    n = 1000
    xc = mu + s * torch.randn(n, 2, generator=g)
    k = ((xc + 1) * (K - 1) / 2).round().clamp(0, K - 1)
    x0 = (k * 2 / (K - 1) - 1).view(n, 2, 1, 1)
    half = 1 / (K - 1)
    lo = (x0.view(n, 2) - half - mu) / s
    hi = (x0.view(n, 2) + half - mu) / s
    true_nll = -torch.log(torch.as_tensor(norm.cdf(hi.numpy()) - norm.cdf(lo.numpy()))).sum(1)
    fracs = [[optimal_fraction(p, float(si), t) for si in s] for t in range(p.T)]
    net = learned_net(p, mu, s, lambda t: fracs[t])
    terms = p.vlb_terms(net, x0, K, variance="learned", clip=False, generator=g, max_batch=100_000)
    gap = terms["vlb"] - true_nll
    se = float(gap.std()) / math.sqrt(n)
    assert abs(float(gap.mean()) - gaps["optimal"]) < 3 * se + 0.01, (gap.mean(), gaps, se)


def test_hybrid_loss_trains_the_prediction_by_l_simple_and_the_variance_by_the_bound():
    """Gradients: L_simple reaches only the prediction channels, the L_vlb term only the
    variance channels (stop-gradient on the mean); loss = simple + λ vlb, vlb = T L_t in
    bits/dim."""
    p = GaussianDiffusion(linear_betas(50))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 2, 2, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 7, 49])
    out = (0.1 * torch.randn(3, 2, 2, 2, generator=g)).requires_grad_()
    terms = p.hybrid_loss(lambda x, tn: out, x0, t, eps, 17, weight=1e-3)
    assert torch.allclose(terms["loss"], terms["simple"] + 1e-3 * terms["vlb"])
    (g_simple,) = torch.autograd.grad(terms["simple"].sum(), out, retain_graph=True)
    (g_vlb,) = torch.autograd.grad(terms["vlb"].sum(), out)
    assert bool((g_simple[:, 1:] == 0).all()) and bool((g_simple[:, :1] != 0).any())
    assert bool((g_vlb[:, :1] == 0).all()) and bool((g_vlb[:, 1:] != 0).any())
    x_t = p.q_sample(x0, t, eps)
    lt = p.term(out.detach(), x0, x_t, t, 17, variance="learned", clip=False)
    assert torch.allclose(terms["vlb"], 50 * lt / (4 * math.log(2)))
