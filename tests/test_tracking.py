"""W&B offline tracking: a local run directory with the metrics, and the id kept for resume."""

from __future__ import annotations

import pytest

from genbench.commands import train_command
from genbench.tracking import Tracker, make_tracker
from genbench.train import checkpoint


def test_wandb_offline_run_holds_metrics_and_resumable_id(train_cfg, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = train_cfg("logger=wandb", "eval.sample_metrics=false")
    rec = train_command(cfg)
    run_dir = tmp_path / "out" / "runs" / "test_run"
    (offline,) = list((run_dir / "wandb").glob("offline-run-*"))
    (log_file,) = list(offline.glob("run-*.wandb"))
    payload = log_file.read_bytes()
    assert b"eval/bpd" in payload and b"train/main/loss" in payload
    tracker_id = checkpoint.load(run_dir / "checkpoints" / "last.pt")["extra"]["tracker_id"]
    assert offline.name.endswith(tracker_id) and rec.status == "finished"


def test_none_logger_is_a_noop_and_bad_names_are_refused(tmp_path):
    assert type(make_tracker({"name": "none"}, {}, tmp_path, None)) is Tracker
    from genbench.errors import ConfigError

    with pytest.raises(ConfigError, match="logger.name='nope'"):
        make_tracker({"name": "nope"}, {}, tmp_path, None)
