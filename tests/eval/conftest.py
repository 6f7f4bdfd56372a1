"""Fixtures shared by the evaluation tests: the digits data and the digits CNN, trained once per
session in one cache folder and loaded by every module after the first."""

from __future__ import annotations

import shutil

import pytest
import torch

from genbench.data.bundled import digits
from genbench.eval import extractors as ex

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def trained_cache(data, tmp_path_factory):
    """A cache folder holding the trained digits CNN (shared by the eval test modules)."""
    cache = tmp_path_factory.getbasetemp() / "digits-cnn-cache"
    ex.domain_extractor(data, cache, CPU)
    return cache


@pytest.fixture
def cache(trained_cache, tmp_path):
    """A fresh cache folder with the trained CNN but no reference statistics."""
    shutil.copytree(trained_cache / "extractors", tmp_path / "extractors")
    return tmp_path
