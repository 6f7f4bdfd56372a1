"""The commands behind the CLI: train, eval and sample one run folder.

A run is a folder with ``config.yaml`` (resolved), ``status.json``, ``checkpoints/``,
``stats.jsonl``, ``metrics.json``, ``samples.png`` and ``train.log``; the leaderboard indexes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import platform
import random
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import genbench
from genbench.data.base import Data
from genbench.errors import ConfigError, UserError, bad_value, nonneg_float, positive_int
from genbench.eval.choices import EXTRACTOR_CHOICES, METRICS
from genbench.eval.metric import Metric
from genbench.leaderboard.store import RunRecord, Store
from genbench.models.base import GenerativeModel
from genbench.train import checkpoint
from genbench.train.device import DeviceSetup

log = logging.getLogger(__name__)
#: keys that do not change what a run computes (excluded from the config hash)
_HASH_EXCLUDE = ("paths", "logger", "run", "hydra", "expected")
SAFE_TARGETS = ("genbench.", "torch.optim.")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain, resolved containers."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that determines a run's result (not paths, logging or resume flags)."""
    c = {k: v for k, v in resolved(cfg).items() if k not in _HASH_EXCLUDE}
    for key in ("resume", "rerun"):
        c.get("trainer", {}).pop(key, None)
    for key in ("threads", "channels_last"):  # speed only (float rounding aside)
        c.get("device", {}).pop(key, None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_targets(node: Any, where: str = "") -> None:
    """Refuse any ``_target_`` outside genbench and torch.optim (configs read from run folders)."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(SAFE_TARGETS):
            raise ConfigError(f"{where}_target_={target!r} is not allowed: only genbench.* and "
                              "torch.optim.* targets can be instantiated")
        for k, v in node.items():
            check_targets(v, f"{where}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, f"{where}{i}.")


def _instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise ConfigError(f"could not build {key} from {node.get('_target_')}: "
                          f"{cause or err}") from None


def validate(cfg: DictConfig) -> None:
    """Check the values users type most, with errors that name the key."""
    t = cfg.trainer
    for key in ("max_steps", "batch_size", "eval_every", "ckpt_every", "log_every",
                "val_examples"):
        t[key] = positive_int(f"trainer.{key}", t[key])
    t.grad_clip = nonneg_float("trainer.grad_clip", t.grad_clip)
    t.warmup_steps = positive_int("trainer.warmup_steps", t.get("warmup_steps", 0), minimum=0)
    t.ema_decay = nonneg_float("trainer.ema_decay", t.ema_decay, maximum=0.99999999)
    if "lr" in cfg.optimizer:
        cfg.optimizer.lr = nonneg_float("optimizer.lr", cfg.optimizer.lr, positive=True)
    if str(t.resume) not in ("auto", "never"):
        raise ConfigError(f"trainer.resume={t.resume!r} is invalid: expected auto or never")
    _validate_eval(cfg.eval)
    cfg.seed = positive_int("seed", cfg.seed, minimum=0)
    if not isinstance(cfg.device.get("compile", False), bool):
        raise bad_value("device.compile", cfg.device.compile, "true or false")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} has no value: set it on the command line, e.g. "
                          f"{missing[0]}=...")


def _validate_eval(e: DictConfig) -> None:
    """``eval.*`` values, checked before training rather than after it."""
    positive_int("eval.n_samples", e.n_samples, minimum=0)
    for key in ("batch_size", "grid", "kid_subset_size", "isc_splits"):
        positive_int(f"eval.{key}", e[key])
    positive_int("eval.seed", e.seed, minimum=0)
    for key in ("nll_examples", "n_reference"):
        if e.get(key) is not None:
            positive_int(f"eval.{key}", e[key])
    for steps in e.get("sampler_sweep") or []:
        positive_int("eval.sampler_sweep", steps)
    if str(e.get("reference_split", "test")) not in ("train", "val", "test"):
        raise bad_value("eval.reference_split", e.reference_split, "train, val or test")
    if str(e.get("extractor", "auto")) not in EXTRACTOR_CHOICES:
        raise bad_value("eval.extractor", e.extractor, f"one of {', '.join(EXTRACTOR_CHOICES)}")
    if any(str(m) not in METRICS for m in e.get("metrics") or []):
        raise bad_value("eval.metrics", list(e.metrics), f"a subset of {list(METRICS)}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(cfg: DictConfig, setup: DeviceSetup) -> tuple[Data, GenerativeModel]:
    """The dataset (on the training device) and the model built for its shape and levels."""
    data: Data = _instantiate(cfg.dataset, "dataset")
    model = _instantiate(cfg.model, "model", shape=data.shape, levels=data.levels)
    if not isinstance(model, GenerativeModel):
        raise ConfigError(f"model._target_={cfg.model._target_!r} is not a GenerativeModel")
    return data.to(setup.device), setup.place_model(model, data.shape)


#: packages whose versions can change a run's numbers (recorded with every run)
_PACKAGES = ("numpy", "torchvision", "torch-fidelity", "torchmetrics", "hydra-core", "omegaconf")


def versions() -> dict[str, str]:
    """genbench, Python and package versions, and the git commit (with ``git_dirty`` when the work
    tree has uncommitted changes) when genbench runs from a checkout."""
    out = {"genbench": genbench.__version__, "python": platform.python_version(),
           "torch": torch.__version__}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        where = Path(genbench.__file__).parent
        git = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, cwd=where, timeout=5)
        top, _, commit = git.stdout.strip().partition("\n")
        # only genbench's own checkout (not a repository that merely contains an installed copy)
        if git.returncode == 0 and Path(top).resolve() == where.parent.resolve():
            out["git_commit"] = commit
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, cwd=where, timeout=5)
            out["git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def find_resumable(outputs: Path, hash_: str) -> Path | None:
    """The newest run folder under ``outputs/runs`` with this config hash that is unfinished, or
    finished but missing from the leaderboard (stopped while evaluating or recording)."""
    found, recorded = [], None
    for status in (outputs / "runs").rglob("status.json"):
        run_dir, s = status.parent, checkpoint.read_status(status.parent)
        if s.get("config_hash") != hash_ or not (run_dir / "checkpoints" / "last.pt").exists():
            continue
        if s.get("status") == "finished":
            if recorded is None:
                store = Store(outputs / "leaderboard.sqlite")
                recorded = {r["run_dir"] for r in store.runs()} if store.path.exists() else set()
            if str(run_dir.resolve()) in recorded:
                continue
        elif s.get("status") not in ("running", "interrupted"):
            continue
        found.append(run_dir)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def open_store(outputs: Path) -> Store:
    """The leaderboard under ``outputs``, once the folder is known to be writable and an existing
    leaderboard readable (a corrupt or foreign file fails before training, not after)."""
    try:
        outputs.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=outputs).close()
    except OSError as err:
        raise ConfigError(f"paths.outputs={str(outputs)!r} is not a writable folder "
                          f"({err.strerror or err})") from None
    store = Store(outputs / "leaderboard.sqlite")
    if store.path.exists():
        store.runs()
    return store


def run_id_of(run_dir: Path, outputs: Path) -> str:
    try:
        return str(run_dir.resolve().relative_to((outputs / "runs").resolve()))
    except ValueError:
        return str(run_dir.resolve())


def write_metrics(run_dir: Path, run_id: str, status: str, rows: list[Metric]) -> None:
    tmp = run_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps({"run_id": run_id, "status": status,
                               "metrics": [m.to_dict() for m in rows]}, indent=1))
    tmp.replace(run_dir / "metrics.json")


def record(cfg: dict[str, Any], run_dir: Path, outputs: Path, model: GenerativeModel,
           state: Any, device: str, rows: list[Metric], hash_: str) -> RunRecord:
    """Write ``metrics.json`` and index the run in ``outputs/leaderboard.sqlite``."""
    run_id = run_id_of(run_dir, outputs)
    write_metrics(run_dir, run_id, state.status, rows)
    created = dt.datetime.fromtimestamp((run_dir / "config.yaml").stat().st_mtime)
    rec = RunRecord(
        run_id=run_id, created=created.isoformat(timespec="seconds"),
        model=str(cfg["run"]["model"]), family=type(model).family,
        likelihood=type(model).likelihood, dataset=str(cfg["run"]["dataset"]),
        params=sum(p.numel() for p in model.parameters()), steps=state.step,
        images_seen=state.images_seen, train_seconds=round(state.train_seconds, 3),
        device=device, status=state.status, run_dir=str(run_dir.resolve()), config_hash=hash_,
        config=cfg, versions=versions())
    tmp = run_dir / ".record.json.tmp"
    tmp.write_text(json.dumps(asdict(rec), indent=1, default=str))
    tmp.replace(run_dir / "record.json")
    Store(outputs / "leaderboard.sqlite").record(rec, rows)
    return rec
