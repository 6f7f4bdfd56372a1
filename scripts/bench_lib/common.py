"""Shared pieces of the benchmarks: statistics over repeats, clocks, configs, machine facts and the
result record every section returns."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from genbench.build import build_model as genbench_model
from genbench.build import load_data
from genbench.cli import SPIN
from genbench.train.device import DeviceSetup
from genbench.train.loop import build_optimizer

ROOT = Path(__file__).resolve().parents[2]
NOT_MEASURED = "not measured"


# ---------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Spread:
    """Median of repeated measurements with their range."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        vals = [float(v) for v in values]
        return cls(statistics.median(vals), min(vals), max(vals), len(vals))

    def fmt(self, digits: int = 2) -> str:
        """``1.02 [0.99-1.05] n=3``."""
        if self.n == 1:
            return f"{self.median:.{digits}f} (n=1)"
        return f"{self.median:.{digits}f} [{self.lo:.{digits}f}-{self.hi:.{digits}f}] n={self.n}"


@dataclass
class Check:
    """One headline ratio and its target (``ok`` is None when there is no target or no value)."""

    name: str
    value: str
    target: str = ""
    ok: bool | None = None


@dataclass
class Result:
    """What a section reports: a markdown table, its headline ratios and raw numbers."""

    title: str
    table: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        parts = [f"### {self.title}", "", *self.table]
        if self.notes:
            parts += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(parts) + "\n"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def verdict(ok: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "-"}[ok]


# ---------------------------------------------------------------- clocks
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Clock:
    """Wall and process-CPU seconds of a block (``cpu`` counts every thread of this process)."""

    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def clocked(device: torch.device | None = None) -> Iterator[Clock]:
    c = Clock()
    if device is not None:
        sync(device)
    w, p = time.perf_counter(), time.process_time()
    try:
        yield c
    finally:
        if device is not None:
            sync(device)
        c.wall, c.cpu = time.perf_counter() - w, time.process_time() - p


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def log(msg: str) -> None:
    """Progress line on stderr (the summary goes to stdout)."""
    print(
        f"[bench {time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}",
        file=__import__("sys").stderr,
        flush=True,
    )


# ---------------------------------------------------------------- configs and models
#: ``--models``: restrict the per-model sections to these conf/model names (None = all)
SELECTED_MODELS: list[str] | None = None


def model_names() -> list[str]:
    """conf/model entries (or the ``--models`` selection)."""
    names = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
    return [n for n in names if SELECTED_MODELS is None or n in SELECTED_MODELS]


def compose_train(*overrides: str) -> DictConfig:
    """``conf/train.yaml`` with ``overrides`` (outside a Hydra run: ``${hydra:..}`` unresolved)."""
    GlobalHydra.instance().clear()
    with initialize_config_module("genbench.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


@cache
def _data(name: str) -> Any:
    return load_data(compose_train(f"dataset={name}").dataset)


def dataset(name: str = "digits", device: str = "cpu") -> Any:
    """The dataset record (built once per name), moved to ``device``."""
    return _data(name).to(device)


def build_model(cfg: DictConfig, data: Any, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """``cfg.model`` for ``data``'s shape and levels, initialized from ``seed``, placed as
    genbench places it (``device.channels_last=auto``)."""
    torch.manual_seed(seed)
    model = genbench_model(cfg.model, data.shape, data.levels)
    return DeviceSetup(torch.device(device), "fp32", False, 1).place_model(model, data.shape)


def make_optimizers(model: Any, optimizer: DictConfig) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per phase, exactly as genbench's Trainer builds them."""
    return {
        p.name: build_optimizer(
            optimizer, p, [q for q in model.parameters_for(p.name) if q.requires_grad]
        )
        for p in model.phases
    }


# ---------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    import genbench
    from genbench.record import versions

    v = versions()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "gpu": gpu,
        "torch": torch.__version__,
        "genbench": genbench.__version__,
        "git_commit": v.get("git_commit", "?")[:12],
        "python": platform.python_version(),
        "load_average": loadavg(),
        "OpenMP wait": " ".join(
            f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", *SPIN) if k in os.environ
        )
        or "default",
    }
