"""Checks run before any work starts, with errors that name the key, the bad value and what is
valid (:class:`~genbench.errors.ConfigError`: one sentence, exit code 2, nothing written).

- :func:`check_command_line` (every command): config group options that are paths
  (``model=../dataset/digits``) and ``+key=value`` additions that nothing reads.
- :func:`validate` (``genbench train``): every value the run reads, and the sampler and
  evaluation options against the model class that will use them (its signature and its
  :meth:`~genbench.models.base.GenerativeModel.validate_sampler`), so a bad ``sampler.eta``
  stops the command when it starts instead of after training.
"""

from __future__ import annotations

import collections.abc
import importlib.resources
import inspect
import math
import pkgutil
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genbench.errors import ConfigError, bad_value, nonneg_float, positive_int, seed_int
from genbench.eval.anytime import ProbeSettings
from genbench.eval.choices import EXTRACTOR_CHOICES, METRICS
from genbench.eval.likelihood import estimator_names
from genbench.train.budget import parse_budget, parse_eval_at
from genbench.train.schedule import check_scheduler

if TYPE_CHECKING:
    from genbench.models.base import GenerativeModel

#: largest seed accepted (seeds feed NumPy, which takes 32 bits, and per-sample generators)
#: Hydra's instantiation keys, not parameters of the target
_HYDRA_KEYS = frozenset({"_target_", "_partial_", "_args_", "_recursive_", "_convert_"})
#: constructor arguments genbench passes to a model itself (from the dataset)
_RUNNER_ARGS = ("shape", "levels", "num_classes")
#: keys of ``model`` the runner reads itself (never constructor arguments)
_MODEL_KEYS = ("conditional",)


def validate(cfg: DictConfig) -> None:
    """Check a ``genbench train`` config (normalizing numbers in place)."""
    plain = _resolve(cfg)
    for key in ("trainer", "eval", "device", "optimizer", "model", "dataset", "logger", "paths"):
        _mapping(key, plain.get(key))
    if plain.get("sampler") is not None:
        _mapping("sampler", plain["sampler"])
    _refuse_non_finite(plain)
    t = cfg.trainer
    for key in ("max_steps", "batch_size", "eval_every", "ckpt_every", "log_every", "val_examples"):
        t[key] = positive_int(f"trainer.{key}", t[key])
    t.grad_clip = nonneg_float("trainer.grad_clip", t.grad_clip)
    if OmegaConf.is_missing(t, "budget"):
        raise ConfigError(
            "trainer.budget has no value: set it on the command line, e.g. "
            "trainer.budget=flops:1e12 (units: steps, seconds, images, flops)"
        )
    budget = parse_budget(t.get("budget"), t.max_steps)
    parse_eval_at(t.get("eval_at"))
    check_scheduler(cfg.get("scheduler"), str(budget))
    t.ema_decay = nonneg_float("trainer.ema_decay", t.ema_decay, maximum=0.99999999)
    if "lr" in cfg.optimizer:
        cfg.optimizer.lr = nonneg_float("optimizer.lr", cfg.optimizer.lr, positive=True)
    if str(t.resume) not in ("auto", "never"):
        raise ConfigError(f"trainer.resume={t.resume!r} is invalid: expected auto or never")
    _bool("trainer.rerun", t.get("rerun", False))
    ProbeSettings.from_cfg(t.get("probe"))
    _validate_eval(cfg.eval)
    cfg.seed = seed_int("seed", cfg.seed)
    if not isinstance(cfg.device.get("compile", False), bool):
        raise bad_value("device.compile", cfg.device.compile, "true or false")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{missing[0]} has no value: set it on the command line, e.g. {missing[0]}=..."
        )
    _signature(_dataset_node(plain["dataset"]), "dataset")
    _signature(plain["logger"], "logger", skip=("config", "run_dir", "run_id"))
    _signature(plain["optimizer"], "optimizer", unset_ok=("fused",))  # null: genbench decides
    _validate_model(plain)


def check_eval_config(e: DictConfig) -> None:
    """The ``eval.*`` values of a command without a model (``genbench floor``)."""
    _validate_eval(e)


