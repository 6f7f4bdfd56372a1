"""Anytime curves on disk and in the index: ``curve.json`` in the run folder (read back as
untrusted data), the leaderboard's curve rows, ``leaderboard rebuild``, and ``train`` building
the probe when ``trainer.eval_at`` names points."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from genbench import commands
from genbench.commands import train_command
from genbench.eval.metric import CurvePoint, Metric
from genbench.files import FileError
from genbench.leaderboard.command import rebuild
from genbench.leaderboard.store import Store
from genbench.models.base import GenerativeModel
from genbench.record import record
from genbench.rundir import RunDir

POINTS = [
    CurvePoint(Metric("bpd", 3.5 - f, "bound", "test", 64, "bits/dim", {"seed": 0}), f, s, 16 * s,
               0.1 * s, 1e9 * s)
    for f, s in ((0.5, 2), (1.0, 4))
]  # fmt: skip


class Tiny(GenerativeModel):
    family = "flow"
    likelihood = "exact"

    def __init__(self):
        super().__init__((1, 2, 2), 4)
        self.w = nn.Parameter(torch.zeros(()))

    def training_losses(self, x, phase="main"):
        return {"loss": self.w + self.nll(x)}

    def sample(self, n, *, generator=None, **sampler):
        raise NotImplementedError

    def nll(self, x):
        return torch.full((x.shape[0],), 4 * math.log(4))


class State:
    step, images_seen, train_seconds, status = 4, 64, 0.4, "finished"
    curve = [p.to_dict() for p in POINTS]


def test_curve_json_round_trip_and_damage(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.read_curve() == []  # no curve: nothing to read
    run.path.mkdir()
    run.write_curve(POINTS)
    assert run.read_curve() == POINTS
    for text, why in [
        ("[]", "JSON list"),
        ('{"curve": 3}', "no list of curve points"),
        ('{"curve": [{"metric": {"name": "bpd", "value": 1}, "fraction": "x"}]}', "fraction"),
        ('{"curve": [{"metric": null}]}', "metric row"),
    ]:
        run.curve_file.write_text(text)
        with pytest.raises(FileError, match=why):
            run.read_curve()


def test_record_stores_the_curve_and_rebuild_reads_it_back(tmp_path, caplog):
    out = tmp_path / "out"
    run = RunDir(out / "runs" / "r1")
    run.path.mkdir(parents=True)
    run.write_config({"run": {"model": "tiny", "dataset": "digits"}})
    cfg = {"run": {"model": "tiny", "dataset": "digits"}}
    record(cfg, run, out, Tiny(), State(), "cpu", [Metric("bpd", 2.5, "exact")], "h")
    assert run.read_curve() == POINTS
    store = Store(out / "leaderboard.sqlite")
    (row,) = store.runs()
    assert [(c["fraction"], c["step"], c["flops"], c["value"]) for c in row["curve"]] == [
        (0.5, 2, 2e9, 3.0),
        (1.0, 4, 4e9, 2.5),
    ]
    store.path.unlink()
    assert rebuild(store, out) == 1
    assert [c["value"] for c in store.runs()[0]["curve"]] == [3.0, 2.5]
    run.curve_file.write_text('{"curve": [{"metric": 5}]}')
    with caplog.at_level(logging.WARNING):
        assert rebuild(store, out) == 1  # the run's final metrics still stand
    (row,) = store.runs()
    assert row["curve"] == [] and [m["name"] for m in row["metrics"]] == ["bpd"]
    assert "without its anytime curve" in caplog.text


def test_no_eval_at_no_probe(train_cfg):
    cfg = train_cfg()
    assert commands._probe(cfg, None, torch.device("cpu"), cfg.paths.outputs) is None


def test_eval_at_records_curve_points_end_to_end(train_cfg, tmp_path):
    cfg = train_cfg(
        "trainer.eval_at=[0.5,1.0]",
        "trainer.probe.nll_examples=20",
        "trainer.probe.n_samples=24",
        "eval.sample_metrics=false",
    )
    rec = train_command(cfg)
    points = RunDir(rec.run_dir).read_curve()
    got = [(p.fraction, p.step, p.metric.name, p.metric.n) for p in points]
    names = ["bpd", "fid@digits-cnn", "kid@digits-cnn", "kid_std@digits-cnn"]
    assert got == [
        (f, s, name, 20 if name == "bpd" else 24) for f, s in ((0.5, 2), (1.0, 4)) for name in names
    ]
    assert points[0].images == 2 * 16 and points[0].seconds > 0 and points[0].flops > 0
    assert points[-1].flops == pytest.approx(2 * points[0].flops)  # 4 steps vs 2
    (row,) = Store(tmp_path / "out" / "leaderboard.sqlite").runs()
    assert [(c["fraction"], c["name"]) for c in row["curve"]] == [(f, n) for f, _, n, _ in got]
    assert [c["value"] for c in row["curve"]] == [p.metric.value for p in points]
    before = {p.metric.name: p.metric.value for p in points if p.fraction == 0.5}
    after = {p.metric.name: p.metric.value for p in points if p.fraction == 1.0}
    assert before != after  # two points, two states of the weights
