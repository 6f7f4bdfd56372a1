"""Data augmentation of training batches, chosen in the config: ``dataset.augment=[hflip]``.

Batches stay integer levels ``[N, C, H, W]`` (the transforms only move pixels, with torchvision's
``transforms.v2.functional`` kernels). Example ``i`` of epoch ``e`` draws its random parameters
from its own generator, seeded from ``(seed, e, i)``: a draw depends neither on the batch it lands
in, the batch size, the number of data-parallel ranks nor the global RNG, so a resumed run (which
restores the epoch and position of the batch stream) sees exactly the augmented batches of an
uninterrupted one. Validation and test data are never augmented.

Transforms (:data:`TRANSFORMS`):

- ``hflip``: mirror left-right with probability 1/2 (Ho et al. 2020 train DDPM on CIFAR-10 with
  random horizontal flips, Dinh et al. 2017 RealNVP too).
- ``translate``: shift by whole pixels, up to 10% of the height and width each way (uniform over
  the shifts), the uncovered border repeating the edge pixels (the released Glow code's default
  CIFAR-10 augmentation, there with sub-pixel shifts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from genbench.nn import random as rnd

_MASK = (1 << 64) - 1


def _hflip(x: Tensor, u: Tensor) -> Tensor:
    """``x`` ``[N, C, H, W]`` levels, ``u`` ``[N]`` uniforms in [0, 1): rows with u < 1/2 are
    mirrored left-right."""
    from torchvision.transforms.v2 import functional as F

    return torch.where((u < 0.5).view(-1, 1, 1, 1), F.horizontal_flip(x), x)


def _translate(x: Tensor, u: Tensor, fraction: float = 0.1) -> Tensor:
    """``x`` ``[N, C, H, W]`` levels, ``u`` ``[N, 2]`` uniforms: row n moves by (dy, dx) whole
    pixels, each uniform in ``[-r, r]`` with r = round(fraction * side); edges are repeated."""
    from torchvision.transforms.v2 import functional as F

    n, _, h, w = x.shape
    ry, rx = round(fraction * h), round(fraction * w)
    if ry == rx == 0:
        return x
    pad = F.pad(x, [rx, ry, rx, ry], padding_mode="edge")  # [N, C, H + 2ry, W + 2rx]
    dy = (u[:, 0] * (2 * ry + 1)).long().clamp(max=2 * ry)  # offset of the crop in the padding
    dx = (u[:, 1] * (2 * rx + 1)).long().clamp(max=2 * rx)
    rows = (torch.arange(h, device=x.device) + dy[:, None])[:, None, :, None]  # [N, 1, H, 1]
    cols = (torch.arange(w, device=x.device) + dx[:, None])[:, None, None, :]  # [N, 1, 1, W]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return pad[batch, chans, rows, cols]


#: name -> (uniforms drawn per example, transform of ``[N, C, H, W]`` levels given ``[N, k]``)
TRANSFORMS: dict[str, tuple[int, Callable[[Tensor, Tensor], Tensor]]] = {
    "hflip": (1, lambda x, u: _hflip(x, u[:, 0])),
    "translate": (2, _translate),
}


def check_augment(names: Any) -> tuple[str, ...]:
    """``dataset.augment`` as a tuple of transform names (a single name is a list of one)."""
    if names is None:
        return ()
    items = (names,) if isinstance(names, str) else tuple(names)
    bad = [n for n in items if str(n) not in TRANSFORMS]
    if bad:
        from genbench.data.base import DatasetError

        raise DatasetError(
            f"dataset.augment={list(map(str, items))!r} is invalid: "
            f"expected a list of {sorted(TRANSFORMS)}"
        )
    return tuple(str(n) for n in items)


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps), well spread for neighbouring inputs."""
    h = 0
    for p in parts:
        h = ((h ^ (int(p) & _MASK)) + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h >> 1


class Augment:
    """The transforms named in ``names``, applied in order, seeded per example.

    Args:
        names: transform names (keys of :data:`TRANSFORMS`).
        seed: the run's root seed.
    """

    def __init__(self, names: Sequence[str], seed: int) -> None:
        self.names, self.seed = check_augment(names), int(seed)
        self.draws = sum(TRANSFORMS[n][0] for n in self.names)

    def __bool__(self) -> bool:
        return bool(self.names)

    def uniforms(self, epoch: int, index: Tensor) -> Tensor:
        """``[N, k]`` uniforms of the examples ``index`` ``[N]`` (dataset rows) in ``epoch``."""
        gens = [
            torch.Generator().manual_seed(_mix(self.seed, epoch, int(i))) for i in index.tolist()
        ]
        return rnd.rand((len(gens), self.draws), generator=gens, dtype=torch.float64)

    def __call__(self, x: Tensor, epoch: int, index: Tensor) -> Tensor:
        """``x`` ``[N, C, H, W]`` integer levels, rows ``index`` ``[N]`` of the training split, in
        ``epoch``; returns the augmented ``[N, C, H, W]`` levels (same dtype)."""
        if not self.names:
            return x
        u = self.uniforms(epoch, index).to(x.device)
        col = 0
        for name in self.names:
            k, fn = TRANSFORMS[name]
            x = fn(x, u[:, col : col + k])
            col += k
        return x
