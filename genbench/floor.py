"""Where a ``data`` floor (:mod:`genbench.eval.floor`) lives: its run folder, its cache and its
leaderboard record, and ``genbench floor``.

Each floor is a leaderboard run of its own (``model = family = "data"``, ``likelihood =
"none"``, the dataset's name) in ``outputs/runs/floors/<dataset>_<key>/`` holding
``record.json`` and ``metrics.json``, where ``key`` hashes everything that fixes its numbers
(:func:`~genbench.eval.floor.floor_key`). The folder is the source of truth, so
``genbench leaderboard rebuild`` indexes it like any run, and it is the floor's cache: a later
evaluation under the same protocol reads it back (and indexes it again) instead of scoring again.

It is written under the folder's lock (:meth:`RunDir.lock`), ``record.json`` first and
``metrics.json`` last, each atomically: a reader sees a whole floor or none, and a second process
computing the same floor at once finds the lock held and leaves the work to the first.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from genbench.data.base import Data
from genbench.eval.floor import extractor_for, floor_key, floor_metrics, held_out, wanted
from genbench.eval.metric import Metric
from genbench.files import FileError
from genbench.leaderboard.store import RunRecord, Store
from genbench.record import versions
from genbench.rundir import RunDir, RunLockedError, run_id_of

log = logging.getLogger(__name__)

MODEL = "data"  # the floor's model and family in the leaderboard
FOLDER = "floors"  # under outputs/runs
Floor = tuple[RunRecord, list[Metric]]


def floor_dir(outputs: Path, dataset: str, key: str) -> RunDir:
    """``outputs/runs/floors/<dataset>_<key[:16]>`` (the dataset name made path-safe)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset)
    return RunDir(Path(outputs) / "runs" / FOLDER / f"{safe}_{key[:16]}")


def read_floor(run: RunDir) -> Floor | None:
    """The floor stored in ``run`` (read as data), or None when it is missing or unreadable."""
    if not (run.record_file.is_file() and run.metrics_file.is_file()):
        return None
    try:
        rec = RunRecord.from_dict(run.read_record())
        return rec, [Metric.from_dict(m) for m in run.read_metrics()]
    except (FileError, ValueError) as err:
        log.warning("recomputing the data floor in %s: %s", run.path, err)
        return None


def ensure_floor(
    data: Data, dataset: str, cfg: Mapping, *, device: torch.device, outputs: Path
) -> Floor | None:
    """The data floor of evaluation config ``cfg`` on ``data`` (leaderboard name ``dataset``):
    read from its folder when computed before, else computed and written there; either way
    indexed in ``outputs/leaderboard.sqlite``. None when the evaluation has no sample metrics,
    there is no extractor, or another process is computing this floor right now."""
    if not wanted(data, cfg):
        return None
    extractor = extractor_for(data, cfg, device=device, cache_dir=Path(outputs) / "cache")
    held = held_out(data, cfg)
    if extractor is None or len(held[0]) < 2:
        return None
    key = floor_key(dataset, data, cfg, held[0], extractor)
    run = floor_dir(outputs, dataset, key)
    store = Store(Path(outputs) / "leaderboard.sqlite")
    found = read_floor(run)
    if found is None:
        try:
            with run.lock("floor"):
                found = read_floor(run) or _compute(
                    run, outputs, key, data, dataset, cfg, held, device
                )
                store.record(*found)
            return found
        except RunLockedError:
            log.info("another process is computing the data floor in %s", run.path)
            return None
    rec = replace(found[0], run_id=run_id_of(run, outputs), run_dir=str(run.path.resolve()))
    store.record(rec, found[1])  # index it again: a leaderboard made before it keeps it
    log.info("data floor of %s: %s (cached)", dataset, run.path)
    return rec, found[1]


def _compute(
    run: RunDir,
    outputs: Path,
    key: str,
    data: Data,
    dataset: str,
    cfg: Mapping,
    held: tuple[Tensor, tuple[str, ...]],
    device: torch.device,
) -> Floor:
    """Score the held-out levels ``held[0]`` ``[n, C, H, W]`` on ``device`` and write the
    floor's folder."""
    rows = floor_metrics(data, cfg, held, device=device, cache_dir=Path(outputs) / "cache")
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    rec = RunRecord(
        run_id=run_id_of(run, outputs),
        created=dt.datetime.now().isoformat(timespec="seconds"),
        model=MODEL,
        family=MODEL,
        likelihood="none",
        dataset=dataset,
        params=0,
        steps=0,
        images_seen=0,
        train_seconds=0.0,
        device=device.type,
        status="finished",
        run_dir=str(run.path.resolve()),
        config_hash=key,
        config={
            "floor": {"dataset": dataset, "held_out_splits": list(held[1]), "n_real": len(held[0])},
            "eval": plain,
        },
        versions=versions(),
    )
    run.write_record(asdict(rec))
    run.write_metrics(rec.run_id, "finished", [m.to_dict() for m in rows])
    log.info("data floor of %s: %s", dataset, ", ".join(f"{m.name} {m.value:.4g}" for m in rows))
    return rec, rows


def floor_command(cfg: Any) -> Floor | None:  # noqa: ANN401
    """``genbench floor dataset=NAME [eval=fast]``: compute (or read back) and record the data
    floor of one dataset under one evaluation protocol, and print it."""
    from genbench.build import load_data
    from genbench.leaderboard.report import print_metrics
    from genbench.train.device import setup_device
    from genbench.validation import check_eval_config

    check_eval_config(cfg.eval)
    setup = setup_device(cfg.device)
    data = load_data(cfg.dataset)
    found = ensure_floor(
        data, str(cfg.run.dataset), cfg.eval, device=setup.device, outputs=Path(cfg.paths.outputs)
    )
    if found is None:
        log.warning(
            "no data floor for %s: it needs image data with sample metrics on "
            "(eval.sample_metrics, eval.floor, eval.n_samples >= 2) and a feature extractor",
            cfg.run.dataset,
        )
        return None
    print_metrics(*found)
    return found
