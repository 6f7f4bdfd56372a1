"""CPU threading: ms per VAE training step (digits, batch 128) with 1 or 2 torch threads, alone or
beside a busy process (a spinning Python loop), with ``OMP_WAIT_POLICY=PASSIVE`` or ``ACTIVE``.

The wait policy is read when OpenMP starts, so each policy gets a fresh child process
(``python -m bench_lib.threads --child``) that times every (load, threads) pair: it starts and
stops the busy process itself, sets the thread count, warms up and times the steps. genbench's
defaults are PASSIVE and ``device.threads=auto`` (all cores for a single job, one per job in a
parallel sweep).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_lib.common import Check, Result, Spread, loadavg, log, table

POLICIES = ("PASSIVE", "ACTIVE")
THREADS = (1, 2)
LOADS = ("alone", "busy")
SCRIPTS = Path(__file__).resolve().parents[1]


def _spinner() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)
    return proc


def child(steps: int) -> dict[str, float]:
    """In the child (its OMP_WAIT_POLICY set by the parent): ms per VAE training step for every
    (load, threads) pair; the busy process is started and stopped here."""
    import torch

    from bench_lib.common import build_model, compose_train, dataset, make_optimizers
    from genbench.data.base import Batches

    cfg = compose_train("model=vae", "dataset=digits")
    data = dataset("digits")
    model = build_model(cfg, data, torch.device("cpu"))
    opt = make_optimizers(model, cfg.optimizer)["main"]
    batches = Batches(data.train, 128, 0)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model.training_losses(batches.next(), "main")["loss"].mean().backward()
        opt.step()

    out = {}
    for load in LOADS:
        spinner = _spinner() if load == "busy" else None
        try:
            for t in THREADS:
                torch.set_num_threads(t)
                for _ in range(3):
                    step()
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                out[f"{t}/{load}"] = 1e3 * (time.perf_counter() - start) / steps
        finally:
            if spinner is not None:
                spinner.terminate()
                spinner.wait(timeout=10)
    return out


def _spawn_child(policy: str, steps: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["OMP_WAIT_POLICY"] = policy
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-m", "bench_lib.threads", "--child",
                          "--steps", str(steps)],
                         env=env, capture_output=True, text=True, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> Result:
    steps, repeats = (10, 1) if quick else (40, 3)
    res = Result(f"6. CPU threading: VAE step (digits, batch 128), {steps} timed steps per "
                 f"configuration, {repeats} repeats (policies alternate)")
    ms: dict[tuple[str, int, str], list[float]] = {}
    loads = []
    for r in range(repeats):
        for policy in POLICIES if r % 2 == 0 else POLICIES[::-1]:
            log(f"threads: OMP_WAIT_POLICY={policy}, repeat {r + 1}/{repeats}")
            loads.append(loadavg())
            for key, value in _spawn_child(policy, steps).items():
                t, load = key.split("/")
                ms.setdefault((policy, int(t), load), []).append(value)
    s = {k: Spread.of(v) for k, v in ms.items()}
    cores = os.cpu_count() or 1
    rows = []
    for policy in POLICIES:
        for t in THREADS:
            default = []
            if policy == "PASSIVE" and t == min(cores, 2):
                default.append("single job (auto = all cores)")
            if policy == "PASSIVE" and t == 1:
                default.append("parallel sweep (auto = 1 per job)")
            a, b = s[(policy, t, "alone")], s[(policy, t, "busy")]
            rows.append([policy, t, a.fmt(1), b.fmt(1), f"{b.median / a.median:.2f}",
                         ", ".join(default) or "-"])
    for load in LOADS:
        for policy in POLICIES:
            r2 = s[(policy, 2, load)].median / s[(policy, 1, load)].median
            res.checks.append(Check(f"threads 2 / 1 thread step time, {policy}, {load}",
                                    f"{r2:.2f}"))
        best = min(s[(p, t, load)].median for p in POLICIES for t in THREADS)
        res.checks.append(Check(f"threads genbench default (PASSIVE, auto={min(cores, 2)}) / "
                                f"best config, {load}",
                                f"{s[('PASSIVE', min(cores, 2), load)].median / best:.2f}"))
    res.table = table(["OMP_WAIT_POLICY", "threads", "alone ms/step", "beside a busy process "
                       "ms/step", "busy / alone", "genbench default for"], rows)
    res.notes = [f"load average (1/5/15 min) at the start of each child: {', '.join(loads)} "
                 "(other processes share this machine).",
                 "'busy' adds one spinning Python process (one core's worth of load)."]
    res.raw = {f"{p}/{t}/{load}": v for (p, t, load), v in ms.items()}
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    print(json.dumps(child(ap.parse_args().steps)))
