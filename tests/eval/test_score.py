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

from genbench.errors import UserError
from genbench.eval import extractors as ex
from genbench.eval.fidelity import Scores
from genbench.eval.score import format_scores, run_score

CPU = torch.device("cpu")
TF_KEYS = {
    "fid": torch_fidelity.KEY_METRIC_FID,
    "is": torch_fidelity.KEY_METRIC_ISC_MEAN,
    "is_std": torch_fidelity.KEY_METRIC_ISC_STD,
    "kid": torch_fidelity.KEY_METRIC_KID_MEAN,
    "kid_std": torch_fidelity.KEY_METRIC_KID_STD,
    "precision": torch_fidelity.KEY_METRIC_PRECISION,
    "recall": torch_fidelity.KEY_METRIC_RECALL,
}


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
    return {
        "fid": True,
        "isc": True,
        "kid": True,
        "prc": True,
        "cuda": False,
        "batch_size": 256,
        "rng_seed": 0,
        "kid_subset_size": n,
        "isc_splits": 10,
        "save_cpu_ram": True,
        "cache": False,
        "verbose": False,
    }


def assert_agree(ours, reference, extractor):
    assert set(ours) == {f"{k}@{extractor}" for k in TF_KEYS}
    for name, key in TF_KEYS.items():
        assert ours[f"{name}@{extractor}"] == pytest.approx(reference[key], rel=1e-5, abs=1e-8)


def test_domain_scores_equal_torch_fidelity_on_folders(data, folders, outputs, no_hub_weights):
    gen, ref = folders
    ours = run_score(
        score_cfg(input1=gen, input2=ref, dataset="digits", **{"paths.outputs": outputs})
    )
    weights = ex.domain_extractor(data, outputs / "cache", CPU).weights
    reference = torch_fidelity.calculate_metrics(
        input1=str(gen),
        input2=str(ref),
        feature_extractor="digits-cnn",
        feature_extractor_weights_path=str(weights),
        **tf_settings(60),
    )
    assert_agree(ours, reference, "digits-cnn")
    assert ours["fid@digits-cnn"] > 0.1  # test digits vs train digits: close, not identical


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """An Inception-v3 state dict with torch-fidelity's keys, kaiming-initialized convs (the
    default init gives features ~1e-8), written to a file: lets the real extractor run offline."""
    captured = {}

    def grab(self, state_dict, *args, **kwargs):
        captured["module"] = self

    with (
        mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", grab),
    ):
        tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    net, g = captured["module"], torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=g)
    path = tmp_path_factory.mktemp("inception") / "inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_scores_equal_torch_fidelity_on_folders(
    data, inception_weights, tmp_path, no_hub_weights
):
    # Inception-v3 on CPU costs ~0.4 s per image (two images per side), and FID's 2048x2048
    # eigendecomposition ~5 s: KID checks the same 2048-d features, IS the logits
    gen = write_pngs(tmp_path / "gen", ex.levels_to_uint8(data.test[:2], data.levels))
    ref = write_pngs(tmp_path / "ref", ex.levels_to_uint8(data.train[:2], data.levels), rgb=True)
    ours = run_score(
        score_cfg(
            input1=gen,
            input2=ref,
            inception_weights=inception_weights,
            metrics="[isc,kid]",
            isc_splits=1,
            **{"paths.outputs": tmp_path / "out"},
        )
    )
    reference = torch_fidelity.calculate_metrics(
        input1=str(gen),
        input2=str(ref),
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(inception_weights),
        **{**tf_settings(2), "fid": False, "prc": False, "isc_splits": 1},
    )
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
    common = {
        "input2": "digits:train",
        "metrics": "[fid,isc,prc]",
        "paths.outputs": outputs,
        "device": "cpu",
    }  # the conf/device group (a plain key before: a Hydra error)
    results = [
        run_score(score_cfg(input1=folder, **common)),
        run_score(score_cfg(input1=with_k, **common)),
        run_score(score_cfg(input1=without_k, dataset="digits", **common)),
    ]
    assert set(results[0]) == {
        f"{k}@digits-cnn" for k in ("fid", "is", "is_std", "precision", "recall")
    }
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
        run_score(
            score_cfg(
                input1=gen, input2="digits", metrics="[fid,ppl]", **{"paths.outputs": outputs}
            )
        )


