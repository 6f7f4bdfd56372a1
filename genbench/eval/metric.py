"""The :class:`Metric` record (one evaluated number with its unit, kind and protocol) and the
:class:`MetricSpec` that declares, once and beside the stage that writes it, how a metric reads:
its direction, unit, display name and leaderboard column."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["exact", "bound", "estimate", "measured"]
#: leaderboard sections that show a column: every one, image datasets only, or 2-D toys only
Sections = Literal["all", "image", "toy"]


@dataclass(frozen=True)
class Metric:
    """One number produced by evaluation.

    Attributes:
        name: metric name; sample-quality metrics carry their extractor (``fid@digits-cnn``).
        value: the number, in ``unit``.
        kind: ``exact``; ``bound`` (an upper bound, printed ``≤``); ``estimate`` (stochastic);
            ``measured`` (timings, counts, scores of samples).
        split: the data split it was computed on (``test``, ``val``, ``samples``).
        n: number of examples (or generated samples) behind it.
        unit: ``bits/dim``, ``nats``, ``ms``, ``count`` or ``""``.
        protocol: everything that must match for two numbers to be comparable (extractor, weights
            hash, sample count, sampler settings, seed ...); ``protocol["interval"]`` names how
            ``lo``/``hi`` were computed.
        lo, hi: the 95 % interval around ``value`` in ``unit`` (None: no interval).
    """

    name: str
    value: float
    kind: Kind = "measured"
    split: str = "test"
    n: int = 0
    unit: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    lo: float | None = None
    hi: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Metric:
        """A metric row read back from a run folder (``metrics.json``), checked field by field;
        raises ``ValueError`` naming the first bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"a metric row is a JSON object, not {type(d).__name__}")
        name, value = d.get("name"), d.get("value")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a metric row has the name {name!r}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"metric {name!r} has the value {value!r}, not a number")
        n = d.get("n", 0)
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"metric {name!r} has n={n!r}, not an integer")
        text = {
            k: d.get(k, default)
            for k, default in (("kind", "measured"), ("split", "test"), ("unit", ""))
        }
        for k, v in text.items():
            if not isinstance(v, str):
                raise ValueError(f"metric {name!r} has {k}={v!r}, not a string")
        protocol = d.get("protocol", {})
        if not isinstance(protocol, dict):
            raise ValueError(f"metric {name!r} has a protocol that is not a JSON object")
        bounds = {k: d.get(k) for k in ("lo", "hi")}
        for k, v in bounds.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ValueError(f"metric {name!r} has {k}={v!r}, not a number")
        return cls(
            name,
            float("nan") if value is None else float(value),
            n=n,
            protocol=protocol,
            **text,
            **{k: None if v is None else float(v) for k, v in bounds.items()},
        )

    @property
    def protocol_key(self) -> str:
        """Canonical JSON of the protocol (numbers with different protocols are never ranked
        together)."""
        return json.dumps(self.protocol, sort_keys=True, default=str)


@dataclass(frozen=True)
class CurvePoint:
    """A metric measured during training at one point of its budget (an anytime curve), with
    the four budget quantities spent when it was measured.

    Attributes:
        metric: the number (its kind, unit, protocol and interval as for a final metric).
        fraction: share of the run's budget spent, in (0, 1].
        step: training steps done; images: training examples seen (every phase and repeat);
        seconds: training wall time (s); flops: training FLOPs (forward and backward).
    """

    metric: Metric
    fraction: float
    step: int
    images: int
    seconds: float
    flops: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric.to_dict(),
            **{k: getattr(self, k) for k in ("fraction", "step", "images", "seconds", "flops")},
        }

    @classmethod
    def from_dict(cls, d: Any) -> CurvePoint:
        """A curve point read back from a run folder, checked field by field (``ValueError``
        naming the first bad field)."""
        if not isinstance(d, dict):
            raise ValueError(f"a curve point is a JSON object, not {type(d).__name__}")
        out: dict[str, Any] = {"metric": Metric.from_dict(d.get("metric"))}
        for k, kind in (
            ("fraction", float),
            ("step", int),
            ("images", int),
            ("seconds", float),
            ("flops", float),
        ):
            v = d.get(k)
            if isinstance(v, bool) or not isinstance(v, int | float if kind is float else int):
                raise ValueError(f"a curve point has {k}={v!r}, not a number")
            out[k] = kind(v)
        return cls(**out)


@dataclass(frozen=True, kw_only=True)
class Column:
    """Where a metric shows in the leaderboard tables.

    Attributes:
        order: position among the metric columns, left to right (unique). The run's own
            columns frame them: model, family and likelihood before; params, steps, train
            seconds, device and status after.
        sections: ``all``, ``image`` (image datasets only) or ``toy`` (2-D toys only).
        optional: hidden in a section where no run has the metric.
    """

    order: int
    sections: Sections = "all"
    optional: bool = False


@dataclass(frozen=True, kw_only=True)
class MetricSpec:
    """How a metric reads, declared once where it is produced
    (:func:`~genbench.eval.registry.register_spec`).

    Attributes:
        name: the stored name; with ``per_extractor``, the part before ``@<extractor>``.
        lower_is_better: ranking direction; None for a number that describes the data, the
            protocol or where training left the run rather than its quality (``entropy``,
            ``modes_total``, ``ada_p``), never ranked (its column, if any, is optional).
        unit: ``bits/dim``, ``nats``, ``ms``, ``s``, ``count`` or ``""``.
        label: display name (the leaderboard column title); default ``name``.
        integer: a count, printed without decimals.
        per_extractor: stored as ``<name>@<extractor>`` (``fid@digits-cnn``); never ranked
            across extractors.
        likelihood: a likelihood number: ``n/a`` for models without a likelihood.
        column: its leaderboard column, or None for none.
    """

    name: str
    lower_is_better: bool | None
    unit: str = ""
    label: str = ""
    integer: bool = False
    per_extractor: bool = False
    likelihood: bool = False
    column: Column | None = None

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)
        if self.column is not None and self.lower_is_better is None and not self.column.optional:
            raise ValueError(
                f"metric {self.name!r} has a leaderboard column, so it needs a "
                "direction (lower_is_better true or false); an unranked number (one that "
                "describes the run, never ranked) may have an optional column"
            )

    @property
    def key(self) -> str:
        """The leaderboard's key of the metric: ``fid@`` matches every ``fid@<extractor>``."""
        return self.name + "@" if self.per_extractor else self.name

    def metric(
        self,
        value: float,
        kind: Kind = "measured",
        split: str = "test",
        n: int = 0,
        protocol: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        extractor: str | None = None,
    ) -> Metric:
        """A :class:`Metric` row of this spec (its unit), named ``name`` (default the spec's;
        ``<name>@<extractor>`` with ``extractor``)."""
        name = name or self.name
        if extractor is not None:
            name = f"{name}@{extractor}"
        return Metric(name, float(value), kind, split, int(n), self.unit, dict(protocol or {}))


def lower_is_better(name: str) -> bool:
    """Ranking direction of a stored metric name, from its spec (``fid@x`` -> ``fid``: lower is
    better; ``is@x``: higher). ``KeyError`` for a metric without a spec or a direction."""
    from genbench.eval.registry import metric_spec

    spec = metric_spec(name)
    if spec is None or spec.lower_is_better is None:
        raise KeyError(f"metric {name!r} has no ranking direction (no MetricSpec declares one)")
    return spec.lower_is_better
