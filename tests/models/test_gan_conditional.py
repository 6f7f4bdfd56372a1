"""Conditional GANs (issue 21): conditional batch norm, projection and auxiliary-classifier
discriminators checked by hand, labels that change samples and D's output, unconditional GANs
unchanged (golden values of the pre-conditional code), and a short toy_moons training scored with
the toy's exact class posterior."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from genbench.build import build_model
from genbench.data.toy2d import toy
from genbench.models.gan import losses as L
from genbench.models.gan.conditional import ConditionalBatchNorm2d, ConditionalDiscriminator
from genbench.models.gan.dcgan import DCGAN
from genbench.models.gan.sngan import SNGAN
from genbench.models.gan.wgan_gp import WGANGP
from genbench.models.options import OptionError
from genbench.nn.random import per_sample_generators

torch.set_num_threads(1)
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
CONF_NAMES = {DCGAN: "dcgan", WGANGP: "wgan_gp", SNGAN: "sngan"}


def make(cls, extra, shape=(1, 8, 8), levels=17, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(shape, levels, **TINY, **extra, **kw)


def batch(shape, levels, n=6, seed=0):
    return torch.randint(0, levels, (n, *shape), generator=torch.Generator().manual_seed(seed))


def scramble_label_tables_(model, seed=1):
    """Random class tables (fresh ones start as 'ignore the label': gains 1, biases 0, E = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                w = (
                    m.parametrizations.weight.original
                    if hasattr(m, "parametrizations")
                    else m.weight
                )
                w.copy_(torch.randn(w.shape, generator=g))


@pytest.mark.parametrize("shape,levels", SHAPES)
@pytest.mark.parametrize("cls,extra", MODELS, ids=IDS)
def test_label_changes_samples_and_discriminator(cls, extra, shape, levels):
    model = make(cls, extra, shape, levels, num_classes=3)
    assert model.conditional and model.num_classes == 3
    scramble_label_tables_(model)
    model.eval()
    n = 8
    zeros, ones = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    a = model.sample(n, y=zeros, generator=per_sample_generators(5, 0, n)).x
    assert a.shape == (n, *shape) and a.dtype == torch.int64
    assert torch.equal(model.sample(n, y=zeros, generator=per_sample_generators(5, 0, n)).x, a)
    z = model.latent(n, generator=per_sample_generators(5, 0, n))
    torch.testing.assert_close(model.to_levels(model.generate(z, zeros)), a, rtol=0, atol=0)
    assert not torch.allclose(model.generate(z, zeros), model.generate(z, ones))  # same z
    x = model.to_unit(batch(shape, levels))
    d0, _ = model.judge(x, torch.zeros(6, dtype=torch.long))
    d1, _ = model.judge(x, torch.ones(6, dtype=torch.long))
    assert d0.shape == (6,) and not torch.allclose(d0, d1)
    model.train()
    for phase in ("d", "g"):
        terms = model.training_losses(batch(shape, levels), phase, y=torch.arange(6) % 3)
        assert terms["loss"].shape == (6,) and torch.isfinite(terms["loss"]).all()


@pytest.mark.parametrize("cls", [DCGAN, SNGAN], ids=["dcgan", "sngan"])
def test_projection_term_by_hand(cls):
    model = make(cls, {}, num_classes=4)
    scramble_label_tables_(model)
    d = model.discriminator
    assert isinstance(d, ConditionalDiscriminator) and d.mode == "projection"
    x = model.to_unit(batch((1, 8, 8), 17, n=5))
    y = torch.tensor([0, 3, 1, 2, 3])
    for _ in range(30):  # power iterations of the spectral norm (SNGAN) in training mode
        model.judge(x, y)
    model.eval()
    with torch.no_grad():
        phi = d.body.features(x)  # [5, F]
        psi = (phi @ d.body.head.weight.T).squeeze(1) + d.body.head.bias
        v = d.embed.weight  # [4, F], spectrally normalized for SNGAN
        by_hand = psi + torch.stack([torch.dot(v[y[i]], phi[i]) for i in range(5)])
        out, logits = model.judge(x, y)
    assert logits is None
    torch.testing.assert_close(out, by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d.body(x), psi, rtol=1e-5, atol=1e-5)  # the unconditional part
    if cls is SNGAN:  # σ(V) = 1 for the spectrally normalized embedding (eval: stored u, v)
        assert hasattr(d.embed, "parametrizations")
        assert abs(float(torch.linalg.matrix_norm(v, 2)) - 1.0) < 0.05


def test_conditional_batch_norm_by_hand():
    torch.manual_seed(0)
    h = torch.randn(6, 4, 3, 3) * 2 + 1
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    cbn, bn = ConditionalBatchNorm2d(4, 3), nn.BatchNorm2d(4)
    torch.testing.assert_close(cbn(h, y), bn(h))  # gains 1, biases 0: plain BN (train mode)
    torch.testing.assert_close(cbn.norm.running_mean, bn.running_mean)
    torch.testing.assert_close(cbn.eval()(h, y), bn.eval()(h))  # and with running statistics
    with torch.no_grad():
        cbn.gain.weight.copy_(torch.randn(3, 4))
        cbn.bias.weight.copy_(torch.randn(3, 4))
    g, b = cbn.gain.weight[y][:, :, None, None], cbn.bias.weight[y][:, :, None, None]
    torch.testing.assert_close(cbn(h, y), bn(h) * g + b)
    with pytest.raises(ValueError, match="labels"):
        cbn(h, None)


@pytest.mark.parametrize("cls", [DCGAN, WGANGP], ids=["dcgan", "wgan_gp"])
def test_auxiliary_classifier_losses_by_hand(cls):
    w = 0.5
    model = make(cls, {}, (2, 1, 1), 64, num_classes=3, cond_d="ac", ac_weight=w)
    assert isinstance(model.discriminator, ConditionalDiscriminator)
    assert model.discriminator.classifier.out_features == 3
    x, y = batch((2, 1, 1), 64), torch.tensor([0, 1, 2, 2, 1, 0])
    real = model.to_unit(x)

    def ce(logits):  # -log softmax(logits)[y], by hand
        return -(logits - logits.exp().sum(1, keepdim=True).log())[torch.arange(6), y]

    torch.manual_seed(3)
    terms = model.training_losses(x, "d", y=y)
    torch.manual_seed(3)
    fake = model.fake_batch(6, x.device, y)
    (r_out, r_logits), (f_out, f_logits) = model.judge(real, y), model.judge(fake, y)
    torch.testing.assert_close(terms["ac_real"], ce(r_logits).detach())
    torch.testing.assert_close(terms["ac_fake"], ce(f_logits).detach())
    expected = L.D_LOSSES[model.loss](r_out, f_out) + w * (ce(r_logits) + ce(f_logits))
    if cls is WGANGP:
        expected = expected + terms["gp"]
    torch.testing.assert_close(terms["loss"], expected)
    # the source output ignores the label in ac mode: D(x) = ψ(φ(x))
    torch.testing.assert_close(model.judge(real, (y + 1) % 3)[0], r_out)

    torch.manual_seed(4)
    g_terms = model.training_losses(x, "g", y=y)
    torch.manual_seed(4)
    g_out, g_logits = model.judge(model.generate(torch.randn(6, model.z_dim), y), y)
    torch.testing.assert_close(g_terms["ac"], ce(g_logits).detach())
    torch.testing.assert_close(g_terms["loss"], L.G_LOSSES[model.loss](g_out) + w * ce(g_logits))


def test_gradient_penalty_takes_the_label():
    model = make(WGANGP, {}, (2, 1, 1), 64, num_classes=2)
    scramble_label_tables_(model)
    x = batch((2, 1, 1), 64)
    gp = {}
    for c in (0, 1):
        torch.manual_seed(7)
        gp[c] = model.training_losses(x, "d", y=torch.full((6,), c))["gp"]
    assert not torch.allclose(gp[0], gp[1])


@pytest.mark.parametrize("reg", ["r1", "r2"])
def test_r1_penalty_of_the_conditional_discriminator_by_hand(reg):
    """R1/R2 = γ/2 ‖∇_x D(x, y)‖² at the real (fake) batch with each row's own label."""
    gamma = 3.0
    model = make(SNGAN, {}, (2, 1, 1), 64, num_classes=3, reg=reg, reg_weight=gamma).eval()
    scramble_label_tables_(model)
    x, y = batch((2, 1, 1), 64), torch.tensor([0, 1, 2, 2, 1, 0])
    torch.manual_seed(2)
    terms = model.training_losses(x, "d", y=y)
    torch.manual_seed(2)
    fake = model.fake_batch(6, x.device, y)
    at = (model.to_unit(x) if reg == "r1" else fake).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.discriminate(at, y).sum(), at)
    by_hand = 0.5 * gamma * grad.flatten(1).pow(2).sum(1)
    torch.testing.assert_close(terms[reg], by_hand)
    (other,) = torch.autograd.grad(model.discriminate(at, (y + 1) % 3).sum(), at)
    assert not torch.allclose(grad, other)  # the label enters the penalty


