"""The taxonomy behind genbench, with the models registered under ``conf/model``."""

from __future__ import annotations

import importlib
import importlib.resources
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

#: family -> (taxonomy class, likelihood it offers, sampling cost class)
TAXONOMY: dict[str, tuple[str, str, str]] = {
    "autoregressive": ("explicit, tractable density", "exact NLL", "D sequential network calls"),
    "flow": ("explicit, tractable density", "exact density of dequantized data (≤ discrete NLL)",
             "1 network call"),
    "vae": ("explicit, approximate density", "ELBO / IWAE bound (≤)", "1 network call"),
    "gan": ("implicit density", "none", "1 network call"),
    "diffusion": ("explicit, approximate density", "variational bound (≤); ODE estimate (≈)",
                  "T (or fewer with DDIM / ODE) network calls"),
}


def registered_models() -> dict[str, type]:
    """``{name: class}`` for every ``conf/model/<name>.yaml``."""
    out = {}
    root = importlib.resources.files("genbench.conf") / "model"
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yaml"):
            continue
        target = yaml.safe_load(entry.read_text())["_target_"]
        module, _, cls = target.rpartition(".")
        out[entry.name[:-5]] = getattr(importlib.import_module(module), cls)
    return out


def print_families(cfg: Any = None) -> None:
    models = registered_models()
    t = Table(title="[bold]genbench families", title_justify="left")
    for col in ("family", "class", "likelihood", "sampling cost", "models"):
        t.add_column(col)
    for fam, (klass, lik, cost) in TAXONOMY.items():
        names = ", ".join(n for n, c in models.items() if c.family == fam) or "–"
        t.add_row(fam, klass, lik, cost, names)
    Console().print(t)
