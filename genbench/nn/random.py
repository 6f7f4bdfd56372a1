"""Random draws with one generator per sample, so sample *i* does not depend on the batch size.

Every ``generator`` argument accepts ``None`` (the global RNG), one ``torch.Generator`` (used for
the whole batch) or a sequence of generators, one per row of the batch.

>>> gens = per_sample_generators(seed=0, start=0, n=3)
>>> a = randn((3, 2), generator=gens)
>>> b = randn((1, 2), generator=per_sample_generators(seed=0, start=2, n=1))
>>> bool(torch.equal(a[2:], b))
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Generator = torch.Generator | Sequence[torch.Generator] | None


def per_sample_generators(
    seed: int, start: int, n: int, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """Generators for sample indices ``start .. start + n - 1`` seeded ``seed * 1_000_003 + i``."""
    return [
        torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
        for i in range(start, start + n)
    ]


def _device_of(generator: Generator, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(generator, torch.Generator):
        return generator.device
    if generator:
        return generator[0].device
    return torch.device("cpu")


def _draw(
    fn: Callable[..., Tensor],
    shape: Sequence[int],
    generator: Generator,
    device: str | torch.device | None,
    dtype: torch.dtype,
) -> Tensor:
    shape = tuple(shape)
    dev = _device_of(generator, device)
    if generator is None or isinstance(generator, torch.Generator):
        return fn(shape, generator=generator, device=dev, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    gen_dev = generator[0].device
    rows = [fn(shape[1:], generator=g, device=gen_dev, dtype=dtype) for g in generator]
    return torch.stack(rows).to(dev)


def randn(
    shape: Sequence[int],
    *,
    generator: Generator = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal draws of ``shape``, e.g. ``[N, C, H, W]`` (the first dim is the batch: row
    i comes from generator i when ``generator`` is a sequence)."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(
    shape: Sequence[int],
    *,
    generator: Generator = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform draws in ``[0, 1)`` of ``shape``, e.g. ``[N, C, H, W]`` (the first dim is the batch:
    row i comes from generator i when ``generator`` is a sequence)."""
    return _draw(torch.rand, shape, generator, device, dtype)


def categorical(
    logits: Tensor | None = None, *, probs: Tensor | None = None, generator: Generator = None
) -> Tensor:
    """Sample indices over the last dim of ``logits`` ``[N, ..., K]`` (softmax), or of ``probs``
    ``[N, ..., K]`` (non-negative weights, normalized here), by inverse CDF.

    Returns an int64 tensor ``[N, ...]``. Uses one uniform per draw, taken row-wise from the
    per-sample generators, so row *i* depends only on its own generator.

    >>> gens = per_sample_generators(seed=0, start=0, n=2)
    >>> categorical(probs=torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]), generator=gens)
    tensor([1, 2])
    """
    if (logits is None) == (probs is None):
        raise ValueError("categorical takes logits or probs (one of them)")
    if probs is None:
        probs = torch.softmax(logits.float(), dim=-1)
    cdf = probs.cumsum(-1)
    u = rand(probs.shape[:-1], generator=generator, device=probs.device).unsqueeze(-1)
    idx = torch.searchsorted(cdf, u * cdf[..., -1:]).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)
