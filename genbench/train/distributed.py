"""Data-parallel training: gradients through ``DistributedDataParallel``, replicas kept identical.

The process group, rank and collectives are :mod:`genbench.distributed` (evaluation uses them
too); this module is what only training needs. In one process none of it does anything: the
runner calls the model's ``training_losses`` itself, exactly as without a process group.

- Gradients: one ``DistributedDataParallel`` per phase (:func:`loss_functions`), around
  :class:`PhaseLosses`, a module whose ``forward(x, phase)`` is ``model.training_losses(x,
  phase)`` and whose own parameters are exactly the phase's trainable ones (the model is held,
  not registered as a submodule, so DDP sees nothing else). DDP's reducer all-reduces gradient
  buckets while ``backward`` is still computing the earlier layers' gradients, and leaves the
  mean over ranks in ``.grad`` before ``backward`` returns.

  Per-phase wrappers rather than one wrapper with ``find_unused_parameters=True``: a GAN's
  ``"d"`` and ``"g"`` phases train disjoint parameter sets. One wrapper over all of them would
  walk the autograd graph after every forward to find the other phase's parameters and still
  all-reduce their (empty) buckets, doubling the traffic of every phase; a wrapper per phase
  all-reduces exactly that phase's gradients in a fixed bucket order. DDP's default
  (``find_unused_parameters=False``) needs every parameter of a phase to get a gradient in each
  of its steps, which the contract test checks for every model (``tests/models/test_contract.py``).
- Buffers (batch-norm statistics, ActNorm's init flag, spectral-norm vectors): DDP syncs none
  (``PhaseLosses`` registers no buffers; ``forward_sync_buffers=False``). :func:`sync_replicas`
  copies rank 0's buffers to every rank once after each step, in one coalesced broadcast. DDP's
  own buffer sync runs at the start of each forward, k + 1 times per GAN step, and leaves the
  last phase's updates different on each rank, while the EMA copies buffers after every step and
  validation and evaluation run on every rank with rank 0's weights. Spectral-norm vectors follow
  a deterministic power iteration from weights that are equal on every rank, so they stay equal
  anyway. ActNorm initializes from each rank's first batch, so after the first step rank 0's
  parameters are broadcast too.
- Data: ``trainer.batch_size`` is the *global* batch; each rank takes its ``1/N`` slice of it
  (:class:`genbench.data.base.Batches`), so N ranks see exactly the batches one process would.
- Files: only rank 0 writes the run folder (config, checkpoints, ``stats.jsonl``, samples),
  the tracker and the leaderboard row. Rank 0 also chooses the run folder and shares it
  (:func:`~genbench.distributed.on_main`): Hydra's ``${now:}`` differs per process.

Per-rank randomness (noise, latents, timesteps) is drawn from ``seed + 1_000_003 * rank``, so ranks
do not repeat each other's noise; rank 0's stream is the single-process one.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from genbench.distributed import broadcast_module, is_main, rank, world_size
from genbench.errors import ConfigError

LossFn = Callable[[Tensor, str], dict[str, Tensor]]


def check_batch_size(batch_size: int) -> None:
    """``trainer.batch_size`` is the global batch: it must split evenly across the ranks."""
    world = world_size()
    if batch_size % world:
        raise ConfigError(
            f"trainer.batch_size={batch_size} is the global batch and must be "
            f"divisible by the number of processes ({world}); each rank takes "
            "batch_size / processes examples"
        )


def seed_rank(seed: int, step: int = 0) -> None:
    """Give every rank > 0 its own noise stream (rank 0 keeps the single-process one).

    Called after the model is built (same initial weights everywhere) and again after a resume,
    whose checkpoint holds rank 0's RNG state only; ``step`` keeps resumed streams fresh.
    """
    r = rank()
    if r == 0:
        return
    s = seed + 1_000_003 * r + 7919 * step
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def adopt_run_dir(own: Path, shared: Path) -> None:
    """Non-zero ranks: remove the empty folder Hydra made for this rank, if it is not ``shared``
    (each rank's ``${now:}`` differs, so each made its own; rank 0's is the run folder)."""
    if is_main() or own.resolve() == shared.resolve():
        return
    try:
        own.rmdir()  # only when empty: never anything a user put there
    except OSError:
        pass


# -- gradients -----------------------------------------------------------------------------------
class PhaseLosses(nn.Module):
    """``forward(x, phase, **labels)`` = ``model.training_losses(x, phase, **labels)``; the
    module's own parameters are ``params`` (the phase's trainable ones), so
    ``DistributedDataParallel`` around it reduces the gradients of exactly those. The model is
    referenced, not registered as a submodule."""

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter]) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # hidden from parameters() / buffers()
        self.params = nn.ParameterList(params)

    def forward(self, x: Tensor, phase: str, **labels: Tensor) -> dict[str, Tensor]:
        """``x``: ``[N, C, H, W]`` levels (``y=`` labels ``[N]`` for a conditional model);
        returns the model's ``[N]`` loss terms."""
        return self.model.training_losses(x, phase, **labels)


def loss_functions(
    model: nn.Module, params: Mapping[str, Sequence[nn.Parameter]], compile: bool = False
) -> dict[str, LossFn]:
    """Per phase (the keys of ``params``), the callable ``(x, phase) -> loss terms`` the runner
    trains through. One process: ``model.training_losses`` itself (compiled when ``compile``).
    Several: a ``DistributedDataParallel`` per phase around :class:`PhaseLosses` (see the module
    docstring), whose ``backward`` leaves the mean gradient over ranks in ``.grad``.

    Construction is collective (DDP checks the shapes and broadcasts rank 0's parameters), so
    every rank calls this at the same point with the same phases."""
    if world_size() == 1:
        return {
            name: (torch.compile(model.training_losses) if compile else model.training_losses)
            for name in params
        }
    out: dict[str, LossFn] = {}
    for name, ps in params.items():
        device = ps[0].device if ps else torch.device("cpu")
        wrapper = DistributedDataParallel(
            PhaseLosses(model, ps),
            device_ids=[device] if device.type == "cuda" else None,
            forward_sync_buffers=False,
        )  # PhaseLosses has no buffers: see sync_replicas
        out[name] = torch.compile(wrapper) if compile else wrapper
    return out


# -- replicas ------------------------------------------------------------------------------------
def sync_replicas(model: nn.Module, first_step: bool) -> None:
    """After a training step: every rank takes rank 0's buffers, and after the first step its
    parameters too (data-dependent initialization such as ActNorm's used each rank's batch)."""
    broadcast_module(model, buffers_only=not first_step)


def fingerprint(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (exact bytes, in ``state_dict`` order)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_replicas(module: nn.Module, what: str = "model") -> None:
    """Raise if the ranks' copies of ``module`` are not bit-identical (data parallelism keeps
    them so; a difference means a rank took another code path or skipped a synchronization)."""
    if world_size() == 1:
        return
    prints: list[Any] = [None] * world_size()
    dist.all_gather_object(prints, fingerprint(module))
    if len(set(prints)) != 1:
        raise RuntimeError(
            f"the ranks' {what} weights differ after training "
            f"(fingerprints {[p[:12] for p in prints]})"
        )
