"""Any directory of PNG/JPEG images as a :class:`Data` record.

Images are found recursively, converted to ``channels`` (1 = greyscale, 3 = RGB), resized to
``size x size`` (bilinear, on the PIL image) and quantized to ``levels`` levels. Files that cannot
be decoded are skipped with a warning; a folder with no readable image is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genbench.data.base import Data, DatasetError, split_train_val_test, to_levels

log = logging.getLogger(__name__)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _read(path: Path, size: int, channels: int) -> np.ndarray | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((size, size),
                                                                     Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        log.warning("skipping %s: not a readable image (%s)", path, err)
        return None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def image_folder(root: str, size: int = 32, channels: int = 3, levels: int = 256,
                 test_fraction: float = 0.1, val_fraction: float = 0.05, seed: int = 0,
                 augment: Sequence[str] = ()) -> Data:
    """Images under ``root`` as ``[N, channels, size, size]`` levels in ``[0, levels)``."""
    if channels not in (1, 3):
        raise DatasetError(f"dataset.channels must be 1 or 3, got {channels}")
    if not 2 <= levels <= 256:
        raise DatasetError(f"dataset.levels must be in [2, 256], got {levels}")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise DatasetError(f"dataset.root={str(path)!r} is not a directory of images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS)
    arrays = [a for a in (_read(f, size, channels) for f in files) if a is not None]
    if len(arrays) < 3:
        raise DatasetError(f"dataset.root={str(path)!r} holds {len(arrays)} readable images "
                           f"({', '.join(EXTENSIONS)}); at least 3 are needed")
    x = torch.from_numpy(np.stack(arrays)).long()
    x = (x * (levels - 1) + 127) // 255  # 0..255 -> 0..levels-1, rounded
    parts = split_train_val_test(to_levels(x, levels), None, test_fraction=test_fraction,
                                 val_fraction=val_fraction, seed=seed)
    return Data(name=f"folder:{path.name}", levels=levels, augment=augment, **parts)
