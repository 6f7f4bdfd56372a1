"""Fuzzing run folders: a run folder may come from someone else, so every file in it is read as
hostile data by ``genbench eval run=``, ``sample run=`` and ``leaderboard rebuild``.

Each case changes one file of a finished run: truncated, replaced by random bytes, by a folder,
by a link to a device, by the JSON value ``null``, made huge, or edited field by field with
hostile values; configs get YAML aliases, tags, interpolations and foreign ``_target_``s whose
building would write a marker file; checkpoints get pickles that would write it when loaded.
The command then runs in-process and must end cleanly: a success (rebuild always succeeds, naming
what it skipped), or a non-zero exit whose one-sentence message names the file, its key or the
run folder; never a traceback, never the marker, and a failed command changes no file.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import string
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fuzzing import (
    FAST,
    SLOW,
    assert_clean,
    changed,
    copy_outputs,
    finished_outputs,
    fuzz_settings,
    invoke,
    snapshot,
)
from hypothesis import given
from hypothesis import strategies as st

MARKER = "MARKER"  # a payload that runs writes <root>/MARKER
FILES = [
    "config.yaml",
    "status.json",
    "metrics.json",
    "record.json",
    "stats.jsonl",
    "curve.json",
    "nll_per_example.npy",
    "checkpoints/last.pt",
    "checkpoints/best.pt",
    "samples.png",
]
COMMANDS = {
    "eval": [
        "eval",
        "run={run}",
        "eval=fast",
        "eval.sample_metrics=false",
        "eval.nll_examples=8",
        "eval.n_samples=8",
        "eval.grid=4",
        "eval.batch_size=8",
    ],
    "sample": ["sample", "run={run}", "n=4"],
    "rebuild": ["leaderboard", "rebuild"],
}
#: files a successful command may write
WRITES = {
    "eval": {
        "metrics.json",
        "record.json",
        "samples.png",
        "status.json",
        "nll_per_example.npy",
        "curve.json",
    },
    "sample": {"samples_4.png", "samples_4.npz"},
    "rebuild": set(),
}


class _Touch:
    """Unpickling this object writes the marker (what a poisoned checkpoint would do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


class _System:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


# -- hostile values ------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.printable, max_size=20),
    st.sampled_from(["", "../../..", "/dev/zero", "${oc.env:HOME}", "\x00", "é" * 50]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(string.ascii_letters, max_size=6), inner, max_size=3),
    ),
    max_leaves=6,
)


