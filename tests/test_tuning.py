"""Equal tuning budgets: `train` returns its validation objective, `hydra/sweeper=tune` runs
Optuna's TPE sampler over the model's `tune:` block and records the tuning budget, and
`leaderboard best=true` selects a model's trial by its validation objective, never by a test
metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import CONF, MODELS, compose_cfg, invoke_cli

from genbench.commands import train_command, train_objective
from genbench.errors import ConfigError
from genbench.eval.metric import Metric
from genbench.eval.objective import resolve_objective
from genbench.leaderboard.sections import View, build_sections
from genbench.leaderboard.store import RunRecord, Store
from genbench.tuning import space_hash

TINY = ["experiment=smoke", "trainer.max_steps=2", "objective=auto", "objective_examples=48"]


def objective_row(run: dict) -> dict:
    (row,) = [m for m in run["metrics"] if m["name"] == "objective"]
    return row


def test_two_trial_sweep_records_its_budget_and_best_picks_by_validation(tmp_path, capsys):
    out = tmp_path / "out"
    code, text = invoke_cli(
        [
            "train",
            "-m",
            "hydra/sweeper=tune",
            "hydra.sweeper.n_trials=2",
            *TINY,
            "model=vae",
            "dataset=toy_8gaussians",
            f"paths.outputs={out}",
        ],
        capsys,
    )
    assert code == 0, text[-3000:]
    runs = Store(out / "leaderboard.sqlite").runs()
    assert len(runs) == 2 and {r["status"] for r in runs} == {"finished"}
    space = yaml.safe_load((CONF / "tune" / "vae.yaml").read_text())
    for run in runs:
        t = run["tuning"]
        assert (t["sweeper"], t["sampler"], t["seed"], t["trials"]) == (
            "OptunaSweeper",
            "TPESampler",
            0,
            2,
        )
        assert t["space"] == space_hash(space) and t["objective"] == "bpd"
        row = objective_row(run)
        assert row["split"] == "val" and row["n"] == 48 and row["protocol"]["metric"] == "bpd"
        assert t["value"] == row["value"] and math.isfinite(row["value"])
        assert "tune" not in run["config"]  # the stored config (and its hash) are a plain run's
    assert sorted(r["tuning"]["trial"] for r in runs) == [0, 1]
    assert runs[0]["config"]["optimizer"]["lr"] != runs[1]["config"]["optimizer"]["lr"]
    # the values train returned to the sweeper are the recorded objectives
    (results,) = out.glob("runs/*/*_sweep/optimization_results.yaml")
    best = min(runs, key=lambda r: objective_row(r)["value"])
    assert yaml.safe_load(results.read_text())["best_value"] == objective_row(best)["value"]
    (sec,) = build_sections(runs, View(best=True))
    assert [r.run["run_id"] for r in sec.rows] == [best["run_id"]]
    # `leaderboard rebuild` reads it back from the run folders
    (out / "leaderboard.sqlite").unlink()
    assert invoke_cli(["leaderboard", "rebuild", f"paths.outputs={out}"], capsys)[0] == 0
    rebuilt = {r["run_id"]: r for r in Store(out / "leaderboard.sqlite").runs()}
    assert {k: objective_row(r)["value"] for k, r in rebuilt.items()} == {
        r["run_id"]: objective_row(r)["value"] for r in runs
    }
    assert all(r["tuning"]["trials"] == 2 for r in rebuilt.values())


def add(store: Store, run_id: str, model: str, *, test_bpd: float, val: float | None) -> None:
    rows = [Metric("bpd", test_bpd, "bound", "test", 300, "bits/dim", {"likelihood": "elbo"})]
    if val is not None:
        rows.append(Metric("objective", val, "bound", "val", 64, "bits/dim", {"metric": "bpd"}))
    config = {"seed": 0, "optimizer": {"lr": len(run_id)}, "trainer": {"max_steps": 100}}
    rec = RunRecord(
        *(run_id, "2026-01-01", model, "vae", "elbo", "digits", 10, 100, 1600, 2.0, "cpu"),
        *("finished", run_id, run_id, config),
        tuning={"trials": 3} if val is not None else {},
    )
    store.record(rec, rows)


def test_best_picks_the_validation_winner_even_when_its_test_metric_is_worse(tmp_path):
    store = Store(tmp_path / "leaderboard.sqlite")
    add(store, "trial0", "vae", test_bpd=2.0, val=2.6)  # best on test, worse on validation
    add(store, "trial1", "vae", test_bpd=2.4, val=2.1)  # the validation winner
    add(store, "trial2", "vae", test_bpd=1.5, val=None)  # no objective: never beats a trial
    add(store, "old1", "pixelcnn", test_bpd=2.9, val=None)  # untuned model: test ranking as before
    add(store, "old2", "pixelcnn", test_bpd=2.7, val=None)
    (sec,) = build_sections(store.runs(), View(best=True))
    assert sorted(r.run["run_id"] for r in sec.rows) == ["old2", "trial1"]
    (sec,) = build_sections(store.runs(), View(best=False))
    assert len(sec.rows) == 5


def test_train_returns_its_objective_and_a_diverged_run_returns_inf(tmp_path):
    cfg = compose_cfg("train", [*TINY, "model=vae", "dataset=toy_8gaussians"], tmp_path / "a")
    rec = train_command(cfg)
    (row,) = [
        m
        for m in json.loads((Path(rec.run_dir) / "metrics.json").read_text())["metrics"]
        if m["name"] == "objective"
    ]
    assert train_objective(rec, cfg) == row["value"] == rec.tuning["value"]
    assert rec.tuning == {"objective": "bpd", "value": row["value"]}  # not a sweep
    assert row["split"] == "val" and row["unit"] == "bits/dim"
    cfg = compose_cfg("train", [*TINY, "model=vae", "optimizer.lr=1e30"], tmp_path / "b")
    rec = train_command(cfg)
    assert rec.status == "diverged" and rec.tuning["value"] is None
    assert train_objective(rec, cfg) == math.inf  # a sweeper ranks it last


def test_a_plain_run_measures_no_objective(tmp_path):
    """``objective: null`` (the default) outside an optimizing sweeper: nothing is measured or
    returned, so ordinary runs pay nothing for tuning."""
    overrides = ["experiment=smoke", "trainer.max_steps=2", "model=vae", "dataset=toy_8gaussians"]
    cfg = compose_cfg("train", overrides, tmp_path)
    rec = train_command(cfg)
    rows = json.loads((Path(rec.run_dir) / "metrics.json").read_text())["metrics"]
    assert rec.tuning == {} and train_objective(rec, cfg) is None
    assert "objective" not in {m["name"] for m in rows} and "bpd" in {m["name"] for m in rows}


def test_a_bad_objective_is_one_sentence_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code, text = invoke_cli(
        ["train", *TINY, "model=vae", "objective=accuracy", f"paths.outputs={out}"], capsys
    )
    assert code == 2
    text = " ".join(text.split())  # the console wraps long lines
    assert "objective='accuracy' is invalid: expected one of ['auto', 'bpd', 'fid', 'kid']" in text
    assert "Traceback" not in text and not list(out.rglob("config.yaml"))


def test_objective_choices_follow_the_model_and_the_data():
    assert resolve_objective("auto", "elbo", toy=False) == "bpd"
    assert resolve_objective("auto", "none", toy=False) == "fid"
    assert resolve_objective("auto", "none", toy=True) == "sample_nll"
    assert resolve_objective("kid", "exact", toy=False) == "kid"
    with pytest.raises(ConfigError, match=r"objective='bpd' is invalid: expected one of \['auto'"):
        resolve_objective("bpd", "none", toy=False)
    with pytest.raises(ConfigError, match="fid.*2-D toy"):
        resolve_objective("fid", "exact", toy=True)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_declares_a_search_space_the_sweeper_can_draw(model):
    """Each model has a conf/tune yaml of config keys that exist, drawn by Optuna."""
    import optuna

    from genbench.tuning import suggest

    cfg = compose_cfg("train", [f"model={model}"])
    assert cfg.get("tune"), f"conf/tune/{model}.yaml is missing"
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    suggest(cfg, trial)
    assert set(trial.params) == set(cfg.tune)
    assert any(k.endswith(".lr") for k in trial.params)  # every family tunes a learning rate
    for key in trial.params:
        assert cfg.get(key.split(".")[0]) is not None and _has(cfg, key), key


def _has(cfg, key: str) -> bool:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default="<missing>") != "<missing>"
