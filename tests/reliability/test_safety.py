"""Safety guarantees: no network by default, no arbitrary _target_ from run folders, no lost
leaderboard files."""

from __future__ import annotations

import socket

import pytest
from conftest import run_cli
from omegaconf import OmegaConf

from genbench.commands import eval_command, train_command
from genbench.errors import ConfigError
from genbench.leaderboard.store import Store


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(self, address, *args, **kwargs):
        if isinstance(address, tuple):  # AF_INET / AF_INET6; unix sockets stay allowed
            attempts.append(address)
            raise OSError(f"network access attempted: {address}")
        return real_connect(self, address, *args, **kwargs)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection",
                        lambda addr, *a, **k: (attempts.append(addr), refuse(None, addr))[1])
    return attempts


def test_train_eval_and_leaderboard_make_no_network_connection(train_cfg, tmp_path, no_network):
    rec = train_command(train_cfg())
    assert rec.status == "finished"
    cfg = OmegaConf.create({"run": rec.run_dir, "eval": train_cfg().eval, "sampler": {},
                            "paths": {"outputs": str(tmp_path / "out")},
                            "device": {"name": "cpu", "precision": "fp32", "threads": 1}})
    eval_command(cfg)
    assert Store(tmp_path / "out" / "leaderboard.sqlite").runs()
    assert no_network == []


def test_run_folder_config_cannot_target_arbitrary_code(train_cfg, tmp_path):
    rec = train_command(train_cfg())
    cfg_file = tmp_path / "out" / "runs" / "test_run" / "config.yaml"
    tampered = OmegaConf.load(cfg_file)
    tampered.model._target_ = "os.system"
    OmegaConf.save(tampered, cfg_file)
    cfg = OmegaConf.create({"run": rec.run_dir, "eval": train_cfg().eval, "sampler": {},
                            "paths": {"outputs": str(tmp_path / "out")}})
    with pytest.raises(ConfigError, match="os.system"):
        eval_command(cfg)


def test_corrupt_leaderboard_is_reported_and_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "leaderboard.sqlite").write_bytes(b"garbage" * 1000)
    proc = run_cli("train", "experiment=smoke", f"paths.outputs={out}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "leaderboard" in proc.stderr
    assert (out / "leaderboard.sqlite").read_bytes() == b"garbage" * 1000
    board = run_cli("leaderboard", f"paths.outputs={out}", cwd=tmp_path)
    assert board.returncode == 2 and "not a readable genbench leaderboard" in board.stderr
