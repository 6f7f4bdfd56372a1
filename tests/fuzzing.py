"""Shared pieces of the fuzz suites (``tests/reliability/test_fuzz_*.py``): run ``genbench``
in-process, snapshot folders, and check that a hostile input got one clean answer.

Every generated case must end in one of two ways: a non-zero exit whose message names the key
or the file at fault, or a clean success; never a traceback, never a changed file where the
command failed, never a marker file written by an injected payload.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings

from genbench import cli

#: examples per fuzz test: ``FAST`` in the default suite (CI), ``SLOW`` under ``--slow``
FAST, SLOW = 20, 300


def fuzz_settings(examples: int) -> settings:
    """Deterministic (derandomized, no example database) settings for ``examples`` cases."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )


@dataclass
class Outcome:
    code: int | str | None
    text: str

    @property
    def failed(self) -> bool:
        return self.code not in (0, None)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def invoke(argv: list[str], cwd: Path, stop: type[BaseException] | None = None) -> Outcome:
    """``genbench <argv>`` in this process (the real Hydra app, as the console script runs it)
    from ``cwd``: the exit code and everything printed. ``stop``, an exception a test raises
    from inside the command, is reported as the code ``"stopped"``."""
    buf = io.StringIO()
    with (
        contextlib.chdir(cwd),
        _env(COLUMNS="1000"),
        contextlib.redirect_stdout(buf),
        contextlib.redirect_stderr(buf),
    ):
        try:
            code: int | str | None = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except BaseException as err:  # noqa: BLE001  (a test's stop, or an escaped error)
            if stop is None or not isinstance(err, stop):
                raise
            code = "stopped"
    return Outcome(code, buf.getvalue())


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under ``root`` (links not followed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Files added, removed or changed between two snapshots."""
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def assert_clean(out: Outcome, names: list[str], *, context: str) -> None:
    """No traceback; a failure names one of ``names`` (a key or a file) in its message, and a
    genbench error (exit code 2) is a single ``error:`` line."""
    tail = out.text[-3000:]
    assert "Traceback" not in out.text, f"{context}: traceback\n{tail}"
    assert out.code in (0, None, 1, 2, "stopped"), f"{context}: exit code {out.code!r}\n{tail}"
    if not out.failed or out.code == "stopped":
        return
    assert any(n in out.text for n in names), (
        f"{context}: the message names none of {names}\n{tail}"
    )
    if out.code == 2:
        errors = [line for line in out.text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, f"{context}: expected one error line\n{tail}"


Setup = Callable[[Path], None]

#: a short run for every fuzz suite: the VAE on digits, 4 steps, no sample metrics
SMOKE = [
    "experiment=smoke",
    "eval.sample_metrics=false",
    "eval.nll_examples=16",
    "trainer.eval_at=[1.0]",  # a curve.json in the run folder
    "trainer.probe.metrics=[bpd]",
]


@functools.cache
def finished_outputs() -> Path:
    """An outputs folder with one finished smoke run (trained once per test process; copy it
    before changing anything)."""
    from conftest import compose_cfg

    from genbench.commands import train_command

    root = Path(tempfile.mkdtemp(prefix="genbench-fuzz-"))
    atexit.register(shutil.rmtree, root, True)
    rec = train_command(compose_cfg("train", SMOKE, root / "out"))
    assert rec is not None and rec.status == "finished"
    return root / "out"


def copy_outputs(dest: Path) -> tuple[Path, Path]:
    """A copy of :func:`finished_outputs` at ``dest``: (outputs folder, its run folder), the
    run's config pointing at the copy."""
    from omegaconf import OmegaConf

    shutil.copytree(finished_outputs(), dest)
    (run,) = [p.parent for p in (dest / "runs").rglob("config.yaml")]
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.paths.run_dir, cfg.paths.outputs = str(run), str(dest)
    OmegaConf.save(cfg, run / "config.yaml")
    return dest, run
