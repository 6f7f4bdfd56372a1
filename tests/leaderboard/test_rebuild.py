"""`genbench leaderboard rebuild` makes the index equal the run folders: gone or unreadable runs
drop out with a warning, damaged files never abort it, a copied folder is a run of its own."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from conftest import compose_cfg

from genbench.commands import train_command
from genbench.leaderboard.command import rebuild
from genbench.leaderboard.store import Store, StoreError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two finished smoke runs (VAE, and VAE with another seed) under one outputs folder."""
    out = tmp_path_factory.mktemp("rebuild") / "out"
    for i, seed in enumerate((0, 1)):
        cfg = compose_cfg(
            "train", ["experiment=smoke", f"seed={seed}", "eval.sample_metrics=false"], out
        )
        cfg.paths.run_dir = str(out / "runs" / f"run{i}")
        train_command(cfg)
    return out


@pytest.fixture
def outputs(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained / "runs", out / "runs")
    return out


def _ids(out: Path) -> list[str]:
    return sorted(r["run_id"] for r in Store(out / "leaderboard.sqlite").runs())


def test_rebuild_indexes_every_run_folder(outputs):
    store = Store(outputs / "leaderboard.sqlite")
    assert rebuild(store, outputs) == 2
    assert _ids(outputs) == ["run0", "run1"]
    (row,) = [r for r in store.runs() if r["run_id"] == "run0"]
    assert row["run_dir"] == str((outputs / "runs" / "run0").resolve())  # where it is now
    assert {m["name"] for m in row["metrics"]} >= {"bpd", "nll"}


def test_gone_and_unreadable_runs_drop_out_with_a_warning(outputs, caplog):
    store = Store(outputs / "leaderboard.sqlite")
    rebuild(store, outputs)
    shutil.rmtree(outputs / "runs" / "run0")
    (outputs / "runs" / "run1" / "record.json").write_text("null")
    with caplog.at_level(logging.WARNING):
        assert rebuild(store, outputs) == 0
    assert _ids(outputs) == []
    text = caplog.text
    assert "run0" in text and "gone or unreadable" in text and "JSON NoneType" in text


@pytest.mark.parametrize(
    "name,content",
    [
        ("record.json", "null"),
        ("record.json", "{"),
        ("record.json", '{"run_id": 3}'),
        ("metrics.json", "null"),
        ("metrics.json", '{"metrics": [{"name": "bpd", "value": "x"}]}'),
        ("metrics.json", '{"metrics": 5}'),
        ("status.json", "null"),
        ("record.json", None),
    ],
)
def test_one_damaged_file_never_aborts_the_rebuild(outputs, name, content):
    target = outputs / "runs" / "run0" / name
    if content is None:
        target.unlink()
        target.mkdir()  # a folder where the file should be
    else:
        target.write_text(content)
    store = Store(outputs / "leaderboard.sqlite")
    kept = rebuild(store, outputs)
    assert "run1" in _ids(outputs)
    assert kept == (2 if name == "status.json" else 1)


def test_copied_run_folder_is_a_distinct_run(outputs):
    shutil.copytree(outputs / "runs" / "run0", outputs / "runs" / "copy_of_run0")
    store = Store(outputs / "leaderboard.sqlite")
    assert rebuild(store, outputs) == 3
    rows = {r["run_id"]: r for r in store.runs()}
    assert sorted(rows) == ["copy_of_run0", "run0", "run1"]
    assert rows["copy_of_run0"]["run_dir"].endswith("copy_of_run0")
    saved = json.loads((outputs / "runs" / "copy_of_run0" / "record.json").read_text())
    assert saved["run_id"] == "run0"  # the folder's own files are left as they were


def test_damaged_status_elsewhere_does_not_break_training(outputs, tmp_path):
    (outputs / "runs" / "run1" / "status.json").write_text("null")
    (outputs / "runs" / "bad").mkdir()
    (outputs / "runs" / "bad" / "status.json").write_text("[]")
    cfg = compose_cfg("train", ["experiment=smoke", "eval.sample_metrics=false"], outputs)
    cfg.paths.run_dir = str(outputs / "runs" / "new")
    assert train_command(cfg).status == "finished"


def test_rebuild_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no run folders"):
        rebuild(Store(tmp_path / "leaderboard.sqlite"), tmp_path)
