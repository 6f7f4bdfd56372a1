"""What the conformance kit checks: a model factory at given sizes, and how a check fails."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from genbench.models.base import GenerativeModel

#: most inputs the ``enumeration`` check scores (all ``levels ** D`` inputs of a tiny shape)
MAX_ENUMERATION = 256


class ConformanceError(AssertionError):
    """A model breaks the contract; the message names the model, the check and the problem."""


class Skipped(Exception):  # noqa: N818  (a signal, not an error)
    """A check that does not apply to this model; the message says why."""


def expect(condition: object, message: str) -> None:
    """Raise :class:`ConformanceError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConformanceError(message)


def enumeration_size(shape: tuple[int, int, int], levels: int) -> tuple[tuple[int, int, int], int]:
    """The shape and level count whose every input the ``enumeration`` check scores: the first of
    ``shape``, ``(C, 2, 2)`` and ``(C, 1, 1)`` for which some ``L`` in ``[2, levels]`` gives at
    most :data:`MAX_ENUMERATION` inputs, with the largest such ``L``."""
    c, h, w = shape
    candidates = [shape] + [s for s in ((c, 2, 2), (c, 1, 1)) if s[1] <= h and s[2] <= w]
    for cand in dict.fromkeys(candidates):
        d = math.prod(cand)
        top = 1
        while top < levels and (top + 1) ** d <= MAX_ENUMERATION:
            top += 1
        if top >= 2:
            return cand, top
    raise ConformanceError(
        f"no shape with C={c} has at most {MAX_ENUMERATION} inputs of 2 levels"
        "; pass exact_shape= and exact_levels= (or skip 'enumeration')"
    )


@dataclass(frozen=True)
class Subject:
    """A model under test: ``factory(shape=..., levels=..., **kwargs)`` builds it.

    Attributes:
        factory: a :class:`GenerativeModel` subclass, or any callable taking ``shape=``,
            ``levels=`` and ``kwargs`` that returns one.
        shape: ``(C, H, W)`` of the data most checks use.
        levels: K, the number of levels per sub-pixel.
        kwargs: the model's own constructor arguments.
        seed: seed of the weights' initialization (other seeds derive from it).
        exact_shape, exact_levels: the size the ``enumeration`` check scores every input of
            (``None``: :func:`enumeration_size`).
        estimator_options: keyword options per likelihood estimator name (as
            ``eval.estimator_options`` passes them).
    """

    factory: Callable[..., GenerativeModel]
    shape: tuple[int, int, int] = (1, 4, 4)
    levels: int = 4
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    exact_shape: tuple[int, int, int] | None = None
    exact_levels: int | None = None
    estimator_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The factory's name, for messages."""
        return getattr(self.factory, "__qualname__", None) or repr(self.factory)

    def enumeration(self) -> tuple[tuple[int, int, int], int]:
        """The (shape, levels) of the ``enumeration`` check."""
        if self.exact_shape is not None:
            return tuple(self.exact_shape), int(self.exact_levels or self.levels)
        shape, levels = enumeration_size(self.shape, self.levels)
        return shape, int(self.exact_levels or levels)

    def build(
        self,
        shape: tuple[int, int, int] | None = None,
        levels: int | None = None,
        seed: int | None = None,
    ) -> GenerativeModel:
        """A fresh model (weights initialized from ``seed``, default :attr:`seed`)."""
        shape, levels = tuple(shape or self.shape), int(levels or self.levels)
        torch.manual_seed(self.seed if seed is None else seed)
        try:
            model = self.factory(shape=shape, levels=levels, **self.kwargs)
        except Exception as err:  # noqa: BLE001  (reported as the first failure)
            raise ConformanceError(
                f"could not build it with shape={shape}, levels={levels}: "
                f"{type(err).__name__}: {err}"
            ) from err
        expect(
            isinstance(model, GenerativeModel),
            f"the factory returned a {type(model).__name__}, not a GenerativeModel",
        )
        return model

    def data(
        self,
        n: int,
        seed: int = 1,
        shape: tuple[int, int, int] | None = None,
        levels: int | None = None,
    ) -> Tensor:
        """``[n, C, H, W]`` int64 levels drawn uniformly (seeded)."""
        shape, levels = tuple(shape or self.shape), int(levels or self.levels)
        g = torch.Generator().manual_seed(self.seed * 7919 + seed)
        return torch.randint(0, levels, (n, *shape), generator=g)

    def prepared(
        self, shape: tuple[int, int, int] | None = None, levels: int | None = None
    ) -> GenerativeModel:
        """A fresh model after one ``training_losses`` call in training mode (the runner's
        first step, where data-dependent initialization happens), in eval mode."""
        model = self.build(shape, levels).train()
        model.training_losses(
            self.data(8, seed=2, shape=shape, levels=levels), model.phases[-1].name
        )
        return model.eval()


def named(model: torch.nn.Module) -> dict[int, str]:
    """``id(parameter) -> name`` for the parameters of ``model``."""
    return {id(p): n for n, p in model.named_parameters()}


def short(names: list[str], limit: int = 4) -> str:
    """``names`` joined, at most ``limit`` of them."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