def test_format_scores():
    scores = {"fid@digits-cnn": 1.25, "is@digits-cnn": 8.5}
    assert json.loads(format_scores(scores, "json")) == scores
    assert format_scores(scores, "table").splitlines() == [
        "fid@digits-cnn  1.25",
        "is@digits-cnn   8.5",
    ]
    with pytest.raises(UserError, match="format"):
        format_scores(scores, "yaml")
    ci = Scores(scores, {"fid@digits-cnn": (1.0, 1.5)}, {"fid@digits-cnn": "bootstrap-se-100"})
    assert format_scores(scores, "table", ci).splitlines() == [
        "fid@digits-cnn  1.25  [1, 1.5] 95 % bootstrap-se-100",
        "is@digits-cnn   8.5",
    ]
    assert json.loads(format_scores(scores, "json", ci)) == {
        "fid@digits-cnn": 1.25,
        "fid@digits-cnn.lo": 1.0,
        "fid@digits-cnn.hi": 1.5,
        "is@digits-cnn": 8.5,
    }


def test_config_defaults():
    cfg = score_cfg(input1="a", input2="b")
    assert (cfg.extractor, cfg.format, cfg.get("dataset"), cfg.inception_weights) == (
        "auto",
        "table",
        None,
        None,
    )
    assert list(cfg.metrics) == ["fid", "isc", "kid", "prc"]
    assert cfg.paths.cache == "outputs/cache"
    assert score_cfg(input1="a", input2="b", dataset="digits").dataset._target_.endswith("digits")


# ---------------------------------------------------------------- bad inputs
def _npz(**arrays):
    def write(path):
        np.savez(path, **arrays)

    return write


def _raw(data: bytes):
    def write(path):
        path.write_bytes(data)

    return write


def _npy_as_npz(path):
    with open(path, "wb") as f:
        np.save(f, np.zeros((4, 1, 8, 8), np.uint8))


def _object_levels(path):
    np.savez(path, levels=np.array([np.zeros((1, 8, 8)), "x"], dtype=object), allow_pickle=True)


def _object_num_levels(path):
    np.savez(
        path,
        levels=np.zeros((4, 1, 8, 8), np.uint8),
        num_levels=np.array({"k": 17}, dtype=object),
        allow_pickle=True,
    )


