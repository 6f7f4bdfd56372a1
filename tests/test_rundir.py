"""RunDir: the run folder's layout, atomic writes, tolerant status reads, the choice of evaluation
weights, and the exclusive lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from genbench.files import FileError, atomic_write, read_json
from genbench.rundir import RunDir, RunLockedError, find_resumable, run_dirs, run_id_of


def test_layout_is_owned_by_rundir(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.config_file == tmp_path / "r" / "config.yaml"
    assert run.checkpoint_file("last") == tmp_path / "r" / "checkpoints" / "last.pt"
    assert not run.is_run()
    run.write_config({"seed": 0, "model": {"_target_": "genbench.models.vae.VAE"}})
    run.save_checkpoint("last", {"model": {}, "state": {"step": 1}})
    assert run.is_run()
    run.write_config({"seed": 1})  # written once: a resumed run keeps its original config
    assert run.read_config().seed == 0


@pytest.mark.parametrize("text", ["null", "[1, 2]", "{not json", "", "\x00\xff"])
def test_malformed_status_reads_as_empty(tmp_path, text):
    run = RunDir(tmp_path)
    run.status_file.write_bytes(text.encode("latin-1"))
    assert run.status() == {}
    assert not run.resumable("abc")


def test_status_round_trip_and_resumable(tmp_path):
    run = RunDir(tmp_path / "r")
    run.save_checkpoint("last", {"state": {}})
    run.write_status("interrupted", 7, "h1")
    assert run.status() == {"status": "interrupted", "step": 7, "config_hash": "h1"}
    assert run.resumable("h1") and not run.resumable("h2")
    run.write_status("diverged", 7, "h1")
    assert not run.resumable("h1")


def test_find_resumable_skips_recorded_finished_runs_and_broken_folders(tmp_path):
    runs = tmp_path / "runs"
    a, b, broken = RunDir(runs / "a"), RunDir(runs / "b"), RunDir(runs / "broken")
    for run, status in ((a, "finished"), (b, "interrupted")):
        run.save_checkpoint("last", {"state": {}})
        run.write_status(status, 3, "h")
    broken.path.mkdir()
    broken.status_file.write_text("null")
    assert {r.path.name for r in run_dirs(tmp_path)} == {"a", "b", "broken"}
    assert find_resumable(tmp_path, "h", {str(a.path.resolve())}).path == b.path
    os.utime(a.path, (time.time() + 10, time.time() + 10))  # a is newer, and not yet recorded
    assert find_resumable(tmp_path, "h", set()).path == a.path
    assert run_id_of(a, tmp_path) == "a"


def test_eval_weights_best_then_ema_then_last(tmp_path):
    run = RunDir(tmp_path)
    w = {"w": torch.zeros(1)}
    run.save_checkpoint("last", {"model": w, "ema": None, "state": {}})
    assert run.eval_weights(True)[1] == "the last step"
    run.save_checkpoint("last", {"model": w, "ema": {"module": {"w": torch.ones(1)}}, "state": {}})
    weights, which = run.eval_weights(True)
    assert which == "EMA of the last step" and weights["w"].item() == 1.0
    run.save_checkpoint("best", {"model": {"w": torch.full((1,), 2.0)}, "step": 5})
    weights, which = run.eval_weights(True)
    assert which == "best validation (step 5)" and weights["w"].item() == 2.0
    assert run.eval_weights(False)[1] == "EMA of the last step"  # GANs keep their last weights


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write(target, "old")

    def broken(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(FileError, match="No space left on device.*previous file is kept"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_read_json_refuses_special_files_and_huge_files(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(FileError, match="not a regular file"):
        read_json(fifo)  # must not block on the FIFO
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(FileError, match="not a regular file"):
        read_json(tmp_path / "dir.json")
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(20 * 2**20)
    with pytest.raises(FileError, match="too large"):
        read_json(big)


_HOLD = textwrap.dedent("""
    import sys, time
    from genbench.rundir import RunDir
    with RunDir(sys.argv[1]).lock("train"):
        print("held", flush=True)
        time.sleep(60)
""")


def test_lock_is_exclusive_across_processes_and_names_the_holder(tmp_path):
    run = RunDir(tmp_path / "r")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert json.loads(run.lock_file.read_text())["pid"] == holder.pid
        with pytest.raises(RunLockedError, match=f"process {holder.pid} on"), run.lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    with run.lock("eval"):  # a killed holder releases it
        assert json.loads(run.lock_file.read_text())["purpose"] == "eval"
    assert not run.lock_file.exists()  # the note goes with the lock


def test_two_commands_resuming_one_run_do_not_both_train_it(train_cfg, tmp_path):
    from genbench.commands import train_command

    cfg = train_cfg("trainer.resume=auto", f"hydra.run.dir={tmp_path / 'first'}")
    run = RunDir(cfg.paths.run_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}"):
            train_command(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert not run.status_file.exists()  # the second process trained nothing


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
