"""Leaderboard plots (matplotlib, Agg canvas, PNG): the trade-offs between families at a glance.

- ``pareto``: FID vs sampling cost (ms/image, log scale), one point per run coloured by family,
  the Pareto front (no run both faster and better) drawn through its points;
- ``bpd_params``: test bits/dim vs parameter count (bounds ``▼``, exact ``●``, estimates ``◆``);
- ``fid_nfe``: FID vs network evaluations per sample for runs with a sampler sweep
  (``eval.sampler_sweep``: rows of one metric that differ in ``protocol["sampler"]``);
- ``budget``: anytime curves, bits/dim and FID against training FLOPs and seconds
  (:mod:`genbench.leaderboard.curves`);
- ``loss``: training-loss curves (``stats.jsonl`` keys ending in ``loss``), one panel per run;
- ``grid``: a montage of the runs' ``samples.png``.

Panels never mix sample-metric protocols (one per :class:`~genbench.leaderboard.sections.Section`).
A plot without data returns None and :func:`write_plots` says why instead of writing a file.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from genbench.files import atomic_write
from genbench.leaderboard.curves import figure_budget
from genbench.leaderboard.sections import Row, Section, View, build_sections, pick
from genbench.rundir import RunDir

log = logging.getLogger(__name__)
Run = dict[str, Any]
FAMILY_COLORS = {
    "autoregressive": "#1f77b4",
    "flow": "#ff7f0e",
    "vae": "#2ca02c",
    "gan": "#d62728",
    "diffusion": "#9467bd",
}
KIND_MARKERS = {"exact": "o", "bound": "v", "estimate": "D"}
MAX_PANELS = 36


def _color(family: str) -> str:
    return FAMILY_COLORS.get(family, "#7f7f7f")


def _panels(
    n: int, cols: int = 3, size: tuple[float, float] = (5.0, 3.8)
) -> tuple[Figure, list[Axes]]:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), dpi=100, layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _family_legend(ax: Axes, families: Sequence[str]) -> None:
    handles = [
        Line2D([], [], marker="o", ls="", color=_color(f), label=f) for f in dict.fromkeys(families)
    ]
    ax.legend(handles=handles, fontsize=8, loc="best")


def _labels(ax: Axes, pts: Sequence[tuple[float, float, str]]) -> None:
    """Name each distinct model once, at its lowest point."""
    best: dict[str, tuple[float, float]] = {}
    for x, y, text in pts:
        if text not in best or y < best[text][1]:
            best[text] = (x, y)
    for text, (x, y) in best.items():
        ax.annotate(text, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)


def _log_x(ax: Axes) -> None:
    ax.set_xscale("log")
    ax.margins(x=0.12)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _xy(rows: Sequence[Row], xkey: str, ykey: str) -> list[tuple[float, float, Row]]:
    return [
        (r.cells[xkey].value, r.cells[ykey].value, r)
        for r in rows
        if not (r.published or r.cells[xkey].missing or r.cells[ykey].missing)
        and r.cells[xkey].value > 0
    ]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, error) that no other point beats on both, by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def figure_pareto(sections: Sequence[Section]) -> Figure | None:
    """FID vs ms/image per image section, Pareto front highlighted."""
    panels = [
        (s, pts)
        for s in sections
        if not s.toy
        if len(pts := _xy(s.rows, "ms_per_image", "fid@")) > 0
    ]
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    for ax, (sec, pts) in zip(axes, panels):
        front = pareto_front([(x, y) for x, y, _ in pts])
        fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
        ax.step(
            fx, fy, where="post", color="black", lw=1.2, alpha=0.6, zorder=1, label="Pareto front"
        )
        for i, (x, y, r) in enumerate(pts):
            ax.scatter(
                x,
                y,
                s=70 if i in front else 35,
                color=_color(r.run["family"]),
                edgecolors="black" if i in front else "none",
                zorder=2,
            )
        _labels(ax, [(x, y, short_label(r.run)) for x, y, r in pts])
        _log_x(ax)
        ax.set(
            xlabel="sampling cost (ms / image)",
            ylabel=_fid_title(sec),
            title=f"{sec.title}: quality vs cost",
        )
        ax.grid(alpha=0.3)
        _family_legend(ax, [r.run["family"] for _, _, r in pts])
    return fig


def _fid_title(sec: Section) -> str:
    return next(t for t, k in sec.columns if k == "fid@") + " (lower is better)"


def figure_bpd_params(sections: Sequence[Section]) -> Figure | None:
    """Test bits/dim vs parameter count, one panel per dataset."""
    by_dataset: dict[str, list[tuple[float, float, Row]]] = {}
    for sec in sections:
        by_dataset.setdefault(sec.dataset, []).extend(_xy(sec.rows, "params", "bpd"))
    panels = [(d, pts) for d, pts in by_dataset.items() if pts]
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    for ax, (dataset, pts) in zip(axes, panels):
        for x, y, r in pts:
            ax.scatter(
                x,
                y,
                s=45,
                color=_color(r.run["family"]),
                marker=KIND_MARKERS.get(r.cells["bpd"].kind, "o"),
            )
        _labels(ax, [(x, y, str(r.run["model"])) for x, y, r in pts])
        _log_x(ax)
        ax.set(
            xlabel="parameters",
            ylabel="test bits/dim (lower is better)",
            title=f"{dataset}: bits/dim vs size",
        )
        ax.grid(alpha=0.3)
        kinds = dict.fromkeys(r.cells["bpd"].kind for _, _, r in pts)
        handles = [
            Line2D(
                [],
                [],
                marker=KIND_MARKERS.get(k, "o"),
                ls="",
                color="gray",
                label={"bound": "≤ bound"}.get(k, k),
            )
            for k in kinds
        ]
        handles += [
            Line2D([], [], marker="o", ls="", color=_color(f), label=f)
            for f in dict.fromkeys(r.run["family"] for _, _, r in pts)
        ]
        ax.legend(handles=handles, fontsize=8, loc="best")
    return fig


def sweep_points(run: Run) -> list[tuple[float, float]]:
    """(NFE, FID) for every sampler the run was evaluated with, sorted by NFE."""
    out = []
    for m in run["metrics"]:
        if not m["name"].startswith("fid@") or "sampler" not in m["protocol"]:
            continue
        nfe = pick(run, "nfe", sampler=m["protocol"]["sampler"])
        if nfe and nfe["protocol"].get("sampler") == m["protocol"]["sampler"]:
            out.append((float(nfe["value"]), float(m["value"])))
    return sorted(set(out))


def figure_fid_nfe(sections: Sequence[Section]) -> Figure | None:
    """FID vs NFE: a line per run with a sampler sweep, single-sampler runs as points."""
    panels = []
    for sec in sections:
        curves = [
            (r, pts) for r in sec.rows if not r.published for pts in [sweep_points(r.run)] if pts
        ]
        if not sec.toy and any(len(pts) > 1 for _, pts in curves):
            panels.append((sec, curves))
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    for ax, (sec, curves) in zip(axes, panels):
        for r, pts in curves:
            xs, ys = zip(*pts)
            color = _color(r.run["family"])
            ax.plot(xs, ys, marker="o", ms=4, color=color, lw=1.5 if len(pts) > 1 else 0)
        _labels(ax, [(x, y, short_label(r.run)) for r, pts in curves for x, y in pts[-1:]])
        _log_x(ax)
        ax.set(
            xlabel="network evaluations per sample (NFE)",
            ylabel=_fid_title(sec),
            title=f"{sec.title}: sampler sweeps",
        )
        ax.grid(alpha=0.3)
        _family_legend(ax, [r.run["family"] for r, _ in curves])
    return fig


def read_stats(run_dir: str | Path | None) -> list[dict[str, Any]]:
    """The training-log lines of a run folder's ``stats.jsonl`` (bad lines skipped)."""
    path = RunDir(run_dir or "").stats_file
    if not run_dir or not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict) and "step" in d:
            out.append(d)
    return out


