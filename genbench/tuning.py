"""Equal tuning budgets: the model's search space and the tuning record of a run.

Each model's search space is ``conf/tune/<name>.yaml``, beside ``conf/model/<name>.yaml`` and
picked with it (``optional tune: ${model}`` in ``train.yaml``'s defaults): config keys to Hydra
sweep expressions, as ``hydra.sweeper.params`` takes them (``choice(16, 32, 64)``,
``interval(0.0, 0.3)``, ``tag(log, interval(1e-4, 1e-2))``, ``range(1, 4)``). It is a config of
its own, not a key of the model's node, because that node is the model's constructor arguments.
The ``hydra/sweeper=tune`` preset (Optuna's TPE sampler) draws it through
``custom_search_space`` (:func:`suggest`): ``hydra.sweeper.params`` itself cannot interpolate the
job's config, which Hydra composes after the sweeper's. ``train`` takes ``tune`` out of the
config before anything else sees it, so neither the run's stored config nor its hash changes.
A run's :attr:`~genbench.leaderboard.store.RunRecord.tuning` records what selected it: the objective
name and value, and in a sweep the sweeper, sampler and seed, the number of trials, a hash of the
search space and the trial number.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from genbench.errors import ConfigError

#: the config key (and group) of the model's search space
SPACE_KEY = "tune"


def pop_search_space(cfg: DictConfig) -> dict[str, str]:
    """Remove ``tune`` from ``cfg`` (in place) and return it as plain data ({} if none)."""
    if SPACE_KEY not in cfg:
        return {}
    with open_dict(cfg):
        node = cfg.pop(SPACE_KEY)
    space = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
    return {str(k): str(v) for k, v in (space or {}).items()}


def space_hash(space: dict[str, Any]) -> str:
    """A short sha256 of a search space (key order does not matter)."""
    text = json.dumps({str(k): str(v) for k, v in space.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def optimizing_sweep() -> bool:
    """Whether this job runs under a Hydra sweeper that optimizes what jobs return (any but
    Hydra's basic grid sweeper, e.g. ``hydra/sweeper=tune``)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:
        return False
    target = str(hc.sweeper.get("_target_", ""))
    return hc.mode == RunMode.MULTIRUN and bool(target) and not target.endswith("BasicSweeper")


def objective_name(asked: Any) -> str | None:
    """``objective=`` as given, ``auto`` for ``null`` under an optimizing sweeper, else None (no
    objective is measured)."""
    return asked if asked is not None else ("auto" if optimizing_sweep() else None)


def tuning_record(
    space: dict[str, str], objective: str | None, value: float | None
) -> dict[str, Any]:
    """The run's tuning record: ``objective`` and its ``value`` (None for a diverged run); in a
    Hydra sweep also ``sweeper``, ``sampler``, ``seed``, ``trials`` (the budget), ``space``
    (hash of the search space the sweeper used), ``trial`` (this job's number) and ``study`` (the
    sweep folder). Empty for a run that measured no objective."""
    if objective is None:
        return {}
    out: dict[str, Any] = {"objective": objective, "value": value}
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:
        return out
    if hc.mode != RunMode.MULTIRUN:
        return out
    sweeper = hc.sweeper
    target = str(sweeper.get("_target_", ""))
    found = sweeper.get("params")
    params = {
        str(k): str(v)
        for k, v in (OmegaConf.to_container(found, resolve=True) if found else {}).items()
    }
    if sweeper.get("custom_search_space") == f"{__name__}.suggest":
        params |= space  # the model's search space, drawn by :func:`suggest`
    sampler = sweeper.get("sampler") or {}
    out |= {
        "sweeper": target.rsplit(".", 1)[-1] if target else "basic",
        "sampler": str(sampler.get("_target_", "")).rsplit(".", 1)[-1] or None,
        "seed": sampler.get("seed"),
        "trials": sweeper.get("n_trials"),
        "space": space_hash(params) if params else None,
        "trial": int(hc.job.num),
        "study": str(hc.sweep.dir),
    }
    return out


def suggest(cfg: DictConfig, trial: Any) -> None:
    """``custom_search_space`` of the ``hydra/sweeper=tune`` preset: draw this Optuna ``trial``'s
    value of every key of ``cfg.tune`` (the sweeper turns them into overrides)."""
    space = cfg.get(SPACE_KEY)
    if not space:
        raise ConfigError(
            "hydra/sweeper=tune: this model declares no search space: add "
            "conf/tune/<model>.yaml (config keys to sweep expressions) or set hydra.sweeper.params"
        )
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    items = [f"{k}={v}" for k, v in OmegaConf.to_container(space, resolve=True).items()]
    for override in OverridesParser.create().parse_overrides(items):
        key, sweep = override.get_key_element(), override.value()
        if isinstance(sweep, ChoiceSweep):
            trial.suggest_categorical(key, list(sweep.list))
        elif isinstance(sweep, IntervalSweep):
            trial.suggest_float(key, sweep.start, sweep.end, log="log" in sweep.tags)
        elif isinstance(sweep, RangeSweep) and all(
            isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)
        ):
            last = sweep.start + sweep.step * ((sweep.stop - sweep.start - 1) // sweep.step)
            trial.suggest_int(key, sweep.start, last, step=sweep.step)
        else:
            raise ConfigError(
                f"tune.{key}={override.get_value_element_as_str()!r} is invalid: expected "
                "choice(...), interval(a, b), tag(log, interval(a, b)) or an integer range(a, b)"
            )
