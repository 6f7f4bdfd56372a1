"""Leaderboard views over a Store of synthetic runs: sections per protocol, ranking direction,
best run per model, mean ± 95 % t-interval over seeds, published rows, and missing values that
never read 0."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math

import pytest
from conftest import compose_cfg

from genbench.errors import ConfigError
from genbench.eval.metric import Metric
from genbench.leaderboard.command import leaderboard_command
from genbench.leaderboard.families import print_families, tradeoff_rows
from genbench.leaderboard.references import reference_runs
from genbench.leaderboard.report import print_metrics, render, table_rows
from genbench.leaderboard.sections import View, build_sections, fmt_number
from genbench.leaderboard.store import RunRecord, Store

CNN = {
    "extractor": "digits-cnn",
    "extractor_weights_sha256": "aa11",
    "n_generated": 1000,
    "reference_split": "test",
    "n_reference": 300,
    "reference_sha256": "bb22",
}
_CLOCK = itertools.count()  # creation order of the synthetic runs


def add(
    store,
    run_id,
    model="vae",
    family="vae",
    likelihood="elbo",
    dataset="digits",
    *,
    bpd=None,
    fid=None,
    is_=None,
    ms=None,
    seed=0,
    lr=1e-3,
    sampler=None,
    proto=None,
    extra=(),
    params=1000,
    status="finished",
):
    """Record one synthetic run with the given metrics (None: not measured)."""
    sampler = sampler or {}
    sp = {**(proto or CNN), "sampler": sampler, "seed": 0}
    rows = list(extra)
    if bpd is not None:
        kind = {"exact": "exact", "ode": "estimate"}.get(likelihood, "bound")
        rows.append(Metric("bpd", bpd, kind, "test", 300, "bits/dim", {"likelihood": likelihood}))
    if fid is not None:
        rows.append(
            Metric(f"fid@{sp['extractor']}", fid, "measured", "test", sp["n_generated"], "", sp)
        )
    if is_ is not None:
        rows.append(
            Metric(f"is@{sp['extractor']}", is_, "measured", "test", sp["n_generated"], "", sp)
        )
    if ms is not None:
        rows.append(
            Metric("ms_per_image", ms, "measured", "samples", 32, "ms", {"sampler": sampler})
        )
    config = {
        "seed": seed,
        "paths": {"run_dir": f"/r/{run_id}"},
        "sampler": sampler,
        "optimizer": {"lr": lr},
        "trainer": {"max_steps": 100, "resume": "auto"},
    }
    store.record(
        RunRecord(
            run_id,
            f"2026-01-01T{next(_CLOCK):06d}",
            model,
            family,
            likelihood,
            dataset,
            params,
            100,
            1600,
            2.0,
            "cpu",
            status,
            f"/r/{run_id}",
            run_id,
            config,
        ),
        rows,
    )


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "out" / "leaderboard.sqlite")


def models(section):
    return [r.run["model"] for r in section.rows]


def test_sort_direction_follows_the_metric(store):
    add(store, "a", "m1", bpd=3.0, fid=30.0, is_=2.0, params=300)
    add(store, "b", "m2", bpd=2.0, fid=10.0, is_=1.0, params=100)
    add(store, "c", "gan", "gan", "none", fid=20.0, is_=3.0, params=200)
    runs = store.runs()
    (sec,) = build_sections(runs, View(sort="fid"))
    assert models(sec) == ["m2", "gan", "m1"]  # FID: lower first
    (sec,) = build_sections(runs, View(sort="is"))
    assert models(sec) == ["gan", "m1", "m2"]  # IS: higher first
    (sec,) = build_sections(runs, View(sort="bpd"))
    assert models(sec) == ["m2", "m1", "gan"]  # no likelihood: last, not first
    (sec,) = build_sections(runs, View(sort="params"))
    assert models(sec) == ["m2", "gan", "m1"]
    (sec,) = build_sections(runs, View(sort="FID@digits-cnn"))  # column title with extractor
    assert models(sec) == ["m2", "gan", "m1"]
    with pytest.raises(ConfigError, match="sort='nonsense'"):
        build_sections(runs, View(sort="nonsense"))


def test_best_keeps_one_run_per_model(store):
    add(store, "a", "vae", bpd=3.0, fid=10.0)
    add(store, "b", "vae", bpd=2.5, fid=40.0)
    add(store, "c", "pixelcnn", "autoregressive", "exact", bpd=2.8, fid=20.0)
    (sec,) = build_sections(store.runs(), View(best=True))
    assert [(r.run["run_id"]) for r in sec.rows] == ["b", "c"]
    (sec,) = build_sections(store.runs(), View(best=True, sort="fid"))
    assert [(r.run["run_id"]) for r in sec.rows] == ["a", "c"]


def test_agg_merges_seeds_into_mean_and_t_interval(store):
    for seed, bpd in enumerate([2.0, 2.2, 2.4]):
        add(store, f"s{seed}", bpd=bpd, fid=10.0 + seed, seed=seed)
    add(store, "other-lr", bpd=5.0, lr=1e-2)  # another config: its own row
    (sec,) = build_sections(store.runs(), View(agg=True))
    assert len(sec.rows) == 2
    merged = sec.rows[0]
    assert len(merged.runs) == 3
    assert math.isclose(merged.cells["bpd"].value, 2.2)
    half = 4.302652729749464 * 0.2 / math.sqrt(3)  # t_{0.975, 2} · stdev(2.0, 2.2, 2.4) / √3
    assert math.isclose(merged.cells["bpd"].hi - 2.2, half, rel_tol=1e-9)
    assert math.isclose(2.2 - merged.cells["bpd"].lo, half, rel_tol=1e-9)
    assert merged.cells["bpd"].text() == "≤ 2.200 ± 0.497"
    assert merged.cells["fid@"].text() == "11.0 ± 2.5"  # stdev 1, printed to the decimals of 11.0
    (row, single) = table_rows([sec])
    assert row["seeds"] == 3 and math.isclose(row["bits/dim hi"], 2.2 + half)
    assert single["seeds"] == 1 and "bits/dim lo" not in single
    md = render(store.runs(), "md", View(agg=True))
    assert "| seeds |" in md and "≤ 2.200 ± 0.497" in md and "| 3 |" in md
    assert "95 % t-interval of the mean" in md


def test_references_are_listed_apart_and_can_be_hidden(store):
    add(store, "mine", "pixelcnn", "autoregressive", "exact", dataset="cifar10", bpd=3.40)
    add(store, "digits-run", dataset="digits", bpd=2.0)
    runs = store.runs()
    refs = reference_runs({r["dataset"] for r in runs})
    secs = build_sections(runs, View(), refs)
    cifar = next(s for s in secs if s.dataset == "cifar10")
    assert models(cifar) == ["pixelcnn"]  # PixelCNN++ 2.92 is not ranked above
    assert "PixelCNN++ (paper)" in [r.run["model"] for r in cifar.refs]
    assert all(not s.refs for s in secs if s.dataset == "digits")
    md = render(runs, "md", View(), refs)
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    ddpm = next(line for line in lines if line.startswith("| DDPM (paper)"))
    assert "≤ 3.700" in ddpm and "3.170†" in ddpm and "published" in ddpm
    assert lines.index(ddpm) > lines.index(next(x for x in lines if x.startswith("| pixelcnn")))
    assert "Ho, Jain & Abbeel" in md
    hidden = render(runs, "md", View(refs=False), refs)
    assert "(paper)" not in hidden


def test_sample_protocols_are_never_ranked_together(store):
    add(store, "small", "m1", fid=5.0, proto={**CNN, "n_generated": 1000})
    add(store, "big", "m2", fid=9.0, proto={**CNN, "n_generated": 5000})
    add(
        store,
        "big2",
        "m3",
        fid=7.0,
        proto={**CNN, "n_generated": 5000},
        sampler={"name": "ddim", "steps": 10},
    )  # another sampler: same protocol
    add(store, "nofid", "m4", bpd=2.0)
    secs = build_sections(store.runs(), View(sort="fid"))
    assert [models(s) for s in secs] == [["m1"], ["m3", "m2"], ["m4"]]
    assert "1000 samples vs 300 test images" in secs[0].title
    assert "5000 samples" in secs[1].title and secs[2].title == "digits [no sample metrics]"
    md = render(store.runs(), "md")
    assert md.count("### digits") == 3 and "m3 [ddim steps=10]" in md
    rows = json.loads(render(store.runs(), "json"))
    assert len({r["section"] for r in rows}) == 3


def test_one_protocol_keeps_one_section_with_runs_without_samples(store):
    add(store, "a", "m1", fid=5.0)
    add(store, "b", "m2", bpd=2.0)
    (sec,) = build_sections(store.runs(), View())
    assert sec.title == "digits" and "digits-cnn (aa11), 1000 samples" in sec.notes[0]
    assert "FID@digits-cnn" in [t for t, _ in sec.columns]


def test_missing_values_never_read_zero(store):
    add(store, "gan", "dcgan", "gan", "none", fid=50.0)
    add(store, "vae", bpd=2.5)
    add(store, "ode", "ddpm", "diffusion", "ode", bpd=3.1)
    runs = store.runs()
    md = render(runs, "md")
    assert "| ≈ 3.100 |" in md  # an ODE estimate
    gan = next(line for line in md.splitlines() if line.startswith("| dcgan"))
    vae = next(line for line in md.splitlines() if line.startswith("| vae"))
    assert "| n/a |" in gan and "| 0 |" not in gan and "0.000" not in gan
    assert "| – |" in vae and "| 0 |" not in vae  # FID of the VAE: not measured
    rows = {r["model"]: r for r in json.loads(render(runs, "json"))}
    assert rows["vae"]["FID"] is None and rows["dcgan"]["bits/dim"] is None
    assert rows["vae"]["bits/dim"] == 2.5 and rows["vae"]["bits/dim kind"] == "bound"
    table = list(csv.DictReader(io.StringIO(render(runs, "csv"))))
    vae_csv = next(r for r in table if r["model"] == "vae")
    assert vae_csv["FID"] == "" and vae_csv["params"] == "1000"


def test_toy_sections_show_toy_columns(store):
    toy = [
        Metric("nll_gap", 0.5, "bound", "test", 100, "nats"),
        Metric("modes_covered", 7.0, "measured", "samples", 64, "count", {"sampler": {}}),
        Metric("modes_total", 8.0, "measured", "samples", 64, "count", {"sampler": {}}),
        Metric("high_quality_share", 0.9, "measured", "samples", 64, "", {"sampler": {}}),
    ]
    add(store, "t", dataset="toy_8gaussians", bpd=5.0, extra=toy)
    add(store, "g", "dcgan", "gan", "none", dataset="toy_8gaussians", extra=toy[1:])
    (sec,) = build_sections(store.runs(), View())
    titles = [t for t, _ in sec.columns]
    assert {"nll_gap", "modes", "HQ share"} <= set(titles) and not any("FID" in t for t in titles)
    md = render(store.runs(), "md")
    assert "| ≤ 0.500 | **7/8** | **0.900** |" in md  # equal values: both tied for first
    assert "| n/a | **7/8** | **0.900** |" in md  # a GAN has no NLL gap


def test_numbers_format_with_kind_and_nan_does_not_crash(capsys):
    assert fmt_number(2.5, "bound") == "≤ 2.500" and fmt_number(2.5, "estimate") == "≈ 2.500"
    assert fmt_number(None) == "–" and fmt_number(0.0) == "0.000"
    assert fmt_number(float("nan")) == "nan" and fmt_number(1234.5) == "1,234"
    run = RunRecord(
        "r", "t", "ddpm", "diffusion", "vlb", "toy", 1, 1, 1, 1.0, "cpu", "finished", "/r", "h"
    )
    print_metrics(run, [Metric("mode_kl", float("nan"))])
    assert "nan" in capsys.readouterr().out


def test_rich_table_prints_brackets_and_published_block(store, capsys):
    add(
        store,
        "d",
        "ddpm",
        "diffusion",
        "vlb",
        dataset="cifar10",
        bpd=3.9,
        sampler={"name": "ddim", "steps": 10},
    )
    render(store.runs(), "table", View(), reference_runs({"cifar10"}))
    out = capsys.readouterr().out
    assert "ddpm [ddim steps=10]" in out and "PixelCNN++ (paper)" in out and "≤ 3.900" in out


def test_command_filters_sorts_and_writes_files(store, tmp_path, capsys):
    add(store, "a", "m1", fid=30.0)
    add(store, "b", "m2", fid=10.0)
    add(store, "c", "m3", dataset="mnist", bpd=1.2)
    out = tmp_path / "out"
    cfg = compose_cfg(
        "leaderboard",
        ["format=json", "dataset=digits", "sort=fid", f"out={tmp_path / 'lb.json'}"],
        out,
    )
    leaderboard_command(cfg)
    rows = json.loads((tmp_path / "lb.json").read_text())
    assert [r["model"] for r in rows] == ["m2", "m1"]
    cfg = compose_cfg("leaderboard", ["format=md"], out)
    text = leaderboard_command(cfg)
    assert "Glow (paper)" in text and "≤ 1.050" in text  # MNIST references
    text = leaderboard_command(compose_cfg("leaderboard", ["format=md", "refs=false"], out))
    assert "(paper)" not in text
    with pytest.raises(ConfigError, match="best"):
        leaderboard_command(compose_cfg("leaderboard", ["best=maybe"], out))


def test_families_report_measured_tradeoffs(store, tmp_path, capsys):
    add(store, "v1", bpd=3.0, fid=30.0, ms=1.0)
    add(store, "v2", bpd=2.5, fid=40.0, ms=3.0)
    add(store, "g", "dcgan", "gan", "none", fid=20.0, ms=0.5)
    rows = {r["family"]: r for r in tradeoff_rows(build_sections(store.runs(), View()))}
    assert rows["vae"]["best bits/dim"] == "≤ 2.500 (vae)" and rows["vae"]["runs"] == "2"
    assert rows["vae"]["best quality"] == "FID@digits-cnn: 30.0 (vae)"
    assert rows["vae"]["median ms/img"] == "2.000"
    assert rows["gan"]["best bits/dim"] == "n/a" and rows["gan"]["median NFE"] == "–"
    print_families(compose_cfg("leaderboard", [], tmp_path / "out"))
    out = capsys.readouterr().out
    assert "implicit density" in out and "measured in the leaderboard" in out
    assert "dcgan" in out and "FID@digits-cnn: 20.0 (dcgan)" in out
    print_families(compose_cfg("leaderboard", [], tmp_path / "nothing"))
    assert "measured in the leaderboard" not in capsys.readouterr().out


def nll_settings_row(bpd, settings):
    proto = {"likelihood": "elbo", "nll_settings": settings} if settings else {"likelihood": "x"}
    return Metric("bpd", bpd, "bound", "test", 300, "bits/dim", proto)


def test_nll_settings_split_sections_only_where_they_differ(store):
    """One IWAE k on a dataset ranks the VAEs with everything else; two ks split them apart
    (runs without the field form one more section); another dataset is unaffected."""
    add(store, "v64", "vae", extra=[nll_settings_row(2.0, {"iwae_samples": 64})])
    add(store, "flow", "glow", "flow", "dequantized", extra=[nll_settings_row(2.1, None)])
    (one,) = build_sections(store.runs())
    assert one.title == "digits" and models(one) == ["vae", "glow"] and one.likelihood is None
    add(store, "v5k", "vae_big_k", extra=[nll_settings_row(1.9, {"iwae_samples": 5000})])
    add(store, "other", "vae", dataset="mnist", extra=[nll_settings_row(1.0, {"iwae_samples": 9})])
    secs = build_sections(store.runs())
    assert [(s.title, models(s)) for s in secs] == [
        ("digits [iwae_samples=64]", ["vae"]),
        ("digits [iwae_samples=5000]", ["vae_big_k"]),
        ("digits [other likelihood settings]", ["glow"]),
        ("mnist", ["vae"]),
    ]
    assert "bits/dim: iwae_samples=5000" in secs[1].notes
    rows = json.loads(render(store.runs(), "json"))
    assert len({(r["dataset"], r["section"]) for r in rows if not r["published"]}) == 4
