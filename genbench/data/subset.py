"""``dataset.train_fraction``: train on a seeded subset of the training split (data-efficiency
experiments: 10 %, 25 %, 100 % of the same data).

The key sits in every dataset's yaml (``train_fraction: 1.0``) but is not an argument of the
dataset's ``_target_``: :func:`split_fraction` takes it off the node before the dataset is built,
and :func:`train_subset` keeps ``round(fraction * N)`` training examples (at least one), chosen
by a permutation seeded from the dataset's ``seed`` and the fraction's own stream, so a run with
the same config sees the same subset and a smaller fraction of the same seed is a subset of
a larger one. Validation and test splits are untouched (the model is judged on the same
held-out data at every fraction). The value is in the resolved config and so in the config hash;
1.0 (every example) is left out of the hash, so runs written before the key existed keep theirs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from genbench.data.base import Data
from genbench.errors import bad_value

KEY = "train_fraction"
#: added to the dataset's seed so the subset's permutation is not the split's own
_STREAM = 104_729


def check_train_fraction(value: Any) -> float:  # noqa: ANN401
    """``value`` as a float in (0, 1], or a :class:`~genbench.errors.ConfigError` naming
    ``dataset.train_fraction``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 < value <= 1:
        raise bad_value(
            f"dataset.{KEY}", value, "a number in (0, 1], the share of the training split"
        )
    return float(value)


def split_fraction(node: Any) -> tuple[Any, float]:  # noqa: ANN401
    """``(node without train_fraction, the checked fraction)`` for a dataset config node; a
    ``DictConfig`` comes back as a plain dict with its interpolations (``${paths.data}``)
    resolved in its own config. 1.0 when the key is absent."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        return node, 1.0
    rest = {k: v for k, v in node.items() if k != KEY}
    return rest, check_train_fraction(node.get(KEY, 1.0))


def subset_indices(n: int, fraction: float, seed: int) -> torch.Tensor:
    """``[round(fraction * n)]`` (at least 1) sorted indices into ``n`` training examples; the
    first of one seeded permutation, so smaller fractions give nested subsets."""
    fraction = check_train_fraction(fraction)
    keep = max(1, int(round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + _STREAM))
    return perm[:keep].sort().values


def train_subset(data: Data, fraction: float, seed: int) -> Data:
    """``data`` with its training split (and training labels) cut to ``fraction`` of it;
    ``data`` itself when ``fraction`` is 1. ``data.info["train_fraction"]`` records the share
    and ``data.info["train_examples"]`` the number kept."""
    if check_train_fraction(fraction) == 1.0:
        return data
    idx = subset_indices(data.train.shape[0], fraction, seed).to(data.train.device)
    labels = data.train_labels[idx] if data.train_labels is not None else None
    info = {**data.info, KEY: fraction, "train_examples": int(idx.numel())}
    return dataclasses.replace(
        data, train=data.train[idx], train_labels=labels, info=info, whole_data=data.whole()
    )
