"""The data floor: real held-out images scored like a model's samples, recorded as a `data` run
in the models' leaderboard section, cached in its folder, kept by rebuild, safe in parallel."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from conftest import compose_cfg, invoke_cli
from omegaconf import open_dict

from genbench import floor
from genbench.commands import eval_command, train_command
from genbench.errors import ConfigError
from genbench.eval import extractors as ex
from genbench.eval.floor import floor_key, held_out
from genbench.leaderboard.command import rebuild
from genbench.leaderboard.sections import build_sections, sample_protocol
from genbench.leaderboard.store import Store
from genbench.rundir import RunDir
from genbench.validation import validate

CPU = torch.device("cpu")


@pytest.fixture
def outputs(trained_cache, tmp_path):
    """An outputs folder whose cache holds the trained digits CNN."""
    out = tmp_path / "out"
    shutil.copytree(trained_cache / "extractors", out / "cache" / "extractors")
    return out


def eval_cfg(outputs, **values):
    cfg = compose_cfg("eval", ["eval=fast", "run=unused"], outputs).eval
    with open_dict(cfg):
        cfg.update({"extractor": "domain", **values})
    return cfg


def scores(rows):
    return {m.name.split("@")[0]: m for m in rows}


def test_floor_of_the_reference_itself_is_zero(data, outputs):
    # the held-out set is the whole test split (permuted): the reference set itself
    cfg = eval_cfg(outputs, floor_split="test", n_samples=len(data.test), metrics=["fid", "prc"])
    rec, rows = floor.ensure_floor(data, "digits", cfg, device=CPU, outputs=outputs)
    s = scores(rows)
    assert abs(s["fid"].value) < 1e-3
    assert s["precision"].value == 1.0 and s["recall"].value == 1.0


def test_floor_record_and_rows(data, outputs):
    cfg = eval_cfg(outputs, n_samples=300, metrics=["fid", "kid"], kid_subset_size=100)
    rec, rows = floor.ensure_floor(data, "digits", cfg, device=CPU, outputs=outputs)
    assert (rec.model, rec.family, rec.likelihood, rec.dataset) == (
        "data",
        "data",
        "none",
        "digits",
    )
    assert rec.run_id.startswith("floors/digits_") and rec.status == "finished"
    s = scores(rows)
    assert set(s) == {"fid", "kid", "kid_std"}
    assert 0.1 < s["fid"].value < 5.0  # real train/val images against the test split
    for m in rows:
        p = m.protocol
        assert m.name.endswith("@digits-cnn") and m.split == "test" and m.n == 300
        assert (p["n_generated"], p["n_real"], p["held_out_splits"]) == (300, 300, ["train", "val"])
        assert (p["reference_split"], p["n_reference"]) == ("test", 300)
    run = RunDir(outputs / "runs" / rec.run_id)
    stored = json.loads(run.metrics_file.read_text())["metrics"]
    assert [m["name"] for m in stored] == [m.name for m in rows]
    assert [r["model"] for r in Store(outputs / "leaderboard.sqlite").runs()] == ["data"]


def test_short_pool_keeps_n_generated_and_records_the_actual_n(data, outputs, caplog):
    big_n, pool = 2000, len(data.train) + len(data.val)  # 1,497 real images outside the test split
    cfg = eval_cfg(outputs, n_samples=big_n, metrics=["fid"])
    with caplog.at_level(logging.WARNING):
        _, rows = floor.ensure_floor(data, "digits", cfg, device=CPU, outputs=outputs)
    (fid,) = rows
    assert fid.n == pool and fid.protocol["n_real"] == pool
    assert fid.protocol["n_generated"] == big_n
    assert f"only {pool} real images" in caplog.text
    model = fid.to_dict() | {"n": big_n, "protocol": {**fid.protocol, "n_real": None}}
    key = sample_protocol({"metrics": [fid.to_dict()], "config": {}}, toy=False)[0]
    assert key == sample_protocol({"metrics": [model], "config": {}}, toy=False)[0]


def test_a_locked_floor_is_left_to_its_holder(data, outputs, caplog):
    cfg = eval_cfg(outputs, n_samples=100, metrics=["fid"])
    x, _ = held_out(data, cfg)
    extractor = ex.domain_extractor(data, outputs / "cache", CPU)
    key = floor_key("digits", data, cfg, x, extractor)
    run = RunDir(outputs / "runs" / "floors" / f"digits_{key[:16]}")
    with run.lock("floor"), caplog.at_level(logging.INFO):  # another job is computing it
        assert floor.ensure_floor(data, "digits", cfg, device=CPU, outputs=outputs) is None
    assert "another process is computing" in caplog.text
    assert not run.metrics_file.exists()
    rec, _ = floor.ensure_floor(data, "digits", cfg, device=CPU, outputs=outputs)
    assert rec.run_id == f"floors/digits_{key[:16]}" and run.metrics_file.is_file()


def test_a_damaged_floor_is_recomputed(data, outputs, caplog):
    cfg = eval_cfg(outputs, n_samples=100, metrics=["fid"])
    rec, rows = floor.ensure_floor(data, "digits", cfg, device=CPU, outputs=outputs)
    run = RunDir(outputs / "runs" / rec.run_id)
    run.metrics_file.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        _, again = floor.ensure_floor(data, "digits", cfg, device=CPU, outputs=outputs)
    assert "recomputing the data floor" in caplog.text
    assert again[0].value == pytest.approx(rows[0].value, rel=1e-9)


def test_no_floor_without_sample_metrics(data, outputs):
    cfg = eval_cfg(outputs, sample_metrics=False)
    assert floor.ensure_floor(data, "digits", cfg, device=CPU, outputs=outputs) is None
    cfg = eval_cfg(outputs, floor=False)
    assert floor.ensure_floor(data, "digits", cfg, device=CPU, outputs=outputs) is None
    assert not (outputs / "runs").exists()


def test_bad_floor_split_is_one_sentence(train_cfg):
    with pytest.raises(ConfigError, match="eval.floor_split"):
        validate(train_cfg("eval.floor_split=holdout"))


@pytest.fixture(scope="module")
def trained(trained_cache, tmp_path_factory):
    """A smoke VAE trained (and so evaluated, with sample metrics) into a fresh outputs folder."""
    out = tmp_path_factory.mktemp("floor-run") / "out"
    shutil.copytree(trained_cache / "extractors", out / "cache" / "extractors")
    cfg = compose_cfg("train", ["experiment=smoke", "eval.extractor=domain"], out)
    train_command(cfg)
    return out, cfg


def test_training_records_the_floor_in_the_models_section(trained):
    out, _ = trained
    runs = Store(out / "leaderboard.sqlite").runs()
    assert sorted(r["model"] for r in runs) == ["data", "vae"]
    (section,) = build_sections(runs)
    assert [r.run["model"] for r in section.rows] == ["vae"]
    assert "data" in [r.run["model"] for r in section.floors]  # same section, never ranked
    fid = {r["model"]: scores_of(r)["fid"] for r in runs}
    assert 0 < fid["data"] < fid["vae"]  # a 4-step model is far from real data


def scores_of(run):
    return {m["name"].split("@")[0]: m["value"] for m in run["metrics"]}


def test_second_evaluation_reuses_the_floor_and_rebuild_keeps_it(trained, monkeypatch, caplog):
    out, cfg = trained
    (folder,) = (out / "runs" / "floors").iterdir()
    before = (folder / "metrics.json").read_bytes(), (folder / "metrics.json").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("the floor was computed again")

    monkeypatch.setattr(floor, "_compute", fail)
    ev = compose_cfg("eval", [f"run={out / 'runs' / 'test_run'}", "eval=fast"], out)
    with open_dict(ev):
        ev.eval.update(cfg.eval)
    with caplog.at_level(logging.INFO):
        eval_command(ev)
    assert "(cached)" in caplog.text
    f = folder / "metrics.json"
    assert (f.read_bytes(), f.stat().st_mtime_ns) == before
    (out / "leaderboard.sqlite").unlink()
    assert rebuild(Store(out / "leaderboard.sqlite"), out) == 2
    runs = Store(out / "leaderboard.sqlite").runs()
    assert sorted(r["model"] for r in runs) == ["data", "vae"]


def test_floor_command_records_and_then_reads_back(outputs, capsys):
    argv = ["floor", "eval=fast", "eval.n_samples=100", "eval.metrics=[fid]", "device=cpu"]
    code, text = invoke_cli([*argv, f"paths.outputs={outputs}"], capsys)
    assert code == 0, text[-2000:]
    assert "data on digits" in text and "fid@digits-cnn" in text
    (run,) = Store(outputs / "leaderboard.sqlite").runs()
    assert (run["model"], run["dataset"], run["metrics"][0]["n"]) == ("data", "digits", 100)
    code, text = invoke_cli([*argv, f"paths.outputs={outputs}", "eval.floor_split=val"], capsys)
    assert code == 0 and len(Store(outputs / "leaderboard.sqlite").runs()) == 2  # another key
    code, text = invoke_cli([*argv, f"paths.outputs={outputs}", "eval.floor_split=x"], capsys)
    assert code == 2 and "eval.floor_split" in text
