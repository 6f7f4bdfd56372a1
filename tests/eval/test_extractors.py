"""Feature extractors: the domain CNN (accuracy, cache, torch-fidelity wrapper) and resolution."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from genbench.data.base import Data
from genbench.eval import extractors as ex

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(data, trained_cache):
    return trained_cache, ex.domain_extractor(data, trained_cache, CPU)


@pytest.fixture
def no_hub_weights(tmp_path, monkeypatch):
    """torch-fidelity's download cache points at an empty folder."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def unlabelled(shape=(1, 8, 8)):
    x = torch.randint(0, 256, (12, *shape), generator=torch.Generator().manual_seed(0))
    return Data(
        "folder:x",
        256,
        train=x.to(torch.uint8),
        val=x[:2].to(torch.uint8),
        test=x[:4].to(torch.uint8),
    )


def test_domain_cnn_is_accurate_cached_and_registered(trained):
    cache, e = trained
    assert e.name == e.registered == "digits-cnn"
    assert e.info["extractor_test_acc"] > 0.9
    assert e.weights.parent == cache / "extractors" and e.weights.name.startswith("digits-cnn-")
    assert e.weights_hash == hashlib.sha256(e.weights.read_bytes()).hexdigest()
    assert FEATURE_EXTRACTORS_REGISTRY["digits-cnn"] is ex.DomainFeatureExtractor
    payload = torch.load(e.weights, weights_only=True)
    assert payload["arch"] == {"channels": 1, "num_classes": 10, "width": 16, "hidden": 128}
    assert e.protocol()["extractor_weights_sha256"] == e.weights_hash[:16]
    assert e.protocol()["extractor_input"] == "1x8x8"


def test_second_call_loads_instead_of_training(trained, data, monkeypatch):
    cache, e = trained

    def fail(*args, **kwargs):
        raise AssertionError("the cached domain CNN should have been loaded")

    monkeypatch.setattr(ex, "train_domain_cnn", fail)
    assert ex.domain_extractor(data, cache, CPU) == e


def test_resolving_the_extractor_leaves_the_global_random_state_alone(trained, data, tmp_path):
    """Loading the cached CNN builds a randomly initialized one first, and training draws noise:
    neither may move the global RNG, or a run whose anytime probe resolves the extractor before
    training would train differently depending on whether the cache existed."""
    cache, _ = trained
    for where in (cache, tmp_path / "fresh"):  # loaded, then trained
        torch.manual_seed(123)
        before = torch.get_rng_state()
        ex.resolve_extractor("domain", data, inception_weights=None, cache_dir=where, device=CPU)
        assert torch.equal(torch.get_rng_state(), before), where


def test_cache_key_follows_recipe_and_data(trained, data):
    cache, e = trained
    other = ex.domain_extractor(data, cache, CPU, ex.CNNRecipe(steps=3))
    assert other.weights != e.weights and other.weights_hash != e.weights_hash
    flipped = Data(
        "digits",
        17,
        train=16 - data.train,
        val=data.val,
        test=data.test,
        train_labels=data.train_labels,
        test_labels=data.test_labels,
        num_classes=10,
    )
    assert ex.data_digest(flipped) != ex.data_digest(data)


def test_feature_extractor_outputs(trained, data):
    _, e = trained
    fe = ex.DomainFeatureExtractor(
        "digits-cnn", ["features", "logits"], feature_extractor_weights_path=str(e.weights)
    )
    x = ex.levels_to_uint8(data.test[:64], data.levels)
    features, logits = fe(x)
    assert features.shape == (64, 128) and logits.shape == (64, 10)
    assert bool((features >= 0).all())  # penultimate layer is post-ReLU
    acc = (logits.argmax(1) == data.test_labels[:64]).float().mean()
    assert acc > 0.85
    f_rgb, l_rgb = fe(x.expand(-1, 3, -1, -1))  # grey replicated to RGB gives the same features
    assert torch.equal(f_rgb, features) and torch.equal(l_rgb, logits)
    (train_features,) = ex.DomainFeatureExtractor(
        "digits-cnn", ["features"], feature_extractor_weights_path=str(e.weights)
    )(ex.levels_to_uint8(data.train, data.levels))
    assert float(train_features.square().mean()) == pytest.approx(1.0, rel=1e-4)  # scaled for KID
    (only_logits,) = ex.DomainFeatureExtractor(
        "digits-cnn", ["logits"], feature_extractor_weights_path=str(e.weights)
    )(x)
    assert torch.equal(only_logits, logits)


