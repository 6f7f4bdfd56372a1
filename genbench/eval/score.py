"""``genbench score input1=... input2=...``: FID, IS, KID, precision-recall of two image sets.

An input is one of

- a directory of PNG/JPEG images (not searched recursively; files in sorted order, all of one
  size), read at K = 256 (16-bit greyscale PNGs mapped from their 16 bits): greyscale when the
  images are grey (or the dataset is), else RGB; files that are not usable images (FIFOs,
  devices, empty, unreadable or undecodable files, decompression bombs) are skipped with a warning;
- an ``.npz`` archive (``np.savez``; read with ``allow_pickle=False``) of integer levels
  ``[N, C, H, W]`` (or ``[N, H, W]``), C = 1 or 3: the array ``levels`` or else the first one; K is
  the integer scalar ``num_levels`` (>= 2) when stored, else the dataset's K, else 256 for a uint8
  array (any other array without ``num_levels`` is refused); every level must lie in ``[0, K)``;
- a dataset name from ``conf/dataset`` with an optional split, ``digits`` or ``digits:test``
  (default split: ``train``).

input1 is the generated set, input2 the reference (its features are cached). The extractor is
chosen as in evaluation (``extractor=auto|inception-v3|domain``); the domain CNN is trained on the
dataset selected with ``dataset=NAME`` (the ``conf/dataset`` group) or, when unset, on the dataset
named by input2 (then input1).
"""

from __future__ import annotations

import logging
import math
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

import genbench.conf
from genbench.data.base import Data
from genbench.data.images import SkippedImage, image_to_levels, open_image
from genbench.data.subset import split_fraction
from genbench.errors import UserError, bad_value
from genbench.eval.extractors import ExtractorError, resolve_extractor
from genbench.eval.fidelity import Scores, Settings, score_with_intervals
from genbench.output import strict_json

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass
class ImageSet:
    """Levels ``[N, C, H, W]`` in ``[0, num_levels)``; ``data`` when the set is a dataset split."""

    levels: Tensor
    num_levels: int
    label: str
    data: Data | None = None


def dataset_names() -> list[str]:
    """Entries of ``conf/dataset``."""
    root = Path(genbench.conf.__file__).parent / "dataset"
    return sorted(p.stem for p in root.glob("*.yaml"))


def load_dataset(name: str, paths: Mapping | None = None) -> Data:
    """Instantiate ``conf/dataset/<name>.yaml`` (``${paths.*}`` resolved against ``paths``)."""
    import hydra

    path = Path(genbench.conf.__file__).parent / "dataset" / f"{name}.yaml"
    if not path.is_file():
        raise bad_value("dataset", name, f"one of {dataset_names()}")
    root = OmegaConf.create(
        {"paths": dict(paths or {"data": "data"}), "dataset": OmegaConf.load(path)}
    )
    return hydra.utils.instantiate(split_fraction(root.dataset)[0])


def read_folder(path: Path, channels: int | None, key: str = "input") -> Tensor:
    """uint8 ``[N, C, H, W]`` of the images in ``path`` (C = ``channels``, or 1 when all are grey
    else 3); unusable files are skipped with a warning naming each."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    images = []
    for f in files:
        try:
            images.append(open_image(f))
        except SkippedImage as why:
            log.warning("skipping %s: %s", f, why)
    if not images:
        raise UserError(f"{key}={str(path)!r} holds no usable {'/'.join(IMAGE_EXTENSIONS)} images")
    sizes = sorted({img.size[::-1] for img in images})
    if len(sizes) > 1:
        raise UserError(
            f"{key}: images in {str(path)!r} differ in size (height, width): "
            f"{sizes}; all must have one size"
        )
    if channels is None:
        channels = 1 if all(img.mode in GREY_MODES for img in images) else 3
    x = np.stack([image_to_levels(img, None, channels, 256) for img in images])
    return torch.from_numpy(x)


def _check_member(npz: Any, name: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the ``.npy`` header of archive member ``name``, read before its data:
    refuses object arrays and headers that promise more data than the archive holds."""
    info = npz.zip.getinfo(f"{name}.npy") if f"{name}.npy" in npz.zip.namelist() else None
    if info is None:
        raise UserError(f"{where}: member {name!r} is not a .npy array")
    with npz.zip.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f)
        except ValueError as err:
            raise UserError(f"{where}: member {name!r} is not a valid .npy array ({err})") from None
    if dtype.hasobject:
        raise UserError(
            f"{where}: array {name!r} holds Python objects ({dtype}); expected "
            "integer levels (object arrays are never unpickled)"
        )
    if math.prod(shape) * dtype.itemsize > info.file_size:
        raise UserError(
            f"{where}: array {name!r} claims shape {shape} of {dtype}, more than "
            "the archive holds (truncated or corrupt)"
        )
    return shape, dtype


