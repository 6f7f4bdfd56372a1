"""The guidance plot: FID against sample accuracy, one curve per conditional run evaluated at
several classifier-free guidance scales (``eval.guidance_sweep``), each point labelled with its
scale w. Guidance moves a model along this curve: samples agree more with their label (right)
and, past some w, lose diversity (FID rises)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from genbench.leaderboard.sections import Section

Run = dict[str, Any]


def guidance_points(run: Run) -> list[tuple[float, float, float]]:
    """(guidance w, sample accuracy, FID) of every sampler the run was scored with where both
    numbers exist, sorted by w; the run's own sampler counts as its ``guidance`` (default 0)."""
    own = (run.get("config") or {}).get("sampler") or {}
    by_sampler: dict[str, dict[str, float]] = {}
    for m in run["metrics"]:
        name = m["name"].partition("@")[0]
        if name not in ("fid", "sample_accuracy") or m["value"] is None:
            continue
        sampler = m["protocol"].get("sampler", own)
        key = repr(sorted(sampler.items()))
        entry = by_sampler.setdefault(key, {"w": float(sampler.get("guidance", 0.0) or 0.0)})
        entry[name] = float(m["value"])
    pts = [(e["w"], e["sample_accuracy"], e["fid"]) for e in by_sampler.values() if len(e) == 3]
    return sorted(pts)


def figure_guidance(sections: Sequence[Section]) -> Figure | None:
    """FID vs sample accuracy per conditional image section, a line per run with a guidance
    sweep (runs scored at one scale are single points)."""
    from genbench.leaderboard.plots import _color, _family_legend, _panels

    panels = []
    for sec in sections:
        curves = [
            (r, pts) for r in sec.rows if not r.published for pts in [guidance_points(r.run)] if pts
        ]
        if not sec.toy and any(len(pts) > 1 for _, pts in curves):
            panels.append((sec, curves))
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    for ax, (sec, curves) in zip(axes, panels, strict=True):
        for r, pts in curves:
            _, acc, fid = zip(*pts)
            color = _color(r.run["family"])
            ax.plot(acc, fid, marker="o", ms=4, color=color, lw=1.5 if len(pts) > 1 else 0)
            for w, x, y in pts:
                ax.annotate(
                    f"w={w:g}", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6
                )
            w, x, y = pts[0]
            ax.annotate(
                r.run["model"], (x, y), xytext=(3, -9), textcoords="offset points", fontsize=7
            )
        fid_name = next(
            (
                m["name"]
                for r, _ in curves
                for m in r.run["metrics"]
                if m["name"].startswith("fid@")
            ),
            "FID",
        )
        ax.set(
            xlabel="sample accuracy (domain classifier)",
            ylabel=fid_name,
            title=f"{sec.title}: classifier-free guidance",
        )
        ax.grid(alpha=0.3)
        _family_legend(ax, [r.run["family"] for r, _ in curves])
    return fig
