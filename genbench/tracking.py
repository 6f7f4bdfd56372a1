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
from pathlib import Path
from typing import Any

from genbench.errors import ConfigError

log = logging.getLogger(__name__)


class Tracker:
    """The no-op tracker (``logger=none``); also the interface."""

    run_id: str | None = None

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
    """Weights & Biases; ``mode`` is online, offline or disabled."""

    def __init__(self, cfg: Any, config: dict[str, Any], run_dir: Path,
                 run_id: str | None) -> None:
        import wandb

        mode = str(cfg.get("mode", "auto"))
        if mode == "auto":
            mode = "online" if _has_api_key() else "offline"
        if mode not in ("online", "offline", "disabled"):
            raise ConfigError(f"logger.mode={mode!r} is invalid: expected auto, online, offline "
                              "or disabled")
        self._wandb = wandb
        self.run = wandb.init(project=cfg.get("project", "genbench"), entity=cfg.get("entity"),
                              config=config, dir=str(run_dir), id=run_id, resume="allow",
                              mode=mode, tags=list(cfg.get("tags") or []), name=run_dir.name,
                              settings=wandb.Settings(silent=True))
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
    """The tracker chosen by ``cfg.name`` (``none`` or ``wandb``)."""
    name = str(cfg.get("name", "none"))
    if name == "none":
        return Tracker()
    if name == "wandb":
        try:
            return WandbTracker(cfg, config, run_dir, run_id)
        except ImportError:
            raise ConfigError("logger=wandb needs the wandb package: pip install "
                              "'genbench[wandb]'") from None
    raise ConfigError(f"logger.name={name!r} is invalid: expected none or wandb")
