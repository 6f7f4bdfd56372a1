"""Files genbench reads for sample-quality metrics are data, never code: a pickle whose loading
would create a marker file, planted as a reference-feature cache file, a domain-extractor cache
file, an Inception-v3 weights file (given as ``inception_weights=`` or found under $TORCH_HOME),
never reaches a full unpickler. Caches are ignored (with a warning) and recomputed; weights files
are refused in one sentence."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest
import torch

from genbench import cli
from genbench.data.bundled import digits
from genbench.eval import extractors as ex
from genbench.eval.fidelity import fidelity_metrics

CPU = torch.device("cpu")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's download name


class Payload:
    """Unpickling this creates ``marker`` (what a hostile file would do, harmlessly)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def torch_payload(path: pathlib.Path, marker: pathlib.Path) -> None:
    """A torch.save archive (what torch-fidelity and torch.hub load) holding the payload."""
    torch.save({"features": Payload(marker), "fc.weight": torch.ones(2)}, path)


def npz_payload(path: pathlib.Path, marker: pathlib.Path) -> None:
    """An .npz whose ``features`` array is an object array holding the payload."""
    with open(path, "wb") as f:
        np.savez(f, features=np.array([Payload(marker)], dtype=object))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a planted pickle ran code"


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture
def cache(data, tmp_path_factory, tmp_path):
    """A fresh cache folder holding the trained digits CNN (trained once per session)."""
    shared = tmp_path_factory.getbasetemp() / "digits-cnn-cache"  # as in tests/eval
    ex.domain_extractor(data, shared, CPU)
    shutil.copytree(shared / "extractors", tmp_path / "cache" / "extractors")
    return tmp_path / "cache"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """$TORCH_HOME points at an empty folder (torch.hub's download cache lives below it)."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def score(samples, data, cache, **overrides):
    cfg = {
        "extractor": "domain",
        "inception_weights": None,
        "n_reference": 200,
        "reference_split": "train",
        "metrics": ["fid", "isc", "kid", "prc"],
        "kid_subset_size": 100,
        "isc_splits": 10,
        "batch_size": 256,
        "seed": 0,
        **overrides,
    }
    rows = fidelity_metrics(samples, data, cfg, device=CPU, cache_dir=cache, protocol={})
    return {r.name: r.value for r in rows}


@pytest.mark.parametrize("poison", [torch_payload, npz_payload], ids=["torch-pickle", "npz"])
def test_poisoned_feature_cache_is_ignored_and_recomputed(
    poison, data, cache, marker, caplog, torch_home
):
    samples = data.test[:150].long()
    first = score(samples, data, cache)
    files = [p for p in (cache / "fidelity").rglob("*") if p.is_file()]
    assert files, "the reference features were not cached"
    for path in files:  # every cache file, whatever its name and format
        poison(path, marker)
    caplog.set_level("WARNING")
    second = score(samples, data, cache)
    assert not marker.exists()
    assert second == first  # recomputed, bit-identical
    assert "ignoring the feature cache file" in caplog.text
    third = score(samples, data, cache)  # the rewritten cache reads back
    assert third == first and caplog.text.count("ignoring the feature cache file") == len(files)


def test_inception_weights_with_a_payload_are_refused(data, cache, marker, tmp_path, torch_home):
    weights = tmp_path / "inception.pth"
    torch_payload(weights, marker)
    with pytest.raises(
        ex.ExtractorError,
        match=r"refusing the Inception-v3 weights .*inception"
        r"\.pth.*weights_only=True",
    ):
        score(
            data.test[:20].long(),
            data,
            cache,
            extractor="inception-v3",
            inception_weights=str(weights),
        )
    assert not marker.exists()


def test_weights_planted_under_torch_home_are_refused(data, cache, marker, torch_home):
    planted = torch_home / "hub" / "checkpoints" / INCEPTION_FILE
    planted.parent.mkdir(parents=True)
    torch_payload(planted, marker)
    for choice in ("auto", "inception-v3"):
        with pytest.raises(ex.ExtractorError, match=f"refusing .*{INCEPTION_FILE}"):
            score(data.test[:20].long(), data, cache, extractor=choice)
    assert not marker.exists()


def test_score_command_refuses_a_payload_weights_file(
    tmp_path, marker, capsys, torch_home, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "1000")
    weights = tmp_path / "w.pth"
    torch_payload(weights, marker)
    with pytest.raises(SystemExit) as exit_:
        cli.main(
            [
                "score",
                "input1=digits:test",
                "input2=digits:train",
                "extractor=inception-v3",
                f"inception_weights={weights}",
                f"paths.outputs={tmp_path / 'out'}",
            ]
        )
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "refusing the Inception-v3 weights" in err and "w.pth" in err
    assert not marker.exists()


def test_poisoned_domain_extractor_cache_is_retrained(data, tmp_path, marker, caplog):
    recipe = ex.CNNRecipe(steps=20)  # a quick recipe: its own cache entry
    path = ex.domain_extractor(data, tmp_path, CPU, recipe).weights
    good = torch.load(path, weights_only=True)
    torch_payload(path, marker)
    caplog.set_level("WARNING")
    again = ex.domain_extractor(data, tmp_path, CPU, recipe)
    assert not marker.exists()
    assert again.weights == path and "ignoring the domain-extractor cache file" in caplog.text
    retrained = torch.load(path, weights_only=True)
    for key, value in good["state_dict"].items():  # seeded: the same network again
        assert torch.equal(retrained["state_dict"][key], value), key
