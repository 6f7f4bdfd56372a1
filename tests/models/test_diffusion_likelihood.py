"""Probability-flow ODE likelihood against closed-form Gaussian densities."""

import math

import pytest
import torch
from scipy.stats import norm

from genbench.models.diffusion.likelihood import dequantize, ode_log_density, ode_nll
from genbench.models.diffusion.process import GaussianDiffusion, linear_betas

pytestmark = pytest.mark.usefixtures("float64")  # closed forms in float64

MU = torch.tensor([0.2, -0.1], dtype=torch.float64)
COV = torch.tensor([[0.04, 0.03], [0.03, 0.09]], dtype=torch.float64)


def gaussian_eps_net(process, mu, cov):
    """Exact E[ε | x_t] for x_0 ~ N(mu, cov) on data [B, 2, 1, 1]:
    √(1-ᾱ) (ᾱ cov + (1-ᾱ) I)^{-1} (x_t - √ᾱ mu)."""

    def net(x_t, t_net):
        ab = (1 / (1 + process.sigma_at(t_net.double()) ** 2)).view(-1, 1, 1)
        m = ab * cov + (1 - ab) * torch.eye(2)
        r = (x_t.view(-1, 2) - ab.view(-1, 1).sqrt() * mu)[..., None]
        return ((1 - ab).sqrt() * torch.linalg.solve(m, r)).view(x_t.shape)

    return net


def log_normal(y, mu, cov):
    d = y - mu
    return (
        -0.5 * (d @ torch.linalg.inv(cov) * d).sum(1)
        - 0.5 * torch.logdet(cov)
        - math.log(2 * math.pi)
    )


def flow_log_density(p, y, mu, cov):
    """The model's log-density in closed form for Gaussian data: the flow maps y - μ to
    (Σ + σ_max²)^½ (Σ + σ_min²)^-½ (y - μ), the trace integral is ½ log det of that ratio, and
    the prior is N(0, I) on x_T = √ᾱ_T y_T."""
    evals, evecs = torch.linalg.eigh(cov)
    scale = ((evals + p.sigmas[-1] ** 2) / (evals + p.sigmas[0] ** 2)).sqrt()
    y1 = mu + ((y - mu) @ evecs * scale) @ evecs.T
    ab = p.alphas_cumprod[-1]
    log_prior = (-0.5 * ab * y1.square() - 0.5 * math.log(2 * math.pi)).sum(1) + ab.log()
    return log_prior + scale.log().sum()


def test_exact_score_gives_the_true_log_density():
    """Exact ε of N(μ, Σ) (correlated): the ODE log-density equals the closed-form model density
    within 1e-4 nats (RK45, rtol 1e-6, exact trace) and 0.06 with Heun at 100 noise levels (error
    ∝ 1/steps²: at least 3x smaller than with 50),
    and the true log N(y; μ, Σ + σ_min² I) within 1e-2: the N(0, I) prior ignores the data mean,
    which shifts log p pointwise by O(|μ| |z| / σ_max) ≈ 4e-3 (zero on average)."""
    p = GaussianDiffusion(linear_betas(1000))
    net = gaussian_eps_net(p, MU, COV)
    y = torch.tensor([[0.1, 0.0], [0.5, -0.4], [-0.3, 0.3]])
    true = log_normal(y, MU, COV + float(p.sigmas[0]) ** 2 * torch.eye(2))
    model = flow_log_density(p, y, MU, COV)
    assert torch.allclose(model, true, atol=1e-2)
    got, nfe = ode_log_density(net, p, y.view(3, 2, 1, 1), probes=0, rtol=1e-6, atol=1e-6)
    assert torch.allclose(got, model, atol=1e-4), (got, model)
    assert bool((nfe > 10).all())
    errors = []
    for steps in (50, 100):
        got, nfe = ode_log_density(net, p, y.view(3, 2, 1, 1), probes=0, solver="heun", steps=steps)
        assert bool((nfe == 2 * steps - 2).all())
        errors.append(float((got - model).abs().max()))
    assert errors[1] < 0.06 and errors[1] < errors[0] / 3, errors


