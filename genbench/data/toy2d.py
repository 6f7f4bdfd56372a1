"""2-D toy densities with a known, exact discrete distribution.

A continuous density p(u) on ``[-R, R]^2`` is discretized to a ``K x K`` grid of levels: the
probability of each cell is the integral of p over the cell (midpoint rule on a fine sub-grid,
renormalized to the box). Training and test points are drawn from that table, so the true discrete
distribution is known exactly: its entropy is the best NLL any model can reach on held-out data.

An example has shape ``[2, 1, 1]`` (two channels: the x and y level), values in ``[0, K)``.
Mixtures also declare their modes (centres, in level units) and component std for the
mode-coverage measures of Srivastava et al. 2017 (VEEGAN). The mixtures are labelled (see
:data:`CLASSES`): each point carries a class drawn from its exact posterior p(class | cell), so the
Bayes classifier is known exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from genbench.data.base import Data, DatasetError, to_levels

_SUB = 4  # sub-samples per cell and axis for the midpoint-rule integral


def _gauss_mix(u: Tensor, centers: Tensor, std: float) -> Tensor:
    d2 = ((u[:, None, :] - centers[None]) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * std**2)).mean(1) / (2 * math.pi * std**2)


def _arc_mix(u: Tensor, points: Tensor, std: float, chunk: int = 65536) -> Tensor:
    return torch.cat([_gauss_mix(u[i : i + chunk], points, std) for i in range(0, len(u), chunk)])


def density_8gaussians(u: Tensor) -> Tensor:
    """Density ``[N]`` (per unit area, integrates to 1) at points ``u`` ``[N, 2]``: 8 Gaussians,
    std 0.15, centred on the circle of radius 2."""
    a = torch.arange(8, dtype=u.dtype) * (2 * math.pi / 8)
    return _gauss_mix(u, 2.0 * torch.stack([a.cos(), a.sin()], -1), 0.15)


def density_25gaussians(u: Tensor) -> Tensor:
    """Density ``[N]`` (per unit area, integrates to 1) at points ``u`` ``[N, 2]``: 25 Gaussians,
    std 0.1, on the 5 x 5 grid over ``[-2, 2]^2``."""
    g = torch.linspace(-2.0, 2.0, 5, dtype=u.dtype)
    return _gauss_mix(u, torch.cartesian_prod(g, g), 0.1)


def density_moons(u: Tensor) -> Tensor:
    """Density ``[N]`` (per unit area, integrates to 1) at points ``u`` ``[N, 2]``: Gaussians
    (std 0.1) along two interleaved half circles of radius 1.5."""
    s = torch.linspace(0, math.pi, 100, dtype=u.dtype)
    upper = torch.stack([s.cos() - 0.5, s.sin() - 0.25], -1)
    lower = torch.stack([0.5 - s.cos(), 0.25 - s.sin()], -1)
    return _arc_mix(u, 1.5 * torch.cat([upper, lower]), 0.1)


def density_rings(u: Tensor) -> Tensor:
    """Density ``[N]`` (per unit area, integrates to 1) at points ``u`` ``[N, 2]``: Gaussians
    (std 0.08) along three concentric circles of radii 0.75, 1.5 and 2.25."""
    s = torch.linspace(0, 2 * math.pi, 129, dtype=u.dtype)[:-1]
    circle = torch.stack([s.cos(), s.sin()], -1)
    return _arc_mix(u, torch.cat([r * circle for r in (0.75, 1.5, 2.25)]), 0.08)


def density_checkerboard(u: Tensor) -> Tensor:
    """Density ``[N]`` (per unit area, integrates to 1) at points ``u`` ``[N, 2]``: 1/8 on the
    alternate unit cells of ``[-2, 2]^2``, 0 elsewhere."""
    inside = (u.abs() < 2).all(-1)
    cell = torch.floor(u + 2).long().sum(-1) % 2 == 0
    return (inside & cell).to(u.dtype) / 8.0


DENSITIES = {
    "8gaussians": (density_8gaussians, 3.0),
    "25gaussians": (density_25gaussians, 3.0),
    "moons": (density_moons, 3.0),
    "rings": (density_rings, 3.0),
    "checkerboard": (density_checkerboard, 2.5),
}


def _circle(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    s = torch.arange(n, dtype=dtype) * (2 * math.pi / n)
    return torch.stack([s.cos(), s.sin()], -1)


def _moons(dtype: torch.dtype = torch.float64) -> list[Tensor]:
    s = torch.linspace(0, math.pi, 100, dtype=dtype)
    upper = torch.stack([s.cos() - 0.5, s.sin() - 0.25], -1)
    lower = torch.stack([0.5 - s.cos(), 0.25 - s.sin()], -1)
    return [1.5 * upper, 1.5 * lower]


#: the classes of the labelled toys: (kernel centres of each class ``[n_c, 2]``, kernel std); the
#: toy's density is the equal-weight mixture of Gaussian kernels over all centres, so class c
#: holds the share n_c / n of it (a mixture component for the Gaussian mixtures, one half circle
#: for moons, one circle for rings); checkerboard is unlabelled
CLASSES = {
    "8gaussians": (lambda: list((2.0 * _circle(8)).split(1)), 0.15),
    "25gaussians": (
        lambda: list(
            torch.cartesian_prod(
                torch.linspace(-2, 2, 5, dtype=torch.float64),
                torch.linspace(-2, 2, 5, dtype=torch.float64),
            ).split(1)
        ),
        0.1,
    ),
    "moons": (_moons, 0.1),
    "rings": (lambda: [r * _circle(128) for r in (0.75, 1.5, 2.25)], 0.08),
}

MODES = {
    "8gaussians": (
        lambda: (
            2.0
            * torch.stack(
                [
                    torch.arange(8.0).mul(math.pi / 4).cos(),
                    torch.arange(8.0).mul(math.pi / 4).sin(),
                ],
                -1,
            )
        ),
        0.15,
    ),
    "25gaussians": (
        lambda: torch.cartesian_prod(torch.linspace(-2, 2, 5), torch.linspace(-2, 2, 5)),
        0.1,
    ),
}


@dataclass
class ToyDensity:
    """Exact discrete distribution of a toy dataset on a ``K x K`` grid.

    Attributes:
        probs: ``[K, K]`` float64 cell probabilities (sum to 1), indexed ``[x_level, y_level]``.
        radius: the grid covers ``[-radius, radius]^2``.
        modes: ``[M, 2]`` mode centres in level units, or ``None`` for non-mixtures.
        mode_std: component std in level units (0 when there are no modes).
        class_probs: ``[L, K, K]`` float64 joint probabilities p(cell, class) of the labelled
            toys (:data:`CLASSES`; summing over the classes gives ``probs``), or ``None``. The
            Bayes classifier of a cell is ``argmax_c class_probs[c, cell]``.
    """

    name: str
    probs: Tensor
    radius: float
    modes: Tensor | None
    mode_std: float
    class_probs: Tensor | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes L (0 when unlabelled)."""
        return 0 if self.class_probs is None else self.class_probs.shape[0]

    def class_posterior(self, x: Tensor) -> Tensor:
        """``[N, L]`` exact p(class | cell) of levels ``x`` ``[N, 2, 1, 1]`` (labelled toys)."""
        if self.class_probs is None:
            raise ValueError(f"toy {self.name!r} has no classes")
        x = x.reshape(-1, 2).long().cpu()
        joint = self.class_probs[:, x[:, 0], x[:, 1]].T  # [N, L]
        return joint / joint.sum(-1, keepdim=True)

    def sample_labels(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """``[N]`` int64 labels drawn from p(class | cell) for levels ``x`` ``[N, 2, 1, 1]``."""
        return torch.multinomial(self.class_posterior(x), 1, generator=generator)[:, 0]

    @property
    def levels(self) -> int:
        return self.probs.shape[0]

    @property
    def entropy(self) -> float:
        """Entropy of the discrete distribution in nats per example (the best achievable NLL)."""
        p = self.probs[self.probs > 0]
        return float(-(p * p.log()).sum())

    def log_prob(self, x: Tensor) -> Tensor:
        """``[N]`` exact log-probability in nats of levels ``x`` ``[N, 2, 1, 1]``
        (-inf off the support)."""
        x = x.reshape(-1, 2).long().cpu()
        return self.probs[x[:, 0], x[:, 1]].log()

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``[n, 2, 1, 1]`` int64 levels drawn exactly from ``probs``."""
        flat = torch.multinomial(self.probs.flatten(), n, replacement=True, generator=generator)
        k = self.levels
        return torch.stack([flat // k, flat % k], -1).reshape(n, 2, 1, 1)

    def to_coords(self, x: Tensor) -> Tensor:
        """``[N, 2]`` cell-centre coordinates of levels ``x``."""
        k = self.levels
        return (x.reshape(-1, 2).double().cpu() + 0.5) * (2 * self.radius / k) - self.radius


def toy_density(name: str, levels: int) -> ToyDensity:
    """Discretize the named continuous density onto a ``levels x levels`` grid."""
    if name not in DENSITIES:
        raise DatasetError(f"unknown toy density {name!r}; valid: {sorted(DENSITIES)}")
    fn, radius = DENSITIES[name]
    cell = 2 * radius / levels
    offs = (torch.arange(levels * _SUB, dtype=torch.float64) + 0.5) * (cell / _SUB) - radius
    grid = torch.cartesian_prod(offs, offs)  # [(K*S)^2, 2], x-major

    def cells(d: Tensor) -> Tensor:
        """Densities ``[(K*S)^2]`` at the sub-grid summed into cells ``[K, K]``."""
        return d.reshape(levels, _SUB, levels, _SUB).sum((1, 3))

    dens = cells(fn(grid))
    probs = dens / dens.sum()
    modes, std, class_probs = None, 0.0, None
    if name in MODES:
        centers, s = MODES[name]
        modes = (centers().double() + radius) / cell - 0.5
        std = s / cell
    if name in CLASSES:
        groups, kernel = CLASSES[name]
        points = groups()
        total = sum(len(p) for p in points)
        joint = torch.stack([cells(_arc_mix(grid, p, kernel)) * (len(p) / total) for p in points])
        class_probs = joint / dens.sum()
    return ToyDensity(name, probs, radius, modes, std, class_probs)


def toy(
    density: str,
    levels: int = 64,
    n_train: int = 20000,
    n_val: int = 2000,
    n_test: int = 5000,
    seed: int = 0,
) -> Data:
    """A toy dataset of ``[N, 2, 1, 1]`` levels drawn from the exact discretized ``density``."""
    if levels < 2 or levels > 256:
        raise DatasetError(f"dataset.levels must be in [2, 256], got {levels}")
    d = toy_density(density, levels)
    g = torch.Generator().manual_seed(seed)
    parts: dict[str, Tensor] = {
        s: to_levels(d.sample(n, g), levels)
        for s, n in (("train", n_train), ("val", n_val), ("test", n_test))
    }
    if d.num_classes:  # labels from their own stream: the points are those of an unlabelled draw
        g_labels = torch.Generator().manual_seed(seed * 7919 + 17)
        for split in ("train", "val", "test"):
            parts[f"{split}_labels"] = d.sample_labels(parts[split], g_labels)
    classes = tuple(str(c) for c in range(d.num_classes))
    return Data(
        name=f"toy_{density}",
        levels=levels,
        density=d,
        num_classes=d.num_classes,
        classes=classes,
        **parts,
    )
