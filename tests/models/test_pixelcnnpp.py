"""PixelCNN++: the discretized logistic mixture (normalization, closed forms, tails), causality of
the two streams and of the channel coupling, ancestral sampling, learning, configs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from omegaconf import OmegaConf
from scipy.stats import logistic

from genbench.models.autoregressive.pixelcnnpp import (
    PixelCNNpp,
    conditional_log_probs,
    params_per_component,
)
from genbench.models.options import OptionError
from genbench.nn.random import per_sample_generators

TINY = {"nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 3}


def tiny(shape, levels: int, seed: int = 0, **kw) -> PixelCNNpp:
    torch.manual_seed(seed)
    return PixelCNNpp(shape, levels, **{**TINY, **kw}).double().eval()


def random_params(n: int, channels: int, mix: int, seed: int) -> torch.Tensor:
    """``[n, M * P, 1, 1]`` network outputs with spread-out means and scales."""
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(n, mix * params_per_component(channels), 1, 1, generator=g).double()


def centers(x: torch.Tensor, levels: int) -> torch.Tensor:
    return x.double() * (2.0 / (levels - 1)) - 1.0


def all_pixels(channels: int, levels: int) -> torch.Tensor:
    """``[K^C, C, 1, 1]`` every pixel value."""
    grid = itertools.product(range(levels), repeat=channels)
    return torch.tensor(list(grid)).view(-1, channels, 1, 1)


# ----------------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_the_k_bin_masses_of_a_sub_pixel_sum_to_one(levels):
    sets, mix = 20, 4
    params = random_params(sets, 1, mix, seed=levels).repeat_interleave(levels, 0)
    x = torch.arange(levels).repeat(sets).view(-1, 1, 1, 1)
    lp = conditional_log_probs(params, centers(x, levels), levels).view(sets, levels)
    torch.testing.assert_close(
        lp.exp().sum(1), torch.ones(sets, dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert (lp.exp() > 1e-3).sum() > sets, "the masses are degenerate: the test checks nothing"


@pytest.mark.parametrize("levels", [2, 5])
def test_the_joint_of_three_coupled_channels_sums_to_one(levels):
    sets, mix = 6, 3
    x = all_pixels(3, levels)
    params = random_params(sets, 3, mix, seed=7).repeat_interleave(len(x), 0)
    v = centers(x.repeat(sets, 1, 1, 1), levels)
    lp = conditional_log_probs(params, v, levels)  # [sets * K^3, 3, 1, 1]
    joint = lp.sum((1, 2, 3)).exp().view(sets, -1).sum(1)
    torch.testing.assert_close(joint, torch.ones(sets, dtype=torch.float64), atol=1e-12, rtol=0)
    # every conditional is normalized too: p(x_B | x_R, x_G) sums to one over x_B
    blue = lp[:, 2].exp().view(sets, levels * levels, levels).sum(2)
    torch.testing.assert_close(blue, torch.ones_like(blue), atol=1e-12, rtol=0)


def _bin(v: float, loc: float, scale: float, levels: int) -> float:
    """Mass of the bin around center ``v`` under scipy's logistic (edge bins open)."""
    h = 1.0 / (levels - 1)
    upper = 1.0 if v > 1 - h else logistic.cdf(v + h, loc, scale)
    lower = 0.0 if v < -1 + h else logistic.cdf(v - h, loc, scale)
    return upper - lower


@pytest.mark.parametrize("level", [0, 3, 6])  # lower edge, inside, upper edge
def test_the_mixture_matches_scipy_logistic_cdf_differences_by_hand(level):
    """C = 3, M = 2, K = 7: p(x) = sum_m pi_m prod_c [F(v_c + h) - F(v_c - h)] with the means of
    G and B shifted by tanh-coefficients times the centers of R (and G)."""
    levels, mix = 7, 2
    params = random_params(1, 3, mix, seed=11)
    x = torch.tensor([level, 2, 5]).view(1, 3, 1, 1)
    v = centers(x, levels)
    got = conditional_log_probs(params, v, levels).sum().item()
    p = params.view(mix, 10).tolist()
    r, g, b = v.flatten().tolist()
    weights = torch.softmax(params.view(mix, 10)[:, 0], 0).tolist()
    want = 0.0
    for m in range(mix):
        _, mr, mg, mb, sr, sg, sb, a, bb, cc = p[m]
        a, bb, cc = math.tanh(a), math.tanh(bb), math.tanh(cc)
        means = (mr, mg + a * r, mb + bb * r + cc * g)
        scales = [math.exp(max(s, -7.0)) for s in (sr, sg, sb)]
        want += weights[m] * math.prod(
            _bin(val, mu, s, levels) for val, mu, s in zip((r, g, b), means, scales)
        )
    assert abs(got - math.log(want)) < 1e-10, f"{got} vs log {want}"


