"""Safety guarantees: no network by default, no arbitrary _target_ from run folders, no lost
leaderboard files."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from omegaconf import OmegaConf

from genbench.commands import eval_command, train_command
from genbench.errors import ConfigError
from genbench.files import FileError
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
    monkeypatch.setattr(
        socket,
        "create_connection",
        lambda addr, *a, **k: (attempts.append(addr), refuse(None, addr))[1],
    )
    return attempts


def test_train_eval_and_leaderboard_make_no_network_connection(train_cfg, tmp_path, no_network):
    rec = train_command(train_cfg())
    assert rec.status == "finished"
    cfg = OmegaConf.create(
        {
            "run": rec.run_dir,
            "eval": train_cfg().eval,
            "sampler": {},
            "paths": {"outputs": str(tmp_path / "out")},
            "device": {"name": "cpu", "precision": "fp32", "threads": 1},
        }
    )
    eval_command(cfg)
    assert Store(tmp_path / "out" / "leaderboard.sqlite").runs()
    assert no_network == []


def test_run_folder_config_cannot_target_arbitrary_code(train_cfg, tmp_path):
    rec = train_command(train_cfg())
    cfg_file = tmp_path / "out" / "runs" / "test_run" / "config.yaml"
    tampered = OmegaConf.load(cfg_file)
    tampered.model._target_ = "os.system"
    OmegaConf.save(tampered, cfg_file)
    cfg = OmegaConf.create(
        {
            "run": rec.run_dir,
            "eval": train_cfg().eval,
            "sampler": {},
            "paths": {"outputs": str(tmp_path / "out")},
        }
    )
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


# -- a run folder is data, never code -------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """One finished smoke run; each test tampers with a copy of its folder."""
    from conftest import compose_cfg

    root = tmp_path_factory.mktemp("shared")
    rec = train_command(
        compose_cfg("train", ["experiment=smoke", "eval.sample_metrics=false"], root / "out")
    )
    return Path(rec.run_dir)


@pytest.fixture
def tampered(shared_run, tmp_path):
    """``tampered(edit)``: a copy of the shared run whose config.yaml text is ``edit(text)``;
    returns the eval command's config for it."""

    def make(edit):
        run = tmp_path / "run"
        shutil.copytree(shared_run, run)
        (run / "config.yaml").write_text(edit((run / "config.yaml").read_text()))
        return _eval_cfg(run, tmp_path / "out")

    return make


def _retarget(key: str, node: dict):
    def edit(text: str) -> str:
        cfg = yaml.safe_load(text)
        cfg[key] = node
        return yaml.safe_dump(cfg)

    return edit


@pytest.mark.parametrize(
    "target",
    [
        "genbench.rundir.os.system",  # an attribute chain through an allowed module
        "genbench.record.subprocess.call",
        "genbench.models.vae.torch.load",
        "torch.optim.Adam.__init__.__globals__",
        "os.system",
    ],
)
def test_stored_target_outside_the_allowlist_never_runs(tampered, tmp_path, target):
    marker = tmp_path / "PAYLOAD"
    cfg = tampered(_retarget("dataset", {"_target_": target, "_args_": [f"touch {marker}"]}))
    with pytest.raises(ConfigError, match=r"dataset\._target_=.* is not allowed"):
        eval_command(cfg)
    assert not marker.exists()


@pytest.mark.parametrize(
    "value", ["${oc.env:HOME}", "${oc.create:{a: 1}}", "x${seed}y", r"\${escaped}"]
)
def test_stored_interpolations_are_refused(tampered, value, monkeypatch):
    monkeypatch.setenv("GENBENCH_SECRET", "s3cret")
    cfg = tampered(lambda text: text.replace("seed: 0", f"seed: '{value}'"))
    with pytest.raises(ConfigError, match=r"seed=.* is an interpolation"):
        eval_command(cfg)


def test_alias_bomb_fails_fast(tampered):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
        for p, c in zip("abcdefgh", "bcdefghi")
    ]
    cfg = tampered(lambda text: "\n".join(lines) + "\n" + text)
    start = time.monotonic()
    with pytest.raises(FileError, match="aliases"):
        eval_command(cfg)
    assert time.monotonic() - start < 10


def test_oversized_config_is_refused_unread(tampered):
    cfg = tampered(lambda text: text + "#" * (3 * 2**20) + "\n")
    with pytest.raises(FileError, match="too large"):
        eval_command(cfg)


def test_stored_config_has_no_interpolations_and_rebuilds_the_run(shared_run):
    text = (shared_run / "config.yaml").read_text()
    assert "${" not in text and "&" not in text
    rec = eval_command(_eval_cfg(shared_run, shared_run.parent / "again"))
    assert rec.status == "finished" and rec.run_dir == str(shared_run.resolve())


def _eval_cfg(run: Path, outputs: Path):
    from conftest import compose_cfg

    return compose_cfg(
        "eval",
        [
            f"run={run}",
            "eval.sample_metrics=false",
            "eval.n_samples=8",
            "eval.grid=4",
            "device.threads=1",
        ],
        outputs,
    )