def _num_levels(npz: Any, where: str) -> int:
    """The stored ``num_levels``: an integer scalar >= 2."""
    shape, _ = _check_member(npz, "num_levels", where)
    raw = npz["num_levels"]
    value = raw.item() if raw.ndim == 0 else None
    if raw.ndim != 0:
        raise UserError(
            f"{where}: num_levels must be one integer >= 2 (a scalar), got an array "
            f"of shape {shape}"
        )
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value != int(value)
        or int(value) < 2
    ):
        raise UserError(
            f"{where}: num_levels={value!r} is invalid: expected an integer >= 2 "
            "(the number of levels K)"
        )
    return int(value)


def read_npz(path: Path, num_levels: int | None, key: str = "input") -> tuple[Tensor, int]:
    """(levels ``[N, C, H, W]``, K) from an ``.npz`` (see the module docstring); every problem is
    a :class:`UserError` naming ``key`` and the file."""
    where = f"{key}={str(path)!r}"
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise UserError(
            f"{where} is a .npy array, not an .npz archive: save it with "
            "np.savez(path, levels=x, num_levels=K)"
        )
    if not zipfile.is_zipfile(path):
        raise UserError(f"{where} is not an .npz archive (np.savez of 'levels' and 'num_levels')")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not npz.files:
                raise UserError(
                    f"{where} holds no arrays; expected 'levels' [N, C, H, W] and 'num_levels'"
                )
            name = "levels" if "levels" in npz.files else npz.files[0]
            _check_member(npz, name, where)
            x = npz[name]
            stored = _num_levels(npz, where) if "num_levels" in npz.files else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise UserError(f"{where} cannot be read as an .npz archive ({err})") from None
    return _check_levels(x, stored, num_levels, where)


def _check_levels(
    x: np.ndarray, stored: int | None, fallback: int | None, where: str
) -> tuple[Tensor, int]:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.integer):
        raise UserError(
            f"{where}: expected integer levels [N, C, H, W] or [N, H, W], got "
            f"{x.dtype} of shape {x.shape}"
        )
    if x.shape[0] == 0 or min(x.shape[2:]) == 0:
        raise UserError(f"{where} holds no images (shape {x.shape})")
    if x.shape[1] not in (1, 3):
        raise UserError(
            f"{where}: images have {x.shape[1]} channels (shape {x.shape}); "
            "expected 1 (grey) or 3 (RGB)"
        )
    k, source = stored, "num_levels"
    if k is None and fallback is not None:
        k, source = fallback, "the dataset's level count"
    if k is None:
        if x.dtype != np.uint8:
            raise UserError(
                f"{where} has no 'num_levels' and its {x.dtype} levels do not say "
                "K: store it (np.savez(path, levels=x, num_levels=K)) or set "
                "dataset=NAME"
            )
        k, source = 256, "uint8 without num_levels"
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= k:
        raise UserError(
            f"{where}: levels in [{lo}, {hi}] lie outside [0, {k}) (K = {k} from "
            f"{source}); store the right level count as 'num_levels'"
        )
    dtype = np.uint8 if k <= 256 else np.int32 if k <= 2**31 else np.int64
    return torch.from_numpy(np.ascontiguousarray(x.astype(dtype, copy=False))), k


def load_images(
    spec: str, *, data: Data | None, paths: Mapping | None = None, key: str = "input"
) -> ImageSet:
    """An input (directory, ``.npz`` or ``dataset[:split]``) as an :class:`ImageSet`; ``key``
    (``input1``/``input2``) names it in errors."""
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        return ImageSet(
            read_folder(path, data.shape[0] if data else None, key), 256, f"dir-{path.name}"
        )
    if path.suffix == ".npz" and path.is_file():
        x, k = read_npz(path, data.levels if data else None, key)
        return ImageSet(x, k, f"npz-{path.stem}")
    name, _, split = str(spec).partition(":")
    if name not in dataset_names():
        raise UserError(
            f"{key}={spec!r} is not a directory of images, an .npz file or a "
            f"dataset (one of {dataset_names()}, optionally with "
            ":train/:val/:test)"
        )
    ds = data if data is not None and data.name == name else load_dataset(name, paths)
    split = split or "train"
    if split not in ("train", "val", "test"):
        raise UserError(f"{key}={spec!r}: unknown split {split!r}; valid: train, val, test")
    return ImageSet(ds.split(split), ds.levels, f"{ds.name}-{split}", ds)