def test_far_tail_bins_are_exact_where_the_cdf_difference_underflows():
    """A narrow bin 40 scales from the mean: float32 sigmoids are both 1 there (their difference
    is 0, the log -inf); the log-space form gives scipy's float64 log-mass, which the reference
    code's fallback (log-density at the center times the width) approximates."""
    levels, loc, log_s = 256, -1.5, -3.0
    v = 2 * 140 / 255 - 1  # level 140, about 42 scales above the mean
    h, s = 1 / 255, math.exp(log_s)
    params = torch.tensor([0.0, loc, log_s], dtype=torch.float32).view(1, 3, 1, 1)
    lp = conditional_log_probs(params, torch.tensor([[[[v]]]], dtype=torch.float32), levels)
    lo, hi = logistic.logsf(v - h, loc, s), logistic.logsf(v + h, loc, s)
    want = lo + math.log1p(-math.exp(hi - lo))
    naive = torch.sigmoid(torch.tensor((v + h - loc) / s)) - torch.sigmoid(
        torch.tensor((v - h - loc) / s)
    )
    assert naive.item() == 0.0, "the bin does not underflow in float32: the test checks nothing"
    assert math.isfinite(lp.item()) and abs(lp.item() - want) < 1e-4 * abs(want), (lp.item(), want)
    mid = logistic.logpdf(v, loc, s) + math.log(2 * h)
    assert abs(mid - want) < 2e-3, f"reference fallback {mid} vs exact {want}"


def test_enumerating_every_input_of_a_tiny_image_sums_to_one():
    shape, levels = (2, 2, 2), 3  # 3^8 images
    m = tiny(shape, levels)
    torch.nn.init.normal_(m.out.weight, std=0.5)
    x = torch.tensor(list(itertools.product(range(levels), repeat=8))).view(-1, 2, 2, 2)
    with torch.no_grad():
        total = torch.exp(-m.nll(x)).sum().item()
    assert abs(total - 1.0) < 1e-9, total


