"""PixelCNN / PixelRNN: masks, causality (autograd), exact NLL, ancestral sampling, learning."""

from __future__ import annotations

import math
import time

import pytest
import torch
from omegaconf import OmegaConf

from genbench.models.autoregressive.pixelcnn import PixelCNN
from genbench.models.autoregressive.pixelrnn import PixelRNN
from genbench.nn.masked import MaskedConv2d, causal_mask, feature_groups
from genbench.nn.random import categorical, per_sample_generators

MODELS = {"pixelcnn": PixelCNN, "pixelrnn": PixelRNN}
TINY = {"features": 12, "layers": 3, "kernel": 3, "first_kernel": 3}


def tiny(name: str, shape, levels: int, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return MODELS[name](shape, levels, **{**TINY, **kw}).double().eval()


def levels_batch(shape, levels: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, levels, (n, *shape), generator=torch.Generator().manual_seed(seed))


def order(shape) -> torch.Tensor:
    """``[C, H, W]`` position of each sub-pixel in the sampling order (raster, then channel)."""
    c, h, w = shape
    return torch.arange(c * h * w).view(h, w, c).permute(2, 0, 1)


def dependency(fn, u: torch.Tensor, groups: list[int], shape) -> torch.Tensor:
    """``[D, D]`` |d out / d in|: row = output sub-pixel, column = input sub-pixel, both in
    sampling order. ``fn(u)`` is ``[1, G, H, W]``; output sub-pixel (c, i, j) is a random
    combination of the G outputs of group c at (i, j) (random weights: no cancellation)."""
    c_, h_, w_ = shape
    u = u.clone().requires_grad_(True)
    out = fn(u)[0]
    g = torch.tensor(groups)
    weights = torch.randn(out.shape[0], generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    pos = order(shape)
    dep = torch.zeros(c_ * h_ * w_, c_ * h_ * w_, dtype=out.dtype)
    for c in range(c_):
        for i in range(h_):
            for j in range(w_):
                sel = g == c
                (grad,) = torch.autograd.grad(
                    (weights[sel] * out[sel, i, j]).sum(), u, retain_graph=True
                )
                dep[pos[c, i, j], pos.flatten()] = grad[0, :c_].abs().flatten()
    return dep


# ----------------------------------------------------------------------------- masks


def test_mask_a_and_b_at_the_anchor_and_around_it():
    in_groups, out_groups = [0, 1, 2, -1], [0, 0, 1, 2]
    a = causal_mask(in_groups, out_groups, (3, 3), "A", (1, 1))
    b = causal_mask(in_groups, out_groups, (3, 3), "B", (1, 1))
    # anchor tap, by hand: A reads strictly earlier channels (and the constant), B also its own
    want_a = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 1], [1, 1, 0, 1.0]])
    want_b = torch.tensor([[1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 0, 1], [1, 1, 1, 1.0]])
    assert torch.equal(a[:, :, 1, 1], want_a) and torch.equal(b[:, :, 1, 1], want_b)
    spatial = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0.0]])  # open before the anchor only
    for m in (a, b):
        off_anchor = m.clone()
        off_anchor[:, :, 1, 1] = 0
        assert torch.equal(off_anchor, spatial.expand_as(m))
    # a row kernel anchored at its last tap: the previous column open, the anchor masked
    row = causal_mask([0, 1], [0, 1], (1, 2), "B", (0, 1))
    assert torch.equal(row[:, :, 0, 0], torch.ones(2, 2))
    assert torch.equal(row[:, :, 0, 1], torch.tensor([[1, 0], [1, 1.0]]))


def test_feature_groups_are_contiguous_and_cover_every_channel():
    assert feature_groups(7, 3) == [0, 0, 0, 1, 1, 2, 2]
    assert feature_groups(6, 3) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="at least one feature per channel"):
        feature_groups(2, 3)


@pytest.mark.parametrize("kernel,anchor", [((3, 3), None), ((5, 5), None), ((1, 3), (0, 2))])
def test_masked_conv_at_equals_the_full_convolution(kernel, anchor):
    torch.manual_seed(0)
    conv = MaskedConv2d([0, 1, -1], [0, 0, 1, 1], kernel, "A", anchor=anchor).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    full = conv(x)
    assert full.shape == (2, 4, 4, 5)
    for i in range(4):
        for j in range(5):
            torch.testing.assert_close(
                conv.at(x, i, j), full[:, :, i : i + 1, j : j + 1], rtol=0, atol=1e-12
            )


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(3, 4, 4), (2, 3, 3), (2, 1, 1), (1, 4, 4)])
def test_logits_never_depend_on_the_current_or_later_sub_pixels(name, shape):
    m = tiny(name, shape, 5)
    u = m.encode(levels_batch(shape, 5, 1))
    dep = dependency(m.network, u, feature_groups(shape[0] * 5, shape[0]), shape)
    leak = torch.triu(dep).max().item()  # diagonal included: x_d must not see itself
    assert leak == 0.0, f"{name}: logits depend on later sub-pixels (max |grad| {leak})"
    d = dep.shape[0]  # not vacuous: most earlier sub-pixels reach the logits (ReLUs may cut some)
    assert (dep > 0).sum() >= 0.5 * d * (d - 1) / 2, f"{name}: logits ignore most of the context"


