"""The evaluator: runs every registered stage on a model and collects :class:`Metric` rows.

Stages (in order): ``likelihood`` (test NLL / bits/dim), ``sampling`` (ms/image, NFE), then the
sample-quality and toy-density stages. The only model-dependent branch is on ``model.likelihood``,
inside the likelihood stage.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from genbench.data.base import Data
from genbench.eval import cost, likelihood, stages  # noqa: F401  (registers stages)
from genbench.eval.context import EvalContext
from genbench.eval.grid import save_grid, save_npz
from genbench.eval.metric import Metric
from genbench.eval.registry import registered
from genbench.models.base import GenerativeModel

log = logging.getLogger(__name__)


def evaluate(model: GenerativeModel, data: Data, cfg: Any, sampler: dict[str, Any],
             device: torch.device, cache_dir: Path, grid_png: Path | None = None
             ) -> list[Metric]:
    """Evaluate ``model`` on ``data``; write a grid of ``eval.grid`` samples to ``grid_png``."""
    ctx = EvalContext(model, data, cfg, dict(sampler), device, Path(cache_dir))
    rows: list[Metric] = []
    start = time.perf_counter()
    for name, stage in registered().items():
        t = time.perf_counter()
        new = stage(ctx)
        ctx.rows.extend(new)
        rows.extend(new)
        log.info("eval stage %s: %.1f s", name, time.perf_counter() - t)
    rows.append(Metric("eval_seconds", time.perf_counter() - start, "measured", "test", 0, "s"))
    if grid_png is not None:
        x = ctx.samples().x if ctx._samples else ctx.samples(int(cfg.grid)).x
        save_grid(x[: int(cfg.grid)], data.levels, grid_png)
    return rows


def sample_to_files(model: GenerativeModel, data: Data, n: int, cfg: Any,
                    sampler: dict[str, Any], device: torch.device, out_dir: Path) -> Path:
    """Draw ``n`` seeded samples; write ``samples_<n>.png`` and ``samples_<n>.npz``."""
    ctx = EvalContext(model, data, cfg, dict(sampler), device, out_dir)
    s = ctx.samples(n)
    png = out_dir / f"samples_{n}.png"
    save_grid(s.x, data.levels, png)
    save_npz(s.x, data.levels, png.with_suffix(".npz"))
    log.info("%d samples: %.2f ms/image, %g NFE/image", n, s.ms_per_image, s.nfe)
    return png
