"""W&B offline tracking: a local run directory with the metrics, and the id kept for resume."""

from __future__ import annotations

import time

import pytest

from genbench import checkpoint
from genbench.commands import train_command
from genbench.tracking import Tracker, make_tracker


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
    # wandb's service process may still be writing the offline file when run.finish() returns
    deadline = time.monotonic() + 30
    while b"eval/bpd" not in log_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    payload = log_file.read_bytes()
    assert b"eval/bpd" in payload and b"train/main/loss" in payload
    tracker_id = checkpoint.load(run_dir / "checkpoints" / "last.pt")["extra"]["tracker_id"]
    assert offline.name.endswith(tracker_id) and rec.status == "finished"


def test_loggers_are_chosen_by_target_and_bad_targets_are_refused(tmp_path):
    from conftest import compose_cfg

    from genbench.errors import ConfigError

    none = compose_cfg("train", [], tmp_path).logger
    assert none._target_ == "genbench.tracking.Tracker"
    assert type(make_tracker(none, {}, tmp_path, None)) is Tracker
    wandb = compose_cfg("train", ["logger=wandb"], tmp_path).logger
    assert wandb._target_ == "genbench.tracking.WandbTracker" and wandb.mode == "auto"
    with pytest.raises(ConfigError, match="logger._target_='os.system'"):
        make_tracker({"_target_": "os.system"}, {}, tmp_path, None)
    with pytest.raises(ConfigError, match="logger._target_='genbench.validation.validate'"):
        make_tracker({"_target_": "genbench.validation.validate"}, {}, tmp_path, None)
    with pytest.raises(ConfigError, match="logger options"):
        make_tracker({"_target_": "genbench.tracking.Tracker", "project": "x"}, {}, tmp_path, None)


def test_wandb_tracker_gets_its_options_and_the_plain_run_config(tmp_path, monkeypatch):
    """The run config (with model/dataset _target_ keys) reaches wandb.init as plain data."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    seen = {}

    class Run:
        id = "abc"

        def finish(self):
            pass

    def init(**kwargs):
        seen.update(kwargs)
        return Run()

    import wandb

    monkeypatch.setattr(wandb, "init", init)
    config = {"model": {"_target_": "genbench.models.vae.VAE"}}
    tracker = make_tracker(
        {
            "_target_": "genbench.tracking.WandbTracker",
            "project": "p",
            "mode": "disabled",
            "tags": ["a"],
        },
        config,
        tmp_path,
        "id0",
    )
    assert tracker.run_id == "abc" and seen["config"] == config
    assert (seen["project"], seen["mode"], seen["tags"], seen["id"]) == (
        "p",
        "disabled",
        ["a"],
        "id0",
    )
