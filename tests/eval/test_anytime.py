"""The anytime probe: the final evaluation's numbers at a small, fixed size, seeded, cheap."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_cfg
from torch import nn

from genbench.data.base import Data
from genbench.errors import ConfigError
from genbench.eval.anytime import ProbeSettings, build_probe
from genbench.models.base import GenerativeModel, Sampled
from genbench.nn.random import rand
from genbench.validation import validate

CPU = torch.device("cpu")


class Uniform(GenerativeModel):
    """Uniform levels: NLL D ln K exactly (so bits/dim log2 K); counts its sampling calls."""

    family = "flow"
    likelihood = "exact"

    def __init__(self, shape, levels):
        super().__init__(shape, levels)
        self.w = nn.Parameter(torch.zeros(()))
        self.sampled = 0

    def training_losses(self, x, phase="main"):
        return {"loss": self.w + self.nll(x)}

    def sample(self, n, *, generator=None, **sampler):
        self.sampled += n
        u = rand((n, *self.shape), generator=generator)
        return Sampled((u * self.levels).long().clamp(max=self.levels - 1), torch.ones(n))

    def nll(self, x):
        return torch.full((x.shape[0],), self.dims * math.log(self.levels), dtype=torch.float64)


class Memorizer(Uniform):
    """No likelihood; each sample is a training image picked with its own generator."""

    likelihood = "none"

    def __init__(self, images):
        super().__init__(tuple(images.shape[1:]), 17)
        self.images = images.long()

    def sample(self, n, *, generator=None, **sampler):
        u = rand((n,), generator=generator)
        return Sampled(self.images[(u * len(self.images)).long()], torch.ones(n))


def make_probe(data, cache, eval_cfg=None, **settings):
    eval_cfg = eval_cfg or compose_cfg("train", []).eval  # conf/eval/default: no caps
    return build_probe(ProbeSettings(**settings), data, eval_cfg, {}, CPU, cache)


def test_bits_per_dim_is_the_final_evaluations_rule_on_a_subset(data, cache):
    model = Uniform(data.shape, data.levels)
    rows = make_probe(data, cache, nll_examples=40, metrics=("bpd",))(model)
    assert [(m.name, m.kind, m.split, m.n, m.unit) for m in rows] == [
        ("bpd", "exact", "test", 40, "bits/dim")
    ]
    assert rows[0].value == pytest.approx(math.log2(data.levels), rel=1e-12)
    assert model.sampled == 0  # no sample metric asked for: nothing drawn


def test_sizes_are_capped_at_the_final_evaluations(data, cache):
    small = compose_cfg("train", ["experiment=smoke"]).eval  # nll_examples 32, n_samples 32
    rows = make_probe(data, cache, small, nll_examples=40, n_samples=500)(
        Uniform(data.shape, data.levels)
    )
    assert {m.name: m.n for m in rows} == {
        "bpd": 32,
        "fid@digits-cnn": 32,
        "kid@digits-cnn": 32,
        "kid_std@digits-cnn": 32,
    }


def test_sample_metrics_rank_real_images_above_noise(data, cache):
    real = make_probe(data, cache, n_samples=120)(Memorizer(data.train))
    noise = make_probe(data, cache, n_samples=120)(Uniform(data.shape, data.levels))
    r, u = ({m.name: m for m in rows} for rows in (real, noise))
    assert set(r) == {"fid@digits-cnn", "kid@digits-cnn", "kid_std@digits-cnn"}  # no likelihood
    assert set(u) == set(r) | {"bpd"}
    assert r["fid@digits-cnn"].n == 120 and r["fid@digits-cnn"].protocol["n_generated"] == 120
    assert r["fid@digits-cnn"].protocol["reference_split"] == "test"
    assert r["fid@digits-cnn"].value < 0.2 * u["fid@digits-cnn"].value
    assert r["kid@digits-cnn"].value < u["kid@digits-cnn"].value


def test_probe_is_deterministic_and_leaves_rng_and_mode_alone(data, cache):
    model = Uniform(data.shape, data.levels).train()
    probe = make_probe(data, cache, n_samples=64, nll_examples=32)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = probe(model)
    assert torch.equal(torch.get_rng_state(), state)  # the training RNG did not move
    assert model.training  # the caller's mode is restored
    torch.manual_seed(2)
    again = probe(model)
    other_batches = make_probe(data, cache, n_samples=64, nll_examples=32, batch_size=7)(model)
    assert [m.value for m in first] == [m.value for m in again]
    assert [m.value for m in first] == pytest.approx([m.value for m in other_batches], rel=1e-6)
    reseeded = make_probe(data, cache, n_samples=64, nll_examples=32, seed=5)(model)
    fid = {m.name: m.value for m in reseeded}["fid@digits-cnn"]
    assert fid != {m.name: m.value for m in first}["fid@digits-cnn"]  # the seed draws others


def test_probe_uses_the_reference_features_of_the_final_evaluation(data, cache, monkeypatch):
    probe = make_probe(data, cache, n_samples=50, metrics=("fid",))
    probe(Uniform(data.shape, data.levels))
    files = sorted((cache / "fidelity").glob("*.npz"))
    assert files  # the reference side is cached after the first call ...
    stamps = [f.stat().st_mtime_ns for f in files]
    probe(Uniform(data.shape, data.levels))
    assert [f.stat().st_mtime_ns for f in files] == stamps  # ... and read, not rewritten


@pytest.mark.parametrize(
    ("probe", "key"),
    [
        ({"n_samples": -1}, "trainer.probe.n_samples"),
        ({"nll_examples": 0}, "trainer.probe.nll_examples"),
        ({"metrics": ["bpd", "fid", "lpips"]}, "trainer.probe.metrics"),
        ({"metrics": []}, "trainer.probe.metrics"),
        ({"extractor": "vgg"}, "trainer.probe.extractor"),
        ({"seed": 1.5}, "trainer.probe.seed"),
        ({"seed": 2**32}, "trainer.probe.seed"),
        ({"n_samples": 1}, "trainer.probe.n_samples"),
        ({"n_samples": 3, "metrics": ["prc"]}, "trainer.probe.n_samples"),
        ({"samples": 100}, "trainer.probe.samples"),
    ],
)
def test_bad_settings_name_their_key(probe, key):
    with pytest.raises(ConfigError, match=f"^{key}=.* is invalid: expected"):
        ProbeSettings.from_cfg(probe)


def test_train_config_validates_the_probe(tmp_path):
    cfg = compose_cfg("train", ["experiment=smoke", "trainer.probe.n_samples=ten"], tmp_path)
    with pytest.raises(ConfigError, match="trainer.probe.n_samples='ten'"):
        validate(cfg)
    cfg = compose_cfg("train", ["experiment=smoke"], tmp_path)
    assert ProbeSettings.from_cfg(cfg.trainer.probe) == ProbeSettings()  # yaml = code defaults


def test_domain_extractor_on_unlabelled_data_fails_before_training(data, tmp_path):
    bare = Data("bare", data.levels, data.train, data.val, data.test)
    with pytest.raises(ConfigError, match="trainer.probe.extractor='domain'"):
        make_probe(bare, tmp_path)
    rows = make_probe(bare, tmp_path, metrics=("bpd",))(Uniform(data.shape, data.levels))
    assert [m.name for m in rows] == ["bpd"]
