"""Contract checks that need one model at the data shape: declarations, losses, phases, sampling,
``nll`` units and the state-dict round trip."""

from __future__ import annotations

import copy
import io
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from genbench.models.base import (
    FAMILIES,
    LIKELIHOODS,
    GenerativeModel,
    LikelihoodEstimator,
    Phase,
    Sampled,
)
from genbench.nn.random import per_sample_generators
from genbench.testing.subject import ConformanceError, Subject, expect, named, short

#: estimator names: lowercase identifiers (they become metric names, ``nll_<name>``)
ESTIMATOR_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: share of sub-pixels of sample i that must agree whatever batch it is drawn in (kernels may
#: round a float differently for another batch size, which can move a draw across a boundary)
BATCH_AGREEMENT = 0.95
#: standard errors the mean NLL of uniform data may fall below D log K (sampling noise)
UNIFORM_Z = 3.0


def check_declares(s: Subject) -> None:
    """``family``, ``likelihood``, ``phases``, the stored shape and levels, the likelihood
    estimators, ``resolve_sampler``, ``nll_settings`` and ``training_state`` are what the runner
    and evaluator expect."""
    m = s.build()
    expect(m.family in FAMILIES, f"family={m.family!r} is not one of {FAMILIES}")
    expect(m.likelihood in LIKELIHOODS, f"likelihood={m.likelihood!r} is not one of {LIKELIHOODS}")
    expect(
        m.shape == tuple(s.shape) and m.levels == s.levels,
        f"model.shape={m.shape}, model.levels={m.levels} after building it with shape="
        f"{tuple(s.shape)}, levels={s.levels} (pass them to GenerativeModel.__init__)",
    )
    phases = tuple(m.phases)
    expect(
        phases and all(isinstance(p, Phase) for p in phases),
        f"phases must be a non-empty tuple of Phase, got {phases!r}",
    )
    names = [p.name for p in phases]
    expect(len(set(names)) == len(names), f"phase names repeat: {names}")
    for p in phases:
        expect(
            isinstance(p.repeat, int) and p.repeat >= 1,
            f"phase {p.name!r}: repeat={p.repeat!r} must be a whole number >= 1",
        )
        expect(
            isinstance(p.optimizer, Mapping),
            f"phase {p.name!r}: optimizer overrides must be a mapping, got {p.optimizer!r}",
        )
        expect(
            isinstance(p.period, int) and p.period >= 1,
            f"phase {p.name!r}: period={p.period!r} must be a whole number >= 1",
        )
    expect(isinstance(type(m).select_best, bool), "select_best must be True or False")
    estimators = m.likelihood_estimators()
    expect(
        isinstance(estimators, Mapping),
        f"likelihood_estimators() must return a dict, got {type(estimators).__name__}",
    )
    for name, est in estimators.items():
        expect(
            isinstance(name, str) and ESTIMATOR_NAME.match(name),
            f"likelihood estimator name {name!r} is not a lowercase identifier",
        )
        expect(
            isinstance(est, LikelihoodEstimator),
            f"likelihood estimator {name!r} is a {type(est).__name__}, not a LikelihoodEstimator",
        )
    resolved = m.resolve_sampler()
    expect(
        isinstance(resolved, Mapping),
        f"resolve_sampler() must return a dict, got {type(resolved).__name__}",
    )
    settings = m.nll_settings()
    expect(
        isinstance(settings, Mapping)
        and all(
            isinstance(k, str) and (v is None or isinstance(v, (bool, int, float, str)))
            for k, v in settings.items()
        ),
        f"nll_settings() must return a dict of JSON scalars by name, got {settings!r}",
    )
    state = m.training_state()
    expect(
        isinstance(state, Mapping)
        and all(
            isinstance(k, str)
            and k.replace("_", "").isalnum()
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            for k, v in state.items()
        ),
        f"training_state() must return a dict of finite numbers by metric name, got {state!r}",
    )


def check_losses(s: Subject) -> None:
    """``training_losses`` returns ``[N]`` finite floating terms with ``loss`` among them, for
    every phase, and every trainable parameter of the phase gets a gradient from ``loss``."""
    m = s.build().train()
    x = s.data(5)
    names = named(m)
    for phase in m.phases:
        m.zero_grad(set_to_none=True)
        terms = m.training_losses(x, phase.name)
        expect(
            isinstance(terms, Mapping) and "loss" in terms,
            f"phase {phase.name!r}: training_losses must return a dict with 'loss', got "
            f"{sorted(terms) if isinstance(terms, Mapping) else type(terms).__name__}",
        )
        for k, v in terms.items():
            expect(
                isinstance(v, torch.Tensor) and v.is_floating_point(),
                f"phase {phase.name!r}: term {k!r} must be a floating tensor, got "
                f"{getattr(v, 'dtype', type(v).__name__)}",
            )
            expect(
                tuple(v.shape) == (5,),
                f"phase {phase.name!r}: term {k!r} has shape {tuple(v.shape)}; terms are "
                "per example, [N] = [5] (the runner takes the mean)",
            )
            expect(
                bool(torch.isfinite(v).all()),
                f"phase {phase.name!r}: term {k!r} is not finite: {v.detach().tolist()}",
            )
        terms["loss"].float().mean().backward()
        params = [p for p in m.parameters_for(phase.name) if p.requires_grad]
        expect(params, f"phase {phase.name!r} trains no parameters (parameters_for)")
        missing = [names.get(id(p), "?") for p in params if p.grad is None]
        expect(
            not missing,
            f"phase {phase.name!r}: {len(missing)} of its parameters get no "
            f"gradient from its loss: {short(missing)}",
        )


def check_phases(s: Subject) -> None:
    """A step of one phase changes its own parameters (``parameters_for(phase)``) and no other;
    the runner steps one optimizer per phase after zeroing every gradient."""
    m = s.prepared().train()
    x = s.data(5, seed=3)
    names = named(m)
    for phase in m.phases:
        own = {id(p) for p in m.parameters_for(phase.name)}
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        m.zero_grad(set_to_none=True)
        m.training_losses(x, phase.name)["loss"].float().mean().backward()
        params = [p for p in m.parameters_for(phase.name) if p.requires_grad]
        torch.optim.SGD(params, lr=0.1).step()
        after = dict(m.named_parameters())
        moved = [n for n in before if not torch.equal(before[n], after[n].detach())]
        outside = [n for n in moved if id(after[n]) not in own]
        expect(
            not outside,
            f"a step of phase {phase.name!r} changed parameters outside "
            f"parameters_for({phase.name!r}): {short(outside)}",
        )
        expect(
            any(id(after[n]) in own for n in moved),
            f"a step of phase {phase.name!r} changed none of its parameters "
            f"({short([names.get(i, '?') for i in own])})",
        )


def _attributes(m: torch.nn.Module) -> dict[tuple[str, str], Any]:
    """Every plain attribute of every submodule (not parameters, buffers or submodules)."""
    return {
        (name, k): v
        for name, mod in m.named_modules()
        for k, v in vars(mod).items()
        if not k.startswith("_")
    }


def _same(a: object, b: object) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):
        return False


