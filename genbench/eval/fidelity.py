"""FID, Inception Score, KID and precision/recall of generated images, through torch-fidelity.

Levels ``[N, C, H, W]`` in ``[0, K)`` are shown to the extractor as uint8 ``round(x * 255 / (K-1))``
(replicated to RGB for Inception-v3, native channels and size for a domain CNN). torch-fidelity
computes every number; this module chooses its inputs and settings and caches the reference side.

Stages (torch-fidelity's own functions, in the order ``calculate_metrics`` runs them): features of
both sets, then IS, FID (statistics, then distance), KID and precision/recall. Results equal
``torch_fidelity.calculate_metrics`` on the same images.

Reference cache: the reference set's features are cached by genbench, not by torch-fidelity (whose
cache files are full pickles: a planted file would run code). A cache file is an ``.npz`` of one
float array, read with ``allow_pickle=False``; one that does not read back as exactly that (a
pickle, a truncated or foreign file, the wrong shape) is ignored with a warning and recomputed.
Its name holds the dataset, split, a sha256 of the reference levels, the extractor and the sha256
of its weights, and the layer; files live in ``<cache_dir>/fidelity``.

Sample order and ``rng_seed`` fix the IS splits and KID subsets; both are kept fixed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.utils import get_featuresdict_from_dataset, resolve_feature_layer_for_metric

from genbench.data.base import Data
from genbench.errors import UserError, bad_value, positive_int
from genbench.eval.choices import METRICS, PRC_NEIGHBORHOOD
from genbench.eval.extractors import Extractor, levels_to_uint8, resolve_extractor
from genbench.eval.fidelity_intervals import add_intervals
from genbench.eval.metric import Metric
from genbench.files import FileError, atomic_write

log = logging.getLogger(__name__)

#: rows of each precision/recall distance block (torch-fidelity's default, 10,000, makes blocks of
#: 10,000 x N distances: 2 GB at N = 50,000; this keeps them at 1,000 x N)
PRC_BATCH = 1000
KID_SUBSETS = 100
#: ``eval.bootstrap=auto``: resamples of the generated set for the FID / IS intervals, by the
#: extractor's feature size (measured on 2 cores at N = 1,000: a 128-d FID recompute takes
#: milliseconds, a 2048-d one about 13 s, most of it torch-fidelity's eigenvalues)
BOOTSTRAP_SMALL, BOOTSTRAP_LARGE, BOOTSTRAP_DIMS = 100, 10, 512
_REF = ("n_reference", "reference_split", "reference_sha256")
_ISC = ("isc_splits", "fidelity_rng_seed")  # IS does not look at the reference set
_KID = (*_REF, "kid_subsets", "kid_subset_size", "fidelity_rng_seed")
_PRC = (*_REF, "prc_neighborhood")
#: torch-fidelity result key -> (genbench metric name, protocol entries it depends on)
RESULTS: dict[str, tuple[str, tuple[str, ...]]] = {
    torch_fidelity.KEY_METRIC_FID: ("fid", _REF),
    torch_fidelity.KEY_METRIC_ISC_MEAN: ("is", _ISC),
    torch_fidelity.KEY_METRIC_ISC_STD: ("is_std", _ISC),
    torch_fidelity.KEY_METRIC_KID_MEAN: ("kid", _KID),
    torch_fidelity.KEY_METRIC_KID_STD: ("kid_std", _KID),
    torch_fidelity.KEY_METRIC_PRECISION: ("precision", _PRC),
    torch_fidelity.KEY_METRIC_RECALL: ("recall", _PRC),
}


class ImageTensors(Dataset):
    """A torch-fidelity input: item ``i`` is uint8 ``[C', H, W]`` in ``{0..255}``.

    Args:
        levels: ``[N, C, H, W]`` integer levels in ``[0, K)`` (any device, any integer dtype).
        num_levels: K.
        rgb: replicate one grey channel to three (for Inception-v3), item by item (the set is
            held once, as uint8 with its own channels).
    """

    def __init__(self, levels: Tensor, num_levels: int, rgb: bool) -> None:
        self.images = levels_to_uint8(levels.detach().cpu(), num_levels).contiguous()
        self.replicate = rgb and self.images.shape[1] == 1

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1) if self.replicate else x


def levels_digest(x: Tensor, num_levels: int) -> str:
    """sha256 (hex) of levels ``[N, C, H, W]`` and K."""
    x = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{num_levels}|{tuple(x.shape)}|{x.dtype}".encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Settings:
    """torch-fidelity settings shared by ``fidelity_metrics`` and ``genbench score``."""

    metrics: tuple[str, ...] = METRICS
    batch_size: int = 256
    seed: int = 0
    kid_subset_size: int = 1000
    isc_splits: int = 10
    bootstrap: int | None = None  # resamples for the FID / IS intervals; None: by feature size

    @classmethod
    def from_cfg(cls, cfg: Mapping) -> Settings:
        metrics = tuple(str(m) for m in cfg.get("metrics", METRICS))
        bad = [m for m in metrics if m not in METRICS]
        if bad:
            raise bad_value("metrics", list(metrics), f"a subset of {list(METRICS)}")
        return cls(
            metrics,
            int(cfg.get("batch_size", 256)),
            int(cfg.get("seed", 0)),
            int(cfg.get("kid_subset_size", 1000)),
            int(cfg.get("isc_splits", 10)),
            bootstrap_count(cfg.get("bootstrap", "auto")),
        )

    def resamples(self, dims: int) -> int:
        """Bootstrap resamples for features of ``dims`` dimensions: ``bootstrap``, or with
        ``auto`` :data:`BOOTSTRAP_SMALL` up to :data:`BOOTSTRAP_DIMS` dimensions (domain CNNs)
        and :data:`BOOTSTRAP_LARGE` above (Inception-v3's 2048: each FID costs seconds)."""
        if self.bootstrap is not None:
            return self.bootstrap
        return BOOTSTRAP_SMALL if dims <= BOOTSTRAP_DIMS else BOOTSTRAP_LARGE

    def kwargs(self, n1: int, n2: int) -> dict[str, Any]:
        """torch-fidelity keyword arguments for ``n1`` generated and ``n2`` reference images;
        the KID subset size and IS split count are clipped to the set sizes."""
        need = 2 if "prc" not in self.metrics else PRC_NEIGHBORHOOD + 1
        if min(n1, n2) < need:
            raise UserError(
                f"sample-quality metrics {list(self.metrics)} need at least {need} "
                f"images per set, got {n1} generated and {n2} reference"
            )
        return {
            "fid": "fid" in self.metrics,
            "isc": "isc" in self.metrics,
            "kid": "kid" in self.metrics,
            "prc": "prc" in self.metrics,
            "batch_size": self.batch_size,
            "rng_seed": self.seed,
            "kid_subsets": KID_SUBSETS,
            "kid_subset_size": min(self.kid_subset_size, n1, n2),
            "isc_splits": min(self.isc_splits, n1),
            "prc_neighborhood": PRC_NEIGHBORHOOD,
            "prc_batch_size": PRC_BATCH,
        }

    def protocol(self, n1: int, n2: int) -> dict[str, Any]:
        kw = self.kwargs(n1, n2)
        return {
            "fidelity_rng_seed": self.seed,
            "isc_splits": kw["isc_splits"],
            "kid_subsets": KID_SUBSETS,
            "kid_subset_size": kw["kid_subset_size"],
            "prc_neighborhood": PRC_NEIGHBORHOOD,
        }


def bootstrap_count(value: object) -> int | None:
    """``bootstrap``: ``auto`` (None: chosen by feature size) or an integer >= 0 (0: no
    resampling intervals); a ``ConfigError`` naming the key otherwise."""
    if value is None or value == "auto":
        return None
    return positive_int("bootstrap", value, minimum=0)


def reference_cache_name(label: str, digest: str, extractor: Extractor) -> str:
    """torch-fidelity cache name of a reference set: label (dataset-split), data and weights."""
    raw = f"genbench-{label}-{digest[:16]}-{extractor.name}-{extractor.weights_hash[:16]}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)


def reference_cache_path(cache_dir: Path, name: str, layer: str) -> Path:
    """``<cache_dir>/fidelity/<name>-features-<layer>.npz``."""
    return (
        Path(cache_dir)
        / "fidelity"
        / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}-features-{layer}.npz")
    )


def read_features(path: Path, n: int) -> Tensor | None:
    """Cached features ``[n, D]`` from an ``.npz`` holding only the float array ``features``,
    read without unpickling; None (with a warning when the file exists) for anything else."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if npz.files != ["features"]:
                raise ValueError(f"arrays {npz.files}, expected ['features']")
            x = npz["features"]
        if x.ndim != 2 or x.shape[0] != n or x.dtype not in (np.float32, np.float64):
            raise ValueError(f"{x.dtype} {x.shape}, expected float [{n}, D]")
        return torch.from_numpy(x)
    except Exception as err:  # noqa: BLE001  (a cache: anything unreadable is recomputed)
        log.warning(
            "ignoring the feature cache file %s (%s); recomputing it",
            path,
            str(err).splitlines()[0][:200] if str(err) else type(err).__name__,
        )
        return None


def write_features(path: Path, features: Tensor) -> None:
    """Cache ``features`` ``[n, D]``; a failed write (full disk, read-only) only logs a warning."""
    array = features.numpy()
    try:
        atomic_write(path, lambda f: np.savez(f, features=array), what="feature cache")
    except FileError as err:
        log.warning("feature cache not written: %s", err)


@dataclass
class Scores:
    """Sample-quality numbers keyed ``<metric>@<extractor>``, with the 95 % interval
    (``intervals[name] = (lo, hi)``) and its method (``methods[name]``, the protocol's
    ``interval``) of those that have one."""

    values: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    methods: dict[str, str]


def score_images(
    x1: Tensor,
    k1: int,
    x2: Tensor,
    k2: int,
    extractor: Extractor,
    settings: Settings,
    *,
    device: torch.device,
    cache_dir: Path,
    reference_label: str,
) -> dict[str, float]:
    """:func:`score_with_intervals` of levels ``x1`` ``[N1, C, H, W]`` against ``x2``
    ``[N2, C, H, W]``, values only: ``{"fid@<extractor>": ..., ...}``."""
    return score_with_intervals(
        x1,
        k1,
        x2,
        k2,
        extractor,
        settings,
        device=device,
        cache_dir=cache_dir,
        reference_label=reference_label,
    ).values


def score_with_intervals(
    x1: Tensor,
    k1: int,
    x2: Tensor,
    k2: int,
    extractor: Extractor,
    settings: Settings,
    *,
    device: torch.device,
    cache_dir: Path,
    reference_label: str,
) -> Scores:
    """Score generated levels ``x1`` ``[N1, C, H, W]`` (K = ``k1``) against reference levels ``x2``
    ``[N2, C, H, W]`` (K = ``k2``).

    Values: ``{"fid@<extractor>": ..., "is@...": ..., "is_std@...": ..., "kid@...": ...,
    "kid_std@...": ..., "precision@...": ..., "recall@...": ...}`` for the requested metrics,
    with intervals for FID, IS, KID, precision and recall (see :func:`add_intervals`).
    The reference features are cached under ``cache_dir/fidelity`` (see the module docstring).
    """
    cuda = device.type == "cuda"
    kw = {
        **settings.kwargs(len(x1), len(x2)),
        "cuda": cuda,
        "save_cpu_ram": True,
        "samples_shuffle": True,
        "verbose": False,
    }
    layers = {
        m: resolve_feature_layer_for_metric(m, feature_extractor=extractor.registered)
        for m in ("isc", "fid", "kid", "prc")
        if kw[m]
    }
    start = time.perf_counter()
    net = extractor.build(sorted(set(layers.values())), cuda)

    def features(x: Tensor, k: int) -> dict[str, Tensor]:
        """Extractor outputs (``features`` ``[N, F]``, ``logits`` ...) of levels ``x``
        ``[N, C, H, W]`` in ``[0, k)``."""
        return get_featuresdict_from_dataset(
            ImageTensors(x, k, extractor.rgb), net, settings.batch_size, cuda, True, False
        )

    f1 = features(x1, k1)
    result: dict[str, float] = {}
    if "isc" in layers:
        result.update(isc_featuresdict_to_metric(f1, layers["isc"], **kw))
    binary = sorted({layers[m] for m in ("fid", "kid", "prc") if m in layers})
    if binary:
        name = reference_cache_name(reference_label, levels_digest(x2, k2), extractor)
        paths = {layer: reference_cache_path(cache_dir, name, layer) for layer in binary}
        f2 = {layer: read_features(path, len(x2)) for layer, path in paths.items()}
        if any(v is None for v in f2.values()):
            f2 = features(x2, k2)
            for layer, path in paths.items():
                write_features(path, f2[layer])
        if "fid" in layers:
            stats = [fid_featuresdict_to_statistics(f, layers["fid"]) for f in (f1, f2)]
            result.update(fid_statistics_to_metric(*stats, verbose=False))
        if "kid" in layers:
            result.update(kid_featuresdict_to_metric(f1, f2, layers["kid"], **kw))
        if "prc" in layers:
            result.update(prc_featuresdict_to_metric(f1, f2, layers["prc"], **kw))
    else:
        f2 = {}
    bounds, methods = add_intervals(result, f1, f2, layers, kw, settings)
    log.info(
        "%s on %d vs %d images with %s: %.1f s",
        "/".join(settings.metrics),
        len(x1),
        len(x2),
        extractor.name,
        time.perf_counter() - start,
    )
    out = Scores({}, {}, {})
    for key, (base, _) in RESULTS.items():
        if key in result:
            name = f"{base}@{extractor.name}"
            out.values[name] = float(result[key])
            if key in bounds:
                out.intervals[name], out.methods[name] = bounds[key], methods[key]
    return out


def fidelity_metrics(
    samples: Tensor,
    data: Data,
    cfg: Mapping,
    *,
    device: torch.device,
    cache_dir: Path,
    protocol: dict,
) -> list[Metric]:
    """FID / IS / KID / precision-recall of ``samples`` against ``data``'s reference split.

    Args:
        samples: ``[N, C, H, W]`` int64/uint8 levels in ``[0, data.levels)``.
        data: the dataset; ``cfg.reference_split`` (first ``cfg.n_reference`` images) is the
            reference, ``data.train``/labels train the domain extractor when one is used.
        cfg: the eval config (``extractor``, ``inception_weights``, ``n_reference``,
            ``reference_split``, ``metrics``, ``kid_subset_size``, ``isc_splits``, ``batch_size``,
            ``seed``).
        device: where features are extracted (and a domain extractor is trained).
        cache_dir: holds ``extractors/`` (domain CNNs) and ``fidelity/`` (reference features).
        protocol: the caller's protocol (sampler settings, seed), extended per metric.

    Returns:
        ``Metric`` rows (kind ``measured``, split = reference split, n = N), or ``[]`` for 2-D toys
        and for data without a usable extractor (a warning is logged).
    """
    settings = Settings.from_cfg(cfg)
    if data.is_toy or not settings.metrics:
        return []  # 2-D toys have exact metrics instead
    if tuple(samples.shape[1:]) != data.shape:
        raise ValueError(f"samples are {tuple(samples.shape)}, data is [N, *{data.shape}]")
    extractor = resolve_extractor(
        str(cfg.get("extractor", "auto")),
        data,
        inception_weights=cfg.get("inception_weights"),
        cache_dir=cache_dir,
        device=device,
    )
    if extractor is None:
        log.warning(
            "no sample-quality metrics for %s: it has no labels for a domain extractor "
            "and no Inception-v3 weights were found (set eval.inception_weights)",
            data.name,
        )
        return []
    split = str(cfg.get("reference_split", "test"))
    n_ref = cfg.get("n_reference")
    reference = data.split(split) if n_ref is None else data.split(split)[: int(n_ref)]
    scored = score_with_intervals(
        samples,
        data.levels,
        reference,
        data.levels,
        extractor,
        settings,
        device=device,
        cache_dir=cache_dir,
        reference_label=f"{data.name}-{split}",
    )
    n, n_ref = int(samples.shape[0]), int(reference.shape[0])
    common = {
        **protocol,
        **extractor.protocol(),
        "images_to_uint8": "round(level * 255 / (K - 1))",
        "n_generated": n,
        "torch_fidelity": torch_fidelity.__version__,
    }
    params = {
        **settings.protocol(n, n_ref),
        "n_reference": n_ref,
        "reference_split": split,
        "reference_sha256": levels_digest(reference, data.levels)[:16],
    }
    rows = []
    for base, depends in RESULTS.values():
        name = f"{base}@{extractor.name}"
        if name in scored.values:
            proto = {**common, **{d: params[d] for d in depends}}
            lo, hi = scored.intervals.get(name, (None, None))
            if name in scored.methods:
                proto["interval"] = scored.methods[name]
            rows.append(Metric(name, scored.values[name], "measured", split, n, "", proto, lo, hi))
    return rows
