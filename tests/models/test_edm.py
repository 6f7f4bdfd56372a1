"""EDM (Karras et al. 2022): Table 1 closed forms, the exact denoiser of Gaussian data through
each preconditioning (samplers, score and ODE likelihood against closed forms), training,
per-sample generators and option errors."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from scipy.stats import norm
from torch import nn

from genbench.models.diffusion.edm import EDM, VP_M, vp_sigma, vp_time
from genbench.models.diffusion.likelihood import decoder_log_normalizer, flow_log_density
from genbench.models.diffusion.multistep import dpmpp_2m, logsnr_sigmas, unipc
from genbench.models.diffusion.samplers import edm_sample, karras_sigmas
from genbench.models.options import OptionError
from genbench.nn.random import per_sample_generators, randn

CONF = Path(__file__).resolve().parents[2] / "conf"
PRECONDS = ("edm", "vp", "ve")
S = 0.3  # standard deviation of the Gaussian toy data N(0, S² I)


class ExactF(nn.Module):
    """The network F that makes D(x; σ) = x S² / (S² + σ²), the exact denoiser of N(0, S² I):
    it reads σ back from c_noise and x from c_in x, so every coefficient of Table 1 is used."""

    def __init__(self, model: EDM) -> None:
        super().__init__()
        self.model = [model]  # not a submodule
        self.unused = nn.Parameter(torch.zeros(()))  # the model reads its dtype from a parameter

    def forward(self, inp, c_noise):
        m, c = self.model[0], c_noise.double()
        sigma = {"edm": (4 * c).exp(), "ve": 2 * c.exp(), "vp": vp_sigma(c / (VP_M - 1))}
        sigma = sigma[m.precond]
        c_skip, c_out, c_in, _ = (k.view(-1, 1, 1, 1) for k in m.coefficients(sigma))
        x = inp / c_in
        d = x * S**2 / (S**2 + sigma.view(-1, 1, 1, 1) ** 2)
        return (d - c_skip * x) / c_out


def exact(precond, levels=33):
    """An EDM on 2-D toys (float64) whose denoiser is exact for N(0, S² I)."""
    m = EDM((2, 1, 1), levels, precond=precond, mlp_hidden=8, mlp_blocks=1)
    m.net = ExactF(m)
    return m.double().eval()


def tiny(shape=(1, 8, 8), levels=17, **kw):
    """A small, non-trivial model: zero-initialized output layers re-drawn at random."""
    torch.manual_seed(0)
    kw = {"ch": 8, "ch_mult": (1, 2), "norm_groups": 4, "mlp_hidden": 32, **kw}
    m = EDM(shape, levels, **kw)
    with torch.no_grad():
        for p in m.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.05)
    return m.eval()


def test_preconditioning_matches_table_1_at_hand_computed_points():
    """σ_d = 0.5. EDM at σ = 0.5: c_skip = ½, c_out = 0.25/√0.5, c_in = √2, c_noise = ¼ ln ½;
    at σ = 1: 0.2, 0.5/√1.25, 1/√1.25, 0. VP at σ = 1: c_skip = 1, c_out = -1, c_in = 1/√2,
    c_noise = 999 t(1) = 999 (√(0.01 + 39.8 ln 2) - 0.1)/19.9 = 258.7013. VE at σ = 2: 1, 2, 1,
    ln 1 = 0. λ(σ) c_out(σ)² = 1 for EDM (unit-variance training target), λ = 1/σ² for VP/VE."""
    sig = torch.tensor([0.5, 1.0], dtype=torch.float64)
    got = torch.stack(exact("edm").coefficients(sig))
    want = [[0.5, 0.2], [0.25 / 0.5**0.5, 0.5 / 1.25**0.5], [2**0.5, 1.25**-0.5], [-0.1732868, 0]]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-7), got
    got = torch.stack(exact("vp").coefficients(torch.tensor([1.0], dtype=torch.float64)))
    assert torch.allclose(
        got.flatten(), torch.tensor([1, -1, 0.5**0.5, 258.7013]).double(), atol=1e-4
    )
    got = torch.stack(exact("ve").coefficients(torch.tensor([2.0], dtype=torch.float64)))
    assert torch.allclose(got.flatten(), torch.tensor([1.0, 2.0, 1.0, 0.0]).double())
    grid = torch.logspace(-3, 2, 11, dtype=torch.float64)
    m = exact("edm")
    assert torch.allclose(
        m.loss_weight(grid) * m.coefficients(grid)[1] ** 2, torch.ones(11).double()
    )
    for p in ("vp", "ve"):
        assert torch.allclose(exact(p).loss_weight(grid), grid**-2)


def test_vp_sigma_closed_form_and_inverse():
    """σ(t) = √(exp(½ β_d t² + β_min t) - 1): σ(0.5) = 3.412918, σ(1) = 152.16697 (β_d = 19.9,
    β_min = 0.1), and t(σ(t)) = t across [1e-5, 1]."""
    got = vp_sigma(torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert torch.allclose(got, torch.tensor([3.412918, 152.16697]).double(), rtol=1e-6), got
    t = torch.linspace(1e-5, 1, 50, dtype=torch.float64)
    assert torch.allclose(vp_time(vp_sigma(t)), t, atol=1e-12)


@pytest.mark.parametrize("precond", PRECONDS)
def test_training_sigma_distributions(precond):
    """EDM: ln σ ~ N(-1.2, 1.2²); VP: t(σ) ~ U(1e-5, 1); VE: ln σ ~ U(ln 0.02, ln 100); means
    within 4 standard errors over 20,000 draws, supports respected."""
    torch.manual_seed(0)
    n = 20_000
    sig = exact(precond).training_sigmas(n, torch.device("cpu"))
    if precond == "edm":
        z = sig.log()
        assert abs(float(z.mean()) + 1.2) < 4 * 1.2 / n**0.5 and abs(float(z.std()) - 1.2) < 0.03
        return
    u = vp_time(sig) if precond == "vp" else sig.log()
    lo, hi = (1e-5, 1.0) if precond == "vp" else (math.log(0.02), math.log(100))
    assert float(u.min()) >= lo - 1e-9 and float(u.max()) <= hi + 1e-9
    se = (hi - lo) / math.sqrt(12 * n)
    assert abs(float(u.mean()) - (lo + hi) / 2) < 4 * se


@pytest.mark.parametrize("precond", PRECONDS)
def test_exact_denoiser_and_score_through_the_preconditioning(precond):
    """D(x; σ) = x S²/(S²+σ²) and score = -x/(S²+σ²) through each preconditioning."""
    m = exact(precond)
    x = torch.randn(3, 2, 1, 1, generator=torch.Generator().manual_seed(0)).double()
    sig = torch.tensor([0.01, 0.7, 50.0], dtype=torch.float64).view(-1, 1, 1, 1)
    assert torch.allclose(m.denoise(x, sig.flatten()), x * S**2 / (S**2 + sig**2), atol=1e-10)
    assert torch.allclose(m.score(x, sig.flatten()), -x / (S**2 + sig**2), atol=1e-8)


@pytest.mark.parametrize("precond", PRECONDS)
def test_heun_on_the_exact_denoiser_converges_to_the_flow(precond):
    """Exact ODE: x(0) = x_T S/√(S² + σ_max²). Heun's relative error is 0.065 at the default 18
    levels (35 NFE), shrinks ~ 1/steps² (0.0071 at 50, 0.0017 at 100), and 4,000 draws at 100
    levels have variance S² within 4 standard errors."""
    m = exact(precond)
    x_T = torch.full((1, 2, 1, 1), 80.0, dtype=torch.float64)
    errors = []
    for steps in (18, 50, 100):
        x0, nfe = edm_sample(m.denoise, x_T, karras_sigmas(0.002, 80.0, steps))
        assert nfe == 2 * steps - 1
        errors.append(abs(float(x0[0, 0, 0, 0]) / (80 * S / math.sqrt(S**2 + 80**2)) - 1))
    assert errors[0] < 0.07 and errors[1] < errors[0] / 7 and errors[2] < errors[1] / 3.5, errors
    n = 2000
    x_T = 80 * torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(1)).double()
    x0, _ = edm_sample(m.denoise, x_T, karras_sigmas(0.002, 80.0, 100))
    se = S**2 * math.sqrt(2 / (2 * n))
    assert abs(float(x0.var()) - S**2) < 4 * se, (float(x0.var()), S**2)


def test_stochastic_sampler_keeps_the_variance_and_churn_0_is_heun():
    """Algorithm 2 on the exact denoiser (churn 30 on σ in [0.01, 1], s_noise 1, 100 levels):
    variance S² within 4 standard errors; with churn 0 it is Algorithm 1 exactly."""
    m = exact("edm")
    n = 2000
    gens = per_sample_generators(3, 0, n)
    x_T = 80 * randn((n, 2, 1, 1), generator=gens, dtype=torch.float64)
    sig = karras_sigmas(0.002, 80.0, 100)
    kw = {"s_tmin": 0.01, "s_tmax": 1.0, "s_noise": 1.0, "generator": gens}
    x0, nfe = edm_sample(m.denoise, x_T, sig, churn=30.0, **kw)
    assert nfe == 199 and abs(float(x0.var()) - S**2) < 4 * S**2 * math.sqrt(1 / n)
    heun, _ = edm_sample(m.denoise, x_T, sig)
    assert not torch.allclose(x0, heun)
    assert torch.equal(edm_sample(m.denoise, x_T, sig, churn=0.0, **kw)[0], heun)


@pytest.mark.parametrize("precond", PRECONDS)
def test_ode_log_density_of_the_exact_denoiser_is_the_closed_form(precond):
    """The flow maps y at σ_min to y √((S²+σ_max²)/(S²+σ_min²)) at σ_max, prior N(0, σ_max² I):
    log p = log N(y_1; 0, σ_max²) + D log(scale) within 1e-4 nats (rk45 1e-6, exact trace),
    which is the true log N(y; 0, S² + σ_min²) up to 1e-4 (the prior omits S²)."""
    m = exact(precond)
    y = torch.tensor([[0.1, -0.4], [0.5, 0.2]], dtype=torch.float64).view(2, 2, 1, 1)
    got, nfe = flow_log_density(m.flow(), y, probes=0, rtol=1e-6, atol=1e-6)
    scale = math.sqrt((S**2 + 80**2) / (S**2 + 0.002**2))
    y1 = y.flatten(1) * scale
    model = (-0.5 * y1**2 / 80**2 - 0.5 * math.log(2 * math.pi * 80**2)).sum(1) + 2 * math.log(
        scale
    )
    v = S**2 + 0.002**2
    true = (-0.5 * y.flatten(1) ** 2 / v - 0.5 * math.log(2 * math.pi * v)).sum(1)
    assert torch.allclose(got, model, atol=1e-4) and torch.allclose(got, true, atol=1e-4)
    assert bool((nfe > 20).all())


def test_nll_of_the_exact_denoiser_is_the_closed_form_gaussian_bound():
    """Discretized N(0, S²) data, K = 33: nll is -log N(z; 0, S² + σ_0²) + Σ log Σ_j N(z; u_j,
    σ_0²) at the same draws z = u_k + σ_0 ε (σ_0 = Δ/4) within 1e-3 nats, and a bound: its mean
    is above the true -log P(k) (a continuous model of discrete data: 0.27 nats above here)."""
    k_levels, n = 33, 24
    m = exact("edm", k_levels)
    centres = torch.linspace(-1, 1, k_levels, dtype=torch.float64)
    lo = torch.as_tensor(norm.cdf(((centres - 1 / 32) / S).numpy()))
    hi = torch.as_tensor(norm.cdf(((centres + 1 / 32) / S).numpy()))
    lo[0], hi[-1] = 0.0, 1.0
    probs = (hi - lo).clamp(min=1e-300)
    k = torch.multinomial(probs, 2 * n, True, generator=torch.Generator().manual_seed(0))
    x = k.view(n, 2, 1, 1)
    res = m.ode_likelihood(x, generator=per_sample_generators(0, 0, n), probes=0)
    sigma0, v64 = 0.25 * 2 / 32, torch.float64
    assert res.settings["sigma0"] == pytest.approx(sigma0) and res.settings["rtol"] == 1e-5
    z = centres[x] + sigma0 * randn(x.shape, generator=per_sample_generators(0, 0, n), dtype=v64)
    v = S**2 + sigma0**2
    closed = (0.5 * z.flatten(1) ** 2 / v + 0.5 * math.log(2 * math.pi * v)).sum(1)
    closed = closed + decoder_log_normalizer(z, k_levels, sigma0)
    assert torch.allclose(res.nll, closed, atol=1e-3), (res.nll - closed).abs().max()
    gap = res.nll - (-probs.log()[x].flatten(1).sum(1))
    assert 0 < float(gap.mean()) < 0.4, float(gap.mean())


def test_training_loss_is_finite_and_decreases():
    """Data: one 2-D point, whose exact denoiser is that point at every σ (loss 0). 30 Adam steps
    (lr 1e-2, batch 32) cut the loss, measured on the same 1,024 noise and σ draws before and
    after, by more than half (measured: 1.77 → 0.35)."""
    torch.manual_seed(0)
    m = EDM((2, 1, 1), 64, mlp_hidden=32, mlp_blocks=1, dropout=0.0)
    point = torch.tensor([60, 5]).view(1, 2, 1, 1)

    def loss():
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(123)
            return float(m.training_losses(point.repeat(1024, 1, 1, 1))["loss"].mean())

    before = loss()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(30):
        out = m.training_losses(point.repeat(32, 1, 1, 1))["loss"]
        assert out.shape == (32,) and bool(torch.isfinite(out).all())
        opt.zero_grad()
        out.mean().backward()
        opt.step()
    assert loss() < 0.5 * before, (before, loss())


@pytest.mark.parametrize("sampler", [{"name": "heun"}, {"name": "stochastic", "s_tmax": 80.0}])
def test_sample_i_does_not_depend_on_the_batch(sampler):
    m = tiny()
    with torch.inference_mode():
        three = m.sample(3, generator=per_sample_generators(5, 0, 3), steps=4, **sampler)
        one = m.sample(1, generator=per_sample_generators(5, 2, 1), steps=4, **sampler)
    assert torch.equal(three.x[2:], one.x) and three.nfe.tolist() == [7.0] * 3


def test_samplers_nfe_and_churn_0_equals_heun_on_the_model():
    m = tiny()

    def draw(**kw):
        with torch.inference_mode():
            return m.sample(2, generator=per_sample_generators(1, 0, 2), **kw)

    heun = draw()
    assert heun.nfe.tolist() == [35.0, 35.0]  # the default: 18 levels, 2 * 18 - 1
    assert draw(name="euler", steps=6).nfe.tolist() == [6.0, 6.0]
    assert torch.equal(draw(name="stochastic", s_churn=0.0).x, heun.x)
    assert m.resolve_sampler(name="stochastic")["s_noise"] == 1.007


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"name": "ddim"}, "sampler.name"),
        ({"steps": 0}, "sampler.steps"),
        ({"s_churn": 5.0}, "sampler.s_churn"),  # heun has no churn
        ({"name": "stochastic", "s_noise": -1.0}, "sampler.s_noise"),
        ({"rho": float("nan")}, "sampler.rho"),
    ],
)
def test_bad_sampler_options_name_their_key(kwargs, key):
    m = tiny((2, 1, 1), 8)
    with pytest.raises(OptionError) as err:
        m.sample(1, **kwargs)
    assert err.value.key == key and key in str(err.value)
    with pytest.raises(OptionError, match=key.replace(".", r"\.")):
        EDM.validate_sampler(kwargs, {})


def test_bad_model_and_estimator_options_name_their_key():
    with pytest.raises(OptionError, match=r"model\.sampler\.steps=0"):
        EDM((2, 1, 1), 8, sampler={"name": "heun", "steps": 0})
    with pytest.raises(OptionError, match=r"model\.precond='dsm'.*edm, vp, ve"):
        EDM((2, 1, 1), 8, precond="dsm")
    with pytest.raises(OptionError, match=r"model\.nll_options\.solver='rk4'"):
        EDM((2, 1, 1), 8, nll_options={"solver": "rk4"})
    key = "eval.estimator_options.ode"
    with pytest.raises(OptionError, match=r"eval\.estimator_options\.ode\.probes=-1"):
        EDM.validate_estimator("ode", {"probes": -1}, {}, key=key)
    with pytest.raises(OptionError, match=r"eval\.estimator_options\.ode\.steps=1"):
        EDM.validate_estimator("ode", {"solver": "heun", "steps": 1}, {}, key=key)
    with pytest.raises(OptionError, match="tol"):
        tiny((2, 1, 1), 8).ode_likelihood(torch.zeros(1, 2, 1, 1).long(), tol=1)


def test_cifar10_preset_samples_with_35_nfe():
    """Karras et al. 2022, Table 2: FID 1.97 at 35 NFE (Heun, 18 levels)."""
    exp = OmegaConf.load(CONF / "experiment" / "edm_cifar10.yaml")
    assert exp.expected.fid == 1.97 and exp.expected.nfe == 35
    assert exp.trainer.batch_size * exp.trainer.max_steps == 200_000_000
    m = tiny((2, 1, 1), 8, sampler=OmegaConf.to_container(exp.model.sampler))
    with torch.inference_mode():
        assert m.sample(1).nfe.tolist() == [35.0]


@pytest.mark.parametrize("name", ["dpmpp", "unipc"])
@pytest.mark.parametrize("grid", ["logsnr", "karras"])
def test_multistep_samplers_run_on_edms_coordinates_and_converge_to_the_flow(name, grid):
    """``sampler=dpmpp|unipc`` is the solver of :mod:`.multistep` on EDM's own coordinates from
    σ_max over ``steps`` levels of ``grid`` then to 0 (same levels as calling it directly, NFE =
    steps); with the exact denoiser its end approaches the exact flow's x_T S / √(S² + σ_max²)
    as the steps double (at least 2.5x closer from 20 to 40 calls; 1.7 % off at 20 on logsnr)."""
    m = exact("edm", levels=33)
    solve = {"dpmpp": dpmpp_2m, "unipc": unipc}[name]
    levels = {"logsnr": logsnr_sigmas, "karras": karras_sigmas}[grid]
    n = 64
    got = m.sample(n, generator=per_sample_generators(0, 0, n), name=name, steps=20, grid=grid)
    assert got.nfe.tolist() == [20.0] * n
    x_T = 80 * randn((n, 2, 1, 1), generator=per_sample_generators(0, 0, n), dtype=torch.float64)
    direct, _ = solve(m.denoise, x_T, [*levels(0.002, 80.0, 20), 0.0])
    assert torch.equal(got.x, m.to_levels(direct))
    x = torch.full((1, 2, 1, 1), 80.0, dtype=torch.float64)
    end = 80 * S / math.sqrt(S**2 + 80**2)
    err = [
        abs(float(solve(m.denoise, x, [*levels(0.002, 80.0, k), 0.0])[0][0, 0]) / end - 1)
        for k in (20, 40)
    ]
    assert err[1] < err[0] / 2.5 and err[0] < 0.06, err
