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

Where a floor is stored, cached and recorded: :mod:`genbench.floor`. torch-fidelity is imported
only when a floor is computed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genbench.data.base import Data
from genbench.eval.metric import Metric

log = logging.getLogger(__name__)

VERSION = 1  # bump when the floor's numbers would change for the same key
SPLITS = ("train", "val", "test")


def held_out(data: Data, cfg: Mapping) -> tuple[Tensor, tuple[str, ...]]:
    """The real images the floor scores and the splits they come from.

    Returns levels ``[n, C, H, W]`` with ``n = min(N, pool size)``, ``N = cfg.n_samples``: the pool
    (``cfg.floor_split``, or every split but ``cfg.reference_split`` when it is null) permuted
    with a generator seeded by ``cfg.seed``, first ``n`` kept.
    """
    data = data.whole()  # the same real images whatever share of train a model saw
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
    """Whether an evaluation under ``cfg`` gets a floor: ``eval.floor`` and sample metrics on,
    image data, N >= 2, at least one metric."""
    if not (cfg.get("floor", True) and cfg.get("sample_metrics", False)):
        return False
    if data.is_toy or int(cfg.get("n_samples", 0)) < 2:
        return False
    from genbench.eval.fidelity import Settings

    return bool(Settings.from_cfg(cfg).metrics)


def extractor_for(data: Data, cfg: Mapping, *, device: torch.device, cache_dir: Path) -> Any:  # noqa: ANN401
    """The feature extractor the models' sample metrics use under ``cfg`` (None without one)."""
    from genbench.eval.extractors import resolve_extractor

    return resolve_extractor(
        str(cfg.get("extractor", "auto")),
        data,
        inception_weights=cfg.get("inception_weights"),
        cache_dir=cache_dir,
        device=device,
    )


def floor_key(dataset: str, data: Data, cfg: Mapping, x: Tensor, extractor: Any) -> str:  # noqa: ANN401
    """sha256 (hex) of what fixes the floor's numbers: dataset, held-out levels ``x``
    ``[n, C, H, W]`` and the reference levels, extractor and its weights, N and the torch-fidelity
    settings (not the batch size or device, which the models' rows do not key on either)."""
    from genbench.eval.fidelity import Settings, levels_digest

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


def floor_metrics(
    data: Data,
    cfg: Mapping,
    held: tuple[Tensor, tuple[str, ...]],
    *,
    device: torch.device,
    cache_dir: Path,
) -> list[Metric]:
    """The floor's rows: held-out levels ``held[0]`` ``[n, C, H, W]`` (from splits ``held[1]``,
    see :func:`held_out`) scored by ``fidelity_metrics`` as a model's ``N = cfg.n_samples``
    samples would be; ``n`` is the images scored, ``protocol["n_generated"]`` is N."""
    from genbench.eval.fidelity import fidelity_metrics, levels_digest

    x, splits = held
    n, big_n = len(x), int(cfg.n_samples)
    if n < big_n:
        log.warning(
            "data floor of %s: only %d real images outside the reference set (%s), fewer than "
            "N = %d; scoring all %d (the floor is biased upward at this n)",
            data.name,
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
    rows = fidelity_metrics(x, data, cfg, device=device, cache_dir=cache_dir, protocol=protocol)
    # N of the protocol floored (fidelity_metrics wrote n): the models' section key
    return [replace(m, protocol={**m.protocol, "n_generated": big_n}) for m in rows]
