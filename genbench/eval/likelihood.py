"""Test-set NLL and bits/dim with one rule for every model: ``bpd = nll / (D ln 2)``.

The number keeps its kind: ``exact`` for autoregressive models, ``bound`` for the VAE's IWAE / ELBO,
a flow's dequantized density and DDPM's VLB. Extra terms from ``model.bound_terms`` are reported
beside the NLL; by convention a term named ``neg_*`` is itself a bound on the NLL.

A model's optional estimators (:meth:`~genbench.models.base.GenerativeModel.likelihood_estimators`,
e.g. DDPM's probability-flow ODE) run when ``eval.estimators`` names them, each reported as
``nll_<name>``, ``bpd_<name>`` and ``nfe_<name>`` with the kind the model declares.

Sums stream through torchmetrics, so they reduce across processes: with several ranks each
evaluates a contiguous run of the test batches. Monte-Carlo / dequantization noise comes from one
generator per test example (seeded from ``eval.seed`` and the example's index), so an example's
number depends neither on its batch nor on the ranks; a model whose ``nll`` takes no generator
draws from the global RNG, seeded per batch.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from genbench import distributed as ddp
from genbench.errors import bad_value, positive_int
from genbench.eval.context import EvalContext
from genbench.eval.cost import NFE
from genbench.eval.intervals import finite_or_none, se_interval
from genbench.eval.metric import Column, Kind, Metric, MetricSpec
from genbench.eval.registry import register_metric, register_spec
from genbench.models.base import LikelihoodEstimator, likelihood_kind, with_labels
from genbench.nn.random import per_sample_generators

if TYPE_CHECKING:
    from torchmetrics.aggregation import SumMetric

log = logging.getLogger(__name__)

#: how likelihood intervals are made (``protocol["interval"]``): the standard error over test
#: examples times the Student-t quantile (n - 1 degrees of freedom)
INTERVAL = "t-se"

#: nats per example; ``nll_<estimator>`` and ``<term>`` rows of bound terms are nats as well
NLL = register_spec(
    MetricSpec(name="nll", unit="nats", lower_is_better=True, label="NLL", likelihood=True)
)
BPD = register_spec(
    MetricSpec(
        name="bpd",
        unit="bits/dim",
        lower_is_better=True,
        label="bits/dim",
        likelihood=True,
        column=Column(order=10),
    )
)
NEG_ELBO = register_spec(
    MetricSpec(name="neg_elbo", unit="nats", lower_is_better=True, label="-ELBO", likelihood=True)
)
NEG_ELBO_BPD = register_spec(
    MetricSpec(
        name="neg_elbo_bpd",
        unit="bits/dim",
        lower_is_better=True,
        label="-ELBO bpd",
        likelihood=True,
        column=Column(order=11, optional=True),
    )
)


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


def _with_interval(
    nats: float,
    per_example: Tensor,
    dims: int,
    kind: Kind,
    n: int,
    protocol: dict[str, Any],
    names: tuple[str, str],
) -> list[Metric]:
    """The nats row and the bits/dim row of one likelihood number (``names``), each with its 95 %
    interval from the per-example values ``[n]`` (nats): ``nats ± t_{n-1} · s / √n``."""
    x = per_example.double().cpu().numpy()
    lo = hi = None
    if x.size >= 2:
        lo, hi = finite_or_none(
            *se_interval(nats, float(x.std(ddof=1)) / math.sqrt(x.size), dof=x.size - 1)
        )
    proto = {**protocol, "interval": INTERVAL}
    nll_row = Metric(names[0], nats, kind, "test", n, "nats", proto, lo, hi)

    def to_bpd(v: float | None) -> float | None:
        return None if v is None else bits_per_dim(v, dims)

    bpd_row = Metric(
        names[1], bits_per_dim(nats, dims), kind, "test", n, BPD.unit, proto, to_bpd(lo), to_bpd(hi)
    )
    return [nll_row, bpd_row]


def takes_generator(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` has a ``generator`` parameter (the contract's ``nll`` and ``bound_terms``
    do; a plugin written against an older contract may not)."""
    return takes(fn, "generator")


