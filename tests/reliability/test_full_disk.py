"""A real full filesystem (a small tmpfs) during training: one clear error, the previous checkpoint
kept, no zero-byte or temporary files; once there is room, the same command resumes and finishes.
Needs permission to mount a tmpfs (root in a container); skipped elsewhere, where
tests/reliability/test_bad_input.py covers the same path with /dev/full."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import invoke_cli as invoke

from genbench.leaderboard.store import Store
from genbench.rundir import RunDir

SMOKE = ["experiment=smoke", "eval.sample_metrics=false", "eval.nll_examples=16"]


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    # a smoke VAE's last.pt is ~1.5 MB: the first one fits, a second beside it does not
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2600k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_training_on_a_full_filesystem(small_fs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = small_fs / "out"
    argv = [
        "train",
        *SMOKE,
        "trainer.max_steps=6",
        "trainer.ckpt_every=2",
        f"paths.outputs={out}",
        f"hydra.run.dir={out / 'run'}",
    ]
    code, text = invoke(argv, capsys)
    assert code == 2 and "Traceback" not in text, text[-3000:]
    assert "No space left on device" in text, text[-3000:]
    run = RunDir(out / "run")
    files = _files(out)
    assert all(size > 0 for name, size in files.items() if name != "run/train.log"), files
    assert not [n for n in files if n.endswith(".tmp")], files
    step = run.load_checkpoint("last")["state"]["step"]
    assert step >= 2 and run.status()["step"] == step  # the last complete checkpoint, consistent

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    code, text = invoke(argv, capsys)
    assert code == 0, text[-3000:]
    (row,) = Store(out / "leaderboard.sqlite").runs()
    assert row["status"] == "finished" and row["steps"] == 6
