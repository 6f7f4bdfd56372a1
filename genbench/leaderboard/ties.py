"""Uncertainty in the leaderboard: the 95 % t-interval of a mean over seeds, how a cell's
interval prints, and which entries of a column are tied for first.

An entry is *tied for first* when its 95 % interval overlaps the interval of the best entry of
its column (the best by value, in the metric's own direction). A number without an interval is
the point ``[v, v]``: two such numbers tie only when equal, and a point ties with an interval
that covers it. Bounds (``≤``) and estimates (``≈``) rank and tie by the number printed, as the
table has always ranked them: a bound that is best is a real win (the model's true NLL is at most
that), while an exact value ranked above a bound may not be (the ``≤`` says so). Every tied entry
is marked, so a column without a clear winner never shows one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Protocol

from scipy import stats

LEVEL = 0.95  # coverage of every interval the leaderboard prints
TIE_NOTE = "bold: best of its column, or within the 95 % interval of the best (tied for first)"


class Interval(Protocol):
    """A cell as far as ties are concerned: a value with an optional interval."""

    value: float | None
    lo: float | None
    hi: float | None


def t_interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """(mean, lo, hi) of ``values`` (one per seed): the mean with its 95 % Student-t interval
    ``mean ± t_{0.975, n-1} · s / √n`` (``s`` the sample standard deviation, ``n`` the number of
    values); ``lo`` and ``hi`` are None for a single value."""
    mean = statistics.fmean(values)
    n = len(values)
    if n < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def bounds(c: Interval) -> tuple[float, float]:
    """The interval of a cell; the point ``[value, value]`` when it has none."""
    assert c.value is not None
    lo = c.value if c.lo is None else c.lo
    hi = c.value if c.hi is None else c.hi
    return min(lo, c.value), max(hi, c.value)


def overlaps(a: Interval, b: Interval) -> bool:
    """Whether two cells' intervals overlap (points: equal values, up to float rounding)."""
    (alo, ahi), (blo, bhi) = bounds(a), bounds(b)
    close = math.isclose(alo, bhi, rel_tol=1e-9) or math.isclose(blo, ahi, rel_tol=1e-9)
    return close or (alo <= bhi and blo <= ahi)


def tied_for_first(cells: Sequence[Interval], lower_is_better: bool) -> list[bool]:
    """For each cell (all with a finite or infinite value, none NaN): whether it is the best or
    its interval overlaps the best one's. Nothing is marked with fewer than two cells."""
    if len(cells) < 2:
        return [False] * len(cells)
    sign = 1.0 if lower_is_better else -1.0
    top = min(cells, key=lambda c: sign * float(c.value))  # type: ignore[arg-type]
    return [c is top or overlaps(c, top) for c in cells]


def interval_text(
    value: float, lo: float | None, hi: float | None, fmt: Callable[[float], str]
) -> str:
    """`` ± h`` when the interval is symmetric (up to float rounding, or as printed),
    `` [lo, hi]`` when not, ``""`` without one; ``fmt`` formats a bare number."""
    if lo is None or hi is None:
        return ""
    below, above = value - lo, hi - value
    if math.isclose(below, above, rel_tol=1e-6, abs_tol=1e-12) or fmt(below) == fmt(above):
        return f" ± {fmt((below + above) / 2)}"
    return f" [{fmt(lo)}, {fmt(hi)}]"
