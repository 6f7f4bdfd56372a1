"""Device, precision and CPU-thread setup for one job, applied before any tensor work.

Threads: on a small CPU, OpenMP threads that spin-wait while another process holds a core make a
small conv net over 10x slower (measured on 2 cores: 400 ms/step with 2 threads vs 27 ms with 1).
genbench therefore sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads (see ``genbench.cli``) and
uses one thread per job when jobs run in parallel (joblib launcher), all cores otherwise. numpy's
BLAS (FID's eigenvalues, KID's kernels in torch-fidelity) gets the same count: left at all cores
in a 1-thread job on a busy 2-core machine it made FID/IS/KID of 1000 digits 6x slower (1.1 s vs
0.19 s, ``scripts/bench``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from threadpoolctl import threadpool_limits

from genbench.errors import ConfigError, bad_value, positive_int

log = logging.getLogger(__name__)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceSetup:
    device: torch.device
    precision: str
    compile: bool
    threads: int

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast in the configured precision (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])


def parallel_jobs() -> int:
    """Jobs the current Hydra launcher runs at once (1 outside Hydra or with the basic launcher)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
    except (ImportError, ValueError):
        return 1
    n = launcher.get("n_jobs", 1) if hasattr(launcher, "get") else 1
    return os.cpu_count() or 1 if n == -1 else max(1, int(n or 1))


def choose_threads(setting: object) -> int:
    """``device.threads``: ``auto`` -> cores / parallel jobs (at least 1), else the given count."""
    if setting in (None, "auto"):
        return max(1, (os.cpu_count() or 1) // parallel_jobs())
    return positive_int("device.threads", setting)


def setup_device(cfg: object) -> DeviceSetup:
    """Resolve ``cfg.device`` (name, precision, compile, threads) and apply the thread count."""
    name = str(cfg.name)
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise bad_value("device.name", name, "one of auto, cpu, cuda, cuda:<index>")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device.name={name!r} was requested but no CUDA device is available "
                          "here; use device=cpu or device=auto")
    precision = str(cfg.precision)
    if precision not in PRECISIONS:
        raise bad_value("device.precision", precision, f"one of {sorted(PRECISIONS)}")
    if precision == "fp16" and not name.startswith("cuda"):
        raise ConfigError("device.precision=fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    threads = choose_threads(cfg.get("threads", "auto"))
    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")
    return DeviceSetup(torch.device(name), precision, bool(cfg.get("compile", False)), threads)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``module`` in eval mode for the block and restore its previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
