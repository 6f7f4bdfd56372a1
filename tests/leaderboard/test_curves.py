"""``plot=budget``: anytime curves from a synthetic leaderboard, one line per model with the
stored x/y values, intervals as error bars, protocols never mixed; in the HTML report too."""

from __future__ import annotations

import pytest
from conftest import compose_cfg

from genbench.eval.metric import CurvePoint, Metric
from genbench.leaderboard.command import leaderboard_command
from genbench.leaderboard.curves import budget_panels, figure_budget
from genbench.leaderboard.html import html_report
from genbench.leaderboard.store import RunRecord, Store

FID = {"extractor": "digits-cnn", "n_generated": 200, "reference_split": "test"}
FRACTIONS = (0.25, 0.5, 1.0)


def record(
    store, run_id, model, family, *, flops, seconds, bpd=None, fid=None, fid_proto=FID, seed=0
):
    """A run whose curve has, at each fraction f: flops f*flops, seconds f*seconds, and the
    given bpd / fid values (a (value, lo, hi) tuple records an interval)."""
    points = []
    for i, f in enumerate(FRACTIONS):
        metrics = []
        if bpd is not None:
            v = bpd[i]
            v, lo, hi = v if isinstance(v, tuple) else (v, None, None)
            metrics.append(Metric("bpd", v, "bound", "test", 64, "bits/dim", {}, lo, hi))
        if fid is not None:
            n = fid_proto["n_generated"]
            metrics.append(Metric("fid@digits-cnn", fid[i], "measured", "test", n, "", fid_proto))
        points += [CurvePoint(m, f, int(100 * f), 1600, f * seconds, f * flops) for m in metrics]
    rec = RunRecord(
        run_id,
        f"t-{run_id}",
        model,
        family,
        "elbo" if bpd else "none",
        "digits",
        1000,
        100,
        1600,
        seconds,
        "cpu",
        "finished",
        "",
        f"h-{run_id}",
        {"seed": seed},
        {},
    )
    store.record(rec, [], points)


@pytest.fixture
def runs(tmp_path):
    store = Store(tmp_path / "leaderboard.sqlite")
    record(
        store,
        "a",
        "vae",
        "vae",
        flops=1e12,
        seconds=10.0,
        bpd=[(3.0, 2.9, 3.1), 2.6, 2.4],
        fid=[30.0, 20.0, 15.0],
    )
    record(store, "b", "dcgan", "gan", flops=4e12, seconds=5.0, fid=[10.0, 12.0, 8.0])
    record(store, "c", "old", "gan", flops=0.0, seconds=2.0, fid=[50.0, 40.0, 30.0])
    record(store, "d", "empty", "vae", flops=1e12, seconds=1.0)  # no curve: no line
    return store.runs()


def lines_of(ax):
    return {ln.get_label(): ln for ln in ax.get_lines() if str(ln.get_gid()).startswith("curve:")}


def test_one_line_per_model_with_the_stored_values(runs):
    fig = figure_budget(runs)
    by_title = {ax.get_title(): ax for ax in fig.axes}
    assert sorted(by_title) == [
        "digits: FID@digits-cnn, N=200 vs training FLOPs",
        "digits: FID@digits-cnn, N=200 vs training seconds",
        "digits: bits/dim vs training FLOPs",
        "digits: bits/dim vs training seconds",
    ]
    fid_flops = lines_of(by_title["digits: FID@digits-cnn, N=200 vs training FLOPs"])
    assert sorted(fid_flops) == ["dcgan", "vae"]  # "old" counted no FLOPs: not on a log axis
    assert list(fid_flops["dcgan"].get_xdata()) == pytest.approx([1e12, 2e12, 4e12])
    assert list(fid_flops["dcgan"].get_ydata()) == [10.0, 12.0, 8.0]
    fid_seconds = lines_of(by_title["digits: FID@digits-cnn, N=200 vs training seconds"])
    assert sorted(fid_seconds) == ["dcgan", "old", "vae"]
    assert list(fid_seconds["old"].get_xdata()) == pytest.approx([0.5, 1.0, 2.0])
    assert list(fid_seconds["vae"].get_ydata()) == [30.0, 20.0, 15.0]
    bpd = lines_of(by_title["digits: bits/dim vs training seconds"])
    assert list(bpd) == ["vae (≤ bound)"]  # the bound is marked
    assert list(bpd["vae (≤ bound)"].get_ydata()) == [3.0, 2.6, 2.4]
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
    # the same model has the same colour in every panel
    assert fid_flops["vae"].get_color() == bpd["vae (≤ bound)"].get_color()
    assert fid_flops["vae"].get_color() != fid_flops["dcgan"].get_color()


def test_intervals_are_error_bars_where_recorded(runs):
    fig = figure_budget(runs)
    ax = next(a for a in fig.axes if a.get_title() == "digits: bits/dim vs training FLOPs")
    bars = [c for c in ax.collections if str(c.get_gid()).startswith("interval:")]
    assert len(bars) == 1  # one interval, on the first point only
    (segment,) = bars[0].get_segments()
    assert segment[:, 0] == pytest.approx([2.5e11, 2.5e11])
    assert sorted(segment[:, 1]) == pytest.approx([2.9, 3.1])
    fid_ax = next(a for a in fig.axes if a.get_title().startswith("digits: FID"))
    assert not [c for c in fid_ax.collections if str(c.get_gid()).startswith("interval:")]


def test_protocols_and_seeds_are_kept_apart(tmp_path):
    store = Store(tmp_path / "leaderboard.sqlite")
    other = {**FID, "n_generated": 100}
    record(store, "a", "vae", "vae", flops=1e12, seconds=1.0, fid=[3.0, 2.0, 1.0])
    record(store, "b", "vae", "vae", flops=1e12, seconds=1.0, fid=[4.0, 3.0, 2.0], seed=1)
    record(store, "c", "dcgan", "gan", flops=1e12, seconds=1.0, fid=[5, 4, 3], fid_proto=other)
    panels = budget_panels(store.runs())
    assert [(p.row, p.xkey, [ln.label for ln in p.lines]) for p in panels] == [
        ("digits: FID@digits-cnn, N=200", "flops", ["vae · seed 0", "vae · seed 1"]),
        ("digits: FID@digits-cnn, N=200", "seconds", ["vae · seed 0", "vae · seed 1"]),
        ("digits: FID@digits-cnn, N=100", "flops", ["dcgan"]),
        ("digits: FID@digits-cnn, N=100", "seconds", ["dcgan"]),
    ]


def test_no_curve_no_plot_and_html_includes_it(runs, tmp_path):
    assert figure_budget([r for r in runs if r["run_id"] == "d"]) is None
    page = html_report(runs)
    assert 'alt="budget plot"' in page
    page = html_report([r for r in runs if r["run_id"] == "d"])
    assert "no run has an anytime curve" in page


def test_command_writes_budget_png(tmp_path):
    out = tmp_path / "out"
    store = Store(out / "leaderboard.sqlite")
    record(store, "a", "vae", "vae", flops=1e12, seconds=1.0, fid=[3.0, 2.0, 1.0])
    listing = leaderboard_command(
        compose_cfg("leaderboard", ["plot=budget", f"out={tmp_path / 'p'}"], out)
    )
    assert listing == str(tmp_path / "p" / "budget.png")
    assert (tmp_path / "p" / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
