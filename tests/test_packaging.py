"""pyproject.toml lists every genbench subpackage (a missing one would not be installed), and the
runner, evaluator and leaderboard never import a model family."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "genbench").rglob("__init__.py")}
    assert found | {"genbench.conf"} == listed, sorted(found ^ (listed - {"genbench.conf"}))


def test_shared_code_imports_no_family():
    family_modules = re.compile(r"genbench\.models\.(vae|autoregressive|flows|gan|diffusion)")
    for pkg in ("train", "eval", "leaderboard"):
        for path in (ROOT / "genbench" / pkg).rglob("*.py"):
            assert not family_modules.search(path.read_text()), f"{path} imports a family"


def test_train_path_starts_without_torch_fidelity():
    """torch-fidelity (with torchvision and torch._dynamo) adds ~1.3 s to every process start;
    the train command imports it only when sample metrics are computed."""
    code = ("import sys, genbench.cli, genbench.commands, genbench.rundir; "
            "print(sorted(m for m in ('torch_fidelity', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
