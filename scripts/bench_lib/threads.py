"""CPU threading: ms per VAE training step (digits, batch 128) with 1 or 2 torch threads, alone or
beside a busy process (a spinning Python loop), under three OpenMP wait policies: ``PASSIVE``
(sleep at once), ``ACTIVE`` (spin without bound) and genbench's bounded spin
(``genbench.cli.SPIN``), plus genbench's ``device.threads=auto`` on CPU: all cores, adjusted
while training by ``ThreadGovernor`` to the cores the busy process leaves free.

The wait policy is read when OpenMP starts, so each policy gets a fresh child process
(``python -m bench_lib.threads --child``) that times every (load, threads) pair: it starts and
stops the busy process itself, sets the thread count, warms up and times the steps.
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
from genbench.cli import SPIN

POLICIES = ("PASSIVE", "ACTIVE", "genbench")
THREADS: tuple[int | str, ...] = (1, 2, "auto")
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
    from genbench.train.device import ThreadGovernor

    cfg = compose_train("model=vae", "dataset=digits")
    data = dataset("digits")
    model = build_model(cfg, data, torch.device("cpu"))
    opt = make_optimizers(model, cfg.optimizer)["main"]
    batches = Batches(data.train, 128, 0)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model.training_losses(batches.next()[0], "main")["loss"].mean().backward()
        opt.step()

    out = {}
    for load in LOADS:
        spinner = _spinner() if load == "busy" else None
        try:
            # the governor ("auto") only with genbench's policy (the parent sets no OMP_WAIT_POLICY)
            for t in THREADS if "OMP_WAIT_POLICY" not in os.environ else (1, 2):
                cores = len(os.sched_getaffinity(0))
                torch.set_num_threads(cores if t == "auto" else int(t))
                gov = ThreadGovernor(cores, interval=0.5) if t == "auto" else None
                warm = time.perf_counter() + (1.5 if gov else 0.0)
                for k in range(10**6):  # 3 steps, or 1.5 s of governed steps
                    step()
                    if gov is not None:
                        gov.tick()
                    if k >= 2 and time.perf_counter() >= warm:
                        break
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                    if gov is not None:
                        gov.tick()
                out[f"{t}/{load}"] = 1e3 * (time.perf_counter() - start) / steps
                if gov is not None:
                    out[f"auto_threads/{load}"] = torch.get_num_threads()
        finally:
            if spinner is not None:
                spinner.terminate()
                spinner.wait(timeout=10)
    return out


def _spawn_child(policy: str, steps: int) -> dict[str, float]:
    drop = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", *SPIN)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(SPIN if policy == "genbench" else {"OMP_WAIT_POLICY": policy})
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-m", "bench_lib.threads", "--child", "--steps", str(steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> Result:
    steps, repeats = (10, 1) if quick else (40, 3)
    res = Result(
        f"6. CPU threading: VAE step (digits, batch 128), {steps} timed steps per "
        f"configuration, {repeats} repeats (policies alternate)"
    )
    ms: dict[tuple[str, str, str], list[float]] = {}
    loads, auto_threads = [], {load: [] for load in LOADS}
    for r in range(repeats):
        for policy in POLICIES[r % 3 :] + POLICIES[: r % 3]:
            log(f"threads: {policy} wait policy, repeat {r + 1}/{repeats}")
            loads.append(loadavg())
            for key, value in _spawn_child(policy, steps).items():
                t, load = key.split("/")
                if t == "auto_threads":
                    if policy == "genbench":
                        auto_threads[load].append(int(value))
                elif t != "auto" or policy == "genbench":
                    ms.setdefault((policy, t, load), []).append(value)
    s = {k: Spread.of(v) for k, v in ms.items()}
    cores = os.cpu_count() or 1
    configs = [(p, str(t)) for p in POLICIES for t in THREADS if t != "auto" or p == "genbench"]
    rows = []
    for policy, t in configs:
        a, b = s[(policy, t, "alone")], s[(policy, t, "busy")]
        note = {
            ("genbench", "auto"): "genbench's default for a single job (threads ended at "
            f"{auto_threads['alone']} alone, {auto_threads['busy']} busy)",
            ("genbench", "1"): "genbench's default in a parallel sweep (1 per job)",
        }
        rows.append(
            [
                policy,
                t,
                a.fmt(1),
                b.fmt(1),
                f"{b.median / a.median:.2f}",
                note.get((policy, t), "-"),
            ]
        )
    for load in LOADS:
        best = min((s[(p, t, load)].median, p, t) for p, t in configs if t != "auto")
        auto = s[("genbench", "auto", load)].median
        res.checks.append(
            Check(
                f"threads genbench default (auto on {cores} cores) / best fixed "
                f"config ({best[1]}, {best[2]} threads), {load}",
                f"{auto / best[0]:.2f}",
                "<= 1.1",
                auto / best[0] <= 1.1,
            )
        )
        old = s[("PASSIVE", "2", load)].median
        res.checks.append(
            Check(
                f"threads genbench default / PASSIVE with 2 threads (the previous default), {load}",
                f"{auto / old:.2f}",
            )
        )
    res.table = table(
        [
            "wait policy",
            "threads",
            "alone ms/step",
            "beside a busy process ms/step",
            "busy / alone",
            "note",
        ],
        rows,
    )
    res.notes = [
        f"load average (1/5/15 min) at the start of each child: {', '.join(loads)}.",
        "'busy' adds one spinning Python process (one core's worth of load). 'auto': "
        "starts at all cores and runs 1.5 s of governed steps (governor interval 0.5 s "
        "here, 2 s in genbench) before the timed steps.",
        "genbench wait policy: "
        + ", ".join(f"{k}={v}" for k, v in SPIN.items())
        + " (bounded spin), unless the user sets OMP_WAIT_POLICY.",
    ]
    res.raw = {f"{p}/{t}/{load}": v for (p, t, load), v in ms.items()}
    res.raw["auto_threads"] = auto_threads
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    print(json.dumps(child(ap.parse_args().steps)))