def _draw(m: GenerativeModel, n: int, start: int, seed: int = 7, **sampler: Any) -> Sampled:
    with torch.inference_mode():
        return m.sample(n, generator=per_sample_generators(seed, start, n), **sampler)


def check_sample(s: Subject) -> None:
    """``sample`` returns ``Sampled``: ``[n, C, H, W]`` int64 levels in ``[0, K)`` and a whole,
    positive NFE per sample; the same generators give the same samples; sample *i* and its NFE
    do not depend on the batch it is drawn in; the call leaves no state behind; an unknown
    sampler option is refused."""
    m = s.prepared()
    c, h, w = s.shape
    attrs, weights = _attributes(m), copy.deepcopy(m.state_dict())
    out = _draw(m, 3, 0)
    expect(
        isinstance(out, Sampled),
        f"sample() returned a {type(out).__name__}; the contract is "
        "Sampled(x, nfe) (genbench.models.base)",
    )
    x = out.x
    expect(
        tuple(x.shape) == (3, c, h, w),
        f"sample(3) has shape {tuple(x.shape)}, expected {(3, c, h, w)}",
    )
    expect(x.dtype == torch.int64, f"samples are {x.dtype}; they must be int64 levels")
    expect(
        int(x.min()) >= 0 and int(x.max()) < s.levels,
        f"samples range over [{int(x.min())}, {int(x.max())}], outside [0, {s.levels})",
    )
    nfe = out.nfe
    expect(
        bool((nfe >= 1).all()) and torch.equal(nfe, nfe.round()),
        f"nfe must be a whole count >= 1 per sample, got {nfe.tolist()}",
    )
    again = _draw(m, 3, 0)
    expect(
        torch.equal(again.x, x),
        "the same generators gave different samples (draw every "
        "random number from the generator argument, through genbench.nn.random)",
    )
    last = _draw(m, 1, 2)
    agree = (last.x[0] == x[2]).float().mean().item()
    expect(
        agree >= BATCH_AGREEMENT,
        f"sample 2 depends on its batch: {agree:.0%} of its "
        "sub-pixels agree when drawn alone (draw with genbench.nn.random and the per-sample "
        "generators)",
    )
    expect(
        float(last.nfe[0]) == float(nfe[2]),
        f"sample 2 costs {float(nfe[2])} NFE in a batch of 3 and {float(last.nfe[0])} alone",
    )
    with torch.inference_mode():
        one = m.sample(2, generator=torch.Generator().manual_seed(0))
        m.sample(2)  # the global RNG
    expect(
        tuple(one.x.shape) == (2, c, h, w),
        f"sample(2, generator=<one Generator>) has shape {tuple(one.x.shape)}",
    )
    changed = [
        f"{mod}.{k}" if mod else k
        for (mod, k), v in _attributes(m).items()
        if (mod, k) not in attrs or not _same(v, attrs[(mod, k)])
    ]
    expect(
        not changed,
        f"sample() left state behind in attributes: {short(changed)} (return "
        "what a call costs in Sampled instead)",
    )
    for k, v in m.state_dict().items():
        expect(torch.equal(v, weights[k]), f"sample() changed {k}")
    try:
        with torch.inference_mode():
            m.sample(2, not_an_option=1)
    except ValueError as err:
        expect(
            "not_an_option" in str(err),
            f"the error for an unknown sampler option does not name it: {err}",
        )
    else:
        raise ConformanceError(
            "sample(not_an_option=1) was accepted; refuse unknown sampler "
            "options with ValueError (genbench.models.base."
            "check_sampler_options)"
        )


