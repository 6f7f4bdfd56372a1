"""The settings plot: sample metrics against a numeric setting that varies across a sweep's runs
(``dataset.train_fraction`` in ``experiment=data_efficiency``, a learning rate, a step count),
one line per model and its other settings, each point the mean over the seeds with its 95 %
t-interval (the rows of ``genbench leaderboard agg=true``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from genbench.leaderboard.cells import Row
from genbench.leaderboard.sections import Section, View, build_sections, settings_text

Run = dict[str, Any]
#: the sample-metric columns plotted, in this order, where a section has them
METRICS = ("fid@", "precision@", "recall@", "modes_covered", "high_quality_share")
#: line label -> its points (setting value, mean, lo, hi), sorted by the setting
Lines = dict[str, list[tuple[float, float, float, float]]]


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def numeric_settings(rows: Sequence[Row]) -> list[str]:
    """Settings keys (dotted) with a number in every row that has them and at least two
    distinct values: the x axes a sweep offers."""
    keys = dict.fromkeys(k for r in rows for k in r.settings)
    out = []
    for k in keys:
        vals = [r.settings[k] for r in rows if k in r.settings]
        if all(_number(v) for v in vals) and len(set(vals)) > 1:
            out.append(k)
    return out


def sweep_lines(rows: Sequence[Row], key: str, metric: str) -> Lines:
    """``{line label: [(x, mean, lo, hi), ...] sorted by x}``: rows that have setting ``key``
    and a value of ``metric``, grouped by model and their other settings (the label)."""
    lines: Lines = {}
    for r in rows:
        c = r.cells.get(metric)
        if key not in r.settings or c is None or c.missing or r.published:
            continue
        rest = {k: v for k, v in r.settings.items() if k != key}
        label = f"{r.run['model']} {settings_text(rest)}" if rest else str(r.run["model"])
        y = float(c.value)
        lo, hi = (y, y) if c.lo is None else (float(c.lo), float(c.hi))
        lines.setdefault(label, []).append((float(r.settings[key]), y, lo, hi))
    return {k: sorted(v) for k, v in lines.items()}


def _panels_of(sections: Sequence[Section]) -> list[tuple[Section, str, str, Lines]]:
    """(section, setting, metric title, its :func:`sweep_lines`) of every panel."""
    out = []
    for sec in sections:
        titles = {k: t for t, k in sec.columns}
        for setting in numeric_settings(sec.rows):
            for metric in METRICS:
                if metric in titles and (lines := sweep_lines(sec.rows, setting, metric)):
                    out.append((sec, setting, titles[metric], lines))
    return out


def figure_settings(runs: Sequence[Run]) -> Figure | None:
    """One panel per section, numeric setting and sample metric (FID, precision, recall; on
    toys modes and HQ share): the metric's mean over seeds ± its 95 % t-interval against the
    setting, a line per model and its other settings. None when no sweep varies a number."""
    from genbench.leaderboard.plots import _panels

    panels = _panels_of(build_sections(runs, View(agg=True, refs=False)))
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    for ax, (sec, setting, title, lines) in zip(axes, panels, strict=True):
        models = list(dict.fromkeys(label.partition(" ")[0] for label in sorted(lines)))
        seen: dict[str, int] = {}
        for label, pts in sorted(lines.items()):
            model = label.partition(" ")[0]
            j = seen[model] = seen.get(model, -1) + 1  # the model's j-th line: its style
            xs, ys, lo, hi = zip(*pts)
            err = [[y - a for y, a in zip(ys, lo)], [b - y for y, b in zip(ys, hi)]]
            ax.errorbar(
                xs, ys, yerr=err, label=label, color=f"C{models.index(model) % 10}",
                marker="osD^v"[j % 5], ls=("-", "--", ":", "-.")[j % 4], ms=4, capsize=2, lw=1.2,
            )  # fmt: skip
        xs = [x for pts in lines.values() for x, *_ in pts]
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ys = [y for pts in lines.values() for _, y, *_ in pts]
        if min(ys) > 0 and max(ys) / min(ys) >= 5:  # e.g. FIDs of 2 and 20: both readable
            ax.set_yscale("log")
        ax.set_xticks(sorted(set(xs)), [f"{x:g}" for x in sorted(set(xs))])
        ax.set(xlabel=setting, ylabel=title, title=f"{sec.title}: {title} vs {setting}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    return fig
