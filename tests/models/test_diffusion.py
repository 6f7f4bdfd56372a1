"""DDPM as a GenerativeModel: configs, parameter counts, the contract, samplers and NFE."""

import copy
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from genbench.build import build_model
from genbench.models.diffusion.ddpm import DDPM
from genbench.models.diffusion.unet import MLPDenoiser, UNet, build_denoiser
from genbench.models.options import OptionError
from genbench.nn.random import per_sample_generators

CONF = Path(__file__).resolve().parents[2] / "conf"
UNET_KEYS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "norm_groups")


def tiny(shape=(1, 8, 8), levels=17, **kw):
    """A small, non-trivial model: zero-initialized output layers re-drawn at random."""
    torch.manual_seed(0)
    kw = {"timesteps": 20, "ch": 8, "ch_mult": (1, 2), "norm_groups": 4, "mlp_hidden": 32, **kw}
    m = DDPM(shape, levels, **kw)
    with torch.no_grad():
        for p in m.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.05)
    return m.eval()


def test_cifar10_preset_has_35_7M_parameters():
    """Ho et al. (2020) report 35.7M parameters for their CIFAR-10 model (built on meta)."""
    exp = OmegaConf.load(CONF / "experiment" / "ddpm_cifar10.yaml")
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "model" / "ddpm.yaml"), exp.model)
    with torch.device("meta"):
        net = build_denoiser((3, 32, 32), cfg.net, **{k: cfg[k] for k in UNET_KEYS})
    n = sum(p.numel() for p in net.parameters())
    assert isinstance(net, UNet) and abs(n - 35.7e6) < 0.1e6, n


def test_cifar10_experiment_settings():
    exp = OmegaConf.load(CONF / "experiment" / "ddpm_cifar10.yaml")
    assert exp.trainer.max_steps == 800_000 and exp.trainer.batch_size == 128
    assert exp.trainer.ema_decay == 0.9999 and exp.trainer.grad_clip == 1.0
    assert exp.optimizer.lr == 2e-4 and exp.model.timesteps == 1000
    assert exp.model.schedule == "linear" and exp.model.dropout == 0.1
    assert dict(exp.expected) == {"fid": 3.17, "is": 9.46, "nll_bpd": 3.70, "fid_ddim_100": 4.16}


@pytest.mark.parametrize(
    "shape,levels,kind",
    [((1, 8, 8), 17, UNet), ((2, 1, 1), 64, MLPDenoiser), ((1, 28, 28), 256, UNet)],
)
def test_default_yaml_instantiates_and_trains(shape, levels, kind):
    cfg = OmegaConf.load(CONF / "model" / "ddpm.yaml")
    m = build_model(cfg, shape, levels)
    assert isinstance(m, DDPM) and isinstance(m.net, kind)
    assert m.family == "diffusion" and m.likelihood == "vlb"
    x = torch.randint(0, levels, (3, *shape))
    losses = m.training_losses(x, "main")
    assert set(losses) == {"loss"} and losses["loss"].shape == (3,)
    losses["loss"].mean().backward()
    assert all(p.grad is not None for p in m.parameters_for("main"))


def test_digits_default_size():
    m = build_model(OmegaConf.load(CONF / "model" / "ddpm.yaml"), (1, 8, 8), 17)
    assert sum(p.numel() for p in m.parameters()) == 649_329
    assert m.sampler_defaults == {"name": "ddim", "steps": 50, "eta": 0.0}


@pytest.mark.parametrize(
    "opts",
    [
        {"name": "ancestral"},
        {"name": "ddim", "steps": 5, "eta": 0.5},
        {"name": "ode", "solver": "heun", "steps": 4},
        {"name": "ode", "solver": "rk45", "rtol": 1e-3, "atol": 1e-3},
        {"name": "dpmpp", "steps": 4},
        {"name": "unipc", "steps": 5, "order": 3, "grid": "karras"},
    ],
)
def test_sample_is_per_sample_deterministic(opts):
    """Sample i is the same at batch sizes 1 and 3, and the same twice."""
    m = tiny()
    a = m.sample(3, generator=per_sample_generators(7, 0, 3), **opts)
    b = m.sample(1, generator=per_sample_generators(7, 2, 1), **opts)
    c = m.sample(3, generator=per_sample_generators(7, 0, 3), **opts)
    assert a.x.shape == (3, 1, 8, 8) and a.x.dtype == torch.int64
    assert int(a.x.min()) >= 0 and int(a.x.max()) <= 16
    assert torch.equal(a.x[2:], b.x) and torch.equal(a.x, c.x)
    assert torch.equal(a.nfe[2:], b.nfe) and torch.equal(a.nfe, c.nfe)


def network_calls(m, **opts):
    """(NFE the sample reports, forward calls of the network) for one sample."""
    calls = []
    hook = m.net.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = m.sample(1, generator=per_sample_generators(0, 0, 1), **opts)
    finally:
        hook.remove()
    return float(out.nfe[0]), len(calls)


