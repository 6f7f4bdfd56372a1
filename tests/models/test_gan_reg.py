"""GAN objectives and penalties selected by config (``model.loss``, ``model.reg``,
``model.reg_weight``, ``model.reg_interval``): R1/R2 against hand computations on critics whose
input gradient is known in closed form, lazy regularization's weighting, option errors naming
their key, and the 2-D toy overrides (``model.toy``)."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genbench.models.gan import losses as L
from genbench.models.gan.dcgan import DCGAN
from genbench.models.gan.sngan import SNGAN
from genbench.models.gan.wgan_gp import WGANGP
from genbench.models.options import OptionError

torch.set_num_threads(1)
TINY = dict(z_dim=8, g_width=4, d_width=4, hidden=16, depth=2)


def levels(shape=(2, 1, 1), n=4, k=64, seed=0):
    return torch.randint(0, k, (n, *shape), generator=torch.Generator().manual_seed(seed))


def test_r1_of_quadratic_critic_is_closed_form():
    # D(x) = a·x + ½ xᵀQx per row: ∇D = a + Qx, so R1 = γ/2 ‖a + Qx‖²
    a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)

    def critic(x):
        x = x.flatten(1)
        return x @ a + 0.5 * ((x @ q) * x).sum(1)

    x = torch.tensor([[0.0, 0.0], [1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    grad = a.detach() + x @ q  # [N, 2]
    r1 = L.r1_penalty(critic, x.reshape(3, 2, 1, 1), weight=3.0)
    # row 0: ∇ = (1, -2): 1.5 * 5; row 1: (2.5, -2.5): 1.5 * 12.5; row 2: (3, 0.25): 1.5 * 9.0625
    torch.testing.assert_close(r1, torch.tensor([7.5, 18.75, 13.59375], dtype=torch.float64))
    torch.testing.assert_close(r1, 1.5 * (grad**2).sum(1))
    r1.sum().backward()  # ∂/∂a Σ γ/2 ‖a + Qx_i‖² = γ Σ (a + Qx_i)
    torch.testing.assert_close(a.grad, 3.0 * grad.sum(0))
    with torch.inference_mode():  # validation: the same value without a graph
        torch.testing.assert_close(L.r1_penalty(critic, x, weight=3.0), r1.detach())


def linear_critic(model, w):
    """Replace the model's discriminator by D(y) = w·y (gradient w everywhere)."""

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(w))

        def forward(self, y):
            return y.flatten(1) @ self.w

    model.discriminator = Linear()
    return model


@pytest.mark.parametrize("reg", ["r1", "r2"])
def test_model_adds_r1_r2_to_the_discriminator_loss(reg):
    model = linear_critic(DCGAN((2, 1, 1), 64, **TINY, reg=reg, reg_weight=4.0), [3.0, 4.0])
    x = levels()
    torch.manual_seed(0)
    d = model.training_losses(x, "d")
    # ‖∇D‖² = 25 on every row: γ/2 · 25 = 50
    torch.testing.assert_close(d[reg], torch.full((4,), 50.0))
    torch.testing.assert_close(d["loss"], L.d_nonsaturating(d["d_real"], d["d_fake"]) + 50.0)
    assert {"r1", "r2", "gp"} & set(d) == {reg}


def test_r1_and_r2_take_the_gradient_at_real_and_fake_points():
    # D(y) = ½‖y‖²: ∇D = y, so R1 = γ/2 ‖y_real‖² and R2 = γ/2 ‖y_fake‖²
    model = DCGAN((2, 1, 1), 64, **TINY, reg="r1", reg_weight=2.0)
    model.discriminate = lambda y: 0.5 * y.flatten(1).pow(2).sum(1)
    y = torch.tensor([[0.5, -1.0], [0.0, 0.25]]).reshape(2, 2, 1, 1)
    fake = torch.tensor([[1.0, 1.0], [-0.5, 0.0]]).reshape(2, 2, 1, 1)
    torch.testing.assert_close(model.regularizer(y, fake), torch.tensor([1.25, 0.0625]))
    model.reg = "r2"
    torch.testing.assert_close(model.regularizer(y, fake), torch.tensor([2.0, 0.25]))


def test_lazy_regularization_every_kth_step_with_weight_times_k():
    model = linear_critic(
        DCGAN((2, 1, 1), 64, **TINY, reg="r1", reg_weight=2.0, reg_interval=3), [0.6, 0.8]
    ).train()
    seen = [float(model.training_losses(levels(), "d")["r1"].mean()) for _ in range(7)]
    # ‖∇D‖ = 1: γ/2 = 1 per step, k γ/2 = 3 on steps 0, 3, 6; the mean over steps stays 1
    assert seen == [3.0, 0.0, 0.0, 3.0, 0.0, 0.0, 3.0]
    assert int(model.reg_steps) == 7 and "reg_steps" in model.state_dict()
    with torch.no_grad():  # evaluation passes do not count D steps
        model.training_losses(levels(), "d")
    assert int(model.reg_steps) == 7
    plain = DCGAN((2, 1, 1), 64, **TINY, reg="r1")  # k = 1: no counter in the state dict
    assert "reg_steps" not in plain.state_dict()


