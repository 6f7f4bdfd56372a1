"""The :class:`Metric` record: one evaluated number with its unit, kind and protocol."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["exact", "bound", "estimate", "measured"]
#: metrics where smaller is better; everything else ranks larger-first
LOWER_IS_BETTER_PREFIXES: tuple[str, ...] = (
    "bpd", "nll", "neg_elbo", "recon", "kl", "fid", "kid", "ms_per_image", "nfe", "nll_gap",
    "toy_nll", "loss",
)


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
            hash, sample count, sampler settings, seed ...).
    """

    name: str
    value: float
    kind: Kind = "measured"
    split: str = "test"
    n: int = 0
    unit: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)

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
        text = {k: d.get(k, default) for k, default in
                (("kind", "measured"), ("split", "test"), ("unit", ""))}
        for k, v in text.items():
            if not isinstance(v, str):
                raise ValueError(f"metric {name!r} has {k}={v!r}, not a string")
        protocol = d.get("protocol", {})
        if not isinstance(protocol, dict):
            raise ValueError(f"metric {name!r} has a protocol that is not a JSON object")
        return cls(name, float("nan") if value is None else float(value), n=n,
                   protocol=protocol, **text)

    @property
    def protocol_key(self) -> str:
        """Canonical JSON of the protocol (numbers with different protocols are never ranked
        together)."""
        return json.dumps(self.protocol, sort_keys=True, default=str)


def lower_is_better(name: str) -> bool:
    """Ranking direction of a metric name (``fid@x`` -> lower is better, ``is@x`` -> higher)."""
    base = name.split("@", 1)[0]
    return any(base == p or base.startswith(p + "_") for p in LOWER_IS_BETTER_PREFIXES)
