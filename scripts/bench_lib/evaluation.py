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

The tiny domain CNN costs little next to FID/KID's own arithmetic, so a reference cache can save
little there. The second half times the same three variants with torch-fidelity's Inception-v3
(``inception-v3-compat``, 299x299 inputs) where the extractor dominates, as with every real
protocol; its pretrained weights cannot be downloaded here, so it runs with randomly initialised
weights of the same architecture: the timings are those of the real network, the metric values
are meaningless and are not reported.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch_fidelity
from threadpoolctl import threadpool_info, threadpool_limits

from bench_lib.common import Check, Result, Spread, clocked, dataset, log, table, verdict
from genbench.eval.extractors import resolve_extractor
from genbench.eval.fidelity import RESULTS, ImageTensors, Settings, fidelity_metrics

METRICS = ("fid", "isc", "kid")
TARGET_DIRECT = 1.0
TARGET_WARM = 2.0


def _direct(
    x1: ImageTensors, x2: ImageTensors, extractor: Any, settings: Settings
) -> dict[str, float]:
    return torch_fidelity.calculate_metrics(
        input1=x1,
        input2=x2,
        cuda=False,
        feature_extractor=extractor.registered,
        feature_extractor_weights_path=str(extractor.weights),
        cache=False,
        save_cpu_ram=True,
        samples_shuffle=True,
        verbose=False,
        **settings.kwargs(len(x1), len(x2)),
    )


