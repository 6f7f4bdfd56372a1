"""StyleGAN2: the modulated/demodulated convolution against its closed form, path lengths and their
penalty against hand computations (a linear generator, and the real one through its Jacobian), the
lazy interval, truncation ψ, style mixing, noise inputs and the minibatch standard deviation."""

import math

import pytest
import torch
import torch.nn.functional as F

from genbench.models.gan.losses import G_LOSSES
from genbench.models.gan.style_layers import (
    DEMOD_EPS,
    ModulatedConv,
    minibatch_stddev,
    modulate,
    modulated_conv2d,
)
from genbench.models.gan.style_networks import StyleDiscriminator, StyleGenerator
from genbench.models.gan.stylegan2 import StyleGAN2, path_length_penalty, path_lengths
from genbench.nn.random import per_sample_generators

torch.set_num_threads(1)
TINY = dict(z_dim=8, w_dim=8, channel_base=32, channel_max=8)
pytestmark = pytest.mark.usefixtures("float64")


def _model(shape=(1, 8, 8), levels=17, **kw):
    torch.manual_seed(0)
    return StyleGAN2(shape, levels, **{**TINY, **kw})


# -- modulated convolution ------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_matches_closed_form(demodulate, fused):
    """w' = s w, w'' = w' / sqrt(Σ w'² + ε), then every output pixel summed by hand (zero
    padding)."""
    g = torch.Generator().manual_seed(0)
    n, c_in, c_out, k, h, w = 2, 2, 3, 3, 4, 4
    x = torch.randn(n, c_in, h, w, generator=g)
    weight = torch.randn(c_out, c_in, k, k, generator=g)
    s = torch.rand(n, c_in, generator=g) + 0.5
    y = modulated_conv2d(x, weight, s, demodulate, fused=fused)
    expect = torch.zeros(n, c_out, h, w)
    for b in range(n):
        for j in range(c_out):
            wp = [
                [[s[b, i] * weight[j, i, u, v] for v in range(k)] for u in range(k)]
                for i in range(c_in)
            ]
            norm = math.sqrt(sum(float(t) ** 2 for a in wp for r in a for t in r) + DEMOD_EPS)
            for p in range(h):
                for q in range(w):
                    acc = 0.0
                    for i in range(c_in):
                        for u in range(k):
                            for v in range(k):
                                pp, qq = p + u - 1, q + v - 1
                                if 0 <= pp < h and 0 <= qq < w:
                                    acc += float(wp[i][u][v]) * float(x[b, i, pp, qq])
                    expect[b, j, p, q] = acc / norm if demodulate else acc
    torch.testing.assert_close(y, expect, rtol=1e-10, atol=1e-10)
    # both forms equal one ordinary convolution per sample with its own kernel
    kernels = modulate(weight, s, demodulate)
    for b in range(n):
        torch.testing.assert_close(y[b : b + 1], F.conv2d(x[b : b + 1], kernels[b], padding=1))


def test_demodulation_gives_unit_norm_kernels_and_ignores_the_style_scale():
    g = torch.Generator().manual_seed(1)
    weight, s = torch.randn(4, 3, 3, 3, generator=g), torch.rand(2, 3, generator=g) + 0.1
    kernels = modulate(weight, s, True)
    torch.testing.assert_close(kernels.square().sum((2, 3, 4)), torch.ones(2, 4), rtol=1e-6, atol=0)
    x = torch.randn(2, 3, 5, 5, generator=g)
    torch.testing.assert_close(modulated_conv2d(x, weight, 7.0 * s), modulated_conv2d(x, weight, s))
    assert not torch.allclose(
        modulated_conv2d(x, weight, 7.0 * s, False), modulated_conv2d(x, weight, s, False)
    )


def test_modulated_layer_uses_its_affine_style_and_equalized_weight():
    torch.manual_seed(0)
    layer = ModulatedConv(3, 4, w_dim=5)
    x, w, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 5), torch.randn(2, 1, 4, 4)
    with torch.no_grad():
        layer.noise_strength.fill_(0.3)
        layer.bias.copy_(torch.arange(4.0))
    s = w @ (layer.affine.weight / math.sqrt(5)).T + 1.0  # bias_init 1
    pre = modulated_conv2d(x, layer.weight / math.sqrt(27), s) + 0.3 * noise
    pre = pre + torch.arange(4.0)[None, :, None, None]
    torch.testing.assert_close(layer(x, w, noise), F.leaky_relu(pre, 0.2) * math.sqrt(2))