@pytest.mark.parametrize("augment", ["diffaugment", "ada"])
def test_conditional_discriminator_with_augmentation(augment):
    model = make(DCGAN, {}, num_classes=3, augment=augment, reg="r1").train()
    x, y = batch((1, 8, 8), 17), torch.arange(6) % 3
    for phase in ("d", "g"):
        model.zero_grad(set_to_none=True)
        terms = model.training_losses(x, phase, y=y)
        terms["loss"].mean().backward()
        assert torch.isfinite(terms["loss"]).all()
    assert model.discriminator.embed.weight.grad is None  # g phase: D frozen, grads zeroed
    model.zero_grad(set_to_none=True)
    model.training_losses(x, "d", y=y)["loss"].mean().backward()
    assert model.discriminator.embed.weight.grad.abs().sum() > 0


# golden values of the GANs before conditioning existed (commit 4c47a0c): state_dict size, sums of
# the seeded D and G losses, sum of 4 seeded samples
GOLDEN = {
    ("dcgan", 2): (12, 8.363221, 4.209296, 211),
    ("dcgan", 8): (25, 8.270346, 4.136367, 2048),
    ("wgan_gp", 2): (12, 55.590225, 0.098283, 211),
    ("wgan_gp", 8): (20, 59.903618, 3.5e-05, 2048),
    ("wgan_gp-resnet", 2): (25, 25.193924, 2.408149, 246),
    ("wgan_gp-resnet", 8): (41, 57.931915, 1.441726, 2405),
    ("sngan", 2): (18, 12.062122, 0.065814, 211),
    ("sngan", 8): (30, 12.093866, 0.351278, 2246),
    ("sngan-resnet", 2): (41, 11.617989, 2.890634, 246),
    ("sngan-resnet", 8): (57, 21.130856, 5.506316, 2405),
}


