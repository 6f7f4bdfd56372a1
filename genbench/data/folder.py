"""Any directory of PNG/JPEG images as a :class:`Data` record.

Images are found recursively (by extension, :data:`EXTENSIONS`) and read by
:mod:`genbench.data.images`: each is converted to ``channels`` (1 = greyscale by luma, 3 = RGB
with grey replicated; an alpha channel is dropped, not composited), resized to ``size x size``
(bilinear, on the PIL image; other sizes and aspect ratios are stretched) and quantized to
``levels`` levels at its real depth (16-bit greyscale PNGs keep their 16 bits). Files that are not
usable images (FIFOs, devices, empty, unreadable or undecodable files, decompression bombs) are
skipped with a warning naming each; a folder with fewer than 3 usable images is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genbench.data.base import Data, DatasetError, split_train_val_test
from genbench.data.images import SkippedImage, image_to_levels, open_image

log = logging.getLogger(__name__)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _read(path: Path, size: int, channels: int, levels: int) -> np.ndarray | None:
    """uint8 levels ``[channels, size, size]``, or None (with a warning) for an unusable file."""
    try:
        img = open_image(path)
        try:
            return image_to_levels(img, size, channels, levels)
        finally:
            img.close()
    except SkippedImage as why:
        log.warning("skipping %s: %s", path, why)
        return None


def image_folder(
    root: str,
    size: int = 32,
    channels: int = 3,
    levels: int = 256,
    test_fraction: float = 0.1,
    val_fraction: float = 0.05,
    seed: int = 0,
    augment: Sequence[str] = (),
) -> Data:
    """Images under ``root`` as ``[N, channels, size, size]`` levels in ``[0, levels)``."""
    if channels not in (1, 3):
        raise DatasetError(f"dataset.channels must be 1 or 3, got {channels}")
    if not 2 <= levels <= 256:
        raise DatasetError(f"dataset.levels must be in [2, 256], got {levels}")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise DatasetError(f"dataset.root={str(path)!r} is not a directory of images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS)
    read = [(f, a) for f in files if (a := _read(f, size, channels, levels)) is not None]
    arrays = [a for _, a in read]
    if len(arrays) < 3:
        raise DatasetError(
            f"dataset.root={str(path)!r} holds {len(arrays)} readable images "
            f"({', '.join(EXTENSIONS)}); at least 3 are needed"
        )
    x = torch.from_numpy(np.stack(arrays))  # uint8 levels (levels <= 256)
    classes, labels = folder_labels([f.relative_to(path) for f, _ in read])
    parts = split_train_val_test(
        x, labels, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed
    )
    return Data(
        name=f"folder:{path.name}",
        levels=levels,
        augment=augment,
        num_classes=len(classes),
        classes=classes,
        **parts,
    )


def folder_labels(relative: Sequence[Path]) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """One class per first-level sub-folder: ``(class names, [N] int64 labels)`` for image paths
    relative to the root, classes in sorted name order. Images directly under the root, or a
    single sub-folder, make the dataset unlabelled: ``((), None)``.

    >>> folder_labels([Path("cat/1.png"), Path("dog/a/2.png"), Path("cat/3.png")])[1].tolist()
    [0, 1, 0]
    """
    if not relative or any(len(p.parts) < 2 for p in relative):
        return (), None
    classes = tuple(sorted({p.parts[0] for p in relative}))
    if len(classes) < 2:
        return (), None
    index = {c: i for i, c in enumerate(classes)}
    return classes, torch.tensor([index[p.parts[0]] for p in relative], dtype=torch.int64)
