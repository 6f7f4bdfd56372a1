"""Runs that stop early: Ctrl-C (SIGINT) writes a consistent final checkpoint, exits without a
traceback, marks the run ``interrupted`` (status.json and leaderboard) and the same command resumes
it to the result of an uninterrupted run; a NaN / inf loss stops that run as ``diverged`` with its
last good checkpoint and its row recorded, and a sweep goes on with the next job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from hydra.utils import get_class

from genbench import checkpoint, cli
from genbench.commands import train_command
from genbench.leaderboard.store import Store
from genbench.rundir import RunDir

#: sleeps inside every EMA update: after the optimizer step, before the step is complete, which is
#: where a Ctrl-C that is not held until the end of the step would leave a torn checkpoint
SLOW_HOOK = """
import os
import time

if os.environ.get("GENBENCH_TEST_SLOW_EMA"):
    from genbench.train.ema import EMA

    _update = EMA.update

    def update(self, model):
        time.sleep(float(os.environ["GENBENCH_TEST_SLOW_EMA"]))
        return _update(self, model)

    EMA.update = update
"""

RUN = [
    "experiment=smoke",
    "device=cpu",
    "device.threads=1",
    "trainer.max_steps=24",
    "trainer.ckpt_every=2",
    "trainer.eval_every=5",
    "trainer.log_every=1",
    "eval.sample_metrics=false",
    "eval.nll_examples=16",
    "eval.n_samples=16",
    "eval.grid=4",
]


def _wait_for_step(run_root: Path, proc: subprocess.Popen, step: int) -> Path:
    """The run folder, once its status.json reports at least ``step``."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        for status in run_root.rglob("status.json"):
            if RunDir(status.parent).status().get("step", 0) >= step:
                return status.parent
        time.sleep(0.02)
    raise AssertionError(f"training did not reach step {step}")


@pytest.mark.parametrize(
    "sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"]
)
def test_ctrl_c_checkpoints_marks_interrupted_and_resumes_exactly(sig, code, tmp_path, monkeypatch):
    """SIGTERM (SLURM, Kubernetes, `timeout`) is handled like Ctrl-C, with exit code 143."""
    out = tmp_path / "out"
    args = [*RUN, f"paths.outputs={out}"]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_HOOK)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "COLUMNS": "200",
        "GENBENCH_TEST_SLOW_EMA": "0.15",
        "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "genbench", "train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = _wait_for_step(out, proc, 3)  # mid-run, after a checkpoint, inside EMA.update
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stdout + stderr and "interrupted at step" in stdout + stderr

    status = RunDir(run_dir).status()
    last = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert status["status"] == "interrupted" and 3 <= status["step"] < 24
    assert last["state"]["step"] == status["step"] and last["state"]["status"] == "interrupted"
    assert last["ema"]["num_updates"] == status["step"]  # the step was complete, EMA included
    (row,) = Store(out / "leaderboard.sqlite").runs()
    assert row["status"] == "interrupted" and row["steps"] == status["step"]

    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *args]) == 0  # the same command resumes it
    (row,) = Store(out / "leaderboard.sqlite").runs()
    assert row["status"] == "finished" and row["steps"] == 24
    assert Path(row["run_dir"]) == run_dir.resolve()
    # the resumed process logged into the run's own train.log and left no empty new run folder
    assert f"resumed at step {status['step']}" in (run_dir / "train.log").read_text()
    assert [p.parent for p in out.rglob("train.log")] == [run_dir]
    assert not (run_dir / ".lock").exists()

    ref = train_command(compose_cfg("train", RUN, tmp_path / "ref"))
    a = checkpoint.load(Path(ref.run_dir) / "checkpoints" / "last.pt")
    b = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    for part in ("model", "optimizers", "batches"):
        assert _same(a[part], b[part]), part
    assert _same(a["ema"]["module"], b["ema"]["module"])
    assert a["state"]["history"] == b["state"]["history"]
    (ref_row,) = Store(tmp_path / "ref" / "leaderboard.sqlite").runs()
    assert _values(ref_row) == _values(row)
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 25))


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _values(run: dict) -> dict[str, float]:
    return {m["name"]: m["value"] for m in run["metrics"] if m["unit"] not in ("s", "ms")}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_bad_loss_in_one_phase_of_a_gan_stops_as_diverged(bad, train_cfg, tmp_path, monkeypatch):
    """A two-phase model whose generator loss turns NaN / inf at step 4: status diverged, the
    step-2 checkpoint (all finite) kept, the row recorded."""
    cfg = train_cfg(
        "model=dcgan", "trainer.max_steps=8", "trainer.ckpt_every=2", "eval.sample_metrics=false"
    )
    cls = get_class(cfg.model._target_)
    original, calls = cls.training_losses, {"g": 0}

    def poisoned(self, x, phase):
        out = original(self, x, phase)
        if phase == "g" and self.training:
            calls["g"] += 1
            if calls["g"] == 5:  # call 1 is the dry run that counts a step's FLOPs
                out["loss"] = out["loss"] + bad
        return out

    monkeypatch.setattr(cls, "training_losses", poisoned)
    rec = train_command(cfg)
    assert rec.status == "diverged" and rec.steps == 4
    run_dir = Path(rec.run_dir)
    assert RunDir(run_dir).status()["status"] == "diverged"
    last = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert last["state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    (row,) = Store(tmp_path / "out" / "leaderboard.sqlite").runs()
    assert row["status"] == "diverged" and row["steps"] == 4
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "diverged"


def test_a_sweep_goes_on_after_a_diverged_job(tmp_path, monkeypatch):
    """`train -m optimizer.lr=1e30,1e-3`: Adam with lr 1e30 turns the VAE's loss NaN at step 2;
    that job is recorded as diverged with its step-1 checkpoint, the next job finishes."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "train",
                "-m",
                "experiment=smoke",
                "eval.sample_metrics=false",
                "trainer.ckpt_every=1",
                "optimizer.lr=1e30,1e-3",
                f"paths.outputs={out}",
            ]
        )
        == 0
    )
    runs = {r["config"]["optimizer"]["lr"]: r for r in Store(out / "leaderboard.sqlite").runs()}
    assert sorted(runs) == [1e-3, 1e30]
    bad, good = runs[1e30], runs[1e-3]
    assert bad["status"] == "diverged" and bad["steps"] == 2 and bad["metrics"] == []
    last = checkpoint.load(Path(bad["run_dir"]) / "checkpoints" / "last.pt")
    assert last["state"]["step"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert good["status"] == "finished" and good["steps"] == 4
    assert {m["name"] for m in good["metrics"]} >= {"bpd", "nll"}
