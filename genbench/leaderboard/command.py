"""``genbench leaderboard`` (show, export, plot, rebuild) and ``genbench families``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from genbench.errors import ConfigError, bad_value
from genbench.eval.metric import Metric
from genbench.files import FileError, atomic_write
from genbench.leaderboard.report import render
from genbench.leaderboard.sections import View, sort_keys
from genbench.leaderboard.store import RunRecord, Store, StoreError
from genbench.output import check_out_file, check_out_folder
from genbench.rundir import run_dirs, run_id_of

log = logging.getLogger(__name__)
FORMATS = ("table", "md", "csv", "json", "html")
PLOT_CHOICES = (
    "pareto", "bpd_params", "fid_nfe", "guidance", "budget", "settings", "loss", "grid", "all",
)  # fmt: skip


def dataset_name(cfg: DictConfig) -> str | None:
    """The ``dataset=NAME`` filter: a conf/dataset group choice (or a plain string)."""
    node = cfg.get("dataset")
    if node is None or isinstance(node, str):
        return node
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices["dataset"])
    except (ValueError, KeyError):
        raise ConfigError("dataset= must name a conf/dataset entry") from None


def _filtered(cfg: DictConfig, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for key, want in (("dataset", dataset_name(cfg)), ("family", cfg.get("family"))):
        if want is not None:
            runs = [r for r in runs if r[key] == str(want)]
    return runs


def _flag(cfg: DictConfig, key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise bad_value(key, value, "true or false")
    return value


def view_from(cfg: DictConfig) -> View:
    """The :class:`View` of ``sort`` / ``best`` / ``agg`` / ``refs`` (validated)."""
    sort = cfg.get("sort")
    view = View(
        sort=None if sort is None else str(sort),
        best=_flag(cfg, "best", False),
        agg=_flag(cfg, "agg", False),
        refs=_flag(cfg, "refs", True),
    )
    sort_keys(view, toy=False)  # raises ConfigError for an unknown metric
    return view


def _plot_names(value: Any) -> list[str]:
    items = list(value) if isinstance(value, list | tuple | ListConfig) else str(value).split(",")
    names = [str(v).strip() for v in items]
    for name in names:
        if name not in PLOT_CHOICES:
            raise bad_value("plot", value, f"one of {PLOT_CHOICES} or a list such as [pareto,loss]")
    return list(PLOT_CHOICES[:-1]) if "all" in names else names


def leaderboard_command(cfg: DictConfig) -> str | None:
    """Print (or write to ``out``) every recorded run, grouped by dataset and protocol; with
    ``plot=...`` write plots under ``out`` (a folder)."""
    outputs = Path(cfg.paths.outputs)
    store = Store(outputs / "leaderboard.sqlite")
    if cfg.action == "rebuild":
        return str(rebuild(store, outputs))
    if cfg.action != "show":
        raise ConfigError(f"action={cfg.action!r} is invalid: expected show or rebuild")
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is invalid: expected one of {FORMATS}")
    view = view_from(cfg)
    plot = cfg.get("plot")
    names = _plot_names(plot) if plot is not None else []
    runs = _filtered(cfg, store.runs())
    if not runs:
        log.warning(
            "no recorded runs match dataset=%s family=%s", dataset_name(cfg), cfg.get("family")
        )
    if names:
        from genbench.leaderboard.plots import write_plots

        out_dir = check_out_folder(cfg.out if cfg.out is not None else outputs / "plots")
        written = write_plots(runs, names, out_dir)
        for path in written.values():
            print(path)
        return "\n".join(str(p) for p in written.values())
    refs = _references(cfg, view, runs)
    if cfg.format == "html":
        from genbench.leaderboard.html import write_report

        path = write_report(runs, check_out_file(cfg.out or outputs / "report.html"), view, refs)
        log.info("wrote %d runs to %s", len(runs), path)
        print(path)
        return str(path)
    out = check_out_file(cfg.out) if cfg.out is not None else None
    fmt = str(cfg.format) if out is None or cfg.format != "table" else "md"
    text = render(runs, fmt, view, refs)
    if out is not None:
        atomic_write(out, text or "", what="leaderboard export")
        log.info("wrote %d runs to %s", len(runs), out)
    elif text is not None:
        print(text)
    return text


def _references(cfg: DictConfig, view: View, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Published results for the datasets of ``runs`` (none with ``refs=false``)."""
    if not view.refs:
        return []
    from genbench.leaderboard.references import reference_runs

    family = cfg.get("family")
    return reference_runs({r["dataset"] for r in runs}, None if family is None else str(family))


def rebuild(store: Store, outputs: Path) -> int:
    """Make the leaderboard equal the run folders under ``outputs/runs`` (the source of truth):
    every readable run is (re-)indexed under the id of where its folder is now (a copied folder
    is a run of its own), and runs whose folder is gone or unreadable drop out, each named in a
    warning. A damaged file never stops the rebuild. Returns the number of runs indexed."""
    runs_dir = outputs / "runs"
    if not runs_dir.is_dir():
        raise StoreError(f"no run folders under {str(runs_dir)!r}")
    kept: set[str] = set()
    for run in run_dirs(outputs):
        if not run.metrics_file.exists():
            continue  # still training, or killed before its first record
        run_id = run_id_of(run, outputs)
        try:
            rec = RunRecord.from_dict(
                run.read_record(), run_id=run_id, run_dir=str(run.path.resolve())
            )
            rows = [Metric.from_dict(m) for m in run.read_metrics()]
        except (FileError, ValueError) as err:
            log.warning("skipping %s: %s", run.path, err)
            continue
        try:
            curve = run.read_curve()
        except FileError as err:  # the final metrics still stand
            log.warning("indexing %s without its anytime curve: %s", run.path, err)
            curve = []
        store.record(rec, rows, curve)
        kept.add(run_id)
    for run_id, run_dir in store.forget(kept):
        log.warning(
            "dropped %s from the leaderboard: its run folder %s is gone or unreadable",
            run_id,
            run_dir,
        )
    log.info("re-indexed %d runs into %s", len(kept), store.path)
    return len(kept)


def families_command(cfg: DictConfig) -> None:
    """Print the taxonomy of families, the registered models and, when a leaderboard exists,
    the trade-offs measured in it."""
    from genbench.leaderboard.families import print_families

    print_families(cfg)