def _paths(node: Any, where: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts and lists."""
    out = [where] if where else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*where, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*where, i))
    return out


def _keys(path: tuple) -> list[str]:
    """The dotted keys a message may name for a value at ``path`` (``model.ch_mult.0``,
    ``model.ch_mult``; a top-level key alone)."""
    dotted = [".".join(map(str, path[:i])) for i in range(2, len(path) + 1)]
    return dotted or [str(path[0])]


def _set(node: Any, path: tuple, value: Any, delete: bool = False) -> None:
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


# -- mutations: (name, function(file, marker, draw) -> keys a message may name, or None) -------
Mutation = Callable[[Path, Path, Any], list[str] | None]


def truncate(f: Path, marker: Path, draw: Any) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: draw(st.integers(0, max(len(data) - 1, 0)))])


def random_bytes(f: Path, marker: Path, draw: Any) -> None:
    f.write_bytes(draw(st.binary(min_size=0, max_size=4096)))


def flip_bytes(f: Path, marker: Path, draw: Any) -> None:
    data = bytearray(f.read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        if data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    f.write_bytes(bytes(data))


def folder(f: Path, marker: Path, draw: Any) -> None:
    f.unlink()
    f.mkdir()
    (f / "inside").write_text("x")


def device_link(f: Path, marker: Path, draw: Any) -> None:
    f.unlink()
    f.symlink_to(
        draw(
            st.sampled_from(
                ["/dev/zero", "/dev/urandom", "/proc/self/environ", "/nonexistent", "/etc"]
            )
        )
    )


def fifo(f: Path, marker: Path, draw: Any) -> None:
    f.unlink()
    os.mkfifo(f)


def huge(f: Path, marker: Path, draw: Any) -> None:
    with f.open("ab") as h:  # a sparse file: large without writing its bytes
        h.truncate(draw(st.sampled_from([17 * 2**20, 2**31 + 7])))


def json_literal(f: Path, marker: Path, draw: Any) -> None:
    f.write_text(
        draw(
            st.sampled_from(
                [
                    "null",
                    "[]",
                    "{}",
                    '"text"',
                    "1e999",
                    "NaN",
                    "-0",
                    "[" * 100_000,
                    '{"a": ' * 50_000,
                    "",
                    " \n",
                ]
            )
        )
    )


def edit_json(f: Path, marker: Path, draw: Any) -> list[str] | None:
    """One field (at any depth) replaced by a hostile value, or removed."""
    try:
        doc = json.loads(f.read_text())
    except ValueError:  # stats.jsonl: edit its first row
        lines = f.read_text().splitlines()
        row = json.loads(lines[0])
        path = draw(st.sampled_from(_paths(row)))
        _set(row, path, draw(values))
        f.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
        return None
    paths = _paths(doc)
    if not paths:
        f.write_text(json.dumps(draw(values)))
        return None
    path = draw(st.sampled_from(paths))
    _set(doc, path, draw(values), delete=draw(st.booleans()) and isinstance(path[-1], str))
    f.write_text(json.dumps(doc))  # NaN and Infinity are written as JSON's non-standard words
    return _keys(path)


def edit_yaml(f: Path, marker: Path, draw: Any) -> list[str]:
    """One config key (at any depth) replaced by a hostile value, or removed."""
    doc = yaml.safe_load(f.read_text())
    path = draw(st.sampled_from(_paths(doc)))
    _set(doc, path, draw(values), delete=draw(st.booleans()) and isinstance(path[-1], str))
    f.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return _keys(path)


TARGETS = [
    "genbench.rundir.Path.touch",
    "pathlib.Path.touch",
    "genbench.rundir.os.system",
    "os.system",
    "builtins.exec",
    "builtins.eval",
    "subprocess.run",
    "genbench.build.instantiate",
    "hydra.utils.instantiate",
    "torch.load",
    "genbench.models.vae.torch.load",
    "genbench.models.vae.VAE.__init__",
    "genbench.models.vae.VAE.__class__",
    "genbench.data.bundled.digits.__globals__",
    "genbench.models.vae.VAE ",
]


def foreign_target(f: Path, marker: Path, draw: Any) -> None:
    """A ``_target_`` (at the top of a node or nested inside one) whose building would write
    the marker."""
    doc = yaml.safe_load(f.read_text())
    target = draw(st.sampled_from(TARGETS))
    args = (
        [f"touch {marker}"]
        if "system" in target or "exec" in target or "eval" in target or "run" in target
        else [str(marker)]
    )
    node = {"_target_": target, "_args_": args}
    where = draw(
        st.sampled_from(
            [
                "model",
                "dataset",
                "optimizer",
                "model.hidden",
                "dataset.seed",
                "logger",
                "trainer",
                "new",
            ]
        )
    )
    parts = where.split(".")
    if (
        len(parts) == 1
        and parts[0] in doc
        and isinstance(doc[parts[0]], dict)
        and draw(st.booleans())
    ):
        doc[parts[0]].update(node)  # the node's own target replaced
    else:
        _set(doc, tuple(parts), node)
    f.write_text(yaml.safe_dump(doc))


def interpolation(f: Path, marker: Path, draw: Any) -> list[str]:
    doc = yaml.safe_load(f.read_text())
    path = draw(st.sampled_from([p for p in _paths(doc) if p]))
    _set(
        doc,
        path,
        draw(
            st.sampled_from(
                [
                    "${oc.env:HOME}",
                    "${oc.env:PATH,x}",
                    f"${{oc.create:{{_target_: pathlib.Path.touch, _args_: [{marker}]}}}}",
                    "${oc.decode:'{a: 1}'}",
                    "${now:%Y}",
                    "${hydra:runtime.cwd}",
                    "${model}",
                    "${..hidden}",
                    "${seed}",
                    "$${oc.env:HOME}",
                    "${",
                    "${oc.select:x,y}",
                    "\\${oc.env:HOME}",
                    "${oc.dict.keys:model}",
                ]
            )
        ),
    )
    f.write_text(yaml.safe_dump(doc))
    return _keys(path)


def yaml_text(f: Path, marker: Path, draw: Any) -> None:
    """A whole config file of hostile YAML: aliases, tags, odd keys, deep nesting."""
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}]\n"
        for i in range(9)
    )
    original = f.read_text()
    f.write_text(
        draw(
            st.sampled_from(
                [
                    laughs,
                    original + "\nextra: &x {a: 1}\nmore: *x\n",
                    f"!!python/object/apply:os.system ['touch {marker}']\n",
                    f"model: !!python/object/apply:pathlib.Path.touch [{marker}]\n",
                    "model: !!python/name:os.system\n",
                    "model: !!binary aGVsbG8=\n" + original,
                    "model: !!set {a, b}\n",
                    "? [a, b]\n: c\n",
                    "1: 2\n",
                    "[1, 2]\n",
                    "null\n",
                    "",
                    "a: " + "[" * 10_000 + "]" * 10_000 + "\n",
                    "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 2000)),
                    original.replace("\n", "\n\t", 3),
                    original + "\nmodel: {}\n",  # a duplicate key
                    "%YAML 9.9\n---\n" + original,
                    original + "\n...\n---\nsecond: document\n",
                    "\ufeff" + original,
                    original.encode("utf-16").decode("latin-1"),
                ]
            )
        )
    )


def bad_checkpoint(f: Path, marker: Path, draw: Any) -> None:
    """A checkpoint that is a pickle payload, or a real checkpoint with hostile contents."""
    kind = draw(
        st.sampled_from(
            [
                "payload-zip",
                "payload-pickle",
                "payload-nested",
                "edit",
                "nan",
                "wrong-shape",
                "extra-file",
                "not-a-dict",
            ]
        )
    )
    if kind == "payload-zip":
        torch.save({"model": draw(st.sampled_from([_Touch, _System]))(str(marker))}, f)
    elif kind == "payload-pickle":
        f.write_bytes(pickle.dumps({"model": _System(str(marker))}, protocol=2))
    elif kind == "payload-nested":
        ckpt = torch.load(f, weights_only=True)
        ckpt["state"] = {"step": _Touch(str(marker))}
        torch.save(ckpt, f)
    elif kind in ("edit", "nan", "wrong-shape"):
        ckpt = torch.load(f, weights_only=True)
        if kind == "edit":
            path = draw(st.sampled_from(_paths(ckpt)))
            _set(ckpt, path, draw(values), delete=draw(st.booleans()) and isinstance(path[-1], str))
        else:
            tensors = [
                p
                for p in _paths(ckpt)
                if isinstance(_get(ckpt, p), torch.Tensor) and _get(ckpt, p).is_floating_point()
            ]
            path = draw(st.sampled_from(tensors))
            t = _get(ckpt, path)
            _set(
                ckpt,
                path,
                torch.full_like(t, math.nan)
                if kind == "nan"
                else torch.zeros(tuple(s + 1 for s in t.shape) or (2,)),  # 0-d: a vector
            )
        torch.save(ckpt, f)
    elif kind == "extra-file":
        with zipfile.ZipFile(f, "a") as z:
            z.writestr("payload/data.pkl", pickle.dumps(_System(str(marker))))
    else:
        buf = io.BytesIO()
        torch.save(draw(st.sampled_from([[1, 2], "text", None, torch.zeros(3)])), buf)
        f.write_bytes(buf.getvalue())


def _get(node: Any, path: tuple) -> Any:
    for k in path:
        node = node[k]
    return node


COMMON: list[tuple[str, Mutation]] = [
    ("truncate", truncate),
    ("random-bytes", random_bytes),
    ("flip-bytes", flip_bytes),
    ("folder", folder),
    ("device-link", device_link),
    ("fifo", fifo),
    ("huge", huge),
]
BY_KIND: dict[str, list[tuple[str, Mutation]]] = {
    ".json": [("json-literal", json_literal), ("edit-json", edit_json)] * 3,
    ".jsonl": [("json-literal", json_literal), ("edit-json", edit_json)],
    ".yaml": [
        ("edit-yaml", edit_yaml),
        ("foreign-target", foreign_target),
        ("interpolation", interpolation),
        ("yaml-text", yaml_text),
    ]
    * 3,
    ".pt": [("bad-checkpoint", bad_checkpoint)] * 6,
    ".png": [],
    ".npy": [],
}


#: (command, file, mutation) classes with a known defect, each pinned by a strict xfail below;
#: the fuzz leaves them out until the fix lands (the xfail then passes and fails the suite)
KNOWN: set[tuple[str, str, str]] = set()


def _run(data: st.DataObject) -> None:
    command = data.draw(st.sampled_from(sorted(COMMANDS)), label="command")
    file = data.draw(st.sampled_from(FILES), label="file")
    name, mutation = data.draw(
        st.sampled_from(
            [m for m in COMMON + BY_KIND[Path(file).suffix] if (command, file, m[0]) not in KNOWN]
        ),
        label="mutation",
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out, run = copy_outputs(root / "out")
        marker = root / MARKER
        keys = mutation(run / file, marker, data.draw) or []
        before = snapshot(root)
        argv = [a.format(run=run) for a in COMMANDS[command]] + [f"paths.outputs={out}"]
        result = invoke(argv, root)
        context = f"genbench {' '.join(COMMANDS[command])} with {file} {name}"
        assert not marker.exists(), f"{context}: the payload ran"
        assert_clean(result, [Path(file).name, str(run), *keys], context=context)
        written = changed(before, snapshot(root))
        if command == "rebuild":
            assert not result.failed, f"{context}: rebuild stopped\n{result.text[-2000:]}"
            assert written <= {"out/leaderboard.sqlite"}, f"{context}: wrote {written}"
        elif result.failed:
            assert not written, f"{context}: a failed command changed {written}"
        else:
            allowed = {f"out/{run.relative_to(out)}/{n}" for n in WRITES[command]}
            assert written <= allowed | {"out/leaderboard.sqlite"}, f"{context}: wrote {written}"


@given(data=st.data())
@fuzz_settings(FAST)
def test_hostile_run_folder_files_are_read_as_data(data):
    finished_outputs()
    _run(data)


@pytest.mark.slow
@given(data=st.data())
@fuzz_settings(SLOW)
def test_hostile_run_folder_files_are_read_as_data_full(data):
    finished_outputs()
    _run(data)


@pytest.mark.parametrize("mutation", ["folder", "fifo", "device-link"])
def test_eval_replaces_a_planted_samples_png(mutation, tmp_path):
    """A folder, FIFO or link planted at samples.png: a clean error or a replaced file, and a
    link is never written through (the grid is written atomically)."""
    out, run = copy_outputs(tmp_path / "out")
    target = tmp_path / "victim.txt"
    target.write_text("not to be overwritten")
    f = run / "samples.png"
    f.unlink()
    if mutation == "folder":
        f.mkdir()
    elif mutation == "fifo":
        os.mkfifo(f)
    else:
        f.symlink_to(target)
    result = invoke(
        [a.format(run=run) for a in COMMANDS["eval"]] + [f"paths.outputs={out}"], tmp_path
    )
    assert_clean(result, ["samples.png"], context=mutation)
    assert target.read_text() == "not to be overwritten"


@pytest.mark.parametrize("file", ["metrics.json", "record.json"])
def test_eval_that_cannot_record_writes_nothing(file, tmp_path):
    out, run = copy_outputs(tmp_path / "out")
    (run / file).unlink()
    (run / file).mkdir()
    before = snapshot(tmp_path)
    result = invoke(
        [a.format(run=run) for a in COMMANDS["eval"]] + [f"paths.outputs={out}"], tmp_path
    )
    assert result.failed
    assert_clean(result, [file], context=file)
    assert not changed(before, snapshot(tmp_path))


def test_bad_value_in_a_stored_config_names_the_file(tmp_path):
    out, run = copy_outputs(tmp_path / "out")
    doc = yaml.safe_load((run / "config.yaml").read_text())
    doc["model"]["latent"] = [1, 2]
    (run / "config.yaml").write_text(yaml.safe_dump(doc))
    result = invoke(
        [a.format(run=run) for a in COMMANDS["sample"]] + [f"paths.outputs={out}"], tmp_path
    )
    assert result.failed and "model.latent" in result.text
    assert "config.yaml" in result.text


def test_template_run_evaluates_samples_and_rebuilds_cleanly(tmp_path):
    """The unchanged run: each command succeeds (so a refusal above is the file's doing)."""
    out, run = copy_outputs(tmp_path / "out")
    for command, argv in COMMANDS.items():
        result = invoke([a.format(run=run) for a in argv] + [f"paths.outputs={out}"], tmp_path)
        assert result.code in (0, None) and "Traceback" not in result.text, (
            f"{command}\n{result.text[-3000:]}"
        )
    shutil.rmtree(out)
