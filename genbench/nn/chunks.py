"""Bounded-memory evaluation: run a per-row computation over row chunks whose size depends only on
the cost of one row, never on how many rows there are (the test split, the eval batch, a model's
internal sample count).

A chunk holds at most :data:`ELEMENT_BUDGET` elements of its largest per-row intermediate (128 MiB
as float32), so a VAE's ``[rows, C, H, W, K]`` level log-probabilities or an autoregressive model's
``[rows, K, C, H, W]`` logits stay under that size whatever ``eval.batch_size`` or
``iwae_samples`` are. Rows are independent, so the result is the unchunked one (bit-identical on
CPU, where a row's convolution does not depend on the other rows of its batch).

While autograd records (training), the computation runs in one call: the backward pass keeps
every chunk's intermediates anyway, and one call keeps training numbers exactly as they were.

>>> rows_per_chunk(per_row=1000, budget=4096)
4
>>> x = torch.arange(10.0)
>>> with torch.no_grad():
...     bool(torch.equal(map_rows(lambda t: t * 2, x, per_row=1, budget=3), x * 2))
True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: elements of the largest per-row intermediate one chunk may hold (2^25: 128 MiB as float32)
ELEMENT_BUDGET = 1 << 25


def rows_per_chunk(per_row: int, budget: int | None = None) -> int:
    """Rows whose intermediates of ``per_row`` elements each fit ``budget`` elements (default
    :data:`ELEMENT_BUDGET`); at least 1."""
    budget = ELEMENT_BUDGET if budget is None else int(budget)
    return max(1, budget // max(1, int(per_row)))


def row_slices(n: int, per_row: int, budget: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` of the chunks of ``n`` rows (see :func:`rows_per_chunk`)."""
    step = rows_per_chunk(per_row, budget)
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def map_rows(
    fn: Callable[..., Tensor], *tensors: Tensor, per_row: int, budget: int | None = None
) -> Tensor:
    """``fn(*tensors)`` computed over row chunks and concatenated along dim 0.

    Args:
        fn: maps row slices ``t[i:j]`` of every tensor to a ``[j - i, ...]`` result; rows must
            not influence each other.
        tensors: ``[R, ...]`` inputs sharing their first dimension R.
        per_row: elements of ``fn``'s largest intermediate per row (e.g. ``C*H*W*K``).
        budget: elements per chunk (default :data:`ELEMENT_BUDGET`).

    Returns:
        ``[R, ...]``, equal to ``fn(*tensors)``. With autograd recording, that single call.
    """
    slices = row_slices(tensors[0].shape[0], per_row, budget)
    if torch.is_grad_enabled() or len(slices) <= 1:
        return fn(*tensors)
    return torch.cat([fn(*(t[i:j] for t in tensors)) for i, j in slices])
