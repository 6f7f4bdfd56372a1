"""Published reference rows: the packaged file loads, holds the published values with their kinds
and sources, and malformed entries are refused with a message naming the entry."""

from __future__ import annotations

import pytest

from genbench.leaderboard.references import (
    ReferencesError,
    load_references,
    reference_notes,
    reference_runs,
)

#: (dataset, model) -> published metrics (bits/dim, FID, IS) as stated in the papers
PUBLISHED = {
    ("cifar10", "PixelCNN++"): {"bpd": 2.92},
    ("cifar10", "Gated PixelCNN"): {"bpd": 3.03},
    ("cifar10", "PixelRNN"): {"bpd": 3.00},
    ("cifar10", "RealNVP"): {"bpd": 3.49},
    ("cifar10", "Glow"): {"bpd": 3.35},
    ("cifar10", "DDPM"): {"bpd": 3.70, "fid": 3.17, "is": 9.46},
    ("cifar10", "DDIM (100 steps)"): {"fid": 4.16},
    ("cifar10", "EDM"): {"fid": 1.97},
    ("cifar10", "Flow Matching (OT path)"): {"bpd": 2.99, "fid": 6.35},
    ("cifar10", "SNGAN"): {"is": 8.22, "fid": 21.7},
    ("cifar10", "WGAN-GP"): {"is": 7.86},
    ("cifar10", "StyleGAN2"): {"fid": 8.32, "is": 9.21},
    ("cifar10", "StyleGAN2-ADA"): {"fid": 2.92, "is": 9.83},
    ("mnist", "RealNVP"): {"bpd": 1.06},
    ("mnist", "Glow"): {"bpd": 1.05},
}


def test_packaged_file_holds_the_published_values():
    refs = {(r.dataset, r.model): r for r in load_references()}
    assert set(refs) == set(PUBLISHED)
    for key, want in PUBLISHED.items():
        got = {k: v for k, v in refs[key].metrics.items() if k != "nfe"}
        assert got == pytest.approx(want), key
        assert refs[key].paper and refs[key].table, key
    assert refs["cifar10", "DDIM (100 steps)"].metrics["nfe"] == 100
    assert refs["cifar10", "EDM"].metrics["nfe"] == 35 and refs["cifar10", "EDM"].table == "Table 2"
    assert refs["cifar10", "Flow Matching (OT path)"].metrics["nfe"] == 142
    assert "Ho, Jain & Abbeel" in refs["cifar10", "DDPM"].source
    assert "50,000" in refs["cifar10", "DDPM"].protocol


def test_rows_keep_the_likelihood_kind_and_name_the_extractor():
    runs = {r["model"]: r for r in reference_runs({"cifar10"})}
    assert len(runs) == 13 and all(
        r["status"] == "published" and r["published"] for r in runs.values()
    )
    kinds = {name: {m["name"]: m["kind"] for m in r["metrics"]} for name, r in runs.items()}
    assert kinds["PixelCNN++ (paper)"] == {"bpd": "exact"}
    assert kinds["RealNVP (paper)"] == {"bpd": "bound"}  # dequantized density: ≤
    assert kinds["DDPM (paper)"]["bpd"] == "bound"
    assert kinds["DDPM (paper)"]["fid@inception-v3"] == "measured"
    assert runs["SNGAN (paper)"]["likelihood"] == "none"
    assert kinds["Flow Matching (OT path) (paper)"]["bpd"] == "estimate"  # ODE: ≈
    assert [r["model"] for r in reference_runs({"mnist"}, family="flow")] == [
        "RealNVP (paper)",
        "Glow (paper)",
    ]
    assert reference_runs({"digits"}) == [] and reference_runs({"cifar10"}, family="vae") == []
    notes = reference_notes(list(runs.values()))
    assert "never ranked" in notes[0] and len(notes) == 14


GOOD = """
protocols: {p: "Inception-v3, 50k samples"}
references:
  - model: M
    family: diffusion
    likelihood: vlb
    dataset: cifar10
    metrics: {bpd: 3.0, fid: 5.0}
    protocol: p
    source: {paper: "A et al. 2020", table: "Table 1"}
"""


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("family: diffusion", "family: transformer", "family 'transformer'"),
        ("likelihood: vlb", "likelihood: none", "cannot report bits/dim"),
        ("    protocol: p\n", "", "need a protocol"),
        ("bpd: 3.0", "bpd: -3.0", "not a positive number"),
        ("bpd: 3.0", "bpd: 3.0, ppl: 1.0", "unknown metric 'ppl'"),
        ('table: "Table 1"', 'table: ""', "source needs a paper and a table"),
        ("    dataset: cifar10\n", "", "lacks ['dataset']"),
        ("    dataset: cifar10\n", "    dataset: cifar10\n    url: x\n", "unknown keys"),
    ],
)
def test_malformed_entries_are_refused(tmp_path, old, new, message):
    path = tmp_path / "refs.yaml"
    path.write_text(GOOD)
    assert [r.model for r in load_references(path)] == ["M"]
    assert old in GOOD
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(ReferencesError, match="entry 0") as err:
        load_references(path)
    assert message in str(err.value)


def test_duplicates_and_non_lists_are_refused(tmp_path):
    path = tmp_path / "refs.yaml"
    entry = GOOD.split("references:\n", 1)[1]
    path.write_text(GOOD + entry)
    with pytest.raises(ReferencesError, match="twice"):
        load_references(path)
    path.write_text("references: {}\n")
    with pytest.raises(ReferencesError, match="references:"):
        load_references(path)
