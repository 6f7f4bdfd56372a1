"""DPM-Solver++(2M) and UniPC against diffusers' schedulers step by step, and their accuracy on
the exact denoiser of Gaussian data (closed-form flow)."""

import math
import subprocess
import sys

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from genbench.models.diffusion.multistep import (
    ddpm_timesteps,
    dpmpp_2m,
    logsnr_sigmas,
    multistep_grid,
    multistep_sample,
    unipc,
    vp_denoiser,
)
from genbench.models.diffusion.process import GaussianDiffusion
from genbench.models.diffusion.samplers import ddim_sample

pytestmark = pytest.mark.usefixtures("float64")

T = 1000


def fake_net(process):
    """A fixed non-linear stand-in for a network: x̂_0 = 0.7 tanh(x_t) + 0.1 cos(x_t (1 + t/T)),
    returned as the ε or v that gives it (so x̂_0 stays bounded and depends on t)."""

    def net(x_t, t_net):
        t = t_net.double().view(-1, *([1] * (x_t.ndim - 1)))
        ab = 1 / (1 + process.sigma_at(t) ** 2)
        x0 = 0.7 * torch.tanh(x_t) + 0.1 * torch.cos(x_t * (1 + t / T))
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return eps if process.prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    return net


def x_T():
    return torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def diffusers_inputs(scheduler, process, steps, sigmas, start):
    """The states diffusers' ``scheduler`` evaluates the network at, then its output.

    diffusers builds its tables in float32; the scheduler gets genbench's float64 σ on its own
    timesteps (the tables themselves are compared in :func:`test_timesteps_match_diffusers`).
    """
    scheduler.set_timesteps(steps)
    scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float64)
    net, x, states = fake_net(process), start.clone(), []
    for t in scheduler.timesteps:
        states.append(x)
        out = net(x, t.double().expand(x.shape[0]))
        x = scheduler.step(out, t, x).prev_sample
    return states + [x]


def genbench_inputs(process, fn, sigmas, start, **kw):
    """The states genbench's solver ``fn`` evaluates the network at (data scale x_t), then its
    output at the grid's last σ."""
    net, states = fake_net(process), []

    def recording(x, t):
        states.append(x)
        return net(x, t)

    y, nfe = fn(
        vp_denoiser(recording, process), start * math.sqrt(1 + sigmas[0] ** 2), sigmas, **kw
    )
    assert nfe == len(sigmas) - 1 == len(states)
    return states + [y / math.sqrt(1 + sigmas[-1] ** 2)]


def max_diff(a, b):
    assert len(a) == len(b)
    return max(float((u - v).abs().max()) for u, v in zip(a, b))


