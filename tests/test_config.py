"""Every config in conf/ composes, and every bundled dataset builds with the declared shape."""

from __future__ import annotations

import pytest
from conftest import CONF, DATASETS, EXPERIMENTS, MODELS, compose_cfg
from omegaconf import OmegaConf

from genbench.build import build_model, load_data

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


@pytest.mark.parametrize("config", ["train", "eval", "sample", "leaderboard", "score"])
def test_command_configs_compose(config, tmp_path):
    cfg = compose_cfg(config, [], None)
    assert (cfg.paths.outputs, cfg.paths.data) == ("outputs", "data")  # conf/paths/default.yaml


@pytest.mark.parametrize("config", ["train", "eval", "sample", "score"])
def test_device_is_one_group_for_every_command(config):
    """`genbench <command> device=cpu` picks conf/device/cpu.yaml (score: once a Hydra error)."""
    for choice in ("cpu", "cuda", "auto"):
        device = compose_cfg(config, [f"device={choice}"], None).device
        assert device.name == choice
        assert set(device) == set(OmegaConf.load(CONF / "device" / "auto.yaml"))
        if config in ("eval", "sample"):  # re-evaluate in full precision unless asked
            assert device.precision == "fp32"
    assert compose_cfg(config, ["device.name=cpu"], None).device.name == "cpu"


def test_eval_and_score_share_one_definition_of_the_metric_options():
    shared = OmegaConf.load(CONF / "_fidelity.yaml")
    own = {*OmegaConf.load(CONF / "eval" / "default.yaml"), *OmegaConf.load(CONF / "score.yaml")}
    assert not set(shared) & own  # defined in conf/_fidelity.yaml only
    ev, sc = compose_cfg("eval", [], None).eval, compose_cfg("score", [], None)
    for key, value in shared.items():
        assert ev[key] == sc[key] == value, key
    fast = compose_cfg("eval", ["eval=fast"], None).eval
    assert fast.kid_subset_size == 500 and list(fast.metrics) == list(shared.metrics)


def test_trainer_paths_and_scheduler_are_config_groups(tmp_path):
    cfg = compose_cfg("train", [], tmp_path)
    assert dict(cfg.trainer) == dict(OmegaConf.load(CONF / "trainer" / "default.yaml"))
    assert "warmup_steps" not in cfg.trainer  # now scheduler.warmup_steps
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.ConstantLR"
    assert cfg.scheduler.warmup_steps == 0 and cfg.paths.run_dir.endswith("test_run")
    assert list(cfg.dataset.augment) == []  # augmentation is off by default


@pytest.mark.parametrize("model", ["dcgan", "sngan", "wgan_gp", "stylegan2"])
def test_gans_name_their_discriminator_steps_d_steps(model, tmp_path):
    cfg = compose_cfg("train", [f"model={model}", "model.d_steps=3"], tmp_path)
    assert not {"n_dis", "n_critic"} & set(cfg.model)
    built = build_model(cfg.model, (1, 8, 8), 17)
    assert built.phases[0].repeat == 3 and built.d_steps == 3


@pytest.mark.parametrize("model,old", [("sngan", "n_dis"), ("wgan_gp", "n_critic")])
def test_old_spellings_of_d_steps_still_build_with_a_warning(model, old, tmp_path):
    """Run folders written before the rename hold model.n_dis / model.n_critic."""
    cfg = OmegaConf.to_container(compose_cfg("train", [f"model={model}"], tmp_path).model)
    del cfg["d_steps"]
    with pytest.warns(FutureWarning, match=f"model.{old} is deprecated.*model.d_steps"):
        built = build_model(OmegaConf.create({**cfg, old: 4}), (1, 8, 8), 17)
    assert built.phases[0].repeat == 4
    with pytest.warns(FutureWarning), pytest.raises(Exception, match="disagree"):
        build_model(OmegaConf.create({**cfg, old: 4, "d_steps": 2}), (1, 8, 8), 17)


def test_renamed_command_line_keys_are_rewritten(capsys):
    from genbench.cli import rename_overrides

    assert rename_overrides(
        ["trainer.warmup_steps=50", "+model.n_dis=5", "model.n_critic=1,5", "trainer.max_steps=3"]
    ) == [
        "scheduler.warmup_steps=50",
        "model.d_steps=5",
        "model.d_steps=1,5",
        "trainer.max_steps=3",
    ]
    err = capsys.readouterr().err
    assert "trainer.warmup_steps is deprecated" in err and "use model.d_steps" in err


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_dataset_shape_levels_and_splits(name, tmp_path):
    data = load_data(compose_cfg("train", [f"dataset={name}"], tmp_path).dataset)
    shape, levels = BUNDLED[name]
    assert data.shape == shape and data.levels == levels
    assert int(data.train.max()) == levels - 1 and int(data.train.min()) == 0
    assert len(data.val) > 0 and len(data.test) > 0
    total = len(data.train) + len(data.val) + len(data.test)
    assert total == {"digits": 1797, "mnist5k": 5000}[name]
    assert data.num_classes == 10 and data.test_labels.shape == (len(data.test),)


@pytest.mark.parametrize("name", TOYS)
def test_toy_dataset_is_exact(name, tmp_path):
    data = load_data(compose_cfg("train", [f"dataset={name}"], tmp_path).dataset)
    assert data.shape == (2, 1, 1) and data.levels == 64
    d = data.density
    assert abs(float(d.probs.sum()) - 1.0) < 1e-9
    # the empirical NLL of the exact test sample matches the true entropy
    nll = -float(d.log_prob(data.test).mean())
    assert abs(nll - d.entropy) < 0.1, (nll, d.entropy)


@pytest.mark.parametrize("model", ["ddpm", "pixelcnn", "vae", "dcgan", "realnvp", "glow"])
def test_keys_of_the_conditional_mode_leave_an_unconditional_hash_as_it_was(model, tmp_path):
    from omegaconf import open_dict

    from genbench.build import CONDITIONAL_EVAL_KEYS, CONDITIONAL_KEYS, config_hash

    cfg = compose_cfg("train", [f"model={model}"], tmp_path)
    before = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(before):
        for key in CONDITIONAL_KEYS:
            before.model.pop(key, None)  # a config written before these keys existed
        for key in CONDITIONAL_EVAL_KEYS:
            before.eval.pop(key, None)
    assert config_hash(cfg) == config_hash(before)
    with open_dict(cfg):
        cfg.model.conditional = True
    assert config_hash(cfg) != config_hash(before)


def test_every_model_yaml_declares_conditional_so_the_key_can_be_set():
    """``model.conditional=true`` works on the command line (no ``+``) for every model: the
    models without a conditional mode refuse it with a message instead of Hydra's struct error."""
    import yaml

    for path in sorted((CONF / "model").glob("*.yaml")):
        assert yaml.safe_load(path.read_text()).get("conditional") is False, path.name
