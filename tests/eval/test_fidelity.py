"""fidelity_metrics with the digits domain extractor: rows, sanity values, caching."""

import logging
import shutil

import pytest
import torch

from genbench.data.base import Data
from genbench.eval import extractors as ex
from genbench.eval.fidelity import ImageTensors, fidelity_metrics

CPU = torch.device("cpu")
NAMES = {"fid", "is", "is_std", "kid", "kid_std", "precision", "recall"}


def score(samples, data, cache, protocol=None, **overrides):
    cfg = {
        "extractor": "domain",
        "inception_weights": None,
        "n_reference": None,
        "reference_split": "train",
        "metrics": ["fid", "isc", "kid", "prc"],
        "kid_subset_size": 1000,
        "isc_splits": 10,
        "batch_size": 256,
        "seed": 0,
        **overrides,
    }
    rows = fidelity_metrics(
        samples, data, cfg, device=CPU, cache_dir=cache, protocol=dict(protocol or {})
    )
    return {r.name.split("@")[0]: r for r in rows}


def test_rows_and_protocol(data, cache):
    rows = score(
        data.test.long(),
        data,
        cache,
        {"sampler": "ddim", "seed": 3},
        n_reference=500,
        reference_split="train",
    )
    assert set(rows) == NAMES
    e = ex.domain_extractor(data, cache, CPU)
    for name, r in rows.items():
        assert r.name == f"{name}@digits-cnn"
        assert (r.kind, r.split, r.n, r.unit) == ("measured", "train", 300, "")
        p = r.protocol
        assert p["sampler"] == "ddim" and p["seed"] == 3  # the caller's protocol is kept
        assert p["extractor"] == "digits-cnn"
        assert p["extractor_weights_sha256"] == e.weights_hash[:16]
        assert p["extractor_test_acc"] > 0.9
        assert p["n_generated"] == 300 and p["extractor_input"] == "1x8x8"
        assert p["extractor_resize"].startswith("none")
        if name in ("is", "is_std"):  # IS does not depend on the reference set
            assert "n_reference" not in p and "reference_sha256" not in p
        else:
            assert (p["n_reference"], p["reference_split"]) == (500, "train")
            assert len(p["reference_sha256"]) == 16
    assert rows["kid"].protocol["kid_subset_size"] == 300  # clipped to the generated count
    assert "kid_subset_size" not in rows["fid"].protocol
    assert rows["is"].protocol["isc_splits"] == 10
    only_is = score(data.test.long(), data, cache, metrics=["isc"])
    assert set(only_is) == {"is", "is_std"}


def test_reference_against_itself(data, cache):
    rows = score(data.train, data, cache, reference_split="train", metrics=["fid", "prc"])
    assert abs(rows["fid"].value) < 1e-3
    assert rows["precision"].value == 1.0 and rows["recall"].value == 1.0


def test_fid_grows_with_noise(data, cache):
    x = data.test.double()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    fids, kids = [], []
    for sigma in (0.0, 1.0, 2.0, 4.0, 8.0):  # in levels of K = 17
        noisy = (x + sigma * noise).round().clamp(0, data.levels - 1).long()
        rows = score(noisy, data, cache, metrics=["fid", "kid"], kid_subset_size=100)
        fids.append(rows["fid"].value)
        kids.append(rows["kid"].value)
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert kids[-1] > 10 * abs(kids[0]), kids


def test_intervals_contain_the_value_shrink_with_n_and_are_seeded(data, cache):
    """FID / IS: bootstrap over the generated set (reference fixed); precision / recall:
    disjoint subsets; KID: its subset std scaled to N. Wider at N = 200 than at N = 1,000."""
    g = torch.Generator().manual_seed(0)
    x = data.train.long()
    noisy = (x + torch.randint(-3, 4, x.shape, generator=g)).clamp(0, data.levels - 1)
    widths = []
    for n in (200, 1000):
        rows = score(noisy[:n], data, cache, reference_split="test", kid_subset_size=100)
        for name in ("fid", "is", "precision", "recall", "kid"):
            r = rows[name]
            assert r.lo is not None and r.lo <= r.value <= r.hi, (name, r)
        assert rows["fid"].protocol["interval"] == "bootstrap-se-100"  # auto: 128-d features
        assert rows["precision"].protocol["interval"] == "subsets-10-t"
        assert rows["kid"].protocol["interval"] == "kid-subsets-se"
        assert rows["is_std"].lo is None and "interval" not in rows["kid_std"].protocol
        widths.append({k: rows[k].hi - rows[k].lo for k in ("fid", "is", "precision", "kid")})
    for k in widths[0]:
        assert widths[1][k] < widths[0][k], (k, widths)
    first = score(noisy[:200], data, cache, reference_split="test", kid_subset_size=100)
    again = score(noisy[:200], data, cache, reference_split="test", kid_subset_size=100)
    for k in ("fid", "is", "precision", "recall"):  # seeded: the same intervals every time
        assert (first[k].lo, first[k].hi) == (again[k].lo, again[k].hi)
    off = score(noisy[:200], data, cache, reference_split="test", kid_subset_size=100, bootstrap=0)
    assert off["fid"].lo is None and off["precision"].lo is None
    assert "interval" not in off["fid"].protocol
    assert off["fid"].value == first["fid"].value  # intervals never change the value
    assert off["kid"].lo == first["kid"].lo  # KID's interval costs nothing: always there
    few = score(noisy[:200], data, cache, reference_split="test", metrics=["fid"], bootstrap=7)
    assert few["fid"].protocol["interval"] == "bootstrap-se-7"