# -- path-length regularization -------------------------------------------------------------------
def test_path_lengths_of_a_linear_generator_are_closed_form():
    """img = M vec(ws): J^T y = M^T y, L_n = sqrt(mean_l Σ_d (M^T y_n)²_{l,d})."""
    g = torch.Generator().manual_seed(0)
    n, layers, d, shape = 3, 2, 4, (1, 2, 3)
    m = torch.randn(math.prod(shape), layers * d, generator=g)
    ws = torch.randn(n, layers, d, generator=g, requires_grad=True)
    img = (ws.reshape(n, -1) @ m.T).reshape(n, *shape)
    y = torch.randn(n, *shape, generator=g) / math.sqrt(6)
    lengths = path_lengths(img, ws, y)
    jty = (y.reshape(n, -1) @ m).reshape(n, layers, d)
    expect = torch.stack(
        [
            torch.sqrt(sum(jty[b, li].square().sum() for li in range(layers)) / layers)
            for b in range(n)
        ]
    )
    torch.testing.assert_close(lengths, expect)
    penalty, a = path_length_penalty(lengths, torch.tensor(0.5), 0.01)
    a_hand = 0.5 + 0.01 * (float(expect.mean()) - 0.5)
    assert float(a) == pytest.approx(a_hand, rel=1e-12)
    torch.testing.assert_close(penalty, (expect - a_hand).square())


def test_path_lengths_of_the_generator_match_its_jacobian():
    torch.manual_seed(0)
    gen = StyleGenerator(4, (2, 4, 4), w_dim=3, map_layers=1, channel_base=16, channel_max=4)
    ws = torch.randn(2, gen.num_ws, 3, requires_grad=True)
    noise = gen.draw_noise(2)
    y = torch.randn(2, 2, 4, 4)
    lengths = path_lengths(gen.synthesis(ws, noise), ws, y)
    for b in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda v, b=b: gen.synthesis(v[None], [z[b : b + 1] for z in noise])[0], ws[b].detach()
        )  # [C, H, W, num_ws, w_dim]
        jty = torch.einsum("chw,chwld->ld", y[b], jac)
        assert float(lengths[b].detach()) == pytest.approx(
            float(jty.square().sum(1).mean().sqrt()), rel=1e-9
        )
    lengths.sum().backward()  # the lengths keep their graph: the penalty trains the generator
    assert (
        gen.convs[0][0].weight.grad is not None
        and float(gen.convs[0][0].weight.grad.abs().sum()) > 0
    )


def test_lazy_path_length_term_every_interval_and_its_running_mean():
    """On steps 0, 3, 6 of pl_interval=3 the generator loss gains pl_weight · 3 · (L_n - a)²
    (same draws with and without the term), and pl_mean follows a <- a + 0.01 (mean L - a)."""
    with_pl, without = _model(pl_weight=2.0, pl_interval=3), _model(pl_weight=0.0)
    x = torch.zeros(4, 1, 8, 8, dtype=torch.long)
    a = 0.0
    for step in range(7):
        torch.manual_seed(step)
        terms = with_pl.training_losses(x, "g")
        torch.manual_seed(step)
        base = without.training_losses(x, "g")
        if step % 3:
            assert "pl_penalty" not in terms
            torch.testing.assert_close(terms["loss"], base["loss"])
            continue
        lengths = terms["pl_length"]
        a = a + 0.01 * (float(lengths.mean()) - a)
        assert float(with_pl.pl_mean) == pytest.approx(a, rel=1e-12)
        torch.testing.assert_close(terms["pl_penalty"], (lengths - a).square())
        torch.testing.assert_close(terms["loss"], base["loss"] + 2.0 * 3 * terms["pl_penalty"])
        for p in (*with_pl.generator.parameters(), *without.generator.parameters()):
            p.grad = None
    assert int(with_pl.g_steps) == 7 and "g_steps" in with_pl.state_dict()
    with torch.no_grad():  # validation does not count steps or update pl_mean / w_avg
        with_pl.training_losses(x, "g")
    assert int(with_pl.g_steps) == 7


def test_generator_loss_is_non_saturating_logistic():
    m = _model(pl_weight=0.0, style_mixing=0.0)
    x = torch.zeros(3, 1, 8, 8, dtype=torch.long)
    torch.manual_seed(5)
    loss = m.training_losses(x, "g")["loss"]
    torch.manual_seed(5)
    z = torch.randn(3, m.z_dim)
    img = m.generator.synthesis(m.styles(z), m.generator.draw_noise(3))
    torch.testing.assert_close(loss, F.softplus(-m.discriminator(img)))
    assert m.loss == "nonsaturating" and G_LOSSES[m.loss] is not None


