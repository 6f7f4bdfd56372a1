"""Experiment tracking behind one small interface: a no-op tracker, or Weights & Biases.

``logger=wandb`` logs the resolved config, training losses, eval metrics, the sample grid and the
run's metric rows as a ``wandb.Table``. ``logger.mode=auto`` runs online only when an API key is
configured (``WANDB_API_KEY`` or a netrc entry) and offline otherwise, so nothing leaves the
machine by default; offline runs live in ``<run dir>/wandb`` and upload later with ``wandb sync``.
The W&B run id is kept in the checkpoint, so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from genbench.errors import ConfigError

log = logging.getLogger(__name__)


class Tracker:
    """The no-op tracker (``logger=none``); also the interface. Built by :func:`make_tracker`
    from ``conf/logger/<name>.yaml`` (``_target_`` plus the class's options) with the resolved
    run config, the run folder and the id of the run being resumed (``None`` for a new one)."""

    run_id: str | None = None

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        run_dir: Path | None = None,
        run_id: str | None = None,
    ) -> None:
        """The no-op tracker ignores its arguments."""

    def log(self, values: dict[str, float], step: int) -> None:
        """Log scalar ``values`` at ``step``."""

    def log_image(self, name: str, path: Path, step: int) -> None:
        """Log the PNG at ``path``."""

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Log ``rows`` (dicts with the same keys) as a table."""

    def finish(self) -> None:
        """Flush and close."""


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbTracker(Tracker):
    """Weights & Biases (``logger=wandb``): ``project``, ``entity``, ``tags`` and ``mode``
    (auto, online, offline or disabled) come from ``conf/logger/wandb.yaml``."""

    def __init__(
        self,
        config: dict[str, Any],
        run_dir: Path,
        run_id: str | None,
        *,
        project: str = "genbench",
        entity: str | None = None,
        mode: str = "auto",
        tags: Sequence[str] = (),
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "logger=wandb needs the wandb package: pip install 'genbench[wandb]'"
            ) from None

        mode = str(mode)
        if mode == "auto":
            mode = "online" if _has_api_key() else "offline"
        if mode not in ("online", "offline", "disabled"):
            raise ConfigError(
                f"logger.mode={mode!r} is invalid: expected auto, online, offline or disabled"
            )
        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            entity=entity,
            config=config,
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            mode=mode,
            tags=list(tags or []),
            name=run_dir.name,
            settings=wandb.Settings(silent=True),
        )
        self.run_id = self.run.id
        log.info("W&B %s run %s (%s)", mode, self.run_id, run_dir / "wandb")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def log_image(self, name: str, path: Path, step: int) -> None:
        if path.exists():
            self.run.log({name: self._wandb.Image(str(path))}, step=step)

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            cols = list(rows[0])
            table = self._wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
            self.run.log({name: table})

    def finish(self) -> None:
        self.run.finish()


def make_tracker(cfg: Any, config: dict[str, Any], run_dir: Path, run_id: str | None) -> Tracker:
    """The tracker named by ``cfg._target_`` (a :class:`Tracker` class, ``conf/logger``) with the
    rest of ``cfg`` as its options."""
    spec = dict(
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg or {}
    )
    target = str(spec.get("_target_", ""))
    try:
        cls = get_class(target) if target.startswith("genbench.") else None
    except (ImportError, AttributeError, ValueError):
        cls = None
    if cls is None or not (isinstance(cls, type) and issubclass(cls, Tracker)):
        raise ConfigError(
            f"logger._target_={target!r} is invalid: expected a genbench.tracking "
            "class (conf/logger: none, wandb)"
        )
    try:  # a partial first: the run config holds _target_ keys that must stay plain data
        build = instantiate(spec, _partial_=True)
    except InstantiationException as err:
        raise ConfigError(
            f"could not build the logger from logger._target_={target!r}: {err.__cause__ or err}"
        ) from None
    try:
        return build(config=config, run_dir=run_dir, run_id=run_id)
    except TypeError as err:
        raise ConfigError(
            f"logger options {sorted(k for k in spec if k != '_target_')} do not "
            f"fit {target}: {err}"
        ) from None
