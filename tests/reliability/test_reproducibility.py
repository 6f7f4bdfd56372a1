"""Reproducibility: the same config and seed give the same run twice on CPU, for every model in
conf/model (weights, EMA, training statistics, samples and every evaluated number), a different
seed gives a different run, and each leaderboard row records the code and package versions that
produced it."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from conftest import MODELS, compose_cfg

import genbench
from genbench import checkpoint
from genbench.commands import train_command
from genbench.leaderboard.store import Store

TINY = [
    "experiment=smoke",
    "device=cpu",
    "device.threads=1",
    "trainer.max_steps=3",
    "trainer.eval_every=3",
    "trainer.ckpt_every=3",
    "trainer.log_every=1",
    "eval.sample_metrics=false",
    "eval.nll_examples=8",
    "eval.n_samples=8",
    "eval.grid=8",
]
#: only to keep the test fast: DDPM's bound sums T network terms per example
FAST = {"ddpm": ["model.timesteps=50"]}


def _run(model: str, outputs: Path, *extra: str) -> dict:
    rec = train_command(
        compose_cfg("train", [*TINY, f"model={model}", *FAST.get(model, []), *extra], outputs)
    )
    assert rec.status == "finished"
    run_dir = Path(rec.run_dir)
    (row,) = Store(outputs / "leaderboard.sqlite").runs()
    return {
        "last": checkpoint.load(run_dir / "checkpoints" / "last.pt"),
        "metrics": {
            (m["name"], m["split"], json.dumps(m["protocol"], sort_keys=True)): m["value"]
            for m in row["metrics"]
            if m["unit"] not in ("s", "ms")
        },
        "stats": [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run_dir / "stats.jsonl").read_text().splitlines()
        ],
        "samples": hashlib.sha256((run_dir / "samples.png").read_bytes()).hexdigest(),
        "row": row,
    }


def _weights(last: dict) -> dict[str, torch.Tensor]:
    ema = last["ema"]["module"] if last["ema"] else {}
    return {
        **{f"model.{k}": v for k, v in last["model"].items()},
        **{f"ema.{k}": v for k, v in ema.items()},
    }


@pytest.mark.parametrize("model", MODELS)
def test_same_config_and_seed_give_the_same_run(model, tmp_path):
    a, b = _run(model, tmp_path / "a"), _run(model, tmp_path / "b")
    wa, wb = _weights(a["last"]), _weights(b["last"])
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{model}: {k} differs between two identical runs"
    for name in a["last"]["optimizers"]:
        sa, sb = a["last"]["optimizers"][name]["state"], b["last"]["optimizers"][name]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for k, v in sa[i].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[i][k])), (name, i, k)
    assert a["last"]["state"]["history"] == b["last"]["state"]["history"]
    assert a["stats"] == b["stats"] and len(a["stats"]) == 3
    assert a["metrics"] == b["metrics"] and a["metrics"]
    assert a["samples"] == b["samples"]
    assert a["row"]["config_hash"] == b["row"]["config_hash"]

    c = _run(model, tmp_path / "c", "seed=1")
    assert c["row"]["config_hash"] != a["row"]["config_hash"]
    assert any(not torch.equal(v, _weights(c["last"])[k]) for k, v in wa.items()), (
        f"{model}: seed=1 trained the same weights as seed=0"
    )


def test_each_run_records_its_code_and_package_versions(train_cfg, tmp_path):
    train_command(train_cfg("eval.sample_metrics=false"))
    (row,) = Store(tmp_path / "out" / "leaderboard.sqlite").runs()
    v = row["versions"]
    assert v["genbench"] == genbench.__version__ and v["torch"] == torch.__version__
    assert v["python"] == platform.python_version()
    for package in ("numpy", "torchvision", "torch-fidelity", "hydra-core"):
        assert v[package] == version(package), package
    root = Path(genbench.__file__).parent
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if git.returncode != 0:
        pytest.skip("genbench is not running from a git checkout")
    assert v["git_commit"] == git.stdout.strip() and len(v["git_commit"]) == 40
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert v["git_dirty"] == ("true" if dirty else "false")
    saved = json.loads((Path(row["run_dir"]) / "record.json").read_text())
    assert saved["versions"] == v  # also in the run folder, for `leaderboard rebuild`
