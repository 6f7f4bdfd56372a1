"""Validated registry of evaluation stages. The evaluator runs every registered stage in order and
never branches on a metric's name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genbench.eval.context import EvalContext
    from genbench.eval.metric import Metric

MetricFn = Callable[["EvalContext"], list["Metric"]]
_METRICS: dict[str, MetricFn] = {}


def register_metric(name: str, fn: MetricFn | None = None) -> MetricFn | Callable:
    """Register ``fn`` as evaluation stage ``name`` (usable as a decorator).

    Raises ``ValueError`` for a name that is not a plain identifier or is already taken.
    """
    if not isinstance(name, str) or not name.replace("_", "").isalnum() or name != name.strip():
        raise ValueError(f"metric stage name must be an identifier, got {name!r}")
    if name in _METRICS:
        raise ValueError(f"metric stage {name!r} is already registered")

    def add(f: MetricFn) -> MetricFn:
        if not callable(f):
            raise ValueError(f"metric stage {name!r} must be callable, got {type(f).__name__}")
        _METRICS[name] = f
        return f

    return add(fn) if fn is not None else add


def registered() -> dict[str, MetricFn]:
    """Stages in registration order."""
    return dict(_METRICS)
