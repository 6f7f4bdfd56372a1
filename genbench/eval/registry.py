"""Validated registries of evaluation stages and of the metrics they write.

Stages run in the order they declare (``order``, smallest first), never in import order, and the
evaluator never branches on a metric's name. Each metric is declared once, beside the stage that
writes it, as a :class:`~genbench.eval.metric.MetricSpec` (direction, unit, label, leaderboard
column); the leaderboard reads those declarations, so a new metric touches one file.

The modules that register stages and specs are listed in :data:`STAGE_MODULES`; both registries
load them on first use, so every reader sees the same stages and specs whatever it imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genbench.eval.context import EvalContext
    from genbench.eval.metric import Metric, MetricSpec

MetricFn = Callable[["EvalContext"], list["Metric"]]
#: modules whose import registers evaluation stages and metric specs
STAGE_MODULES: tuple[str, ...] = (
    "genbench.eval.state",
    "genbench.eval.cost",
    "genbench.eval.likelihood",
    "genbench.eval.stages",
    "genbench.eval.conditional",
    "genbench.eval.evaluate",
)
_STAGES: dict[str, tuple[int, MetricFn]] = {}
_SPECS: dict[str, MetricSpec] = {}


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name.replace("_", "").isalnum() or name != name.strip():
        raise ValueError(f"{what} name must be an identifier, got {name!r}")


def register_metric(
    name: str, fn: MetricFn | None = None, *, order: int
) -> MetricFn | Callable[[MetricFn], MetricFn]:
    """Register ``fn`` as evaluation stage ``name``, run at position ``order`` (smallest first;
    usable as a decorator). A stage that reads another's rows (``ctx.rows``) takes a larger
    ``order``.

    Raises ``ValueError`` for a name that is not a plain identifier or is already taken, and for
    an ``order`` that is not an int or is another stage's.
    """
    _check_name(name, "metric stage")
    if name in _STAGES:
        raise ValueError(f"metric stage {name!r} is already registered")
    if not isinstance(order, int) or isinstance(order, bool):
        raise ValueError(f"metric stage {name!r}: order must be an int, got {order!r}")
    if taken := [s for s, (o, _) in _STAGES.items() if o == order]:
        raise ValueError(f"metric stage {name!r}: order {order} is already stage {taken[0]!r}'s")

    def add(f: MetricFn) -> MetricFn:
        if not callable(f):
            raise ValueError(f"metric stage {name!r} must be callable, got {type(f).__name__}")
        _STAGES[name] = (order, f)
        return f

    return add(fn) if fn is not None else add


def load_stages() -> None:
    """Import :data:`STAGE_MODULES` (each registers its stages and specs once)."""
    for module in STAGE_MODULES:
        importlib.import_module(module)


def registered() -> dict[str, MetricFn]:
    """Every stage, in the order it runs (its declared ``order``)."""
    load_stages()
    return {name: fn for name, (_, fn) in sorted(_STAGES.items(), key=lambda kv: kv[1][0])}


def register_spec(spec: MetricSpec) -> MetricSpec:
    """Declare a metric (returns ``spec``). Raises ``ValueError`` for a name that is not an
    identifier or is already declared, and for a leaderboard column position already taken."""
    from genbench.eval.metric import MetricSpec

    if not isinstance(spec, MetricSpec):
        raise ValueError(f"register_spec takes a MetricSpec, got {type(spec).__name__}")
    _check_name(spec.name, "metric")
    if spec.name in _SPECS:
        raise ValueError(f"metric {spec.name!r} is already declared")
    if spec.column is not None and (
        taken := [
            s.name for s in _SPECS.values() if s.column and s.column.order == spec.column.order
        ]
    ):
        raise ValueError(
            f"metric {spec.name!r}: column order {spec.column.order} is already {taken[0]!r}'s"
        )
    _SPECS[spec.name] = spec
    return spec


def metric_specs() -> list[MetricSpec]:
    """Every declared metric, sorted by name."""
    load_stages()
    return sorted(_SPECS.values(), key=lambda s: s.name)


def metric_spec(name: str) -> MetricSpec | None:
    """The spec of a stored metric name, or None when it has none.

    ``fid@digits-cnn`` is read as ``fid``; a name with no spec of its own takes the spec of its
    longest declared ``_``-prefix, so an estimator's ``bpd_ode`` reads as ``bpd`` and ``kid_std``
    as ``kid`` (the ranking rule genbench has always applied to these names).
    """
    load_stages()
    base = name.partition("@")[0]
    if base in _SPECS:
        return _SPECS[base]
    parts = base.split("_")
    for i in range(len(parts) - 1, 0, -1):
        if (prefix := "_".join(parts[:i])) in _SPECS:
            return _SPECS[prefix]
    return None
