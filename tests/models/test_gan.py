"""GAN family: phase isolation, losses and gradient penalty against hand computations, spectral
norm, sampling contract, shapes across datasets and a short toy training."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from genbench.build import build_model
from genbench.data.toy2d import toy
from genbench.eval.toy import mode_metrics, sample_log_likelihood
from genbench.models.base import Phase
from genbench.models.gan import losses as L
from genbench.models.gan.dcgan import DCGAN
from genbench.models.gan.networks import (
    ConvDiscriminator,
    DCGANGenerator,
    MLPGenerator,
    ResNetDiscriminator,
    build_networks,
    upsampling_plan,
)
from genbench.models.gan.sngan import SNGAN
from genbench.models.gan.wgan_gp import WGANGP
from genbench.nn.random import per_sample_generators

torch.set_num_threads(1)
CONF = Path(__file__).resolve().parents[2] / "conf"
TINY = dict(z_dim=8, g_width=4, d_width=4, hidden=16, depth=2)
MODELS = [
    (DCGAN, {}),
    (WGANGP, {}),
    (WGANGP, {"arch": "resnet"}),
    (SNGAN, {}),
    (SNGAN, {"arch": "resnet"}),
]
IDS = ["dcgan", "wgan_gp", "wgan_gp-resnet", "sngan", "sngan-resnet"]
SHAPES = [((2, 1, 1), 64), ((1, 8, 8), 17)]


def make(cls, extra, shape=(1, 8, 8), levels=17, seed=0):
    torch.manual_seed(seed)
    return cls(shape, levels, **TINY, **extra)


def batch(shape, levels, n=6, seed=0):
    return torch.randint(0, levels, (n, *shape), generator=torch.Generator().manual_seed(seed))


def snapshot(params):
    return [p.detach().clone() for p in params]


def same(a, b):
    return all(torch.equal(x, y.detach()) for x, y in zip(a, b))


@pytest.mark.parametrize("shape,levels", SHAPES)
@pytest.mark.parametrize("cls,extra", MODELS, ids=IDS)
def test_step_changes_only_its_phase(cls, extra, shape, levels):
    model = make(cls, extra, shape, levels).train()
    opts = {
        ph.name: torch.optim.Adam(model.parameters_for(ph.name), lr=1e-2) for ph in model.phases
    }
    other = {"d": "g", "g": "d"}
    for phase in ("d", "g", "d"):
        own = snapshot(model.parameters_for(phase))
        rest = snapshot(model.parameters_for(other[phase]))
        model.zero_grad(set_to_none=True)  # what the runner does before each phase
        model.training_losses(batch(shape, levels), phase)["loss"].mean().backward()
        assert all(p.grad is None for p in model.parameters_for(other[phase])), phase
        opts[phase].step()
        assert same(rest, model.parameters_for(other[phase])), f"{phase} step moved the other net"
        assert not same(own, model.parameters_for(phase)), f"{phase} step left its net unchanged"


@pytest.mark.parametrize("cls,extra", MODELS, ids=IDS)
def test_losses_keys_and_shapes(cls, extra):
    model = make(cls, extra)
    keys = {"loss", "d_real", "d_fake"} | ({"wasserstein", "gp"} if cls is WGANGP else set())
    d = model.training_losses(batch((1, 8, 8), 17, n=5), "d")
    g = model.training_losses(batch((1, 8, 8), 17, n=5), "g")
    assert set(d) == keys and set(g) == {"loss"}
    assert all(v.shape == (5,) and torch.isfinite(v).all() for v in [*d.values(), *g.values()])
    if cls is WGANGP:
        torch.testing.assert_close(d["wasserstein"], d["d_real"] - d["d_fake"])
        torch.testing.assert_close(d["loss"], d["gp"] - d["wasserstein"])
    with pytest.raises(ValueError, match="unknown phase"):
        model.training_losses(batch((1, 8, 8), 17), "main")


def test_phases_parameters_and_metadata():
    model = WGANGP(
        (1, 8, 8),
        17,
        **TINY,
        d_optimizer={"lr": 1e-4, "betas": [0.0, 0.9]},
        g_optimizer={"lr": 1e-4, "betas": [0.0, 0.9]},
    )
    assert model.phases == (
        Phase("d", 5, {"lr": 1e-4, "betas": (0.0, 0.9)}),
        Phase("g", 1, {"lr": 1e-4, "betas": (0.0, 0.9)}),
    )
    d_ids = {id(p) for p in model.parameters_for("d")}
    g_ids = {id(p) for p in model.parameters_for("g")}
    assert not d_ids & g_ids and d_ids | g_ids == {id(p) for p in model.parameters()}
    assert (model.family, model.likelihood, model.select_best) == ("gan", "none", False)
    with pytest.raises(NotImplementedError):
        model.nll(batch((1, 8, 8), 17))


def test_loss_functions_match_hand_values():
    real, fake = torch.tensor([0.0, 2.0, 0.5]), torch.tensor([0.0, -1.0, -0.25])
    ns = torch.tensor(
        [
            2 * math.log(2),
            math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)),
            math.log1p(math.exp(-0.5)) + math.log1p(math.exp(-0.25)),
        ]
    )
    torch.testing.assert_close(L.d_nonsaturating(real, fake), ns)
    torch.testing.assert_close(
        L.g_nonsaturating(fake),
        torch.tensor([math.log(2), math.log1p(math.e), math.log1p(math.exp(0.25))]),
    )
    torch.testing.assert_close(L.d_hinge(real, fake), torch.tensor([2.0, 0.0, 1.25]))
    torch.testing.assert_close(L.g_hinge(fake), torch.tensor([0.0, 1.0, 0.25]))
    torch.testing.assert_close(L.d_wasserstein(real, fake), torch.tensor([0.0, -3.0, -0.75]))
    torch.testing.assert_close(L.g_wasserstein(fake), -fake)
    x, y = torch.ones(2, 3), torch.zeros(2, 3)
    torch.testing.assert_close(
        L.interpolate(x, y, torch.tensor([0.25, 1.0])), torch.tensor([[0.25] * 3, [1.0] * 3])
    )


def test_gradient_penalty_of_linear_critic_is_closed_form():
    # f(x) = w·x has ∇f = w everywhere, so GP = λ(‖w‖ - 1)² and ∂GP/∂w = 2λ(‖w‖ - 1) w / ‖w‖
    w = torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64, requires_grad=True)  # ‖w‖ = 5

    def critic(x):
        return x.flatten(1) @ w

    x_hat = torch.randn(4, 3, 1, 1, dtype=torch.float64)
    gp = L.gradient_penalty(critic, x_hat, weight=10.0)
    torch.testing.assert_close(gp, torch.full((4,), 160.0, dtype=torch.float64))
    gp.mean().backward()
    torch.testing.assert_close(w.grad, 2 * 10.0 * 4.0 * w.detach() / 5.0)
    with torch.inference_mode():  # validation: same value, no graph
        gp_eval = L.gradient_penalty(critic, x_hat, weight=10.0)
    torch.testing.assert_close(gp_eval, gp.detach())


def test_gradient_penalty_is_per_example():
    # f(x) = ‖x‖²/2 has ∇f = x, so row i gets λ(‖x_i‖ - 1)²
    x_hat = torch.tensor([[0.0, 0.0], [0.6, 0.8], [3.0, 4.0]], dtype=torch.float64)
    gp = L.gradient_penalty(lambda x: 0.5 * (x**2).sum(1), x_hat, weight=2.0)
    torch.testing.assert_close(gp, torch.tensor([2.0, 0.0, 32.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "extra", [{}, {"arch": "resnet"}, {"arch": "mlp"}], ids=["conv", "resnet", "mlp"]
)
def test_spectral_norm_on_every_discriminator_layer(extra):
    model = make(SNGAN, extra).train()
    layers = [
        m for m in model.discriminator.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    ]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    for _ in range(10):  # power iterations run in training forward passes
        model.training_losses(batch((1, 8, 8), 17), "d")
    for m in layers:
        with torch.no_grad():
            sigma = torch.linalg.matrix_norm(m.weight.flatten(1), ord=2)
        assert abs(float(sigma) - 1.0) < 0.02, f"{m}: largest singular value {float(sigma)}"


@pytest.mark.parametrize("shape,levels", SHAPES)
@pytest.mark.parametrize("cls,extra", MODELS, ids=IDS)
def test_sample_contract(cls, extra, shape, levels):
    model = make(cls, extra, shape, levels)
    model.training_losses(batch(shape, levels), "d")  # move batch-norm statistics off init
    model.eval()
    with torch.inference_mode():
        out = model.sample(3, generator=per_sample_generators(seed=7, start=0, n=3))
        again = model.sample(3, generator=per_sample_generators(seed=7, start=0, n=3)).x
        last = model.sample(1, generator=per_sample_generators(seed=7, start=2, n=1)).x
    s = out.x
    assert s.shape == (3, *shape) and s.dtype == torch.int64
    assert int(s.min()) >= 0 and int(s.max()) < levels
    assert torch.equal(s, again) and torch.equal(s[2:], last)
    assert out.nfe.tolist() == [1.0] * 3  # one generator pass
    with pytest.raises(ValueError, match="not understood"):
        model.sample(2, steps=10)


def test_truncated_latent():
    model = make(DCGAN, {})
    z = model.latent(4000, generator=torch.Generator().manual_seed(0), truncation=1.0)
    assert z.shape == (4000, 8) and float(z.abs().max()) <= 1.0
    # N(0, 1) truncated to [-1, 1]: variance 1 - 2 φ(1) / (Φ(1) - Φ(-1)) = 0.2911
    assert abs(float(z.var()) - 0.2911) < 0.01 and abs(float(z.mean())) < 0.01
    with torch.inference_mode():
        s = model.eval().sample(2, generator=torch.Generator().manual_seed(0), truncation=0.5).x
    assert s.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="truncation"):
        model.sample(2, truncation=0.0)


def test_level_mapping_round_trips():
    model = make(DCGAN, {}, levels=17)
    x = torch.arange(17).reshape(1, 1, 17, 1)
    y = model.to_unit(x)
    assert float(y.min()) == -1.0 and float(y.max()) == 1.0
    assert torch.equal(model.to_levels(y), x)
    assert torch.equal(model.to_levels(torch.tensor([-3.0, 3.0, 0.0])), torch.tensor([0, 16, 8]))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (2, 1, 1), (3, 4, 4)])
@pytest.mark.parametrize("cls,extra", MODELS, ids=IDS)
def test_networks_fit_every_data_shape(cls, extra, shape):
    model = make(cls, extra, shape, 256)
    fake = model.generator(torch.randn(2, model.z_dim))
    assert fake.shape == (2, *shape)
    if model.arch != "mlp":  # conv generators end in tanh
        assert float(fake.detach().abs().max()) <= 1.0
    assert model.discriminator(fake).shape == (2,)


def test_upsampling_plan():
    assert upsampling_plan(8, 8) == (4, 4, 1)
    assert upsampling_plan(28, 28) == (7, 7, 2)
    assert upsampling_plan(32, 32) == (4, 4, 3)
    assert upsampling_plan(1, 1) == (1, 1, 0)


def test_arch_switch_resolves_auto_and_offers_resnet_only_with_a_pool():
    nets = dict(g_width=4, d_width=4, hidden=8, depth=1)
    arch, g, d = build_networks("auto", (1, 8, 8), 8, **nets, conv={"norm": "none"})
    assert arch == "conv" and isinstance(g, DCGANGenerator) and isinstance(d, ConvDiscriminator)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert build_networks("auto", (2, 1, 1), 8, **nets)[0] == "mlp"
    arch, g, d = build_networks("resnet", (3, 8, 8), 8, **nets, resnet_pool="sum")
    assert isinstance(d, ResNetDiscriminator) and d.pool == "sum"
    with pytest.raises(ValueError, match=r"\['auto', 'conv', 'mlp'\], got 'resnet'"):
        build_networks("resnet", (1, 8, 8), 8, **nets)
    # the generator's parameters are drawn first: built alone from the same seed, it is the same
    torch.manual_seed(3)
    g = build_networks("mlp", (2, 1, 1), 8, **nets)[1]
    torch.manual_seed(3)
    alone = MLPGenerator(8, (2, 1, 1), 8, 1)
    assert all(torch.equal(a, b) for a, b in zip(g.parameters(), alone.parameters()))


@pytest.mark.parametrize("name", ["dcgan", "wgan_gp", "sngan", "stylegan2"])
def test_model_configs_instantiate(name):
    cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    model = build_model(cfg, (1, 8, 8), 17)
    d, g = model.phases
    assert (d.name, g.name) == ("d", "g") and d.repeat >= 1
    assert d.optimizer["lr"] == cfg.d_optimizer.lr and isinstance(d.optimizer["betas"], tuple)
    assert model.training_losses(batch((1, 8, 8), 17), "g")["loss"].shape == (6,)


def test_short_toy_training_makes_progress():
    data = toy("8gaussians", n_train=4096, n_val=10, n_test=10)
    torch.manual_seed(0)
    opt = {"lr": 1e-3, "betas": (0.5, 0.999)}
    model = DCGAN((2, 1, 1), 64, z_dim=8, hidden=64, depth=2, d_optimizer=opt, g_optimizer=opt)
    optims = {
        ph.name: torch.optim.Adam(model.parameters_for(ph.name), **ph.optimizer)
        for ph in model.phases
    }
    gens = per_sample_generators(seed=1, start=0, n=1000)

    def score():
        with torch.inference_mode():
            s = model.eval().sample(1000, generator=gens).x
        model.train()
        return sample_log_likelihood(s, data.density)["sample_ll"], mode_metrics(s, data.density)

    ll0, modes0 = score()
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        for phase in ("d", "g"):
            x = data.train[torch.randint(0, len(data.train), (128,), generator=g)].long()
            model.zero_grad(set_to_none=True)
            model.training_losses(x, phase)["loss"].mean().backward()
            optims[phase].step()
    ll1, modes1 = score()
    assert ll1 > ll0 + 1.0, (ll0, ll1)
    assert modes1["high_quality_share"] > modes0["high_quality_share"] + 0.05, (modes0, modes1)
    assert modes1["modes_covered"] >= 2


@pytest.mark.parametrize(
    "name,expected",
    [("sngan_cifar10", {"is": 8.22, "fid": 21.7}), ("wgan_gp_cifar10", {"is": 7.86})],
)
def test_paper_experiments_compose(name, expected):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("train", overrides=[f"experiment={name}"])
    assert dict(cfg.expected) == expected and cfg.trainer.batch_size == 64
    model = build_model(cfg.model, (3, 32, 32), 256)
    d, g = model.phases
    assert d.repeat == 5 and d.optimizer == g.optimizer == {"lr": 2e-4, "betas": (0.0, 0.9)}
    assert model.arch == "resnet" and model.z_dim == 128
