"""``genbench leaderboard`` (show, export, rebuild) and ``genbench families``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genbench.errors import ConfigError
from genbench.eval.metric import Metric
from genbench.leaderboard.report import render
from genbench.leaderboard.store import RunRecord, Store, StoreError

log = logging.getLogger(__name__)
FORMATS = ("table", "md", "csv", "json")


def _filtered(cfg: DictConfig, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for key in ("dataset", "family"):
        want = cfg.get(key)
        if want is not None:
            runs = [r for r in runs if r[key] == str(want)]
    return runs


def leaderboard_command(cfg: DictConfig) -> str | None:
    """Print (or write to ``out``) every recorded run, grouped by dataset."""
    store = Store(Path(cfg.paths.outputs) / "leaderboard.sqlite")
    if cfg.action == "rebuild":
        return str(rebuild(store, Path(cfg.paths.outputs) / "runs"))
    if cfg.action != "show":
        raise ConfigError(f"action={cfg.action!r} is invalid: expected show or rebuild")
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is invalid: expected one of {FORMATS}")
    runs = _filtered(cfg, store.runs())
    text = render(runs, str(cfg.format) if cfg.out is None or cfg.format != "table" else "md")
    if cfg.out is not None:
        Path(cfg.out).write_text(text or "")
        log.info("wrote %d runs to %s", len(runs), cfg.out)
    elif text is not None:
        print(text)
    return text


def rebuild(store: Store, runs_dir: Path) -> int:
    """Re-index every run folder under ``runs_dir`` (folders are the source of truth)."""
    count = 0
    for metrics_file in sorted(runs_dir.rglob("metrics.json")):
        run_dir = metrics_file.parent
        try:
            saved = json.loads(metrics_file.read_text())
            rec = json.loads((run_dir / "record.json").read_text())
        except (OSError, ValueError) as err:
            log.warning("skipping %s: %s", run_dir, err)
            continue
        rows = [Metric(**m) for m in saved["metrics"]]
        store.record(RunRecord(**rec), rows)
        count += 1
    if count == 0 and not runs_dir.exists():
        raise StoreError(f"no run folders under {str(runs_dir)!r}")
    log.info("re-indexed %d runs into %s", count, store.path)
    return count


def families_command(cfg: DictConfig) -> None:
    """Print the taxonomy of families and the models registered under conf/model."""
    from genbench.leaderboard.families import print_families

    print_families(cfg)
