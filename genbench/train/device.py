"""Device, precision and CPU-thread setup for one job, applied before any tensor work.

Threads (``scripts/bench``, section 6, 2-core machine): a small conv net steps 1.4-1.6x faster
with 2 threads than with 1 when it has the machine to itself, and 1.3-1.8x *slower* with 2 than
with 1 beside one busy process; OpenMP threads that spin without bound (``OMP_WAIT_POLICY=ACTIVE``)
made that 10x in the worst case. genbench therefore

- bounds the spin (``GOMP_SPINCOUNT``, set before torch loads by ``genbench.cli``): as fast as
  unbounded spinning alone, and sleeping soon enough when a core is taken;
- uses one thread per job when jobs run in parallel (joblib launcher), all cores otherwise;
- with ``device.threads=auto`` on CPU, lets :class:`ThreadGovernor` lower (and raise again) the
  thread count while training to the cores other processes leave free.

numpy's BLAS (FID's eigenvalues, KID's kernels in torch-fidelity) gets the job's count: left at
all cores in a 1-thread job on a busy 2-core machine it made FID/IS/KID of 1000 digits 6x slower.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
    adaptive_threads: bool = False  # device.threads=auto on CPU: see ThreadGovernor
    channels_last: bool | None = None  # device.channels_last; None = auto (see place_model)

    def place_model(self, model: torch.nn.Module, shape: tuple[int, ...]) -> torch.nn.Module:
        """``model`` on this device, its 4-D weights channels-last when ``device.channels_last``
        is true, or ``auto`` and the data are images (``H * W > 1``). Measured on CPU
        (``scripts/bench``, 1 thread): 4-9 % faster steps for every model on 8x8 digits, 14 %
        for DCGAN on 28x28 MNIST, 1 % slower for the DDPM U-Net there; on GPUs channels-last is
        what tensor-core convolutions want under autocast."""
        model = model.to(self.device)
        use = self.channels_last if self.channels_last is not None else shape[1] * shape[2] > 1
        return model.to(memory_format=torch.channels_last) if use else model

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
        raise ConfigError(
            f"device.name={name!r} was requested but no CUDA device is available "
            "here; use device=cpu or device=auto"
        )
    precision = str(cfg.precision)
    if precision not in PRECISIONS:
        raise bad_value("device.precision", precision, f"one of {sorted(PRECISIONS)}")
    if precision == "fp16" and not name.startswith("cuda"):
        raise ConfigError("device.precision=fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    setting = cfg.get("threads", "auto")
    threads = choose_threads(setting)
    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")
    adaptive = setting in (None, "auto") and name == "cpu" and threads > 1
    channels_last = cfg.get("channels_last", "auto")
    if channels_last not in ("auto", True, False):
        raise bad_value("device.channels_last", channels_last, "auto, true or false")
    return DeviceSetup(
        torch.device(name),
        precision,
        bool(cfg.get("compile", False)),
        threads,
        adaptive,
        None if channels_last == "auto" else channels_last,
    )


class ThreadGovernor:
    """Keeps torch's intra-op thread count at the cores that other processes leave free.

    Every ``interval`` seconds (checked by :meth:`tick`, called once per training step) it reads
    the busy time of this process's CPUs from ``/proc/stat`` and subtracts this process's own CPU
    time: the rest is what other processes used. The thread count becomes
    ``round(cores - others)``, between 1 and ``limit``. Where ``/proc/stat`` is unreadable (not
    Linux) it does nothing. Changing the thread count can change floating-point summation order,
    so runs that must be bit-for-bit reproducible set ``device.threads`` to a number.
    """

    STAT = Path("/proc/stat")

    def __init__(self, limit: int, interval: float = 2.0) -> None:
        self.limit, self.interval = int(limit), float(interval)
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.cpus = {f"cpu{i}" for i in cpus}
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._sample()
        self.others = 0.0  # cores other processes used over the last interval

    def _sample(self) -> tuple[float, float, float] | None:
        """(wall, busy seconds of our CPUs over all processes, this process's CPU seconds)."""
        if not self.cpus:
            return None
        try:
            lines = self.STAT.read_text().splitlines()
        except OSError:
            return None
        busy = 0
        for line in lines:
            fields = line.split()
            if fields and fields[0] in self.cpus:
                v = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
                busy += sum(v) - v[3] - v[4]
        own = os.times()
        return time.monotonic(), busy / self.hz, own.user + own.system

    def tick(self) -> int | None:
        """Adjust the thread count when an interval has passed; returns the new count when it
        changed."""
        if self.last is None or time.monotonic() - self.last[0] < self.interval:
            return None
        now = self._sample()
        if now is None:
            return None
        wall, busy, own = (a - b for a, b in zip(now, self.last))
        self.last = now
        self.others = max(0.0, (busy - own) / wall)
        want = min(self.limit, max(1, round(len(self.cpus) - self.others)))
        if want == torch.get_num_threads():
            return None
        log.info(
            "CPU threads %d -> %d (other processes are using %.1f of %d cores)",
            torch.get_num_threads(),
            want,
            self.others,
            len(self.cpus),
        )
        torch.set_num_threads(want)
        return want


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``module`` in eval mode for the block and restore its previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