def _huge_claim(path):
    """levels.npy whose header promises 10^9 images but holds 256 bytes."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 1, 8, 8)}
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("levels.npy", buf.getvalue() + bytes(256))


def _corrupt_member(path):
    """A compressed archive whose levels data is damaged (the zip directory is intact)."""
    np.savez_compressed(
        path, levels=np.arange(4096, dtype=np.int32).reshape(4, 1, 32, 32), num_levels=5000
    )
    raw = bytearray(path.read_bytes())
    raw[100:140] = bytes(40)
    path.write_bytes(bytes(raw))


LEVELS = np.zeros((4, 1, 8, 8), np.int32)
BAD_INPUTS = [
    ("empty-archive", _npz(), ["holds no arrays"]),
    (
        "no-images",
        _npz(levels=np.zeros((0, 1, 8, 8), np.uint8), num_levels=17),
        ["holds no images"],
    ),
    ("rank-2", _npz(levels=np.zeros((4, 64), np.uint8)), ["expected integer levels [N, C, H, W]"]),
    ("rank-5", _npz(levels=np.zeros((4, 1, 1, 8, 8), np.uint8)), ["[N, C, H, W]"]),
    (
        "two-channels",
        _npz(levels=np.zeros((4, 2, 8, 8), np.uint8)),
        ["2 channels", "expected 1 (grey) or 3 (RGB)"],
    ),
    (
        "float-levels",
        _npz(levels=np.zeros((4, 1, 8, 8), np.float32)),
        ["expected integer levels", "float32"],
    ),
    ("object-levels", _object_levels, ["holds Python objects"]),
    ("npy-as-npz", _npy_as_npz, ["is a .npy array, not an .npz archive"]),
    ("not-an-archive", _raw(b"\x89PNG\r\n\x1a\n not levels"), ["is not an .npz archive"]),
    (
        "truncated-archive",
        lambda p: (_npz(levels=LEVELS, num_levels=17)(p), p.write_bytes(p.read_bytes()[:200])),
        ["is not an .npz archive"],
    ),
    ("corrupt-member", _corrupt_member, ["cannot be read as an .npz archive"]),
    ("huge-claimed-shape", _huge_claim, ["more than the archive holds"]),
    ("num-levels-missing", _npz(levels=LEVELS), ["has no 'num_levels'", "dataset=NAME"]),
    ("num-levels-zero", _npz(levels=LEVELS, num_levels=0), ["num_levels=0 is invalid"]),
    ("num-levels-one", _npz(levels=LEVELS, num_levels=1), ["num_levels=1 is invalid"]),
    (
        "num-levels-vector",
        _npz(levels=LEVELS, num_levels=np.array([17, 17])),
        ["num_levels must be one integer >= 2 (a scalar)"],
    ),
    ("num-levels-fraction", _npz(levels=LEVELS, num_levels=16.5), ["num_levels=16.5 is invalid"]),
    ("num-levels-nan", _npz(levels=LEVELS, num_levels=np.nan), ["num_levels=nan is invalid"]),
    ("num-levels-bool", _npz(levels=LEVELS, num_levels=True), ["num_levels=True is invalid"]),
    ("num-levels-object", _object_num_levels, ["'num_levels' holds Python objects"]),
    (
        "levels-beyond-num-levels",
        _npz(levels=LEVELS + 20, num_levels=17),
        ["levels in [20, 20] lie outside [0, 17)", "num_levels"],
    ),
    ("negative-levels", _npz(levels=LEVELS - 1, num_levels=17), ["outside [0, 17)"]),
    (
        "uint8-beyond-num-levels",
        _npz(levels=np.full((4, 1, 8, 8), 200, np.uint8), num_levels=17),
        ["outside [0, 17)"],
    ),
]


@pytest.fixture
def score_cli(tmp_path, monkeypatch, capsys):
    """``genbench score <args>`` in this process: (exit code, stdout + stderr)."""
    from genbench import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")

    def invoke(*args):
        try:
            code = cli.main(["score", *args, f"paths.outputs={tmp_path / 'out'}"])
        except SystemExit as exit_:
            code = exit_.code
        out = capsys.readouterr()
        return code, out.out + out.err

    return invoke


@pytest.mark.parametrize(
    "write,expect", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
@pytest.mark.parametrize("side", ["input1", "input2"])
def test_bad_npz_input_is_one_clear_error(write, expect, side, score_cli, tmp_path):
    bad, good = tmp_path / "bad.npz", tmp_path / "good.npz"
    write(bad)
    np.savez(good, levels=np.zeros((4, 1, 8, 8), np.uint8))
    other = "input2" if side == "input1" else "input1"
    code, text = score_cli(f"{side}={bad}", f"{other}={good}")
    assert code == 2 and "Traceback" not in text, text[-3000:]
    assert f"{side}={str(bad)!r}" in text, text[-2000:]
    for part in expect:
        assert part in text, f"{part!r} not in:\n{text[-2000:]}"
    assert not (tmp_path / "out").exists()  # nothing written (no cache, no extractor)


def test_npz_level_counts_that_are_accepted(data, tmp_path):
    from genbench.eval.score import load_images

    np.savez(tmp_path / "u8.npz", levels=np.full((4, 8, 8), 255, np.uint8))
    assert load_images(str(tmp_path / "u8.npz"), data=None).num_levels == 256  # uint8 default
    np.savez(tmp_path / "k.npz", levels=LEVELS + 3, num_levels=np.float64(17.0))
    assert load_images(str(tmp_path / "k.npz"), data=None).num_levels == 17
    np.savez(tmp_path / "ds.npz", levels=LEVELS + 16)
    found = load_images(str(tmp_path / "ds.npz"), data=data)  # K from the dataset
    assert found.num_levels == 17 and found.levels.dtype == torch.uint8


def test_score_folder_skips_unusable_files(data, tmp_path, caplog):
    import logging
    import os
    import threading

    from genbench.eval.score import load_images

    folder = write_pngs(tmp_path / "imgs", ex.levels_to_uint8(data.test[:4], data.levels))
    os.mkfifo(folder / "pipe.png")
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(folder / "z16.png")
    result = {}
    with caplog.at_level(logging.WARNING):
        reader = threading.Thread(
            target=lambda: result.update(found=load_images(str(folder), data=None, key="input1")),
            daemon=True,
        )
        reader.start()
        reader.join(20)
    if reader.is_alive():  # blocked on the FIFO: give it a writer so the thread ends, and fail
        os.close(os.open(folder / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("reading the folder blocked on a FIFO")
    found = result["found"]
    assert found.levels.shape == (5, 1, 8, 8) and found.num_levels == 256
    assert torch.equal(
        found.levels[4, 0].flatten().long(), (torch.arange(64) * 1000 * 255 + 32767) // 65535
    )  # 16 bits, not 255s
    assert "pipe.png" in caplog.text and "FIFO" in caplog.text and "empty.png" in caplog.text
