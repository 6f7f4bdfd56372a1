"""Sampling cost: milliseconds per image at the eval batch size and network evaluations (NFE),
the latter as counted by the model's ``sample`` call for each image."""

from __future__ import annotations

from genbench.eval.context import EvalContext
from genbench.eval.metric import Column, Metric, MetricSpec
from genbench.eval.registry import register_metric, register_spec

MS_PER_IMAGE = register_spec(
    MetricSpec(
        name="ms_per_image",
        unit="ms",
        lower_is_better=True,
        label="ms/img",
        column=Column(order=90),
    )
)
NFE = register_spec(
    MetricSpec(
        name="nfe",
        unit="count",
        lower_is_better=True,
        label="NFE",
        integer=True,
        column=Column(order=91),
    )
)


def sampler_protocol(ctx: EvalContext, sampler: dict) -> dict:
    """What a sample metric was measured under: the resolved sampler (with a conditional
    model's ``guidance``), seed, batch size, device and, for a conditional model, its number of
    classes (samples drawn for every class in turn)."""
    proto = {
        "sampler": dict(sampler),
        "seed": ctx.seed,
        "batch_size": int(ctx.cfg.batch_size),
        "device": ctx.device.type,
    }
    if ctx.model.conditional:
        proto["conditional"] = ctx.model.num_classes
    return proto


@register_metric("sampling", order=10)
def sampling_metrics(ctx: EvalContext) -> list[Metric]:
    """``ms_per_image`` and ``nfe`` for the run's sampler and every ``eval.sampler_sweep`` entry."""
    rows: list[Metric] = []
    if int(ctx.cfg.n_samples) < 1:
        return rows
    for sampler in ctx.sweep():
        s = ctx.samples(sampler=sampler)
        proto = sampler_protocol(ctx, s.sampler)
        rows.append(MS_PER_IMAGE.metric(s.ms_per_image, "measured", "samples", len(s.x), proto))
        rows.append(NFE.metric(s.nfe, "measured", "samples", len(s.x), proto))
    return rows
