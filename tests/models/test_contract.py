"""The model contract, checked by the conformance kit plugins use too (:mod:`genbench.testing`),
parametrized over every conf/model/*.yaml (new models are covered automatically), every check and
two data shapes: 8x8 digits (17 levels) and 2-D toys (64 levels). ``declares``, ``enumeration``,
``estimators`` and ``resume`` run at the toy shape only (every model supports it and it is the
cheapest); ``enumeration`` scores all 16 inputs of 2 sub-pixels with 4 levels."""

from __future__ import annotations

import functools

import pytest
from conftest import MODELS

from genbench.testing import CHECKS, check_model, from_config

SHAPES = {"digits": ((1, 8, 8), 17), "toy": ((2, 1, 1), 64)}
ENUMERATION = {"exact_shape": (2, 1, 1), "exact_levels": 4}
#: checks that run at one data shape only
ONCE = {"declares": "toy", "enumeration": "toy", "estimators": "toy", "resume": "toy"}
CASES = [(m, s, c) for m in MODELS for s in SHAPES for c in CHECKS if ONCE.get(c, s) == s]


factory = functools.cache(from_config)  # conf/model/<model>.yaml, as the runner builds it


@pytest.mark.parametrize("model,shape,check", CASES)
def test_contract(model, shape, check):
    dims, levels = SHAPES[shape]
    report = check_model(factory(model), dims, levels, only=[check], **ENUMERATION)
    assert list(report) == [check]
