"""GPU training throughput: the DDPM CIFAR-10 U-Net of ``experiment=ddpm_cifar10`` (35.7M
parameters, batch 128) through genbench's Trainer in bf16, with and without ``device.compile``.

Reported per variant: images/s, ms/step, peak GPU memory, model FLOPs utilisation (MFU: the
training step's FLOPs, counted once with ``torch.utils.flop_counter``, times steps/s, over the
GPU's dense bf16 peak) and host-device synchronisations per step outside the logging cadence
(``torch.cuda.set_sync_debug_mode``). CIFAR-10 cannot be downloaded here, so the data are random
levels of its shape, resident on the GPU as genbench keeps small datasets; a step's cost does not
depend on the pixel values. Without a GPU every row says "not measured".
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import rich
import torch
from omegaconf import OmegaConf

from bench_lib.common import NOT_MEASURED, Check, Result, compose_train, log, table
from genbench.build import build_model
from genbench.train.device import DeviceSetup
from genbench.train.loop import Trainer

TARGET_MFU = 0.40
#: dense bf16 tensor-core peak, FLOP/s, by a substring of torch.cuda.get_device_name()
#: (first match wins: "H100 PCIe" before "H100", "L40S" and "L40" before "L4")
PEAK_BF16 = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
}


def peak_bf16(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def step_flops(model: Any, x: torch.Tensor, setup: DeviceSetup) -> float:
    """FLOPs of one training step's forward and backward (optimizer and EMA not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, setup.autocast():
        model.training_losses(x, model.phases[0].name)["loss"].mean().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure(
    compile_: bool, device: torch.device, steps: int, warmup: int, overrides: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Train ``warmup`` then ``steps`` steps with genbench's Trainer; time the second part."""
    cfg = compose_train("experiment=ddpm_cifar10", *overrides)
    shape, levels = (3, 32, 32), 256
    torch.manual_seed(0)
    model = build_model(cfg.model, shape, levels)
    precision = "bf16" if device.type == "cuda" else "fp32"
    setup = DeviceSetup(device, precision, compile_, torch.get_num_threads())
    model = setup.place_model(model, shape)
    batch = int(cfg.trainer.batch_size)
    train = torch.randint(0, levels, (8 * batch, *shape), dtype=torch.uint8, device=device)
    val = train[:batch]
    flops = step_flops(model, train[:batch].long(), setup)
    never = 10**9
    tcfg = OmegaConf.merge(
        cfg.trainer,
        {"max_steps": warmup, "eval_every": never, "ckpt_every": never, "log_every": never},
    )
    devnull = open(os.devnull, "w")  # noqa: SIM115 (closed below)
    rich.reconfigure(file=devnull, force_terminal=True, width=120)
    with tempfile.TemporaryDirectory(prefix="gb_bench_gpu_") as tmp, devnull:
        trainer = Trainer(model, train, val, tcfg, cfg.optimizer, setup, Path(tmp), 0)
        trainer.save = lambda *a, **k: None  # checkpoints are not what is measured here
        trainer._maybe_select = lambda *a, **k: None
        start = time.perf_counter()
        trainer.fit()  # compilation and autotuning happen here
        first = time.perf_counter() - start
        tcfg.max_steps = warmup + steps
        trainer.total_steps = warmup + steps  # the budget in steps, fixed when it was built
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                trainer.fit()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    rich.reconfigure()
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {
        "ms_step": 1e3 * seconds / steps,
        "images_s": batch * steps / seconds,
        "flops_step": flops,
        "peak_bytes": peak,
        "syncs_per_step": syncs / steps,
        "first_seconds": first,
        "batch": batch,
        "params": sum(p.numel() for p in model.parameters()),
    }


def run(quick: bool) -> Result:
    res = Result(
        "7. GPU: DDPM CIFAR-10 U-Net training (bf16, batch 128), genbench Trainer, "
        "with and without torch.compile"
    )
    if not torch.cuda.is_available():
        res.checks = [
            Check("GPU DDPM CIFAR-10 images/s, MFU, peak memory", NOT_MEASURED + " (no GPU)")
        ]
        res.table = table(
            ["variant", "images/s", "ms/step", "peak memory", "MFU", "syncs/step"],
            [[v, *[NOT_MEASURED + " (no GPU)"] + ["-"] * 4] for v in ("eager", "torch.compile")],
        )
        return res
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peak = peak_bf16(name)
    steps, warmup = (20, 5) if quick else (100, 20)
    rows = []
    for compile_ in (False, True):
        label = "torch.compile" if compile_ else "eager"
        log(f"gpu: DDPM CIFAR-10, {label}, {warmup} + {steps} steps")
        m = measure(compile_, device, steps, warmup)
        mfu = m["flops_step"] * 1e3 / m["ms_step"] / peak if peak else None
        res.raw[label] = {**m, "gpu": name, "peak_bf16": peak}
        res.checks.append(
            Check(
                f"GPU DDPM CIFAR-10 {label} MFU ({name})",
                f"{100 * mfu:.1f} %" if mfu else "unknown GPU peak",
                f">= {100 * TARGET_MFU:.0f} %",
                None if mfu is None else mfu >= TARGET_MFU,
            )
        )
        rows.append(
            [
                label,
                f"{m['images_s']:.0f}",
                f"{m['ms_step']:.1f}",
                f"{m['peak_bytes'] / 2**30:.2f} GiB",
                f"{100 * mfu:.1f} %" if mfu else "-",
                f"{m['syncs_per_step']:.2f}",
                f"{m['first_seconds']:.0f} s",
            ]
        )
    res.table = table(
        [
            "variant",
            "images/s",
            "ms/step",
            "peak memory",
            "MFU",
            "syncs/step",
            f"first {warmup} steps (incl. compile)",
        ],
        rows,
    )
    res.notes = [
        f"{name}; MFU against {peak / 1e12:.0f} TFLOP/s dense bf16"
        if peak
        else f"{name}: dense bf16 peak unknown, MFU not computed",
        f"model FLOPs per step (forward + backward, one batch): "
        f"{res.raw['eager']['flops_step'] / 1e12:.2f} TFLOP; "
        f"{res.raw['eager']['params'] / 1e6:.1f}M parameters.",
        "syncs/step: host-device synchronisations flagged by CUDA sync debug mode "
        "during the timed steps; validation and checkpoints are off, and the one "
        "training-statistics row at the last step syncs once (1/steps).",
    ]
    return res
