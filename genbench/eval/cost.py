"""Sampling cost: milliseconds per image at the eval batch size and network evaluations (NFE)."""

from __future__ import annotations

from genbench.eval.context import EvalContext
from genbench.eval.metric import Metric
from genbench.eval.registry import register_metric


def sampler_protocol(ctx: EvalContext, sampler: dict) -> dict:
    return {"sampler": dict(sampler), "seed": ctx.seed, "batch_size": int(ctx.cfg.batch_size),
            "device": ctx.device.type}


@register_metric("sampling")
def sampling_metrics(ctx: EvalContext) -> list[Metric]:
    """``ms_per_image`` and ``nfe`` for the run's sampler and every ``eval.sampler_sweep`` entry."""
    rows: list[Metric] = []
    if int(ctx.cfg.n_samples) < 1:
        return rows
    for sampler in ctx.sweep():
        s = ctx.samples(sampler=sampler)
        proto = sampler_protocol(ctx, s.sampler)
        rows.append(Metric("ms_per_image", s.ms_per_image, "measured", "samples", len(s.x), "ms",
                           proto))
        rows.append(Metric("nfe", s.nfe, "measured", "samples", len(s.x), "count", proto))
    return rows