#: evaluation options the evaluator passes to ``model.nll`` where its signature takes them
NLL_OPTIONS: tuple[str, ...] = ("dequant_samples",)


def takes(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` has a parameter ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def nll_options(model: Any, cfg: Mapping[str, Any]) -> dict[str, Any]:  # noqa: ANN401
    """The ``eval.*`` options of :data:`NLL_OPTIONS` that are set and that ``model.nll`` takes."""
    return {k: int(cfg[k]) for k in NLL_OPTIONS if cfg.get(k) is not None and takes(model.nll, k)}


def with_generators(
    fn: Callable[..., Any], x: Tensor, ctx: EvalContext, start: int, **options: Any
) -> Any:  # noqa: ANN401
    """``fn(x, **options)`` for test examples ``x`` ``[N, C, H, W]`` (from index ``start``) with
    one generator per example (seeded from ``(eval.seed, index)``, as sampling is), so an
    example's number does not depend on its batch; without a
    ``generator`` parameter ``fn`` draws from the global RNG, seeded per batch by the caller."""
    if not takes_generator(fn):
        return fn(x, **options)
    gens = per_sample_generators(ctx.seed, start, x.shape[0], ctx.device)
    return fn(x, generator=gens, **options)


def test_labels(ctx: EvalContext, i: int, j: int) -> dict[str, Tensor]:
    """``{"y": [j - i] labels of test examples i..j-1}`` for a conditional model, else
    ``{}``."""
    if not ctx.model.conditional:
        return {}
    return with_labels(ctx.model, ctx.data.test_labels[i:j].to(ctx.device).long())


@register_metric("likelihood", order=20)
def likelihood_metrics(ctx: EvalContext) -> list[Metric]:
    """``nll`` (nats/example) and ``bpd`` on the test split, plus the model's bound terms, each
    with a 95 % interval over the test examples; the per-example ``nll`` ``[n]`` (nats, in test
    order) is kept in ``ctx.per_example["nll"]`` for the run folder."""
    model = ctx.model
    if model.likelihood == "none" or not ctx.cfg.nll:
        return []
    sums: dict[str, SumMetric] = {}
    values: dict[str, list[Tensor]] = {}
    count = _n_test(ctx)
    options = nll_options(model, ctx.cfg)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        model.eval()
        for i, j in ddp.my_batches(count, int(ctx.cfg.batch_size)):
            torch.manual_seed(ctx.seed * 1_000_003 + i)  # noise of models without generators
            x = ctx.data.test[i:j].to(ctx.device).long()
            labels = test_labels(ctx, i, j)
            terms = {
                "nll": with_generators(model.nll, x, ctx, i, **options, **labels),
                **with_generators(model.bound_terms, x, ctx, i, **labels),
            }
            for name, value in terms.items():
                _sum(name, sums).update(value.double().to(ddp.comm_device()))
                values.setdefault(name, []).append(value.detach().double().reshape(-1).cpu())
    kind = likelihood_kind(model.likelihood)
    rows = []
    for name in ddp.union(list(sums)):  # every rank reduces the same sums, in the same order
        if name not in sums:  # a rank with no test batch adds nothing
            _sum(name, sums).update(torch.zeros(0, dtype=torch.float64, device=ddp.comm_device()))
        mine = values.get(name) or [torch.zeros(0, dtype=torch.float64)]
        per_example = ddp.gather_rows(torch.cat(mine))  # [count], in test order on every rank
        if name == "nll":
            ctx.per_example["nll"] = per_example.numpy()
        nats = float(sums[name].compute()) / max(count, 1)
        k = kind if name == "nll" else ("bound" if name.startswith("neg_") else "measured")
        proto = {"likelihood": model.likelihood, "seed": ctx.seed}
        if model.conditional:  # -log p(x | y) with the test labels
            proto["conditional"] = model.num_classes
        proto["levels"] = ctx.data.levels  # K: the leaderboard's uniform floor is log2 K bits/dim
        if name == "nll" and (settings := model.nll_settings(**options)):
            proto["nll_settings"] = dict(settings)  # e.g. an IWAE k: kept apart when ranked
        bpd_name = "bpd" if name == "nll" else f"{name}_bpd"
        rows += _with_interval(nats, per_example, ctx.data.dims, k, count, proto, (name, bpd_name))
    return rows


def estimator_names(e: Mapping) -> list[str]:
    """``eval.estimators`` (a list of names) with ``eval.estimator_examples`` and
    ``eval.estimator_options`` checked; ``ConfigError`` naming the bad key."""
    names = e.get("estimators") or []
    if (
        not isinstance(names, Sequence)
        or isinstance(names, str)
        or not all(isinstance(n, str) and n.isidentifier() for n in names)
    ):
        raise bad_value("eval.estimators", names, "a list of estimator names, e.g. [ode]")
    positive_int("eval.estimator_examples", e.get("estimator_examples", 16))
    options = e.get("estimator_options") or {}
    if not isinstance(options, Mapping) or not all(
        isinstance(v, Mapping) or v is None for v in options.values()
    ):
        raise bad_value(
            "eval.estimator_options",
            options,
            "a mapping of estimator name to its options, e.g. {ode: {solver: heun}}",
        )
    return list(dict.fromkeys(str(n) for n in names))


def estimator_metrics(ctx: EvalContext, name: str, est: LikelihoodEstimator) -> list[Metric]:
    """``nll_<name>`` (nats) and ``bpd_<name>`` with the estimator's kind, and ``nfe_<name>`` when
    it counts them, on the first ``eval.estimator_examples`` test images. Randomness comes from
    one generator per image, so results depend neither on the batch size nor on the ranks."""
    n = min(len(ctx.data.test), int(ctx.cfg.get("estimator_examples", 16)))
    options = dict((ctx.cfg.get("estimator_options") or {}).get(name) or {})
    sums = torch.zeros(3, dtype=torch.float64)  # nats, NFE, batches without an NFE count
    values = [torch.zeros(0, dtype=torch.float64)]  # this rank's per-example nats
    settings: dict[str, Any] = {}
    ctx.model.eval()
    for i, j in ddp.my_batches(n, int(ctx.cfg.batch_size)):
        x = ctx.data.test[i:j].to(ctx.device).long()
        gens = per_sample_generators(ctx.seed, i, j - i, ctx.device)
        out = est.fn(x, generator=gens, **test_labels(ctx, i, j), **options)
        values.append(out.nll.detach().double().reshape(-1).cpu())
        nfe = torch.zeros((), dtype=torch.float64) if out.nfe is None else out.nfe.double().sum()
        sums += torch.stack(
            [
                out.nll.double().sum().cpu(),
                nfe.cpu(),
                torch.tensor(float(out.nfe is None), dtype=torch.float64),
            ]
        )
        settings = dict(out.settings)
    total, nfe, uncounted = ddp.reduce_sum(sums).tolist()
    settings = ddp.main_value(settings)
    proto = {"likelihood": name, **est.protocol, "seed": ctx.seed, **settings}
    if ctx.model.conditional:
        proto["conditional"] = ctx.model.num_classes
    nats = total / max(n, 1)
    per_example = ddp.gather_rows(torch.cat(values))
    rows = _with_interval(
        nats, per_example, ctx.data.dims, est.kind, n, proto, (f"nll_{name}", f"bpd_{name}")
    )
    if not uncounted:
        rows.append(NFE.metric(nfe / max(n, 1), "measured", "test", n, proto, name=f"nfe_{name}"))
    return rows


@register_metric("likelihood_estimators", order=30)
def likelihood_estimator_metrics(ctx: EvalContext) -> list[Metric]:
    """Each estimator named in ``eval.estimators`` that the model declares, in that order; a
    model that lacks one skips it with a warning (a sweep over families may ask every model)."""
    names = estimator_names(ctx.cfg)
    declared = ctx.model.likelihood_estimators() if names else {}
    rows: list[Metric] = []
    for name in names:
        if name not in declared:
            log.warning(
                "eval.estimators: %s has no likelihood estimator %r (it offers %s)",
                type(ctx.model).__name__,
                name,
                sorted(declared) or "none",
            )
            continue
        rows += estimator_metrics(ctx, name, declared[name])
    return rows