def scheduler(cls, prediction, **kw):
    return cls(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon" if prediction == "eps" else "v_prediction",
        **kw,
    )


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_timesteps_match_diffusers(steps, spacing):
    """Same integer timesteps as diffusers' ``timestep_spacing``; its float32 σ table agrees with
    genbench's float64 one to 5e-6 relative."""
    p = GaussianDiffusion.from_schedule("linear", T)
    ts = ddpm_timesteps(T, steps, spacing)
    for cls in (DPMSolverMultistepScheduler, UniPCMultistepScheduler):
        s = scheduler(cls, "eps", timestep_spacing=spacing)
        s.set_timesteps(steps)
        assert s.timesteps.tolist() == ts
        ours = torch.tensor([float(p.sigmas[t]) for t in ts] + [0.0])
        assert torch.allclose(s.sigmas.double(), ours, rtol=5e-6, atol=0), (s.sigmas, ours)
    if spacing == "linspace":
        assert multistep_grid(p, steps, "time") == [float(p.sigmas[t]) for t in ts] + [0.0]


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_dpmpp_2m_matches_diffusers(prediction, steps, final):
    """Every network input and the output equal DPMSolverMultistepScheduler (dpmsolver++, order
    2, midpoint, lower_order_final) within 1e-6: diffusers keeps the state in float32 inside
    ``step`` (measured: <= 1.4e-7 here). Ending at σ_min (no step to 0) with 20 steps takes the
    last step with second order, with 5 and 10 with first order (diffusers' < 15 rule)."""
    p = GaussianDiffusion.from_schedule("linear", T, prediction=prediction)
    ts = ddpm_timesteps(T, steps)
    sigmas = [float(p.sigmas[t]) for t in ts] + [0.0 if final == "zero" else float(p.sigmas[0])]
    s = scheduler(
        DPMSolverMultistepScheduler,
        prediction,
        algorithm_type="dpmsolver++",
        solver_order=2,
        final_sigmas_type=final,
    )
    ref = diffusers_inputs(s, p, steps, sigmas, x_T())
    ours = genbench_inputs(p, dpmpp_2m, sigmas, x_T())
    assert max_diff(ours, ref) < 1e-6, max_diff(ours, ref)
    if final == "zero":  # the same through the DDPM adapter (continuous network time)
        net = fake_net(p)
        x, nfe = multistep_sample(net, p, x_T(), solver="dpmpp", steps=steps, grid="time")
        assert nfe == steps and float((x - ref[-1]).abs().max()) < 1e-6


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_unipc_matches_diffusers(prediction, steps, order, final):
    """Every network input and the output equal UniPCMultistepScheduler (bh2, predict_x0,
    lower_order_final) within 1e-12: its update runs in the state's float64 (measured:
    <= 4e-15). Order 2 without the corrector is DPM-Solver++(2M), also to 1e-12 (a second,
    float64, check of :func:`dpmpp_2m`)."""
    p = GaussianDiffusion.from_schedule("linear", T, prediction=prediction)
    ts = ddpm_timesteps(T, steps)
    sigmas = [float(p.sigmas[t]) for t in ts] + [0.0 if final == "zero" else float(p.sigmas[0])]
    kw = {"solver_type": "bh2", "solver_order": order, "final_sigmas_type": final}
    ref = diffusers_inputs(
        scheduler(UniPCMultistepScheduler, prediction, **kw), p, steps, sigmas, x_T()
    )
    ours = genbench_inputs(p, unipc, sigmas, x_T(), order=order)
    assert max_diff(ours, ref) < 1e-12, max_diff(ours, ref)
    s = scheduler(UniPCMultistepScheduler, prediction, **kw, disable_corrector=list(range(steps)))
    ref = diffusers_inputs(s, p, steps, sigmas, x_T())
    ours = genbench_inputs(p, unipc, sigmas, x_T(), order=order, corrector=False)
    assert max_diff(ours, ref) < 1e-12, max_diff(ours, ref)
    if order == 2 and final == "zero":
        assert max_diff(genbench_inputs(p, dpmpp_2m, sigmas, x_T()), ref) < 1e-12
        x, nfe = multistep_sample(fake_net(p), p, x_T(), solver="unipc", steps=steps, grid="time")
        assert nfe == steps
        with_corrector = diffusers_inputs(
            scheduler(UniPCMultistepScheduler, prediction, solver_order=2), p, steps, sigmas, x_T()
        )
        assert float((x - with_corrector[-1]).abs().max()) < 1e-9


MU = torch.tensor([0.3, -0.4, 0.0])
S = torch.tensor([0.2, 0.1, 0.5])


def gaussian_eps_net(process):
    """Exact E[ε | x_t] for x_0 ~ N(MU, diag S²), data [N, 3, 1, 1]."""
    mu, s2 = MU.view(1, -1, 1, 1), S.view(1, -1, 1, 1) ** 2

    def net(x_t, t_net):
        ab = (1 / (1 + process.sigma_at(t_net.double()) ** 2)).view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / (ab * s2 + 1 - ab)

    return net


