"""From a composed config to objects: resolve, hash, seed, and build the dataset and model."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genbench.data.base import Data
from genbench.data.subset import split_fraction, train_subset
from genbench.errors import ConfigError, UserError
from genbench.models.base import GenerativeModel
from genbench.train.device import DeviceSetup

#: keys that do not change what a run computes (excluded from the config hash)
_HASH_EXCLUDE = (
    "paths",
    "logger",
    "run",
    "hydra",
    "expected",
    "objective",
    "objective_examples",
    "tune",
)


#: model keys that only matter to a conditional model (``model.conditional=true``): an
#: unconditional run's hash leaves them out, so it stays what it was before they existed
CONDITIONAL_KEYS = ("conditional", "p_uncond", "class_loss_weight", "cond_d", "ac_weight")
#: evaluation keys that only apply to conditional models, left out of an unconditional hash too
CONDITIONAL_EVAL_KEYS = ("classify", "classify_examples", "intra_fid", "guidance_sweep")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain, resolved containers."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that determines a run's result (not paths, logging or resume flags)."""
    c = {k: v for k, v in resolved(cfg).items() if k not in _HASH_EXCLUDE}
    trainer = c.get("trainer", {})
    if isinstance(c.get("dataset"), dict) and c["dataset"].get("train_fraction") == 1.0:
        c["dataset"].pop("train_fraction")  # every example: the hash of runs from before the key
    for key in ("resume", "rerun"):
        trainer.pop(key, None)
    # the defaults of trainer.budget and trainer.eval_at leave the hash of a run as it was before
    # these keys existed, so its unfinished runs still resume and finished ones still count
    if trainer.get("budget") in (None, f"steps:{trainer.get('max_steps')}"):
        trainer.pop("budget", None)
    if not trainer.get("eval_at"):  # no anytime curve: the probe's settings change nothing
        trainer.pop("eval_at", None)
        trainer.pop("probe", None)
    model = c.get("model", {})
    if not model.get("conditional", False):  # unconditional: hashed as before these keys existed
        for key in CONDITIONAL_KEYS:
            model.pop(key, None)
        for key in CONDITIONAL_EVAL_KEYS:
            c.get("eval", {}).pop(key, None)
    for key in ("threads", "channels_last"):  # speed only (float rounding aside)
        c.get("device", {}).pop(key, None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise ConfigError(
            f"could not build {key} from {node.get('_target_')}: {cause or err}"
        ) from None


def model_node(node: DictConfig) -> tuple[DictConfig, bool]:
    """``cfg.model`` without its ``conditional`` key, and that key's value (default false): the
    runner turns ``model.conditional=true`` into the constructor's ``num_classes`` (the
    dataset's number of classes); the model class never sees the key."""
    conditional = node.get("conditional", False)
    if not isinstance(conditional, bool):
        raise ConfigError(f"model.conditional={conditional!r} is invalid: expected true or false")
    if "conditional" not in node:
        return node, False
    keep = [k for k in node if k != "conditional"]
    return OmegaConf.masked_copy(node, keep), conditional


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(node: DictConfig) -> Data:
    """The dataset a ``dataset`` config node describes, its training split cut to
    ``dataset.train_fraction`` (:mod:`genbench.data.subset`; seeded by ``dataset.seed``)."""
    spec, fraction = split_fraction(node)
    data = _instantiate(OmegaConf.create(spec), "dataset")
    if not isinstance(data, Data):
        raise ConfigError(
            f"dataset._target_={spec.get('_target_')!r} built a "
            f"{type(data).__name__}, not a genbench dataset (a Data record)"
        )
    return train_subset(data, fraction, int(spec.get("seed", 0) or 0))


def build(cfg: DictConfig, setup: DeviceSetup) -> tuple[Data, GenerativeModel]:
    """The dataset (on the training device) and the model built for its shape and levels."""
    from genbench.validation import check_arguments

    check_arguments(cfg)  # a bad value is named by its key, not by the constructor's error
    data = load_data(cfg.dataset)
    if model_node(cfg.model)[1] and not data.labelled:
        raise ConfigError(
            f"model.conditional=true needs class labels, and dataset {data.name!r} has none "
            "(labelled: digits, mnist5k, mnist, fashion_mnist, cifar10, a folder with one "
            "sub-folder per class, toy_8gaussians, toy_25gaussians, toy_moons, toy_rings)"
        )
    model = build_model(cfg.model, data.shape, data.levels, data.num_classes)
    return data.to(setup.device), setup.place_model(model, data.shape)


def build_model(
    node: DictConfig, shape: tuple[int, ...], levels: int, num_classes: int = 0
) -> GenerativeModel:
    """The model of ``cfg.model`` for data of ``shape`` ``(C, H, W)`` with ``levels`` levels;
    with ``model.conditional=true``, conditional on ``num_classes`` classes (the dataset's)."""
    node, conditional = model_node(node)
    labels = {"num_classes": int(num_classes)} if conditional else {}
    if conditional and num_classes < 1:
        raise ConfigError("model.conditional=true needs a dataset with class labels")
    model = _instantiate(node, "model", shape=shape, levels=levels, **labels)
    if not isinstance(model, GenerativeModel):
        raise ConfigError(f"model._target_={node.get('_target_')!r} is not a GenerativeModel")
    return model