def _validate_eval(e: DictConfig) -> None:
    """``eval.*`` values, checked before training rather than after it."""
    _mapping("eval", e)
    positive_int("eval.n_samples", e.n_samples, minimum=0)
    for key in ("batch_size", "grid", "kid_subset_size", "isc_splits"):
        positive_int(f"eval.{key}", e[key])
    seed_int("eval.seed", e.seed)
    for key in ("nll_examples", "n_reference", "dequant_samples", "classify_examples"):
        if e.get(key) is not None:
            positive_int(f"eval.{key}", e[key])
    if e.get("bootstrap", "auto") != "auto":
        positive_int("eval.bootstrap", e.bootstrap, minimum=0)
    for key in ("nll", "sample_metrics", "floor", "classify", "intra_fid"):
        _bool(f"eval.{key}", e.get(key, False))
    guidance = e.get("guidance_sweep")
    guidance = [] if guidance is None else guidance
    if not OmegaConf.is_list(guidance) and not isinstance(guidance, list):
        raise bad_value(
            "eval.guidance_sweep", guidance, "a list of guidance scales, e.g. [0, 1, 2]"
        )
    for w in guidance:
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise bad_value("eval.guidance_sweep", list(guidance), "guidance scales >= 0")
    if e.get("floor_split") is not None and str(e.floor_split) not in ("train", "val", "test"):
        raise bad_value("eval.floor_split", e.floor_split, "null, train, val or test")
    sweep = e.get("sampler_sweep")
    sweep = [] if sweep is None else sweep
    if not OmegaConf.is_list(sweep) and not isinstance(sweep, list):
        raise bad_value("eval.sampler_sweep", sweep, "a list of step counts, e.g. [10, 50]")
    for steps in sweep:
        positive_int("eval.sampler_sweep", steps)
    if str(e.get("reference_split", "test")) not in ("train", "val", "test"):
        raise bad_value("eval.reference_split", e.reference_split, "train, val or test")
    if str(e.get("extractor", "auto")) not in EXTRACTOR_CHOICES:
        raise bad_value("eval.extractor", e.extractor, f"one of {', '.join(EXTRACTOR_CHOICES)}")
    metrics = e.get("metrics")
    metrics = [] if metrics is None else metrics
    if not (isinstance(metrics, list) or OmegaConf.is_list(metrics)) or any(
        not isinstance(m, str) or m not in METRICS for m in metrics
    ):
        shown = list(metrics) if OmegaConf.is_list(metrics) else metrics
        raise bad_value("eval.metrics", shown, f"a subset of {list(METRICS)}")
    weights = e.get("inception_weights")
    if weights is not None and not (
        isinstance(weights, str) and Path(weights).expanduser().is_file()
    ):
        raise bad_value(
            "eval.inception_weights", weights, "null or the path of an existing weights file"
        )
    estimator_names(e)


def check_evaluation(e: DictConfig, model: GenerativeModel, sampler: dict[str, Any]) -> None:
    """Before an evaluation or a sampling run of a trained ``model`` (``genbench eval``,
    ``sample``, and ``train`` once more): the ``eval.*`` values and the sampler options, each
    sampler of ``eval.sampler_sweep`` included, checked by the model."""
    _validate_eval(e)
    model.resolve_sampler(**sampler)
    for steps in e.get("sampler_sweep") or []:
        try:
            model.resolve_sampler(**{**sampler, "steps": int(steps)})
        except ConfigError as err:
            raise _sweep_error(e.sampler_sweep, err) from None
    for name, options in _estimators(e):
        type(model).validate_estimator(name, options, {}, key=f"eval.estimator_options.{name}")


def _sweep_error(sweep: Any, err: Exception) -> ConfigError:  # noqa: ANN401
    shown = list(sweep) if OmegaConf.is_list(sweep) else sweep
    return ConfigError(
        f"eval.sampler_sweep={shown!r} is invalid: each entry sets sampler.steps, and {err}"
    )


def check_arguments(cfg: DictConfig) -> None:
    """The ``dataset`` and ``model`` nodes of ``cfg`` (a composed config, or one read back from
    a run folder) against their targets' signatures and annotations, so a bad value is named by
    its key before anything is built."""
    _signature(
        _dataset_node(
            _resolve(cfg.dataset) if isinstance(cfg.dataset, DictConfig) else cfg.dataset
        ),
        "dataset",
    )
    model = _resolve(cfg.model) if isinstance(cfg.model, DictConfig) else cfg.model
    _signature(_without_model_keys(model), "model", skip=_RUNNER_ARGS)


def _without_model_keys(model: Any) -> Any:  # noqa: ANN401
    """``model`` without the keys the runner reads itself (:data:`_MODEL_KEYS`)."""
    if not isinstance(model, dict):
        return model
    return {k: v for k, v in model.items() if k not in _MODEL_KEYS}


