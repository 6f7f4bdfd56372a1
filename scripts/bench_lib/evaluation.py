"""Evaluation: genbench's FID / IS / KID against torch-fidelity called directly, and cold against
warm cached reference statistics.

All three score the same N generated digits (drawn, seeded, with replacement from the train split)
against the digits test split with the same domain extractor (``digits-cnn``, trained once and
cached before timing) and the same torch-fidelity settings:

- direct: ``torch_fidelity.calculate_metrics`` on ready uint8 datasets, ``cache=False``;
- genbench cold: ``genbench.eval.fidelity.fidelity_metrics`` with an empty reference cache
  (it converts levels, hashes the reference and extractor, extracts both sides, writes the cache);
- genbench warm: the same call again, the reference features and statistics read from the cache.

(The ``fidelity`` CLI cannot load a custom extractor, so the direct call stands in for it.)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch_fidelity
from threadpoolctl import threadpool_info, threadpool_limits

from bench_lib.common import Check, Result, Spread, clocked, dataset, log, table, verdict
from genbench.eval.extractors import resolve_extractor
from genbench.eval.fidelity import RESULTS, ImageTensors, Settings, fidelity_metrics

METRICS = ("fid", "isc", "kid")
TARGET_DIRECT = 1.0
TARGET_WARM = 2.0


def _direct(x1: ImageTensors, x2: ImageTensors, extractor: Any, settings: Settings
            ) -> dict[str, float]:
    return torch_fidelity.calculate_metrics(
        input1=x1, input2=x2, cuda=False, feature_extractor=extractor.registered,
        feature_extractor_weights_path=str(extractor.weights), cache=False, save_cpu_ram=True,
        samples_shuffle=True, verbose=False, **settings.kwargs(len(x1), len(x2)))


def _timed_variants(samples: Any, data: Any, cfg: dict, cache: Path, extractor: Any,
                    settings: Settings, repeats: int) -> tuple[dict, dict]:
    """Seconds per variant over interleaved repeats, and the last values of each variant."""
    cpu = torch.device("cpu")
    x1 = ImageTensors(samples, data.levels, extractor.rgb)
    x2 = ImageTensors(data.test, data.levels, extractor.rgb)

    def genbench() -> dict[str, float]:
        rows = fidelity_metrics(samples, data, cfg, device=cpu, cache_dir=cache, protocol={})
        return {m.name: m.value for m in rows}

    times: dict[str, list[float]] = {k: [] for k in ("direct", "cold", "warm", "direct_blas")}
    values: dict[str, Any] = {}
    for r in range(-1, repeats):  # r = -1: untimed warm-up of every variant
        log(f"eval repeat {r + 1}/{repeats}" if r >= 0 else "eval warm-up")
        order = ("direct", "cold", "direct_blas") if r % 2 == 0 else ("direct_blas", "cold",
                                                                       "direct")
        for side in order:
            with threadpool_limits(None if side == "direct_blas" else 1, user_api="blas"):
                kinds = ("cold", "warm") if side == "cold" else (side,)
                if side == "cold":
                    shutil.rmtree(cache / "fidelity", ignore_errors=True)
                for kind in kinds:
                    with clocked() as c:
                        values[kind] = (genbench() if kind in ("cold", "warm")
                                        else _direct(x1, x2, extractor, settings))
                    if r >= 0:
                        times[kind].append(c.wall)
    return times, values


def run(quick: bool) -> Result:
    n, repeats = (1000, 3) if quick else (5000, 7)
    res = Result(f"2. Evaluation: FID/IS/KID of {n} digits vs the test split "
                 f"(digits-cnn extractor, 1 thread, {repeats} interleaved repeats)")
    data = dataset("digits")
    gen = torch.Generator().manual_seed(0)
    samples = data.train[torch.randint(0, len(data.train), (n,), generator=gen)].long()
    cfg = {"metrics": list(METRICS), "extractor": "domain", "reference_split": "test",
           "batch_size": 256, "seed": 0, "kid_subset_size": 1000, "isc_splits": 10}
    settings = Settings.from_cfg(cfg)
    blas = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
               default=0)
    with tempfile.TemporaryDirectory(prefix="gb_bench_eval_") as tmp:
        cache = Path(tmp)
        with clocked() as c_ext:
            extractor = resolve_extractor("domain", data, inception_weights=None,
                                          cache_dir=cache, device=torch.device("cpu"))
        times, values = _timed_variants(samples, data, cfg, cache, extractor, settings, repeats)
    per = list(zip(times["cold"], times["direct"], times["warm"], times["direct_blas"]))
    vs_direct = Spread.of([cold / direct for cold, direct, _, _ in per])
    warm_speedup = Spread.of([cold / warm for cold, _, warm, _ in per])
    blas_cost = Spread.of([db / direct for _, direct, _, db in per])
    ref = values["direct"]
    same = {k: abs(values["warm"][f"{b}@{extractor.name}"] - float(ref[k]))
            for k, (b, _) in RESULTS.items() if k in ref}
    res.raw = {"seconds": times, "values": values, "max_abs_diff_vs_direct": same,
               "extractor_seconds_first_use": c_ext.wall, "default_blas_threads": blas}
    ok1, ok2 = vs_direct.median <= TARGET_DIRECT, warm_speedup.median >= TARGET_WARM
    res.checks = [Check("eval genbench (cold cache) / torch-fidelity direct", vs_direct.fmt(),
                        f"<= {TARGET_DIRECT}", ok1),
                  Check("eval cold / warm reference cache (speed-up)", warm_speedup.fmt(),
                        f">= {TARGET_WARM}", ok2),
                  Check(f"eval direct, {blas} BLAS threads / 1 BLAS thread", blas_cost.fmt())]
    secs = {k: Spread.of(v) for k, v in times.items()}
    res.table = table(
        ["variant", "seconds (median [min-max])", "ratio", "target", "verdict"],
        [["torch-fidelity direct (cache=False)", secs["direct"].fmt(3), "1", "-", "-"],
         ["genbench, cold reference cache", secs["cold"].fmt(3),
          f"{vs_direct.fmt()} x direct", f"<= {TARGET_DIRECT}", verdict(ok1)],
         ["genbench, warm reference cache", secs["warm"].fmt(3),
          f"{warm_speedup.fmt()} x faster than cold", f">= {TARGET_WARM}", verdict(ok2)],
         [f"torch-fidelity direct, numpy BLAS with its default {blas} threads",
          secs["direct_blas"].fmt(3), f"{blas_cost.fmt()} x direct", "-", "-"]])
    res.notes = [f"reference: digits test split ({len(data.test)} images); extractor trained "
                 f"once before timing ({c_ext.wall:.1f} s, cached). Torch and numpy's BLAS "
                 "(FID's eigvals, KID's kernels) use 1 thread unless the row says otherwise.",
                 "largest |genbench - direct| over the metrics: "
                 + ", ".join(f"{k} {v:.2g}" for k, v in same.items())]
    return res
