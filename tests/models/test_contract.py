"""The model contract, checked by the conformance kit plugins use too (:mod:`genbench.testing`),
parametrized over every conf/model/*.yaml (new models are covered automatically), every check and
two data shapes: 8x8 digits (17 levels) and 2-D toys (64 levels). ``declares``, ``enumeration``,
``estimators`` and ``resume`` run at the toy shape only (every model supports it and it is the
cheapest); ``enumeration`` scores all 16 inputs of 2 sub-pixels with 4 levels."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import MODELS

from genbench.testing import CHECKS, check_model, from_config

SHAPES = {"digits": ((1, 8, 8), 17), "toy": ((2, 1, 1), 64)}
ENUMERATION = {"exact_shape": (2, 1, 1), "exact_levels": 4}
#: checks that run at one data shape only
ONCE = {"declares": "toy", "enumeration": "toy", "estimators": "toy", "resume": "toy"}
# "conditional" runs at both shapes: toys and images condition through different networks
CASES = [(m, s, c) for m in MODELS for s in SHAPES for c in CHECKS if ONCE.get(c, s) == s]


factory = functools.cache(from_config)  # conf/model/<model>.yaml, as the runner builds it


@pytest.mark.parametrize("model,shape,check", CASES)
def test_contract(model, shape, check):
    dims, levels = SHAPES[shape]
    report = check_model(factory(model), dims, levels, only=[check], **ENUMERATION)
    assert list(report) == [check]


#: autoregressive models whose output layer gives softmax logits: zeroed, every sub-pixel gets
#: the uniform distribution over its K levels
SOFTMAX_HEADS = ("pixelcnn", "pixelrnn")


@pytest.mark.parametrize("model", [m for m in SOFTMAX_HEADS if m in MODELS])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_zeroed_softmax_head_gives_exactly_d_log_k(model, shape):
    """With the last layer of the output head zeroed (weights and bias), the model is uniform
    over the K^D images: nll = D log K nats for any x, and the bits/dim term is log2 K."""
    dims, levels = SHAPES[shape]
    torch.manual_seed(0)
    m = factory(model)(dims, levels).double().eval()
    with torch.no_grad():
        for p in m.head.out.parameters():
            p.zero_()
    x = torch.randint(0, levels, (4, *dims), generator=torch.Generator().manual_seed(1))
    d = math.prod(dims)
    with torch.no_grad():
        nll = m.nll(x)
        bpd = m.training_losses(x, "main")["bpd"]
    torch.testing.assert_close(
        nll, torch.full((4,), d * math.log(levels), dtype=torch.float64), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        bpd, torch.full((4,), math.log2(levels), dtype=torch.float64), rtol=1e-12, atol=0
    )
