"""Cluster sweeps through hydra-submitit-launcher: `hydra/launcher=submitit_local` runs the same
path as SLURM (one submitit job per sweep point) in local processes; a job with two tasks trains
data-parallel, as a SLURM job with one task per GPU does. `hydra/launcher=slurm` is genbench's
SLURM preset."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from genbench import distributed as ddp
from genbench.leaderboard.store import Store

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher is not installed (pip install 'genbench[slurm]')",
)
QUICK = [
    "experiment=smoke",
    "model=vae",
    "eval.sample_metrics=false",
    "trainer.max_steps=2",
    "hydra.launcher.timeout_min=10",
]


def sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "genbench", "train", "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_submitit_local_sweep_records_one_row_per_job(tmp_path):
    out = tmp_path / "out"
    proc = sweep(
        "hydra/launcher=submitit_local", *QUICK, "seed=0,1", f"paths.outputs={out}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = Store(out / "leaderboard.sqlite").runs()
    assert len(runs) == 2 and {r["status"] for r in runs} == {"finished"}
    assert sorted(r["config"]["seed"] for r in runs) == [0, 1]
    assert all(r["config"]["run"]["world_size"] == 1 for r in runs)
    # submitit's own logs sit in the sweep folder, one per job
    assert len(list(out.rglob(".submitit/*/*_log.out"))) == 2


@pytest.mark.slow  # ~35 s on 2 cores; the default suite checks the same path through the env test
def test_submitit_job_with_two_tasks_trains_data_parallel(tmp_path):
    out = tmp_path / "out"
    proc = sweep(
        "hydra/launcher=submitit_local",
        *QUICK,
        "hydra.launcher.tasks_per_node=2",
        f"paths.outputs={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = Store(out / "leaderboard.sqlite").runs()
    assert len(runs) == 1 and runs[0]["status"] == "finished"
    assert runs[0]["config"]["run"]["world_size"] == 2
    assert runs[0]["images_seen"] == 2 * 16  # global batch 16, 8 per task


def test_a_submitit_job_with_several_tasks_sets_the_torch_distributed_env(monkeypatch):
    """What a task of a 2-task local job sees (SLURM jobs export the same through SLURM_*)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "WORLD_SIZE",
            "RANK",
            "LOCAL_RANK",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
        )
    }
    monkeypatch.setattr(os, "environ", env)  # what the job exports stays inside this test
    job = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
    }
    for key, value in job.items():
        monkeypatch.setenv(key, value)
    assert ddp.requested_world_size() == 2
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["LOCAL_WORLD_SIZE"]) == (
        "1",
        "1",
        "2",
    )
    assert os.environ["MASTER_ADDR"] and 20000 <= int(os.environ["MASTER_PORT"]) <= 60000
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "1")  # a one-task job stays one process
    for key in ("WORLD_SIZE", "RANK"):
        del env[key]
    assert ddp.requested_world_size() == 1 and "RANK" not in os.environ


def test_slurm_preset_extends_the_plugin_config():
    GlobalHydra.instance().clear()
    with initialize_config_module("genbench.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.gpus_per_node=4",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.account=proj",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == 4  # one training process per GPU
    assert (launcher.partition, launcher.account, launcher.nodes) == ("gpu", "proj", 1)
