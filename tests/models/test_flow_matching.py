"""Flow matching checked against closed forms: the exact velocity of Gaussian data (the ODE maps
x_1 to s·x_1, the density at t_0 is N(0, (1-t_0)² s² + t_0²)) and of data uniform over K equally
spaced levels (the dequantized ODE bound is D log K), plus the training target, the time
distributions, per-sample generators and option errors."""

from __future__ import annotations

import math
from pathlib import Path

import genbench.conf
import pytest
import torch
import yaml

from genbench.models.diffusion.likelihood import decoder_sigma
from genbench.models.diffusion.multistep import dpmpp_2m, logsnr_sigmas, unipc
from genbench.models.flows.cnf_likelihood import SIGMA0_FLOOR, ode_log_density
from genbench.models.flows.flow_matching import (
    NET_TIME_SCALE,
    FlowMatching,
    flow_matching_loss,
    ode_sample,
    sample_time,
)
from genbench.models.options import OptionError
from genbench.nn.random import per_sample_generators, randn

S = 0.5  # std of the Gaussian data


def gaussian_velocity(x, t):
    """E[ε - x_0 | x_t = x] for x_0 ~ N(0, S²): (t - (1-t) S²) / ((1-t)² S² + t²) · x."""
    tb = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return (tb - (1 - tb) * S**2) / ((1 - tb) ** 2 * S**2 + tb**2) * x


def levels_velocity(levels):
    """E[ε - x_0 | x_t = x] for x_0 uniform over the K centres of [-1, 1], per dimension:
    (x - x̂_0) / t with x̂_0 the posterior mean, weights ∝ exp(-(x - (1-t) u_j)² / 2t²)."""
    centres = torch.linspace(-1, 1, levels, dtype=torch.float64)

    def v(x, t):
        tb = t.to(x.dtype).clamp(min=1e-6).reshape(-1, *([1] * (x.ndim - 1)))
        logits = -((x[..., None] - (1 - tb[..., None]) * centres) ** 2) / (2 * tb[..., None] ** 2)
        x0_hat = (torch.softmax(logits, -1) * centres).sum(-1)
        return (x - x0_hat) / tb

    return v


def exact_model(shape, levels, velocity):
    m = FlowMatching(shape, levels, mlp_hidden=8, mlp_blocks=1, ch=4, norm_groups=2).double()
    m.velocity = velocity  # the closed-form field replaces the network
    return m


@pytest.mark.parametrize(
    "solver,steps,tol", [("euler", 200, 5e-3), ("heun", 20, 1e-3), ("rk45", None, 2e-4)]
)
def test_exact_gaussian_velocity_maps_noise_to_s_times_noise(solver, steps, tol):
    x1 = torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opts = {"steps": steps} if steps else {"rtol": 1e-6, "atol": 1e-6}
    x0, nfe = ode_sample(gaussian_velocity, x1, solver=solver, **opts)
    err = (x0 - S * x1).abs() / x1.abs().clamp(min=0.1)  # the exact flow is x_0 = S x_1
    assert float(err.max()) < tol
    assert abs(float(x0.var()) / float(x1.var()) - S**2) < 1e-2
    expected = {"euler": 200.0, "heun": 40.0}.get(solver)
    assert expected is None or torch.equal(nfe, torch.full((2000,), expected, dtype=torch.float64))


