"""pyproject.toml lists every genbench subpackage (a missing one would not be installed), the
runner, evaluator and leaderboard never import a model family, and nothing imports upward."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_and_config_folder_is_listed():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "genbench").rglob("__init__.py")
    }
    conf = {
        ".".join(("genbench", "conf", *p.relative_to(ROOT / "conf").parts))
        for p in [ROOT / "conf", *(ROOT / "conf").rglob("*")]
        if p.is_dir() and p.name != "__pycache__"
    }
    assert found | conf == listed, sorted(listed ^ (found | conf))


def test_shared_code_imports_no_family():
    family_modules = re.compile(r"genbench\.models\.(vae|autoregressive|flows|gan|diffusion)")
    for pkg in ("train", "eval", "leaderboard"):
        for path in (ROOT / "genbench" / pkg).rglob("*.py"):
            assert not family_modules.search(path.read_text()), f"{path} imports a family"


def test_train_path_starts_without_torch_fidelity():
    """torch-fidelity (with torchvision and torch._dynamo) adds ~1.3 s to every process start;
    the train command imports it only when sample metrics are computed."""
    code = (
        "import sys, genbench.cli, genbench.commands, genbench.rundir; "
        "print(sorted(m for m in ('torch_fidelity', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout


# -- layering: what each layer may reach, directly or through other genbench modules -----------
MODULES = {
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
    for p in (ROOT / "genbench").rglob("*.py")
}
UPPER = (
    "genbench.train",
    "genbench.eval",
    "genbench.leaderboard",
    "genbench.commands",
    "genbench.record",
    "genbench.build",
    "genbench.rundir",
    "genbench.cli",
)
LAYERS = {  # module or package -> the modules it must never load
    "genbench.eval": (
        "genbench.train",
        "genbench.commands",
        "genbench.record",
        "genbench.build",
        "genbench.cli",
    ),
    "genbench.distributed": UPPER,
    "genbench.data": UPPER,
    "genbench.models": UPPER,
    "genbench.nn": UPPER,
}


def _runtime_imports(module: str) -> set[str]:
    """The genbench modules ``module`` imports when it runs (imports under ``if TYPE_CHECKING``
    left out), each with its parent packages (their ``__init__`` runs first)."""
    tree = ast.parse(MODULES[module].read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            }
    parts = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}
    return {n for n in parts if n in MODULES}


def _reach(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        for dep in _runtime_imports(m) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_nothing_imports_upward():
    """``genbench.eval`` needs nothing from ``genbench.train`` (the rank and gather helpers both
    use are ``genbench.distributed``), and data, models, nn and the process-group helpers load
    none of the runner, evaluator, leaderboard or commands."""
    for layer, forbidden in LAYERS.items():
        members = [m for m in MODULES if m == layer or m.startswith(layer + ".")]
        assert members, layer
        for module in members:
            bad = sorted(
                d for d in _reach(module) if any(d == f or d.startswith(f + ".") for f in forbidden)
            )
            assert not bad, f"{module} loads {bad}"
