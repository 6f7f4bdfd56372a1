"""95 % intervals for evaluation numbers: of a mean from its samples (normal or Student-t
quantile times the standard error), and from bootstrap replicates of a statistic.

Every interval is two floats ``(lo, hi)`` in the unit of the number it surrounds, and its method
is written into the metric's ``protocol["interval"]`` by the caller:

- ``t-se``: ``mean ± t_{0.975, n-1} · s / √n`` (``s``: the sample standard deviation);
  ``normal-se`` uses the normal quantile 1.96 instead (for many samples the two agree);
- ``bootstrap-se-<B>``: ``value ± z · sd(replicates)`` from ``B`` resamples (with
  replacement) of the generated set, the reference side held fixed;
- :func:`percentile_interval`: the 2.5 / 97.5 % percentiles of the replicates (the plain
  percentile bootstrap; it needs a few hundred replicates).

Quantiles come from :mod:`scipy.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

#: the confidence level of every stored interval
CONFIDENCE = 0.95


def quantile(confidence: float = CONFIDENCE, dof: int | None = None) -> float:
    """The two-sided critical value: normal (``dof=None``) or Student-t with ``dof`` degrees of
    freedom (1.96 and 2.262 for 95 % with ``dof`` None and 9)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    p = 0.5 + confidence / 2
    return float(stats.norm.ppf(p) if dof is None else stats.t.ppf(p, dof))


def se_interval(
    value: float, se: float, *, dof: int | None = None, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """``value ± q · se`` (q: normal, or t with ``dof`` degrees of freedom)."""
    half = quantile(confidence, dof) * se
    return value - half, value + half


def mean_interval(
    samples: Sequence[float] | np.ndarray,
    *,
    method: str = "t",
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the mean of ``samples`` ``[n]``: ``mean ± q · s / √n`` with ``s`` the
    sample standard deviation (``ddof=1``) and ``q`` the t (``method="t"``, n-1 degrees of
    freedom) or normal (``method="normal"``) quantile. With fewer than two samples ``lo`` and
    ``hi`` are NaN (no spread to measure)."""
    if method not in ("t", "normal"):
        raise ValueError(f"method={method!r} is invalid: expected t or normal")
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    se = float(x.std(ddof=1)) / math.sqrt(x.size)
    lo, hi = se_interval(mean, se, dof=x.size - 1 if method == "t" else None, confidence=confidence)
    return mean, lo, hi


def resample_indices(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` bootstrap resamples of ``range(n)``: int64 ``[count, n]``, drawn with replacement
    by a generator seeded with ``seed`` (the same seed gives the same indices)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(count, n), dtype=np.int64)


def bootstrap_se_interval(
    value: float,
    replicates: Sequence[float] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[float, float]:
    """``value ± z · sd(replicates)`` (``ddof=1``), clipped to ``bounds`` (e.g. ``(0, inf)`` for
    FID, ``(0, 1)`` for precision); it always contains ``value``. NaN replicates are dropped;
    with fewer than two left, ``(nan, nan)``."""
    r = np.asarray(replicates, dtype=np.float64).reshape(-1)
    r = r[np.isfinite(r)]
    if r.size < 2 or not math.isfinite(value):
        return math.nan, math.nan
    lo, hi = se_interval(value, float(r.std(ddof=1)), confidence=confidence)
    return max(lo, bounds[0]), min(hi, bounds[1])


def percentile_interval(
    replicates: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """The percentile bootstrap interval: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles of ``replicates`` ``[N]`` (NaNs dropped; ``(nan, nan)`` when none are left)."""
    r = np.asarray(replicates, dtype=np.float64).reshape(-1)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(r, [tail, 1 - tail])
    return float(lo), float(hi)


def finite_or_none(lo: float, hi: float) -> tuple[float | None, float | None]:
    """``(lo, hi)`` as stored in a :class:`~genbench.eval.metric.Metric`: None for a bound that
    is not finite (no interval)."""
    ok = math.isfinite(lo) and math.isfinite(hi)
    return (float(lo), float(hi)) if ok else (None, None)
