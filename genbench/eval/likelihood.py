"""Test-set NLL and bits/dim with one rule for every model: ``bpd = nll / (D ln 2)``.

The number keeps its kind: ``exact`` for autoregressive models, ``bound`` for the VAE's IWAE / ELBO,
a flow's dequantized density and DDPM's VLB, ``estimate`` for the probability-flow ODE. Sums stream
through torchmetrics so they reduce across processes. Extra terms from ``model.bound_terms`` are
reported beside the NLL; by convention a term named ``neg_*`` is itself a bound on the NLL.
"""

from __future__ import annotations

import logging
import math

import torch
from torchmetrics.aggregation import SumMetric

from genbench.eval.context import EvalContext
from genbench.eval.metric import Metric
from genbench.eval.registry import register_metric
from genbench.models.base import likelihood_kind
from genbench.nn.random import per_sample_generators

log = logging.getLogger(__name__)


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """Convert nats per example to bits per dimension: ``nll / (D ln 2)``."""
    return nll_nats / (dims * math.log(2))


def _test_batches(ctx: EvalContext) -> list[torch.Tensor]:
    test = ctx.data.test
    n = len(test) if ctx.cfg.nll_examples is None else min(len(test), int(ctx.cfg.nll_examples))
    bs = int(ctx.cfg.batch_size)
    return [test[i:min(i + bs, n)].to(ctx.device).long() for i in range(0, n, bs)]


@register_metric("likelihood")
def likelihood_metrics(ctx: EvalContext) -> list[Metric]:
    """``nll`` (nats/example) and ``bpd`` on the test split, plus the model's bound terms."""
    model = ctx.model
    if model.likelihood == "none" or not ctx.cfg.nll:
        return []
    sums: dict[str, SumMetric] = {}
    count = 0
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(ctx.seed)  # dequantization / Monte-Carlo noise is seeded
        model.eval()
        for x in _test_batches(ctx):
            terms = {"nll": model.nll(x), **model.bound_terms(x)}
            for name, value in terms.items():
                sums.setdefault(name, SumMetric()).update(value.double().cpu())
            count += x.shape[0]
    kind = likelihood_kind(model.likelihood)
    rows = []
    for name, metric in sums.items():
        nats = float(metric.compute()) / count
        k = kind if name == "nll" else ("bound" if name.startswith("neg_") else "measured")
        proto = {"likelihood": model.likelihood, "seed": ctx.seed}
        rows.append(Metric(name, nats, k, "test", count, "nats", proto))
        bpd_name = "bpd" if name == "nll" else f"{name}_bpd"
        rows.append(Metric(bpd_name, bits_per_dim(nats, ctx.data.dims), k, "test", count,
                           "bits/dim", proto))
    return rows


@register_metric("ode_likelihood")
def ode_likelihood_metrics(ctx: EvalContext) -> list[Metric]:
    """``eval.ode_likelihood=true``: the probability-flow ODE estimate (``nll_ode``, ``bpd_ode``)
    on the first ``eval.ode_examples`` test images, for models that offer ``ode_likelihood``."""
    if not ctx.cfg.get("ode_likelihood", False):
        return []
    estimate = getattr(ctx.model, "ode_likelihood", None)
    if not callable(estimate):
        log.warning("eval.ode_likelihood=true: %s has no probability-flow ODE likelihood",
                    type(ctx.model).__name__)
        return []
    n = min(len(ctx.data.test), int(ctx.cfg.get("ode_examples", 16)))
    options = dict(ctx.cfg.get("ode_options") or {})
    bs, total, nfe, settings = int(ctx.cfg.batch_size), 0.0, 0.0, {}
    ctx.model.eval()
    for i in range(0, n, bs):
        x = ctx.data.test[i:min(i + bs, n)].to(ctx.device).long()
        gens = per_sample_generators(ctx.seed, i, x.shape[0], ctx.device)
        out = estimate(x, generator=gens, **options)
        total += float(out.nll.double().sum())
        nfe += float(out.nfe.double().sum())
        settings = out.settings
    proto = {"likelihood": "ode", "seed": ctx.seed, **settings}
    nats = total / max(n, 1)
    return [Metric("nll_ode", nats, "estimate", "test", n, "nats", proto),
            Metric("bpd_ode", bits_per_dim(nats, ctx.data.dims), "estimate", "test", n,
                   "bits/dim", proto),
            Metric("nfe_ode", nfe / max(n, 1), "measured", "test", n, "count", proto)]
