"""Data-parallel training on CPU: ms per training step with 2 gloo ranks (``torchrun``, 1 thread
each), gradients averaged by hand after ``backward`` (genbench before DDP: one coalesced
``all_reduce`` of the phase's gradients, then the division) against genbench's per-phase
``DistributedDataParallel`` wrappers (``genbench.train.distributed.loss_functions``), whose
all-reduce runs while ``backward`` is still going; and the same step with no gradient
synchronization at all, the ranks' own compute.

Each rank builds the model from ``conf/model`` (seed 0), its optimizers as the Trainer does, and
takes its half of the global digits batch (128). A step is what ``Trainer._phase_step`` does for
every phase repeat (``zero_grad``, forward, mean loss, ``backward``, the variant's gradient
synchronization, optimizer step), then rank 0's buffers are broadcast (``sync_replicas``; not in
the "no sync" variant). The variants train their own copies of the model, in blocks of steps that
alternate (the order rotates per repeat); each block starts and ends at a barrier, so a block
takes as long as its slower rank.

The child (``python -m bench_lib.ddp --child``) runs in every rank under torchrun; rank 0 writes
the timings as JSON.
"""

from __future__ import annotations

# genbench's OpenMP wait policy is set when genbench.cli is imported, and must be before torch loads
import genbench.cli  # noqa: F401  # isort: skip

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_lib.common import Check, Result, Spread, loadavg, log, table

MODELS = ("vae", "ddpm", "dcgan")
VARIANTS = ("none", "hand", "ddp")
LABELS = {
    "none": "no gradient sync",
    "hand": "averaged by hand after backward (before)",
    "ddp": "DistributedDataParallel (after)",
}
BATCH = 128
WARMUP = 3  # steps of each variant before timing
SCRIPTS = Path(__file__).resolve().parents[1]


def child(models: list[str], steps: int, repeats: int, out: Path) -> None:
    """In every rank: time each variant's steps for every model; rank 0 writes ``out``."""
    import torch
    import torch.distributed as dist

    from bench_lib.common import build_model, compose_train, dataset, make_optimizers
    from genbench import distributed as ddp
    from genbench.data.base import Batches
    from genbench.train import distributed as ddp_train
    from genbench.train.device import DeviceSetup

    cpu = torch.device("cpu")
    ddp.init(DeviceSetup(cpu, "fp32", False, 1), threads=1)
    rank, world = ddp.rank(), ddp.world_size()

    def average_by_hand(params: list) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    results: dict = {"world": world, "models": {}}
    data = dataset("digits")
    for name in models:
        cfg = compose_train(f"model={name}", "dataset=digits")
        base = build_model(cfg, data, cpu).train()
        runs = {}
        for kind in VARIANTS:
            model = copy.deepcopy(base)
            params = {
                p.name: [q for q in model.parameters_for(p.name) if q.requires_grad]
                for p in model.phases
            }
            fns = (
                ddp_train.loss_functions(model, params)
                if kind == "ddp"
                else {p: model.training_losses for p in params}
            )
            runs[kind] = (
                model,
                params,
                fns,
                make_optimizers(model, cfg.optimizer),
                Batches(data.train, BATCH, 0, rank=rank, world=world),
            )

        def step(kind: str, runs: dict = runs) -> None:
            model, params, fns, opts, batches = runs[kind]
            for phase in model.phases:
                for _ in range(phase.repeat):
                    x, _ = batches.next()
                    model.zero_grad(set_to_none=True)
                    fns[phase.name](x, phase.name)["loss"].float().mean().backward()
                    if kind == "hand":
                        average_by_hand(params[phase.name])
                    opts[phase.name].step()
            if kind != "none":
                ddp_train.sync_replicas(model, first_step=False)

        for kind in VARIANTS:
            for _ in range(WARMUP):
                step(kind)
        ms: dict[str, list[float]] = {k: [] for k in VARIANTS}
        for r in range(repeats):
            for kind in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                dist.barrier()
                t = time.perf_counter()
                for _ in range(steps):
                    step(kind)
                dist.barrier()
                ms[kind].append(1e3 * (time.perf_counter() - t) / steps)
        n_params = sum(p.numel() for p in base.parameters() if p.requires_grad)
        # DDP's buckets after its first iterations (a private but stable logging record)
        buckets = {
            p: [
                int(b)
                for b in str(w._get_ddp_logging_data().get("bucket_sizes", "")).split(",")
                if b
            ]
            for p, w in runs["ddp"][2].items()
        }
        results["models"][name] = {
            "ms": ms,
            "params": n_params,
            "buckets": buckets,
            "phases": [[p.name, p.repeat] for p in base.phases],
        }
    if rank == 0:
        out.write_text(json.dumps(results))
    with ddp.process_group():
        pass


