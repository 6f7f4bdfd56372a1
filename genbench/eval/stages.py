"""Sample-quality stages: FID / IS / KID / precision-recall through torch-fidelity for images, and
exact density-based measures for 2-D toys (mode coverage, true log-likelihood of samples, the gap
between the model's NLL and the true entropy)."""

from __future__ import annotations

from genbench.eval.context import EvalContext
from genbench.eval.cost import sampler_protocol
from genbench.eval.likelihood import bits_per_dim
from genbench.eval.metric import Metric
from genbench.eval.registry import register_metric
from genbench.eval.toy import mode_metrics, sample_log_likelihood


@register_metric("fidelity")
def fidelity_stage(ctx: EvalContext) -> list[Metric]:
    """torch-fidelity metrics for the run's sampler and each ``eval.sampler_sweep`` entry."""
    if not ctx.cfg.sample_metrics or ctx.data.density is not None or int(ctx.cfg.n_samples) < 2:
        return []
    from genbench.eval.fidelity import fidelity_metrics  # torch-fidelity only when needed

    rows = []
    for sampler in ctx.sweep():
        s = ctx.samples(sampler=sampler)
        rows += fidelity_metrics(s.x, ctx.data, ctx.cfg, device=ctx.device,
                                 cache_dir=ctx.cache_dir, protocol=sampler_protocol(ctx, s.sampler))
    return rows


@register_metric("toy")
def toy_stage(ctx: EvalContext) -> list[Metric]:
    """On toy data: ``entropy`` (true, nats), ``nll_gap`` (model NLL - entropy), sample
    log-likelihood and, for mixtures, mode coverage and high-quality share."""
    density = ctx.data.density
    if density is None:
        return []
    rows = [Metric("entropy", density.entropy, "exact", "test", len(ctx.data.test), "nats"),
            Metric("entropy_bpd", bits_per_dim(density.entropy, ctx.data.dims), "exact", "test",
                   len(ctx.data.test), "bits/dim")]
    for m in ctx.rows:
        if m.name == "nll":
            rows.append(Metric("nll_gap", m.value - density.entropy, m.kind, "test", m.n, "nats",
                               m.protocol))
    if int(ctx.cfg.n_samples) < 1:
        return rows
    s = ctx.samples()
    proto = sampler_protocol(ctx, s.sampler)
    measures = sample_log_likelihood(s.x, density)
    if density.modes is not None:
        measures.update(mode_metrics(s.x, density))
    units = {"sample_ll": "nats", "sample_ll_gap": "nats", "mode_kl": "nats",
             "modes_covered": "count", "modes_total": "count"}
    rows += [Metric(k, v, "measured", "samples", len(s.x), units.get(k, ""), proto)
             for k, v in measures.items()]
    return rows
