"""torchvision datasets (MNIST, Fashion-MNIST, CIFAR-10) as :class:`Data` records of 256 levels.

Files are read from ``root`` in torchvision's on-disk layout (``root/MNIST/raw``,
``root/FashionMNIST/raw``, ``root/cifar-10-batches-py``). Nothing is downloaded unless
``download=true``; missing files give a :class:`DatasetError` that says where to put them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genbench.data.base import Data, DatasetError, hold_out_val, to_levels

_LAYOUT = {
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
}


def _load(
    name: str,
    cls_name: str,
    root: str,
    download: bool,
    val_fraction: float,
    seed: int,
    augment: Sequence[str],
) -> Data:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    path = Path(root).expanduser()
    try:
        splits = {train: cls(str(path), train=train, download=download) for train in (True, False)}
    except RuntimeError as err:
        raise DatasetError(
            f"dataset {name!r}: no usable files under dataset.root={str(path)!r} "
            f"(expected torchvision's layout, {str(path / _LAYOUT[name])!r}); put the files there "
            f"or set dataset.download=true on a machine with internet access ({err})"
        ) from None

    def images(ds: object) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` images in ``{0..255}`` of a torchvision dataset."""
        x = ds.data  # MNIST: uint8 tensor [N, H, W]; CIFAR: ndarray [N, H, W, 3]
        x = torch.as_tensor(np.asarray(x))
        return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()

    def labels(ds: object) -> torch.Tensor:
        """int64 ``[N]`` class indices in ``[0, 10)``."""
        return torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)

    parts = hold_out_val(images(splits[True]), labels(splits[True]), val_fraction, seed)
    return Data(
        name=name,
        levels=256,
        train=to_levels(parts["train"], 256),
        val=to_levels(parts["val"], 256),
        test=to_levels(images(splits[False]), 256),
        train_labels=parts["train_labels"],
        val_labels=parts["val_labels"],
        test_labels=labels(splits[False]),
        num_classes=10,
        classes=tuple(str(c) for c in getattr(splits[True], "classes", range(10))),
        augment=augment,
    )


def mnist(
    root: str = "data",
    download: bool = False,
    val_fraction: float = 0.05,
    seed: int = 0,
    augment: Sequence[str] = (),
) -> Data:
    """MNIST ``[N, 1, 28, 28]``, 256 levels; 60,000 train (minus val) / 10,000 test."""
    return _load("mnist", "MNIST", root, download, val_fraction, seed, augment)


def fashion_mnist(
    root: str = "data",
    download: bool = False,
    val_fraction: float = 0.05,
    seed: int = 0,
    augment: Sequence[str] = (),
) -> Data:
    """Fashion-MNIST ``[N, 1, 28, 28]``, 256 levels; 60,000 / 10,000."""
    return _load("fashion_mnist", "FashionMNIST", root, download, val_fraction, seed, augment)


def cifar10(
    root: str = "data",
    download: bool = False,
    val_fraction: float = 0.05,
    seed: int = 0,
    augment: Sequence[str] = (),
) -> Data:
    """CIFAR-10 ``[N, 3, 32, 32]``, 256 levels; 50,000 / 10,000."""
    return _load("cifar10", "CIFAR10", root, download, val_fraction, seed, augment)
