"""Leaderboard views rendered as a rich table, Markdown, CSV or JSON (sections built by
:mod:`genbench.leaderboard.sections`), and one run's metrics as a table."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from genbench.eval.metric import Metric
from genbench.leaderboard.sections import (
    TEXT_FIELDS,
    Cell,
    Run,
    Section,
    View,
    build_sections,
    columns,
    fmt_number,
    key_spec,
    pick,
)
from genbench.output import strict_json


def table_rows(sections: Sequence[Section]) -> list[dict[str, Any]]:
    """One flat dict per row (runs, floors, then published results): raw values, None when
    missing, keyed by the titles of :func:`~genbench.leaderboard.sections.columns` (``FID``; the
    extractor has its own key), plus the kind of each bits/dim number, the 95 % interval
    (``<title> lo`` / ``<title> hi``), the tie mark of each ranked metric (``<title> best``: best
    or within the 95 % interval of the best), the floor (``data`` / ``uniform``), the settings
    that tell a sweep's rows of one model apart (``{"model.augment": "ada"}``) and provenance."""
    out = []
    cols = [(title, key, key_spec(key)) for title, key in columns()]
    for sec in sections:
        for row in sec.rows + sec.floors + sec.refs:
            run = row.run
            d: dict[str, Any] = {
                "dataset": sec.dataset,
                "section": "; ".join(p for p in (sec.protocol, sec.likelihood) if p) or None,
                "run_id": run["run_id"],
                "published": row.published,
                "floor": (run.get("floor") or "data") if row.floor else None,
            }
            for title, key, spec in cols:
                c = row.cells[key]
                d[title] = run.get(key) if key in TEXT_FIELDS else _raw(c)
                if spec is not None and spec.unit == "bits/dim" and not c.missing:
                    d[f"{title} kind"] = c.kind
                if c.lo is not None and not c.exact_int:
                    d[f"{title} lo"], d[f"{title} hi"] = c.lo, c.hi
                if spec is not None and spec.lower_is_better is not None and not c.missing:
                    d[f"{title} best"] = c.best
            fid = pick(run, "fid@") or pick(run, "is@")
            d["extractor"] = fid["name"].partition("@")[2] if fid else None
            d["modes_total"] = (pick(run, "modes_total") or {}).get("value")
            d["sampler"] = (run.get("config") or {}).get("sampler")
            d["settings"] = dict(row.settings)  # what tells apart the rows of a sweep
            if "seeds" in row.cells:
                d["seeds"] = len(row.runs)
                d["run_ids"] = [r["run_id"] for r in row.runs]
            if row.published:
                d["source"], d["notes"] = run.get("source"), run.get("notes")
            out.append(d)
    return out


def _raw(c: Cell) -> float | int | None:
    """A cell's number for JSON / CSV: None when missing (or NaN), int for counts."""
    integral = not c.missing and c.exact_int and c.value == int(c.value)
    return None if c.missing else int(c.value) if integral else c.value


def render(
    runs: Sequence[Run], fmt: str = "table", view: View = View(), references: Sequence[Run] = ()
) -> str | None:
    """Render ``runs`` as ``table`` (printed, returns None), ``md``, ``csv`` or ``json``."""
    sections = build_sections(runs, view, references)
    if fmt == "json":
        return strict_json(table_rows(sections), indent=1)
    if fmt == "csv":
        rows, buf = table_rows(sections), io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(
            {
                k: "" if v is None else json.dumps(v) if isinstance(v, dict | list) else v
                for k, v in r.items()
            }
            for r in rows
        )
        return buf.getvalue()
    if fmt == "md":
        return markdown(sections)
    console = _console()
    for sec in sections:
        t = Table(
            title=Text(sec.title, style="bold"),
            title_justify="left",
            caption=Text("\n".join(sec.notes)),
            caption_justify="left",
        )
        for title, _ in sec.columns:
            t.add_column(
                title,
                justify="left" if title in ("model", "family") else "right",
                no_wrap=title == "model",
            )
        blocks = [sec.rows, sec.floors, sec.refs]  # floors and published rows: blocks apart
        for b, block in enumerate(blocks):
            for i, row in enumerate(block):
                t.add_row(
                    *(
                        Text(c.text(), style="bold" if c.best else "")
                        for c in (row.cells[k] for _, k in sec.columns)
                    ),
                    style="italic" if row.published or row.floor else None,
                    end_section=i == len(block) - 1 and any(blocks[b + 1 :]),
                )
        console.print(t)
    return None


def markdown(sections: Sequence[Section]) -> str:
    """Sections as Markdown tables (entries tied for first in bold), each with its protocol and
    notes below."""
    lines = []
    for sec in sections:
        titles = [t for t, _ in sec.columns]
        lines += [
            f"### {sec.title}",
            "",
            "| " + " | ".join(titles) + " |",
            "|" + "---|" * len(titles),
        ]
        lines += [
            "| " + " | ".join(_md_cell(r.cells[k]) for _, k in sec.columns) + " |"
            for r in sec.rows + sec.floors + sec.refs
        ]
        lines += [""] + [f"- {n}" for n in sec.notes] + [""]
    return "\n".join(lines)


def _md_cell(c: Cell) -> str:
    return f"**{c.text()}**" if c.best else c.text()


def print_metrics(run: Any, rows: Sequence[Metric]) -> None:
    """Print one run's metrics as a rich table."""
    t = Table(
        title=f"[bold]{run.model} on {run.dataset}[/] ({run.status}, {run.steps} steps, "
        f"{run.train_seconds:.0f} s)",
        title_justify="left",
    )
    for col in ("metric", "value", "unit", "split", "n"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for m in rows:
        t.add_row(m.name, fmt_number(m.value, m.kind), m.unit, m.split, str(m.n))
    console = _console()
    console.print(t)
    console.print(f"run folder: {run.run_dir}")


def _console() -> Console:
    """A console that does not squeeze wide tables when output is not a terminal."""
    c = Console()
    return c if c.is_terminal else Console(width=220)
