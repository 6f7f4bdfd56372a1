"""Leaderboard views: a rich table grouped by dataset, and Markdown / CSV / JSON exports.

Bounds print as ``≤ 1.23``, exact values plain, stochastic estimates as ``≈ 1.23``; a model without
a likelihood shows ``n/a``; a missing value is ``–``, never 0.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from genbench.eval.metric import Metric

#: (column title, metric name or run field); sample metrics are matched by prefix ``name@``
COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "model"), ("family", "family"), ("likelihood", "likelihood"),
    ("bits/dim", "bpd"), ("-ELBO bpd", "neg_elbo_bpd"), ("FID", "fid@"), ("IS", "is@"),
    ("KID", "kid@"), ("precision", "precision@"), ("recall", "recall@"),
    ("ms/img", "ms_per_image"), ("NFE", "nfe"), ("params", "params"), ("steps", "steps"),
    ("train s", "train_seconds"), ("device", "device"), ("status", "status"),
)
_PREFIX = {"bound": "≤ ", "estimate": "≈ ", "exact": "", "measured": ""}


def fmt_number(value: float | None, kind: str = "measured") -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000 or value == int(value) and abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}" if abs(value) < 0.01 else f"{value:.3f}"
    return _PREFIX.get(kind, "") + text


def _metric(run: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The run's metric ``key`` (or the first ``key*`` for sample metrics) at its own sampler."""
    ms = [m for m in run["metrics"] if (m["name"].startswith(key) if key.endswith("@")
                                        else m["name"] == key)]
    if not ms:
        return None
    sampler = run.get("config", {}).get("sampler") or {}
    same = [m for m in ms if m["protocol"].get("sampler", sampler) == sampler]
    return (same or ms)[0]


def cell(run: dict[str, Any], key: str) -> tuple[str, Any]:
    """(display text, raw value) of one table cell."""
    if key in ("model", "family", "likelihood", "device", "status"):
        return str(run.get(key, "–")), run.get(key)
    if key in ("params", "steps", "train_seconds"):
        v = run.get(key)
        return ("–" if v is None else fmt_number(float(v))), v
    m = _metric(run, key)
    if m is None:
        if key == "bpd" and run.get("likelihood") == "none":
            return "n/a", None
        return "–", None
    return fmt_number(m["value"], m["kind"]), m["value"]


def table_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per run: dataset, run_id and every column (raw values)."""
    out = []
    for r in runs:
        row = {"dataset": r["dataset"], "run_id": r["run_id"]}
        for title, key in COLUMNS:
            m = _metric(r, key) if key.endswith("@") else None
            row[m["name"] if m else title] = cell(r, key)[1]
        out.append(row)
    return out


def render(runs: Sequence[dict[str, Any]], fmt: str = "table") -> str | None:
    """Render ``runs`` as ``table`` (printed, returns None), ``md``, ``csv`` or ``json``."""
    if fmt == "json":
        return json.dumps(table_rows(runs), indent=1, default=str)
    if fmt == "csv":
        rows = table_rows(runs)
        buf = io.StringIO()
        keys = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    sections = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        group = [r for r in runs if r["dataset"] == dataset]
        titles = [_title(group, t, k) for t, k in COLUMNS]
        cells = [[cell(r, k)[0] for _, k in COLUMNS] for r in group]
        sections.append((dataset, titles, cells))
    if fmt == "md":
        lines = []
        for dataset, titles, cells in sections:
            lines += [f"### {dataset}", "", "| " + " | ".join(titles) + " |",
                      "|" + "---|" * len(titles)]
            lines += ["| " + " | ".join(c) + " |" for c in cells]
            lines.append("")
        return "\n".join(lines)
    console = _console()
    for dataset, titles, cells in sections:
        t = Table(title=f"[bold]{dataset}", title_justify="left")
        for title in titles:
            t.add_column(title, justify="left" if title in ("model", "family") else "right")
        for c in cells:
            t.add_row(*c)
        console.print(t)
    return None


def _title(runs: Sequence[dict[str, Any]], title: str, key: str) -> str:
    if not key.endswith("@"):
        return title
    names = {m["name"].split("@", 1)[1] for r in runs for m in r["metrics"]
             if m["name"].startswith(key)}
    return f"{title}@{'/'.join(sorted(names))}" if names else title


def print_metrics(run: Any, rows: Sequence[Metric]) -> None:
    """Print one run's metrics as a rich table."""
    t = Table(title=f"[bold]{run.model} on {run.dataset}[/] ({run.status}, {run.steps} steps, "
                    f"{run.train_seconds:.0f} s)", title_justify="left")
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