@pytest.mark.parametrize("shape", [(3, 4, 4), (1, 4, 4), (2, 3, 3)])
def test_gated_pixelcnn_has_no_blind_spot(shape):
    m = tiny("pixelcnn", shape, 5)
    u = m.encode(levels_batch(shape, 5, 1))
    dep = dependency(m.trunk, u, feature_groups(m.features, shape[0]), shape)
    d = dep.shape[0]
    seen = dep[torch.tril(torch.ones(d, d, dtype=torch.bool), -1)] > 0
    assert seen.all(), f"{int((~seen).sum())} earlier sub-pixels are invisible (blind spot)"


def test_row_lstm_sees_its_triangle_of_context():
    shape = (2, 4, 5)
    m = tiny("pixelrnn", shape, 5)
    u = m.encode(levels_batch(shape, 5, 1))
    dep = dependency(m.trunk, u, feature_groups(m.features, 2), shape)
    pos = order(shape)
    for c in range(2):
        for i in range(4):
            for j in range(5):
                row = dep[pos[c, i, j]]
                want = [pos[:c, i, j], pos[:, i, :j].flatten()]  # same pixel, left in the row
                if i > 0:
                    want.append(pos[:, i - 1, : j + 2].flatten())  # row above up to j + 1
                want = torch.cat(want)
                assert (row[want] > 0).all(), f"({c},{i},{j}) misses part of its context"