def _check_conditional(cls: type, model: dict[str, Any]) -> None:
    """``model.conditional``: a bool, true only for a class with a conditional mode."""
    conditional = model.get("conditional", False)
    if not isinstance(conditional, bool):
        raise bad_value("model.conditional", conditional, "true or false")
    if conditional and not getattr(cls, "conditional_support", False):
        from genbench.leaderboard.families import registered_models

        able = [n for n, c in registered_models().items() if c.conditional_support]
        raise ConfigError(
            f"model.conditional=true is invalid: {model['_target_']} has no conditional mode; "
            f"models with one: {', '.join(able) or 'none'}"
        )


def _dataset_node(node: Any) -> Any:  # noqa: ANN401
    """The dataset node without the keys genbench reads itself (``train_fraction``, checked)."""
    from genbench.data.subset import split_fraction

    return split_fraction(node)[0]


def _validate_model(plain: dict[str, Any]) -> None:
    """The model's config against its class's signature, then the sampler and evaluation
    options against the class (no model is built, no weights are needed)."""
    from genbench.models.base import GenerativeModel

    model = plain["model"]
    cls = _import_target(model, "model")
    if not (isinstance(cls, type) and issubclass(cls, GenerativeModel)):
        raise ConfigError(
            f"model._target_={model.get('_target_')!r} is not a genbench model "
            "(a GenerativeModel subclass)"
        )
    for name in _RUNNER_ARGS:
        if name in model:
            raise ConfigError(
                f"model.{name}={model[name]!r} cannot be set: genbench passes the "
                "model its data's shape, levels and number of classes (model.conditional=true)"
            )
    _check_conditional(cls, model)
    hparams = _signature(_without_model_keys(model), "model", skip=_RUNNER_ARGS)
    hparams["conditional"] = bool(model.get("conditional", False))  # e.g. guidance needs it
    sampler = plain.get("sampler") or {}
    if not isinstance(sampler, dict):
        raise bad_value("sampler", sampler, "a mapping of sampler options")
    cls.validate_sampler(sampler, hparams)
    e = plain["eval"]
    for steps in e.get("sampler_sweep") or []:
        try:
            cls.validate_sampler({**sampler, "steps": int(steps)}, hparams)
        except ConfigError as err:
            raise _sweep_error(e["sampler_sweep"], err) from None
    for name, options in _estimators(e):
        cls.validate_estimator(name, options, hparams, key=f"eval.estimator_options.{name}")


def _estimators(e: Any) -> list[tuple[str, Any]]:  # noqa: ANN401
    """(name, options) of each estimator in ``eval.estimators`` (options as plain data)."""
    names = estimator_names(e)
    given = e.get("estimator_options") or {}
    given = OmegaConf.to_container(given) if isinstance(given, DictConfig) else given
    return [(n, given.get(n) or {}) for n in names]


def _import_target(node: Any, key: str) -> Any:  # noqa: ANN401
    """The object ``node["_target_"]`` names (the user's own config: importing it is what
    building it would do), or a ``ConfigError`` naming ``key``."""
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise bad_value(key, node, "a config with a _target_")
    try:
        return pkgutil.resolve_name(node["_target_"])
    except Exception as err:  # noqa: BLE001  (ImportError, AttributeError, a module's own error)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{key}._target_={node['_target_']!r} cannot be imported ({reason})"
        ) from None


