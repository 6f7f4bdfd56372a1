"""Cells and rows of the leaderboard tables: a number with its kind and 95 % interval, formatted
(``≤ 2.270 ± 0.010``, ``11.0 [10.2, 12.5]``), or a text; a row of cells for one run, the mean of
several seeds, a published result or a floor."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from genbench.leaderboard.floor_rows import is_floor
from genbench.leaderboard.ties import interval_text

Run = dict[str, Any]
_PREFIX = {"bound": "≤ ", "estimate": "≈ ", "exact": "", "measured": ""}


def fmt_number(value: float | None, kind: str = "measured", integer: bool = False) -> str:
    """``value`` with a kind prefix (``≤`` bound, ``≈`` estimate); ``–`` for None."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        text = str(value)
    elif integer or abs(value) >= 1000 or value == int(value) and abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}" if 0 < abs(value) < 0.01 else f"{value:.3f}"
    return _PREFIX.get(kind, "") + text


@dataclass
class Cell:
    """One table cell: a number with its kind and 95 % interval (``lo``, ``hi``: the metric's
    own, or under ``agg`` the t-interval over seeds), or a text."""

    value: float | None = None
    kind: str = "measured"
    lo: float | None = None
    hi: float | None = None
    label: str | None = None  # text cells and ``n/a``
    suffix: str = ""  # ``/8`` after modes, ``†`` after published sample metrics
    integer: bool = False
    best: bool = False  # best of its column or within the 95 % interval of the best

    @property
    def missing(self) -> bool:
        return self.value is None or math.isnan(self.value)

    @property
    def exact_int(self) -> bool:
        """A count without spread (printed without decimals or interval)."""
        spread = self.lo is not None and self.lo != self.hi
        return self.integer and not spread

    def text(self) -> str:
        """``2.270 ± 0.010`` (a symmetric interval), ``11.0 [10.2, 12.5]``, ``≤ 3.100``, ..."""
        if self.label is not None or self.value is None:
            return "–" if self.label is None else self.label
        out = fmt_number(self.value, self.kind, integer=self.exact_int) + self.suffix
        if self.exact_int or not math.isfinite(self.value):
            return out
        return out + interval_text(self.value, self.lo, self.hi, fmt_like(self.value))


def fmt_like(value: float) -> Callable[[float], str]:
    """A formatter for the interval of ``value``: as many decimals as ``value`` prints with
    (``1.912 ± 0.002``, ``26.8 ± 28.4``), one significant digit where that would print 0."""
    text = fmt_number(value)
    decimals = len(text.split(".", 1)[1]) if "." in text and "e" not in text else 0

    def fmt(x: float) -> str:
        if not math.isfinite(x) or "e" in text:
            return fmt_number(x)
        out = f"{x:,.{decimals}f}"
        return out if x == 0 or float(out.replace(",", "")) != 0 else f"{x:.1g}"

    return fmt


@dataclass
class Row:
    """A table row: one run, one published result, or (``agg``) the mean of several seeds."""

    runs: list[Run]
    cells: dict[str, Cell]
    #: config keys (dotted) in which this row differs from other rows of its model, with its
    #: values (``sections.differing_settings``); shown as the ``settings`` column when any row
    #: has some
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> Run:
        return self.runs[0]

    @property
    def published(self) -> bool:
        return bool(self.run.get("published"))

    @property
    def floor(self) -> bool:
        return is_floor(self.run)