def test_wgan_gp_penalty_is_the_gp_regularizer():
    torch.manual_seed(0)
    model = WGANGP((2, 1, 1), 64, **TINY)
    assert (model.loss, model.reg, model.reg_weight) == ("wasserstein", "gp", 10.0)
    x = levels()
    torch.manual_seed(5)
    d = model.training_losses(x, "d")
    torch.manual_seed(5)
    y, fake = model.to_unit(x), model.fake_batch(4, x.device)
    eps = torch.rand(4)
    gp = L.gradient_penalty(model.discriminator, L.interpolate(y, fake, eps), 10.0)
    torch.testing.assert_close(d["gp"], gp.detach())
    with pytest.warns(FutureWarning, match="model.gp_weight is deprecated.*model.reg_weight"):
        assert WGANGP((2, 1, 1), 64, **TINY, gp_weight=0.1).reg_weight == 0.1


@pytest.mark.parametrize("loss", ["nonsaturating", "hinge", "wasserstein"])
@pytest.mark.parametrize("cls", [DCGAN, SNGAN, WGANGP])
def test_every_gan_takes_every_loss(cls, loss):
    model = linear_critic(cls((2, 1, 1), 64, **TINY, loss=loss, reg="none"), [1.0, -1.0])
    torch.manual_seed(0)
    d = model.training_losses(levels(), "d")
    torch.testing.assert_close(d["loss"], L.D_LOSSES[loss](d["d_real"], d["d_fake"]))
    assert model.training_losses(levels(), "g")["loss"].shape == (4,)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("loss", "minimax", r"model.loss='minimax' is invalid: expected one of hinge, nons"),
        ("reg", "r3", r"model.reg='r3' is invalid: expected one of none, r1, r2, gp"),
        ("reg_weight", -1.0, r"model.reg_weight=-1.0 is invalid: expected a finite number >= 0"),
        ("reg_interval", 0, r"model.reg_interval=0 is invalid: expected an integer >= 1"),
        ("d_optimizer", {"lr": 0.0}, r"model.d_optimizer.lr=0.0 is invalid"),
        ("toy", {"widht": 3}, r"model.toy.widht=3: 'widht' is not an option of this model"),
    ],
)
def test_options_are_checked_with_their_key(key, value, match):
    with pytest.raises(OptionError, match=match):
        DCGAN((1, 8, 8), 17, **TINY, **{key: value})


def test_toy_overrides_apply_to_toys_only_and_merge_mappings():
    toy = {"hidden": 24, "d_steps": 2, "d_optimizer": {"lr": 1e-3}, "reg": "r1"}
    opt = {"lr": 2e-4, "betas": [0.5, 0.999]}
    on_toy = DCGAN((2, 1, 1), 64, **TINY, d_optimizer=opt, toy=toy)
    on_img = DCGAN((1, 8, 8), 17, **TINY, d_optimizer=opt, toy=toy)
    assert on_toy.discriminator.net[1].out_features == 24 and on_toy.d_steps == 2
    assert on_toy.d_optimizer == {"lr": 1e-3, "betas": (0.5, 0.999)} and on_toy.reg == "r1"
    assert on_img.d_optimizer == {"lr": 2e-4, "betas": (0.5, 0.999)} and on_img.d_steps == 1
    assert on_img.reg == "none" and on_toy.toy_options == toy
    # from the yaml, as Hydra passes it (DictConfig values)
    cfg = OmegaConf.create({"_target_": "genbench.models.gan.sngan.SNGAN", **TINY, "toy": toy})
    assert instantiate(cfg, shape=(2, 1, 1), levels=64).d_steps == 2


@pytest.mark.parametrize("name", ["dcgan", "sngan", "wgan_gp"])
def test_each_gan_yaml_picks_its_toy_settings_from_the_data(name):
    from pathlib import Path

    from genbench.testing import from_config

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / f"{name}.yaml")
    build = from_config(name)
    toy, image = build((2, 1, 1), 64), build((1, 8, 8), 17)
    assert cfg.toy and toy.toy_options == OmegaConf.to_container(cfg.toy)
    assert image.d_optimizer["lr"] == cfg.d_optimizer.lr
    assert toy.d_optimizer["lr"] == cfg.toy.d_optimizer.lr != cfg.d_optimizer.lr
    assert toy.d_steps == cfg.toy.get("d_steps", cfg.d_steps) and image.d_steps == cfg.d_steps
    off = from_config(name, ["model.toy=null"])((2, 1, 1), 64)
    assert off.d_optimizer["lr"] == cfg.d_optimizer.lr
