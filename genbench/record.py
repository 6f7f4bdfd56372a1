"""What a run leaves in the leaderboard: its record (model, family, budget, versions) and metric
rows, written to the run folder and indexed in ``outputs/leaderboard.sqlite``."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import genbench
from genbench.errors import ConfigError
from genbench.eval.metric import CurvePoint, Metric
from genbench.leaderboard.store import RunRecord, Store
from genbench.models.base import GenerativeModel
from genbench.rundir import RunDir, run_id_of
from genbench.train.budget import budget_of

#: packages whose versions can change a run's numbers (recorded with every run)
_PACKAGES = ("numpy", "torchvision", "torch-fidelity", "torchmetrics", "hydra-core", "omegaconf")


def versions(model: type | None = None) -> dict[str, str]:
    """genbench, Python and package versions, the version of the plugin package that registers
    ``model`` (when one does), and the git commit (with ``git_dirty`` when the work tree has
    uncommitted changes) when genbench runs from a checkout."""
    out = {
        "genbench": genbench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if model is not None:
        out.update(_plugin_version(model))
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        where = Path(genbench.__file__).parent
        git = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            cwd=where,
            timeout=5,
        )
        top, _, commit = git.stdout.strip().partition("\n")
        # only genbench's own checkout (not a repository that merely contains an installed copy)
        if git.returncode == 0 and Path(top).resolve() == where.parent.resolve():
            out["git_commit"] = commit
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                cwd=where,
                timeout=5,
            )
            out["git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _plugin_version(model: type) -> dict[str, str]:
    """``{distribution: version}`` of the installed plugin that registers ``model`` (or {})."""
    from genbench.plugins import plugin_models, plugin_source

    for name, cls in plugin_models().items():
        if cls is model and (source := plugin_source(name)):
            dist, _, version = source.partition(" ")
            return {dist: version}
    return {}


def open_store(outputs: Path) -> Store:
    """The leaderboard under ``outputs``, once the folder is known to be writable and an existing
    leaderboard readable (a corrupt or foreign file fails before training, not after)."""
    try:
        outputs.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=outputs).close()
    except OSError as err:
        raise ConfigError(
            f"paths.outputs={str(outputs)!r} is not a writable folder ({err.strerror or err})"
        ) from None
    store = Store(outputs / "leaderboard.sqlite")
    if store.path.exists():
        store.runs()
    return store


def _budget(cfg: dict[str, Any]) -> str:
    """The run's ``trainer.budget``, normalized (``steps:<max_steps>`` for a config written
    before budgets existed; "" for one without a valid trainer block)."""
    try:
        return str(budget_of(cfg["trainer"]))
    except (KeyError, TypeError, ValueError, ConfigError):
        return ""


def record(
    cfg: dict[str, Any],
    run: RunDir,
    outputs: Path,
    model: GenerativeModel,
    state: Any,
    device: str,
    rows: list[Metric],
    hash_: str,
    tuning: dict[str, Any] | None = None,
) -> RunRecord:
    """Write ``metrics.json``, ``curve.json`` (the anytime curve in ``state.curve``, when it
    has points) and ``record.json`` into the run folder and index the run in
    ``outputs/leaderboard.sqlite``; ``tuning`` is the run's tuning record (see
    :func:`genbench.tuning.tuning_record`)."""
    run_id = run_id_of(run, outputs)
    curve = [CurvePoint.from_dict(p) for p in getattr(state, "curve", None) or []]
    run.write_metrics(run_id, state.status, [m.to_dict() for m in rows])
    if curve or run.curve_file.exists():
        run.write_curve(curve)
    rec = RunRecord(
        run_id=run_id,
        created=run.created().isoformat(timespec="seconds"),
        model=str(cfg["run"]["model"]),
        family=type(model).family,
        likelihood=type(model).likelihood,
        dataset=str(cfg["run"]["dataset"]),
        params=sum(p.numel() for p in model.parameters()),
        steps=state.step,
        images_seen=state.images_seen,
        train_seconds=round(state.train_seconds, 3),
        device=device,
        status=state.status,
        run_dir=str(run.path.resolve()),
        config_hash=hash_,
        config=cfg,
        versions=versions(type(model)),
        budget=_budget(cfg),
        train_flops=float(getattr(state, "train_flops", 0.0)),
        tuning=dict(tuning or {}),
    )
    run.write_record(asdict(rec))
    Store(outputs / "leaderboard.sqlite").record(rec, rows, curve)
    return rec