@pytest.mark.parametrize(
    "opts,expected",
    [
        ({}, 50),  # the constructor default: ancestral over all T
        ({"name": "ddim", "steps": 10}, 10),
        ({"name": "ancestral", "steps": 25}, 25),
        ({"name": "ode", "solver": "heun", "steps": 10}, 19),
        ({"name": "ode", "solver": "euler", "steps": 10}, 10),
        ({"name": "dpmpp", "steps": 7}, 7),
        ({"name": "unipc", "steps": 6, "grid": "time"}, 6),  # the corrector reuses each call
        ({"name": "ode", "rtol": 1e-3, "atol": 1e-3}, None),  # rk45: whatever steps it took
    ],
)
def test_nfe_per_sampler_counts_the_network_calls(opts, expected):
    nfe, calls = network_calls(tiny(timesteps=50), **opts)
    assert nfe == calls and (expected is None and calls > 7 or nfe == expected), (nfe, calls)


def test_rk45_reports_each_samples_own_steps():
    """The adaptive solver's cost is per sample (batch-independent), not a batch mean."""
    m = tiny(timesteps=50)
    opts = {"name": "ode", "rtol": 1e-3, "atol": 1e-3}
    both = m.sample(2, generator=per_sample_generators(3, 0, 2), **opts).nfe
    alone = [m.sample(1, generator=per_sample_generators(3, i, 1), **opts).nfe for i in (0, 1)]
    assert torch.equal(both, torch.cat(alone)), (both, alone)
    assert bool((both > 7).all() and ((both - 1) % 6 == 1).all())  # 1 + 6 per step, + 1 Euler


def test_sampler_defaults_merge_and_validation():
    m = tiny(timesteps=50, sampler={"name": "ddim", "steps": 10})
    assert network_calls(m) == (10, 10) and network_calls(m, steps=20) == (20, 20)  # merged
    assert network_calls(m, name="ancestral")[0] == 50  # another sampler: its own defaults
    with pytest.raises(ValueError, match="eta"):
        m.sample(1, name="ancestral", eta=0.5)
    with pytest.raises(ValueError, match="unknown sampler"):
        m.sample(1, name="euler")
    with pytest.raises(ValueError, match="temperature"):
        m.sample(1, temperature=0.7)
    with pytest.raises(ValueError):
        tiny(sampler={"name": "ddim", "foo": 1})


def test_multistep_options_are_checked():
    """``order`` (1..3, unipc only) and ``grid`` are validated by name, with the choices."""
    for bad, match in (
        (
            {"name": "unipc", "order": 4},
            r"sampler\.order=4 is invalid: expected an integer in \[1, 3\]",
        ),
        ({"name": "unipc", "order": 1.5}, r"sampler\.order=1\.5"),
        ({"name": "dpmpp", "grid": "cosine"}, r"sampler\.grid='cosine'.*logsnr, time, karras"),
        ({"name": "dpmpp", "order": 2}, r"sampler\.order"),  # DPM-Solver++ is 2M only
        ({"name": "unipc", "steps": 51}, r"sampler\.steps=51"),
    ):
        with pytest.raises(OptionError, match=match):
            DDPM.validate_sampler(bad, {"timesteps": 50})
        with pytest.raises(OptionError, match=match):
            tiny(timesteps=50).sample(1, **bad)
    DDPM.validate_sampler({"name": "unipc", "order": 3, "grid": "time"}, {"timesteps": 50})


@pytest.mark.parametrize("name", ["default", "ancestral", "ddim", "ode", "dpmpp", "unipc"])
def test_sampler_yamls_are_accepted(name):
    opts = OmegaConf.to_container(OmegaConf.load(CONF / "sampler" / f"{name}.yaml"))
    m = tiny(timesteps=50)
    s = m.sample(2, generator=per_sample_generators(0, 0, 2), **opts)
    assert s.x.shape == (2, 1, 8, 8) and bool((s.nfe > 0).all())