def test_hutchinson_is_exact_for_diagonal_and_unbiased_otherwise():
    """Rademacher probes give zᵀJz = tr J when J is diagonal (independent dims): equal to the
    exact-trace result within 1e-6. With correlated dims the single-probe estimate is noisy but
    unbiased: the mean over 300 repeats is within 4 standard errors of the exact value."""
    p = GaussianDiffusion(linear_betas(1000))
    diag = torch.diag(torch.tensor([0.04, 0.09]))
    y = torch.tensor([[0.1, 0.0]]).view(1, 2, 1, 1)
    exact, _ = ode_log_density(gaussian_eps_net(p, MU, diag), p, y, probes=0, rtol=1e-6)
    hutch, _ = ode_log_density(
        gaussian_eps_net(p, MU, diag),
        p,
        y,
        probes=2,
        rtol=1e-6,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(exact, hutch, atol=1e-6)
    net = gaussian_eps_net(p, MU, COV)
    n = 300
    ys = y.expand(n, 2, 1, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    exact, _ = ode_log_density(net, p, y, probes=0, rtol=1e-4, atol=1e-4)
    est, _ = ode_log_density(net, p, ys, probes=1, rtol=1e-4, atol=1e-4, generator=gens)
    se = float(est.std()) / math.sqrt(n)
    assert float(est.std()) > 1e-3  # the estimator really is stochastic here
    assert abs(float(est.mean() - exact)) < 4 * se, (float(est.mean()), float(exact), se)


def test_dequantized_nll_matches_the_entropy_of_discrete_gaussian_data():
    """Data: N(MU, diag(0.2², 0.3²)) discretized to K = 33 levels on [-1, 1]; model: the exact
    continuous score, for which the uniform dequantization is the fitting bound. E[ode_nll]
    (nats, with the D log((K-1)/2) correction) must equal the
    discrete entropy up to the dequantization gap (~Δ²/(24 s²) ≈ 0.005 nats) and Monte-Carlo
    error: |mean - H| < 3 s.e. + 0.02."""
    K, s = 33, torch.tensor([0.2, 0.3])
    p = GaussianDiffusion(linear_betas(1000))
    net = gaussian_eps_net(p, MU, torch.diag(s**2))
    g = torch.Generator().manual_seed(5)
    n = 400
    k = (((MU + s * torch.randn(n, 2, generator=g)) + 1) * (K - 1) / 2).round().clamp(0, K - 1)
    x = k.long().view(n, 2, 1, 1)
    centers = torch.linspace(-1, 1, K)
    half = 1 / (K - 1)
    h = 0.0
    for d in range(2):  # exact entropy of each discretized marginal
        lo = norm.cdf(((centers - half - MU[d]) / s[d]).numpy())
        hi = norm.cdf(((centers + half - MU[d]) / s[d]).numpy())
        lo[0], hi[-1] = 0.0, 1.0
        probs = torch.as_tensor(hi - lo)
        h -= float((probs * probs.clamp(min=1e-300).log()).sum())
    res = ode_nll(
        net,
        p,
        x,
        K,
        generator=g,
        probes=1,
        rtol=1e-4,
        atol=1e-4,
        dequantization="uniform",
        dtype=torch.float64,
    )
    se = float(res.nll.std()) / math.sqrt(n)
    assert abs(float(res.nll.mean()) - h) < 3 * se + 0.02, (float(res.nll.mean()), h, se)
    assert res.settings == {
        "estimator": "hutchinson-rademacher",
        "probes": 1,
        "solver": "rk45",
        "dequantization": "uniform",
        "rtol": 1e-4,
        "atol": 1e-4,
    }


def test_ode_nll_formula_and_per_sample_generators():
    """nll = -log p(u) + D log((K-1)/2) with u the dequantized data (same draws), and row i does
    not depend on the batch (per-sample generators, per-row adaptive steps)."""
    K = 17
    p = GaussianDiffusion(linear_betas(1000))
    net = gaussian_eps_net(p, MU, COV)
    x = torch.tensor([[3, 9], [16, 0], [8, 8]]).view(3, 2, 1, 1)

    def gens(idx):
        return [torch.Generator().manual_seed(100 + i) for i in idx]

    kw = {"rtol": 1e-4, "dequantization": "uniform", "dtype": torch.float64}
    full = ode_nll(net, p, x, K, generator=gens(range(3)), **kw)
    alone = ode_nll(net, p, x[2:], K, generator=gens([2]), **kw)
    assert torch.allclose(full.nll[2:], alone.nll, rtol=1e-10)
    g = gens(range(3))
    u = dequantize(x, K, generator=g, dtype=torch.float64)
    assert bool(((u - (x * 2 / (K - 1) - 1)).abs() <= 1 / (K - 1)).all())
    logp, _ = ode_log_density(net, p, u, generator=g, rtol=1e-4)
    assert torch.allclose(full.nll, -logp + 2 * math.log((K - 1) / 2), rtol=1e-10)


def test_ode_nll_works_under_inference_mode():
    p = GaussianDiffusion(linear_betas(100))
    net = gaussian_eps_net(p, MU, COV)
    x = torch.tensor([[3, 9]]).view(1, 2, 1, 1)
    with torch.inference_mode():
        res = ode_nll(
            net, p, x, 17, generator=torch.Generator().manual_seed(0), solver="heun", steps=10
        )
    assert torch.isfinite(res.nll).all() and res.settings["steps"] == 10


@pytest.mark.parametrize("probes", [0, 3])
def test_ode_log_density_gradients_do_not_leak(probes):
    """The returned log-density carries no autograd graph (it is an evaluation quantity)."""
    p = GaussianDiffusion(linear_betas(100))
    y = torch.zeros(2, 2, 1, 1)
    out, _ = ode_log_density(
        gaussian_eps_net(p, MU, COV),
        p,
        y,
        probes=probes,
        solver="euler",
        steps=5,
        generator=torch.Generator().manual_seed(0),
    )
    assert not out.requires_grad and out.shape == (2,)


def discrete_eps_net(process, probs):
    """Exact E[ε | x_t] for data whose dimension d takes level j (at u_j = 2j/(K-1) - 1) with
    probability ``probs[d, j]``, independently: x̂_0 = Σ_j w_j u_j with w_j ∝ π_j
    N(x_t; √ᾱ u_j, 1-ᾱ)."""
    d, k = probs.shape
    centres = torch.linspace(-1, 1, k, dtype=torch.float64)

    def net(x_t, t_net):
        ab = (1 / (1 + process.sigma_at(t_net.double()) ** 2)).view(-1, 1, 1)
        x = x_t.view(-1, d, 1)
        logw = probs.log() - (x - ab.sqrt() * centres).square() / (2 * (1 - ab))
        x0 = (torch.softmax(logw, -1) * centres).sum(-1, keepdim=True)
        return ((x - ab.sqrt() * x0) / (1 - ab).sqrt()).view(x_t.shape)

    return net


@pytest.mark.parametrize("levels", [16, 256])
def test_gaussian_bound_of_the_exact_denoiser_on_uniform_levels_is_log_k(levels):
    """Data uniform over K levels, the exact denoiser of those discrete data: the gaussian
    (VDM-style) bound is D log K (≥ it and within 0.02 nats/dim), while the uniform
    dequantization at σ_min is far above it at K = 16 (the network's density is a comb of
    peaks σ_min wide)."""
    p = GaussianDiffusion(linear_betas(1000))
    net = discrete_eps_net(p, torch.full((2, levels), 1 / levels))
    n = 24
    x = torch.randint(0, levels, (n, 2, 1, 1), generator=torch.Generator().manual_seed(0))

    def bound(dequantization):
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        kw = {"probes": 0, "rtol": 1e-5, "atol": 1e-5, "dtype": torch.float64}
        res = ode_nll(net, p, x, levels, generator=gens, dequantization=dequantization, **kw)
        return res.nll / 2  # nats per dimension

    gauss = bound("gaussian")
    assert float(gauss.mean()) >= math.log(levels) - 0.005
    assert float(gauss.mean()) < math.log(levels) + 0.02, (float(gauss.mean()), levels)
    if levels == 16:
        assert float(bound("uniform").mean()) > math.log(levels) + 1.0


def test_gaussian_bound_of_the_exact_denoiser_on_discretized_gaussian_data():
    """Discretized N(μ, s²) data (K = 33, one dimension per axis), the exact denoiser of the
    discrete data: the gaussian bound exceeds each example's true -log P(k) by at most a little
    (mean gap in [-3 s.e., 0.03] nats over both dims)."""
    k_levels, mu, s = 33, torch.tensor([0.2, -0.1]), torch.tensor([0.2, 0.3])
    centres = torch.linspace(-1, 1, k_levels)
    half = 1 / (k_levels - 1)
    lo = torch.as_tensor(norm.cdf(((centres - half - mu[:, None]) / s[:, None]).numpy()))
    hi = torch.as_tensor(norm.cdf(((centres + half - mu[:, None]) / s[:, None]).numpy()))
    lo[:, 0], hi[:, -1] = 0.0, 1.0
    probs = (hi - lo).clamp(min=1e-300)  # [2, K]
    p = GaussianDiffusion(linear_betas(1000))
    n = 60
    g = torch.Generator().manual_seed(2)
    x = torch.stack([torch.multinomial(probs[d], n, True, generator=g) for d in range(2)], 1)
    true_nll = -probs.log().gather(1, x.T).sum(0)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    res = ode_nll(
        discrete_eps_net(p, probs),
        p,
        x.view(n, 2, 1, 1),
        k_levels,
        generator=gens,
        probes=0,
        rtol=1e-5,
        atol=1e-5,
        dtype=torch.float64,
    )
    gap = res.nll - true_nll
    se = float(gap.std()) / math.sqrt(n)
    assert -3 * se < float(gap.mean()) < 0.03, (float(gap.mean()), se)
    assert res.settings["dequantization"] == "gaussian"
    assert res.settings["sigma0"] == pytest.approx(0.25 * 2 / 32)