def check_nll(s: Subject) -> None:
    """``nll`` returns ``[N]`` finite, non-negative nats (or raises ``NotImplementedError`` when
    ``likelihood = "none"``); ``bound_terms`` are ``[N]`` too; on uniform random levels the mean
    NLL is at least ``D log K`` (Gibbs' inequality: no normalized model beats the uniform
    distribution on its own data), which catches numbers per dimension, per batch or of the
    wrong sign."""
    m = s.prepared()
    n = 4
    x = s.data(n, seed=4)
    if m.likelihood == "none":
        try:
            with torch.inference_mode():
                m.nll(x)
        except NotImplementedError:
            return
        raise ConformanceError("likelihood='none' but nll() did not raise NotImplementedError")
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(0)
        nll = m.nll(x)
        terms = m.bound_terms(x)
    expect(
        isinstance(nll, torch.Tensor) and nll.is_floating_point() and tuple(nll.shape) == (n,),
        f"nll() must return [N] = [{n}] floats, got "
        f"{tuple(nll.shape) if isinstance(nll, torch.Tensor) else type(nll).__name__}",
    )
    expect(bool(torch.isfinite(nll).all()), f"nll() is not finite: {nll.tolist()}")
    expect(
        bool((nll >= 0).all()),
        f"nll() is negative: {nll.tolist()} (nats of discrete data are >= 0)",
    )
    expect(isinstance(terms, Mapping), "bound_terms() must return a dict")
    for k, v in terms.items():
        expect(
            isinstance(v, torch.Tensor)
            and tuple(v.shape) == (n,)
            and bool(torch.isfinite(v).all()),
            f"bound_terms()[{k!r}] must be [N] = [{n}] finite nats",
        )
    d, nats = math.prod(s.shape), nll.double()
    floor = d * math.log(s.levels)
    mean, se = float(nats.mean()), float(nats.std() / math.sqrt(n))
    expect(
        mean + UNIFORM_Z * se + 1e-3 * d >= floor,
        f"mean nll of uniform random levels is {mean:.4g} nats (± {se:.2g}), below the "
        f"uniform distribution's D log K = {floor:.4g}: nll must be the total nats of each "
        "example (not per dimension, not a mean over the batch, not a log-likelihood)",
    )
    _check_nll_batch_independent(m, x)


