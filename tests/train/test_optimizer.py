"""Optimizers from conf/optimizer: fused where the class offers it, unless the config says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from genbench.errors import ConfigError
from genbench.models.base import Phase
from genbench.train.loop import build_optimizer

CONF = Path(__file__).resolve().parents[2] / "conf"


def _conf(name: str, **extra: object) -> object:
    cfg = OmegaConf.load(CONF / "optimizer" / f"{name}.yaml")
    return OmegaConf.merge(cfg, extra)


def _steps(opt_cfg: object, steps: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 4))
    opt = build_optimizer(opt_cfg, Phase("main"), [w])
    for _ in range(steps):
        opt.zero_grad()
        (w.sin() ** 2).sum().backward()
        opt.step()
    return w.detach()


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_by_default_and_same_updates_as_the_loop(name):
    torch.manual_seed(0)
    opt = build_optimizer(_conf(name), Phase("main"), [torch.nn.Parameter(torch.ones(2))])
    assert opt.param_groups[0]["fused"] is True
    torch.testing.assert_close(_steps(_conf(name)), _steps(_conf(name, fused=False)))


def test_config_and_phase_settings_win_and_other_optimizers_build():
    assert OmegaConf.load(CONF / "optimizer" / "adam.yaml").fused is None  # overridable key
    off = build_optimizer(
        _conf("adam", fused=False), Phase("main"), [torch.nn.Parameter(torch.ones(2))]
    )
    assert not off.param_groups[0]["fused"]
    phase = Phase("g", optimizer={"fused": False, "lr": 0.5})
    per_phase = build_optimizer(_conf("adam"), phase, [torch.nn.Parameter(torch.ones(2))])
    assert not per_phase.param_groups[0]["fused"] and per_phase.param_groups[0]["lr"] == 0.5
    adamax = _conf("adam")
    adamax._target_ = "torch.optim.Adamax"  # no fused implementation: built without it
    assert isinstance(
        build_optimizer(adamax, Phase("main"), [torch.nn.Parameter(torch.ones(2))]),
        torch.optim.Adamax,
    )
    loop = build_optimizer(
        _conf("adam", foreach=True), Phase("main"), [torch.nn.Parameter(torch.ones(2))]
    )  # foreach asked for: not fused
    assert loop.param_groups[0]["foreach"] and not loop.param_groups[0]["fused"]
    with pytest.raises(ConfigError, match="weight_decay"):
        build_optimizer(
            _conf("adam", weight_decay=-1.0), Phase("main"), [torch.nn.Parameter(torch.ones(2))]
        )


def test_interpolations_resolve_in_the_whole_config():
    full = OmegaConf.create(
        {"trainer": {"base_lr": 0.25}, "optimizer": OmegaConf.to_container(_conf("adam"))}
    )
    full.optimizer.lr = "${trainer.base_lr}"
    opt = build_optimizer(full.optimizer, Phase("main"), [torch.nn.Parameter(torch.ones(2))])
    assert opt.param_groups[0]["lr"] == 0.25
