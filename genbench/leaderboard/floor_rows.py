"""Floor rows of a leaderboard section, listed apart from the runs and never ranked.

- ``data``: real held-out images scored against the reference with the same extractor, sample
  count and protocol as the models (recorded as a run with ``family="data"``); the best FID /
  KID / precision / recall a model can reach at that sample count.
- ``uniform``: the uniform distribution over the K levels of every sub-pixel, ``log2 K``
  bits/dim exactly; the likelihood a model that learned nothing reaches. K is read from the
  ``levels`` field of a bits/dim row's protocol, else from the run's ``dataset.levels`` config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Run = dict[str, Any]
FLOOR_FAMILY = "data"  # the family of a recorded data-floor run


def is_floor(run: Run) -> bool:
    """Whether ``run`` is a floor (a recorded ``data`` run or a synthetic ``uniform`` row)."""
    return run.get("family") == FLOOR_FAMILY or bool(run.get("floor"))


def levels_of(runs: Sequence[Run]) -> int | None:
    """K, the number of levels of the runs' dataset, or None when no run records it."""
    for run in runs:
        for m in run.get("metrics", ()):
            k = (m.get("protocol") or {}).get("levels")
            if m.get("unit") == "bits/dim" and isinstance(k, int) and k > 1:
                return k
    for run in runs:
        k = ((run.get("config") or {}).get("dataset") or {}).get("levels")
        if isinstance(k, int) and not isinstance(k, bool) and k > 1:
            return k
    return None


def uniform_run(dataset: str, levels: int, keys: Sequence[str]) -> Run:
    """A run-like row of the uniform distribution over ``levels`` values per dimension: exactly
    ``log2 K`` bits/dim in each bits/dim column ``keys``."""
    bpd = math.log2(levels)
    return {
        "run_id": f"floor/{dataset}/uniform",
        "model": "uniform",
        "family": "–",
        "likelihood": "exact",
        "dataset": dataset,
        "device": None,
        "status": f"K={levels}",
        "config": {},
        "floor": "uniform",
        "metrics": [
            {
                "name": key,
                "value": bpd,
                "kind": "exact",
                "split": "test",
                "n": None,
                "unit": "bits/dim",
                "protocol": {"levels": levels},
                "lo": None,
                "hi": None,
            }
            for key in keys
        ],
    }


def floor_note(kinds: Sequence[str], levels: int | None) -> str:
    """The footnote that explains the floor rows present (``data``, ``uniform``)."""
    parts = []
    if "data" in kinds:
        parts.append(
            "data: held-out real images scored against the reference with the same extractor, "
            "N and protocol (the best a model can reach at this N)"
        )
    if "uniform" in kinds:
        parts.append(
            f"uniform: log2 K bits/dim with K = {levels} levels (a model that learned nothing)"
        )
    return "floors, never ranked: " + "; ".join(parts)
