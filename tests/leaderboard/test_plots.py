"""Leaderboard plots from synthetic runs and tiny fake run folders: every plot writes a PNG, the
Pareto front and sampler sweeps are computed right, and plots without data write nothing."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from matplotlib.image import imread, imsave

from genbench.eval.metric import CurvePoint, Metric
from genbench.leaderboard.guidance import guidance_points
from genbench.leaderboard.plots import (
    PLOTS,
    figure,
    pareto_front,
    read_stats,
    sweep_points,
    write_plots,
)
from genbench.leaderboard.report import table_rows
from genbench.leaderboard.sections import View, build_sections, differing_settings, settings_text
from genbench.leaderboard.store import RunRecord, Store
from genbench.leaderboard.sweep_plot import numeric_settings, sweep_lines

PROTO = {"extractor": "digits-cnn", "n_generated": 100, "reference_split": "test"}


def fake_run(
    store,
    tmp_path,
    run_id,
    model,
    family,
    likelihood,
    *,
    bpd=None,
    fid=None,
    ms=None,
    nfe=1.0,
    sweep=(),
    folder=True,
    n_generated=100,
    config=None,
    recall=None,
    ada_p=None,
):
    """Record a run; with ``folder`` give it stats.jsonl and samples.png. ``sweep``: extra
    (steps, nfe, fid) evaluated with ``sampler={"steps": steps}``; ``config``: merged into the
    recorded config ``{"sampler": {}, "seed": 0}``."""
    run_dir = tmp_path / "runs" / run_id
    if folder:
        run_dir.mkdir(parents=True)
        lines = [{"main/loss": 3.0 / (s + 1), "step": s, "images": 16 * s} for s in range(1, 6)]
        (run_dir / "stats.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\nnot json\n")
        rng = np.random.default_rng(len(run_id))
        imsave(run_dir / "samples.png", rng.random((19, 73)), cmap="gray")
    proto = {**PROTO, "n_generated": n_generated}
    rows = []
    if bpd is not None:
        rows.append(Metric("bpd", bpd, "exact" if likelihood == "exact" else "bound"))
    for steps, n, f in [(None, nfe, fid), *sweep]:
        sampler = {} if steps is None else {"steps": steps}
        if f is not None:
            rows.append(
                Metric(
                    "fid@digits-cnn",
                    f,
                    "measured",
                    "test",
                    n_generated,
                    "",
                    {**proto, "sampler": sampler},
                )
            )
        rows.append(Metric("nfe", n, "measured", "samples", 8, "count", {"sampler": sampler}))
    if ms is not None:
        rows.append(Metric("ms_per_image", ms, "measured", "samples", 8, "ms", {"sampler": {}}))
    if ada_p is not None:
        rows.append(Metric("ada_p", ada_p, "measured", "train"))
    if recall is not None:
        proto = {**proto, "sampler": {}}
        rows.append(Metric("recall@digits-cnn", recall, "measured", "test", n_generated, "", proto))
    store.record(
        RunRecord(
            run_id,
            f"t-{run_id}",
            model,
            family,
            likelihood,
            "digits",
            10_000 * (1 + len(run_id)),
            5,
            80,
            1.0,
            "cpu",
            "finished",
            str(run_dir),
            run_id,
            {"sampler": {}, "seed": 0, **(config or {})},
        ),
        rows,
        [CurvePoint(m, 1.0, 5, 80, 1.0, 1e9) for m in rows if m.name == "bpd"],  # plot=budget
    )


def fake_conditional_run(
    store, tmp_path, run_id="cddpm", scales=((0, 0.80, 14.0), (2, 0.95, 18.0))
):
    """A conditional DDPM scored at guidance scales ``(w, sample accuracy, FID)``."""
    rows = []
    for w, acc, fid in scales:
        proto = {**PROTO, "sampler": {"guidance": w}}
        rows += [
            Metric("fid@digits-cnn", fid, "measured", "test", 100, "", proto),
            Metric("sample_accuracy@digits-cnn", acc, "measured", "samples", 100, "", proto),
            Metric("nfe", 100.0, "measured", "samples", 100, "count", proto),
        ]
    rows.append(Metric("bpd", 3.0, "bound", "test", 300, "bits/dim", {"conditional": 10}))
    config = {"sampler": {"guidance": 0}, "seed": 0, "model": {"conditional": True}}
    store.record(
        RunRecord(
            run_id, f"t-{run_id}", "ddpm", "diffusion", "vlb", "digits", 1000, 5, 80, 1.0,
            "cpu", "finished", str(tmp_path / "runs" / run_id), run_id, config,
        ),
        rows,
        [],
    )  # fmt: skip


@pytest.fixture
def runs(tmp_path):
    store = Store(tmp_path / "lb.sqlite")
    fake_conditional_run(store, tmp_path)
    fake_run(store, tmp_path, "vae", "vae", "vae", "elbo", bpd=2.9, fid=30.0, ms=0.2)
    fake_run(
        store,
        tmp_path,
        "pixelcnn",
        "pixelcnn",
        "autoregressive",
        "exact",
        bpd=2.5,
        fid=25.0,
        ms=5.0,
    )
    fake_run(store, tmp_path, "gan", "dcgan", "gan", "none", fid=40.0, ms=0.1)
    fake_run(
        store,
        tmp_path,
        "ddpm",
        "ddpm",
        "diffusion",
        "vlb",
        bpd=3.5,
        fid=12.0,
        ms=30.0,
        nfe=50.0,
        sweep=[(5, 5.0, 60.0), (10, 10.0, 20.0)],
    )
    sngan_sweep(store, tmp_path)
    return store.runs()


#: (train_fraction, augment, seed, FID, recall) of a small data-efficiency sweep
SWEEP = [
    (0.1, "ada", 0, 6.0, 0.5), (0.1, "ada", 1, 8.0, 0.7),
    (0.1, "none", 0, 9.0, 0.4), (0.1, "none", 1, 11.0, 0.4),
    (1.0, "ada", 0, 3.0, 0.8), (1.0, "ada", 1, 3.0, 0.9),
    (1.0, "none", 0, 4.0, 0.8), (1.0, "none", 1, 4.0, 0.8),
]  # fmt: skip


def sngan_sweep(store, tmp_path):
    """SNGAN runs of :data:`SWEEP`: two seeds of each augment x train_fraction."""
    for frac, aug, seed, fid, recall in SWEEP:
        config = {
            "seed": seed,
            "dataset": {"name": "digits", "train_fraction": frac},
            "model": {"augment": aug, "lr": 2e-4},
        }
        run_id = f"sn-{aug}-{frac}-{seed}"
        ada_p = 0.1 * (seed + 1) if aug == "ada" else None
        fake_run(store, tmp_path, run_id, "sngan", "gan", "none", fid=fid, ms=0.1,
                 folder=False, config=config, recall=recall, ada_p=ada_p)  # fmt: skip


def test_every_plot_writes_a_nonempty_png(runs, tmp_path):
    written = write_plots(runs, list(PLOTS), tmp_path / "plots")
    assert sorted(written) == sorted(PLOTS)
    for name, path in written.items():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        img = imread(path)
        assert img.shape[0] > 100 and img.shape[1] > 300, name
        assert img[..., :3].std() > 0.01, name  # not a blank canvas


def test_pareto_front_by_hand():
    pts = [(1.0, 10.0), (2.0, 5.0), (3.0, 7.0), (0.5, 20.0), (4.0, 1.0), (2.0, 6.0)]
    assert pareto_front(pts) == [3, 0, 1, 4]  # (3, 7) and (2, 6) are beaten by (2, 5)
    assert pareto_front([]) == []


def test_sweep_points_pair_fid_and_nfe_by_sampler(runs):
    by_id = {r["run_id"]: r for r in runs}
    assert sweep_points(by_id["ddpm"]) == [(5.0, 60.0), (10.0, 20.0), (50.0, 12.0)]
    assert sweep_points(by_id["vae"]) == [(1.0, 30.0)]


def test_guidance_points_pair_accuracy_and_fid_by_scale(runs):
    by_id = {r["run_id"]: r for r in runs}
    assert guidance_points(by_id["cddpm"]) == [(0.0, 0.80, 14.0), (2.0, 0.95, 18.0)]
    assert guidance_points(by_id["vae"]) == []  # no sample accuracy


def test_conditional_runs_form_their_own_section(runs):
    sections = build_sections(runs, View(refs=False))
    titles = [s.title for s in sections]
    assert titles == ["digits", "digits | conditional on the class"] or titles == [
        "digits | conditional on the class",
        "digits",
    ]
    cond = next(s for s in sections if "conditional" in s.title)
    assert [r.run["run_id"] for r in cond.rows] == ["cddpm"]
    plain = next(s for s in sections if s is not cond)
    assert "cddpm" not in [r.run["run_id"] for r in plain.rows]
    assert any(k == "sample_accuracy@" for _, k in cond.columns)
    assert not any(k == "sample_accuracy@" for _, k in plain.columns)  # optional column


def test_panels_follow_sections_and_plots_degrade_without_data(runs, tmp_path, caplog):
    store = Store(tmp_path / "other.sqlite")
    fake_run(store, tmp_path, "a1", "vae", "vae", "elbo", fid=5.0, ms=1.0, folder=False)
    fake_run(
        store, tmp_path, "a2", "vae", "vae", "elbo", fid=6.0, ms=2.0, folder=False, n_generated=5000
    )
    other = store.runs()
    fig = figure("pareto", other)
    assert len(fig.axes) == 2  # two sample protocols: two panels
    assert figure("fid_nfe", other) is None  # no sampler sweep
    assert figure("loss", other) is None and figure("grid", other) is None  # no run folders
    assert figure("bpd_params", other) is None  # no bits/dim
    with caplog.at_level(logging.WARNING):
        assert write_plots([], list(PLOTS), tmp_path / "empty") == {}
    assert not (tmp_path / "empty").exists()
    assert "no run has a sampler sweep" in caplog.text and "samples.png" in caplog.text


def test_read_stats_skips_bad_lines(runs):
    stats = read_stats(next(r for r in runs if r["run_id"] == "vae")["run_dir"])
    assert [d["step"] for d in stats] == [1, 2, 3, 4, 5]
    assert read_stats(None) == [] and read_stats("/nonexistent") == []


def digits_section(runs, **view):
    """The unconditional digits section of ``runs`` under ``View(refs=False, **view)``."""
    (sec,) = [s for s in build_sections(runs, View(refs=False, **view)) if s.title == "digits"]
    return sec


def test_rows_of_a_sweep_name_the_settings_that_tell_them_apart(runs):
    plain = digits_section(runs, agg=True)
    assert plain.columns[:2] == [("model", "model"), ("settings", "settings")]
    sweep = {r.cells["settings"].text(): r for r in plain.rows if r.run["model"] == "sngan"}
    assert sorted(sweep) == [
        f"train_fraction={f} augment={a}" for f in (0.1, 1.0) for a in ("ada", "none")
    ]
    row = sweep["train_fraction=0.1 augment=ada"]
    assert row.settings == {"dataset.train_fraction": 0.1, "model.augment": "ada"}
    assert row.cells["seeds"].value == 2 and row.cells["fid@"].value == 7.0  # mean of 6 and 8
    assert row.cells["fid@"].lo < 7.0 < row.cells["fid@"].hi  # the t-interval over the seeds
    # ADA's final p: its own unranked column, the mean over seeds
    assert ("ADA p", "ada_p") in plain.columns
    assert row.cells["ada_p"].value == pytest.approx(0.15) and not row.cells["ada_p"].best
    assert sweep["train_fraction=0.1 augment=none"].cells["ada_p"].missing
    # models with one row have no settings; without agg each seed is its own row, same settings
    assert all(r.cells["settings"].text() == "–" for r in plain.rows if r.run["model"] != "sngan")
    unagg = digits_section(runs)
    texts = [r.cells["settings"].text() for r in unagg.rows if r.run["model"] == "sngan"]
    assert len(texts) == 8 and texts.count("train_fraction=1.0 augment=none") == 2
    # json carries the full keys
    out = table_rows(build_sections(runs, View(agg=True, refs=False)))
    got = [d["settings"] for d in out if d.get("model") == "sngan"]
    assert {"dataset.train_fraction": 1.0, "model.augment": "none"} in got


def test_no_settings_column_without_a_sweep_and_long_keys_where_leaves_collide(runs):
    others = [r for r in runs if r["model"] not in ("sngan",)]
    for sec in build_sections(others, View(agg=True, refs=False)):
        assert ("settings", "settings") not in sec.columns
    assert settings_text({"model.g_optimizer.lr": 1, "model.d_optimizer.lr": 2}) == (
        "model.g_optimizer.lr=1 model.d_optimizer.lr=2"
    )
    assert settings_text({}) == "–"
    assert differing_settings([]) == []


def test_settings_plot_lines_follow_the_numeric_setting(runs):
    plain = digits_section(runs, agg=True)
    assert numeric_settings(plain.rows) == ["dataset.train_fraction"]  # augment is text
    lines = sweep_lines(plain.rows, "dataset.train_fraction", "fid@")
    assert sorted(lines) == ["sngan augment=ada", "sngan augment=none"]
    (x0, y0, lo0, hi0), (x1, y1, lo1, hi1) = lines["sngan augment=ada"]
    assert (x0, y0, x1, y1) == (0.1, 7.0, 1.0, 3.0)
    assert lo0 < 7.0 < hi0 and lo1 == hi1 == 3.0  # equal seeds: no spread
    recall = sweep_lines(plain.rows, "dataset.train_fraction", "recall@")
    assert [y for _, y, *_ in recall["sngan augment=none"]] == pytest.approx([0.4, 0.8])
    fig = figure("settings", runs)
    assert len(fig.axes) == 2  # FID and recall (no precision recorded)