@pytest.mark.parametrize("shape,levels", SHAPES)
@pytest.mark.parametrize("cls,extra", MODELS, ids=IDS)
def test_unconditional_gans_unchanged(cls, extra, shape, levels):
    name = IDS[MODELS.index((cls, extra))]
    keys, d_sum, g_sum, s_sum = GOLDEN[(name, shape[1] if shape[1] > 1 else 2)]
    model = make(cls, extra, shape, levels).train()
    assert not model.conditional and not isinstance(model.discriminator, ConditionalDiscriminator)
    assert len(model.state_dict()) == keys
    assert not any(("embed" in k or "gain" in k or "body." in k) for k in model.state_dict())
    torch.manual_seed(1)
    d = model.training_losses(batch(shape, levels), "d")
    g = model.training_losses(batch(shape, levels), "g")
    assert set(d) >= {"loss", "d_real", "d_fake"} and not any(k.startswith("ac") for k in d)
    assert float(d["loss"].detach().sum()) == pytest.approx(d_sum, rel=1e-5, abs=1e-5)
    assert float(g["loss"].detach().sum()) == pytest.approx(g_sum, rel=1e-5, abs=1e-5)
    s = model.eval().sample(4, generator=torch.Generator().manual_seed(3)).x
    assert int(s.sum()) == s_sum
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(4, y=torch.zeros(4, dtype=torch.long))