def test_inception_score_of_real_and_constant_images(data, cache):
    real = score(data.test, data, cache, metrics=["isc"])["is"].value
    assert 7.0 < real <= 10.0
    blank = torch.zeros_like(data.test)
    rows = score(blank, data, cache, metrics=["isc"])
    assert rows["is"].value == pytest.approx(1.0, abs=1e-9)  # p(y|x) = p(y) for every image
    assert rows["is_std"].value == pytest.approx(0.0, abs=1e-9)


def test_batch_size_does_not_change_scores(data, cache, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    shutil.copytree(cache / "extractors", other / "extractors")
    a = score(data.test[:200], data, cache, n_reference=400)
    b = score(data.test[:200], data, other, n_reference=400, batch_size=7)
    for name in NAMES:
        assert b[name].value == pytest.approx(a[name].value, rel=1e-5, abs=1e-7), name


def count_images(monkeypatch):
    seen = []
    forward = ex.DomainFeatureExtractor.forward

    def counting(self, x):
        seen.append(x.shape[0])
        return forward(self, x)

    monkeypatch.setattr(ex.DomainFeatureExtractor, "forward", counting)
    return seen


def test_reference_cache_is_reused_and_invalidated(data, cache, monkeypatch):
    seen = count_images(monkeypatch)
    n_ref = data.train.shape[0]
    first = score(data.test, data, cache, metrics=["fid", "isc", "prc"])
    assert sum(seen) == 300 + n_ref
    seen.clear()
    second = score(data.test, data, cache, metrics=["fid", "isc", "prc"])
    assert sum(seen) == 300  # the reference features came from the cache
    assert {k: r.value for k, r in second.items()} == {k: r.value for k, r in first.items()}

    seen.clear()
    score(data.test, data, cache, metrics=["fid"], n_reference=1000)  # other data, other entry
    assert sum(seen) == 300 + 1000

    path = ex.domain_extractor(data, cache, CPU).weights
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fc.weight"] = payload["state_dict"]["fc.weight"] * 1.5
    torch.save(payload, path)  # a changed weights file must not reuse stale features
    seen.clear()
    third = score(data.test, data, cache, metrics=["fid"])
    assert sum(seen) == 300 + n_ref
    assert third["fid"].value != pytest.approx(first["fid"].value, rel=1e-3)
    assert (
        third["fid"].protocol["extractor_weights_sha256"]
        != first["fid"].protocol["extractor_weights_sha256"]
    )


def test_toys_and_unlabelled_data_give_no_rows(data, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no Inception
    g = torch.Generator().manual_seed(0)
    toy_x = torch.randint(0, 64, (20, 2, 1, 1), generator=g).to(torch.uint8)
    toy = Data("toy_moons", 64, train=toy_x, val=toy_x, test=toy_x)
    assert (
        fidelity_metrics(
            toy_x.long(), toy, {"extractor": "auto"}, device=CPU, cache_dir=tmp_path, protocol={}
        )
        == []
    )
    x = torch.randint(0, 256, (20, 1, 8, 8), generator=g).to(torch.uint8)
    folder = Data("folder:imgs", 256, train=x, val=x, test=x)
    with caplog.at_level(logging.WARNING, logger="genbench.eval.fidelity"):
        rows = fidelity_metrics(
            x.long(), folder, {"extractor": "auto"}, device=CPU, cache_dir=tmp_path, protocol={}
        )
    assert rows == [] and "no sample-quality metrics for folder:imgs" in caplog.text
    with pytest.raises(ex.ExtractorError, match="labelled"):
        fidelity_metrics(
            x.long(), folder, {"extractor": "domain"}, device=CPU, cache_dir=tmp_path, protocol={}
        )


def test_image_tensors_scale_and_replicate():
    x = torch.tensor([0, 8, 16]).view(3, 1, 1, 1)
    grey = ImageTensors(x, 17, rgb=False)
    assert len(grey) == 3 and grey[1].dtype == torch.uint8 and grey[1].shape == (1, 1, 1)
    assert [int(grey[i]) for i in range(3)] == [0, 128, 255]
    assert ImageTensors(x, 17, rgb=True)[2].flatten().tolist() == [255, 255, 255]
