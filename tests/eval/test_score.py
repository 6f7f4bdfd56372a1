"""``genbench score``: inputs, config, and agreement with torch-fidelity on the same folders."""

import json
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image
from torch import nn

from genbench.data.bundled import digits
from genbench.errors import UserError
from genbench.eval import extractors as ex
from genbench.eval.score import format_scores, run_score

CPU = torch.device("cpu")
TF_KEYS = {"fid": torch_fidelity.KEY_METRIC_FID, "is": torch_fidelity.KEY_METRIC_ISC_MEAN,
           "is_std": torch_fidelity.KEY_METRIC_ISC_STD, "kid": torch_fidelity.KEY_METRIC_KID_MEAN,
           "kid_std": torch_fidelity.KEY_METRIC_KID_STD,
           "precision": torch_fidelity.KEY_METRIC_PRECISION,
           "recall": torch_fidelity.KEY_METRIC_RECALL}


def score_cfg(**overrides):
    args = [f"{k}={v}" for k, v in overrides.items()]
    GlobalHydra.instance().clear()
    with initialize_config_module("genbench.conf", version_base="1.3"):
        return compose("score", overrides=args)


def write_pngs(folder, images, rgb=False):
    """uint8 [N, 1, H, W] -> folder/000.png ... (grey, or grey saved as RGB)."""
    folder.mkdir()
    for i, img in enumerate(images):
        pil = Image.fromarray(img[0].numpy(), mode="L")
        (pil.convert("RGB") if rgb else pil).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def folders(data, tmp_path_factory):
    """Generated-side folder (60 test digits, saved as RGB) and reference folder (80 train)."""
    root = tmp_path_factory.mktemp("imgs")
    gen = write_pngs(root / "gen", ex.levels_to_uint8(data.test[:60], data.levels), rgb=True)
    ref = write_pngs(root / "ref", ex.levels_to_uint8(data.train[:80], data.levels))
    return gen, ref


@pytest.fixture(scope="module")
def outputs(data, tmp_path_factory):
    """An outputs folder whose cache already holds the trained digits CNN."""
    shared = tmp_path_factory.getbasetemp() / "digits-cnn-cache"  # see test_extractors.py
    ex.domain_extractor(data, shared, CPU)
    out = tmp_path_factory.mktemp("outputs")
    shutil.copytree(shared / "extractors", out / "cache" / "extractors")
    return out


@pytest.fixture
def no_hub_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def tf_settings(n):
    return {"fid": True, "isc": True, "kid": True, "prc": True, "cuda": False, "batch_size": 256,
            "rng_seed": 0, "kid_subset_size": n, "isc_splits": 10, "save_cpu_ram": True,
            "cache": False, "verbose": False}


def assert_agree(ours, reference, extractor):
    assert set(ours) == {f"{k}@{extractor}" for k in TF_KEYS}
    for name, key in TF_KEYS.items():
        assert ours[f"{name}@{extractor}"] == pytest.approx(reference[key], rel=1e-5, abs=1e-8)


