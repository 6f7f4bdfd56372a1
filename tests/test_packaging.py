"""pyproject.toml lists every genbench subpackage (a missing one would not be installed), and the
runner, evaluator and leaderboard never import a model family."""

from __future__ import annotations

import re
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
