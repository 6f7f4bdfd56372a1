"""Metric metadata is declared once, beside the stage that writes the metric (MetricSpec), and
the leaderboard reads it: a newly declared metric is shown and ranked with no leaderboard change,
and the metrics stored by earlier versions keep their columns, titles and directions."""

from __future__ import annotations

import json

import pytest

from genbench.eval import registry
from genbench.eval.metric import Column, Metric, MetricSpec, lower_is_better
from genbench.eval.registry import metric_spec, register_spec
from genbench.leaderboard.html import section_html
from genbench.leaderboard.report import render
from genbench.leaderboard.sections import View, build_sections, columns

#: the columns (title, key) leaderboards have always printed, left to right
OLD_COLUMNS = [
    ("model", "model"),
    ("family", "family"),
    ("likelihood", "likelihood"),
    ("bits/dim", "bpd"),
    ("-ELBO bpd", "neg_elbo_bpd"),
    ("FID", "fid@"),
    ("IS", "is@"),
    ("KID", "kid@"),
    ("precision", "precision@"),
    ("recall", "recall@"),
    ("sample acc", "sample_accuracy@"),  # conditional runs (optional columns)
    ("intra-FID", "intra_fid@"),
    ("gen-clf acc", "gen_class_accuracy"),
    ("nll_gap", "nll_gap"),
    ("modes", "modes_covered"),
    ("HQ share", "high_quality_share"),
    ("ADA p", "ada_p"),  # GANs trained with ADA (optional column, never ranked)
    ("ms/img", "ms_per_image"),
    ("NFE", "nfe"),
    ("params", "params"),
    ("steps", "steps"),
    ("train s", "train_seconds"),
    ("device", "device"),
    ("status", "status"),
]
#: stored names and the direction they have always been ranked in (True: lower is better)
OLD_DIRECTIONS = {
    "bpd": True,
    "nll": True,
    "neg_elbo": True,
    "neg_elbo_bpd": True,
    "fid@digits-cnn": True,
    "kid@inception-v3": True,
    "kid_std@x": True,
    "is@x": False,
    "is_std@x": False,
    "precision@x": False,
    "recall@x": False,
    "ms_per_image": True,
    "nfe": True,
    "nll_gap": True,
    "bpd_ode": True,
    "nll_ode": True,
    "nfe_ode": True,
    "modes_covered": False,
    "high_quality_share": False,
    "sample_ll": False,
}


def test_stored_metrics_keep_their_columns_and_directions():
    assert columns() == OLD_COLUMNS
    assert {name: lower_is_better(name) for name in OLD_DIRECTIONS} == OLD_DIRECTIONS


def test_spec_lookup_reads_extractors_and_variants():
    assert metric_spec("fid@digits-cnn").name == "fid"
    assert metric_spec("bpd_ode").name == "bpd" and metric_spec("kid_std@x").name == "kid"
    assert metric_spec("nll_gap").name == "nll_gap"  # its own spec, not nll's
    assert metric_spec("prior_bpd") is None
    with pytest.raises(KeyError, match="'entropy' has no ranking direction"):
        lower_is_better("entropy")  # declared, but describes the data: never ranked


def test_register_spec_refuses_clashes(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    with pytest.raises(ValueError, match="'fid' is already declared"):
        register_spec(MetricSpec(name="fid", lower_is_better=True))
    with pytest.raises(ValueError, match="column order 20 is already 'fid'"):
        register_spec(MetricSpec(name="sharp", lower_is_better=True, column=Column(order=20)))
    with pytest.raises(ValueError, match="identifier"):
        register_spec(MetricSpec(name="sharp ness", lower_is_better=True))
    with pytest.raises(ValueError, match="needs a direction"):
        MetricSpec(name="sharp", lower_is_better=None, column=Column(order=99))
    # an unranked number may show, in a column of its own where some run has it
    MetricSpec(name="sharp", lower_is_better=None, column=Column(order=99, optional=True))


def run(run_id, model, value, fid):
    proto = {"extractor": "cnn", "n_generated": 100, "sampler": {}}
    return {
        "run_id": run_id,
        "model": model,
        "family": "vae",
        "likelihood": "elbo",
        "dataset": "digits",
        "params": 10,
        "steps": 1,
        "train_seconds": 1.0,
        "device": "cpu",
        "status": "finished",
        "config": {},
        "metrics": [
            Metric("fid@cnn", fid, "measured", "test", 100, "", proto).to_dict(),
            Metric("sharpness", value, "measured", "samples", 100, "", {"sampler": {}}).to_dict(),
        ],
    }


@pytest.mark.parametrize("lower", [True, False])
def test_a_newly_declared_metric_is_shown_and_ranked_without_leaderboard_changes(
    monkeypatch, lower
):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    register_spec(
        MetricSpec(
            name="sharpness",
            lower_is_better=lower,
            label="sharp",
            column=Column(order=25, sections="image"),
        )
    )
    runs = [run("a", "m1", 0.5, 30.0), run("b", "m2", 0.9, 20.0), run("c", "m3", 0.1, 10.0)]
    (sec,) = build_sections(runs, View(sort="sharpness"))
    titles = [t for t, _ in sec.columns]
    assert titles[titles.index("recall@cnn") + 1] == "sharp"  # order 25: after recall (24)
    order = ["m3", "m1", "m2"] if lower else ["m2", "m1", "m3"]
    assert [r.run["model"] for r in sec.rows] == order
    (by_title,) = build_sections(runs, View(sort="sharp"))
    assert [r.run["model"] for r in by_title.rows] == order
    best = "0.100" if lower else "0.900"
    assert f'<td class="best">{best}</td>' in section_html(sec)
    assert [r["sharp"] for r in json.loads(render(runs, "json", View(sort="sharp")))] == [
        float(m) for m in ("0.1", "0.5", "0.9")
    ][:: 1 if lower else -1]