def test_domain_scores_equal_torch_fidelity_on_folders(data, folders, outputs, no_hub_weights):
    gen, ref = folders
    ours = run_score(score_cfg(input1=gen, input2=ref, dataset="digits",
                               **{"paths.outputs": outputs}))
    weights = ex.domain_extractor(data, outputs / "cache", CPU).weights
    reference = torch_fidelity.calculate_metrics(
        input1=str(gen), input2=str(ref), feature_extractor="digits-cnn",
        feature_extractor_weights_path=str(weights), **tf_settings(60))
    assert_agree(ours, reference, "digits-cnn")
    assert ours["fid@digits-cnn"] > 0.1  # test digits vs train digits: close, not identical


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """An Inception-v3 state dict with torch-fidelity's keys, kaiming-initialized convs (the
    default init gives features ~1e-8), written to a file: lets the real extractor run offline."""
    captured = {}

    def grab(self, state_dict, *args, **kwargs):
        captured["module"] = self

    with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", grab):
        tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    net, g = captured["module"], torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=g)
    path = tmp_path_factory.mktemp("inception") / "inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_scores_equal_torch_fidelity_on_folders(data, inception_weights, tmp_path,
                                                         no_hub_weights):
    # Inception-v3 on CPU costs ~0.4 s per image (two images per side), and FID's 2048x2048
    # eigendecomposition ~5 s: KID checks the same 2048-d features, IS the logits
    gen = write_pngs(tmp_path / "gen", ex.levels_to_uint8(data.test[:2], data.levels))
    ref = write_pngs(tmp_path / "ref", ex.levels_to_uint8(data.train[:2], data.levels), rgb=True)
    ours = run_score(score_cfg(input1=gen, input2=ref, inception_weights=inception_weights,
                               metrics="[isc,kid]", isc_splits=1,
                               **{"paths.outputs": tmp_path / "out"}))
    reference = torch_fidelity.calculate_metrics(
        input1=str(gen), input2=str(ref), feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(inception_weights),
        **{**tf_settings(2), "fid": False, "prc": False, "isc_splits": 1})
    assert set(ours) == {f"{k}@inception-v3" for k in ("is", "is_std", "kid", "kid_std")}
    for name in ("is", "kid", "kid_std"):
        assert ours[f"{name}@inception-v3"] == pytest.approx(reference[TF_KEYS[name]], rel=1e-5)
    assert ours["kid@inception-v3"] != 0  # the random network still tells images apart


def test_inputs_folder_npz_and_dataset_agree(data, outputs, tmp_path, no_hub_weights):
    levels = data.test[:50]
    folder = write_pngs(tmp_path / "dir", ex.levels_to_uint8(levels, data.levels))
    with_k = tmp_path / "with_k.npz"
    np.savez(with_k, levels=levels.numpy(), num_levels=np.int64(17))
    without_k = tmp_path / "without_k.npz"
    np.savez(without_k, levels.numpy().astype(np.int32))
    common = {"input2": "digits:train", "metrics": "[fid,isc,prc]", "paths.outputs": outputs,
              "device": "cpu"}  # the conf/device group (a plain key before: a Hydra error)
    results = [run_score(score_cfg(input1=folder, **common)),
               run_score(score_cfg(input1=with_k, **common)),
               run_score(score_cfg(input1=without_k, dataset="digits", **common))]
    assert set(results[0]) == {f"{k}@digits-cnn" for k in ("fid", "is", "is_std", "precision",
                                                            "recall")}
    assert results[1] == results[0] and results[2] == results[0]
    whole = run_score(score_cfg(input1="digits:test", **common))
    assert whole != results[0]  # all 300 test digits, not the first 50


def test_score_errors(data, folders, outputs, tmp_path, no_hub_weights):
    gen, ref = folders
    with pytest.raises(UserError, match="not a directory of images"):
        run_score(score_cfg(input1=tmp_path / "missing", input2=ref))
    with pytest.raises(ex.ExtractorError, match="no feature extractor"):
        run_score(score_cfg(input1=gen, input2=ref, **{"paths.outputs": outputs}))
    big = write_pngs(tmp_path / "big", torch.zeros(4, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(UserError, match="extractor takes"):
        run_score(score_cfg(input1=big, input2="digits", **{"paths.outputs": outputs}))
    with pytest.raises(UserError, match="metrics"):
        run_score(score_cfg(input1=gen, input2="digits", metrics="[fid,ppl]",
                            **{"paths.outputs": outputs}))


def test_format_scores():
    scores = {"fid@digits-cnn": 1.25, "is@digits-cnn": 8.5}
    assert json.loads(format_scores(scores, "json")) == scores
    assert format_scores(scores, "table").splitlines() == ["fid@digits-cnn  1.25",
                                                           "is@digits-cnn   8.5"]
    with pytest.raises(UserError, match="format"):
        format_scores(scores, "yaml")


def test_config_defaults():
    cfg = score_cfg(input1="a", input2="b")
    assert (cfg.extractor, cfg.format, cfg.get("dataset"), cfg.inception_weights) == (
        "auto", "table", None, None)
    assert list(cfg.metrics) == ["fid", "isc", "kid", "prc"]
    assert cfg.paths.cache == "outputs/cache"
    assert score_cfg(input1="a", input2="b", dataset="digits").dataset._target_.endswith("digits")
