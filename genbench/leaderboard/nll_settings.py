"""The likelihood settings of a run's bits/dim and the split of a dataset's runs by them.

A model declares the settings its ``nll`` depends on
(:meth:`~genbench.models.base.GenerativeModel.nll_settings`, e.g. a VAE's ``iwae_samples``: the
importance-weighted bound tightens as k grows); the evaluator records them as
``protocol["nll_settings"]`` of the ``nll`` / ``bpd`` rows. Runs whose bits/dim were computed with
different values of one such field are never ranked together: each value gets its own section,
and the runs that do not declare the field get one more. A field with a single value across the
dataset splits nothing (a VAE at k = 64 is ranked with the flows and autoregressive models).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

Run = dict[str, Any]


def nll_settings(run: Run) -> dict[str, Any]:
    """``protocol["nll_settings"]`` of the run's ``bpd`` row (``{}`` without one)."""
    for m in run.get("metrics") or ():
        if m["name"] == "bpd":
            settings = (m.get("protocol") or {}).get("nll_settings")
            return dict(settings) if isinstance(settings, dict) else {}
    return {}


def split_by_nll_settings(runs: Sequence[Run]) -> list[tuple[list[Run], str | None]]:
    """``runs`` of one dataset in groups that agree on every likelihood setting with more than one
    value among them, each with its description (``"iwae_samples=64"``; ``"other likelihood
    settings"`` for the runs without those fields), or ``[(runs, None)]`` when nothing splits.
    Groups with values come first, in the order of their first run."""
    settings = [nll_settings(r) for r in runs]
    fields = sorted({k for s in settings for k in s})
    values = {k: {json.dumps(s[k], sort_keys=True) for s in settings if k in s} for k in fields}
    splitting = [k for k in fields if len(values[k]) > 1]
    if not splitting:
        return [(list(runs), None)]
    groups: dict[tuple[str | None, ...], list[Run]] = {}
    for run, s in zip(runs, settings, strict=True):
        key = tuple(json.dumps(s[k], sort_keys=True) if k in s else None for k in splitting)
        groups.setdefault(key, []).append(run)
    out = []
    for key in sorted(groups, key=lambda k: all(v is None for v in k)):  # stable: first-seen
        words = [f"{f}={json.loads(v)}" for f, v in zip(splitting, key, strict=True) if v]
        out.append((groups[key], ", ".join(words) or "other likelihood settings"))
    return out
