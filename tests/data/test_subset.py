"""``dataset.train_fraction``: a seeded, nested subset of the training split of the right size,
validation and test untouched, checked with an error naming the key, and part of the config
hash (except 1.0, so older runs keep theirs)."""

import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf, open_dict

from genbench.build import config_hash, load_data
from genbench.data.base import Data
from genbench.data.subset import split_fraction, subset_indices, train_subset
from genbench.errors import ConfigError
from genbench.validation import validate

TOY = ["dataset=toy_8gaussians", "dataset.n_train=400", "dataset.n_val=10", "dataset.n_test=10"]


def tiny(n=40):
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 2, 1, 1).contiguous()
    return Data(
        name="tiny",
        levels=64,
        train=x,
        val=x[:3],
        test=x[:5],
        train_labels=torch.arange(n) % 4,
        test_labels=torch.arange(5) % 4,  # a labelled dataset labels its test split too
        num_classes=4,
    )


@pytest.mark.parametrize("fraction,size", [(0.1, 4), (0.25, 10), (0.5, 20), (1e-6, 1), (1.0, 40)])
def test_subset_is_sized_right_and_keeps_labels_with_their_examples(fraction, size):
    data = tiny()
    sub = train_subset(data, fraction, seed=0)
    assert sub.train.shape == (size, 2, 1, 1) and sub.train_labels.shape == (size,)
    assert torch.equal(sub.train_labels, sub.train[:, 0, 0, 0].long() % 4)
    assert sub.val is data.val and sub.test is data.test
    if fraction < 1:
        assert sub.info == {"train_fraction": fraction, "train_examples": size}
    else:
        assert sub is data


def test_subset_is_seeded_and_nested():
    a, b = subset_indices(1000, 0.1, seed=3), subset_indices(1000, 0.1, seed=3)
    assert torch.equal(a, b) and len(set(a.tolist())) == 100
    assert not torch.equal(a, subset_indices(1000, 0.1, seed=4))
    assert set(a.tolist()) <= set(subset_indices(1000, 0.25, seed=3).tolist())


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, "half", True, float("nan")])
def test_bad_fraction_names_the_key(bad):
    with pytest.raises(ConfigError, match=r"dataset.train_fraction=.* is invalid: expected a"):
        split_fraction({"_target_": "x", "train_fraction": bad})


def test_config_builds_the_subset_and_hashes_it(tmp_path):
    cfg = compose_cfg("train", [*TOY, "dataset.train_fraction=0.25"], tmp_path)
    data = load_data(cfg.dataset)
    assert data.train.shape[0] == 100 and data.val.shape[0] == 10 and data.test.shape[0] == 10
    assert torch.equal(data.train, load_data(cfg.dataset).train)  # seeded by dataset.seed
    full = compose_cfg("train", TOY, tmp_path)
    assert full.dataset.train_fraction == 1.0 and load_data(full.dataset).train.shape[0] == 400
    assert config_hash(cfg) != config_hash(full)
    older = full.copy()  # a config from before the key existed hashes as 1.0 does
    with open_dict(older):
        del older.dataset["train_fraction"]
    assert config_hash(older) == config_hash(full)
    assert OmegaConf.to_container(cfg.dataset)["train_fraction"] == 0.25


def test_train_validation_refuses_a_bad_fraction(tmp_path):
    cfg = compose_cfg("train", [*TOY, "dataset.train_fraction=0", "model=dcgan"], tmp_path)
    with pytest.raises(ConfigError, match=r"dataset.train_fraction=0 is invalid"):
        validate(cfg)


def test_the_evaluation_protocol_sees_the_whole_training_split():
    """A run on 10 % of digits is scored with the extractor and floor of the whole dataset."""
    from omegaconf import OmegaConf

    from genbench.data.bundled import digits
    from genbench.eval.extractors import data_digest
    from genbench.eval.floor import held_out

    whole = digits()
    cut = train_subset(whole, 0.1, 0)
    assert len(cut.train) < len(whole.train) and cut.whole() is whole
    assert data_digest(cut.whole()) == data_digest(whole)
    cfg = OmegaConf.create({"n_samples": 50, "seed": 0, "reference_split": "test"})
    assert torch.equal(held_out(cut, cfg)[0], held_out(whole, cfg)[0])