def test_nll_is_the_network_through_the_mixture_and_uniform_data_costs_at_least_log_k():
    shape, levels = (3, 4, 4), 9
    m = tiny(shape, levels)
    x = torch.randint(0, levels, (64, *shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nll = m.nll(x)
        want = -conditional_log_probs(m.network(centers(x, levels)), centers(x, levels), levels)
    torch.testing.assert_close(nll, want.sum((1, 2, 3)), rtol=1e-12, atol=1e-12)
    terms = m.training_losses(x)
    torch.testing.assert_close(terms["bpd"], nll / (48 * math.log(2)))
    assert nll.mean().item() >= 48 * math.log(levels) - 0.5  # Gibbs: no better than uniform


# ----------------------------------------------------------------------------- causality


def order(shape) -> torch.Tensor:
    """``[C, H, W]`` position of each sub-pixel in the sampling order (raster, then channel)."""
    c, h, w = shape
    return torch.arange(c * h * w).view(h, w, c).permute(2, 0, 1)


def dependency(m: PixelCNNpp, shape) -> torch.Tensor:
    """``[D, D]`` |d log p(x_s | ...) / d v_t| over the network *and* the channel coupling; row
    = output sub-pixel s, column = input sub-pixel t, both in sampling order."""
    c_, h_, w_ = shape
    g = torch.Generator().manual_seed(3)
    v = centers(torch.randint(0, m.levels, (1, *shape), generator=g), m.levels).requires_grad_()
    lp = conditional_log_probs(m.network(v), v, m.levels)[0]
    pos, d = order(shape), c_ * h_ * w_
    dep = torch.zeros(d, d, dtype=torch.float64)
    for c, i, j in itertools.product(range(c_), range(h_), range(w_)):
        (grad,) = torch.autograd.grad(lp[c, i, j], v, retain_graph=True)
        dep[pos[c, i, j], pos.flatten()] = grad[0].abs().flatten()
    return dep


@pytest.mark.parametrize("shape", [(1, 5, 6), (3, 4, 4), (2, 3, 5), (2, 1, 1), (3, 7, 2)])
def test_each_conditional_sees_every_earlier_sub_pixel_and_no_later_one(shape):
    m = tiny(shape, 5)
    torch.nn.init.normal_(m.out.weight, std=0.5)  # all paths alive
    dep = dependency(m, shape)
    leak = torch.triu(dep, 1).max().item()  # the diagonal is the value being scored
    assert leak == 0.0, f"log p(x_s) depends on later sub-pixels (max |grad| {leak})"
    d = dep.shape[0]
    seen = dep[torch.tril(torch.ones(d, d, dtype=torch.bool), -1)] > 0
    assert seen.all(), f"{int((~seen).sum())} earlier sub-pixels are invisible (blind spot)"
    v = centers(torch.randint(0, 5, (2, *shape), generator=torch.Generator().manual_seed(4)), 5)
    with torch.no_grad():  # sampling runs rows 0..i only: the same outputs on those rows
        full = m.network(v)
        for rows in range(1, shape[1]):
            top = m.network(v[:, :, :rows])
            torch.testing.assert_close(top, full[:, :, :rows], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("channels,levels", [(2, 4), (3, 3)])
def test_samples_follow_the_models_own_distribution(channels, levels):
    """H = W = 1: the network sees no pixel, the channel coupling carries the whole dependence;
    the frequencies of 20,000 draws match the enumerated probabilities."""
    m = tiny((channels, 1, 1), levels)
    torch.nn.init.normal_(m.out.bias, std=1.5)
    x = all_pixels(channels, levels)
    with torch.no_grad():
        probs = torch.exp(-m.nll(x))
    out = m.sample(20_000, generator=torch.Generator().manual_seed(0))
    code = (out.x.view(-1, channels) * levels ** torch.arange(channels - 1, -1, -1)).sum(1)
    freq = torch.bincount(code, minlength=len(x)).double() / 20_000
    tv = 0.5 * (freq - probs).abs().sum().item()
    assert tv < 0.03, f"total variation {tv:.4f} between samples and the model"
    joint = probs.view(levels, -1)  # rows: the first channel's level
    product = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)  # first ⟂ the rest
    coupling = 0.5 * (joint - product).abs().sum().item()
    assert coupling > 0.1, f"the channels are nearly independent ({coupling:.3f}): vacuous test"
    assert out.nfe.tolist() == [1.0] * 20_000


def test_sample_shape_range_nfe_and_batch_size_independence():
    shape, levels = (3, 3, 4), 6
    m = tiny(shape, levels).float()
    out = m.sample(3, generator=per_sample_generators(5, 0, 3))
    one = m.sample(1, generator=per_sample_generators(5, 1, 1)).x
    assert out.x.shape == (3, *shape) and out.x.dtype == torch.int64
    assert int(out.x.min()) >= 0 and int(out.x.max()) < levels and len(out.x.unique()) > 1
    assert torch.equal(out.x[1:2], one), "sample 1 changed with the batch size"
    assert torch.equal(out.x, m.sample(3, generator=per_sample_generators(5, 0, 3)).x)
    assert out.nfe.tolist() == [12.0] * 3  # H * W network passes
    with pytest.raises(ValueError, match="temperature"):
        m.sample(1, temperature=0.5)


# ----------------------------------------------------------------------------- learning


def test_a_few_steps_on_a_tiny_batch_reduce_the_nll():
    from genbench.data.bundled import digits

    x = digits().train[:16].long()
    m = tiny((1, 8, 8), 17).float().train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    with torch.no_grad():
        before = m.nll(x).mean().item()
    for _ in range(15):
        loss = m.training_losses(x)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = m.nll(x).mean().item()
    assert after < before - 0.2 * 64, f"nats per image {before:.1f} -> {after:.1f}"


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "key,value", [("nr_filters", 0), ("nr_resnet", 1.5), ("scales", 0), ("dropout", 1.0)]
)
def test_bad_hyperparameters_name_their_key(key, value):
    with pytest.raises(ValueError, match=f"model.{key}={value!r}"):
        PixelCNNpp((1, 8, 8), 17, **{key: value})
    with pytest.raises(OptionError):
        PixelCNNpp((1, 8, 8), 17, nr_logistic_mix=0)


def test_configs_build_the_model_and_state_the_published_preset():
    from importlib.resources import files

    from genbench.build import build_model

    conf = files("genbench.conf")
    node = OmegaConf.load(conf / "model" / "pixelcnnpp.yaml")
    model = build_model(node, (2, 1, 1), 64)
    assert isinstance(model, PixelCNNpp) and not model.conditional
    node.conditional = True
    assert build_model(node, (2, 1, 1), 64, num_classes=2).num_classes == 2
    exp = OmegaConf.load(conf / "experiment" / "pixelcnnpp_cifar10.yaml")
    assert exp.expected.bpd == 2.92 and "Table 1" in exp.expected.source
    paper = {"nr_resnet": 5, "nr_filters": 160, "nr_logistic_mix": 10, "dropout": 0.5}
    assert {k: exp.model[k] for k in paper} == paper
    assert exp.scheduler.gamma == 0.999995 and exp.optimizer.lr == 1e-3