def _dataset(node: Any, paths: Mapping) -> Data | None:
    """``cfg.dataset``: a composed ``conf/dataset`` node, a dataset name, or None."""
    import hydra

    if node is None or node == "":
        return None
    if isinstance(node, str):
        return load_dataset(node, paths)
    return hydra.utils.instantiate(split_fraction(node)[0])  # scored splits: train_fraction moot


def _device(node: Any) -> torch.device:
    """``cfg.device``: a ``conf/device`` block (its ``name``) or a plain name."""
    name = str(node.get("name", "auto") if isinstance(node, Mapping) else node)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise bad_value("device.name", name, "auto, cpu or cuda")
    return torch.device(name)


def run_score(cfg: DictConfig) -> dict[str, float]:
    """Score ``cfg.input1`` (generated) against ``cfg.input2`` (reference); see conf/score.yaml.

    Returns ``{"fid@<extractor>": ..., "is@...": ..., "is_std@...", "kid@...", "kid_std@...",
    "precision@...", "recall@..."}`` for the metrics in ``cfg.metrics``.
    """
    return score_inputs(cfg).values


def score_inputs(cfg: DictConfig) -> Scores:
    """:func:`run_score` with the 95 % intervals and their methods (``cfg.bootstrap``)."""
    paths = OmegaConf.to_container(cfg.paths, resolve=True) if "paths" in cfg else {}
    data = _dataset(cfg.get("dataset"), paths)
    set2 = load_images(str(cfg.input2), data=data, paths=paths, key="input2")
    data = data or set2.data
    set1 = load_images(str(cfg.input1), data=data, paths=paths, key="input1")
    data = data or set1.data
    device = _device(cfg.get("device", "auto"))
    cache_dir = Path(str(paths.get("cache", Path(paths.get("outputs", "outputs")) / "cache")))
    extractor = resolve_extractor(
        str(cfg.get("extractor", "auto")),
        data,
        inception_weights=cfg.get("inception_weights"),
        cache_dir=cache_dir,
        device=device,
    )
    if extractor is None:
        raise ExtractorError(
            "no feature extractor: give Inception-v3 weights "
            "(inception_weights=PATH) or dataset=NAME of a labelled dataset "
            "to train its domain CNN"
        )
    if not extractor.rgb:
        for key, s in (("input1", set1), ("input2", set2)):
            if tuple(s.levels.shape[2:]) != data.shape[1:]:
                raise UserError(
                    f"{key} images are {tuple(s.levels.shape[2:])}, but the "
                    f"{extractor.name} extractor takes {data.shape[1:]}"
                )
    return score_with_intervals(
        set1.levels,
        set1.num_levels,
        set2.levels,
        set2.num_levels,
        extractor,
        Settings.from_cfg(cfg),
        device=device,
        cache_dir=cache_dir,
        reference_label=set2.label,
    )


def format_scores(
    scores: Mapping[str, float],
    fmt: str = "table",
    intervals: Scores | None = None,
) -> str:
    """``json``: a JSON object of numbers (with ``intervals``, ``<name>.lo`` and ``<name>.hi``
    after each value that has one); ``table``: one ``name  value`` line per metric, followed by
    ``[lo, hi]`` and the interval's method where there is one."""
    bounds = intervals.intervals if intervals is not None else {}
    if fmt == "json":
        out: dict[str, float] = {}
        for k, v in scores.items():
            out[k] = v
            if k in bounds:
                out[f"{k}.lo"], out[f"{k}.hi"] = bounds[k]
        return strict_json(out, indent=2)  # NaN -> null: always valid JSON
    if fmt != "table":
        raise bad_value("format", fmt, "table or json")
    width = max((len(k) for k in scores), default=0)
    lines = []
    for k, v in scores.items():
        line = f"{k:<{width}}  {v:.6g}"
        if k in bounds and intervals is not None:
            lo, hi = bounds[k]
            line += f"  [{lo:.6g}, {hi:.6g}] 95 % {intervals.methods[k]}"
        lines.append(line)
    return "\n".join(lines)


def score_command(cfg: DictConfig) -> dict[str, Any]:
    """``genbench score``: compute the scores and print them in ``cfg.format`` to stdout, each
    with its 95 % interval where there is one."""
    scored = score_inputs(cfg)
    print(format_scores(scored.values, str(cfg.get("format", "table")), scored))
    return scored.values
