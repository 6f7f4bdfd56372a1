"""The conditional mode of the contract: a model built with ``num_classes`` takes labels ``y``
in ``training_losses``, ``sample``, ``nll`` and ``bound_terms``, and the labels matter."""

from __future__ import annotations

import torch

from genbench.models.base import GenerativeModel
from genbench.nn.random import per_sample_generators
from genbench.testing.checks import BATCH_AGREEMENT
from genbench.testing.subject import ConformanceError, Skipped, Subject, expect

#: classes of the conditional model the check builds
CLASSES = 3
#: scale of the noise added to every parameter before comparing labels (tables that start at
#: zero, such as a flow's class prior, would otherwise make every label look alike)
JITTER = 0.05


def _conditional(s: Subject) -> GenerativeModel:
    torch.manual_seed(s.seed)
    try:
        model = s.factory(shape=s.shape, levels=s.levels, num_classes=CLASSES, **s.kwargs)
    except Exception as err:  # noqa: BLE001  (reported as the check's failure)
        raise ConformanceError(
            f"could not build it with num_classes={CLASSES}: {type(err).__name__}: {err}"
        ) from err
    expect(model.conditional, f"built with num_classes={CLASSES} but .conditional is False")
    expect(model.num_classes == CLASSES, f"num_classes is {model.num_classes}, not {CLASSES}")
    return model


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.equal(a, b)


def check_conditional(s: Subject) -> None:
    """For a class with ``conditional_support``: unconditional models refuse labels; a
    conditional one requires them, trains on them (finite ``[N]`` terms, gradients), its samples
    for a label are reproducible and do not depend on the batch, and with generic weights the
    label changes the samples and (with a likelihood) the NLL."""
    plain = s.build()
    if not type(plain).conditional_support:
        raise Skipped("no conditional mode (conditional_support = False)")
    x = s.data(6, seed=3)
    y = torch.arange(6) % CLASSES
    try:
        with torch.inference_mode():
            plain.sample(2, y=y[:2])
    except ValueError:
        pass
    else:
        raise ConformanceError("an unconditional model accepted labels y in sample()")

    m = _conditional(s).train()
    for phase in m.phases:
        terms = m.training_losses(x, phase.name, y=y)
        loss = terms["loss"]
        expect(
            tuple(loss.shape) == (6,) and bool(torch.isfinite(loss).all()),
            f"phase {phase.name!r}: conditional loss must be [N] finite, got {tuple(loss.shape)}",
        )
        loss.float().mean().backward()
    expect(
        any(p.grad is not None for p in m.parameters()),
        "no gradient reached the parameters from the conditional loss",
    )
    m.zero_grad(set_to_none=True)
    try:
        m.training_losses(x, m.phases[-1].name)
    except ValueError:
        pass
    else:
        raise ConformanceError("a conditional model trained without labels y (expected ValueError)")
    with torch.no_grad():
        g = torch.Generator().manual_seed(s.seed + 11)
        for p in m.parameters():
            p.add_(JITTER * torch.randn(p.shape, generator=g).to(p))
    m.eval()

    def draw(labels: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``[n, C, H, W]`` samples for ``labels`` ``[n]`` (generators from ``start``)."""
        with torch.inference_mode():
            gens = per_sample_generators(5, start, len(labels))
            return m.sample(len(labels), y=labels, generator=gens).x

    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    a = draw(zeros)
    expect(torch.equal(a, draw(zeros)), "the same generators and labels gave different samples")
    expect(_differ(a, draw(ones)), "samples for label 0 and label 1 are identical")
    alone = draw(torch.tensor([0]), start=2)
    agree = (alone[0] == a[2]).float().mean().item()
    expect(
        agree >= BATCH_AGREEMENT,
        f"conditional sample 2 depends on its batch: {agree:.0%} of its sub-pixels agree",
    )
    if m.likelihood == "none":
        return
    with torch.inference_mode():
        torch.manual_seed(0)
        n0 = m.nll(x, y=torch.zeros(6, dtype=torch.long)).double()
        torch.manual_seed(0)
        n1 = m.nll(x, y=torch.ones(6, dtype=torch.long)).double()
    expect(
        tuple(n0.shape) == (6,) and bool(torch.isfinite(n0).all()),
        f"nll(x, y) must be [N] finite nats, got {tuple(n0.shape)}",
    )
    expect(_differ(n0, n1), "nll(x, y=0) equals nll(x, y=1): the label does not reach it")
