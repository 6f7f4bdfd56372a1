"""Nothing written is lost or misreported: ``out=`` never overwrites a leaderboard, a run's files or
a folder; a leaderboard of another schema version is refused; a full disk while sampling or writing
the leaderboard is one clear error and leaves no partial or zero-byte file; read-only outputs can be
viewed, and writing there says it cannot; ``format=json`` prints valid JSON whatever is logged.

Full disks are real small tmpfs mounts where this process may mount (root with CAP_SYS_ADMIN), and
otherwise ENOSPC injected into the final fsync (the leaderboard case needs the real file system).
Read-only outputs are a tmpfs remounted read-only (root, for whom chmod does not stop writes) or a
chmod-ed copy (other users).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf

from genbench import cli
from genbench.commands import train_command
from genbench.eval.metric import Metric
from genbench.eval.score import format_scores
from genbench.leaderboard.store import RunRecord, Store, StoreError

SMOKE = ["experiment=smoke", "eval.sample_metrics=false", "eval.nll_examples=16"]


@dataclass
class World:
    root: Path
    out: Path  # paths.outputs: leaderboard.sqlite with one run, runs/...
    run: Path  # the finished run
    other: Path  # a second run folder (a copy)
    empty: Path  # an empty folder
    file: Path  # a regular file


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outputs") / "out"
    assert train_command(compose_cfg("train", SMOKE, out)).status == "finished"
    return out


def copy_outputs(template: Path, out: Path) -> Path:
    """Copy an outputs folder; its run's config.yaml points at the copy. Returns the run."""
    shutil.copytree(template, out)
    (run,) = [p.parent for p in (out / "runs").rglob("config.yaml")]
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.paths.run_dir, cfg.paths.outputs = str(run), str(out)
    OmegaConf.save(cfg, run / "config.yaml")
    return run


@pytest.fixture
def world(template, tmp_path, monkeypatch) -> World:
    monkeypatch.chdir(tmp_path)
    run = copy_outputs(template, tmp_path / "out")
    other = run.parent / "other_run"
    shutil.copytree(run, other)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("a regular file\n")
    return World(tmp_path, tmp_path / "out", run, other, tmp_path / "empty", tmp_path / "file")


