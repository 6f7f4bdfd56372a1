"""The process group of a multi-process launch (``torchrun``, or SLURM tasks via submitit), and the
rank, reduction, gathering and batch-splitting helpers that training and evaluation share.

``torchrun --standalone --nproc_per_node=N -m genbench train ...`` starts N copies of the same
command; each is one *rank*. :func:`init` joins them into a process group (NCCL on CUDA, gloo on
CPU) when ``WORLD_SIZE > 1``, and :func:`process_group` leaves it when the command's block ends;
outside such a launch every helper here is a no-op, so callers have one code path.

- Files: only rank 0 writes (run folder, tracker, leaderboard row); :func:`on_main` runs a
  decision on rank 0 and shares its result, or its error, with every rank.
- Evaluation: test-set sums and samples are split across ranks by whole eval batches
  (:func:`my_batches`) and combined (:func:`reduce_sum`, :func:`gather_rows`, torchmetrics'
  ``SumMetric``); per-batch seeds and per-sample generators make the numbers those of one process.

What only training needs (gradient synchronization through ``DistributedDataParallel``, per-rank
noise, the replica check) lives in :mod:`genbench.train.distributed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

if TYPE_CHECKING:  # only the type: the device setup is made by the commands, not imported here
    from genbench.train.device import DeviceSetup

log = logging.getLogger(__name__)
T = TypeVar("T")
#: process-group timeout: long enough for rank 0's own work (checkpoint writes, sample-quality
#: metrics) while the other ranks wait at the next collective
TIMEOUT = datetime.timedelta(minutes=60)
BUCKET_NUMEL = 1 << 24  # elements per coalesced broadcast (64 MiB of fp32)
_STATE = {"owner": False}  # whether init() created the process group (and so tears it down)


# -- who am I ------------------------------------------------------------------------------------
def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, the only rank that writes files, tracks and records."""
    return rank() == 0


def comm_device() -> torch.device:
    """Where collective tensors must live: the rank's GPU for NCCL, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- set-up and teardown -------------------------------------------------------------------------
def requested_world_size() -> int:
    """``WORLD_SIZE`` of the launch (torchrun, or a multi-task submitit job), 1 if none."""
    if "WORLD_SIZE" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR"):
        _export_submitit_env()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _export_submitit_env() -> None:
    """Inside a submitit job with several tasks, set the ``env://`` variables from the job."""
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True
        )