def figure_loss(runs: Sequence[Run]) -> Figure | None:
    """Training-loss curves, one panel per run (every logged key ending in ``loss``)."""
    panels = []
    for run in sorted(runs, key=lambda r: (r["dataset"], r["model"])):
        stats = read_stats(run.get("run_dir"))
        keys = list(dict.fromkeys(k for d in stats for k in d if k.endswith("loss")))
        if keys:
            panels.append((run, stats, keys))
    if not panels:
        return None
    panels = panels[:MAX_PANELS]
    fig, axes = _panels(len(panels), cols=4, size=(4.0, 2.8))
    for ax, (run, stats, keys) in zip(axes, panels):
        for k in keys:
            pts = [(d["step"], d[k]) for d in stats if isinstance(d.get(k), int | float)]
            if pts:
                ax.plot(*zip(*pts), lw=1.2, label=k)
        ax.set(xlabel="step", title=f"{run_label(run)} · {run['dataset']}")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def figure_grid(runs: Sequence[Run]) -> Figure | None:
    """A montage of the runs' ``samples.png``: one block per dataset, a panel per run."""
    panels: dict[str, list[tuple[Run, Any]]] = {}
    for run in sorted(runs, key=lambda r: (r["dataset"], r["model"]))[:MAX_PANELS]:
        path = RunDir(run.get("run_dir") or "").samples_png
        if run.get("run_dir") and path.is_file():
            try:
                panels.setdefault(run["dataset"], []).append((run, imread(path)))
            except (OSError, ValueError, SyntaxError) as err:
                log.warning("cannot read %s: %s", path, err)
    if not panels:
        return None
    cols, width = 4, 3.4
    heights = [
        math.ceil(len(p) / cols) * (0.5 + width * max(im.shape[0] / im.shape[1] for _, im in p))
        for p in panels.values()
    ]
    fig = Figure(
        figsize=(width * cols, sum(heights) + 0.4 * len(heights)), dpi=100, layout="constrained"
    )
    subfigs = fig.subfigures(len(panels), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, (dataset, items) in zip(subfigs, panels.items()):
        sub.suptitle(f"samples: {dataset}", fontsize=11, x=0.01, ha="left")
        axes = sub.subplots(math.ceil(len(items) / cols), cols, squeeze=False).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, (run, img) in zip(axes, items):
            ax.imshow(img, cmap="gray", interpolation="nearest")
            ax.set_title(run_label(run), fontsize=9)
    return fig


def short_label(run: Run) -> str:
    """``model`` or ``model ddim-10`` when the run used a sampler of its own."""
    sampler = (run.get("config") or {}).get("sampler") or {}
    extra = "-".join(str(sampler[k]) for k in ("name", "steps") if sampler.get(k) is not None)
    return f"{run['model']} {extra}" if extra else str(run["model"])


def run_label(run: Run) -> str:
    """``model [sampler] · seed`` of a run, short enough for a panel title."""
    seed = (run.get("config") or {}).get("seed")
    return short_label(run) + (f" · seed {seed}" if seed is not None else "")


def _guidance_figure(sections: Sequence[Section]) -> Figure | None:
    from genbench.leaderboard.guidance import figure_guidance  # it uses this module's helpers

    return figure_guidance(sections)


def _settings_figure(runs: Sequence[Run]) -> Figure | None:
    from genbench.leaderboard.sweep_plot import figure_settings  # it uses this module's helpers

    return figure_settings(runs)


#: plot name -> (figure builder taking sections or runs, message when there is no data)
PLOTS: dict[str, tuple[Callable[..., Figure | None], bool, str]] = {
    "pareto": (figure_pareto, True, "no run has both FID and ms/image"),
    "bpd_params": (figure_bpd_params, True, "no run has both bits/dim and a parameter count"),
    "fid_nfe": (
        figure_fid_nfe,
        True,
        "no run has a sampler sweep (set eval.sampler_sweep, e.g. [10,20,50])",
    ),
    "budget": (
        figure_budget,
        False,
        "no run has an anytime curve (train with trainer.eval_at, e.g. [0.1,0.25,0.5,1.0])",
    ),
    "guidance": (
        _guidance_figure,
        True,
        "no conditional run has a guidance sweep (set eval.guidance_sweep, e.g. [0,1,2,4])",
    ),
    "settings": (
        _settings_figure,
        False,
        "no runs of one model differ in a numeric setting besides the seed (a sweep such as "
        "experiment=data_efficiency)",
    ),
    "loss": (figure_loss, False, "no run folder has a stats.jsonl training log"),
    "grid": (figure_grid, False, "no run folder has a samples.png"),
}


def figure(
    name: str, runs: Sequence[Run], sections: Sequence[Section] | None = None
) -> Figure | None:
    """Build plot ``name`` from ``runs`` (None when there is no data for it)."""
    build, uses_sections, _ = PLOTS[name]
    if uses_sections:
        return build(build_sections(runs, View(refs=False)) if sections is None else sections)
    return build(runs)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_plots(runs: Sequence[Run], names: Sequence[str], out_dir: Path | str) -> dict[str, Path]:
    """Write ``<out_dir>/<name>.png`` for each plot with data; log why the others are skipped."""
    out_dir = Path(out_dir)
    sections = build_sections(runs, View(refs=False))
    written = {}
    for name in names:
        fig = figure(name, runs, sections)
        if fig is None:
            log.warning("plot %s: %s; nothing written", name, PLOTS[name][2])
            continue
        written[name] = out_dir / f"{name}.png"
        atomic_write(written[name], png_bytes(fig), what="plot")
    return written
