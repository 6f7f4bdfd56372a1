"""``genbench score input1=... input2=...``: FID, IS, KID, precision-recall of two image sets.

An input is one of

- a directory of PNG/JPEG images (not searched recursively; files in sorted order), read as 8-bit
  (K = 256): greyscale when the images are grey (or the dataset is), else RGB;
- an ``.npz`` of integer levels ``[N, C, H, W]`` (or ``[N, H, W]``): the array ``levels`` or else
  the first one; K is the scalar ``num_levels`` when stored, else the dataset's K, else 256;
- a dataset name from ``conf/dataset`` with an optional split, ``digits`` or ``digits:test``
  (default split: ``train``).

input1 is the generated set, input2 the reference (its features are cached). The extractor is
chosen as in evaluation (``extractor=auto|inception-v3|domain``); the domain CNN is trained on the
dataset selected with ``dataset=NAME`` (the ``conf/dataset`` group) or, when unset, on the dataset
named by input2 (then input1).
"""

from __future__ import annotations

import logging
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
from genbench.errors import UserError, bad_value
from genbench.eval.extractors import ExtractorError, resolve_extractor
from genbench.eval.fidelity import Settings, score_images
from genbench.output import strict_json

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I", "I;16")


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
    root = OmegaConf.create({"paths": dict(paths or {"data": "data"}),
                             "dataset": OmegaConf.load(path)})
    return hydra.utils.instantiate(root.dataset)


def read_folder(path: Path, channels: int | None) -> Tensor:
    """uint8 ``[N, C, H, W]`` of the images in ``path`` (C = ``channels``, or 1 when all are grey
    else 3)."""
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UserError(f"{str(path)!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    images = [Image.open(f) for f in files]
    if channels is None:
        channels = 1 if all(img.mode in GREY_MODES for img in images) else 3
    arrays = [np.asarray(img.convert("L" if channels == 1 else "RGB")) for img in images]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise UserError(f"images in {str(path)!r} differ in size: {sorted(sizes)}")
    x = np.stack(arrays)
    x = x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def read_npz(path: Path, num_levels: int | None) -> tuple[Tensor, int]:
    """(levels ``[N, C, H, W]``, K) from an ``.npz`` (see the module docstring)."""
    with np.load(path) as npz:
        if not npz.files:
            raise UserError(f"{str(path)!r} holds no arrays")
        x = npz["levels"] if "levels" in npz.files else npz[npz.files[0]]
        if "num_levels" in npz.files:
            num_levels = int(npz["num_levels"])
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.integer):
        raise UserError(f"{str(path)!r}: expected integer levels [N, C, H, W], "
                        f"got {x.dtype} {x.shape}")
    num_levels = num_levels or 256
    if x.min() < 0 or x.max() >= num_levels:
        raise UserError(f"{str(path)!r}: levels in [{x.min()}, {x.max()}] outside "
                        f"[0, {num_levels}); store the level count as 'num_levels'")
    return torch.from_numpy(x.astype(np.int64)), num_levels


def load_images(spec: str, *, data: Data | None, paths: Mapping | None = None) -> ImageSet:
    """An input (directory, ``.npz`` or ``dataset[:split]``) as an :class:`ImageSet`."""
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        return ImageSet(read_folder(path, data.shape[0] if data else None), 256,
                        f"dir-{path.name}")
    if path.suffix == ".npz" and path.is_file():
        x, k = read_npz(path, data.levels if data else None)
        return ImageSet(x, k, f"npz-{path.stem}")
    name, _, split = str(spec).partition(":")
    if name not in dataset_names():
        raise UserError(f"{spec!r} is not a directory of images, an .npz file or a dataset "
                        f"(one of {dataset_names()}, optionally with :train/:val/:test)")
    ds = data if data is not None and data.name == name else load_dataset(name, paths)
    split = split or "train"
    return ImageSet(ds.split(split), ds.levels, f"{ds.name}-{split}", ds)


def _dataset(node: Any, paths: Mapping) -> Data | None:
    """``cfg.dataset``: a composed ``conf/dataset`` node, a dataset name, or None."""
    import hydra

    if node is None or node == "":
        return None
    if isinstance(node, str):
        return load_dataset(node, paths)
    return hydra.utils.instantiate(node)


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
    paths = OmegaConf.to_container(cfg.paths, resolve=True) if "paths" in cfg else {}
    data = _dataset(cfg.get("dataset"), paths)
    set2 = load_images(str(cfg.input2), data=data, paths=paths)
    data = data or set2.data
    set1 = load_images(str(cfg.input1), data=data, paths=paths)
    data = data or set1.data
    device = _device(cfg.get("device", "auto"))
    cache_dir = Path(str(paths.get("cache", Path(paths.get("outputs", "outputs")) / "cache")))
    extractor = resolve_extractor(str(cfg.get("extractor", "auto")), data,
                                  inception_weights=cfg.get("inception_weights"),
                                  cache_dir=cache_dir, device=device)
    if extractor is None:
        raise ExtractorError("no feature extractor: give Inception-v3 weights "
                             "(inception_weights=PATH) or dataset=NAME of a labelled dataset "
                             "to train its domain CNN")
    if not extractor.rgb:
        for key, s in (("input1", set1), ("input2", set2)):
            if tuple(s.levels.shape[2:]) != data.shape[1:]:
                raise UserError(f"{key} images are {tuple(s.levels.shape[2:])}, but the "
                                f"{extractor.name} extractor takes {data.shape[1:]}")
    return score_images(set1.levels, set1.num_levels, set2.levels, set2.num_levels, extractor,
                        Settings.from_cfg(cfg), device=device, cache_dir=cache_dir,
                        reference_label=set2.label)


def format_scores(scores: Mapping[str, float], fmt: str = "table") -> str:
    """``json``: a JSON object; ``table``: one ``name  value`` line per metric."""
    if fmt == "json":
        return strict_json(dict(scores), indent=2)  # NaN -> null: always valid JSON
    if fmt != "table":
        raise bad_value("format", fmt, "table or json")
    width = max((len(k) for k in scores), default=0)
    return "\n".join(f"{k:<{width}}  {v:.6g}" for k, v in scores.items())


def score_command(cfg: DictConfig) -> dict[str, Any]:
    """``genbench score``: compute the scores and print them in ``cfg.format`` to stdout."""
    scores = run_score(cfg)
    print(format_scores(scores, str(cfg.get("format", "table"))))
    return scores
