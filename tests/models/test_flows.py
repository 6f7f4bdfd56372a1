"""Flow layers and the RealNVP / Glow models: invertibility, log-determinants against the autograd
Jacobian, ActNorm's data-dependent init, the dequantized bound, sampling. float64 throughout."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from genbench.models.flows.glow import Glow
from genbench.models.flows.layers import (
    ActNorm,
    AffineCoupling,
    Center,
    CouplingNet,
    InvConv1x1,
    LogitTransform,
    SplitPrior,
    Squeeze,
    dequantize,
    quantize,
)
from genbench.models.flows.realnvp import RealNVP
from genbench.nn.random import per_sample_generators, randn

TINY = {"hidden": 8, "blocks": 1}


pytestmark = pytest.mark.usefixtures("float64")  # closed forms in float64


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (zero-initialized convs would make couplings trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def autograd_logdet(fn, h: torch.Tensor) -> torch.Tensor:
    """``[N]`` log|det J| of ``fn`` (one example at a time) from the full autograd Jacobian."""
    out = []
    for row in h:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.unsqueeze(0)).flatten(), row)
        out.append(torch.linalg.slogdet(jac.reshape(jac.shape[0], -1)).logabsdet)
    return torch.stack(out)


LAYERS = {
    "coupling-checkerboard-tanh": (
        lambda: AffineCoupling((2, 4, 4), "checkerboard", 0, **TINY),
        (2, 4, 4),
    ),
    "coupling-checkerboard-odd-sigmoid": (
        lambda: AffineCoupling((1, 3, 3), "checkerboard", 1, scale="sigmoid", **TINY),
        (1, 3, 3),
    ),
    "coupling-channel-tanh": (lambda: AffineCoupling((4, 2, 2), "channel", 0, **TINY), (4, 2, 2)),
    "coupling-channel-odd-parity1": (
        lambda: AffineCoupling((3, 2, 2), "channel", 1, **TINY),
        (3, 2, 2),
    ),
    "coupling-channel-mlp-sigmoid": (
        lambda: AffineCoupling((2, 1, 1), "channel", 1, scale="sigmoid", **TINY),
        (2, 1, 1),
    ),
    "actnorm": (lambda: ActNorm(3), (3, 2, 2)),
    "invconv-lu": (lambda: InvConv1x1(4), (4, 2, 2)),
    "squeeze": (lambda: Squeeze(), (2, 4, 2)),
    "logit": (lambda: LogitTransform(0.05), (2, 2, 2)),
    "logit-bijective": (lambda: LogitTransform(0.0), (2, 2, 2)),
    "center": (lambda: Center(), (1, 2, 2)),
}


def layer_input(shape, name: str, n: int = 3) -> torch.Tensor:
    h = torch.randn(n, *shape, generator=torch.Generator().manual_seed(3))
    return (
        torch.sigmoid(h) if name.startswith("logit") else h
    )  # the logit transform takes y in (0, 1)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_is_invertible_and_logdet_matches_autograd_jacobian(name):
    torch.manual_seed(0)
    make, shape = LAYERS[name]
    layer = perturb(make()).eval()
    h = layer_input(shape, name)
    out, logdet = layer(h)
    assert logdet.shape == (h.shape[0],)
    torch.testing.assert_close(layer.inverse(out), h, atol=1e-10, rtol=1e-10)
    expected = autograd_logdet(lambda v: layer(v)[0], h)
    torch.testing.assert_close(logdet, expected, atol=1e-8, rtol=1e-8)


def test_squeeze_moves_2x2_blocks_to_channels():
    h = torch.arange(16.0).reshape(1, 1, 4, 4)
    out, _ = Squeeze()(h)
    assert out.shape == (1, 4, 2, 2)
    # channel 2 dy + dx holds sub-pixel (dy, dx) of each 2x2 block
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0, 1.0, 4.0, 5.0]))
    torch.testing.assert_close(out[0, :, 1, 1], torch.tensor([10.0, 11.0, 14.0, 15.0]))


def test_invconv_weight_is_plu_and_starts_orthogonal():
    torch.manual_seed(0)
    conv = InvConv1x1(5)
    w = conv.weight()
    torch.testing.assert_close(w @ w.T, torch.eye(5), atol=1e-6, rtol=0)
    assert torch.allclose(torch.linalg.slogdet(w).logabsdet, conv.log_s.sum())


def test_actnorm_data_dependent_init_gives_zero_mean_unit_variance_once():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(16, 3, 4, 4, generator=g) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1)
    h = h + torch.tensor([-3.0, 0.0, 10.0]).view(1, 3, 1, 1)
    norm = ActNorm(3).train()
    out, _ = norm(h)
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-10, rtol=0)
    torch.testing.assert_close(out.std((0, 2, 3), unbiased=False), torch.ones(3))
    assert float(norm.initialized) == 1.0
    before = [p.detach().clone() for p in norm.parameters()]
    norm(5 * h + 1)  # a second batch must not re-initialize
    assert all(torch.equal(a, b) for a, b in zip(before, norm.parameters()))


def test_actnorm_does_not_initialize_in_eval_mode():
    norm = ActNorm(2).eval()
    h = torch.randn(4, 2, 3, 3) + 5
    out, logdet = norm(h)
    assert torch.equal(out, h) and float(norm.initialized) == 0.0 and torch.all(logdet == 0)


def build(kind: str, shape=(1, 4, 4), levels: int = 16, **kw):
    torch.manual_seed(0)
    if kind == "realnvp":
        kw = {
            "checker_couplings": 2,
            "channel_couplings": 2,
            "final_couplings": 2,
            "flat_couplings": 2,
            **TINY,
            **kw,
        }
        return RealNVP(shape, levels, **kw)
    return Glow(shape, levels, **{"steps": 2, **TINY, **kw})


MODELS = [
    ("realnvp", (1, 4, 4)),
    ("realnvp", (2, 1, 1)),
    ("glow", (1, 4, 4)),
    ("glow", (2, 1, 1)),
    ("glow", (1, 3, 3)),
]


@pytest.mark.parametrize("kind,shape", MODELS)
def test_full_flow_is_invertible_and_logdet_matches_autograd_jacobian(kind, shape):
    model = perturb(build(kind, shape), scale=0.1).eval()
    y = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    eps, logdet = model.encode(y)
    assert eps.shape == (2, model.dims)
    torch.testing.assert_close(model.decode(eps), y, atol=1e-9, rtol=1e-9)
    expected = autograd_logdet(lambda v: model.encode(v)[0], y)
    torch.testing.assert_close(logdet, expected, atol=1e-7, rtol=1e-7)


def wake_zero_convs(model: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Small random weights in the zero-initialized last convs (coupling conditioners, learned
    priors): the model as it is at init, but no longer an exact identity in those layers."""
    g = torch.Generator().manual_seed(seed)
    convs = [m.out for m in model.modules() if isinstance(m, CouplingNet)]
    convs += [m.net for m in model.modules() if isinstance(m, SplitPrior) and m.net is not None]
    with torch.no_grad():
        for conv in convs:
            for p in conv.parameters():
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
@pytest.mark.parametrize("shape", [(1, 3, 3), (1, 4, 4), (3, 3, 3), (3, 4, 4), (2, 1, 1)])
def test_every_latent_depends_on_some_other_input_dimension(kind, shape):
    """Row i of d eps / d y has a nonzero entry off the diagonal for every i: no dimension passes
    through the flow on its own (e.g. pixels that every coupling keeps and no 1x1 conv mixes)."""
    model = wake_zero_convs(build(kind, shape)).eval()
    y = torch.rand(*shape, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    jac = torch.autograd.functional.jacobian(lambda v: model.encode(v[None])[0][0], y)
    jac = jac.reshape(model.dims, model.dims)
    off = (jac - torch.diag(torch.diagonal(jac))).abs().amax(1)
    alone = [i for i in range(model.dims) if off[i] <= 1e-9]
    assert not alone, f"latents {alone} of {model.dims} depend on their own input dim only"


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_nll_is_the_dequantized_density_on_the_discrete_scale(kind):
    model = perturb(build(kind), scale=0.1).eval()
    x = torch.randint(0, 16, (3, 1, 4, 4), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)  # nll draws u from the global RNG
    nll = model.nll(x)
    torch.manual_seed(5)
    y = dequantize(x, 16, dtype=torch.float64)
    torch.testing.assert_close(nll, -model.log_prob(y) + 16 * math.log(16))
    torch.manual_seed(5)
    bpd = model.training_losses(x, "main")["loss"]
    torch.testing.assert_close(bpd, nll / (16 * math.log(2)))


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
@pytest.mark.parametrize("seed", [0, 1])
def test_untrained_bpd_on_uniform_levels_is_at_least_log2_k(kind, seed):
    levels = 16
    model = perturb(build(kind, levels=levels), scale=0.1, seed=seed).eval()
    x = torch.randint(0, levels, (2000, 1, 4, 4), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    with torch.inference_mode():
        bpd = model.nll(x).mean() / (model.dims * math.log(2))
    assert bpd >= math.log2(levels) - 0.01, f"{bpd:.4f} < log2 K = {math.log2(levels)}"


# (model overrides, learning rate, bits/dim to reach): after ActNorm's init RealNVP's logit
# pre-transform starts within ~0.07 bits of 8; Glow's centred input starts ~0.26 bits above.
NOISE_FIT = {"realnvp": ({}, 3e-3, 8.07), "glow": ({}, 1e-2, 8.16)}


@pytest.mark.parametrize("kind", sorted(NOISE_FIT))
def test_brief_training_on_uniform_8bit_noise_approaches_8_bits_from_above(kind):
    overrides, lr, target = NOISE_FIT[kind]
    shape = (2, 1, 1)
    model = build(kind, shape, levels=256, **overrides).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    test = torch.randint(0, 256, (4000, *shape), generator=g)

    def test_bpd() -> float:
        model.eval()
        torch.manual_seed(1)  # the same dequantization noise at every evaluation
        with torch.inference_mode():
            bpd = float(model.nll(test).mean() / (model.dims * math.log(2)))
        model.train()
        return bpd

    model.training_losses(test[:256], "main")  # ActNorm data-dependent init
    start = test_bpd()
    for _ in range(150):
        loss = model.training_losses(torch.randint(0, 256, (256, *shape), generator=g), "main")
        opt.zero_grad()
        loss["loss"].mean().backward()
        opt.step()
    end = test_bpd()
    assert 8.0 - 0.005 <= end <= target, f"bits/dim {end:.4f} not in [7.995, {target}]"
    assert end < start, f"training did not help: {start:.4f} -> {end:.4f}"


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_sample_shape_range_and_per_sample_determinism(kind):
    model = perturb(build(kind), scale=0.1).eval()
    with torch.inference_mode():
        out = model.sample(3, generator=per_sample_generators(11, 0, 3))
        b = model.sample(3, generator=per_sample_generators(11, 0, 3)).x
        singles = [model.sample(1, generator=per_sample_generators(11, i, 1)).x for i in range(3)]
    a = out.x
    assert a.shape == (3, 1, 4, 4) and a.dtype == torch.int64
    assert int(a.min()) >= 0 and int(a.max()) <= 15
    assert torch.equal(a, b)
    assert torch.equal(a, torch.cat(singles)), "sample i must not depend on the batch size"
    assert out.nfe.tolist() == [1.0] * 3  # one inverse pass


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_temperature_zero_decodes_the_prior_mode_and_unknown_options_fail(kind):
    model = perturb(build(kind), scale=0.1).eval()
    with torch.inference_mode():
        cold = model.sample(3, generator=per_sample_generators(0, 0, 3), temperature=0.0).x
        mode = quantize(model.decode(torch.zeros(1, model.dims)), 16)
    assert torch.equal(cold, mode.expand(3, -1, -1, -1))
    assert model.resolve_sampler() == {"temperature": 1.0}
    assert model.resolve_sampler(temperature=0.7) == {"temperature": 0.7}
    with pytest.raises(ValueError, match="steps"):
        model.sample(2, steps=10)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_logit_pretransform_of_a_gaussian_puts_all_its_mass_in_the_cube_only_at_alpha_0(alpha):
    """The density of y whose h = logit(alpha + (1 - 2 alpha) y) is N(0, 1): its mass in [0, 1]
    (trapezoid rule, 200001 points) is Phi(logit(1 - alpha)) - Phi(logit(alpha)), which is 1 for
    the bijective alpha = 0 and 2 Phi(logit(0.95)) - 1 = 0.99676 for the paper's 0.05."""
    y = torch.linspace(0, 1, 200_001)[1:-1].view(1, 1, 1, -1)
    h, logdet_total = LogitTransform(alpha)(y)
    log_density = -0.5 * (h**2 + math.log(2 * math.pi))  # log N(h) per point
    per_point = torch.log(torch.tensor(1 - 2 * alpha)) - torch.log(alpha + (1 - 2 * alpha) * y)
    per_point = per_point - torch.log1p(-(alpha + (1 - 2 * alpha) * y))
    torch.testing.assert_close(per_point.sum(), logdet_total[0])  # the summed log-det
    mass = torch.trapezoid((log_density + per_point).exp().flatten(), y.flatten())
    normal = torch.distributions.Normal(0.0, 1.0)
    edge = math.log((1 - alpha) / alpha) if alpha > 0 else math.inf
    expected = float(normal.cdf(torch.tensor(edge)) - normal.cdf(torch.tensor(-edge)))
    assert abs(float(mass) - expected) < 1e-6, f"mass {float(mass):.7f} != {expected:.7f}"
    assert (expected == 1.0) == (alpha == 0)


def test_bijective_logit_levels_count_logit_thresholds_without_clamping():
    levels = 5
    pre = LogitTransform(0.0)
    k = torch.arange(1.0, 5.0)
    edges = torch.log(k) - torch.log(5 - k)  # logit(k / 5), as the transform computes it
    h = torch.cat([edges - 1e-9, edges, torch.tensor([-1e4, 0.0, 1e4])]).view(1, 1, 1, -1)
    expected = [0, 1, 2, 3, 1, 2, 3, 4, 0, 2, 4]
    assert pre.levels(h, levels).flatten().tolist() == expected
    assert pre.levels(h.float(), levels).flatten().tolist()[-3:] == [0, 2, 4]  # sigmoid(1e4) = 1
    y = torch.tensor([0.0, 0.3, 0.999]).view(1, 1, 1, 3)
    torch.testing.assert_close(pre.inverse(pre(y)[0]), y.clamp(min=torch.finfo(y.dtype).eps))


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_samples_of_the_bijective_logit_flow_never_leave_the_cube(kind):
    """With logit_alpha = 0 every decoded sub-pixel is in [0, 1) and the sampled levels are
    floor(K y) with no clamping; the paper's alpha = 0.05 decodes some sub-pixels outside the cube
    (the mass its density loses). (Far out, sigmoid(h) rounds to 1: ``levels`` counts in logit
    space, see the test above.)"""
    eps = torch.randn(500, 16, generator=torch.Generator().manual_seed(4))
    for alpha in (0.0, 0.05):
        model = perturb(build(kind, logit_alpha=alpha), scale=0.1).eval()
        with torch.inference_mode():
            y = model.decode(eps)
            x = model.sample(500, generator=per_sample_generators(2, 0, 500)).x
            gens = per_sample_generators(2, 0, 500)
            y_drawn = model.decode(randn((500, 16), generator=gens, dtype=torch.float64))
        outside = float(((y < 0) | (y >= 1)).double().mean())
        if alpha == 0:
            assert outside == 0.0, f"{outside:.4f} of the sub-pixels decode outside [0, 1)"
            assert torch.equal(x, torch.floor(16 * y_drawn).long())
        else:
            assert outside > 1e-3, f"alpha = 0.05 should leak mass, got {outside:.4f} outside"


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_bijective_logit_flow_logdet_matches_autograd_near_the_faces(kind):
    model = perturb(build(kind, logit_alpha=0.0), scale=0.1).eval()
    y = torch.tensor([1e-6, 0.5, 1 - 1e-6, 0.02] * 4).view(1, 1, 4, 4)
    eps, logdet = model.encode(y)
    torch.testing.assert_close(model.decode(eps), y, atol=1e-9, rtol=1e-7)
    expected = autograd_logdet(lambda v: model.encode(v)[0], y)
    torch.testing.assert_close(logdet, expected, atol=1e-7, rtol=1e-7)


def test_quantize_inverts_dequantize_and_clamps():
    x = torch.arange(17).view(1, 1, 1, 17)
    assert torch.equal(quantize(dequantize(x, 17), 17), x)
    y = torch.tensor([-0.3, 1.2, float("nan"), float("inf")]).view(1, 1, 1, 4)
    assert quantize(y, 17).flatten().tolist() == [0, 16, 8, 16]


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_state_dict_and_deepcopy_keep_the_actnorm_init(kind):
    model = build(kind).train()
    x = torch.randint(0, 16, (8, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    model.training_losses(x, "main")
    norms = [m for m in model.modules() if isinstance(m, ActNorm)]
    assert norms and all(float(m.initialized) == 1.0 for m in norms)
    fresh = build(kind)
    fresh.load_state_dict(model.state_dict())
    for other in (fresh.train(), copy.deepcopy(model).train()):
        other.training_losses(x + 1 - 2 * (x > 7).long(), "main")  # another batch: no re-init
        for name, p in model.state_dict().items():
            assert torch.equal(other.state_dict()[name], p), f"{name} changed: re-initialized?"


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
@pytest.mark.parametrize(
    "shape,levels", [((2, 1, 1), 64), ((1, 8, 8), 17), ((1, 28, 28), 256), ((3, 32, 32), 256)]
)
def test_builds_and_runs_on_every_benchmark_shape(kind, shape, levels):
    torch.manual_seed(0)
    cls = RealNVP if kind == "realnvp" else Glow
    model = cls(shape, levels, hidden=4).float()
    x = torch.randint(0, levels, (2, *shape))
    loss = model.training_losses(x, "main")["loss"]
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    with torch.inference_mode():
        s = model.eval().sample(2, generator=per_sample_generators(0, 0, 2)).x
    assert s.shape == (2, *shape) and int(s.max()) < levels


def _exact_nll_2d(m, levels, grid=400):
    """-log P(x) of every x in {0..K-1}^2 for a flow on (2, 1, 1): the density integrated over
    each bin by the midpoint rule on a grid of grid x grid points per bin."""
    k = levels
    centers = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    out = {}
    for a in range(k):
        for b in range(k):
            ya, yb = torch.meshgrid((a + centers) / k, (b + centers) / k, indexing="ij")
            y = torch.stack([ya.flatten(), yb.flatten()], 1).view(-1, 2, 1, 1)
            with torch.no_grad():
                lp = m.log_prob(y)
            out[a, b] = -(torch.logsumexp(lp, 0) - math.log(grid * grid * k * k))
    return out


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_k_sample_dequantized_bounds_stay_above_the_exact_nll_and_tighten(dequantization):
    """RealNVP on 2 sub-pixels with K = 4: the exact discrete NLL by integrating the density over
    every bin (the probabilities sum to 1); the k = 1 bound is above it on average, the k = 64
    bound closer, and both stay above it."""
    torch.manual_seed(0)
    m = RealNVP((2, 1, 1), 4, hidden=16, flat_couplings=4, dequantization=dequantization).double()
    x = torch.randint(0, 4, (64, 2, 1, 1))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(40):  # a non-trivial density (and q)
        opt.zero_grad()
        m.training_losses(x)["loss"].mean().backward()
        opt.step()
    m.eval()
    exact = _exact_nll_2d(m, 4)
    assert float(torch.logsumexp(-torch.stack(list(exact.values())), 0)) == pytest.approx(
        0.0, abs=2e-3
    )
    xs = torch.tensor([[[[1]], [[2]]], [[[0]], [[3]]]])
    truth = torch.stack([exact[1, 2], exact[0, 3]])
    with torch.no_grad():
        ones = torch.stack(
            [m.nll(xs, generator=per_sample_generators(s, 0, 2)) for s in range(2000)]
        )
        manys = torch.stack(
            [
                m.nll(xs, generator=per_sample_generators(s, 0, 2), dequant_samples=64)
                for s in range(100)
            ]
        )
    one, many = ones.mean(0), manys.mean(0)
    se_one, se_many = ones.std(0) / 2000**0.5, manys.std(0) / 10  # standard errors of the means
    assert (one > truth - 3 * se_one).all() and (many > truth - 3 * se_many).all()
    assert ((many - truth) < 0.5 * (one - truth) + 3 * se_many).all()
    assert float(one[1] - truth[1]) > 3 * float(se_one[1])  # a real k = 1 gap at the edge bins


def test_k_sample_bound_is_batch_independent_and_k1_is_the_plain_bound():
    torch.manual_seed(0)
    m = Glow((1, 4, 4), 5, hidden=8, steps=2, dequantization="variational").eval()
    x = torch.randint(0, 5, (5, 1, 4, 4))
    with torch.no_grad():
        whole = m.nll(x, generator=per_sample_generators(0, 0, 5), dequant_samples=3)
        part = m.nll(x[3:], generator=per_sample_generators(0, 3, 2), dequant_samples=3)
        one = m.nll(x, generator=per_sample_generators(0, 0, 5), dequant_samples=1)
        plain = m.nll(x, generator=per_sample_generators(0, 0, 5))
    assert torch.allclose(whole[3:], part, atol=1e-4)
    assert torch.equal(one, plain)
    assert m.nll_settings(dequant_samples=3) == {"dequant_samples": 3}
    with pytest.raises(ValueError, match="dequant_samples"):
        m.nll(x, dequant_samples=0)
    with pytest.raises(ValueError, match="model.dequantization"):
        Glow((1, 4, 4), 5, dequantization="learned")
