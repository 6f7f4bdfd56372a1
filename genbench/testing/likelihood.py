"""Likelihood checks: every input of a tiny shape enumerated (exact numbers sum to one, bounds to
at most one), and the optional likelihood estimators' outputs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from genbench.models.base import NllEstimate, likelihood_kind
from genbench.nn.random import per_sample_generators
from genbench.testing.subject import ConformanceError, Skipped, Subject, expect

#: how far ``log sum_x exp(-nll(x))`` over every input may exceed 0 (nats; float rounding)
EXACT_TOLERANCE = 1e-3
#: independent draws averaged for a stochastic bound, and the standard errors it is given
BOUND_DRAWS, BOUND_Z = 8, 3.0
#: inputs scored per call
CHUNK = 256


def all_inputs(shape: tuple[int, int, int], levels: int) -> Tensor:
    """Every ``[levels ** D, C, H, W]`` int64 input of ``shape``, in lexicographic order."""
    axes = [torch.arange(levels)] * math.prod(shape)
    grid = torch.cartesian_prod(*axes) if len(axes) > 1 else axes[0].unsqueeze(1)
    return grid.reshape(-1, *shape)


def _scores(fn: Callable[[Tensor, int], Tensor], x: Tensor, draws: int) -> Tensor:
    """``[draws, N]`` float64 NLLs; ``fn(x_chunk, start)`` scores rows ``start...``."""
    out = torch.empty(draws, x.shape[0], dtype=torch.float64)
    for r in range(draws):
        for i in range(0, x.shape[0], CHUNK):
            out[r, i : i + CHUNK] = fn(x[i : i + CHUNK], r * 1_000_003 + i).double().reshape(-1)
        if r == 1 and torch.equal(out[0], out[1]):  # deterministic: one draw says it all
            return out[:1]
    return out


def _check_total(what: str, kind: str, nll: Tensor, n: int) -> None:
    """``nll`` ``[draws, n]`` over every input: exact numbers sum (as probabilities) to one,
    bounds, given ``BOUND_Z`` standard errors of their draws, to at most one."""
    expect(bool(torch.isfinite(nll).all()), f"{what} is not finite on some input")
    mean = nll.mean(0)
    if kind == "exact":
        total = float(torch.logsumexp(-mean, 0))
        expect(
            abs(total) <= EXACT_TOLERANCE,
            f"{what}: the probabilities of all {n} inputs sum to {math.exp(total):.6f}, not 1 "
            f"(log-sum {total:+.2e} nats); an exact likelihood must be normalized over the "
            "K levels of every sub-pixel, in nats",
        )
        return
    se = nll.std(0) / math.sqrt(nll.shape[0]) if nll.shape[0] > 1 else torch.zeros_like(mean)
    total = float(torch.logsumexp(-(mean + BOUND_Z * se), 0))
    how = (
        f"the mean of {nll.shape[0]} draws plus {BOUND_Z:g} standard errors"
        if nll.shape[0] > 1
        else "the same in every draw"
    )
    expect(
        total <= EXACT_TOLERANCE,
        f"{what}: exp(-bound) of all {n} inputs sums to {math.exp(total):.6f} > 1 (bound: "
        f"{how}); an upper bound on the NLL is at or above the exact value, so its "
        "probabilities sum to at most 1",
    )


def check_enumeration(s: Subject) -> None:
    """On a tiny shape, score every one of the ``L ** D`` inputs: an ``exact`` likelihood sums to
    one, a bound (``dequantized``, ``elbo``, ``vlb``) to at most one; the same for every
    likelihood estimator of kind ``exact`` or ``bound``. Estimates and ``none`` are skipped."""
    shape, levels = s.enumeration()
    m = s.prepared(shape, levels)
    x = all_inputs(shape, levels)
    n = x.shape[0]
    checked = []
    kind = likelihood_kind(m.likelihood)
    if kind in ("exact", "bound"):

        def nll(rows: Tensor, seed: int) -> Tensor:
            """``[n]`` nats of the ``[n, C, H, W]`` rows, the global RNG seeded with ``seed``
            (as the evaluator seeds each batch)."""
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                torch.manual_seed(seed)
                return m.nll(rows)

        _check_total(
            f"nll ({m.likelihood}) at shape {shape} with {levels} levels",
            kind,
            _scores(nll, x, BOUND_DRAWS),
            n,
        )
        checked.append("nll")
    for name, est in m.likelihood_estimators().items():
        if est.kind not in ("exact", "bound"):
            continue
        options = dict(s.estimator_options.get(name) or {})

        def score(
            rows: Tensor, seed: int, fn: Callable = est.fn, options: Mapping = options
        ) -> Tensor:
            """``[n]`` nats of the ``[n, C, H, W]`` rows, one generator per row from ``seed``."""
            return fn(
                rows, generator=per_sample_generators(seed, 0, rows.shape[0]), **options
            ).nll.detach()

        _check_total(
            f"likelihood estimator {name!r} ({est.kind}) at shape {shape}",
            est.kind,
            _scores(score, x, BOUND_DRAWS),
            n,
        )
        checked.append(name)
    if not checked:
        raise Skipped(
            f"likelihood {m.likelihood!r} is neither exact nor a bound, and no estimator is"
        )


def check_estimators(s: Subject) -> None:
    """Each declared likelihood estimator returns ``NllEstimate``: ``[N]`` finite nats, an
    ``[N]`` NFE or ``None``, a settings mapping; example *i* does not depend on its batch."""
    m = s.prepared()
    declared = m.likelihood_estimators()
    if not declared:
        raise Skipped("no likelihood estimators declared")
    x = s.data(3, seed=7)
    for name, est in declared.items():
        options = dict(s.estimator_options.get(name) or {})
        out = est.fn(x, generator=per_sample_generators(0, 0, 3), **options)
        expect(
            isinstance(out, NllEstimate),
            f"estimator {name!r} returned a {type(out).__name__}, not an NllEstimate",
        )
        nll = out.nll.detach() if isinstance(out.nll, Tensor) else out.nll
        expect(
            isinstance(nll, Tensor)
            and tuple(nll.shape) == (3,)
            and bool(torch.isfinite(nll).all()),
            f"estimator {name!r}: nll must be [N] = [3] finite nats, got {nll!r}",
        )
        expect(
            out.nfe is None or tuple(out.nfe.shape) == (3,),
            f"estimator {name!r}: nfe must be None or [N] = [3], got {out.nfe!r}",
        )
        expect(isinstance(out.settings, Mapping), f"estimator {name!r}: settings must be a mapping")
        alone = est.fn(x[2:], generator=per_sample_generators(0, 2, 1), **options)
        single = alone.nll.detach().double()[0]
        if not torch.allclose(single, nll.double()[2], rtol=1e-4, atol=1e-4):
            raise ConformanceError(
                f"estimator {name!r}: example 2 scores {float(nll[2]):.6g} in a batch of 3 and "
                f"{float(single):.6g} alone; draw its noise from its own generator"
            )
