"""95 % intervals of the sample-quality metrics, from the features torch-fidelity extracted:
bootstrap over the generated set for FID and IS, disjoint subsets for precision and recall, and
KID's own subset spread (the reference side held fixed throughout)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch_fidelity
from torch import Tensor
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric

from genbench.eval.intervals import bootstrap_se_interval, resample_indices, se_interval

if TYPE_CHECKING:
    from genbench.eval.fidelity import Settings

log = logging.getLogger(__name__)

#: disjoint subsets of the generated set behind the precision / recall interval
PRC_SUBSETS = 10


def add_intervals(
    result: Mapping[str, float],
    f1: Mapping[str, Tensor],
    f2: Mapping[str, Tensor],
    layers: Mapping[str, str],
    kw: Mapping[str, Any],
    settings: Settings,
) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """95 % intervals of torch-fidelity's ``result`` (keyed as torch-fidelity keys them), and
    their methods, from the generated features ``f1`` and reference features ``f2`` (layer ->
    ``[N, F]``); the reference side is held fixed throughout.

    - FID and IS (``bootstrap-se-<B>``): the generated features are resampled with replacement
      ``B`` times (seeded by ``settings.seed``), each metric is recomputed from the resample with
      torch-fidelity's functions, and the interval is ``value ± 1.96 · sd`` of those replicates
      (FID clipped at 0). ``B`` = ``settings.resamples(F)``; 0 gives none.
    - precision / recall (``subsets-<S>-t``): resampling with replacement would put duplicates
      in the k-NN balls, so the generated set is split into ``S`` disjoint random subsets
      instead, each scored against the whole reference; ``value ± t_{S-1} · sd / √S``, clipped
      to [0, 1]. Skipped with ``bootstrap=0``.
    - KID (``kid-subsets-se``): torch-fidelity's ``kid_std`` is the spread of the estimate over
      subsets of ``m`` images; the estimate from ``N`` generated images has a standard error of
      about ``kid_std · √(m / N)`` (the MMD estimator's variance falls as 1/m), so the interval
      is ``kid ± 1.96 · kid_std · √(m / N)``. Only when ``m < N`` (else the subsets all hold
      the same generated images and ``kid_std`` says nothing about them).
    """
    bounds: dict[str, tuple[float, float]] = {}
    methods: dict[str, str] = {}
    n1 = len(next(iter(f1.values())))
    fid_dims = f1[layers["fid"]].shape[1] if "fid" in layers else 0
    b = settings.resamples(max(fid_dims, 1))
    boot = [m for m in ("fid", "isc") if m in layers] if b > 0 and n1 >= 2 else []
    if boot:
        start = time.perf_counter()
        stats2 = fid_featuresdict_to_statistics(f2, layers["fid"]) if "fid" in boot else None
        reps: dict[str, list[float]] = {"fid": [], "isc": []}
        for idx in resample_indices(n1, b, settings.seed):
            take = torch.from_numpy(idx)
            g = {layer: f1[layer][take] for layer in {layers[m] for m in boot}}
            if "fid" in boot:
                stats1 = fid_featuresdict_to_statistics(g, layers["fid"])
                fid = fid_statistics_to_metric(stats1, stats2, verbose=False)
                reps["fid"].append(fid[torch_fidelity.KEY_METRIC_FID])
            if "isc" in boot:
                isc = isc_featuresdict_to_metric(g, layers["isc"], **kw)
                reps["isc"].append(isc[torch_fidelity.KEY_METRIC_ISC_MEAN])
        for m, key, clip in (
            ("fid", torch_fidelity.KEY_METRIC_FID, (0.0, math.inf)),
            ("isc", torch_fidelity.KEY_METRIC_ISC_MEAN, (1.0, math.inf)),
        ):
            if m in boot:
                bounds[key] = bootstrap_se_interval(result[key], reps[m], bounds=clip)
                methods[key] = f"bootstrap-se-{b}"
        log.info(
            "%s intervals from %d resamples of %d images: %.2f s",
            "/".join(boot),
            b,
            n1,
            time.perf_counter() - start,
        )
    k = int(kw.get("prc_neighborhood", 3))
    subsets = min(PRC_SUBSETS, n1 // (k + 1))
    if "prc" in layers and b > 0 and subsets >= 2:
        order = np.random.default_rng(settings.seed).permutation(n1)
        parts = [torch.from_numpy(p) for p in np.array_split(order, subsets)]
        scores = [
            prc_featuresdict_to_metric(
                {layers["prc"]: f1[layers["prc"]][p]}, f2, layers["prc"], **kw
            )
            for p in parts
        ]
        for key in (torch_fidelity.KEY_METRIC_PRECISION, torch_fidelity.KEY_METRIC_RECALL):
            x = np.array([s[key] for s in scores], dtype=np.float64)
            lo, hi = se_interval(
                result[key], float(x.std(ddof=1)) / math.sqrt(x.size), dof=x.size - 1
            )
            bounds[key], methods[key] = (max(lo, 0.0), min(hi, 1.0)), f"subsets-{subsets}-t"
    m = int(kw.get("kid_subset_size", 0))
    if "kid" in layers and 0 < m < n1:
        key, std = torch_fidelity.KEY_METRIC_KID_MEAN, result[torch_fidelity.KEY_METRIC_KID_STD]
        bounds[key] = se_interval(result[key], std * math.sqrt(m / n1))
        methods[key] = "kid-subsets-se"
    return {k: v for k, v in bounds.items() if all(map(math.isfinite, v))}, methods
