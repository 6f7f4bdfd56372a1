"""The SQLite leaderboard: round trip, refusal of foreign files, parallel writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from genbench.eval.metric import CurvePoint, Metric
from genbench.leaderboard.report import render
from genbench.leaderboard.store import RunRecord, Store, StoreError


def record(
    run_id: str, model: str = "vae", likelihood: str = "elbo", bpd: float | None = 2.5
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        created="2026-01-01T00:00:00",
        model=model,
        family=model,
        likelihood=likelihood,
        dataset="digits",
        params=10,
        steps=5,
        images_seen=80,
        train_seconds=1.5,
        device="cpu",
        status="finished",
        run_dir=f"/r/{run_id}",
        config_hash="abc",
        config={"sampler": {}},
        versions={"torch": "x"},
    )


def test_round_trip_keeps_every_field(tmp_path):
    store = Store(tmp_path / "lb.sqlite")
    rows = [
        Metric("bpd", 2.5, "bound", "test", 300, "bits/dim", {"seed": 0}),
        Metric("fid@digits-cnn", 12.0, "measured", "test", 1000, "", {"extractor": "x"}),
    ]
    store.record(record("a"), rows)
    store.record(record("a"), rows[:1])  # re-recording a run replaces its rows
    (run,) = store.runs()
    assert run["run_id"] == "a" and run["params"] == 10 and run["config"] == {"sampler": {}}
    assert [(m["name"], m["value"], m["kind"], m["n"]) for m in run["metrics"]] == [
        ("bpd", 2.5, "bound", 300)
    ]
    assert store.finished_run("abc") == "/r/a" and store.finished_run("zzz") is None


def test_intervals_budget_and_curve_round_trip(tmp_path):
    store = Store(tmp_path / "lb.sqlite")
    rec = record("a")
    rec.budget, rec.train_flops, rec.tuning = "flops:5e9", 4.9e9, {"trials": 4}
    bpd = Metric("bpd", 2.5, "bound", "test", 300, "bits/dim", {"interval": "t"}, lo=2.4, hi=2.6)
    point = CurvePoint(bpd, 0.5, 10, 1280, 2.5, 2.45e9)
    store.record(rec, [bpd], [point])
    (run,) = store.runs()
    assert (run["budget"], run["train_flops"], run["tuning"]) == ("flops:5e9", 4.9e9, {"trials": 4})
    assert (run["metrics"][0]["lo"], run["metrics"][0]["hi"]) == (2.4, 2.6)
    (c,) = run["curve"]
    assert (c["fraction"], c["step"], c["images"], c["flops"], c["value"], c["lo"]) == (
        0.5,
        10,
        1280,
        2.45e9,
        2.5,
        2.4,
    )
    assert CurvePoint.from_dict(point.to_dict()) == point
    store.record(rec, [bpd])  # re-recording replaces the curve too
    assert store.runs()[0]["curve"] == []


def test_version_1_leaderboard_is_migrated_in_place_and_keeps_its_rows(tmp_path):
    path = tmp_path / "lb.sqlite"
    con = sqlite3.connect(path)
    con.executescript(
        "PRAGMA application_id=1734700642; PRAGMA user_version=1;"
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, created TEXT, model TEXT, family TEXT,"
        " likelihood TEXT, dataset TEXT, params INTEGER, steps INTEGER, images_seen INTEGER,"
        " train_seconds REAL, device TEXT, status TEXT, run_dir TEXT, config_hash TEXT,"
        " config TEXT, versions TEXT);"
        "CREATE TABLE metrics (run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,"
        " name TEXT NOT NULL, value REAL, kind TEXT, split TEXT NOT NULL, n INTEGER, unit TEXT,"
        " protocol TEXT NOT NULL, PRIMARY KEY (run_id, name, split, protocol));"
        "INSERT INTO runs VALUES ('old', '2026', 'vae', 'vae', 'elbo', 'digits', 1, 2, 3, 4.0,"
        " 'cpu', 'finished', '/r/old', 'h', '{}', '{}');"
        "INSERT INTO metrics VALUES ('old', 'bpd', 2.0, 'bound', 'test', 3, 'bits/dim', '{}');"
    )
    con.close()
    path.chmod(0o444)
    try:  # read-only: read as it is, with the newer fields at their defaults
        (old,) = Store(path).runs()
        assert old["budget"] == "" and old["curve"] == [] and old["metrics"][0]["lo"] is None
    finally:
        path.chmod(0o644)
    store = Store(path)
    store.record(record("new"), [Metric("bpd", 2.5, "bound", lo=2.4, hi=2.6)])
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2
    runs = {r["run_id"]: r for r in store.runs()}
    assert runs["old"]["metrics"][0]["value"] == 2.0 and runs["new"]["metrics"][0]["hi"] == 2.6


def test_report_marks_bounds_exact_and_missing_values(tmp_path):
    store = Store(tmp_path / "lb.sqlite")
    store.record(record("a"), [Metric("bpd", 2.5, "bound", "test", 3, "bits/dim")])
    store.record(record("b", "pixelcnn", "exact"), [Metric("bpd", 2.1, "exact", "test", 3)])
    store.record(record("c", "dcgan", "none"), [Metric("nfe", 1.0)])
    md = render(store.runs(), "md")
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "≤ 2.500" in lines["vae"]
    assert "| **2.100** |" in lines["pixelcnn"]  # the best bits/dim, in bold
    assert "n/a" in lines["dcgan"] and "| 0 |" not in lines["dcgan"]


def test_foreign_sqlite_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / "lb.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE other (x)")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a genbench leaderboard"):
        Store(path).record(record("a"), [])
    assert path.read_bytes() == before
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError):
        Store(path).runs()
    assert path.read_bytes() == b"this is not sqlite at all" * 100


_WRITER = """
import sys
from genbench.eval.metric import CurvePoint, Metric
from genbench.leaderboard.store import RunRecord, Store
path, worker, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = Store(path)
for i in range(n):
    rec = RunRecord(run_id=f"w{worker}-{i}", created="t", model="m", family="vae",
                    likelihood="elbo", dataset="d", params=1, steps=1, images_seen=1,
                    train_seconds=0.0, device="cpu", status="finished", run_dir="/r",
                    config_hash=f"{worker}-{i}")
    store.record(rec, [Metric("bpd", float(i), "exact")])
"""


def test_reader_meeting_a_store_mid_creation_reads_it_empty(tmp_path):
    """A writer creating the store has set WAL mode (the file has a header) but not yet committed
    the schema: a reader in that window sees an empty leaderboard, not a foreign file."""
    path = tmp_path / "lb.sqlite"
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    con.close()
    assert path.stat().st_size > 0
    assert Store(path).runs() == []
    Store(path).record(record("a"), [])
    assert [r["run_id"] for r in Store(path).runs()] == ["a"]


def test_parallel_writers_lose_no_rows(tmp_path):
    path = str(tmp_path / "lb.sqlite")
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, path, str(w), "10"]) for w in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    runs = Store(path).runs()
    assert len(runs) == 40 and all(len(r["metrics"]) == 1 for r in runs)
