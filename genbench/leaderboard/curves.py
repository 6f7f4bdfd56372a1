"""``genbench leaderboard plot=budget``: anytime curves, quality against the compute spent.

Each run trained with ``trainer.eval_at`` stores the probe's metrics at those points of its budget
(:class:`~genbench.eval.metric.CurvePoint`, the ``curve`` of :meth:`Store.runs`). This plot draws
test bits/dim and FID against training FLOPs and against training seconds (log x-axes), one line
per run coloured by model, so a model that leads early and one that wins at the full budget are
both visible. A point's 95 % interval (``lo``/``hi``) is drawn as an error bar.

Panels never mix protocols: bits/dim of one dataset share a panel; FID shares one only when the
extractor, its weights, the sample count and the reference set agree
(:data:`~genbench.leaderboard.sections.PROTOCOL_FIELDS`). Points with no FLOP count (0) are left
out of the FLOPs panels.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from genbench.leaderboard.sections import PROTOCOL_FIELDS

Run = dict[str, Any]
#: x-axes: (curve-point field, axis label)
AXES = (("flops", "training FLOPs"), ("seconds", "training seconds"))
KIND_MARKERS = {"exact": "o", "bound": "v", "estimate": "D"}


@dataclass
class Line:
    """One run's curve of one metric against one budget quantity."""

    run_id: str
    label: str
    model: str
    kind: str
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    lo: list[float | None] = field(default_factory=list)
    hi: list[float | None] = field(default_factory=list)


@dataclass
class Panel:
    """One axes: a metric of one dataset and protocol against ``xkey``."""

    row: str
    title: str
    ylabel: str
    xkey: str
    xlabel: str
    lines: list[Line]


def _group(point: dict[str, Any]) -> tuple[Any, ...] | None:
    """The panel a curve point belongs to (its metric and protocol), or None when not drawn."""
    name, p = str(point["name"]), point.get("protocol") or {}
    if name == "bpd":
        return ("bpd",)
    if name.startswith("fid@"):
        return (name, point.get("n"), *(str(p.get(f)) for f in PROTOCOL_FIELDS))
    return None


def _label(run: Run, runs: Sequence[Run]) -> str:
    """The model name, with the seed (or the run id) when the model has several runs."""
    model = str(run["model"])
    if sum(r["model"] == model for r in runs) < 2:
        return model
    seed = (run.get("config") or {}).get("seed")
    return f"{model} · seed {seed}" if seed is not None else f"{model} · {run['run_id']}"


def _finite(v: Any) -> bool:  # noqa: ANN401 (a stored number or None)
    return isinstance(v, int | float) and math.isfinite(v)


def budget_panels(runs: Sequence[Run]) -> list[Panel]:
    """The panels of the budget plot: for each dataset, bits/dim then each FID protocol, each
    against FLOPs and against seconds; only panels with at least one point."""
    panels = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        group = [r for r in runs if r["dataset"] == dataset and r.get("curve")]
        keys = list(dict.fromkeys(k for r in group for p in r["curve"] if (k := _group(p))))
        for key in keys:
            ylabel = "test bits/dim" if key[0] == "bpd" else "FID" + key[0][3:]
            row = f"{dataset}: " + ("bits/dim" if key[0] == "bpd" else f"{ylabel}, N={key[1]}")
            for xkey, xlabel in AXES:
                lines = [line for r in group if (line := _line(r, group, key, xkey)).x]
                if lines:
                    title = f"{row} vs {xlabel}"
                    ylabel_ = f"{ylabel} (lower is better)"
                    panels.append(Panel(row, title, ylabel_, xkey, xlabel, lines))
    return panels


def _line(run: Run, runs: Sequence[Run], key: tuple[Any, ...], xkey: str) -> Line:
    points = sorted(
        (p for p in run["curve"] if _group(p) == key), key=lambda p: (p["fraction"], p[xkey])
    )
    line = Line(str(run["run_id"]), _label(run, runs), str(run["model"]), "measured")
    for p in points:
        if not (_finite(p.get(xkey)) and p[xkey] > 0 and _finite(p.get("value"))):
            continue
        line.kind = str(p.get("kind") or "measured")
        line.x.append(float(p[xkey]))
        line.y.append(float(p["value"]))
        line.lo.append(float(p["lo"]) if _finite(p.get("lo")) else None)
        line.hi.append(float(p["hi"]) if _finite(p.get("hi")) else None)
    return line


def _draw(ax: Axes, panel: Panel, colors: dict[str, Any]) -> None:
    runs = Counter(line.model for line in panel.lines)
    labelled: set[str] = set()
    for line in panel.lines:
        color = colors[line.model]
        # one legend entry per model (its runs share its colour)
        label = "_nolegend_"
        if line.model not in labelled:
            labelled.add(line.model)
            label = line.model + (f" ({runs[line.model]} runs)" if runs[line.model] > 1 else "")
            label += " (≤ bound)" if line.kind == "bound" else ""
        ax.plot(
            line.x,
            line.y,
            marker=KIND_MARKERS.get(line.kind, "o"),
            ms=4,
            lw=1.5,
            color=color,
            label=label,
            gid=f"curve:{line.run_id}",
        )
        bars = [
            (x, y, y - lo, hi - y)
            for x, y, lo, hi in zip(line.x, line.y, line.lo, line.hi)
            if lo is not None and hi is not None
        ]
        if bars:
            xs, ys, below, above = zip(*bars)
            ax.errorbar(
                xs,
                ys,
                yerr=[below, above],
                fmt="none",
                ecolor=color,
                elinewidth=1,
                capsize=2,
                alpha=0.6,
                gid=f"interval:{line.run_id}",
            )
    ax.set_xscale("log")
    ax.margins(x=0.08)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel, title=panel.title)
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def figure_budget(runs: Sequence[Run]) -> Figure | None:
    """Bits/dim and FID against training FLOPs (left) and seconds (right); None without any
    anytime curve."""
    panels = budget_panels(runs)
    if not panels:
        return None
    models = sorted({line.model for p in panels for line in p.lines})
    palette = colormaps["tab10"]
    colors = {m: palette(i % palette.N) for i, m in enumerate(models)}
    rows = list(dict.fromkeys(p.row for p in panels))
    fig = Figure(figsize=(11, 3.8 * len(rows)), dpi=100, layout="constrained")
    for p in panels:  # FLOPs left, seconds right
        col = [k for k, _ in AXES].index(p.xkey)
        _draw(fig.add_subplot(len(rows), 2, 2 * rows.index(p.row) + col + 1), p, colors)
    return fig
