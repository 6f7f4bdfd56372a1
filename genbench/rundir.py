"""The run folder: the one owner of its layout, its writes, its lock and what it holds.

A run is a folder ``outputs/runs/<date>/<time>_<model>_<dataset>/``::

    config.yaml      the resolved config (no interpolations), written once
    status.json      {"status", "step", "config_hash"}: what resume and rebuild read first
    checkpoints/     last.pt (everything exact resume needs), best.pt (best-validation weights)
    stats.jsonl      training log rows, one JSON object per line
    metrics.json     the evaluated metric rows
    nll_per_example.npy  float64 [n]: each test example's NLL (nats, test order), when evaluated
    curve.json       the anytime curve: metrics measured during training (``trainer.eval_at``)
    record.json      the leaderboard record of the run (rebuild reads it back)
    samples.png      a grid of evaluation samples
    train.log        the text log
    .lock            while a process trains or evaluates the run: its PID and host

Every file is written atomically (:mod:`genbench.files`); everything read back is treated as data
from someone else (bounded JSON, checkpoints with ``weights_only=True``, configs through
:mod:`genbench.trust`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import io
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from genbench import checkpoint
from genbench.errors import ConfigError, UserError
from genbench.eval.metric import CurvePoint
from genbench.files import FileError, atomic_write, read_bytes, read_json, write_json

log = logging.getLogger(__name__)

#: statuses a run folder can be in (``status.json``)
STATUSES = ("running", "finished", "diverged", "interrupted")


class RunLockedError(UserError):
    """Another process holds the run folder."""


class RunDir:
    """One run folder (it need not exist yet)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- layout --------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def stats_file(self) -> Path:
        return self.path / "stats.jsonl"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def nll_file(self) -> Path:
        return self.path / "nll_per_example.npy"

    @property
    def curve_file(self) -> Path:
        return self.path / "curve.json"

    @property
    def record_file(self) -> Path:
        return self.path / "record.json"

    @property
    def samples_png(self) -> Path:
        return self.path / "samples.png"

    @property
    def log_file(self) -> Path:
        return self.path / "train.log"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def checkpoint_file(self, name: str) -> Path:
        """``checkpoints/<name>.pt`` (``last`` or ``best``)."""
        return self.checkpoints / f"{name}.pt"

    def is_run(self) -> bool:
        """Whether the folder holds a run (a config and a checkpoints folder)."""
        return self.config_file.is_file() and self.checkpoints.is_dir()

    def require_run(self, key: str = "run") -> RunDir:
        """This folder, or a :class:`ConfigError` naming ``key`` when it holds no run."""
        if not self.is_run():
            raise ConfigError(
                f"{key}={str(self.path)!r} is not a genbench run folder (it needs "
                "config.yaml and checkpoints/)"
            )
        return self

    # -- status --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``status.json`` as a dict; empty when missing or malformed (``null``, a list, bad
        JSON), so one damaged folder never stops a scan of the others."""
        try:
            return read_json(self.status_file, what="run status")
        except FileError:
            return {}

    def write_status(self, status: str, step: int, config_hash: str | None) -> None:
        write_json(
            self.status_file,
            {"status": status, "step": step, "config_hash": config_hash},
            what="run status",
        )

    def resumable(self, config_hash: str) -> bool:
        """Whether this folder is an unfinished run of ``config_hash`` with a checkpoint (a
        finished one counts too when it stopped before being recorded; the caller checks)."""
        s = self.status()
        return (
            s.get("config_hash") == config_hash
            and s.get("status") in STATUSES
            and s.get("status") != "diverged"
            and self.checkpoint_file("last").is_file()
        )

    # -- config --------------------------------------------------------------------------------
    def write_config(self, plain: dict[str, Any]) -> None:
        """Store the resolved config once (a resumed run keeps its original file)."""
        if self.config_file.exists():
            return
        from genbench.trust import check_plain, dump_yaml

        check_plain(plain, "the config to store")
        atomic_write(self.config_file, dump_yaml(plain), what="run config")

    def read_config(self) -> DictConfig:
        """The stored config, read as untrusted data (:mod:`genbench.trust`)."""
        from genbench.trust import load_untrusted_config

        return load_untrusted_config(self.config_file)

    def created(self) -> dt.datetime:
        """When the run started (its config file's time)."""
        return dt.datetime.fromtimestamp(self.config_file.stat().st_mtime)

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        checkpoint.save(state, self.checkpoint_file(name))

    def load_checkpoint(self, name: str, device: str | torch.device = "cpu") -> dict[str, Any]:
        return checkpoint.load(self.checkpoint_file(name), device)

    def eval_weights(
        self, select_best: bool, device: str | torch.device = "cpu"
    ) -> tuple[dict[str, Tensor], str]:
        """The weights that evaluation and sampling use, and which they are: the best-validation
        weights when the model selects by validation loss and they exist, else the EMA of the
        last checkpoint when there is one, else its raw weights. The weights are a state dict on
        ``device``, each tensor shaped as ``model.state_dict()[name]``."""
        best = self.checkpoint_file("best")
        if select_best and best.is_file():
            ckpt = checkpoint.load(best, device)
            return ckpt["model"], f"best validation (step {ckpt.get('step')})"
        last = checkpoint.load(self.checkpoint_file("last"), device)
        if last.get("ema"):
            return last["ema"]["module"], "EMA of the last step"
        return last["model"], "the last step"

    # -- results -------------------------------------------------------------------------------
    def write_metrics(self, run_id: str, status: str, rows: list[dict[str, Any]]) -> None:
        write_json(
            self.metrics_file,
            {"run_id": run_id, "status": status, "metrics": rows},
            what="metrics file",
        )

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metric rows of ``metrics.json`` (a :class:`FileError` when unreadable)."""
        rows = read_json(self.metrics_file, what="metrics file").get("metrics")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise FileError(f"{str(self.metrics_file)!r} has no list of metric rows")
        return rows

    def write_curve(self, points: list[CurvePoint]) -> None:
        """Store the anytime curve (``{"curve": [point, ...]}``, :meth:`CurvePoint.to_dict`)."""
        write_json(self.curve_file, {"curve": [p.to_dict() for p in points]}, what="curve file")

    def read_curve(self) -> list[CurvePoint]:
        """The anytime curve of ``curve.json``, checked point by point (``[]`` when the run has
        none; a :class:`FileError` when the file is unreadable or a point malformed)."""
        if not self.curve_file.exists() and not self.curve_file.is_symlink():
            return []
        points = read_json(self.curve_file, what="curve file").get("curve")
        if not isinstance(points, list):
            raise FileError(f"{str(self.curve_file)!r} has no list of curve points")
        try:
            return [CurvePoint.from_dict(p) for p in points]
        except ValueError as err:
            raise FileError(f"{str(self.curve_file)!r}: {err}") from None

    def check_writable(self) -> None:
        """Refuse, before any work, to evaluate into a folder whose result files cannot be
        replaced (a folder, FIFO or device where ``metrics.json``, ``curve.json``,
        ``nll_per_example.npy``, ``record.json`` or ``samples.png`` belongs), so a failed
        evaluation never leaves half its results."""
        files = (self.metrics_file, self.curve_file, self.nll_file, self.record_file)
        for path in (*files, self.samples_png):
            if (path.exists() or path.is_symlink()) and not path.is_file():
                raise FileError(
                    f"{str(path)!r} is not a regular file: move it away to write this run's results"
                )

    def write_nll_per_example(self, nats: np.ndarray | None) -> None:
        """Store each test example's NLL ``[n]`` (nats, test order) as ``nll_per_example.npy``
        (float64, no pickles); with None, remove a file left by an earlier evaluation."""
        if nats is None:
            self.nll_file.unlink(missing_ok=True)
            return
        array = np.ascontiguousarray(np.asarray(nats, dtype=np.float64).reshape(-1))
        atomic_write(
            self.nll_file,
            lambda f: np.save(f, array, allow_pickle=False),
            what="per-example NLL file",
        )

    def read_nll_per_example(self, n: int | None = None) -> np.ndarray:
        """``nll_per_example.npy``: float64 ``[n]`` (nats), read without unpickling. A
        :class:`FileError` names the file when it is missing, unreadable, holds Python objects
        or is not a float vector (of length ``n``, when given)."""
        what = f"the per-example NLL file {str(self.nll_file)!r}"
        data = read_bytes(self.nll_file, max_bytes=2**31, what="per-example NLL file")
        try:
            x = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as err:  # numpy refuses object arrays here: nothing is unpickled
            raise FileError(
                f"{what} cannot be read as a plain float array (pickled or corrupt: "
                f"{str(err).splitlines()[0][:160]})"
            ) from None
        except (OSError, EOFError) as err:
            raise FileError(f"{what} is not a valid .npy file ({err})") from None
        if not isinstance(x, np.ndarray) or x.ndim != 1 or x.dtype.kind != "f":
            raise FileError(
                f"{what} holds {getattr(x, 'dtype', type(x).__name__)} of shape "
                f"{getattr(x, 'shape', '?')}; expected a float vector [n] of nats"
            )
        if n is not None and x.shape[0] != n:
            raise FileError(f"{what} holds {x.shape[0]} values; the evaluation used {n}")
        return x.astype(np.float64, copy=False)

    def write_record(self, record: dict[str, Any]) -> None:
        write_json(self.record_file, record, what="run record")

    def read_record(self) -> dict[str, Any]:
        return read_json(self.record_file, what="run record")

    def open_stats(self, step: int) -> TextIO:
        """``stats.jsonl`` opened for appending, without rows past ``step``: a killed run may
        have logged steps after its last checkpoint, which the resumed run logs again."""
        if self.stats_file.exists():
            kept = []
            text = read_bytes(self.stats_file, max_bytes=2**31, what="training log")
            for line in text.decode(errors="replace").splitlines(keepends=True):
                try:
                    row = json.loads(line)
                    if row["step"] <= step and line.endswith("\n"):
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    pass  # a line cut short by the kill
            atomic_write(self.stats_file, "".join(kept), what="training log")
        return self.stats_file.open("a")

    # -- ownership -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, purpose: str = "train") -> Iterator[None]:
        """Hold the run folder exclusively: an ``fcntl`` lock on the folder itself, released
        when the process ends, however it ends. ``.lock`` names the holder (PID, host, purpose)
        while it is held; a second process gets a :class:`RunLockedError` naming it."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise FileError(
                f"cannot lock the run folder {str(self.path)!r} ({err.strerror or err})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FileError(
                    f"cannot lock the run folder {str(self.path)!r} ({err.strerror or err})"
                ) from None
            raise RunLockedError(
                f"the run folder {str(self.path)!r} is in use by "
                f"{self._holder()}; wait for it to finish, or stop it"
            ) from None
        try:
            with contextlib.suppress(FileError):  # the holder's name is information only
                write_json(
                    self.lock_file,
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "purpose": purpose,
                        "since": dt.datetime.now().isoformat(timespec="seconds"),
                    },
                    what="lock note",
                )
            yield
        finally:
            self.lock_file.unlink(missing_ok=True)
            os.close(fd)

    def _holder(self) -> str:
        try:
            h = json.loads(read_bytes(self.lock_file, max_bytes=4096))
            return (
                f"process {int(h['pid'])} on {str(h['host'])!r} ({h.get('purpose')}, since "
                f"{h.get('since')})"
            )
        except (FileError, ValueError, KeyError, TypeError):
            return "another process"


