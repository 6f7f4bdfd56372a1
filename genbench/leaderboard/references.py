"""Published results (``references.yaml``) shown beside the runs of the same dataset.

Each reference becomes a *run-like* dict with the shape of :meth:`Store.runs` rows (``model``,
``family``, ``likelihood``, ``dataset``, ``status`` = ``"published"``, ``metrics`` rows ...) plus
``published: True``, ``source`` and ``notes``, so the report renders it with the same code as a
local run. Its bits/dim keep the kind of the model's likelihood (``≤`` for dequantized flows and
variational bounds); its FID / IS carry the paper's protocol, which never matches a local run's.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genbench.errors import UserError
from genbench.eval.metric import MetricSpec
from genbench.eval.registry import metric_spec
from genbench.models.base import FAMILIES, LIKELIHOODS, likelihood_kind

#: metrics a published result may give, named as genbench stores them; unit and whether a name
#: gets ``@<extractor>`` (FID, IS) come from their :class:`~genbench.eval.metric.MetricSpec`
METRICS: tuple[str, ...] = ("bpd", "fid", "is", "nfe")


def _spec(key: str) -> MetricSpec:
    spec = metric_spec(key)
    if spec is None:
        raise RuntimeError(f"published metric {key!r} has no MetricSpec")
    return spec


#: extractor named in the metric of every published FID / IS (``fid@inception-v3``)
EXTRACTOR = "inception-v3"
_KEYS = {"model", "family", "likelihood", "dataset", "metrics", "source", "notes", "protocol"}
_REQUIRED = {"model", "family", "likelihood", "dataset", "metrics", "source"}


class ReferencesError(UserError):
    """``references.yaml`` is malformed."""


@dataclass(frozen=True)
class Reference:
    """One published result: a model on a dataset, with its source and protocol."""

    model: str
    family: str
    likelihood: str
    dataset: str
    metrics: dict[str, float]
    paper: str
    table: str
    notes: str = ""
    protocol: str | None = None  # text of the sample-metric protocol (FID / IS)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"{self.paper}, {self.table}"

    def as_run(self) -> dict[str, Any]:
        """A dict shaped like a :meth:`Store.runs` row, marked ``published``."""
        rows = []
        for key, value in self.metrics.items():
            spec = _spec(key)
            name, unit = key, spec.unit
            kind = likelihood_kind(self.likelihood) if key == "bpd" else "measured"
            proto: dict[str, Any] = {"published": self.source}
            if spec.per_extractor:
                name = f"{name}@{EXTRACTOR}"
                proto.update(extractor=EXTRACTOR, protocol=self.protocol)
            rows.append(
                {
                    "name": name,
                    "value": value,
                    "kind": kind,
                    "split": "test",
                    "n": None,
                    "unit": unit,
                    "protocol": proto,
                }
            )
        return {
            "run_id": f"published/{self.dataset}/{self.model}",
            "created": "",
            "model": f"{self.model} (paper)",
            "family": self.family,
            "likelihood": self.likelihood,
            "dataset": self.dataset,
            "params": None,
            "steps": None,
            "images_seen": None,
            "train_seconds": None,
            "device": None,
            "status": "published",
            "run_dir": None,
            "config_hash": None,
            "config": {},
            "versions": {},
            "metrics": rows,
            "published": True,
            "source": self.source,
            "notes": self.notes,
            "protocol_text": self.protocol,
        }


def _check_entry(i: int, e: Any, protocols: dict[str, str]) -> Reference:
    where = f"references.yaml entry {i}"
    if not isinstance(e, dict):
        raise ReferencesError(f"{where} is not a mapping")
    where = f"{where} ({e.get('model', '?')} on {e.get('dataset', '?')})"
    if missing := _REQUIRED - e.keys():
        raise ReferencesError(f"{where} lacks {sorted(missing)}")
    if unknown := e.keys() - _KEYS:
        raise ReferencesError(f"{where} has unknown keys {sorted(unknown)}")
    if e["family"] not in FAMILIES:
        raise ReferencesError(f"{where}: family {e['family']!r} is not one of {FAMILIES}")
    if e["likelihood"] not in LIKELIHOODS:
        raise ReferencesError(f"{where}: likelihood {e['likelihood']!r} not in {LIKELIHOODS}")
    metrics = e["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise ReferencesError(f"{where}: metrics must be a non-empty mapping")
    for key, value in metrics.items():
        if key not in METRICS:
            raise ReferencesError(f"{where}: unknown metric {key!r} (known: {sorted(METRICS)})")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value > 0)
        ):
            raise ReferencesError(f"{where}: {key} = {value!r} is not a positive number")
    if "bpd" in metrics and e["likelihood"] == "none":
        raise ReferencesError(f"{where}: a model without likelihood cannot report bits/dim")
    protocol = e.get("protocol")
    if any(_spec(k).per_extractor for k in metrics) and protocol not in protocols:
        raise ReferencesError(f"{where}: FID / IS need a protocol from {sorted(protocols)}")
    src = e["source"]
    if not isinstance(src, dict) or not src.get("paper") or not src.get("table"):
        raise ReferencesError(f"{where}: source needs a paper and a table")
    return Reference(
        str(e["model"]),
        e["family"],
        e["likelihood"],
        str(e["dataset"]),
        {k: float(v) for k, v in metrics.items()},
        str(src["paper"]),
        str(src["table"]),
        str(e.get("notes", "")),
        protocols.get(protocol) if protocol else None,
    )


def load_references(path: Path | str | None = None) -> list[Reference]:
    """Parse and validate ``references.yaml`` (the packaged one unless ``path`` is given)."""
    if path is None:
        text = (importlib.resources.files("genbench.leaderboard") / "references.yaml").read_text()
    else:
        text = Path(path).read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ReferencesError(f"references.yaml is not valid YAML: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("references"), list):
        raise ReferencesError("references.yaml needs a `references:` list")
    protocols = doc.get("protocols") or {}
    refs = [_check_entry(i, e, protocols) for i, e in enumerate(doc["references"])]
    seen: set[tuple[str, str]] = set()
    for r in refs:
        if (r.dataset, r.model) in seen:
            raise ReferencesError(f"references.yaml lists {r.model} on {r.dataset} twice")
        seen.add((r.dataset, r.model))
    return refs


def reference_notes(refs: Sequence[dict[str, Any]]) -> list[str]:
    """Footnotes for published rows (run-like dicts): how to read them and their sources."""
    if not refs:
        return []
    protos = sorted({str(r["protocol_text"]) for r in refs if r.get("protocol_text")})
    notes = [
        "(paper) rows are published results, listed apart and never ranked with the runs "
        "above; † their sample metrics use the paper's protocol: " + "; ".join(protos)
    ]
    return notes + [
        f"{r['model']}: {r['source']}" + (f" — {r['notes']}" if r.get("notes") else "")
        for r in refs
    ]


def reference_runs(
    datasets: set[str] | None = None, family: str | None = None, path: Path | str | None = None
) -> list[dict[str, Any]]:
    """Run-like dicts of the published results on ``datasets`` (all when None), optionally of
    one ``family``."""
    return [
        r.as_run()
        for r in load_references(path)
        if (datasets is None or r.dataset in datasets) and (family is None or r.family == family)
    ]