def _signature(
    node: Any,
    key: str,
    skip: tuple[str, ...] = (),  # noqa: ANN401
    unset_ok: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Refuse keys of ``node`` that are not parameters of its ``_target_`` (or set to null and
    in ``unset_ok``); returns the arguments it would be built with (the node's values over the
    signature's defaults)."""
    target = _import_target(node, key)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no signature to check against (a builtin)
        return {k: v for k, v in node.items() if k not in _HYDRA_KEYS}
    named = {
        n: p
        for n, p in params.items()
        if n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    for name, value in node.items():
        if (
            name not in _HYDRA_KEYS
            and name not in named
            and not takes_any
            and not (name in unset_ok and value is None)
        ):
            valid = [n for n in named if not (node.get("_partial_") and n == "params")]
            raise ConfigError(
                f"{key}.{name}={value!r} is not a parameter of "
                f"{node['_target_']}; valid: {', '.join(valid) or 'none'}"
            )
    if node["_target_"].startswith("genbench."):  # genbench's own classes are fully annotated
        _check_types(target, node, key)
    out = {n: p.default for n, p in named.items() if p.default is not p.empty}
    out.update({k: v for k, v in node.items() if k not in _HYDRA_KEYS})
    return out


def _check_types(target: Any, node: dict[str, Any], key: str) -> None:  # noqa: ANN401
    """Each value of ``node`` against its parameter's annotation (int, float, bool, str, a
    ``Literal`` of choices, a sequence or a mapping, optionally ``| None``)."""
    try:
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except Exception:  # noqa: BLE001  (an annotation that cannot be evaluated: no check)
        return
    for name, value in node.items():
        expected = _expected(hints.get(name), value)
        if expected is not None:
            raise bad_value(f"{key}.{name}", value, expected)


def _expected(hint: Any, value: Any) -> str | None:  # noqa: ANN401
    """What ``value`` should be for the annotation ``hint``, or None when it fits (or the
    annotation is one this check does not read)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union) and type(None) in args:
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        inner = _expected(rest[0], value) if len(rest) == 1 else None
        return None if inner is None else f"{inner} or null"
    if origin is typing.Literal:
        return None if value in args else "one of " + ", ".join(map(str, args))
    checks: dict[Any, tuple[Any, str]] = {
        int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
        bool: (lambda v: isinstance(v, bool), "true or false"),
        str: (lambda v: isinstance(v, str), "a string"),
    }
    if hint in checks:
        ok, what = checks[hint]
        return None if ok(value) else what
    if origin in (collections.abc.Sequence, list, tuple):
        return None if isinstance(value, list | tuple) else "a list"
    if origin in (collections.abc.Mapping, dict):
        return None if isinstance(value, dict) else "a mapping"
    return None


def _resolve(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers with interpolations resolved; a ``ConfigError`` naming
    the key whose interpolation fails (``???`` values stay as they are)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "a config value"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{key} cannot be resolved ({reason})") from None


def _leaves(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:  # noqa: ANN401
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{where}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{where}{i}.")
    else:
        yield where.rstrip("."), node


def _refuse_non_finite(plain: dict[str, Any]) -> None:
    """No config value may be NaN or infinite (``optimizer.lr=inf`` would train to NaN)."""
    for key, value in _leaves({k: v for k, v in plain.items() if k != "hydra"}):
        if isinstance(value, float) and not math.isfinite(value):
            raise bad_value(key, value, "a finite number")


def _mapping(key: str, value: Any) -> None:  # noqa: ANN401
    if not isinstance(value, dict | DictConfig):
        raise bad_value(key, value, f"a mapping of {key} keys (set them as {key}.<key>=...)")


def _bool(key: str, value: Any) -> bool:  # noqa: ANN401
    if not isinstance(value, bool):
        raise bad_value(key, value, "true or false")
    return value


# -- the command line, for every command --------------------------------------------------------
def _group_options(group: str) -> list[str]:
    folder = importlib.resources.files("genbench.conf") / group
    try:
        return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def check_command_line(cfg: DictConfig) -> None:
    """Refuse config group options that are paths (``model=../dataset/digits`` would build a
    dataset config as a model) and keys added with ``+key=value`` that no part of genbench
    reads. Keys added under a node with a ``_target_`` are checked against its signature by
    :func:`validate`, sampler options by the model. No-op outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
    except ValueError:
        return
    for group, choice in hc.runtime.choices.items():
        if group.startswith("hydra/") or not isinstance(choice, str):
            continue
        parts = choice.replace("\\", "/").split("/")
        if any(p in ("", ".", "..") for p in parts):
            options = _group_options(group)
            raise ConfigError(
                f"{group}={choice!r} is invalid: expected the name of a config in "
                f"the {group} group ({', '.join(options) or 'none'}), not a path"
            )
    task = OmegaConf.to_container(hc.overrides.task, resolve=False)  # as typed: no ${...}
    _check_additions(cfg, [str(t) for t in task], set(hc.runtime.choices))


def _check_additions(cfg: DictConfig, task: list[str], groups: set[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    try:
        overrides = OverridesParser.create().parse_overrides(task)
    except Exception:  # noqa: BLE001  (Hydra parsed them already; nothing to add here)
        return
    for o in overrides:
        key = o.key_or_group
        if (
            o.type != OverrideType.ADD
            or key in groups
            or o.package is not None
            or key.split(".")[0] == "sampler"
        ):
            continue
        node, parent = cfg, []
        for part in key.split(".")[:-1]:
            node = node.get(part) if isinstance(node, DictConfig) else None
            if isinstance(node, DictConfig) and "_target_" in node:
                break
            parent.append(part)
        else:
            where = ".".join(parent)
            above = OmegaConf.select(cfg, where) if where else cfg
            known = (
                sorted(str(k) for k in above if str(k) != key.rsplit(".", 1)[-1])
                if isinstance(above, DictConfig)
                else []
            )
            raise ConfigError(
                f"+{key}={o.get_value_element_as_str()} adds a key genbench does "
                f"not read; the keys of {where or 'the config'} are: "
                f"{', '.join(known) or 'none'}"
            )
