"""Test-set NLL and bits/dim with one rule for every model: ``bpd = nll / (D ln 2)``.

The number keeps its kind: ``exact`` for autoregressive models, ``bound`` for the VAE's IWAE / ELBO,
a flow's dequantized density and DDPM's VLB, ``estimate`` for the probability-flow ODE. Sums stream
through torchmetrics so they reduce across processes. Extra terms from ``model.bound_terms`` are
reported beside the NLL; by convention a term named ``neg_*`` is itself a bound on the NLL.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.aggregation import SumMetric

from genbench.eval.context import EvalContext
from genbench.eval.metric import Metric
from genbench.eval.registry import register_metric
from genbench.models.base import likelihood_kind


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
