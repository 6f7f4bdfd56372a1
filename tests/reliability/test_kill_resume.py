"""Kill and resume: a `genbench train` process killed with SIGKILL at any point (mid-step,
mid-checkpoint write, between the checkpoint and status.json, mid best.pt write, during
evaluation, during recording) and re-run with the same command ends bit-identical to an
uninterrupted run on CPU: weights, EMA, optimizer and grad-scaler state, RNG and data position,
training statistics and every evaluated metric. A checkpoint is never left half-written.

The kill is delivered by the process itself at an exact point, through a ``sitecustomize`` hook on
``PYTHONPATH`` (``GENBENCH_TEST_KILL_AT=<point>:<n>``: SIGKILL at the n-th time ``point`` is
reached), so every case is deterministic.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import MODELS, compose_cfg
from hydra.utils import get_class

from genbench import checkpoint, cli
from genbench.commands import train_command
from genbench.leaderboard.store import Store
from genbench.rundir import RunDir

HOOK = '''
"""Test hook: SIGKILL this process the n-th time a point of `genbench train` is reached."""
import os
import signal


def _arm(point, n):
    calls = [0]

    def due():
        calls[0] += 1
        return calls[0] == n

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if due():
                die()
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    if point in ("ckpt", "best"):  # mid-write: temp file half written, not yet renamed
        prefix, real_fsync = (".last.pt." if point == "ckpt" else ".best.pt."), os.fsync

        def fsync(fd):
            link = f"/proc/self/fd/{fd}"
            name = os.path.basename(os.readlink(link)) if os.path.exists(link) else ""
            if name.startswith(prefix) and due():
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                die()
            return real_fsync(fd)

        os.fsync = fsync
    elif point == "step":  # mid-step: the n-th minibatch draw
        from genbench.data.base import Batches
        wrap(Batches, "next")
    elif point == "status":  # last.pt renamed, status.json not yet written
        from genbench.rundir import RunDir
        wrap(RunDir, "write_status")
    elif point == "eval":  # training finished, evaluation running
        import genbench.commands
        wrap(genbench.commands, "_evaluate")
    elif point == "record":  # metrics.json written, leaderboard row not yet
        from genbench.leaderboard.store import Store
        wrap(Store, "record")
    else:
        raise ValueError(point)


_spec = os.environ.get("GENBENCH_TEST_KILL_AT")
if _spec:
    _point, _n = _spec.split(":")
    _arm(_point, int(_n))
'''

#: a short run with checkpoints at steps 2, 4, 6 and validation (best.pt) at steps 3 and 6
FAST = [
    "experiment=smoke",
    "device=cpu",
    "device.threads=1",
    "trainer.max_steps=6",
    "trainer.ckpt_every=2",
    "trainer.eval_every=3",
    "trainer.log_every=1",
    "eval.sample_metrics=false",
    "eval.nll_examples=16",
    "eval.n_samples=16",
    "eval.grid=4",
]
#: timing numbers are the only ones allowed to differ between two runs
TIMINGS = ("train_seconds", "seconds")


def killed_train(args: list[str], point: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``genbench train <args>`` in a subprocess that SIGKILLs itself at ``point``."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "COLUMNS": "200",
        "GENBENCH_TEST_KILL_AT": point,
        "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "genbench", "train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-3000:])
    return proc


def rerun(args: list[str]) -> None:
    """The same command again, in this process (``genbench.cli.main``)."""
    assert cli.main(["train", *args]) == 0


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bit-identical nested checkpoint contents (tensors, numbers, containers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            if k not in TIMINGS:
                assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def metrics_of(outputs: Path) -> tuple[dict[str, Any], dict[tuple, float]]:
    """The single leaderboard run under ``outputs`` (its real-data floor aside) and its metric
    values, timings excluded."""
    (run,) = [r for r in Store(outputs / "leaderboard.sqlite").runs() if r["family"] != "data"]
    values = {
        (m["name"], m["split"], json.dumps(m["protocol"], sort_keys=True)): m["value"]
        for m in run["metrics"]
        if m["unit"] not in ("s", "ms")
    }
    return run, values


def stats_of(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def reference(args: list[str], outputs: Path) -> Path:
    """An uninterrupted run of the same config, in this process; returns its run folder."""
    rec = train_command(compose_cfg("train", args, outputs))
    assert rec.status == "finished"
    return Path(rec.run_dir)


def assert_identical_runs(ref_out: Path, ref_dir: Path, out: Path) -> Path:
    """The run recorded under ``out`` equals the reference bit for bit; returns its folder."""
    ref_run, ref_metrics = metrics_of(ref_out)
    run, got = metrics_of(out)
    run_dir = Path(run["run_dir"])
    assert run["status"] == "finished" and run["steps"] == ref_run["steps"]
    assert got == ref_metrics and len(got) >= 2
    a = checkpoint.load(ref_dir / "checkpoints" / "last.pt")
    b = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert_same(a, b, "last.pt")
    if (ref_dir / "checkpoints" / "best.pt").exists():
        assert_same(
            checkpoint.load(ref_dir / "checkpoints" / "best.pt"),
            checkpoint.load(run_dir / "checkpoints" / "best.pt"),
            "best.pt",
        )
    assert stats_of(run_dir) == stats_of(ref_dir)
    assert RunDir(run_dir).status()["status"] == "finished"
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "stale temp checkpoint left"
    return run_dir


def test_kill_during_checkpoint_write_keeps_the_previous_one_and_resumes_exactly(tmp_path):
    out = tmp_path / "out"
    args = [*FAST, f"paths.outputs={out}"]
    killed_train(args, "ckpt:2", tmp_path)  # while writing the step-4 checkpoint
    (run_dir,) = [p.parent for p in (out / "runs").rglob("config.yaml")]
    ckpts = run_dir / "checkpoints"
    (stale,) = ckpts.glob(".last.pt.*.tmp")
    assert 0 < stale.stat().st_size < (ckpts / "last.pt").stat().st_size  # the half-written one
    assert checkpoint.load(ckpts / "last.pt")["state"]["step"] == 2  # the previous one, intact
    assert RunDir(run_dir).status() | {"config_hash": None} == {
        "status": "running",
        "step": 2,
        "config_hash": None,
    }
    assert not (out / "leaderboard.sqlite").exists()

    rerun(args)  # the same command: auto-discovers the killed run and resumes it at step 2
    ref_dir = reference(FAST, tmp_path / "ref")
    assert assert_identical_runs(tmp_path / "ref", ref_dir, out) == run_dir.resolve()


#: kill points of two successive processes before the final, uninterrupted re-run
SCHEDULES = [
    ["step:5", "ckpt:1"],  # mid-step, then mid-write of the first resumed checkpoint
    ["ckpt:2", "best:1"],  # mid-write of last.pt, then of best.pt
    ["status:2", "step:2"],  # between last.pt and status.json, then mid-step 6
    ["best:1", "eval:1"],  # mid-write of best.pt, then during evaluation
    ["step:4", "record:1"],  # mid-step, then while recording the leaderboard row
]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_every_model_survives_repeated_kills(model, tmp_path):
    """Two kills in a row, then the same command; odd models resume into a fixed
    hydra.run.dir, even ones are auto-discovered by trainer.resume=auto."""
    i = MODELS.index(model)
    points, fixed_dir = SCHEDULES[i % len(SCHEDULES)], i % 2 == 1
    if not get_class(compose_cfg("train", [f"model={model}"]).model._target_).select_best:
        points = [p.replace("best:1", "ckpt:2") for p in points]  # no best.pt (GANs)
    out, config = tmp_path / "out", [*FAST, f"model={model}", "eval.sample_metrics=true"]
    args = [*config, f"paths.outputs={out}"]
    if fixed_dir:
        args.append(f"hydra.run.dir={out}/runs/fixed")
    for point in points:
        killed_train(args, point, tmp_path)
    rerun(args)
    ref_dir = reference(config, tmp_path / "ref")
    run_dir = assert_identical_runs(tmp_path / "ref", ref_dir, out)
    if fixed_dir:
        assert run_dir == (out / "runs" / "fixed").resolve()
    runs = [p.parent.parent.resolve() for p in (out / "runs").rglob("last.pt")]
    assert runs == [run_dir], f"the kills left extra checkpointed run folders: {runs}"
