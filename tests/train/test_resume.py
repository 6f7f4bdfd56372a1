"""An interrupted run resumed with trainer.resume=auto ends bit-identical to an uninterrupted
one."""

from __future__ import annotations

import pytest
import torch

from genbench import checkpoint
from genbench.commands import train_command
from genbench.data.base import Batches
from genbench.leaderboard.store import Store
from genbench.rundir import RunDir


def _weights(run_dir):
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")


def test_interrupted_run_resumes_exactly(train_cfg, tmp_path, monkeypatch):
    overrides = ["trainer.max_steps=8", "trainer.ckpt_every=3", "trainer.eval_every=4"]
    ref = train_cfg(*overrides, outputs=tmp_path / "ref")
    ref_rec = train_command(ref)

    cfg = train_cfg(*overrides, outputs=tmp_path / "cut")
    calls = {"n": 0}
    original = Batches.next

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Batches, "next", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_command(cfg)
    monkeypatch.setattr(Batches, "next", original)
    run_dir = tmp_path / "cut" / "runs" / "test_run"
    assert RunDir(run_dir).status()["status"] == "interrupted"
    assert _weights(run_dir)["state"]["step"] == 5

    rec = train_command(train_cfg(*overrides, outputs=tmp_path / "cut"))
    a, b = _weights(tmp_path / "ref" / "runs" / "test_run"), _weights(run_dir)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["module"]:
        assert torch.equal(a["ema"]["module"][key], b["ema"]["module"][key]), key
    assert a["state"]["best_step"] == b["state"]["best_step"]
    ref_m = {
        m["name"]: m["value"]
        for m in Store(tmp_path / "ref" / "leaderboard.sqlite").runs()[0]["metrics"]
    }
    cut_m = {
        m["name"]: m["value"]
        for m in Store(tmp_path / "cut" / "leaderboard.sqlite").runs()[0]["metrics"]
    }
    for name in ("bpd", "nll", "neg_elbo", "best_val_loss"):
        assert ref_m[name] == cut_m[name], name
    assert rec.status == ref_rec.status == "finished" and rec.steps == 8


def test_auto_resume_finds_the_unfinished_run_of_the_same_config(train_cfg, tmp_path, monkeypatch):
    cfg = train_cfg("trainer.max_steps=6")
    monkeypatch.setattr(Batches, "next", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train_command(cfg)
    monkeypatch.undo()
    fresh = train_cfg("trainer.max_steps=6")
    fresh.paths.run_dir = str(tmp_path / "out" / "runs" / "another_dir")
    rec = train_command(fresh)
    assert rec.run_dir.endswith("test_run") and rec.steps == 6


def test_checkpoint_of_another_config_is_not_overwritten(train_cfg):
    train_command(train_cfg("trainer.max_steps=2"))
    last = train_cfg().paths.run_dir + "/checkpoints/last.pt"
    before = open(last, "rb").read()
    with pytest.raises(checkpoint.CheckpointError, match="different config"):
        train_command(train_cfg("trainer.max_steps=3", "model.latent=4"))
    assert open(last, "rb").read() == before


def test_nan_loss_marks_the_run_diverged_and_records_it(train_cfg, tmp_path, monkeypatch):
    from genbench.models.vae import VAE

    original = VAE.training_losses

    def poisoned(self, x, phase="main"):
        out = original(self, x, phase)
        # call 0 is the dry run that counts a step's FLOPs, calls 1-2 train steps 1-2
        if self.training and poisoned.calls >= 3:
            out["loss"] = out["loss"] * float("nan")
        poisoned.calls += 1
        return out

    poisoned.calls = 0
    monkeypatch.setattr(VAE, "training_losses", poisoned)
    rec = train_command(train_cfg("trainer.max_steps=6", "trainer.ckpt_every=2"))
    assert rec.status == "diverged" and rec.steps == 3
    run = Store(tmp_path / "out" / "leaderboard.sqlite").runs()[0]
    assert run["status"] == "diverged"
    last = checkpoint.load(tmp_path / "out" / "runs" / "test_run" / "checkpoints" / "last.pt")
    assert last["state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_unsafe_checkpoint_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(path)
    torch.save({"x": torch.ones(1)}, path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.load(path)
