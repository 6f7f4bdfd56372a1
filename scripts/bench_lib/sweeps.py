"""Whole-command wall times: a 4-job sweep with the joblib launcher (2 workers, 1 thread each by
``device.threads=auto``) against Hydra's basic launcher (one job after another, with one thread
and with genbench's default of all cores), and the quickstart (every model, full mode only).

Each command runs as the user would type it (``.venv/bin/genbench``), with genbench's defaults:
``OMP_NUM_THREADS`` is removed from the environment so ``device.threads=auto`` decides, and every
run writes into its own fresh ``paths.outputs``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench_lib.common import NOT_MEASURED, ROOT, Check, Result, Spread, loadavg, log, table, verdict

GENBENCH = ROOT / ".venv" / "bin" / "genbench"
TARGET = 0.6
JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
#: one sweep job: the default VAE run (validation every 100 steps, checkpoint every 200), shorter
JOB = ("model=vae", "dataset=digits", "eval.sample_metrics=false", "eval.nll_examples=100")


def timed_command(args: list[str], outputs: Path, timeout: float) -> float:
    """Wall seconds of ``genbench <args> paths.outputs=<outputs>``; raises when it fails."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [str(GENBENCH), *args, f"paths.outputs={outputs}"]
    start = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=outputs.parent, env=env, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{tail}")
    return seconds


SIDES = {"basic1": ["device.threads=1"], "basic": [], "joblib": list(JOBLIB)}


def sweep_pairs(steps: int, pairs: int, tmp: Path) -> dict[str, list[float]]:
    """Wall seconds of each sweep variant, in rotating order: the basic launcher with one thread
    per job (``basic1``) and with genbench's default (``basic``: all cores), and joblib."""
    base = ["train", "-m", *JOB, f"trainer.max_steps={steps}", "seed=0,1,2,3"]
    times: dict[str, list[float]] = {k: [] for k in SIDES}
    names = list(SIDES)
    for r in range(pairs):
        for side in names[r % 3 :] + names[: r % 3]:
            log(f"sweep of 4 x {steps} steps, {side}, repeat {r + 1}/{pairs}")
            times[side].append(timed_command(base + SIDES[side], tmp / f"{side}{steps}_{r}", 1800))
    return times


def run_sweeps(quick: bool) -> Result:
    plan = [(100, 1)] if quick else [(200, 3), (800, 3)]
    res = Result(
        f"4. Sweeps: 4 jobs (`genbench train -m {' '.join(JOB)} seed=0,1,2,3 "
        "trainer.max_steps=N`), joblib launcher with 2 workers vs the basic launcher"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="gb_bench_sweep_") as tmp:
        for steps, pairs in plan:
            before = loadavg()
            times = sweep_pairs(steps, pairs, Path(tmp))
            ratio1 = Spread.of([j / b for b, j in zip(times["basic1"], times["joblib"])])
            ratio = Spread.of([j / b for b, j in zip(times["basic"], times["joblib"])])
            ok = ratio1.median <= TARGET
            res.checks.append(
                Check(
                    f"sweep joblib(2 workers) / basic wall time, 1-thread jobs, 4 x {steps} steps",
                    ratio1.fmt(),
                    f"<= {TARGET}",
                    ok,
                )
            )
            res.checks.append(
                Check(
                    f"sweep joblib(2 workers) / basic wall time, genbench's "
                    f"default threads, 4 x {steps} steps",
                    ratio.fmt(),
                )
            )
            s = {k: Spread.of(v) for k, v in times.items()}
            rows.append(
                [
                    steps,
                    s["basic1"].fmt(1),
                    s["basic"].fmt(1),
                    s["joblib"].fmt(1),
                    ratio1.fmt(),
                    f"<= {TARGET}",
                    verdict(ok),
                    ratio.fmt(),
                    before,
                ]
            )
            res.raw[f"steps={steps}"] = times
    res.table = table(
        [
            "steps per job",
            "basic s, 1 thread per job",
            "basic s, threads auto (all cores)",
            "joblib n_jobs=2 s (threads auto = 1 per job)",
            "joblib / basic 1-thread",
            "target",
            "verdict",
            "joblib / basic auto",
            "load average before",
        ],
        rows,
    )
    res.notes = [
        "each command in its own paths.outputs, order rotating; the basic launcher "
        "runs the 4 jobs in one process (imports paid once), joblib starts 2 worker "
        "processes that each import torch, torch-fidelity and genbench.",
        "the target applies to single-threaded jobs (the issue's setting); with "
        "genbench's defaults the basic launcher's jobs use both cores, so the joblib "
        "gain is the gain of process parallelism over intra-op threads.",
    ]
    return res


def run_quickstart(quick: bool) -> Result:
    res = Result(
        "5. Quickstart: `genbench train experiment=quickstart` (every model, joblib, 2 jobs)"
    )
    if quick:
        res.checks = [Check("quickstart wall time", NOT_MEASURED + " (full mode only)")]
        res.table = table(
            ["command", "wall time"],
            [["genbench train experiment=quickstart", NOT_MEASURED + " (full mode only)"]],
        )
        return res
    before = loadavg()
    log(f"quickstart (load {before}); about 10 minutes on an idle 2-core machine")
    tmp = Path(tempfile.mkdtemp(prefix="gb_bench_quickstart_"))
    try:
        seconds = timed_command(["train", "experiment=quickstart"], tmp / "outputs", 3600)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    after = loadavg()
    res.checks = [
        Check(
            "quickstart wall time", f"{seconds / 60:.1f} min", "~10 min on an idle 2-core machine"
        )
    ]
    res.table = table(
        ["command", "wall time", "load average before", "load average after"],
        [
            [
                "genbench train experiment=quickstart",
                f"{seconds:.0f} s ({seconds / 60:.1f} min)",
                before,
                after,
            ]
        ],
    )
    res.raw = {"seconds": seconds, "load_before": before, "load_after": after}
    return res
