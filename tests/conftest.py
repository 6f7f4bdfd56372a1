"""Shared fixtures: the real config tree composed with Hydra's compose API, shrunk for tests."""

from __future__ import annotations

import importlib.resources
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

torch.set_num_threads(1)

#: example packages that tests install themselves (tests/test_tutorial.py); not collected here
collect_ignore = ["fixtures"]

CONF = importlib.resources.files("genbench.conf")
MODELS = sorted(p.name[:-5] for p in (CONF / "model").iterdir() if p.name.endswith(".yaml"))
DATASETS = sorted(p.name[:-5] for p in (CONF / "dataset").iterdir() if p.name.endswith(".yaml"))
EXPERIMENTS = sorted(
    p.name[:-5] for p in (CONF / "experiment").iterdir() if p.name.endswith(".yaml")
)


def compose_cfg(config: str, overrides: list[str], outputs: Path | None = None):
    """Compose ``config`` with overrides, set HydraConfig (for ``${hydra:...}``) and, when
    ``outputs`` is given, point paths.outputs / the run dir there."""
    GlobalHydra.instance().clear()
    with initialize_config_module("genbench.conf", version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if outputs is not None:
            cfg.paths.outputs = str(outputs)
            if "run_dir" in cfg.paths:
                cfg.paths.run_dir = str(outputs / "runs" / "test_run")
        del cfg["hydra"]
    return cfg


@pytest.fixture
def train_cfg(tmp_path):
    """``train_cfg(*overrides)`` -> a smoke-sized train config writing under tmp_path."""

    def make(*overrides: str, outputs: Path | None = None):
        return compose_cfg("train", ["experiment=smoke", *overrides], outputs or tmp_path / "out")

    return make


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``genbench <args>`` in a subprocess; returns the completed process (text output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "genbench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def float64():
    """Run the test in float64 (the default dtype is restored afterwards); modules of closed-form
    checks use it through ``pytestmark = pytest.mark.usefixtures("float64")``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def invoke_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``genbench <argv>`` in this process: (exit code, stdout + stderr)."""
    from genbench import cli

    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out + out.err
