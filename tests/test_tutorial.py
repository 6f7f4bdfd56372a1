"""docs/your-model.md end to end: the example package (tests/fixtures/genbench-tinylab) installs,
passes the conformance kit, trains with `genbench train model=histogram`, evaluates from its run
folder, is listed by `genbench families` and ranked in the leaderboard beside genbench's models,
while a run folder naming an unregistered class is still refused.

The commands are read from the tutorial's `run:` blocks. The fast test installs the package the
way `pip install -e .` leaves it for ``importlib.metadata`` (a dist-info with the entry points of
its pyproject.toml, and its source folder on ``sys.path``) and runs the `kit` and `smoke` blocks
in this process; the slow test installs it with pip (``--target``, so the venv stays clean) and
runs the `kit`, `smoke` and `compare` blocks verbatim through bash. The `install` block
(``pip install -e .``) is the one command no test runs as written: it would change the venv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import invoke_cli

from genbench import plugins, trust
from genbench.leaderboard.store import Store
from genbench.testing import CHECKS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "your-model.md"
PACKAGE = ROOT / "tests" / "fixtures" / "genbench-tinylab"
BLOCKS = ("install", "kit", "smoke", "compare")


def tutorial_blocks() -> dict[str, str]:
    """The tutorial's command blocks by tag (a ```bash block after ``<!-- run: tag -->``)."""
    return dict(re.findall(r"<!-- run: (\w+) -->\n```bash\n(.*?)```", DOC.read_text(), re.S))


def commands(block: str) -> list[str]:
    """The command lines of a tutorial block."""
    lines = [ln.strip() for ln in tutorial_blocks()[block].splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def install_editable(package: Path, site: Path) -> None:
    """What ``pip install -e <package>`` leaves for ``importlib.metadata`` in ``site``: a
    dist-info folder with the name, version and entry points of the package's pyproject.toml."""
    meta = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n"
    )
    lines = []
    for group, entries in meta["entry-points"].items():
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in entries.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))


def _forget_plugins() -> None:
    plugins.plugin_models.cache_clear()
    trust.allowed_targets.cache_clear()
    for name in [m for m in sys.modules if m.split(".")[0] in ("tinylab", "mylab_unregistered")]:
        del sys.modules[name]


@pytest.fixture
def tinylab(tmp_path, monkeypatch):
    """genbench-tinylab installed editable (see :func:`install_editable`); yields the site
    folder holding its dist-info."""
    site = tmp_path / "site"
    install_editable(PACKAGE, site)
    monkeypatch.syspath_prepend(str(PACKAGE))
    monkeypatch.syspath_prepend(str(site))
    _forget_plugins()
    yield site
    _forget_plugins()