# -- truncation, mixing, noise ---------------------------------------------------------------------
def test_w_avg_tracks_the_generator_phase_mean_w():
    m = _model(pl_weight=0.0, style_mixing=0.0, w_avg_beta=0.9)
    torch.manual_seed(3)
    m.training_losses(torch.zeros(5, 1, 8, 8, dtype=torch.long), "g")
    torch.manual_seed(3)
    w = m.generator.mapping(torch.randn(5, m.z_dim))
    torch.testing.assert_close(m.generator.w_avg, 0.1 * w.mean(0).detach())


def test_truncation_psi_zero_gives_the_average_w_image_and_one_changes_nothing():
    m = _model()
    with torch.no_grad():
        m.generator.w_avg.copy_(torch.randn(m.generator.w_avg.shape))
        z = torch.randn(3, m.z_dim)
        noise = [t[:1].expand(3, -1, -1, -1) for t in m.generator.draw_noise(3)]
        avg = m.generator.w_avg.expand(3, m.generator.num_ws, -1)
        torch.testing.assert_close(
            m.synthesize(z, psi=0.0, noise=noise), m.generator.synthesis(avg, noise)
        )
        plain = m.generator.synthesis(m.styles(z), noise)
        torch.testing.assert_close(m.synthesize(z, psi=1.0, noise=noise), plain)
        half = m.synthesize(z, psi=0.5, noise=noise)
        assert not torch.allclose(half, plain)
    gens = lambda: per_sample_generators(0, 0, 4)  # noqa: E731
    with torch.inference_mode():
        assert torch.equal(
            m.sample(4, generator=gens(), psi=1.0).x, m.sample(4, generator=gens()).x
        )
    assert m.resolve_sampler() == {"psi": 1.0} and m.resolve_sampler(psi=0.7)["psi"] == 0.7
    with pytest.raises(ValueError, match="sampler.psi=nan"):
        m.sample(1, psi=float("nan"))


def test_style_mixing_switches_layers_to_a_second_latent():
    m = _model(style_mixing=1.0)
    z = torch.randn(2, m.z_dim)
    torch.manual_seed(0)
    mixed = m.styles(z, mix=True)
    w = m.generator.mapping(z)
    cut = int((mixed - w[:, None]).abs().sum((0, 2)).ne(0).float().argmax())
    assert 1 <= cut < m.generator.num_ws
    torch.testing.assert_close(mixed[:, :cut], w[:, None].expand(-1, cut, -1))
    assert torch.allclose(mixed[:, cut:], mixed[:, cut : cut + 1].expand_as(mixed[:, cut:]))
    noise = m.generator.draw_noise(2)
    assert not torch.allclose(
        m.generator.synthesis(mixed, noise), m.generator.synthesis(m.styles(z), noise)
    )
    off = _model(style_mixing=0.0)
    torch.testing.assert_close(off.styles(z, mix=True), off.styles(z))


def test_noise_inputs_move_the_output_and_are_drawn_from_the_sample_generators():
    m = _model()
    z = torch.randn(2, m.z_dim)
    a, b = m.generator.draw_noise(2), m.generator.draw_noise(2)
    with torch.no_grad():
        assert torch.equal(
            m.synthesize(z, noise=a), m.synthesize(z, noise=b)
        )  # strengths start at 0
        for layer in m.generator.modules():
            if isinstance(layer, ModulatedConv) and layer.has_noise:
                layer.noise_strength.fill_(0.5)
        assert not torch.allclose(m.synthesize(z, noise=a), m.synthesize(z, noise=b))
    assert len(a) == 3 and [tuple(t.shape) for t in a] == [(2, 1, 4, 4), (2, 1, 8, 8), (2, 1, 8, 8)]
    with torch.inference_mode():
        one = m.sample(3, generator=per_sample_generators(1, 0, 3)).x
        two = m.sample(3, generator=per_sample_generators(1, 0, 3)).x
        other = m.sample(3, generator=per_sample_generators(2, 0, 3)).x
        # the same z with other noise (z is drawn first from each generator, then the noise)
        seeded = per_sample_generators(1, 0, 3)
        z1 = m.latent(3, generator=seeded).double()
        noise1 = m.generator.draw_noise(3, generator=seeded)
        again = m.to_levels(m.synthesize(z1, noise=noise1))
        renoised = m.to_levels(m.synthesize(z1, generator=per_sample_generators(9, 0, 3)))
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert torch.equal(one, again) and not torch.equal(one, renoised)