def gaussian_errors(steps):
    """Largest relative error of the per-dimension sample std over 2000 draws, against the exact
    flow from σ_max to σ_min followed by the same final denoise (x̂_0 at σ_min): first order
    (DDIM on the log-SNR grid), DPM-Solver++(2M), UniPC-2 and genbench's DDIM (time grid)."""
    p = GaussianDiffusion.from_schedule("linear", T)
    start = torch.randn(2000, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    s_max, s_min = float(p.sigmas[-1]), float(p.sigmas[0])
    y_max = start.view(-1, 3) * math.sqrt(1 + s_max**2)
    y_min = MU + (y_max - MU) * ((S**2 + s_min**2) / (S**2 + s_max**2)).sqrt()
    exact_std = (MU + (y_min - MU) * S**2 / (S**2 + s_min**2)).std(0)
    denoise, grid = vp_denoiser(gaussian_eps_net(p), p), multistep_grid(p, steps, "logsnr")
    y0 = start * math.sqrt(1 + s_max**2)
    runs = {
        "first": unipc(denoise, y0, grid, order=1, corrector=False)[0],
        "dpmpp": dpmpp_2m(denoise, y0, grid)[0],
        "unipc": unipc(denoise, y0, grid, order=2)[0],
        "ddim": ddim_sample(gaussian_eps_net(p), p, start, steps=steps, clip=False)[0],
    }
    return {k: float((x.view(-1, 3).std(0) / exact_std - 1).abs().max()) for k, x in runs.items()}


def test_second_order_gets_the_gaussian_variance_right():
    """Exact denoiser of N(MU, S²), std error (measured): at 20 steps DPM-Solver++ 1.4e-2 and
    UniPC 1.1e-2 against 0.12 for first order on the same grid and 0.46 for DDIM's
    time-uniform grid; from 20 to 40 steps the first-order error halves, DPM-Solver++'s
    quarters (3.7e-3) and UniPC's drops ~8x (1.3e-3: UniC adds an order)."""
    e20, e40 = gaussian_errors(20), gaussian_errors(40)
    assert e20["dpmpp"] < 0.02 and e20["unipc"] < 0.02, e20
    assert e20["ddim"] > e20["first"] > 5 * e20["dpmpp"], e20
    assert 1.8 < e20["first"] / e40["first"] < 2.2, (e20, e40)
    assert 3.2 < e20["dpmpp"] / e40["dpmpp"] < 4.8, (e20, e40)
    assert e20["unipc"] / e40["unipc"] > 6, (e20, e40)
    assert e40["dpmpp"] < 5e-3 and e40["unipc"] < 2e-3, e40


def test_grids_and_bad_input():
    g = logsnr_sigmas(0.01, 100.0, 5)
    assert g[0] == pytest.approx(100) and g[-1] == pytest.approx(0.01)
    assert [math.log(a / b) for a, b in zip(g, g[1:])] == pytest.approx([math.log(10)] * 4)
    p = GaussianDiffusion.from_schedule("linear", T)
    for grid in ("logsnr", "karras", "time"):
        levels = multistep_grid(p, 7, grid)
        assert len(levels) == 8 and levels[-1] == 0.0
        assert levels[0] == pytest.approx(float(p.sigmas[-1]))
    denoise = vp_denoiser(fake_net(p), p)
    for bad in ([1.0], [1.0, 1.0], [2.0, 3.0, 0.0], [1.0, -0.5]):
        with pytest.raises(ValueError, match="strictly decreasing"):
            dpmpp_2m(denoise, x_T(), bad)
    with pytest.raises(ValueError, match="order"):
        unipc(denoise, x_T(), [2.0, 1.0, 0.0], order=4)
    for steps in (999, 1000):  # strictly decreasing up to steps = T
        ts = ddpm_timesteps(T, steps)
        assert len(set(ts)) == steps and ts == sorted(ts, reverse=True) and ts[0] == T - 1
    with pytest.raises(ValueError, match="spacing"):
        ddpm_timesteps(T, 10, "leading")


@pytest.mark.parametrize("solver", ["dpmpp", "unipc"])
def test_each_sample_depends_only_on_its_own_noise(solver):
    """Deterministic from x_T, row by row: one row alone equals the same row in a batch."""
    p = GaussianDiffusion.from_schedule("linear", T)
    net, start = fake_net(p), x_T()
    batch, _ = multistep_sample(net, p, start, solver=solver, steps=8)
    alone, _ = multistep_sample(net, p, start[2:3], solver=solver, steps=8)
    assert torch.allclose(alone, batch[2:3], atol=1e-12, rtol=0)


def test_genbench_never_imports_diffusers():
    """diffusers is a test reference only: the model, its samplers and the CLI run without it."""
    code = (
        "import sys, genbench.cli, genbench.models.diffusion.ddpm, "
        "genbench.models.diffusion.multistep; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'torchdiffeq')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_flow_matching_network_in_the_same_coordinates():
    """A flow-matching velocity model, x_t = (1-t) x_0 + t ε and v = ε - x_0, enters through
    y = x_t / (1-t), σ = t / (1-t), x̂_0 = x_t - t v̂. For the exact model of N(MU, S²) its
    denoiser is the VP one, so both solves agree (to 1e-7: the VP adapter hands the network
    float32 times; measured 5.7e-9), and 40 UniPC steps land within 2e-3 (measured 1.2e-3)
    of the closed-form flow y(σ_min) = MU + (y_max - MU) √((S² + σ_min²) / (S² + σ_max²))."""
    mu, s2 = MU.view(1, -1, 1, 1), S.view(1, -1, 1, 1) ** 2

    def velocity(x_t, t):
        t = t.view(-1, 1, 1, 1)
        x0 = mu + (1 - t) * s2 / ((1 - t) ** 2 * s2 + t**2) * (x_t - (1 - t) * mu)
        return (x_t - (1 - t) * x0) / t - x0

    def flow_denoise(y, sigma):
        t = sigma / (1 + sigma)
        x_t = (1 - t.view(-1, 1, 1, 1)) * y
        return x_t - t.view(-1, 1, 1, 1) * velocity(x_t, t)

    p = GaussianDiffusion.from_schedule("linear", T)
    s_max, s_min = 150.0, 0.02  # inside the VP process range (its network time is clamped)
    grid = logsnr_sigmas(s_min, s_max, 40)
    y0 = torch.randn(64, 3, 1, 1, generator=torch.Generator().manual_seed(1)) * s_max
    for fn in (dpmpp_2m, unipc):
        flow, _ = fn(flow_denoise, y0, grid)
        vp, _ = fn(vp_denoiser(gaussian_eps_net(p), p), y0, grid)
        assert float((flow - vp).abs().max()) < 1e-7, float((flow - vp).abs().max())
    exact = mu + (y0 - mu) * ((s2 + s_min**2) / (s2 + s_max**2)).sqrt()
    assert float((flow - exact).abs().max()) < 2e-3, float((flow - exact).abs().max())


@pytest.mark.parametrize("solver", ["dpmpp", "unipc"])
def test_clip_keeps_the_data_prediction_and_the_sample_in_the_data_range(solver):
    """An ε-network that overshoots (x̂_0 far outside [-1, 1]) ends outside the data range
    unclipped and inside it with ``clip`` (the last step to σ = 0 returns x̂_0), as DDIM's clip."""
    process = GaussianDiffusion.from_schedule("linear", 1000)
    x_T = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def net(x, t):
        return -3.0 * x

    free, _ = multistep_sample(net, process, x_T, solver=solver, steps=10)
    clipped, _ = multistep_sample(net, process, x_T, solver=solver, steps=10, clip=True)
    assert float(free.abs().max()) > 1.5
    assert float(clipped.abs().max()) <= 1.0
