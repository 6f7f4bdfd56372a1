"""``genbench leaderboard format=html out=report.html``: one self-contained page.

Everything is inline (CSS in a ``<style>`` element, every image a base64 ``data:`` URI), so the
file opens in a browser from disk, with no server and nothing fetched. The page holds the
leaderboard sections (with their protocols and notes; in bold, the best entry of each metric
column and every entry within the 95 % interval of the best; floor and published rows apart), the
plots of :mod:`genbench.leaderboard.plots` and each run's ``samples.png``.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from genbench.files import atomic_write
from genbench.leaderboard import plots
from genbench.leaderboard.sections import Section, View, build_sections
from genbench.rundir import RunDir

Run = dict[str, Any]
BEST = ' class="best"'  # best, or within the 95 % interval of the best
MAX_SAMPLE_BYTES = 4_000_000  # larger samples.png files are linked to, not inlined
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px;
       color: #1d1d1f; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px; }
h3 { font-size: 16px; margin: 20px 0 6px; }
.meta, .notes, .empty, figcaption { color: #555; }
nav a { margin-right: 14px; }
table { border-collapse: collapse; margin: 6px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 7px; border-bottom: 1px solid #e3e3e3; text-align: right;
         white-space: nowrap; }
th { background: #f4f4f6; position: sticky; top: 0; vertical-align: bottom; }
th .sub { font-weight: 400; font-size: 11px; color: #666; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
tr.ref td { font-style: italic; color: #555; background: #fafaf4; }
tr.first-ref td, tr.first-floor td { border-top: 2px solid #bbb; }
tr.floor td { font-style: italic; color: #555; background: #f4f8fb; }
td.best { font-weight: 700; }
.scroll { overflow-x: auto; }
.notes { margin: 4px 0 0 0; padding-left: 18px; font-size: 12.5px; }
figure { margin: 12px 0 24px; } figure img { max-width: 100%; border: 1px solid #eee; }
.gallery { display: flex; flex-wrap: wrap; gap: 16px; }
.gallery figure { margin: 0; width: 260px; }
.gallery img { width: 100%; image-rendering: pixelated; }
"""


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def section_html(sec: Section) -> str:
    """One leaderboard section as a ``<table>`` with its notes: runs, then the floor rows, then
    published results; cells tied for first (``Cell.best``) in bold."""
    head = "".join(_header(t) for t, _ in sec.columns)
    body = []
    for block, name in ((sec.rows, ""), (sec.floors, "floor"), (sec.refs, "ref")):
        for i, row in enumerate(block):
            classes = [name, f"first-{name}"] if name and i == 0 else [name]
            cls = f' class="{" ".join(classes)}"' if name else ""
            cells = (row.cells[k] for _, k in sec.columns)
            tds = [f"<td{BEST if c.best else ''}>{escape(c.text())}</td>" for c in cells]
            body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    notes = "".join(f"<li>{escape(n)}</li>" for n in sec.notes)
    return (
        f'<h2 id="{escape(_anchor(sec))}">{escape(sec.title)}</h2>\n<div class="scroll">'
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f'</div>\n<ul class="notes">{notes}</ul>'
    )


def _header(title: str) -> str:
    """``FID@digits-cnn`` as ``FID`` over a small ``@digits-cnn``."""
    name, at, extractor = title.partition("@")
    sub = f'<br><span class="sub">@{escape(extractor)}</span>' if at else ""
    return f"<th>{escape(name)}{sub}</th>"


def _anchor(sec: Section) -> str:
    return "sec-" + "".join(ch if ch.isalnum() else "-" for ch in sec.title).strip("-")


def plots_html(runs: Sequence[Run], sections: Sequence[Section]) -> str:
    """Every plot as an inline PNG, or the reason it is missing (the sample montage is left to
    :func:`samples_html`, which inlines the original files)."""
    parts = ['<h2 id="plots">Plots</h2>']
    for name, (_, _, reason) in plots.PLOTS.items():
        if name == "grid":
            continue
        fig = plots.figure(name, runs, sections)
        title = name.replace("_", " ")
        if fig is None:
            parts.append(f'<h3>{escape(title)}</h3><p class="empty">{escape(reason)}.</p>')
            continue
        parts.append(
            f'<h3>{escape(title)}</h3><figure><img alt="{escape(name)} plot" '
            f'src="{data_uri(plots.png_bytes(fig))}"></figure>'
        )
    return "\n".join(parts)


def samples_html(runs: Sequence[Run]) -> str:
    """Each run's ``samples.png`` (inline), grouped by dataset."""
    parts = ['<h2 id="samples">Samples</h2>']
    found = False
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        items = []
        for run in sorted((r for r in runs if r["dataset"] == dataset), key=lambda r: r["model"]):
            path = RunDir(run.get("run_dir") or "").samples_png
            if not run.get("run_dir") or not path.is_file():
                continue
            label = escape(plots.run_label(run))
            if path.stat().st_size > MAX_SAMPLE_BYTES:
                items.append(
                    f'<figure><figcaption>{label}: <a href="{escape(path.as_uri())}">'
                    "samples.png</a> (too large to inline)</figcaption></figure>"
                )
                continue
            items.append(
                f'<figure><img alt="samples of {label}" '
                f'src="{data_uri(path.read_bytes())}"><figcaption>{label}'
                f"</figcaption></figure>"
            )
        if items:
            found = True
            parts.append(f'<h3>{escape(dataset)}</h3><div class="gallery">{"".join(items)}</div>')
    if not found:
        parts.append('<p class="empty">No run folder has a samples.png.</p>')
    return "\n".join(parts)


def html_report(
    runs: Sequence[Run],
    view: View | None = None,
    references: Sequence[Run] = (),
    title: str = "genbench leaderboard",
) -> str:
    """The whole page as a string (``view`` default: :class:`View` ())."""
    view = view or View()
    sections = build_sections(runs, view, references)
    plain = build_sections(runs, View(refs=False))
    nav = "".join(f'<a href="#{escape(_anchor(s))}">{escape(s.title)}</a>' for s in sections)
    nav += '<a href="#plots">plots</a><a href="#samples">samples</a>'
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    options = ", ".join(f"{k}={v}" for k, v in vars(view).items())
    tables = "\n".join(section_html(s) for s in sections) or '<p class="empty">No runs.</p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="meta">{len(runs)} runs · {len(references)} published results · generated {stamp}
 · {escape(options)}</p>
<nav>{nav}</nav>
{tables}
{plots_html(runs, plain)}
{samples_html(runs)}
</body></html>
"""


def write_report(
    runs: Sequence[Run], path: Path | str, view: View | None = None, references: Sequence[Run] = ()
) -> Path:
    """Write the self-contained HTML report to ``path``."""
    atomic_write(Path(path), html_report(runs, view, references), what="report")
    return Path(path)
