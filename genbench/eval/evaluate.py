"""The evaluator: runs every registered stage on a model and collects :class:`Metric` rows.

Stages run in the order they declare (``register_metric(..., order=)``): ``training_state``
(numbers the model reports about where training left it, such as ADA's p), ``sampling`` (ms/image,
NFE), ``likelihood`` (test NLL / bits/dim), ``likelihood_estimators`` (the model's optional
estimators named in ``eval.estimators``), ``fidelity`` (FID / IS / KID / precision-recall) and
``toy`` (exact measures on 2-D toys; it reads the NLL rows). The only model-dependent branches are
on ``model.likelihood`` and on the estimators the model declares, inside the likelihood stages.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from genbench.data.base import Data
from genbench.eval.context import EvalContext
from genbench.eval.grid import save_grid, save_npz
from genbench.eval.metric import Metric, MetricSpec
from genbench.eval.registry import register_spec, registered
from genbench.models.base import GenerativeModel
from genbench.rundir import RunDir

log = logging.getLogger(__name__)

EVAL_SECONDS = register_spec(
    MetricSpec(name="eval_seconds", unit="s", lower_is_better=True, label="eval s")
)


def evaluate(
    model: GenerativeModel,
    data: Data,
    cfg: Any,
    sampler: dict[str, Any],
    device: torch.device,
    cache_dir: Path,
    grid_png: Path | None = None,
    run: RunDir | None = None,
) -> list[Metric]:
    """Evaluate ``model`` on ``data``; write a grid of ``eval.grid`` samples to ``grid_png`` and,
    with ``run``, the per-example test NLL to its ``nll_per_example.npy`` (a stale file is
    removed when this evaluation computed no NLL)."""
    ctx = EvalContext(model, data, cfg, dict(sampler), device, Path(cache_dir))
    rows: list[Metric] = []
    start = time.perf_counter()
    for name, stage in registered().items():
        t = time.perf_counter()
        new = stage(ctx)
        ctx.rows.extend(new)
        rows.extend(new)
        log.info("eval stage %s: %.1f s", name, time.perf_counter() - t)
    rows.append(EVAL_SECONDS.metric(time.perf_counter() - start, "measured", "test", 0))
    if grid_png is not None:
        x = ctx.samples().x if ctx._samples else ctx.samples(int(cfg.grid)).x
        save_grid(x[: int(cfg.grid)], data.levels, grid_png)
    if run is not None:
        run.write_nll_per_example(ctx.per_example.get("nll"))
    return rows


def sample_to_files(
    model: GenerativeModel,
    data: Data,
    n: int,
    cfg: Any,
    sampler: dict[str, Any],
    device: torch.device,
    out_dir: Path,
    label: int | None = None,
) -> Path:
    """Draw ``n`` seeded samples; write ``samples_<n>.png`` and ``samples_<n>.npz``. A
    conditional model draws them for every class in turn (sample i for class i mod C), or all
    for class ``label`` when it is set."""
    ctx = EvalContext(model, data, cfg, dict(sampler), device, out_dir, label=label)
    s = ctx.samples(n)
    png = out_dir / f"samples_{n}.png"
    save_grid(s.x, data.levels, png)
    save_npz(s.x, data.levels, png.with_suffix(".npz"), s.y)
    log.info("%d samples: %.2f ms/image, %g NFE/image", n, s.ms_per_image, s.nfe)
    return png