# -- discriminator ---------------------------------------------------------------------------------
def test_minibatch_stddev_on_a_known_batch():
    """Rows n and n + N/G form a group; the statistic is the mean over channels and pixels of
    sqrt(biased variance + 1e-8) over the group, appended as a constant map."""
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 6.0], [4.0, 0.0]]).reshape(4, 2, 1, 1)
    x = x.expand(-1, -1, 2, 2).contiguous()
    out = minibatch_stddev(x, group_size=2)
    assert out.shape == (4, 3, 2, 2) and torch.equal(out[:, :2], x)
    s02 = (math.sqrt(1.0 + 1e-8) + math.sqrt(4.0 + 1e-8)) / 2  # |1-3|/2 = 1, |2-6|/2 = 2
    s13 = (math.sqrt(4.0 + 1e-8) + math.sqrt(0.0 + 1e-8)) / 2
    torch.testing.assert_close(out[:, 2, 0, 0], torch.tensor([s02, s13, s02, s13]))
    assert torch.equal(out[:, 2], out[:, 2, :1, :1].expand(-1, 2, 2))
    # a group size that does not divide the batch falls back to the largest divisor below it
    odd = minibatch_stddev(torch.randn(5, 2, 1, 1), group_size=4)
    torch.testing.assert_close(odd[:, 2], torch.full((5, 1, 1), 1e-4))


@pytest.mark.parametrize("arch", ["resnet", "orig"])
@pytest.mark.parametrize("shape", [(2, 1, 1), (1, 8, 8), (3, 32, 32), (1, 28, 28)])
def test_networks_fit_every_data_shape(arch, shape):
    m = _model(shape, d_arch=arch, g_arch="resnet" if arch == "orig" else "skip")
    assert isinstance(m.discriminator, StyleDiscriminator)
    with torch.no_grad():
        img = m.generator(torch.randn(3, m.z_dim))
        assert img.shape == (3, *shape) and m.discriminator(img).shape == (3,)


def test_bad_hyperparameters_name_their_key():
    with pytest.raises(ValueError, match="model.style_mixing"):
        _model(style_mixing=1.5)
    with pytest.raises(ValueError, match="model.pl_interval"):
        _model(pl_interval=0)
    with pytest.raises(ValueError, match="model.g_arch"):
        _model(g_arch="mlp")
    with pytest.raises(ValueError, match="model.d_arch"):
        _model(d_arch="skip")


# -- R1 (the GAN base's lazy regularizer, with StyleGAN2's defaults) -------------------------------
def test_lazy_r1_of_the_style_discriminator_equals_a_hand_computation():
    """Every 16th D step the loss gains 16 · γ/2 ||∇_x Σ_m D(x)_m||² at the real batch (the
    minibatch stddev couples rows, so row n's gradient collects every output's); 0 otherwise."""
    m = _model(mbstd_group=2)
    assert (m.reg, m.reg_weight, m.reg_interval) == ("r1", 0.01, 16)
    x = torch.randint(0, 17, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    y = m.to_unit(x).double()
    jac = torch.autograd.functional.jacobian(m.discriminator, y)  # [N_out, N, C, H, W]
    hand = 16 * 0.01 / 2 * jac.sum(0).flatten(1).square().sum(1)
    for step in range(17):
        terms = m.training_losses(x, "d")
        if step % 16:
            assert torch.equal(terms["r1"], torch.zeros(4))
            continue
        torch.testing.assert_close(terms["r1"], hand)
        logistic = F.softplus(-terms["d_real"]) + F.softplus(terms["d_fake"])
        torch.testing.assert_close(terms["loss"].detach(), logistic + hand)
    assert int(m.reg_steps) == 17


def test_yaml_defaults_and_toy_overrides():
    from pathlib import Path

    from omegaconf import OmegaConf

    from genbench.build import build_model

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / "stylegan2.yaml")
    img, toy = (
        build_model(cfg, (1, 8, 8), 17),
        build_model(cfg, (2, 1, 1), 64),
    )
    assert (img.pl_weight, img.style_mixing, img.reg, img.reg_interval) == (2.0, 0.9, "r1", 16)
    assert (toy.pl_weight, toy.style_mixing, toy.reg) == (0.0, 0.0, "r1")
    assert img.generator.num_ws == 5 and toy.generator.num_ws == 2
    assert sum(p.numel() for p in img.parameters()) == 92_614