def invoke(argv: list[str], capsys) -> tuple[int, str, str]:
    """``genbench <argv>`` in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def strict_loads(text: str):
    """``json.loads`` that rejects NaN / Infinity (not JSON, though Python writes them)."""

    def refuse(token: str):
        raise ValueError(f"{token} is not valid JSON")

    return json.loads(text, parse_constant=refuse)


def record(store: Store, run_id: str, config: dict | None = None, value: float = 2.5) -> None:
    store.record(
        RunRecord(
            run_id,
            "2026-01-01T00:00:00",
            "vae",
            "vae",
            "elbo",
            "digits",
            10,
            5,
            80,
            1.5,
            "cpu",
            "finished",
            f"/r/{run_id}",
            run_id,
            config or {},
        ),
        [Metric("bpd", value, "bound", "test", 3, "bits/dim")],
    )


# ------------------------------------------------------------------ out= never overwrites
def board(*extra: str):
    return lambda w: ["leaderboard", f"paths.outputs={w.out}", *(e.format(w=w) for e in extra)]


def sample(*extra: str):
    return lambda w: [
        "sample",
        f"run={w.run}",
        f"paths.outputs={w.out}",
        "n=4",
        "eval=fast",
        *(e.format(w=w) for e in extra),
    ]


OUT_CASES = [
    (
        "md-over-leaderboard",
        board("format=md", "out={w.out}/leaderboard.sqlite"),
        "is a leaderboard database",
    ),
    (
        "csv-over-leaderboard-copy",
        board("format=csv", "out={w.root}/backup.db"),
        "is a leaderboard database",
    ),
    (
        "json-over-leaderboard-wal",
        board("format=json", "out={w.out}/leaderboard.sqlite-wal"),
        "is a leaderboard database",
    ),
    (
        "html-over-leaderboard",
        board("format=html", "out={w.out}/leaderboard.sqlite"),
        "is a leaderboard database",
    ),
    (
        "csv-over-run-metrics",
        board("format=csv", "out={w.run}/metrics.json"),
        "inside the run folder",
    ),
    (
        "json-over-checkpoint",
        board("format=json", "out={w.run}/checkpoints/last.pt"),
        "inside the run folder",
    ),
    ("table-to-new-file-in-run", board("out={w.run}/board.md"), "inside the run folder"),
    ("md-to-folder", board("format=md", "out={w.empty}"), "is a folder"),
    ("html-to-folder", board("format=html", "out={w.empty}"), "is a folder"),
    ("plots-into-file", board("plot=loss", "out={w.file}"), "is a file, not a folder"),
    ("plots-into-run", board("plot=loss", "out={w.run}"), "is the run folder"),
    (
        "plots-into-checkpoints",
        board("plot=loss", "out={w.run}/checkpoints"),
        "inside the run folder",
    ),
    ("sample-into-other-run", sample("out={w.other}"), "is the run folder"),
    ("sample-over-leaderboard", sample("out={w.out}/leaderboard.sqlite"), "is a file"),
    ("sample-into-file", sample("out={w.file}"), "is a file, not a folder"),
]


@pytest.mark.parametrize("argv,expect", [c[1:] for c in OUT_CASES], ids=[c[0] for c in OUT_CASES])
def test_out_never_overwrites_a_leaderboard_run_files_or_a_folder(argv, expect, world, capsys):
    shutil.copy(world.out / "leaderboard.sqlite", world.root / "backup.db")
    before = snapshot(world.root)
    code, out, err = invoke(argv(world), capsys)
    assert code == 2 and "Traceback" not in out + err, (out + err)[-3000:]
    assert expect in err and "out=" in err, err[-2000:]
    assert snapshot(world.root) == before, "a file was written or changed"


def test_out_writes_new_files_and_replaces_its_own_export(world, capsys):
    target = world.root / "exports" / "board.md"
    for _ in range(2):
        code, _, err = invoke(board("format=md", f"out={target}")(world), capsys)
        assert code == 0, err[-2000:]
    assert "| vae" in target.read_text()
    code, _, err = invoke(sample(f"out={world.run}")(world), capsys)  # its own folder is fine
    assert code == 0, err[-2000:]
    assert (world.run / "samples_4.png").stat().st_size > 0
    assert not [p for p in world.root.rglob(".*.tmp")]


# ------------------------------------------------------------------ schema version
@pytest.mark.parametrize(
    "version,expect",
    [
        (3, "written by a newer genbench"),
        (0, "unknown leaderboard schema version 0"),
        (-7, "unknown leaderboard schema version -7"),
    ],
)
def test_leaderboard_of_another_schema_version_is_refused(version, expect, world, capsys):
    path = world.out / "leaderboard.sqlite"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version={version}")
    con.commit()
    con.close()
    before = snapshot(world.root)
    with pytest.raises(StoreError, match=expect):
        Store(path).runs()
    with pytest.raises(StoreError, match=expect):
        record(Store(path), "new")
    code, out, err = invoke(board()(world), capsys)
    assert code == 2 and expect in err and "left untouched" in err
    assert "Traceback" not in out + err
    assert snapshot(world.root) == before


# ------------------------------------------------------------------ full disk
class SmallDisk:
    """A real tmpfs of ``size`` that ``fill()`` fills up, and ``free()`` empties again."""

    def __init__(self, where: Path, size: str) -> None:
        self.path = where
        where.mkdir()
        if os.geteuid() != 0:
            pytest.skip("a real small file system needs root to mount a tmpfs")
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if mount.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip()})")

    def fill(self) -> None:
        with open(self.path / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC

    def free(self) -> None:
        (self.path / "filler").unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


class InjectedFullDisk:
    """ENOSPC from the final fsync of every file genbench writes (no mount rights needed)."""

    def __init__(self, where: Path, monkeypatch) -> None:
        self.path, self.monkeypatch = where, monkeypatch
        where.mkdir()

    def fill(self) -> None:
        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.monkeypatch.setattr("genbench.files.os.fsync", full)

    def free(self) -> None:
        self.monkeypatch.undo()

    def unmount(self) -> None:
        pass


@pytest.fixture(params=["tmpfs", "injected"])
def disk(request, tmp_path, monkeypatch):
    if request.param == "tmpfs":
        d = SmallDisk(tmp_path / "disk", "1m")
    else:
        d = InjectedFullDisk(tmp_path / "disk", monkeypatch)
    yield d
    d.unmount()


def test_full_disk_while_sampling_is_one_clear_error(disk, world, capsys):
    argv = sample(f"out={disk.path / 'samples'}")(world)
    disk.fill()
    code, out, err = invoke(argv, capsys)
    assert code == 2 and "Traceback" not in out + err, (out + err)[-3000:]
    assert "samples_4.png" in err and "No space left on device" in err, err[-2000:]
    assert "nothing was written" in err
    assert [f for f in files_under(disk.path) if f != "filler"] == []  # no partial/empty file
    disk.free()
    code, _, err = invoke(argv, capsys)  # the same command works once there is room
    assert code == 0, err[-2000:]
    assert all(
        (disk.path / "samples" / f"samples_4.{ext}").stat().st_size > 0 for ext in ("png", "npz")
    )


def test_full_disk_while_exporting_keeps_the_previous_export(disk, world, capsys):
    target = disk.path / "board.md"
    code, _, err = invoke(board("format=md", f"out={target}")(world), capsys)
    assert code == 0, err
    before = target.read_bytes()
    disk.fill()
    for argv in (
        board("format=csv", f"out={target}"),
        board("format=html", f"out={target}"),
        board("plot=loss", f"out={disk.path / 'plots'}"),
    ):
        code, out, err = invoke(argv(world), capsys)
        assert code == 2 and "Traceback" not in out + err, (out + err)[-3000:]
        assert "No space left on device" in err, err[-2000:]
    assert target.read_bytes() == before
    assert [f for f in files_under(disk.path) if f != "filler"] == ["board.md"]


def test_full_disk_during_a_leaderboard_write_keeps_it(tmp_path):
    disk = SmallDisk(tmp_path / "disk", "1m")  # SQLite's writes cannot be injected: real only
    try:
        path = disk.path / "leaderboard.sqlite"
        disk.fill()
        with pytest.raises(StoreError, match="cannot create the leaderboard .*nothing was written"):
            record(Store(path), "a")
        assert files_under(disk.path) == ["filler"]  # no empty leaderboard, no temp file
        disk.free()
        record(Store(path), "a")
        disk.fill()
        with pytest.raises(
            StoreError,
            match="cannot write the leaderboard .*disk is full.*previous content is kept",
        ):
            record(Store(path), "b", {"notes": "x" * 200_000})
        # SQLite's own -wal / -shm may stay until the next clean close; nothing else appeared
        assert set(files_under(disk.path)) <= {
            "filler",
            "leaderboard.sqlite",
            "leaderboard.sqlite-wal",
            "leaderboard.sqlite-shm",
        }
        assert [r["run_id"] for r in Store(path).runs()] == ["a"]  # readable on a full disk
        disk.free()
        assert [r["run_id"] for r in Store(path).runs()] == ["a"]
        assert files_under(disk.path) == ["leaderboard.sqlite"]
    finally:
        disk.unmount()


# ------------------------------------------------------------------ read-only outputs
@pytest.fixture
def read_only(template, tmp_path, monkeypatch):
    """(outputs, run): a copy of the outputs folder that this process cannot write."""
    monkeypatch.chdir(tmp_path)
    if os.geteuid() == 0:
        disk = SmallDisk(tmp_path / "ro", "16m")
        run = copy_outputs(template, disk.path / "out")
        remount = subprocess.run(
            ["mount", "-o", "remount,ro", str(disk.path)], capture_output=True, text=True
        )
        if remount.returncode != 0:
            disk.unmount()
            pytest.skip(f"cannot remount the tmpfs read-only ({remount.stderr.strip()})")
        yield disk.path / "out", run
        disk.unmount()
        return
    run = copy_outputs(template, tmp_path / "ro" / "out")
    for p in sorted((tmp_path / "ro").rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    yield tmp_path / "ro" / "out", run
    for p in (tmp_path / "ro").rglob("*"):
        p.chmod(0o755)


def test_read_only_outputs_can_be_viewed(read_only, capsys, tmp_path):
    out, _ = read_only
    before = snapshot(out)
    code, _, err = invoke(
        ["leaderboard", "format=csv", f"out={tmp_path / 'board.csv'}", f"paths.outputs={out}"],
        capsys,
    )  # exported elsewhere
    assert code == 0 and "vae" in (tmp_path / "board.csv").read_text(), err[-2000:]
    code, text, err = invoke(["leaderboard", f"paths.outputs={out}"], capsys)
    assert code == 0, err[-2000:]
    assert "vae" in text
    code, text, err = invoke(["leaderboard", "format=json", f"paths.outputs={out}"], capsys)
    assert code == 0, err[-2000:]
    assert [r["model"] for r in strict_loads(text) if not (r["published"] or r["floor"])] == ["vae"]
    code, text, err = invoke(["families", f"paths.outputs={out}"], capsys)
    assert code == 0 and "measured in the leaderboard" in text, err[-2000:]
    assert snapshot(out) == before


RO_WRITES = [
    (
        "rebuild",
        lambda o, r: ["leaderboard", "rebuild", f"paths.outputs={o}"],
        "cannot write the leaderboard",
    ),
    (
        "html-report",
        lambda o, r: ["leaderboard", "format=html", f"paths.outputs={o}"],
        "cannot write",
    ),
    ("plots", lambda o, r: ["leaderboard", "plot=loss", f"paths.outputs={o}"], "cannot write"),
    (
        "export",
        lambda o, r: ["leaderboard", "format=md", f"out={o}/board.md", f"paths.outputs={o}"],
        "cannot write",
    ),
    (
        "sample",
        lambda o, r: ["sample", f"run={r}", "n=4", "eval=fast", f"paths.outputs={o}"],
        "cannot write",
    ),
    (
        "eval",
        lambda o, r: ["eval", f"run={r}", "eval=fast", f"paths.outputs={o}"],
        "not a writable folder",
    ),
    ("train", lambda o, r: ["train", *SMOKE, f"paths.outputs={o}"], "paths.outputs="),
]


@pytest.mark.parametrize("argv,expect", [c[1:] for c in RO_WRITES], ids=[c[0] for c in RO_WRITES])
def test_writing_read_only_outputs_says_it_cannot(argv, expect, read_only, capsys):
    out, run = read_only
    before = snapshot(out)
    code, text, err = invoke(argv(out, run), capsys)
    assert code == 2 and "Traceback" not in text + err, (text + err)[-3000:]
    assert expect in err, err[-2000:]
    assert snapshot(out) == before


# ------------------------------------------------------------------ JSON output
def test_json_output_is_valid_whatever_is_logged(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "out" / "leaderboard.sqlite")
    record(store, "finite")
    record(store, "infinite", {"sampler": {"eta": float("nan")}}, value=float("inf"))
    code, text, err = invoke(
        ["leaderboard", "format=json", "family=gan", f"paths.outputs={tmp_path / 'out'}"], capsys
    )
    assert code == 0 and strict_loads(text) == []  # the warning went to stderr
    assert "no recorded runs match" in err
    code, text, err = invoke(
        ["leaderboard", "format=json", "refs=false", f"paths.outputs={tmp_path / 'out'}"], capsys
    )
    rows = {r["run_id"]: r for r in strict_loads(text)}
    assert code == 0 and rows["finite"]["bits/dim"] == 2.5
    assert rows["infinite"]["bits/dim"] is None and rows["infinite"]["sampler"] == {"eta": None}
    assert strict_loads(format_scores({"fid@x": float("nan"), "is@x": 2.0}, "json")) == {
        "fid@x": None,
        "is@x": 2.0,
    }
