"""Docstrings state tensor shapes, and write the batch as ``[N]`` (STYLE.md, section 2.8).

Rule: every public function or method in ``genbench/`` (name without a leading underscore, nested
ones included) whose signature mentions ``Tensor`` has a docstring that states a shape: a bracketed
shape such as ``[N, C, H, W]`` or ``[N]``, or ``(C, H, W)``. ``forward`` and ``inverse`` may leave
the shapes to their class docstring. No docstring or comment writes the batch as ``[B``.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "genbench"

SHAPE = re.compile(r"\[[^\]]*\]|\(C, H, W\)")
BATCH_B = re.compile(r"\[B\b")

Def = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


@functools.cache
def _sources() -> tuple[tuple[str, str, ast.Module], ...]:
    """(path relative to the repository, text, syntax tree) of every module in ``genbench/``."""
    return tuple(
        (path.relative_to(ROOT).as_posix(), text, ast.parse(text, filename=str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
        for text in [path.read_text(encoding="utf-8")]
    )


def _defs(
    node: ast.AST, prefix: str = "", cls: ast.ClassDef | None = None
) -> Iterator[tuple[str, Def, ast.ClassDef | None]]:
    """Every function and class under ``node`` with its qualified name and the class that
    directly holds it (``None`` for functions outside a class body)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, Def):
            name = f"{prefix}{child.name}"
            yield name, child, cls
            inner = child if isinstance(child, ast.ClassDef) else None
            yield from _defs(child, f"{name}.", inner)
        else:
            yield from _defs(child, prefix, cls)


def _states_shape(node: ast.AST | None) -> bool:
    return node is not None and bool(SHAPE.search(ast.get_docstring(node) or ""))


@functools.cache
def _missing_shapes() -> frozenset[tuple[str, str]]:
    missing = set()
    for file, _, tree in _sources():
        for name, node, cls in _defs(tree):
            if isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            signature = ast.unparse(node.args) + (ast.unparse(node.returns) if node.returns else "")
            if "Tensor" not in signature or _states_shape(node):
                continue
            if node.name in ("forward", "inverse") and _states_shape(cls):
                continue
            missing.add((file, name))
    return frozenset(missing)


@functools.cache
def _batch_b() -> frozenset[tuple[str, str]]:
    found = set()
    for file, text, tree in _sources():
        spans = [(node.lineno, node.end_lineno, name) for name, node, _ in _defs(tree)]

        def owner(line: int, spans: list = spans) -> str:
            inside = [(start, name) for start, end, name in spans if start <= line <= end]
            return max(inside)[1] if inside else "<module>"

        if BATCH_B.search(ast.get_docstring(tree) or ""):
            found.add((file, "<module>"))
        for name, node, _ in _defs(tree):
            if BATCH_B.search(ast.get_docstring(node) or ""):
                found.add((file, name))
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT and BATCH_B.search(tok.string):
                found.add((file, owner(tok.start[0])))
    return frozenset(found)


def test_public_tensor_functions_state_shapes():
    new = sorted(_missing_shapes())
    assert not new, (
        f"{len(new)} public function(s) take or return tensors but their docstring states no "
        "shape (write e.g. ``[N, C, H, W]``, ``[N]`` nats, int64 levels in ``[0, K)``):\n"
        + "\n".join(f"  {file}: {name}" for file, name in new)
    )


def test_batch_is_written_n():
    new = sorted(_batch_b())
    assert not new, (
        f"{len(new)} docstring(s) or comment(s) write the batch as ``[B``; genbench writes it "
        "``[N]`` / ``[N, ...]``:\n" + "\n".join(f"  {file}: {name}" for file, name in new)
    )
