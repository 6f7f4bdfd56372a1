"""Every config in conf/ composes, and every bundled dataset builds with the declared shape."""

from __future__ import annotations

import pytest
from conftest import DATASETS, EXPERIMENTS, MODELS, compose_cfg
from hydra.utils import instantiate

BUNDLED = {"digits": ((1, 8, 8), 17), "mnist5k": ((1, 28, 28), 256)}
TOYS = [d for d in DATASETS if d.startswith("toy_")]


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_composes(model, tmp_path):
    cfg = compose_cfg("train", [f"model={model}"], tmp_path)
    assert cfg.model._target_.startswith("genbench.models.")
    assert cfg.run.model == model


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_config_composes(dataset, tmp_path):
    cfg = compose_cfg("train", [f"dataset={dataset}"], tmp_path)
    assert cfg.dataset._target_.startswith("genbench.data.")
    assert cfg.run.dataset == dataset


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_cfg("train", [f"experiment={experiment}"], tmp_path)
    assert int(cfg.trainer.max_steps) >= 1


@pytest.mark.parametrize("config", ["eval", "sample", "leaderboard"])
def test_command_configs_compose(config, tmp_path):
    cfg = compose_cfg(config, [], None)
    assert cfg.paths.outputs == "outputs"


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_dataset_shape_levels_and_splits(name, tmp_path):
    data = instantiate(compose_cfg("train", [f"dataset={name}"], tmp_path).dataset)
    shape, levels = BUNDLED[name]
    assert data.shape == shape and data.levels == levels
    assert int(data.train.max()) == levels - 1 and int(data.train.min()) == 0
    assert len(data.val) > 0 and len(data.test) > 0
    total = len(data.train) + len(data.val) + len(data.test)
    assert total == {"digits": 1797, "mnist5k": 5000}[name]
    assert data.num_classes == 10 and data.test_labels.shape == (len(data.test),)


@pytest.mark.parametrize("name", TOYS)
def test_toy_dataset_is_exact(name, tmp_path):
    data = instantiate(compose_cfg("train", [f"dataset={name}"], tmp_path).dataset)
    assert data.shape == (2, 1, 1) and data.levels == 64
    d = data.density
    assert abs(float(d.probs.sum()) - 1.0) < 1e-9
    # the empirical NLL of the exact test sample matches the true entropy
    nll = -float(d.log_prob(data.test).mean())
    assert abs(nll - d.entropy) < 0.1, (nll, d.entropy)
