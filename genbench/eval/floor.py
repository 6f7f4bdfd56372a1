"""The ``data`` floor: real images that are not in the reference set, scored against the reference
with the same extractor, weights, N and settings as a model's samples.

A model's FID / KID / precision / recall mean little without the value real data reaches under
the same protocol (finite N biases FID and KID upward, and precision / recall stay below 1 even
for real images). The floor is computed by :func:`~genbench.eval.fidelity.fidelity_metrics`
itself, on ``N = eval.n_samples`` real images in place of the samples, so its rows carry the same
names and protocol fields (extractor, weights hash, ``n_generated``, reference split, size and
hash) and land in the models' leaderboard section.

Held-out images: every split but the reference split (``eval.floor_split: null``, the default;
for ``reference_split: test`` that is train + val), or the one split named, concatenated in
train, val, test order and subsampled without replacement to N by a permutation seeded with
``eval.seed``. When the pool holds fewer than N images all of them are scored: the rows then have
``n`` = the images actually scored and ``protocol["n_real"] < protocol["n_generated"]`` (N, the
protocol floored, which keeps the rows in the models' section); such a floor is biased upward
(FID and KID grow as n shrinks) and a model at N may beat it.

Each floor is a leaderboard run of its own (``model = family = "data"``, ``likelihood =
"none"``) in ``outputs/runs/floors/<dataset>_<key>/`` (``record.json``, ``metrics.json``),
where ``key`` hashes everything that fixes its numbers. That folder is also its cache: a later
evaluation under the same protocol reads it back instead of scoring again. It is written under
the folder's lock, ``record.json`` first and ``metrics.json`` last, each atomically: a second
process computing the same floor at once finds the lock held and leaves the work to the first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
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
from genbench.errors import ConfigError
from genbench.eval.extractors import resolve_extractor
from genbench.eval.fidelity import Settings, fidelity_metrics, levels_digest
from genbench.eval.metric import Metric
from genbench.files import FileError
from genbench.leaderboard.store import RunRecord, Store
from genbench.record import versions
from genbench.rundir import RunDir, RunLockedError, run_id_of

log = logging.getLogger(__name__)

MODEL = "data"  # the floor's model, family and (with likelihood "none") leaderboard row
FOLDER = "floors"  # under outputs/runs
VERSION = 1  # bump when the floor's numbers would change for the same key
SPLITS = ("train", "val", "test")


def held_out(data: Data, cfg: Mapping) -> tuple[Tensor, tuple[str, ...]]:
    """The real images the floor scores and the splits they come from.

    Returns levels ``[n, C, H, W]`` with ``n = min(N, pool size)``, ``N = cfg.n_samples``: the pool
    (``cfg.floor_split``, or every split but ``cfg.reference_split`` when it is null) permuted
    with a generator seeded by ``cfg.seed``, first ``n`` kept.
    """
    ref = str(cfg.get("reference_split", "test"))
    chosen = cfg.get("floor_split")
    splits = (str(chosen),) if chosen is not None else tuple(s for s in SPLITS if s != ref)
    splits = tuple(s for s in splits if len(data.split(s)))
    if not splits:
        return data.train[:0], splits
    pool = torch.cat([data.split(s) for s in splits])
    g = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    order = torch.randperm(len(pool), generator=g)[: int(cfg.n_samples)]
    return pool[order], splits


def wanted(data: Data, cfg: Mapping) -> bool:
    """Whether an evaluation under ``cfg`` gets a floor: sample metrics on, image data, N >= 2,
    ``eval.floor`` true."""
    return (
        bool(cfg.get("floor", True))
        and bool(cfg.get("sample_metrics", False))
        and not data.is_toy
        and int(cfg.get("n_samples", 0)) >= 2
        and bool(Settings.from_cfg(cfg).metrics)
    )


def floor_key(dataset: str, data: Data, cfg: Mapping, x: Tensor, extractor: Any) -> str:
    """sha256 (hex) of what fixes the floor's numbers: dataset, held-out and reference images,
    extractor and its weights, N and the torch-fidelity settings (not the batch size or device,
    which the models' rows do not key on either)."""
    split = str(cfg.get("reference_split", "test"))
    n_ref = cfg.get("n_reference")
    reference = data.split(split) if n_ref is None else data.split(split)[: int(n_ref)]
    s = Settings.from_cfg(cfg)
    parts = {
        "version": VERSION,
        "dataset": dataset,
        "held_out": levels_digest(x, data.levels),
        "reference": [split, len(reference), levels_digest(reference, data.levels)],
        "extractor": [extractor.name, extractor.weights_hash],
        "n_generated": int(cfg.n_samples),
        "settings": [list(s.metrics), s.seed, s.kid_subset_size, s.isc_splits],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_floor(run: RunDir) -> tuple[RunRecord, list[Metric]] | None:
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
    data: Data,
    dataset: str,
    cfg: Mapping,
    *,
    device: torch.device,
    outputs: Path,
) -> tuple[RunRecord, list[Metric]] | None:
    """The data floor of evaluation config ``cfg`` on ``data`` (leaderboard name ``dataset``):
    read from its folder when computed before, else computed, written and recorded in
    ``outputs/leaderboard.sqlite``. None when the evaluation has no sample metrics, there is no
    extractor, or another process is computing this floor right now."""
    if not wanted(data, cfg):
        return None
    cache_dir = Path(outputs) / "cache"
    extractor = resolve_extractor(
        str(cfg.get("extractor", "auto")),
        data,
        inception_weights=cfg.get("inception_weights"),
        cache_dir=cache_dir,
        device=device,
    )
    x, splits = held_out(data, cfg)
    if extractor is None or len(x) < 2:
        return None
    key = floor_key(dataset, data, cfg, x, extractor)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset)
    run = RunDir(Path(outputs) / "runs" / FOLDER / f"{safe}_{key[:16]}")
    store = Store(Path(outputs) / "leaderboard.sqlite")
    found = read_floor(run)
    if found is None:
        try:
            with run.lock("floor"):
                found = read_floor(run) or _compute(
                    run, outputs, key, data, dataset, cfg, (x, splits), device
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
) -> tuple[RunRecord, list[Metric]]:
    """Score the held-out images ``held = (x [n, C, H, W], splits)`` (:func:`held_out`) and
    write the floor's folder."""
    x, splits = held
    n, big_n = len(x), int(cfg.n_samples)
    if n < big_n:
        log.warning(
            "data floor of %s: only %d real images outside the reference set (%s), fewer "
            "than N = %d; scoring all %d (the floor is biased upward at this n)",
            dataset,
            n,
            "+".join(splits),
            big_n,
            n,
        )
    protocol = {
        "source": "real held-out images",
        "held_out_splits": list(splits),
        "held_out_sha256": levels_digest(x, data.levels)[:16],
        "n_real": n,
        "seed": int(cfg.get("seed", 0)),
        "batch_size": int(cfg.get("batch_size", 256)),
        "device": device.type,
    }
    rows = fidelity_metrics(
        x, data, cfg, device=device, cache_dir=Path(outputs) / "cache", protocol=protocol
    )
    # N of the protocol floored (fidelity_metrics wrote n): the models' section key
    rows = [replace(m, protocol={**m.protocol, "n_generated": big_n}) for m in rows]
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
        config={"floor": {"dataset": dataset, "held_out_splits": list(splits), "n_real": n}}
        | {"eval": plain},
        versions=versions(),
    )
    run.write_record(asdict(rec))
    run.write_metrics(rec.run_id, "finished", [m.to_dict() for m in rows])
    log.info("data floor of %s: %s", dataset, ", ".join(f"{m.name} {m.value:.4g}" for m in rows))
    return rec, rows


def floor_command(cfg: Any) -> tuple[RunRecord, list[Metric]] | None:
    """``genbench floor dataset=NAME [eval=fast]``: compute (or read back) and record the data
    floor of one dataset under one evaluation protocol, and print it."""
    from genbench.build import _instantiate
    from genbench.leaderboard.report import print_metrics
    from genbench.train.device import setup_device
    from genbench.validation import check_eval_config

    check_eval_config(cfg.eval)
    setup = setup_device(cfg.device)
    data = _instantiate(cfg.dataset, "dataset")
    if not isinstance(data, Data):
        raise ConfigError(f"dataset._target_={cfg.dataset.get('_target_')!r} is not a dataset")
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
