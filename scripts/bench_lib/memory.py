"""Peak memory: the resident set of ``genbench eval`` per model, on ``mnist5k`` (28x28x1, 256
levels) and on a ``folder`` of 3,000 generated 32x32 RGB PNGs (256 levels), with the default eval
settings (``eval.batch_size=256``, the whole test split, 5,000 samples, FID/IS/KID/PR where the
data has labels for the domain extractor).

For each (model, dataset) ``genbench train ... trainer.max_steps=1`` (evaluation off) writes a run;
then ``genbench eval run=<it>`` evaluates its checkpoint. The number is the child's peak resident
set (``ru_maxrss`` from ``wait4``); the train command's is reported beside it. Children run with
``device.threads=1`` (the machine is shared; threads do not change what is allocated).

Counts are cut only where a default would take hours on 2 CPU cores, never a batch or chunk size,
and the row says which: the DDPM bound over T = 1000 timesteps on 16 test images (its network
calls are ``vlb_max_batch`` rows whatever the image count), and 256 samples (one batch) for the
models that draw sub-pixel by sub-pixel or denoise 50 times. Held samples add ``N x C x H x W x 8``
bytes beyond those rows (31 MB for 5,000 MNIST-sized samples). ``--quick`` also cuts the NLL to one
batch of 64 images and the samples to 1,000, and measures the VAE only (the README's
``genbench train model=vae dataset=mnist5k``) unless ``--models`` says otherwise.

A watchdog kills a child whose resident set passes :data:`GUARD_MB` (the row then reads ``>``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench_lib import common
from bench_lib.common import Check, Result, log, model_names, table, verdict

TARGET_MB = 4096
GUARD_MB = 8192
FOLDER_IMAGES = 3000
#: counts cut per model in full mode (see the module docstring)
CUTS = {
    "ddpm": ("eval.nll_examples=16", "eval.n_samples=256"),
    "pixelcnn": ("eval.n_samples=256",),
    "pixelrnn": ("eval.n_samples=256",),
}
QUICK_CUTS = ("eval.nll_examples=64", "eval.n_samples=1000")


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss(args: list[str], cwd: Path, timeout: float) -> tuple[float, float, bool]:
    """(peak resident set in MB, wall seconds, killed by the watchdog) of ``genbench <args>``;
    raises when the command fails otherwise."""
    cmd = [sys.executable, "-m", "genbench", *args]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killed, reaped, lock = threading.Event(), threading.Event(), threading.Lock()

    def watch() -> None:  # never waits on the child itself: wait4 below reaps it
        while not reaped.wait(0.05):
            if _rss_mb(proc.pid) > GUARD_MB or time.perf_counter() - start > timeout:
                with lock:
                    if not reaped.is_set():
                        killed.set()
                        os.kill(proc.pid, signal.SIGKILL)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    with lock:
        reaped.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0 and not killed.is_set():
        tail = "\n".join(output.splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return usage.ru_maxrss / 1024, seconds, killed.is_set()


def make_folder(root: Path, n: int = FOLDER_IMAGES, size: int = 32, seed: int = 0) -> Path:
    """``n`` smooth random RGB PNGs (bilinear upsampling of 4x4 noise) under ``root``."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        small.resize((size, size), Image.BILINEAR).save(root / f"{i:05d}.png")
    return root


def _measure(model: str, dataset: list[str], label: str, tmp: Path, quick: bool) -> list[str]:
    run = tmp / "runs" / f"{model}_{label}"
    common = [f"paths.outputs={tmp / 'outputs'}", "device.threads=1"]
    train_mb, _, _ = peak_rss(
        [
            "train",
            f"model={model}",
            *dataset,
            "trainer.max_steps=1",
            "eval.nll=false",
            "eval.n_samples=0",
            "eval.sample_metrics=false",
            "eval.grid=1",
            f"hydra.run.dir={run}",
            *common,
        ],
        tmp,
        1800,
    )
    cuts = list(CUTS.get(model, ()))
    if quick:
        cuts = [c for c in cuts if c.split("=")[0] not in {q.split("=")[0] for q in QUICK_CUTS}]
        cuts = sorted(set(cuts) | set(QUICK_CUTS))
    log(f"memory: eval {model} on {label} ({', '.join(cuts) or 'defaults'})")
    eval_mb, seconds, killed = peak_rss(["eval", f"run={run}", *cuts, *common], tmp, 7200)
    shown = f"> {GUARD_MB} (killed)" if killed else f"{eval_mb:.0f}"
    ok = not killed and eval_mb < TARGET_MB
    return [
        model,
        label,
        f"{train_mb:.0f}",
        shown,
        f"{seconds:.0f}",
        ", ".join(cuts) or "none",
        verdict(ok),
    ]


def run(quick: bool) -> Result:
    res = Result("8. Peak memory of `genbench eval` per model (defaults, 1 CPU thread)")
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="gb_bench_mem_") as name:
        tmp = Path(name)
        folder = make_folder(tmp / "folder32")
        datasets = [
            ("mnist5k", ["dataset=mnist5k"]),
            ("folder 32x32x3", ["dataset=folder", f"dataset.root={folder}"]),
        ]
        models = ["vae"] if quick and common.SELECTED_MODELS is None else model_names()
        for label, overrides in datasets:
            for model in models:
                rows.append(_measure(model, overrides, label, tmp, quick))
                log(f"memory: {rows[-1]}")
        shutil.rmtree(tmp / "runs", ignore_errors=True)
    res.table = table(
        [
            "model",
            "dataset",
            "train peak MB (1 step)",
            "eval peak MB",
            "eval seconds",
            "counts cut",
            f"eval < {TARGET_MB} MB",
        ],
        rows,
    )
    worst = max(rows, key=lambda r: float(r[3].split()[-2] if "killed" in r[3] else r[3]))
    res.checks.append(
        Check(
            "memory: largest peak RSS of genbench eval (defaults, CPU)",
            f"{worst[3]} MB ({worst[0]}, {worst[1]})",
            f"< {TARGET_MB} MB",
            all(r[-1] == "met" for r in rows),
        )
    )
    res.notes = [
        f"peak resident set (ru_maxrss) of the whole process, including ~1 GB of "
        "libraries (torch, torch-fidelity, torchmetrics, scikit-learn); folder: "
        f"{FOLDER_IMAGES} PNGs, test split "
        "10% (300 images), no labels, so no sample-quality metrics there",
        "train column: `genbench train` with `trainer.max_steps=1` and evaluation off "
        "(default trainer.batch_size=128)",
    ]
    res.raw = {"rows": rows}
    return res
