"""Sample images on disk: a PNG grid of levels, or a scatter plot for 2-D toy data."""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import Tensor

from genbench.data.base import is_toy
from genbench.files import atomic_write


def save_grid(x: Tensor, levels: int, path: Path, nrow: int = 8) -> None:
    """Write ``[N, C, H, W]`` levels as a PNG grid (levels scaled to [0, 1]).

    2-D toy data (``[N, 2, 1, 1]``) is drawn as a scatter plot of the level coordinates instead.
    Written atomically (:func:`genbench.files.atomic_write`): a full disk leaves no partial file.
    """
    if is_toy(x.shape[1:]) and x.shape[1] == 2:  # points with two coordinates
        atomic_write(
            path, lambda f: _scatter(x.reshape(-1, 2).cpu().numpy(), levels, f), what="sample plot"
        )
        return
    from torchvision.utils import save_image

    atomic_write(
        path,
        lambda f: save_image(
            x.float().cpu() / (levels - 1), f, format="png", nrow=nrow, padding=1, pad_value=0.5
        ),
        what="sample grid",
    )


def _scatter(xy: np.ndarray, levels: int, f: IO[bytes]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.4)
    ax.set_xlim(0, levels)
    ax.set_ylim(0, levels)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(f, format="png")
    plt.close(fig)


def save_npz(x: Tensor, levels: int, path: Path, labels: Tensor | None = None) -> None:
    """Write levels ``[N, C, H, W]`` to ``path`` as ``levels`` (uint8/int32) and ``num_levels``
    (K), the format ``genbench score`` reads, plus ``labels`` ``[N]`` (int64) when the samples
    were drawn for classes (written atomically)."""
    arr = x.cpu().to(torch.uint8 if levels <= 256 else torch.int32).numpy()
    extra = {} if labels is None else {"labels": labels.cpu().long().numpy()}
    atomic_write(
        path,
        lambda f: np.savez_compressed(f, levels=arr, num_levels=np.int64(levels), **extra),
        what="samples file",
    )
