"""The HTML report is one self-contained page: tables, inline base64 PNGs, nothing fetched."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
from conftest import compose_cfg
from matplotlib.image import imsave

from genbench.eval.metric import Metric
from genbench.leaderboard.command import leaderboard_command
from genbench.leaderboard.html import html_report, write_report
from genbench.leaderboard.references import reference_runs
from genbench.leaderboard.sections import View
from genbench.leaderboard.store import RunRecord, Store

PROTO = {"extractor": "digits-cnn", "n_generated": 100, "reference_split": "test", "sampler": {}}


def fill(store, tmp_path, dataset="digits", folders=True):
    """Three runs; with ``folders`` two of them get samples.png and stats.jsonl."""
    for i, (model, family, lik, bpd, fid) in enumerate(
        [
            ("pixelcnn", "autoregressive", "exact", 2.5, 20.0),
            ("dcgan", "gan", "none", None, 35.0),
            ("vae<b>", "vae", "elbo", 3.0, 30.0),
        ]
    ):
        run_dir = tmp_path / "runs" / model
        if i < 2 and folders:
            run_dir.mkdir(parents=True)
            imsave(run_dir / "samples.png", np.random.default_rng(i).random((19, 73)), cmap="gray")
            (run_dir / "stats.jsonl").write_text(
                "\n".join(json.dumps({"main/loss": 1.0 / s, "step": s}) for s in (1, 2, 3))
            )
        rows = [
            Metric("fid@digits-cnn", fid, "measured", "test", 100, "", PROTO),
            Metric("ms_per_image", 1.0 + 10 * i, "measured", "samples", 8, "ms", {"sampler": {}}),
        ]
        if bpd is not None:
            rows.append(Metric("bpd", bpd, "exact" if lik == "exact" else "bound"))
        store.record(
            RunRecord(
                model,
                f"t{i}",
                model,
                family,
                lik,
                dataset,
                1000 * (i + 1),
                5,
                80,
                1.0,
                "cpu",
                "finished",
                str(run_dir),
                model,
                {"sampler": {}},
            ),
            rows,
        )
    return store.runs()


def test_page_is_self_contained_with_tables_plots_and_samples(tmp_path):
    runs = fill(Store(tmp_path / "lb.sqlite"), tmp_path)
    page = html_report(runs)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert page.count("<table>") == 1 and "<th>bits/dim</th>" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5  # pareto, bpd_params, loss + two samples.png
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert not re.search(r'(src|href)="(https?:|//)', page) and "<script" not in page
    assert "<link" not in page
    assert "vae&lt;b&gt;" in page and "vae<b>" not in page  # text is escaped
    assert "no run has a sampler sweep" in page  # the missing plot says why
    best = re.search(r'<td class="best">([^<]*)</td>', page)
    assert best and best.group(1) == "2.500"  # best bits/dim in bold


def test_references_appear_in_the_page_marked_published(tmp_path):
    runs = fill(Store(tmp_path / "lb.sqlite"), tmp_path, dataset="cifar10", folders=False)
    page = html_report(runs, View(), reference_runs({"cifar10"}))
    assert 'class="ref first-ref"' in page and "DDPM (paper)" in page and "3.170†" in page
    # published rows never get the bold "best" mark
    assert not re.search(r'<tr class="ref[^"]*">.*?class="best"', page)
    assert "(paper)" not in html_report(runs, View(refs=False), reference_runs({"cifar10"}))


def test_command_writes_html_and_plots(tmp_path):
    out = tmp_path / "out"
    runs = fill(Store(out / "leaderboard.sqlite"), tmp_path)
    assert len(runs) == 3
    path = leaderboard_command(
        compose_cfg("leaderboard", ["format=html", f"out={tmp_path / 'r.html'}"], out)
    )
    assert path == str(tmp_path / "r.html") and "base64," in (tmp_path / "r.html").read_text()
    listing = leaderboard_command(
        compose_cfg("leaderboard", ["plot=[pareto,grid,fid_nfe]", f"out={tmp_path / 'p'}"], out)
    )
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == ["grid.png", "pareto.png"]  # no sampler sweep: no fid_nfe.png
    assert listing.count(".png") == 2
    write_report([], tmp_path / "empty.html")
    assert "No runs." in (tmp_path / "empty.html").read_text()