def _load(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(f"_tutorial_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tutorial_shows_the_files_of_the_example():
    """Every code block marked ``<!-- file: path -->`` is a verbatim excerpt of that file of the
    example package, and the `run:` blocks are the ones the tests below run."""
    text = DOC.read_text()
    shown = re.findall(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", text, re.S)
    assert {path for path, _ in shown} == {
        "tinylab/histogram.py",
        "tinylab/conf/model/histogram.yaml",
        "pyproject.toml",
        "tests/test_histogram.py",
    }
    for path, block in shown:
        assert block in (PACKAGE / path).read_text(), f"the tutorial's {path} is out of date"
    assert tuple(tutorial_blocks()) == BLOCKS
    assert "docs/your-model.md" in (ROOT / "README.md").read_text()


def test_tutorial_smoke_path(tinylab, tmp_path, monkeypatch, capsys):
    """install and kit blocks, then the smoke block command by command, in this process."""
    assert commands("install") == ["pip install -e ."]  # done by the tinylab fixture
    assert commands("kit") == ["python -m pytest"]  # collects the package's tests/ (below)
    kit = _load(PACKAGE / "tests" / "test_histogram.py")
    for check in CHECKS:
        kit.test_histogram_obeys_the_genbench_contract(check)
    kit.test_its_yaml_builds_it_as_genbench_train_does()

    monkeypatch.chdir(tmp_path)
    printed = {}
    for line in commands("smoke"):
        argv = shlex.split(line)
        assert argv[0] == "genbench"
        code, out = invoke_cli(argv[1:], capsys)
        assert code == 0, f"{line}\n{out[-3000:]}"
        printed[" ".join(argv[1:3])] = out
    assert re.search(
        r"histogram +│ autoregressive +│ exact +│ – +│ tinylab\.histogram\.Histogram +│ "
        r"genbench-tinylab 0\.1\.0",
        printed["families"],
    ), printed["families"]

    outputs = tmp_path / "outputs"
    runs = {r["model"]: r for r in Store(outputs / "leaderboard.sqlite").runs()}
    assert set(runs) == {"histogram", "pixelcnn"}
    mine = runs["histogram"]
    assert (mine["family"], mine["likelihood"], mine["status"]) == (
        "autoregressive",
        "exact",
        "finished",
    )
    assert mine["run_dir"] == str(outputs / "runs" / "histogram-smoke")
    assert mine["versions"]["genbench-tinylab"] == "0.1.0"
    bpd = {m["name"]: m for m in mine["metrics"]}["bpd"]
    assert bpd["kind"] == "exact" and 0 < bpd["value"] <= 4.1  # log2 17 = 4.09: uniform
    evaluated = json.loads((outputs / "runs" / "histogram-smoke" / "metrics.json").read_text())
    assert {m["name"]: m["value"] for m in evaluated["metrics"]}["bpd"] == bpd["value"]
    table = printed["leaderboard dataset=digits"]
    assert re.search(r"histogram .*autoregressive .*exact", table), table
    assert re.search(r"pixelcnn .*autoregressive .*exact", table), table

    # a run folder naming a class that no installed package registers is refused before import
    (tmp_path / "mylab_unregistered.py").write_text(
        "from tinylab.histogram import Histogram\n\n\nclass Copy(Histogram):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    forged = tmp_path / "forged"
    shutil.copytree(outputs / "runs" / "histogram-smoke", forged)
    config = forged / "config.yaml"
    config.write_text(
        config.read_text().replace("tinylab.histogram.Histogram", "mylab_unregistered.Copy")
    )
    code, out = invoke_cli(["eval", f"run={forged}"], capsys)
    assert code == 2 and "_target_='mylab_unregistered.Copy' is not allowed" in out, out
    assert "Traceback" not in out and "mylab_unregistered" not in sys.modules

    # and once the package is uninstalled, its own runs are refused too
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tinylab)])
    _forget_plugins()
    code, out = invoke_cli(["eval", "run=outputs/runs/histogram-smoke"], capsys)
    assert code == 2 and "_target_='tinylab.histogram.Histogram' is not allowed" in out, out


@pytest.mark.slow
def test_tutorial_verbatim_after_pip_install(tmp_path):
    """A copy of the package installed by pip (a real build of its pyproject.toml in pip's
    isolated build environment, whose setuptools and wheel pip fetches from its index; installed
    into a ``--target`` folder on PYTHONPATH), then the kit, smoke and compare blocks through
    bash."""
    work = tmp_path / "genbench-tinylab"
    shutil.copytree(
        PACKAGE, work, ignore=shutil.ignore_patterns("__pycache__", "outputs", ".pytest_cache")
    )
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(work)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    script = "\n".join(["set -euo pipefail", *(tutorial_blocks()[b] for b in BLOCKS[1:])])
    proc = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=3000
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"\d+ passed", proc.stdout), proc.stdout[-3000:]
    runs = Store(work / "outputs" / "leaderboard.sqlite").runs()
    assert {r["model"] for r in runs if r["family"] == "data"} == {"data"}  # the real-data floor
    runs = [r for r in runs if r["family"] != "data"]
    assert sorted((r["model"], r["steps"]) for r in runs) == [
        ("histogram", 4),
        ("histogram", 300),
        ("pixelcnn", 4),
        ("pixelcnn", 300),
    ]
    bpd = {
        (r["model"], r["steps"]): {m["name"]: m["value"] for m in r["metrics"]}["bpd"] for r in runs
    }
    assert bpd[("pixelcnn", 300)] < bpd[("histogram", 300)] < 4.09  # beaten; beats uniform
    fid = [
        m for r in runs if r["steps"] == 300 for m in r["metrics"] if m["name"].startswith("fid@")
    ]
    assert len(fid) == 2
    print(proc.stdout[-6000:])
