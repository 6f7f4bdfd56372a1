"""End-to-end: the CLI trains, evaluates, samples and lists runs; user mistakes get one clear
sentence, a non-zero exit and no traceback."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One smoke run of the VAE through `genbench train` into a fresh outputs folder."""
    out = tmp_path_factory.mktemp("cli") / "out"
    proc = run_cli("train", "experiment=smoke", f"paths.outputs={out}", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in (out / "runs").rglob("config.yaml")]
    return out, run_dir, proc


def test_train_writes_a_complete_run_folder(trained):
    out, run_dir, proc = trained
    for name in (
        "config.yaml",
        "status.json",
        "metrics.json",
        "samples.png",
        "stats.jsonl",
        "train.log",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run_dir / name).is_file(), name
    metrics = {m["name"]: m for m in json.loads((run_dir / "metrics.json").read_text())["metrics"]}
    assert metrics["bpd"]["kind"] == "bound" and metrics["bpd"]["unit"] == "bits/dim"
    assert metrics["neg_elbo_bpd"]["value"] >= metrics["bpd"]["value"] - 0.05
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert "bpd" in proc.stdout and "≤" in proc.stdout


def test_train_records_one_leaderboard_row(trained):
    out, run_dir, _ = trained
    con = sqlite3.connect(out / "leaderboard.sqlite")
    runs = con.execute("SELECT model, family, dataset, status, steps FROM runs").fetchall()
    # and the data floor of its evaluation protocol (genbench/eval/floor.py)
    assert runs == [
        ("vae", "vae", "digits", "finished", 4),
        ("data", "data", "digits", "finished", 0),
    ]
    (n,) = con.execute("SELECT count(*) FROM metrics WHERE name = 'bpd'").fetchone()
    assert n == 1


@pytest.mark.parametrize("fmt", ["json", "csv", "md"])
def test_leaderboard_exports(trained, fmt):
    out, _, _ = trained
    proc = run_cli("leaderboard", f"format={fmt}", f"paths.outputs={out}", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    if fmt == "json":
        rows = {r["model"]: r for r in json.loads(proc.stdout)}  # the run, then the floors
        assert set(rows) == {"vae", "data", "uniform"}
        row, uniform = rows["vae"], rows["uniform"]
        assert row["bits/dim"] > 0 and 0 < rows["data"]["FID"] < row["FID"]
        assert uniform["floor"] == "uniform"
        assert uniform["bits/dim"] == pytest.approx(4.087462841250339)  # log2 17
    else:
        assert "vae" in proc.stdout and "digits" in proc.stdout


def test_leaderboard_table_marks_bounds(trained):
    out, _, _ = trained
    proc = run_cli("leaderboard", f"paths.outputs={out}", cwd=out.parent)
    assert proc.returncode == 0 and "≤" in proc.stdout and "digits" in proc.stdout


def test_sample_and_eval_from_a_run(trained):
    out, run_dir, _ = trained
    proc = run_cli("sample", f"run={run_dir}", "n=8", "device=cpu", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "samples_8.png").is_file() and (run_dir / "samples_8.npz").is_file()
    proc = run_cli(
        "eval",
        f"run={run_dir}",
        "eval=fast",
        "eval.n_samples=16",
        "device=cpu",
        "eval.nll_examples=16",
        "eval.sample_metrics=false",
        f"paths.outputs={out}",
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert {m["name"]: m["n"] for m in metrics}["bpd"] == 16


def test_help_lists_commands(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for cmd in ("train", "eval", "sample", "leaderboard", "families"):
        assert cmd in proc.stdout
    bad = run_cli("trian", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr
    assert "train" in bad.stderr


@pytest.mark.parametrize(
    "args,expect",
    [
        (["model=nope"], "Could not find 'model/nope'"),
        (["dataset=nope"], "Could not find 'dataset/nope'"),
        (["optimizer=nope"], "Could not find 'optimizer/nope'"),
        (["trainer.max_steps=abc"], "trainer.max_steps='abc' is invalid"),
        (["trainer.batch_size=0"], "trainer.batch_size=0 is invalid"),
        (["optimizer.lr=-1"], "optimizer.lr=-1"),
        (["device=cuda"], "no CUDA device"),
        (["dataset=mnist", "paths.data=/nonexistent"], "dataset.download=true"),
        (["scheduler=nope"], "Could not find 'scheduler/nope'"),
        (["scheduler.warmup_steps=-3"], "scheduler.warmup_steps=-3 is invalid"),
        (["scheduler=linear_warmup"], "scheduler.warmup_steps has no value"),
        (["dataset.augment=[vflip]"], "dataset.augment=['vflip'] is invalid"),
        # renamed keys: read as the new key, with a deprecation warning naming it
        (["trainer.warmup_steps=-2"], "use scheduler.warmup_steps"),
        (["trainer.warmup_steps=-2"], "scheduler.warmup_steps=-2 is invalid"),
        (["model=wgan_gp", "model.n_critic=0"], "use model.d_steps"),
    ],
)
def test_bad_train_input_is_one_clear_error(args, expect, tmp_path, capsys):
    from genbench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "experiment=smoke", f"paths.outputs={tmp_path}/out", *args])
    assert exit_info.value.code != 0
    out = capsys.readouterr()
    assert expect in out.err + out.out
    assert "Traceback" not in out.err
    assert not (tmp_path / "out" / "leaderboard.sqlite").exists()


def test_run_that_is_not_a_run_is_refused(tmp_path):
    proc = run_cli("eval", f"run={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2 and "is not a genbench run folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_multirun_sweep_records_one_row_per_job_and_skips_finished(tmp_path):
    out = tmp_path / "out"
    args = ("train", "-m", "experiment=smoke", "trainer.batch_size=8,16", f"paths.outputs={out}")
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    con = sqlite3.connect(out / "leaderboard.sqlite")
    models = "SELECT count(*) FROM runs WHERE status='finished' AND model != 'data'"
    assert con.execute(models).fetchone() == (2,)
    # both jobs share one evaluation protocol, so one data floor
    assert con.execute("SELECT count(*) FROM runs WHERE model = 'data'").fetchone() == (1,)
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "already finished" in again.stderr + again.stdout
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (3,)


def test_train_help_is_hydras(tmp_path):
    proc = run_cli("train", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "model: " in proc.stdout and "Powered by Hydra" in proc.stdout