@pytest.mark.parametrize("probes", [0, 2])
def test_ode_log_density_equals_the_closed_form_gaussian_density(probes):
    t0 = 0.01
    x = torch.randn(64, 3, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gens = per_sample_generators(0, 0, 64)
    logp, nfe = ode_log_density(gaussian_velocity, x, t0, generator=gens, probes=probes)
    var = (1 - t0) ** 2 * S**2 + t0**2
    exact = (-0.5 * x.square() / var - 0.5 * math.log(2 * math.pi * var)).flatten(1).sum(1)
    assert torch.allclose(logp, exact, atol=1e-4), float((logp - exact).abs().max())
    assert bool((nfe > 6).all())


def test_dequantized_bound_of_uniform_levels_is_log2_k_bits_per_dim():
    k, shape = 16, (2, 1, 1)
    m = exact_model(shape, k, levels_velocity(k))
    axes = torch.arange(k)
    x = torch.cartesian_prod(axes, axes).reshape(-1, *shape)  # every input
    out = m.ode_likelihood(x, generator=per_sample_generators(3, 0, x.shape[0]), probes=0)
    bpd = out.nll / (2 * math.log(2))
    assert float(bpd.mean()) >= math.log2(k) - 1e-4
    assert float((bpd - math.log2(k)).abs().max()) < 2e-3, float(bpd.mean())
    assert out.settings["sigma0"] == decoder_sigma(SIGMA0_FLOOR, k) == pytest.approx(2 / 15 / 4)


def test_denoise_is_the_posterior_mean_in_ve_coordinates():
    m = exact_model((1, 1, 1), 16, gaussian_velocity)
    sigma = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    t = sigma / (1 + sigma)
    x_t = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    y = x_t / (1 - t).reshape(3, 1, 1, 1)
    var = (1 - t) ** 2 * S**2 + t**2
    expected = ((1 - t) * S**2 / var).reshape(3, 1, 1, 1) * x_t
    assert torch.allclose(m.denoise(y, sigma), expected, atol=1e-12)


def test_training_target_is_eps_minus_x0_and_the_network_gets_1000_t():
    m = FlowMatching((2, 1, 1), 16, mlp_hidden=8, mlp_blocks=1).double()
    seen = {}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x, t_net):
            seen["x"], seen["t"] = x, t_net
            return torch.zeros_like(x)

    m.net = Net()
    x = torch.randint(0, 16, (5, 2, 1, 1), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    loss = m.training_losses(x)["loss"]
    torch.manual_seed(7)
    x0 = m.to_unit(x)
    t, eps = torch.rand(5, dtype=torch.float64), torch.randn_like(x0)
    assert seen["t"].dtype == torch.float32
    assert torch.allclose(seen["t"].double(), NET_TIME_SCALE * t, atol=1e-4)
    assert torch.allclose(seen["x"], (1 - t).reshape(5, 1, 1, 1) * x0 + t.reshape(5, 1, 1, 1) * eps)
    assert torch.allclose(loss, (eps - x0).square().flatten(1).mean(1))
    assert float(flow_matching_loss(lambda xt, tt: eps - x0, x0, t, eps).abs().max()) == 0.0


def test_logit_normal_times_lie_in_the_open_interval_with_standard_normal_logits():
    torch.manual_seed(0)
    t = sample_time(20000, "logit_normal")
    assert bool(((t > 0) & (t < 1)).all())
    logit = torch.log(t / (1 - t))
    assert abs(float(logit.mean())) < 0.03 and abs(float(logit.std()) - 1) < 0.03
    u = sample_time(20000, "uniform")
    assert abs(float(u.mean()) - 0.5) < 0.01


@pytest.mark.parametrize("solver", ["heun", "rk45"])
def test_sample_i_does_not_depend_on_its_batch(solver):
    m = exact_model((2, 1, 1), 16, levels_velocity(16))
    batch = m.sample(4, generator=per_sample_generators(5, 0, 4), solver=solver, steps=8)
    alone = m.sample(1, generator=per_sample_generators(5, 3, 1), solver=solver, steps=8)
    assert torch.equal(batch.x[3], alone.x[0]) and float(batch.nfe[3]) == float(alone.nfe[0])
    assert solver == "rk45" or torch.equal(batch.nfe, torch.full((4,), 16.0, dtype=torch.float64))


def test_hutchinson_likelihood_of_example_i_does_not_depend_on_its_batch():
    m = exact_model((2, 1, 1), 16, levels_velocity(16))
    x = torch.tensor([[3, 9], [0, 15], [7, 7]]).reshape(3, 2, 1, 1)
    batch = m.ode_likelihood(x, generator=per_sample_generators(1, 0, 3), probes=1)
    alone = m.ode_likelihood(x[2:], generator=per_sample_generators(1, 2, 1), probes=1)
    assert torch.allclose(batch.nll[2], alone.nll[0], atol=1e-8)
    assert batch.settings["estimator"] == "hutchinson-rademacher"


@pytest.mark.parametrize(
    "options,key",
    [
        ({"solver": "rk4"}, "sampler.solver"),
        ({"steps": 0}, "sampler.steps"),
        ({"name": "ddim"}, "sampler.name"),
        ({"rtol": -1.0}, "sampler.rtol"),
        ({"eta": 0.0}, "sampler.eta"),
    ],
)
def test_bad_sampler_options_raise_option_errors_naming_the_key(options, key):
    with pytest.raises(OptionError) as err:
        FlowMatching.validate_sampler(options, {})
    assert err.value.key == key and repr(next(iter(options.values()))) in str(err.value)
    m = FlowMatching((2, 1, 1), 8, mlp_hidden=8, mlp_blocks=1)
    with pytest.raises(OptionError, match=key.replace(".", r"\.")):
        m.sample(1, **options)


def test_bad_model_and_estimator_options_raise_option_errors():
    with pytest.raises(OptionError, match="uniform, logit_normal") as err:
        FlowMatching((2, 1, 1), 8, time_dist="beta")
    assert err.value.key == "model.time_dist"
    with pytest.raises(OptionError) as err:
        FlowMatching((2, 1, 1), 8, nll_options={"dequantization": "uniform"})
    assert err.value.key == "model.nll_options.dequantization"
    key = "eval.estimator_options.ode"
    with pytest.raises(OptionError, match="probes=-1"):
        FlowMatching.validate_estimator("ode", {"probes": -1}, {}, key=key)
    FlowMatching.validate_estimator("ode", {"solver": "heun", "steps": 10}, {}, key=key)


def test_resolved_sampler_keeps_only_what_the_solver_uses():
    m = FlowMatching((2, 1, 1), 8, mlp_hidden=8, mlp_blocks=1)
    assert m.resolve_sampler() == {"name": "ode", "solver": "heun", "steps": 20}
    assert m.resolve_sampler(solver="rk45", rtol=1e-3) == {
        "name": "ode",
        "solver": "rk45",
        "rtol": 1e-3,
    }


def test_packaged_sampler_configs_default_and_ode_are_accepted_and_ddim_is_refused():
    conf = Path(genbench.conf.__file__).parent / "sampler"
    for name in ("default", "ode"):
        FlowMatching.validate_sampler(yaml.safe_load((conf / f"{name}.yaml").read_text()), {})
    with pytest.raises(OptionError, match="expected one of ode") as err:
        FlowMatching.validate_sampler(yaml.safe_load((conf / "ddim.yaml").read_text()), {})
    assert err.value.key == "sampler.name"


@pytest.mark.parametrize("name", ["dpmpp", "unipc"])
def test_multistep_samplers_follow_the_exact_flow(name):
    """DPM-Solver++ / UniPC in the VE coordinates y = x_t / (1 - t) with the exact Gaussian
    velocity: the levels equal the solver's run on the log-SNR grid from σ = 999 (y = 1000 x_1)
    to 0, and 40 calls land within 1 % of the exact flow's end S x_1."""
    m = exact_model((2, 1, 1), 33, gaussian_velocity)
    n = 64
    got = m.sample(n, generator=per_sample_generators(0, 0, n), name=name, steps=20)
    assert got.nfe.tolist() == [20.0] * n
    x1 = randn((n, 2, 1, 1), generator=per_sample_generators(0, 0, n), dtype=torch.float64)
    solve = {"dpmpp": dpmpp_2m, "unipc": unipc}[name]
    direct, _ = solve(m.denoise, 1000 * x1, [*logsnr_sigmas(0.002, 999.0, 20), 0.0])
    assert torch.equal(got.x, m.to_levels(direct))
    far, _ = solve(m.denoise, 1000 * x1, [*logsnr_sigmas(0.002, 999.0, 40), 0.0])
    assert float(((far - S * x1).abs() / (S * x1).abs().clamp(min=0.05)).max()) < 1e-2
    assert m.resolve_sampler(name=name) == {
        "name": name,
        "steps": 20,
        "grid": "logsnr",
        **({"order": 2} if name == "unipc" else {}),
    }
