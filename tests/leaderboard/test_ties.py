"""Intervals, ties and floors in the leaderboard: entries within the 95 % interval of their
column's best are marked in every format (and only those), seeds merge into a t-interval, and
the ``data`` and ``uniform`` floor rows sit apart, never ranked."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re

import pytest

from genbench.eval.metric import Metric
from genbench.leaderboard.html import html_report
from genbench.leaderboard.report import render
from genbench.leaderboard.sections import View, build_sections
from genbench.leaderboard.store import RunRecord, Store
from genbench.leaderboard.ties import t_interval, tied_for_first

PROTO = {
    "extractor": "digits-cnn",
    "extractor_weights_sha256": "aa11",
    "n_generated": 1000,
    "reference_split": "test",
    "n_reference": 300,
    "reference_sha256": "bb22",
    "sampler": {},
}
_CLOCK = itertools.count()


def add(store, run_id, model, family="vae", *, bpd=None, fid=None, proto=None, seed=0, levels=17):
    """Record a run; ``bpd`` / ``fid`` are a value or (value, lo, hi)."""
    rows = []
    if bpd is not None:
        v, lo, hi = bpd if isinstance(bpd, tuple) else (bpd, None, None)
        p = {"likelihood": "exact", "seed": 0, "levels": levels}
        rows.append(Metric("bpd", v, "exact", "test", 300, "bits/dim", p, lo, hi))
    if fid is not None:
        v, lo, hi = fid if isinstance(fid, tuple) else (fid, None, None)
        rows.append(
            Metric("fid@digits-cnn", v, "measured", "test", 1000, "", proto or PROTO, lo, hi)
        )
    likelihood = "none" if family in ("gan", "data") else "exact"
    config = {"seed": seed, "sampler": {}, "trainer": {"max_steps": 10}} if family != "data" else {}
    store.record(
        RunRecord(
            run_id,
            f"2026-01-01T{next(_CLOCK):06d}",
            model,
            family,
            likelihood,
            "digits",
            0 if family == "data" else 1000,
            0 if family == "data" else 10,
            0,
            0.0 if family == "data" else 1.0,
            "cpu",
            "finished",
            f"/r/{run_id}",
            run_id,
            config,
        ),
        rows,
    )


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "lb.sqlite")


def md_line(md, model):
    return next(line for line in md.splitlines() if line.startswith(f"| {model} |"))


def outputs(store, view=View()):
    """(md, csv rows by model, html, rich text) of the store."""
    runs = store.runs()
    md = render(runs, "md", view)
    table = {r["model"]: r for r in csv.DictReader(io.StringIO(render(runs, "csv", view)))}
    return md, table, html_report(runs, view)


def test_overlapping_intervals_tie_in_every_format(store, capsys):
    add(store, "a", "glow", bpd=(2.263, 2.249, 2.277))
    add(store, "b", "vae", bpd=(2.271, 2.257, 2.285))  # overlaps glow's interval: tied
    add(store, "c", "pixelcnn", bpd=(2.400, 2.390, 2.410))  # clearly worse
    md, table, page = outputs(store)
    assert "| **2.263 ± 0.014** |" in md_line(md, "glow")
    assert "| **2.271 ± 0.014** |" in md_line(md, "vae")
    assert "| 2.400 ± 0.010 |" in md_line(md, "pixelcnn")
    assert "within the 95 % interval of the best" in md
    assert [table[m]["bits/dim best"] for m in ("glow", "vae", "pixelcnn")] == [
        "True",
        "True",
        "False",
    ]
    assert float(table["vae"]["bits/dim lo"]) == 2.257 and table["vae"]["bits/dim"] == "2.271"
    assert re.findall(r'<td class="best">([^<]*)</td>', page) == ["2.263 ± 0.014", "2.271 ± 0.014"]
    assert "within the 95 % interval of the best" in page
    render(store.runs(), "table")
    rich = capsys.readouterr().out
    assert "2.271 ± 0.014" in rich and "tied for first" in rich


def test_disjoint_intervals_mark_only_the_best(store):
    add(store, "a", "glow", bpd=(2.263, 2.260, 2.266))
    add(store, "b", "vae", bpd=(2.271, 2.268, 2.274))  # disjoint from glow's: not tied
    add(store, "g", "dcgan", "gan", fid=(30.0, 28.0, 33.0))
    add(store, "h", "sngan", "gan", fid=(20.0, 19.0, 21.5))
    md, table, page = outputs(store)
    assert "| **2.263 ± 0.003** |" in md_line(md, "glow")
    assert "| 2.271 ± 0.003 |" in md_line(md, "vae") and "**" not in md_line(md, "vae")
    assert "| **20.0 [19.0, 21.5]** |" in md_line(md, "sngan")  # asymmetric: [lo, hi]
    assert "| 30.0 [28.0, 33.0] |" in md_line(md, "dcgan")
    assert (table["glow"]["bits/dim best"], table["vae"]["bits/dim best"]) == ("True", "False")
    assert (table["sngan"]["FID best"], table["dcgan"]["FID best"]) == ("True", "False")
    assert re.findall(r'<td class="best">([^<]*)</td>', page) == [
        "2.263 ± 0.003",
        "20.0 [19.0, 21.5]",
    ]


def test_higher_is_better_and_points_tie_only_when_equal():
    class C:
        def __init__(self, value, lo=None, hi=None):
            self.value, self.lo, self.hi = value, lo, hi

    assert tied_for_first([C(2.0), C(2.0), C(2.1)], lower_is_better=True) == [True, True, False]
    assert tied_for_first([C(2.0), C(2.0 + 1e-6)], lower_is_better=True) == [True, False]
    assert tied_for_first([C(2.0), C(2.1)], lower_is_better=False) == [False, True]
    # an interval that covers a point ties with it, one that does not stays apart
    assert tied_for_first([C(2.0), C(2.05, 1.95, 2.15)], True) == [True, True]
    assert tied_for_first([C(2.0), C(2.05, 2.01, 2.09)], True) == [True, False]
    assert tied_for_first([C(1.0, 0.5, 1.5)], True) == [False]  # one entry: nothing to win


def test_seed_interval_is_the_t_interval():
    mean, lo, hi = t_interval([1.0, 2.0, 4.0])
    s = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert mean == pytest.approx(7 / 3)
    assert hi - mean == pytest.approx(4.302652729749464 * s / math.sqrt(3), rel=1e-12)
    assert mean - lo == pytest.approx(hi - mean, rel=1e-12)
    assert t_interval([3.0]) == (3.0, None, None)


def test_seeds_tie_through_their_t_intervals(store):
    for seed, (x, y) in enumerate([(2.20, 2.26), (2.30, 2.27), (2.25, 2.25)]):
        add(store, f"g{seed}", "glow", bpd=x, seed=seed)
        add(store, f"v{seed}", "vae", bpd=y, seed=seed)
    md, table, page = outputs(store, View(agg=True))
    # glow 2.250 ± 0.124 overlaps vae 2.260 ± 0.025: both bold; their seed count shows
    assert "**2.250 ± 0.124**" in md_line(md, "glow") and "**2.260 ± 0.025**" in md_line(md, "vae")
    assert md_line(md, "glow").endswith("| 3 |") and "| seeds |" in md
    assert table["glow"]["seeds"] == "3" and table["vae"]["bits/dim best"] == "True"
    assert page.count('<td class="best">') == 2


def test_data_and_uniform_floors_are_apart_and_never_marked(store):
    add(store, "a", "glow", bpd=(2.3, 2.2, 2.4), fid=(5.0, 4.0, 6.0))
    add(store, "b", "dcgan", "gan", fid=(9.0, 8.0, 10.0))
    add(store, "d", "data", "data", fid=(0.5, 0.4, 0.6))  # far below every model
    add(store, "d2", "data", "data", fid=0.7, proto={**PROTO, "n_generated": 5000})
    (sec,) = build_sections(store.runs())
    assert [r.run["model"] for r in sec.rows] == ["glow", "dcgan"]  # the floor is not ranked
    assert [r.run["model"] for r in sec.floors] == ["data", "uniform"]  # its protocol's floor
    data, uniform = sec.floors
    assert data.cells["fid@"].value == 0.5 and not data.cells["fid@"].best
    assert uniform.cells["bpd"].value == pytest.approx(math.log2(17))
    assert uniform.cells["bpd"].kind == "exact" and not uniform.cells["bpd"].best
    assert sec.rows[0].cells["fid@"].best and not sec.rows[1].cells["fid@"].best
    md, table, page = outputs(store)
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines[1:]] == [
        "glow",
        "dcgan",
        "data",
        "uniform",
    ]
    assert "**" not in md_line(md, "data") and "**" not in md_line(md, "uniform")
    assert "| 4.087 |" in md_line(md, "uniform") and "| n/a |" not in md_line(md, "data")
    assert "K = 17 levels" in md and "held-out real images" in md
    assert (table["data"]["floor"], table["uniform"]["floor"], table["glow"]["floor"]) == (
        "data",
        "uniform",
        "",
    )
    assert table["data"]["FID best"] == "False" and table["uniform"]["bits/dim best"] == "False"
    assert 'class="floor first-floor"' in page and page.count('<td class="best">') == 1
    rows = json.loads(render(store.runs(), "json"))
    assert [r["floor"] for r in rows] == [None, None, "data", "uniform"]


def test_no_uniform_row_without_likelihood_numbers_or_levels(store):
    add(store, "b", "dcgan", "gan", fid=9.0)
    add(store, "d", "data", "data", fid=0.5)
    (sec,) = build_sections(store.runs())
    assert [r.run["model"] for r in sec.floors] == ["data"]  # no bits/dim in the section
    other = Store(store.path.with_name("other.sqlite"))
    add(other, "a", "glow", bpd=2.3, levels=None)
    (sec,) = build_sections(other.runs())
    assert sec.floors == []  # K unknown: no uniform row rather than a wrong one


def test_an_interval_prints_with_the_decimals_of_its_value():
    from genbench.leaderboard.cells import Cell

    assert Cell(1.912, "bound", lo=1.91, hi=1.914).text() == "≤ 1.912 ± 0.002"
    assert Cell(26.8, lo=-1.6, hi=55.2).text() == "26.8 ± 28.4"
    assert Cell(1.912, lo=1.9116, hi=1.9124).text() == "1.912 ± 0.0004"  # one digit, not 0.000
    assert Cell(11.0, lo=10.0, hi=13.0).text() == "11.0 [10.0, 13.0]"