def run_id_of(run: RunDir, outputs: Path) -> str:
    """The leaderboard id of a run: its path under ``outputs/runs`` (else its absolute path)."""
    try:
        return str(run.path.resolve().relative_to((Path(outputs) / "runs").resolve()))
    except ValueError:
        return str(run.path.resolve())


def run_dirs(outputs: Path) -> Iterator[RunDir]:
    """Every folder under ``outputs/runs`` that has a ``status.json`` or ``metrics.json``."""
    seen = set()
    root = Path(outputs) / "runs"
    for name in ("status.json", "metrics.json"):
        for file in sorted(root.rglob(name)):
            if file.parent not in seen:
                seen.add(file.parent)
                yield RunDir(file.parent)


def find_resumable(outputs: Path, config_hash: str, recorded: set[str]) -> RunDir | None:
    """The newest run folder under ``outputs/runs`` with this config hash that is unfinished, or
    finished but missing from ``recorded`` (resolved run folders in the leaderboard: it stopped
    while evaluating or recording)."""
    found = []
    for run in run_dirs(outputs):
        if not run.resumable(config_hash):
            continue
        if run.status().get("status") == "finished" and str(run.path.resolve()) in recorded:
            continue
        found.append(run)
    return max(found, key=lambda r: r.path.stat().st_mtime) if found else None


def move_logs(old: Path, new: RunDir) -> None:
    """Point the log files Hydra opened in ``old`` (the new run folder it made) at ``new``'s
    ``train.log``, and remove ``old`` when nothing else was written there: a resumed run keeps
    logging into its own folder."""
    if Path(old).resolve() == new.path.resolve():
        return
    for handler in logging.getLogger().handlers:
        if (
            isinstance(handler, logging.FileHandler)
            and Path(handler.baseFilename).parent.resolve() == Path(old).resolve()
        ):
            handler.acquire()
            try:
                handler.close()
                handler.baseFilename = str(new.log_file.resolve())
            finally:
                handler.release()
    stale = Path(old) / "train.log"
    with contextlib.suppress(OSError):
        if stale.stat().st_size == 0:
            stale.unlink()
    try:
        Path(old).rmdir()  # only when empty: never anything a user put there
    except OSError:
        pass