def test_rgb_to_grey_is_pil_luma():
    rgb = torch.randint(
        0, 256, (5, 3, 7, 9), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    ours = ((ex.uint8_to_unit(rgb, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0]
    pil = np.stack(
        [np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).convert("L")) for img in rgb]
    )
    assert np.array_equal(ours.numpy(), pil)


def test_levels_to_uint8():
    x = torch.arange(17).view(1, 1, 1, 17)
    expected = [int(torch.tensor(255 * i / 16).round()) for i in range(17)]
    assert ex.levels_to_uint8(x, 17).flatten().tolist() == expected
    assert expected[0] == 0 and expected[-1] == 255 and expected[1] == 16
    assert ex.levels_to_uint8(torch.tensor([0, 1]), 2).tolist() == [0, 255]
    full = torch.arange(256)
    assert torch.equal(ex.levels_to_uint8(full, 256), full.to(torch.uint8))


def test_resolve_extractor(data, tmp_path, no_hub_weights):
    kw = {"cache_dir": tmp_path / "cache", "device": CPU}
    assert ex.resolve_extractor("auto", unlabelled(), inception_weights=None, **kw) is None
    assert ex.resolve_extractor("auto", None, inception_weights=None, **kw) is None
    with pytest.raises(ex.ExtractorError, match="Inception-v3 weights not found"):
        ex.resolve_extractor("inception-v3", data, inception_weights=None, **kw)
    with pytest.raises(ex.ExtractorError, match="needs a labelled dataset"):
        ex.resolve_extractor("domain", unlabelled(), inception_weights=None, **kw)
    with pytest.raises(ex.ExtractorError, match="valid: auto, inception-v3, domain"):
        ex.resolve_extractor("vgg16", data, inception_weights=None, **kw)
    with pytest.raises(ex.ExtractorError, match="is not a file"):
        ex.resolve_extractor("auto", data, inception_weights=str(tmp_path / "nope.pth"), **kw)

    weights = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.ones(2, 3)}, weights)
    inc = ex.resolve_extractor("auto", unlabelled(), inception_weights=str(weights), **kw)
    assert (inc.name, inc.registered, inc.rgb) == ("inception-v3", "inception-v3-compat", True)
    assert inc.weights_hash == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert inc.protocol()["extractor_input"] == "3x299x299"
    assert torch.equal(inc.state_dict["fc.weight"], torch.ones(2, 3))
    # torch-fidelity's own download cache is used when no path is configured
    no_hub_weights.mkdir(parents=True)
    cached = no_hub_weights / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"fc.bias": torch.zeros(2)}, cached)
    found = ex.resolve_extractor("inception-v3", data, inception_weights=None, **kw)
    assert found.weights == cached
    # anything but a state dict of tensors is refused, in one sentence naming the file
    for content in (b"not really weights", None, {"fc.weight": [1.0]}):
        if content is None or isinstance(content, dict):
            torch.save(content, weights)
        else:
            weights.write_bytes(content)
        with pytest.raises(ex.ExtractorError, match="refusing the Inception-v3 weights .*w.pth"):
            ex.resolve_extractor("auto", data, inception_weights=str(weights), **kw)
    assert not (tmp_path / "cache").exists()  # nothing was trained


def test_register_domain_checks_the_registry():
    ex.register_domain("digits-cnn")
    ex.register_domain("digits-cnn")  # a second registration of the same class is a no-op
    with pytest.raises(ex.ExtractorError, match="taken"):
        ex.register_domain("vgg16")


def test_domain_cnn_weights_do_not_depend_on_the_thread_count(data, tmp_path):
    # a lone run (all cores), a parallel sweep job (one thread): the same CNN, the same protocol
    recipe = ex.CNNRecipe(steps=20)
    before = torch.get_num_threads()
    hashes = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            e = ex.domain_extractor(data, tmp_path / f"t{threads}", CPU, recipe)
            hashes.append(e.weights_hash)
            assert torch.get_num_threads() == threads  # restored after training
    finally:
        torch.set_num_threads(before)
    assert hashes[0] == hashes[1]