# ----------------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("name", sorted(MODELS))
def test_nll_is_the_hand_summed_log_softmax(name):
    shape, levels = (2, 2, 3), 4
    m = tiny(name, shape, levels)
    x = levels_batch(shape, levels, 3)
    raw = m.network(m.encode(x)).detach()  # [N, C*K, H, W], logits of channel c at c*K..
    want = torch.zeros(3, dtype=torch.float64)
    for n in range(3):
        for c in range(2):
            for i in range(2):
                for j in range(3):
                    logits = raw[n, c * levels : (c + 1) * levels, i, j].tolist()
                    lse = math.log(sum(math.exp(v) for v in logits))
                    want[n] += lse - logits[int(x[n, c, i, j])]
    nll = m.nll(x)
    torch.testing.assert_close(nll, want, rtol=1e-12, atol=1e-12)
    terms = m.training_losses(x, "main")
    torch.testing.assert_close(terms["loss"], want / 12)
    torch.testing.assert_close(terms["bpd"], want / (12 * math.log(2)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zero_weights_give_the_uniform_nll_d_log_k(name):
    m = tiny(name, (3, 2, 2), 7)
    for p in m.parameters():
        torch.nn.init.zeros_(p)
    nll = m.nll(levels_batch((3, 2, 2), 7, 4))
    torch.testing.assert_close(nll, torch.full((4,), 12 * math.log(7), dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_untrained_model_on_uniform_data_is_no_better_than_log2_k(name):
    shape, levels = (1, 6, 6), 17
    m = MODELS[name](shape, levels, **TINY).eval()
    with torch.inference_mode():
        nll = m.nll(levels_batch(shape, levels, 256))
    bpd = nll.mean().item() / (36 * math.log(2))
    assert torch.isfinite(nll).all() and (nll >= 0).all()
    assert bpd >= math.log2(levels) - 0.02, f"{bpd:.3f} bits/dim < log2(17) on uniform data"
    assert m.likelihood == "exact" and m.family == "autoregressive"


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("classes", [0, 3], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape,levels", [((3, 4, 5), 5), ((2, 1, 1), 64), ((1, 3, 3), 4)])
def test_incremental_features_equal_the_full_network(name, shape, levels, classes):
    m = tiny(name, shape, levels, num_classes=classes)
    u = m.encode(levels_batch(shape, levels, 2))
    h = m.condition(torch.tensor([2, 0]) if classes else None)  # [2, F] or None
    with torch.inference_mode():
        full, state = m.trunk(u, h), None
        for i in range(shape[1]):
            state = m.begin_row(u, i, state, h)
            for j in range(shape[2]):
                for _ in range(shape[0]):  # as in sampling: once per channel
                    step = m.pixel_features(u, state, i, j)
                torch.testing.assert_close(
                    step, full[:, :, i : i + 1, j : j + 1], rtol=0, atol=1e-12
                )


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape,levels", [((3, 3, 4), 5), ((2, 1, 1), 64)])
def test_samples_are_ancestral_draws_from_the_models_own_conditionals(name, shape, levels):
    """Replaying categorical draws with the same generators on the full-network logits of the
    final sample reproduces every sub-pixel (one uniform per sub-pixel, in sampling order)."""
    m = tiny(name, shape, levels)
    x = m.sample(4, generator=per_sample_generators(3, 0, 4), temperature=0.7).x
    logits = m.logits(x)  # [N, K, C, H, W]
    gens = per_sample_generators(3, 0, 4)
    c_, h_, w_ = shape
    for i in range(h_):
        for j in range(w_):
            for c in range(c_):
                draw = categorical(logits[:, :, c, i, j] / 0.7, generator=gens)
                assert torch.equal(draw, x[:, c, i, j]), f"sub-pixel ({c},{i},{j}) differs"


@pytest.mark.parametrize("classes", [0, 3], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_cached_sampling_draws_what_the_full_network_draws(name, classes):
    """``incremental=false`` reruns the whole network per sub-pixel: same samples, same NFE
    (conditional models: with the labels' conditioning in every layer of both paths)."""
    shape, levels = (2, 3, 4), 7
    m = tiny(name, shape, levels, num_classes=classes)
    kw = {"y": torch.tensor([1, 0, 2])} if classes else {}
    fast = m.sample(3, generator=per_sample_generators(9, 0, 3), temperature=0.8, **kw)
    slow = m.sample(
        3, generator=per_sample_generators(9, 0, 3), temperature=0.8, incremental=False, **kw
    )
    assert torch.equal(fast.x, slow.x)
    assert fast.nfe.tolist() == slow.nfe.tolist() == [24.0] * 3  # D = 2 * 3 * 4


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sample_shape_range_and_batch_size_independence(name):
    shape, levels = (3, 3, 3), 6
    m = tiny(name, shape, levels).float()
    out = m.sample(3, generator=per_sample_generators(5, 0, 3))
    three = out.x
    one = m.sample(1, generator=per_sample_generators(5, 1, 1)).x
    assert three.shape == (3, *shape) and three.dtype == torch.int64
    assert int(three.min()) >= 0 and int(three.max()) < levels
    assert torch.equal(three[1:2], one), "sample 1 changed with the batch size"
    assert torch.equal(three, m.sample(3, generator=per_sample_generators(5, 0, 3)).x)
    cold = m.sample(1, generator=per_sample_generators(5, 0, 1), temperature=0.5)
    assert out.nfe.tolist() == [27.0] * 3 and cold.nfe.tolist() == [27.0]  # D = 27
    with pytest.raises(ValueError, match="steps"):
        m.sample(1, steps=10)
    with pytest.raises(ValueError, match="temperature"):
        m.sample(1, temperature=0.0)


# ----------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def digits_data():
    from genbench.data.bundled import digits

    return digits()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_short_training_on_digits_reduces_the_loss(name, digits_data):
    data = digits_data
    torch.manual_seed(0)
    m = MODELS[name]((1, 8, 8), 17, features=16, layers=2, kernel=3, first_kernel=3)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    held_out = data.val[:128].long()
    with torch.no_grad():
        before = m.training_losses(held_out)["loss"].mean().item()
    g, start = torch.Generator().manual_seed(0), time.perf_counter()
    for _ in range(30):
        x = data.train[torch.randint(0, len(data.train), (32,), generator=g)].long()
        loss = m.training_losses(x)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = m.training_losses(held_out)["loss"].mean().item()
    assert after < before - 0.3, f"held-out nats/dim {before:.3f} -> {after:.3f}"
    assert time.perf_counter() - start < 5.0, "30 steps at batch 32 should take well under 1 s"


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", sorted(MODELS))
def test_configs_build_the_model_and_state_published_references(name):
    from importlib.resources import files

    from genbench.build import build_model

    conf = files("genbench.conf")
    node = OmegaConf.load(conf / "model" / f"{name}.yaml")
    model = build_model(node, (2, 1, 1), 64)
    assert isinstance(model, MODELS[name]) and not model.conditional
    node.conditional = True
    assert build_model(node, (2, 1, 1), 64, num_classes=2).num_classes == 2
    exp = OmegaConf.load(conf / "experiment" / f"{name}_mnist.yaml")
    assert OmegaConf.to_container(exp.defaults) == [
        {"override /model": name},
        {"override /dataset": "mnist"},
    ]
    assert {"dataset", "source"} <= set(exp.expected)
    assert {"max_steps", "batch_size"} <= set(exp.trainer) and "lr" in exp.optimizer