def test_labels_are_checked_and_options_validated():
    model = make(DCGAN, {}, (2, 1, 1), 64, num_classes=2)
    with pytest.raises(ValueError, match="labels y are required"):
        model.sample(3)
    with pytest.raises(ValueError, match="labels y are required"):
        model.training_losses(batch((2, 1, 1), 64), "d")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        model.sample(3, y=torch.tensor([0, 1, 2]))
    with pytest.raises(OptionError, match="model.cond_d"):
        make(DCGAN, {}, num_classes=2, cond_d="concat")
    with pytest.raises(OptionError, match="model.ac_weight"):
        make(DCGAN, {}, num_classes=2, cond_d="ac", ac_weight=-1)


@pytest.mark.parametrize("name", ["dcgan", "wgan_gp", "sngan"])
def test_model_configs_build_conditional(name):
    from pathlib import Path

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / f"{name}.yaml")
    assert cfg.cond_d == "projection" and cfg.ac_weight == 1.0
    cfg.conditional = True
    model = build_model(cfg, (1, 8, 8), 17, num_classes=10)
    assert model.conditional and model.cond_d == "projection"
    assert model.discriminator.embed.num_embeddings == 10
    cfg.cond_d = "ac"
    model = build_model(cfg, (2, 1, 1), 64, num_classes=2)
    assert model.discriminator.mode == "ac" and model.arch == "mlp"


def train_on_moons(model, steps, batch_size=128):
    """``steps`` training steps on toy_moons; returns the share of 1000 samples (500 per class)
    whose exact Bayes class p(class | cell) is the label they were drawn with."""
    data = toy("moons", n_train=4096, n_val=10, n_test=10)
    optims = {
        ph.name: torch.optim.Adam(model.parameters_for(ph.name), **ph.optimizer)
        for ph in model.phases
    }
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for phase in ["d"] * model.d_steps + ["g"]:
            i = torch.randint(0, len(data.train), (batch_size,), generator=g)
            model.zero_grad(set_to_none=True)
            terms = model.training_losses(data.train[i].long(), phase, y=data.train_labels[i])
            terms["loss"].mean().backward()
            optims[phase].step()
    y = torch.arange(1000) % 2
    with torch.inference_mode():
        s = model.eval().sample(1000, y=y, generator=per_sample_generators(1, 0, 1000)).x
    return float((data.density.class_posterior(s).argmax(1) == y).float().mean())


def test_short_conditional_toy_training_ac():
    """AC-GAN (SNGAN, MLP) on toy_moons: 120 steps give >= 95 % class-correct samples (measured
    0.998 after 100 steps, 1.00 after 200; 0.49 before training)."""
    opt = {"lr": 1e-3, "betas": (0.5, 0.999)}
    torch.manual_seed(0)
    model = SNGAN(
        (2, 1, 1), 64, z_dim=8, hidden=64, depth=2, d_optimizer=opt, g_optimizer=opt,
        num_classes=2, cond_d="ac",
    )  # fmt: skip
    assert train_on_moons(model, 120) >= 0.95


@pytest.mark.slow
def test_short_conditional_toy_training_projection():
    """Projection WGAN-GP (MLP, 5 critic steps, λ = 0.1) on toy_moons: 400 steps give >= 85 %
    class-correct samples (measured 0.96)."""
    opt = {"lr": 1e-3, "betas": (0.0, 0.9)}
    torch.manual_seed(0)
    model = WGANGP(
        (2, 1, 1), 64, z_dim=8, hidden=64, depth=2, d_optimizer=opt, g_optimizer=opt,
        d_steps=5, reg_weight=0.1, num_classes=2,
    )  # fmt: skip
    assert train_on_moons(model, 400) >= 0.85
