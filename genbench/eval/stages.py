"""Sample-quality stages: FID / IS / KID / precision-recall through torch-fidelity for images, and
exact density-based measures for 2-D toys (mode coverage, true log-likelihood of samples, the gap
between the model's NLL and the true entropy)."""

from __future__ import annotations

from dataclasses import replace

from genbench.eval.context import EvalContext
from genbench.eval.cost import sampler_protocol
from genbench.eval.likelihood import bits_per_dim
from genbench.eval.metric import Column, Metric, MetricSpec
from genbench.eval.registry import register_metric, register_spec
from genbench.eval.toy import mode_metrics, sample_log_likelihood

# torch-fidelity's numbers, stored as <name>@<extractor> (is_std / kid_std read as is / kid)
_IMAGE = {"per_extractor": True, "unit": ""}
FID = register_spec(
    MetricSpec(
        name="fid",
        lower_is_better=True,
        label="FID",
        **_IMAGE,
        column=Column(order=20, sections="image"),
    )
)
IS = register_spec(
    MetricSpec(
        name="is",
        lower_is_better=False,
        label="IS",
        **_IMAGE,
        column=Column(order=21, sections="image"),
    )
)
KID = register_spec(
    MetricSpec(
        name="kid",
        lower_is_better=True,
        label="KID",
        **_IMAGE,
        column=Column(order=22, sections="image"),
    )
)
PRECISION = register_spec(
    MetricSpec(
        name="precision", lower_is_better=False, **_IMAGE, column=Column(order=23, sections="image")
    )
)
RECALL = register_spec(
    MetricSpec(
        name="recall", lower_is_better=False, **_IMAGE, column=Column(order=24, sections="image")
    )
)

ENTROPY = register_spec(MetricSpec(name="entropy", unit="nats", lower_is_better=None))
ENTROPY_BPD = register_spec(MetricSpec(name="entropy_bpd", unit="bits/dim", lower_is_better=None))
NLL_GAP = register_spec(
    MetricSpec(
        name="nll_gap",
        unit="nats",
        lower_is_better=True,
        likelihood=True,
        column=Column(order=30, sections="toy"),
    )
)
TOY_SPECS = {
    s.name: s
    for s in [
        NLL_GAP,
        register_spec(
            MetricSpec(
                name="modes_covered",
                unit="count",
                lower_is_better=False,
                label="modes",
                integer=True,
                column=Column(order=31, sections="toy"),
            )
        ),
        register_spec(
            MetricSpec(
                name="high_quality_share",
                lower_is_better=False,
                label="HQ share",
                column=Column(order=32, sections="toy"),
            )
        ),
        register_spec(
            MetricSpec(name="modes_total", unit="count", lower_is_better=None, integer=True)
        ),
        register_spec(MetricSpec(name="mode_kl", unit="nats", lower_is_better=True)),
        register_spec(MetricSpec(name="sample_ll", unit="nats", lower_is_better=False)),
        # sample_ll + H(p): about 0 for exact samples, < 0 in unlikely cells, > 0 on a collapse
        register_spec(MetricSpec(name="sample_ll_gap", unit="nats", lower_is_better=None)),
        register_spec(MetricSpec(name="zero_prob_share", lower_is_better=True)),  # off support
        register_spec(MetricSpec(name="clipped_share", lower_is_better=True)),
    ]
}


@register_metric("fidelity", order=40)
def fidelity_stage(ctx: EvalContext) -> list[Metric]:
    """torch-fidelity metrics for the run's sampler and each ``eval.sampler_sweep`` entry."""
    if not ctx.cfg.sample_metrics or ctx.data.is_toy or int(ctx.cfg.n_samples) < 2:
        return []
    from genbench.eval.fidelity import fidelity_metrics  # torch-fidelity only when needed

    rows = []
    for sampler in ctx.sweep():
        s = ctx.samples(sampler=sampler)
        rows += fidelity_metrics(
            s.x,
            ctx.data,
            ctx.cfg,
            device=ctx.device,
            cache_dir=ctx.cache_dir,
            protocol=sampler_protocol(ctx, s.sampler),
        )
    return rows


@register_metric("toy", order=50)  # after "likelihood": nll_gap reads its nll
def toy_stage(ctx: EvalContext) -> list[Metric]:
    """On toy data: ``entropy`` (true, nats), ``nll_gap`` (model NLL - entropy), sample
    log-likelihood and, for mixtures, mode coverage and high-quality share."""
    density = ctx.data.density
    if density is None:
        return []
    n_test = len(ctx.data.test)
    rows = [
        ENTROPY.metric(density.entropy, "exact", "test", n_test),
        ENTROPY_BPD.metric(bits_per_dim(density.entropy, ctx.data.dims), "exact", "test", n_test),
    ]
    for m in ctx.rows:
        if m.name == "nll":
            gap = NLL_GAP.metric(m.value - density.entropy, m.kind, "test", m.n, m.protocol)
            if m.lo is not None and m.hi is not None:  # the NLL's interval, shifted
                gap = replace(gap, lo=m.lo - density.entropy, hi=m.hi - density.entropy)
            rows.append(gap)
    if int(ctx.cfg.n_samples) < 1:
        return rows
    s = ctx.samples()
    proto = sampler_protocol(ctx, s.sampler)
    measures = sample_log_likelihood(s.x, density)
    if density.modes is not None:
        measures.update(mode_metrics(s.x, density))
    rows += [
        TOY_SPECS[k].metric(v, "measured", "samples", len(s.x), proto) for k, v in measures.items()
    ]
    return rows