def test_nll_is_a_deterministic_finite_bound():
    m = tiny(timesteps=20)
    x = torch.randint(0, 17, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = m.nll(x), m.nll(x)
        terms = m.vlb_terms(x)
        extra = m.bound_terms(x)
    assert a.shape == (4,) and a.dtype == torch.float64 and torch.equal(a, b)
    assert torch.isfinite(a).all() and bool((a > 0).all())
    assert torch.allclose(a, terms["prior"] + terms["diffusion"] + terms["decoder"])
    assert set(extra) == {"prior", "decoder"} and torch.allclose(extra["prior"], terms["prior"])
    # T = 20 linear betas leave ᾱ_T ≈ 0.8: the prior term is large, and exact
    ab = float(m.process.alphas_cumprod[-1])
    x0 = x.double() / 8 - 1
    prior = 0.5 * (ab * x0**2 - math.log(1 - ab) - ab).flatten(1).sum(1)
    assert torch.allclose(terms["prior"], prior, rtol=1e-9)


def test_declares_the_ode_likelihood_estimator():
    m = tiny(timesteps=50)
    ((name, est),) = m.likelihood_estimators().items()
    assert name == "ode" and est.kind == "estimate" and est.fn == m.ode_likelihood
    x = torch.randint(0, 17, (2, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = est.fn(x, generator=per_sample_generators(0, 0, 2), solver="euler", steps=3)
    assert out.nll.shape == (2,) and bool((out.nfe == 2).all())  # 3 noise levels, 2 steps


def test_ode_nll_on_the_model():
    m = tiny(timesteps=50)
    x = torch.randint(0, 17, (2, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        nll = m.ode_nll(x, generator=per_sample_generators(0, 0, 2), solver="heun", steps=5)
        res = m.ode_likelihood(x, generator=per_sample_generators(0, 0, 2), solver="heun", steps=5)
    assert nll.shape == (2,) and torch.isfinite(nll).all() and torch.allclose(nll, res.nll)
    assert res.settings["probes"] == 1 and res.settings["steps"] == 5
    assert bool((res.nfe == 8).all())


def test_v_prediction_and_cosine_schedule_models():
    m = tiny(prediction="v", schedule="cosine")
    x = torch.randint(0, 17, (2, 1, 8, 8))
    assert torch.isfinite(m.training_losses(x, "main")["loss"]).all()
    with torch.inference_mode():
        assert torch.isfinite(m.nll(x)).all()
    assert m.sample(
        2, generator=torch.Generator().manual_seed(0), name="ddim", steps=4
    ).x.shape == (2, 1, 8, 8)


def test_state_dict_roundtrip_and_deepcopy():
    """The process is rebuilt from the config: the state dict holds only network weights."""
    m = tiny()
    assert all(k.startswith("net.") for k in m.state_dict())
    m2 = tiny()
    with torch.no_grad():
        for p in m2.parameters():
            p.add_(0.1)
    m2.load_state_dict(m.state_dict())
    x = torch.randint(0, 17, (2, 1, 8, 8))
    g = per_sample_generators(1, 0, 2)
    with torch.inference_mode():
        assert torch.equal(m.nll(x), m2.nll(x))
        assert torch.equal(
            m.sample(2, generator=g).x,
            copy.deepcopy(m).sample(2, generator=per_sample_generators(1, 0, 2)).x,
        )


def test_experiment_sampler_resolves_to_ancestral_over_all_steps():
    cfg = OmegaConf.merge(
        OmegaConf.load(CONF / "model" / "ddpm.yaml"),
        OmegaConf.load(CONF / "experiment" / "ddpm_cifar10.yaml").model,
        {"ch": 8, "ch_mult": [1], "attn_resolutions": [], "norm_groups": 4},
    )
    m = build_model(cfg, (3, 8, 8), 256)
    assert m.resolve_sampler() == {"name": "ancestral"} and m.process.T == 1000
    assert m.resolve_sampler(name="ddim", steps=100) == {"name": "ddim", "steps": 100}


@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 1, 1)])
def test_learned_variances_hybrid_training_bound_and_samplers(shape):
    """learn_sigma: a 2C-channel network, the hybrid objective, a bound that uses the learned
    variances (and differs from the fixed one), ancestral sampling with them, and DDIM / the ODE
    on the prediction channels alone."""
    m = tiny(shape=shape, learn_sigma=True)
    assert m.variance == "learned"
    x = torch.randint(0, 17, (3, *shape), generator=torch.Generator().manual_seed(0))
    out = m.net(m.to_unit(x), torch.zeros(3))
    assert out.shape == (3, 2 * shape[0], *shape[1:])
    losses = m.training_losses(x)
    assert set(losses) == {"loss", "simple", "vlb"}
    assert torch.allclose(losses["loss"], losses["simple"] + 1e-3 * losses["vlb"])
    losses["loss"].mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    with torch.inference_mode():
        learned = m.nll(x)
        x0, gen = m.to_unit(x), torch.Generator().manual_seed(m.nll_seed)
        fixed = m.process.vlb_terms(m._pred_net, x0, 17, generator=gen)["vlb"]
    assert torch.isfinite(learned).all() and not torch.allclose(learned, fixed)
    for opts in (
        {"name": "ancestral"},
        {"name": "ancestral", "variance": "large"},
        {"name": "ddim", "steps": 5},
        {"name": "ode", "solver": "heun", "steps": 3},
    ):
        s = m.sample(2, generator=per_sample_generators(0, 0, 2), **opts)
        assert s.x.shape == (2, *shape)


def test_learned_variance_options_are_checked():
    with pytest.raises(ValueError, match="learn_sigma"):
        tiny(learn_sigma=True, variance="large")
    with pytest.raises(ValueError, match="learn_sigma"):
        DDPM.validate_sampler({"name": "ancestral", "variance": "learned"}, {})
    DDPM.validate_sampler({"name": "ancestral", "variance": "learned"}, {"learn_sigma": True})
    with pytest.raises(ValueError, match="learn_sigma"):
        tiny().sample(1, name="ancestral", variance="learned")
