"""Sampling cost: ms/image of every model at the eval batch size (genbench's own measurement in
``EvalContext.samples``: per-sample generators, inference mode, one batch), and DDPM ancestral
sampling over all T = 1000 steps against DDIM with 10 / 20 / 50 / 100 steps, and the
autoregressive models' cached incremental sampling against rerunning the whole network for every
sub-pixel (``incremental=false``; the same draws).

Models are freshly initialized and take one training step first (so data-dependent layers such
as ActNorm are initialized); sampling cost does not depend on how well a model is trained.
"""

from __future__ import annotations

from typing import Any

import torch

from bench_lib.common import (
    Check,
    Result,
    Spread,
    build_model,
    compose_train,
    dataset,
    log,
    make_optimizers,
    model_names,
    table,
)
from genbench.eval.context import EvalContext

DDIM_STEPS = (10, 20, 50, 100)


def _prepare(name: str) -> tuple[Any, Any, Any]:
    """(model after one training step, data, eval config) on CPU."""
    cfg = compose_train(f"model={name}", "dataset=digits")
    data = dataset("digits")
    model = build_model(cfg, data, torch.device("cpu"))
    opts = make_optimizers(model, cfg.optimizer)
    x = data.train[: int(cfg.trainer.batch_size)].long()
    for p in model.phases:
        model.zero_grad(set_to_none=True)
        model.training_losses(x, p.name)["loss"].mean().backward()
        opts[p.name].step()
    return model, data, cfg.eval


def ms_per_image(
    model: Any, data: Any, eval_cfg: Any, n: int, sampler: dict[str, Any]
) -> tuple[float, float]:
    """(ms/image, NFE/image) of ``n`` samples through genbench's EvalContext."""
    ctx = EvalContext(model, data, eval_cfg, sampler, torch.device("cpu"), cache_dir=None)
    s = ctx.samples(n)
    return s.ms_per_image, s.nfe


def per_model(repeats: int) -> tuple[list[list[Any]], dict[str, Any]]:
    prepared = {name: _prepare(name) for name in model_names()}
    times: dict[str, list[float]] = {name: [] for name in prepared}
    nfe: dict[str, float] = {}
    for r in range(repeats):
        log(f"sampling: every model, repeat {r + 1}/{repeats}")
        for name, (model, data, eval_cfg) in prepared.items():
            ms, nfe[name] = ms_per_image(model, data, eval_cfg, int(eval_cfg.batch_size), {})
            times[name].append(ms)
    rows = []
    for name, (model, _, eval_cfg) in prepared.items():
        s = Spread.of(times[name])
        rows.append(
            [
                name,
                model.family,
                int(eval_cfg.batch_size),
                str(model.resolve_sampler() or "-"),
                f"{nfe[name]:g}",
                s.fmt(3),
            ]
        )
    return rows, {k: Spread.of(v) for k, v in times.items()}


def ddpm_samplers(n: int, repeats: int) -> tuple[list[list[Any]], list[Check], dict[str, Any]]:
    model, data, eval_cfg = _prepare("ddpm")
    samplers = {"ancestral (T=1000)": {"name": "ancestral"}}
    samplers |= {f"DDIM {k}": {"name": "ddim", "steps": k, "eta": 0.0} for k in DDIM_STEPS}
    times: dict[str, list[float]] = {k: [] for k in samplers}
    nfe: dict[str, float] = {}
    for r in range(repeats):
        for label, sampler in samplers.items():
            log(f"sampling: DDPM {label} on {n} images, repeat {r + 1}/{repeats}")
            ms, nfe[label] = ms_per_image(model, data, eval_cfg, n, sampler)
            times[label].append(ms)
    anc = Spread.of(times["ancestral (T=1000)"]).median
    rows, checks = [], []
    for label in samplers:
        s = Spread.of(times[label])
        ratio = anc / s.median
        rows.append(
            [
                label,
                f"{nfe[label]:g}",
                s.fmt(2),
                f"{s.median / nfe[label]:.3f}",
                f"{ratio:.1f}x" if label.startswith("DDIM") else "1",
            ]
        )
        if label.startswith("DDIM"):
            checks.append(
                Check(f"sampling DDPM ancestral-1000 / {label} ms/image (n={n})", f"{ratio:.1f}")
            )
    return rows, checks, {k: Spread.of(v) for k, v in times.items()}


def ar_caching(n: int, repeats: int) -> tuple[list[list[Any]], list[Check], dict[str, Any]]:
    """PixelCNN / PixelRNN: cached incremental sampling vs the whole network per sub-pixel."""
    rows, checks, raw = [], [], {}
    for name in [m for m in ("pixelcnn", "pixelrnn") if m in model_names()]:
        model, data, eval_cfg = _prepare(name)
        times: dict[str, list[float]] = {"cached": [], "full": []}
        for r in range(repeats):
            for kind in ("cached", "full") if r % 2 == 0 else ("full", "cached"):
                log(f"sampling: {name} {kind} on {n} images, repeat {r + 1}/{repeats}")
                ms, nfe = ms_per_image(model, data, eval_cfg, n, {"incremental": kind == "cached"})
                times[kind].append(ms)
        speedup = Spread.of([f / c for c, f in zip(times["cached"], times["full"])])
        cached, full = Spread.of(times["cached"]), Spread.of(times["full"])
        rows.append([name, f"{nfe:g}", full.fmt(2), cached.fmt(3), speedup.fmt(1)])
        checks.append(
            Check(
                f"sampling {name} whole network per sub-pixel / cached ms/image (n={n})",
                speedup.fmt(1),
            )
        )
        raw[name] = times
    return rows, checks, raw


def run(quick: bool) -> Result:
    repeats, n_ddpm, ddpm_repeats = (2, 16, 1) if quick else (3, 256, 2)
    n_ar = 32 if quick else 256
    res = Result("3. Sampling cost (1 CPU thread, untrained weights)")
    rows, raw = per_model(repeats)
    res.raw["per_model_ms"] = raw
    dd_rows, checks, dd_raw = ddpm_samplers(n_ddpm, ddpm_repeats)
    res.raw["ddpm_ms"] = dd_raw
    ar_rows, ar_checks, res.raw["ar_caching_ms"] = ar_caching(n_ar, ddpm_repeats)
    res.checks = (
        [Check(f"sampling {name} ms/image (batch 256)", s.fmt(3)) for name, s in raw.items()]
        + checks
        + ar_checks
    )
    res.table = table(
        [
            "model",
            "family",
            "eval batch",
            "sampler",
            "NFE/image",
            f"ms/image (median [min-max], n={repeats})",
        ],
        rows,
    )
    res.table += [
        "",
        f"DDPM samplers, {n_ddpm} images per call"
        f"{' (quick mode: fewer than the eval batch of 256)' if quick else ''}:",
        "",
        *table(
            ["sampler", "NFE/image", "ms/image", "ms per NFE per image", "ancestral / this"],
            dd_rows,
        ),
        "",
        f"Autoregressive sampling, {n_ar} images per call: cached incremental "
        "evaluation vs the whole network per sub-pixel (identical draws):",
        "",
        *table(
            ["model", "NFE/image", "whole network ms/image", "cached ms/image", "speed-up"], ar_rows
        ),
    ]
    res.notes = [
        "GPU sampling: not measured (no GPU)."
        if not torch.cuda.is_available()
        else "GPU sampling: not measured (the harness samples on CPU)."
    ]
    return res
