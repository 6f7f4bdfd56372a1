"""Checks before work starts: every packaged config passes them (no false alarm), and every model
class validates its sampler options without weights, by the rule its ``sample`` applies."""

from __future__ import annotations

import pytest
from conftest import DATASETS, MODELS, compose_cfg
from hydra.utils import get_class
from omegaconf import OmegaConf

from genbench.build import build_model
from genbench.errors import ConfigError
from genbench.models.base import GenerativeModel
from genbench.models.options import OptionError
from genbench.validation import validate

SAMPLERS = ["default", "ancestral", "ddim", "ode", "dpmpp", "unipc"]


def _hparams(cfg) -> dict:
    return {
        k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"
    }


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_passes_validation(model, tmp_path):
    validate(compose_cfg("train", [f"model={model}"], tmp_path))


@pytest.mark.parametrize("dataset", sorted(set(DATASETS) - {"folder"}))  # folder: root is ???
def test_every_dataset_config_passes_validation(dataset, tmp_path):
    validate(compose_cfg("train", [f"dataset={dataset}"], tmp_path))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_config_passes_validation_for_ddpm(sampler, tmp_path):
    validate(
        compose_cfg(
            "train", ["model=ddpm", f"sampler={sampler}", "eval.sampler_sweep=[10,50]"], tmp_path
        )
    )


@pytest.mark.parametrize("model", MODELS)
def test_model_validates_its_sampler_options_without_weights(model, tmp_path):
    cfg = compose_cfg("train", [f"model={model}"], tmp_path)
    cls = get_class(cfg.model._target_)
    assert cls.validate_sampler.__func__ is not GenerativeModel.validate_sampler.__func__, (
        f"{cls.__name__} does not declare its sampler options (validate_sampler)"
    )
    cls.validate_sampler({}, _hparams(cfg))
    with pytest.raises(OptionError, match=r"sampler\.not_an_option=1") as err:
        cls.validate_sampler({"not_an_option": 1}, _hparams(cfg))
    assert err.value.key == "sampler.not_an_option"


@pytest.mark.parametrize("model", MODELS)
def test_sample_refuses_what_validate_sampler_refuses(model, tmp_path):
    """The classmethod and the built model apply one rule (a non-finite option here)."""
    cfg = compose_cfg(
        "train",
        [f"model={model}", "model.sampler=null"] if model == "ddpm" else [f"model={model}"],
        tmp_path,
    )
    cls = get_class(cfg.model._target_)
    key = {
        "DDPM": ("eta", "name"),
        "EDM": ("rho",),
        "FlowMatching": ("rtol",),
        "DCGAN": ("truncation",),
        "SNGAN": ("truncation",),
        "WGANGP": ("truncation",),
        "StyleGAN2": ("psi",),
    }.get(cls.__name__, ("temperature",))
    bad = {key[0]: float("nan"), **({"name": "ddim"} if len(key) > 1 else {})}
    with pytest.raises(OptionError, match=f"sampler.{key[0]}=nan"):
        cls.validate_sampler(bad, _hparams(cfg))
    m = build_model(cfg.model, (2, 1, 1), 8)
    with pytest.raises(OptionError, match=f"sampler.{key[0]}=nan"):
        m.sample(1, **bad)
    with pytest.raises(OptionError, match=f"sampler.{key[0]}=nan"):
        m.resolve_sampler(**bad)


def test_option_error_is_a_value_error_and_a_config_error():
    err = OptionError("sampler.eta", -1, "sampler.eta=-1 is invalid")
    assert isinstance(err, ValueError) and isinstance(err, ConfigError)
    assert (err.key, err.value, str(err)) == ("sampler.eta", -1, "sampler.eta=-1 is invalid")


def test_ddpm_ode_options_follow_the_solver(tmp_path):
    cls = get_class("genbench.models.diffusion.ddpm.DDPM")
    hp = {"timesteps": 50}
    cls.validate_estimator(
        "ode", {"solver": "rk45", "steps": 100, "probes": 0}, hp, key="eval.estimator_options.ode"
    )  # rk45 does not use steps
    with pytest.raises(OptionError, match=r"eval.estimator_options.ode.steps=100 .* \[1, 50\]"):
        cls.validate_estimator(
            "ode", {"solver": "heun", "steps": 100}, hp, key="eval.estimator_options.ode"
        )
    with pytest.raises(OptionError, match="eval.estimator_options.ode.probes=-1"):
        cls.validate_estimator("ode", {"probes": -1}, hp, key="eval.estimator_options.ode")