def init(setup: DeviceSetup, threads: object = "auto") -> DeviceSetup:
    """Join the process group of a multi-process launch; returns the rank's device setup.

    With ``WORLD_SIZE <= 1`` nothing happens and ``setup`` is returned. On CUDA each rank uses
    ``cuda:LOCAL_RANK`` (or its only visible GPU, where the scheduler binds one GPU per task).
    ``device.threads=auto`` becomes the cores this process may use, shared among the node's ranks
    unless the scheduler already bound each rank to its own cores. Non-zero ranks log warnings
    and errors only, to the console.
    """
    world = requested_world_size()
    if world <= 1 or is_initialized():
        return setup
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = setup.device
    if device.type == "cuda":
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    _STATE["owner"] = True
    n = setup.threads
    if threads in (None, "auto"):
        n = _auto_threads(int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
        torch.set_num_threads(n)
        threadpool_limits(n, user_api="blas")  # as train/device does for one process
    if not is_main():
        _quiet()
    log.info(
        "process group: %d ranks (%s), rank %d on %s", world, dist.get_backend(), rank(), device
    )
    return dataclasses.replace(setup, device=device, threads=n, adaptive_threads=False)


def _auto_threads(ranks_per_node: int) -> int:
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return max(1, usable // ranks_per_node if usable == cores else usable)


def _quiet() -> None:
    """Non-zero ranks: warnings and errors only, and no handler on rank 0's ``train.log``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)


def teardown(ok: bool) -> None:
    """Leave the process group that :func:`init` created.

    After success, every rank waits for the others (rank 0 may still be writing) and the group is
    destroyed. After an error the group is left alone: destroying it is collective for NCCL and
    would wait for ranks that are gone; the launcher stops the remaining ranks.
    """
    if not (_STATE["owner"] and is_initialized()):
        return
    _STATE["owner"] = False
    if ok:
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """A command's block: the process group that :func:`init` creates inside it is left when the
    block ends, with ``teardown(ok=True)`` when it ends normally (a ``return`` included) and
    ``teardown(ok=False)`` when an exception (``KeyboardInterrupt`` included) leaves it, which
    then propagates. Without a group (one process) it does nothing::

        with process_group():
            setup = init(setup_device(cfg.device), cfg.device.get("threads", "auto"))
            return train(cfg, setup)
    """
    ok = False
    try:
        yield
        ok = True
    finally:
        teardown(ok)


# -- collectives ---------------------------------------------------------------------------------
def on_main(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on rank 0 only and return its result (or raise its error) everywhere."""
    if world_size() == 1:
        return fn(*args)
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn(*args))
        except Exception as err:  # shared so that every rank stops, then re-raised
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def main_value(value: T) -> T:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    return on_main(lambda: value)


def _coalesced(tensors: Sequence[Tensor], op: Callable[[Tensor], None]) -> None:
    """Apply the in-place collective ``op`` to ``tensors`` through flat buffers of one dtype
    (at most :data:`BUCKET_NUMEL` elements each), copying the results back."""
    bucket: list[Tensor] = []
    size = 0

    def flush() -> None:
        flat = torch.cat([t.detach().reshape(-1) for t in bucket]).to(comm_device())
        op(flat)
        offset = 0
        for t in bucket:
            t.detach().copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        bucket.clear()

    for t in tensors:
        if bucket and (t.dtype != bucket[0].dtype or size + t.numel() > BUCKET_NUMEL):
            flush()
            size = 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        flush()


def broadcast_tensors(tensors: Sequence[Tensor]) -> None:
    """Copy rank 0's values of ``tensors`` (any shapes ``[...]``, in place, same order on every
    rank) to every rank."""
    if world_size() > 1 and tensors:
        _coalesced(tensors, lambda flat: dist.broadcast(flat, src=0))


def broadcast_module(module: nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters (unless ``buffers_only``) and buffers to every rank."""
    if world_size() == 1:
        return
    broadcast_tensors(
        list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    )


def reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` (any shape ``[...]``) over ranks, elementwise (same shape, device and dtype)."""
    if world_size() == 1:
        return x
    y = x.detach().clone().to(comm_device())
    dist.all_reduce(y)
    return y.to(x.device)


def reduce_mean(x: Tensor) -> Tensor:
    """Elementwise mean of ``x`` (any shape ``[...]``) over ranks."""
    return reduce_sum(x) / world_size()


def union(names: Sequence[str]) -> list[str]:
    """The names seen on any rank, in rank order, each once."""
    if world_size() == 1:
        return list(names)
    lists: list[Any] = [None] * world_size()
    dist.all_gather_object(lists, list(names))
    out: list[str] = []
    for lst in lists:
        out += [n for n in lst if n not in out]
    return out


def my_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """This rank's ``(start, stop)`` eval batches of ``range(n)``: the batches of one process,
    dealt out in contiguous runs, so concatenating the ranks' results in rank order gives one
    process's order and every batch is the same one a single process would use."""
    starts = list(range(0, n, batch_size))
    world, r = world_size(), rank()
    mine = starts[r * len(starts) // world : (r + 1) * len(starts) // world]
    return [(s, min(s + batch_size, n)) for s in mine]


def gather_rows(x: Tensor) -> Tensor:
    """Concatenate each rank's rows ``[n_r, ...]`` in rank order; every rank gets the result (on
    ``x``'s device). Ranks may hold different numbers of rows, zero included."""
    world = world_size()
    if world == 1:
        return x
    dev = comm_device()
    counts = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([x.shape[0]], device=dev))
    sizes = [int(c) for c in counts]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=dev)
    padded[: x.shape[0]] = x.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(x.device)