def _check_nll_batch_independent(m: GenerativeModel, x: torch.Tensor) -> None:
    """With one generator per example (as the evaluator passes them), example i's ``nll`` and
    ``bound_terms`` do not depend on the batch it is scored in (models whose methods take no
    ``generator`` are not asked)."""
    from genbench.eval.likelihood import takes_generator

    n = x.shape[0]

    def scored(rows: slice) -> dict[str, torch.Tensor]:
        """``nll`` and bound terms, each ``[n]`` float64, of the examples ``x[rows]``."""
        start, stop = rows.indices(n)[:2]
        out = {}
        with torch.inference_mode():
            if takes_generator(m.nll):
                gens = per_sample_generators(11, start, stop - start)
                out["nll"] = m.nll(x[rows], generator=gens)
            if takes_generator(m.bound_terms):
                gens = per_sample_generators(11, start, stop - start)
                out |= m.bound_terms(x[rows], generator=gens)
        return {k: v.double() for k, v in out.items()}

    whole, part = scored(slice(0, n)), scored(slice(n // 2, n))
    for name, value in part.items():
        ref = whole[name][n // 2 :]
        expect(
            torch.allclose(value, ref, rtol=1e-4, atol=1e-4),
            f"{name} of examples {n // 2}..{n - 1} with their own generators depends on the "
            f"batch: {value.tolist()} alone vs {ref.tolist()} in a batch of {n} (draw the noise "
            "through genbench.nn.random with the per-example generators)",
        )


def check_state_dict(s: Subject) -> None:
    """The state dict survives ``torch.save`` / ``torch.load(weights_only=True)`` (how run
    folders are read) and a model freshly built and loaded with it, without any training call
    (as ``genbench eval run=`` does), samples and scores exactly like the original; so does a
    deep copy (as EMA makes)."""
    a = s.prepared().train()
    phase = a.phases[0].name
    a.training_losses(s.data(5, seed=5), phase)["loss"].float().mean().backward()
    torch.optim.SGD([p for p in a.parameters_for(phase) if p.requires_grad], lr=0.1).step()
    a.zero_grad(set_to_none=True)
    a.eval()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    try:
        state = torch.load(buf, weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ConformanceError(
            "its state dict does not load with torch.load(weights_only=True), "
            f"so genbench cannot read its checkpoints: {err}"
        ) from None
    b = s.build(seed=s.seed + 1)
    try:
        b.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as err:
        raise ConformanceError(f"a fresh model does not load its state dict: {err}") from None
    b.eval()
    x = s.data(1, seed=6)
    ref = _draw(a, 2, 0)
    ref_nll = None if a.likelihood == "none" else _seeded_nll(a, x)
    for what, other in (
        ("a freshly built model loaded with its state dict", b),
        ("a deep copy", copy.deepcopy(a)),
    ):
        got = _draw(other, 2, 0)
        expect(
            torch.equal(got.x, ref.x) and torch.equal(got.nfe, ref.nfe),
            f"{what} draws other samples from the same generators",
        )
        if ref_nll is not None:
            nll = _seeded_nll(other, x)
            expect(
                torch.allclose(nll, ref_nll, rtol=1e-5, atol=1e-6),
                f"{what} gives another nll: {nll.tolist()} vs {ref_nll.tolist()}",
            )


def _seeded_nll(m: GenerativeModel, x: torch.Tensor) -> torch.Tensor:
    """``m.nll(x)`` in float64 with the global RNG seeded as the evaluator seeds it."""
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(0)
        return m.nll(x).double()
