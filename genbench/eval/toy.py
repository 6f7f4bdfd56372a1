"""Sample metrics for 2-D toy datasets whose exact discrete density is known.

Pure functions of generated levels ``[N, 2, 1, 1]`` and a
:class:`~genbench.data.toy2d.ToyDensity`; they work for every family, including those without a
likelihood (GANs).

Mode metrics (Srivastava et al. 2017, VEEGAN, Sec. 5.1), for mixtures of M Gaussians with std σ:
a sample is *high quality* when it lies within ``3σ`` of its nearest mode centre; a mode is
*covered* when at least ``min_count`` (default 1, as in VEEGAN) high-quality samples have it as
nearest mode. Distances are taken in level units between the sample's cell and the mode centre.
For a perfect sampler about 98.9 % of samples are high quality (a 2-D Gaussian puts
1 - exp(-9/2) of its mass within 3σ) and every mode is covered.

Sample log-likelihood: the mean true log-probability E_q[log p(x)] in nats of the samples under
the exact discrete density p. A perfect sampler scores -H(p) (minus the entropy); collapsing onto
the most likely cells scores higher, so read it next to mode coverage. Cells with p = 0 (off the
support) have log p = -inf; their share is reported, and the average clips every log-probability
from below at ``log(floor / K²)``, i.e. at a cell ``1/floor`` times less likely than under the
uniform distribution on the K x K grid (default floor 1e-3: about -15.2 nats for K = 64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genbench.data.toy2d import ToyDensity

#: high-quality radius in mode standard deviations (VEEGAN)
HQ_STDS = 3.0


def _points(samples: Tensor, density: ToyDensity) -> Tensor:
    if samples.ndim != 4 or tuple(samples.shape[1:]) != (2, 1, 1):
        raise ValueError(f"toy samples must be [N, 2, 1, 1], got {tuple(samples.shape)}")
    x = samples.reshape(-1, 2).long().cpu()
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= density.levels):
        raise ValueError(f"toy samples must be levels in [0, {density.levels})")
    return x.double()


def mode_metrics(
    samples: Tensor, density: ToyDensity, *, n_stds: float = HQ_STDS, min_count: int = 1
) -> dict[str, float]:
    """Mode coverage and sample quality of generated toy samples.

    Args:
        samples: ``[N, 2, 1, 1]`` integer levels.
        density: a mixture toy density (``density.modes`` set).
        n_stds: high-quality radius in component standard deviations.
        min_count: high-quality samples a mode needs to count as covered.

    Returns:
        ``modes_covered`` (count), ``modes_total`` (M), ``high_quality_share`` (in [0, 1]) and
        ``mode_kl``: KL(q̂ || uniform) in nats between the distribution of high-quality samples
        over their nearest modes and the uniform mixture weights (0 is ideal, log M is
        total collapse onto one mode; ``nan`` when no sample is high quality).
    """
    if density.modes is None:
        raise ValueError(f"toy density {density.name!r} is not a mixture: no modes to cover")
    x = _points(samples, density)  # [N, 2] levels
    modes = density.modes.double()  # [M, 2] levels
    m = modes.shape[0]
    if x.shape[0] == 0:
        raise ValueError("mode_metrics needs at least one sample")
    dist, nearest = torch.cdist(x, modes).min(dim=1)  # [N] level units, [N] mode index
    hq = dist <= n_stds * density.mode_std
    counts = torch.bincount(nearest[hq], minlength=m).double()  # high-quality samples per mode
    n_hq = float(counts.sum())
    if n_hq > 0:
        q = counts / n_hq
        nz = q > 0
        kl = float((q[nz] * (q[nz] * m).log()).sum())
    else:
        kl = math.nan
    return {
        "modes_covered": float((counts >= min_count).sum()),
        "modes_total": float(m),
        "high_quality_share": float(hq.double().mean()),
        "mode_kl": kl,
    }


def sample_log_likelihood(
    samples: Tensor, density: ToyDensity, *, floor: float = 1e-3
) -> dict[str, float]:
    """Mean true log-probability of generated samples under the exact discrete density.

    Args:
        samples: ``[N, 2, 1, 1]`` integer levels.
        density: the toy's exact density.
        floor: log-probabilities are clipped from below at ``log(floor / K²)``.

    Returns:
        ``sample_ll``: mean clipped log p(x) in nats; ``sample_ll_gap``: ``sample_ll + H(p)``
        (about 0 for exact samples, negative for samples in unlikely cells); ``zero_prob_share``:
        share of samples on cells with p = 0; ``clipped_share``: share clipped (includes those).
    """
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    x = _points(samples, density).long()
    if x.shape[0] == 0:
        raise ValueError("sample_log_likelihood needs at least one sample")
    logp = density.probs.double()[x[:, 0], x[:, 1]].log()  # [N] nats, -inf off support
    log_floor = math.log(floor) - 2 * math.log(density.levels)
    ll = float(logp.clamp(min=log_floor).mean())
    return {
        "sample_ll": ll,
        "sample_ll_gap": ll + density.entropy,
        "zero_prob_share": float(torch.isneginf(logp).double().mean()),
        "clipped_share": float((logp < log_floor).double().mean()),
    }
