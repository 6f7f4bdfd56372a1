"""Checks of the values users type most, run before any work starts, with errors that name the
key, the bad value and what is valid."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from genbench.errors import ConfigError, bad_value, nonneg_float, positive_int
from genbench.eval.choices import EXTRACTOR_CHOICES, METRICS
from genbench.eval.likelihood import estimator_names
from genbench.train.schedule import check_scheduler


def validate(cfg: DictConfig) -> None:
    """Check the values users type most, with errors that name the key."""
    t = cfg.trainer
    for key in ("max_steps", "batch_size", "eval_every", "ckpt_every", "log_every",
                "val_examples"):
        t[key] = positive_int(f"trainer.{key}", t[key])
    t.grad_clip = nonneg_float("trainer.grad_clip", t.grad_clip)
    check_scheduler(cfg.get("scheduler"))
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
    estimator_names(e)
