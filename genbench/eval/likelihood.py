"""Test-set NLL and bits/dim with one rule for every model: ``bpd = nll / (D ln 2)``.

The number keeps its kind: ``exact`` for autoregressive models, ``bound`` for the VAE's IWAE / ELBO,
a flow's dequantized density and DDPM's VLB, ``estimate`` for the probability-flow ODE. Extra terms
from ``model.bound_terms`` are reported beside the NLL; by convention a term named ``neg_*`` is
itself a bound on the NLL.

Sums stream through torchmetrics, so they reduce across processes: with several ranks each
evaluates a contiguous run of the test batches. Monte-Carlo / dequantization noise is seeded per
batch (from ``eval.seed`` and the batch's first index), so the result equals one process's to
rounding.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch

from genbench.eval.context import EvalContext
from genbench.eval.metric import Metric
from genbench.eval.registry import register_metric
from genbench.models.base import likelihood_kind
from genbench.nn.random import per_sample_generators
from genbench.train import distributed as ddp

if TYPE_CHECKING:
    from torchmetrics.aggregation import SumMetric

log = logging.getLogger(__name__)


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """Convert nats per example to bits per dimension: ``nll / (D ln 2)``."""
    return nll_nats / (dims * math.log(2))


def _n_test(ctx: EvalContext) -> int:
    test = ctx.data.test
    return len(test) if ctx.cfg.nll_examples is None else min(len(test), int(ctx.cfg.nll_examples))


def _sum(name: str, sums: dict[str, SumMetric]) -> SumMetric:
    """The float64 running sum of ``name`` (on the device collectives use)."""
    if name not in sums:
        # imported here: torchmetrics adds ~1.5 s to every process start (scripts/bench)
        from torchmetrics.aggregation import SumMetric

        # .to() first: moving a metric resets the dtype it casts its inputs to
        sums[name] = SumMetric().to(ddp.comm_device()).set_dtype(torch.float64)
    return sums[name]


@register_metric("likelihood")
def likelihood_metrics(ctx: EvalContext) -> list[Metric]:
    """``nll`` (nats/example) and ``bpd`` on the test split, plus the model's bound terms."""
    model = ctx.model
    if model.likelihood == "none" or not ctx.cfg.nll:
        return []
    sums: dict[str, SumMetric] = {}
    count = _n_test(ctx)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        model.eval()
        for i, j in ddp.my_batches(count, int(ctx.cfg.batch_size)):
            torch.manual_seed(ctx.seed * 1_000_003 + i)  # dequantization / Monte-Carlo noise
            x = ctx.data.test[i:j].to(ctx.device).long()
            terms = {"nll": model.nll(x), **model.bound_terms(x)}
            for name, value in terms.items():
                _sum(name, sums).update(value.double().to(ddp.comm_device()))
    kind = likelihood_kind(model.likelihood)
    rows = []
    for name in ddp.union(list(sums)):  # every rank reduces the same sums, in the same order
        if name not in sums:  # a rank with no test batch adds nothing
            _sum(name, sums).update(torch.zeros(0, dtype=torch.float64, device=ddp.comm_device()))
        nats = float(sums[name].compute()) / max(count, 1)
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
    sums, settings = torch.zeros(2, dtype=torch.float64), {}  # nats, NFE over this rank's images
    ctx.model.eval()
    for i, j in ddp.my_batches(n, int(ctx.cfg.batch_size)):
        x = ctx.data.test[i:j].to(ctx.device).long()
        out = estimate(x, generator=per_sample_generators(ctx.seed, i, j - i, ctx.device),
                       **options)
        sums += torch.stack([out.nll.double().sum(), out.nfe.double().sum()]).cpu()
        settings = out.settings
    total, nfe = ddp.reduce_sum(sums).tolist()
    settings = ddp.main_value(settings)
    proto = {"likelihood": "ode", "seed": ctx.seed, **settings}
    nats = total / max(n, 1)
    return [Metric("nll_ode", nats, "estimate", "test", n, "nats", proto),
            Metric("bpd_ode", bits_per_dim(nats, ctx.data.dims), "estimate", "test", n,
                   "bits/dim", proto),
            Metric("nfe_ode", nfe / max(n, 1), "measured", "test", n, "count", proto)]