def random_inception_weights(path: Path, seed: int = 0) -> Path:
    """Write a randomly initialised state dict of torch-fidelity's Inception-v3 to ``path``
    (timing stand-in for the pretrained file, which needs a download)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(seed)
    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(
            fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None
        ),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


def _timed_variants(
    samples: Any,
    data: Any,
    cfg: dict,
    cache: Path,
    extractor: Any,
    settings: Settings,
    repeats: int,
    blas: bool,
) -> tuple[dict, dict]:
    """Seconds per variant over interleaved repeats, and the last values of each variant
    (``blas``: an untimed warm-up first, and the direct call also timed with numpy's BLAS at its
    default thread count)."""
    cpu = torch.device("cpu")
    x1 = ImageTensors(samples, data.levels, extractor.rgb)
    n_ref = cfg.get("n_reference") or len(data.test)
    x2 = ImageTensors(data.test[:n_ref], data.levels, extractor.rgb)

    def genbench() -> dict[str, float]:
        rows = fidelity_metrics(samples, data, cfg, device=cpu, cache_dir=cache, protocol={})
        return {m.name: m.value for m in rows}

    sides = ("direct", "cold", "direct_blas") if blas else ("direct", "cold")
    times: dict[str, list[float]] = {k: [] for k in (*sides, "warm")}
    values: dict[str, Any] = {}
    for r in range(-1 if blas else 0, repeats):  # r = -1: untimed warm-up (domain CNN only)
        log(
            f"eval {extractor.name} repeat {r + 1}/{repeats}"
            if r >= 0
            else f"eval {extractor.name} warm-up"
        )
        for side in sides if r % 2 == 0 else sides[::-1]:
            with threadpool_limits(None if side == "direct_blas" else 1, user_api="blas"):
                kinds = ("cold", "warm") if side == "cold" else (side,)
                if side == "cold":
                    shutil.rmtree(cache / "fidelity", ignore_errors=True)
                for kind in kinds:
                    with clocked() as c:
                        values[kind] = (
                            genbench()
                            if kind in ("cold", "warm")
                            else _direct(x1, x2, extractor, settings)
                        )
                    if r >= 0:
                        times[kind].append(c.wall)
    return times, values


def _measure(
    res: Result,
    label: str,
    n: int,
    repeats: int,
    data: Any,
    cfg: dict,
    cache: Path,
    extractor: Any,
    values_meaningful: bool,
) -> list[list[str]]:
    """Time the variants for one extractor, add its checks to ``res``; returns table rows."""
    gen = torch.Generator().manual_seed(0)
    samples = data.train[torch.randint(0, len(data.train), (n,), generator=gen)].long()
    settings = Settings.from_cfg(cfg)
    blas = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=0)
    times, values = _timed_variants(
        samples, data, cfg, cache, extractor, settings, repeats, blas=values_meaningful
    )
    per = [dict(zip(times, t)) for t in zip(*times.values())]
    vs_direct = Spread.of([t["cold"] / t["direct"] for t in per])
    warm_speedup = Spread.of([t["cold"] / t["warm"] for t in per])
    warm_direct = Spread.of([t["warm"] / t["direct"] for t in per])
    ok1, ok2 = vs_direct.median <= TARGET_DIRECT, warm_speedup.median >= TARGET_WARM
    res.checks += [
        Check(
            f"eval {label}: genbench (cold cache) / torch-fidelity direct",
            vs_direct.fmt(),
            f"<= {TARGET_DIRECT}",
            ok1,
        ),
        Check(
            f"eval {label}: genbench (warm cache) / torch-fidelity direct",
            warm_direct.fmt(),
            f"<= {TARGET_DIRECT}",
            warm_direct.median <= TARGET_DIRECT,
        ),
        Check(
            f"eval {label}: cold / warm reference cache (speed-up)",
            warm_speedup.fmt(),
            f">= {TARGET_WARM}",
            ok2,
        ),
    ]
    secs = {k: Spread.of(v) for k, v in times.items()}
    sizes = f"{n} vs {cfg.get('n_reference') or len(data.test)}"
    rows = [
        [label, sizes, "torch-fidelity direct (cache=False)", secs["direct"].fmt(3), "1", "-", "-"],
        [
            label,
            sizes,
            "genbench, cold reference cache",
            secs["cold"].fmt(3),
            f"{vs_direct.fmt()} x direct",
            f"<= {TARGET_DIRECT}",
            verdict(ok1),
        ],
        [
            label,
            sizes,
            "genbench, warm reference cache",
            secs["warm"].fmt(3),
            f"{warm_speedup.fmt()} x faster than cold",
            f">= {TARGET_WARM}",
            verdict(ok2),
        ],
    ]
    raw: dict[str, Any] = {"seconds": times, "n": n}
    if values_meaningful:
        blas_cost = Spread.of([t["direct_blas"] / t["direct"] for t in per])
        res.checks.append(
            Check(f"eval {label}: direct, {blas} BLAS threads / 1 BLAS thread", blas_cost.fmt())
        )
        rows.append(
            [
                label,
                sizes,
                f"torch-fidelity direct, numpy BLAS with its default {blas} threads",
                secs["direct_blas"].fmt(3),
                f"{blas_cost.fmt()} x direct",
                "-",
                "-",
            ]
        )
        ref = values["direct"]
        raw["values"] = values
        raw["max_abs_diff_vs_direct"] = {
            k: abs(values["warm"][f"{b}@{extractor.name}"] - float(ref[k]))
            for k, (b, _) in RESULTS.items()
            if k in ref
        }
    res.raw[label] = raw
    return rows


def run(quick: bool) -> Result:
    n, repeats = (1000, 3) if quick else (5000, 7)
    # Inception at 1 CPU thread: ~0.23 s per image; the reference is cut to the sample count
    n_inc, repeats_inc = (32, 1) if quick else (100, 2)
    res = Result(
        "2. Evaluation: FID/IS/KID of generated digits vs the test split, "
        "genbench vs torch-fidelity called directly (1 thread)"
    )
    data = dataset("digits")
    cfg = {
        "metrics": list(METRICS),
        "reference_split": "test",
        "batch_size": 256,
        "seed": 0,
        "kid_subset_size": 1000,
        "isc_splits": 10,
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="gb_bench_eval_") as tmp:
        cache = Path(tmp)
        with clocked() as c_ext:
            domain = resolve_extractor(
                "domain", data, inception_weights=None, cache_dir=cache, device=torch.device("cpu")
            )
        rows += _measure(
            res,
            "digits-cnn",
            n,
            repeats,
            data,
            {**cfg, "extractor": "domain"},
            cache,
            domain,
            values_meaningful=True,
        )
        weights = random_inception_weights(cache / "inception-random.pt")
        inception = resolve_extractor(
            "inception-v3",
            data,
            inception_weights=str(weights),
            cache_dir=cache,
            device=torch.device("cpu"),
        )
        rows += _measure(
            res,
            "inception-v3 (random weights)",
            n_inc,
            repeats_inc,
            data,
            {
                **cfg,
                "extractor": "inception-v3",
                "inception_weights": str(weights),
                "batch_size": 64,
                "n_reference": n_inc,
            },
            cache,
            inception,
            values_meaningful=False,
        )
    res.table = table(
        [
            "extractor",
            "generated vs reference images",
            "variant",
            "seconds (median [min-max])",
            "ratio",
            "target",
            "verdict",
        ],
        rows,
    )
    diffs = res.raw["digits-cnn"]["max_abs_diff_vs_direct"]
    res.notes = [
        f"reference: digits test split ({len(data.test)} images), batch 256 (64 for "
        "Inception); the domain extractor is trained "
        f"once before timing ({c_ext.wall:.1f} s, cached). Torch "
        "and numpy's BLAS (FID's eigvals, KID's kernels) use 1 thread unless the row "
        "says otherwise.",
        "largest |genbench - direct| over the metrics (digits-cnn): "
        + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()),
        "inception-v3 rows: the real network's cost with random weights (the pretrained "
        "file cannot be downloaded here); their metric values are not meaningful.",
    ]
    return res