def _spawn(models: list[str], steps: int, repeats: int) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(SCRIPTS), env.get("PYTHONPATH", "")])
    )
    with tempfile.TemporaryDirectory(prefix="genbench-bench-ddp") as tmp:
        out = Path(tmp) / "ddp.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "-m",
                "bench_lib.ddp",
                "--child",
                "--models",
                ",".join(models),
                "--steps",
                str(steps),
                "--repeats",
                str(repeats),
                "--out",
                str(out),
            ],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        return json.loads(out.read_text())


def run(quick: bool) -> Result:
    steps, repeats = (5, 6) if quick else (5, 20)  # short blocks, many: load changes hit all
    res = Result(
        f"8. Data-parallel training: 2 gloo ranks on CPU (torchrun, 1 thread each), "
        f"digits, global batch {BATCH}, {steps} steps x {repeats} repeats per variant"
    )
    before = loadavg()
    log(f"ddp: {', '.join(MODELS)} with 2 ranks, load {before}")
    raw = _spawn(list(MODELS), steps, repeats)
    after = loadavg()
    rows = []
    for name, m in raw["models"].items():
        s = {k: Spread.of(v) for k, v in m["ms"].items()}
        ratio = Spread.of([d / h for d, h in zip(m["ms"]["ddp"], m["ms"]["hand"])])
        none = s["none"].median
        buckets = "; ".join(
            f"{p}: " + " + ".join(f"{b / 2**20:.2f}" for b in sizes)
            for p, sizes in m["buckets"].items()
        )
        rows.append(
            [
                name,
                f"{m['params']:,}",
                " ".join(f"{p}x{k}" for p, k in m["phases"]),
                buckets,
                s["none"].fmt(1),
                s["hand"].fmt(1),
                s["ddp"].fmt(1),
                ratio.fmt(3),
                f"{s['hand'].median - none:.1f}",
                f"{s['ddp'].median - none:.1f}",
            ]
        )
        res.checks.append(
            Check(f"ddp {name}, 2 gloo ranks on CPU: DDP / hand-averaged step time", ratio.fmt(3))
        )
    res.table = table(
        [
            "model",
            "parameters",
            "phases",
            "DDP buckets, MiB",
            *(f"{LABELS[k]} ms/step" for k in VARIANTS),
            "DDP / hand (per repeat)",
            "sync cost before, ms",
            "sync cost after, ms",
        ],
        rows,
    )
    res.notes = [
        f"load average (1/5/15 min) before: {before}; after: {after}.",
        "sync cost = the variant's ms/step minus the no-sync variant's (gradient "
        "all-reduce and the buffer broadcast, plus waiting for the slower rank).",
        "DDP buckets: gradient MiB per all-reduce, per phase, as DDP rebuilt them after "
        "its first step (the first bucket capped at 1 MiB, the others at 25 MiB); a "
        "single bucket cannot overlap the backward pass: it is all-reduced when the last "
        "gradient is ready.",
        f"each rank has one of the machine's {os.cpu_count()} cores when they are free; "
        "gloo's communication threads share them.",
    ]
    res.raw = raw
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    child(a.models.split(","), a.steps, a.repeats, a.out)
