"""Concurrent writers: many processes recording into one leaderboard at once lose no run, leave no
partial run (a run and its metric rows land in one transaction) and never fail with "database is
locked"; a parallel sweep (joblib launcher) records one row per job and a re-run records none."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from genbench.eval.metric import Metric
from genbench.leaderboard.store import RunRecord, Store

WORKERS, RUNS_PER_WORKER, METRICS_PER_RUN = 8, 25, 3

_WRITER = """
import sys, time
from pathlib import Path
from genbench.eval.metric import Metric
from genbench.leaderboard.store import RunRecord, Store
path, gate, worker, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = Store(path)
(gate.parent / f"ready{worker}").touch()
while not gate.exists():
    time.sleep(0.005)
for i in range(n):
    rec = RunRecord(run_id=f"w{worker}/r{i}", created=f"2026-01-01T00:00:{i:02d}", model="vae",
                    family="vae", likelihood="elbo", dataset="digits", params=worker,
                    steps=i, images_seen=16 * i, train_seconds=0.5, device="cpu",
                    status="finished", run_dir=f"/runs/w{worker}/r{i}",
                    config_hash=f"{worker}-{i}", config={"seed": i, "worker": worker},
                    versions={"torch": "x"})
    rows = [Metric("bpd", worker + i / 100, "bound", "test", 32, "bits/dim", {"seed": i}),
            Metric("nll", 10.0 * worker + i, "bound", "test", 32, "nats", {"seed": i}),
            Metric("nfe", 1.0, "measured", "samples", 32, "count", {})]
    store.record(rec, rows)
"""

_READER = """
import sys, time
from pathlib import Path
from genbench.eval.metric import Metric
from genbench.leaderboard.store import RunRecord, Store
path, gate, done, expected = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
while not gate.exists():
    time.sleep(0.005)
reads = 0
while True:
    finished = done.exists()
    if Path(path).exists():
        for run in Store(path).runs():
            if len(run["metrics"]) != expected:
                sys.exit(f"partial run {run['run_id']}: {len(run['metrics'])} metric rows")
        reads += 1
    if finished:
        break
print(reads)
"""


def _spawn(code: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_SEED = RunRecord(
    run_id="seed",
    created="2025-01-01T00:00:00",
    model="vae",
    family="vae",
    likelihood="elbo",
    dataset="digits",
    params=-1,
    steps=-1,
    images_seen=0,
    train_seconds=0.0,
    device="cpu",
    status="finished",
    run_dir="/runs/seed",
    config_hash="seed",
)
_SEED_METRICS = [Metric(f"m{k}", float(k)) for k in range(METRICS_PER_RUN)]


def _race(tmp_path: Path, with_reader: bool) -> tuple[Path, list[tuple[int, str]]]:
    """8 writer processes x 25 runs (and optionally a reader) started at the same instant."""
    path, gate, done = tmp_path / "leaderboard.sqlite", tmp_path / "go", tmp_path / "done"
    procs = [_spawn(_WRITER, path, gate, w, RUNS_PER_WORKER) for w in range(WORKERS)]
    if with_reader:
        procs.append(_spawn(_READER, path, gate, done, METRICS_PER_RUN))
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready*"))) < WORKERS:  # all imported: start writing at once
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    gate.touch()
    outs = [p.communicate(timeout=300) for p in procs[:WORKERS]]
    done.touch()
    outs += [p.communicate(timeout=120) for p in procs[WORKERS:]]
    return path, [(p.returncode, out + err) for p, (out, err) in zip(procs, outs, strict=True)]


def _check_store(path: Path, extra: int) -> None:
    """Exactly the 200 worker runs (plus ``extra`` others), each complete and intact."""
    runs = [r for r in Store(path).runs() if r["run_id"] != "seed"]
    assert len(runs) == WORKERS * RUNS_PER_WORKER
    assert {r["run_id"] for r in runs} == {
        f"w{w}/r{i}" for w in range(WORKERS) for i in range(RUNS_PER_WORKER)
    }
    for r in runs:
        w, i = r["params"], r["steps"]
        assert r["config"] == {"seed": i, "worker": w} and r["run_id"] == f"w{w}/r{i}"
        values = {m["name"]: m["value"] for m in r["metrics"]}
        assert values == {"bpd": w + i / 100, "nll": 10.0 * w + i, "nfe": 1.0}
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("SELECT count(*) FROM metrics").fetchone() == (
        (WORKERS * RUNS_PER_WORKER + extra) * METRICS_PER_RUN,
    )
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_parallel_writers_lose_no_rows_and_leave_no_partial_runs(tmp_path):
    Store(tmp_path / "leaderboard.sqlite").record(_SEED, _SEED_METRICS)
    path, results = _race(tmp_path, with_reader=False)
    for rc, text in results:
        assert rc == 0, text[-2000:]
        assert "locked" not in text
    _check_store(path, extra=1)


@pytest.mark.slow
def test_a_fresh_leaderboard_under_parallel_writers_and_a_reader(tmp_path):
    path, results = _race(tmp_path, with_reader=True)
    for rc, text in results:
        assert rc == 0, text[-2000:]
    assert int(results[-1][1]) >= 1  # the reader read the store while it was being written
    _check_store(path, extra=0)


@pytest.mark.slow
def test_joblib_sweep_records_each_job_once(tmp_path):
    out = tmp_path / "out"
    args = (
        "train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "experiment=smoke",
        "eval.sample_metrics=false",
        "seed=0,1,2,3",
        f"paths.outputs={out}",
    )
    proc = run_cli(*args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = Store(out / "leaderboard.sqlite").runs()
    assert sorted(r["config"]["seed"] for r in runs) == [0, 1, 2, 3]
    assert all(r["status"] == "finished" and r["steps"] == 4 for r in runs)
    assert len({r["run_dir"] for r in runs}) == 4
    assert all(Path(r["run_dir"], "checkpoints", "last.pt").is_file() for r in runs)

    again = run_cli(*args, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("already finished") == 4
    assert len(Store(out / "leaderboard.sqlite").runs()) == 4
