"""``genbench families``: the taxonomy behind genbench, the models registered under
``conf/model`` and, when a leaderboard exists, the trade-offs measured in it.

The taxonomy (explicit tractable density, explicit approximate density, implicit density) decides
what a family can report: an exact NLL, an upper bound (``≤``), an estimate (``≈``) or no
likelihood at all, and how many network calls one sample costs.
"""

from __future__ import annotations

import importlib
import importlib.resources
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from genbench.leaderboard.sections import (
    Cell,
    Row,
    Section,
    View,
    build_sections,
    key_spec,
    lower_first,
)

#: family -> (taxonomy class, likelihood it offers, sampling cost class)
TAXONOMY: dict[str, tuple[str, str, str]] = {
    "autoregressive": ("explicit, tractable density", "exact NLL", "D sequential network calls"),
    "flow": (
        "explicit, tractable density (discrete flows, and continuous ones: flow matching is a "
        "continuous normalizing flow - an invertible ODE map from noise to data with a density by "
        "the change of variables - trained by regressing its velocity field instead of by "
        "maximum likelihood)",
        "exact density of dequantized data (≤ discrete NLL); ODE estimate (≈) for continuous flows",
        "1 network call (discrete); one per ODE solver step (continuous)",
    ),
    "vae": ("explicit, approximate density", "ELBO / IWAE bound (≤)", "1 network call"),
    "gan": ("implicit density", "none", "1 network call"),
    "diffusion": (
        "explicit, approximate density (denoiser = score of noisy data)",
        "variational bound (≤); probability-flow ODE estimate (≈)",
        "T (fewer with DDIM / ODE; EDM's Heun: 2 steps - 1) network calls",
    ),
}


def registered_models() -> dict[str, type]:
    """``{name: class}`` for every ``conf/model/<name>.yaml`` and every model an installed
    plugin registers (:mod:`genbench.plugins`)."""
    out = {}
    root = importlib.resources.files("genbench.conf") / "model"
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yaml"):
            continue
        target = yaml.safe_load(entry.read_text())["_target_"]
        module, _, cls = target.rpartition(".")
        out[entry.name[:-5]] = getattr(importlib.import_module(module), cls)
    from genbench.plugins import plugin_models

    return out | {name: cls for name, cls in plugin_models().items() if name not in out}


def taxonomy_table(models: dict[str, type]) -> Table:
    """Families with their class, likelihood kind, sampling cost and registered models."""
    t = Table(title=Text("genbench families", style="bold"), title_justify="left")
    for col in ("family", "class", "likelihood", "sampling cost", "models"):
        t.add_column(col)
    for fam, (klass, lik, cost) in TAXONOMY.items():
        names = ", ".join(n for n, c in models.items() if c.family == fam) or "–"
        t.add_row(fam, klass, lik, cost, names)
    return t


def models_table(models: dict[str, type]) -> Table:
    """Every registered model with its family, likelihood kind (``≤`` a bound, ``≈`` an
    estimate), whether it has a conditional mode (``model.conditional=true``), class and the
    package it comes from (genbench or an installed plugin)."""
    from genbench.models.base import likelihood_kind
    from genbench.plugins import plugin_source, target_name

    marks = {"bound": " (≤)", "estimate": " (≈)"}
    own = importlib.resources.files("genbench.conf") / "model"
    t = Table(title=Text("registered models", style="bold"), title_justify="left")
    for col in ("model", "family", "likelihood", "conditional", "class", "from"):
        t.add_column(col)
    for name, cls in sorted(
        models.items(),
        key=lambda kv: (
            list(TAXONOMY).index(kv[1].family) if kv[1].family in TAXONOMY else 99,
            kv[0],
        ),
    ):
        kind = cls.likelihood + marks.get(likelihood_kind(cls.likelihood), "")
        source = "genbench" if (own / f"{name}.yaml").is_file() else plugin_source(name) or "?"
        cond = "yes" if getattr(cls, "conditional_support", False) else "–"
        t.add_row(name, cls.family, kind, cond, target_name(cls), source)
    return t


def _best(rows: Sequence[Row], key: str) -> str:
    """``value (model)`` of the best row on ``key``, ``–`` when none has it."""
    have = [r for r in rows if not r.cells[key].missing]
    if not have:
        return "n/a" if rows and all(r.cells[key].label == "n/a" for r in rows) else "–"
    sign = 1.0 if lower_first(key) else -1.0
    top = min(have, key=lambda r: sign * r.cells[key].value)
    return f"{top.cells[key].text()} ({top.run['model']})"


def _median(rows: Sequence[Row], key: str) -> str:
    vals = [r.cells[key].value for r in rows if not r.cells[key].missing]
    if not vals:
        return "–"
    mid = statistics.median(vals)
    integer = (spec := key_spec(key)) is not None and spec.integer and mid == int(mid)
    return Cell(mid, integer=integer).text()


def tradeoff_rows(sections: Sequence[Section]) -> list[dict[str, str]]:
    """Per section (dataset × sample protocol) and family: runs, best bits/dim, best FID (on toy
    data: best share of high-quality samples), median ms/image and NFE."""
    out = []
    for sec in sections:
        quality = "high_quality_share" if sec.toy else "fid@"
        title = next(t for t, k in sec.columns if k == quality)
        for fam in TAXONOMY:
            rows = [r for r in sec.rows if r.run["family"] == fam]
            if not rows:
                continue
            out.append(
                {
                    "section": sec.title,
                    "family": fam,
                    "runs": str(len(rows)),
                    "best bits/dim": _best(rows, "bpd"),
                    "best quality": f"{title}: {_best(rows, quality)}",
                    "median ms/img": _median(rows, "ms_per_image"),
                    "median NFE": _median(rows, "nfe"),
                }
            )
    return out


def tradeoff_table(runs: Sequence[dict[str, Any]]) -> Table | None:
    """The trade-offs between families measured in the leaderboard, or None without runs."""
    rows = tradeoff_rows(build_sections(runs, View(refs=False)))
    if not rows:
        return None
    t = Table(
        title=Text("measured in the leaderboard", style="bold"),
        title_justify="left",
        caption=Text(
            "best bits/dim (≤ bound) and best sample quality per family, with "
            "the run that reached it; sections never mix sample protocols"
        ),
        caption_justify="left",
    )
    for col in (
        "dataset",
        "family",
        "runs",
        "best bits/dim",
        "best sample quality",
        "median ms/img",
        "median NFE",
    ):
        t.add_column(col, justify="left" if col in ("dataset", "family") else "right")
    for r in rows:
        t.add_row(
            *(
                Text(r[k])
                for k in (
                    "section",
                    "family",
                    "runs",
                    "best bits/dim",
                    "best quality",
                    "median ms/img",
                    "median NFE",
                )
            )
        )
    return t


def _runs(cfg: Any) -> list[dict[str, Any]]:
    """Runs of the leaderboard under ``cfg.paths.outputs`` (none when there is none)."""
    from genbench.leaderboard.store import Store, StoreError

    if cfg is None or "paths" not in cfg:
        return []
    path = Path(cfg.paths.outputs) / "leaderboard.sqlite"
    if not path.exists():
        return []
    try:
        return Store(path).runs()
    except StoreError:
        return []


def print_families(cfg: Any = None) -> None:
    """Print the taxonomy and, when a leaderboard exists, the measured trade-offs."""
    console = Console() if Console().is_terminal else Console(width=200)
    models = registered_models()
    console.print(taxonomy_table(models))
    console.print(models_table(models))
    table = tradeoff_table(_runs(cfg))
    if table is not None:
        console.print(table)
