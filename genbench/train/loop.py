"""The family-agnostic training loop.

It knows the model only through :mod:`genbench.models.base`: it steps one optimizer per
``model.phases`` entry, reduces ``training_losses(x, phase)["loss"]`` to its mean, owns autocast,
grad scaling and clipping, keeps an EMA of the weights, selects the best-validation weights,
checkpoints atomically and resumes exactly. It trains until ``trainer.budget`` is spent
(:mod:`genbench.train.budget`) and, with a ``probe``, measures the anytime curve at
``trainer.eval_at``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from genbench import checkpoint
from genbench import distributed as ddp
from genbench.data.base import Batches
from genbench.errors import ConfigError, Interrupted
from genbench.eval.metric import CurvePoint, Metric
from genbench.models.base import GenerativeModel, Phase, with_labels
from genbench.rundir import RunDir
from genbench.tracking import Tracker
from genbench.train import budget as budgets
from genbench.train import distributed as ddp_train
from genbench.train.device import DeviceSetup, ThreadGovernor, eval_mode
from genbench.train.ema import EMA
from genbench.train.schedule import build_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a run has done so far (saved in every checkpoint)."""

    step: int = 0
    images_seen: int = 0  # training examples, every phase and repeat
    train_seconds: float = 0.0  # time in training steps (no validation, checkpoints, probe)
    train_flops: float = 0.0  # forward + backward FLOPs (FlopCounterMode)
    flops_per_step: float = 0.0  # as measured when the run started
    best_val: float = math.inf
    best_step: int = -1
    status: str = "running"  # running | finished | diverged | interrupted
    history: list[dict[str, float]] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)  # CurvePoint.to_dict() each
    probed: list[float] = field(default_factory=list)  # the trainer.eval_at values done


#: ``probe(eval_model) -> metrics``: the anytime evaluation run at ``trainer.eval_at``
Probe = Callable[[GenerativeModel], list[Metric]]


#: signals that stop training cleanly: Ctrl-C, and what SLURM, Kubernetes and `timeout` send
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _defer_signals() -> Iterator[list[int]]:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the current training step is complete, so the
    interrupt checkpoint is a consistent state; the yielded list holds the signals received. A
    second signal interrupts at once. Only the main thread can set signal handlers (elsewhere:
    no-op)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: object) -> None:
        if received:
            raise Interrupted(signum)
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def build_optimizer(
    optimizer: DictConfig, phase: Phase, params: list[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """``conf/optimizer`` with the phase's overrides, over ``params``; bad values (a negative
    weight decay, betas outside [0, 1)) raise a :class:`ConfigError`, not a traceback.

    ``fused`` (config or phase override): ``null`` (the default) uses the optimizer's fused
    implementation when it has one (Adam, AdamW, SGD) and ``foreach``/``differentiable`` are not
    asked for: one kernel per step instead of a loop over tensors, 3-7x faster Adam steps on CPU
    for genbench's models (``scripts/bench``). ``true``/``false`` are passed as given."""
    spec = (
        OmegaConf.to_container(optimizer, resolve=True)  # resolved in its full config
        if isinstance(optimizer, DictConfig)
        else dict(optimizer)
    )
    kwargs = dict(phase.optimizer)
    fused = kwargs.pop("fused", spec.pop("fused", None))
    if fused is not None:
        kwargs["fused"] = fused
    elif _fusable(spec, params) and not any(
        kwargs.get(k, spec.get(k)) for k in ("foreach", "differentiable")
    ):
        kwargs["fused"] = True
    try:
        return instantiate(spec, **kwargs)(params=params)
    except (InstantiationException, TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(
            f"could not build the optimizer of phase {phase.name!r} from "
            f"optimizer._target_={spec.get('_target_')!r}: "
            f"{err.__cause__ or err}"
        ) from None


def _fusable(optimizer: dict[str, Any], params: list[torch.nn.Parameter]) -> bool:
    """Whether ``optimizer._target_`` takes ``fused`` and every parameter is a floating-point
    tensor on CPU or CUDA."""
    try:
        cls = get_class(str(optimizer.get("_target_")))
        takes = "fused" in inspect.signature(cls).parameters
    except (ImportError, ValueError, TypeError, AttributeError):
        return False  # reported by instantiate in build_optimizer
    return takes and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


class Trainer:
    """Trains ``model`` on ``train`` batches; writes ``run_dir/checkpoints/{last,best}.pt``.

    ``scheduler`` is a ``conf/scheduler`` entry (one lr schedule per phase, stepped once per
    training step; ``None``: constant lr) and ``augment`` the ``dataset.augment`` transforms
    applied to training batches (:mod:`genbench.data.augment`). ``probe`` is called on the
    evaluation weights when the spent share of the budget first reaches each ``trainer.eval_at``
    value; ``clock`` (seconds) times the training steps. ``train_labels`` and ``val_labels``
    (``[N]``) are passed to a conditional model as ``y`` (:func:`with_labels`); an unconditional
    model never sees them."""

    def __init__(
        self,
        model: GenerativeModel,
        train: torch.Tensor,
        val: torch.Tensor,
        cfg: DictConfig,
        optimizer: DictConfig,
        setup: DeviceSetup,
        run: RunDir | Path,
        seed: int,
        extra_state: dict[str, Any] | None = None,
        tracker: Tracker | None = None,
        *,
        scheduler: DictConfig | None = None,
        augment: Sequence[str] = (),
        probe: Probe | None = None,
        clock: Callable[[], float] = time.perf_counter,
        train_labels: torch.Tensor | None = None,
        val_labels: torch.Tensor | None = None,
    ) -> None:
        self.model, self.val, self.cfg, self.setup = model, val, cfg, setup
        conditional = model.conditional
        if conditional and (train_labels is None or val_labels is None):
            raise ConfigError(
                f"model.conditional=true: {type(model).__name__} needs class labels of the "
                "training and validation splits, and the dataset has none for "
                + ("the training split" if train_labels is None else "the validation split")
            )
        self.val_labels = val_labels if conditional else None
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.seed = seed
        self.batches = Batches(
            train,
            int(cfg.batch_size),
            seed,
            rank=ddp.rank(),
            world=ddp.world_size(),
            augment=augment,
            labels=train_labels if conditional else None,
        )
        params = {
            p.name: [q for q in model.parameters_for(p.name) if q.requires_grad]
            for p in model.phases
        }
        self.optimizers = {
            p.name: build_optimizer(optimizer, p, params[p.name]) for p in model.phases
        }
        self.budget = budgets.budget_of(cfg)
        self.eval_at = budgets.parse_eval_at(cfg.get("eval_at"))
        self.probe, self.clock = probe, clock
        self._agreed_seconds = 0.0  # the ranks' mean training seconds, as of the last _done()
        x = train[: self.batches.local_batch_size].long()
        y = train_labels[: len(x)].long() if conditional else None
        try:
            per_phase = budgets.count_flops(
                model, model.phases, x, setup.autocast, with_labels(model, y)
            )
        except RuntimeError as err:  # a step FlopCounterMode cannot follow: no FLOP numbers
            log.warning("could not count a training step's FLOPs (%s): recorded as 0", err)
            per_phase = {p.name: 0.0 for p in model.phases}
        self.flops_per_step = budgets.per_step(per_phase, model.phases) * ddp.world_size()
        self.images_per_step = self.batches.batch_size * sum(p.repeat for p in model.phases)
        self.total_steps = self.budget.steps(self.images_per_step, self.flops_per_step)
        self.schedulers = {
            name: s
            for name, opt in self.optimizers.items()
            if (s := build_scheduler(scheduler, opt, self.total_steps, name)) is not None
        }
        fp16 = setup.precision == "fp16"
        self.scalers = {
            p.name: torch.amp.GradScaler(setup.device.type, enabled=fp16) for p in model.phases
        }
        self.ema = EMA(model, cfg.ema_decay) if float(cfg.ema_decay) > 0 else None
        self.governor = ThreadGovernor(setup.threads) if setup.adaptive_threads else None
        self._grad_clip, self._log_every = float(cfg.grad_clip), int(cfg.log_every)
        self.state = TrainState(flops_per_step=self.flops_per_step)
        self.extra_state = extra_state or {}
        self.tracker = tracker or Tracker()
        # several ranks: a DistributedDataParallel per phase, averaging gradients during backward
        self.losses = ddp_train.loss_functions(model, params, compile=setup.compile)

    @property
    def eval_model(self) -> GenerativeModel:
        """The weights used for validation, evaluation and sampling (EMA when enabled)."""
        return self.ema.module if self.ema is not None else self.model

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "rng": checkpoint.rng_state(),
            "batches": self.batches.state_dict(),
            "state": vars(self.state),
            "extra": self.extra_state,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt["ema"] is not None:
            self.ema.load_state_dict(ckpt["ema"])
        for k, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][k])
            self.scalers[k].load_state_dict(ckpt["scalers"][k])
            if k in self.schedulers:
                state = (ckpt.get("schedulers") or {}).get(k)
                if state is None:
                    raise checkpoint.CheckpointError(
                        f"the checkpoint holds no lr-schedule state for phase {k!r}: it was "
                        "written with another scheduler config"
                    )
                self.schedulers[k].load_state_dict(state)
        self.batches.load_state_dict(ckpt["batches"])
        self.state = TrainState(**ckpt["state"])
        self.extra_state = dict(ckpt.get("extra") or {})
        checkpoint.set_rng_state(ckpt["rng"])

    def save(self, status: str | None = None) -> None:
        if status is not None:
            self.state.status = status
        if not ddp.is_main():  # one writer; every rank holds the same state
            return
        self.run.save_checkpoint("last", self.state_dict())
        self.run.write_status(
            self.state.status, self.state.step, self.extra_state.get("config_hash")
        )

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean ``loss`` of the last phase on the held-out split. Noise is seeded per batch, so
        the value does not depend on how the batches are split across ranks."""
        model, phase = self.eval_model, self.model.phases[-1].name
        n = min(len(self.val), int(self.cfg.val_examples))
        total = torch.zeros((), dtype=torch.float64, device=self.setup.device)
        with torch.random.fork_rng(devices=[]), eval_mode(model):
            for i, j in ddp.my_batches(n, int(self.cfg.batch_size)):
                torch.manual_seed((self.seed + 1) * 1_000_003 + i)
                y = self.val_labels[i:j] if self.val_labels is not None else None
                with self.setup.autocast():
                    terms = model.training_losses(
                        self.val[i:j].long(), phase, **with_labels(model, y)
                    )
                    loss = terms["loss"]
                total += loss.float().sum()
        return float(ddp.reduce_sum(total)) / max(n, 1)

    def _maybe_select(self) -> None:
        if not type(self.model).select_best:
            return
        val = self.validation_loss()
        self.state.history.append({"step": self.state.step, "val_loss": val})
        if val < self.state.best_val:
            self.state.best_val, self.state.best_step = val, self.state.step
            if ddp.is_main():
                self.run.save_checkpoint(
                    "best",
                    {
                        "model": self.eval_model.state_dict(),
                        "step": self.state.step,
                        "val_loss": val,
                    },
                )

    # -- training ----------------------------------------------------------------------------
    def _phase_step(
        self, name: str, terms_acc: dict[str, torch.Tensor], repeat: int = 1
    ) -> torch.Tensor:
        opt, scaler = self.optimizers[name], self.scalers[name]
        x, y = self.batches.next()
        self.model.zero_grad(set_to_none=True)
        with self.setup.autocast():
            terms = self.losses[name](x, name, **with_labels(self.model, y))
        loss = terms["loss"].float().mean()
        scaler.scale(loss).backward()  # several ranks: DDP leaves the mean gradient over ranks
        if self._grad_clip > 0:
            scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self._grad_clip)
        scaler.step(opt)
        scaler.update()
        for k, v in terms.items():
            terms_acc[f"{name}/{k}"] += v.detach().float().mean() / repeat  # mean over repeats
        self.state.images_seen += self.batches.batch_size  # the global batch, over all ranks
        return loss.detach()

    def _open_stats(self) -> TextIO:
        """``stats.jsonl`` for appending (rank 0; other ranks write nothing)."""
        if not ddp.is_main():
            return open(os.devnull, "w")  # noqa: SIM115  (closed by fit)
        return self.run.open_stats(self.state.step)

    def fit(self) -> TrainState:
        """Train until ``trainer.budget`` is spent; returns the final state (status set)."""
        # plain numbers: a DictConfig read costs ~8 us, several per step add up on small models
        every, clock = self._log_every, self.clock
        eval_every, ckpt_every = int(self.cfg.eval_every), int(self.cfg.ckpt_every)
        dev = self.setup.device
        acc: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=dev))
        n_acc = 0
        stats = self._open_stats()
        if ddp.is_main():
            log.info(
                "budget %s: %s (a step: %.4g FLOPs, %d images)",
                self.budget,
                f"{self.total_steps} steps" if self.total_steps else "until its seconds are spent",
                self.flops_per_step,
                self.images_per_step,
            )
        # 2 redraws/s: rich's default 10/s costs ~2% of a core, 5-10% of a 1-thread CPU step
        progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.fields[spent]}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            transient=False,
            disable=not ddp.is_main(),
            refresh_per_second=2,
        )
        try:
            with progress, _defer_signals() as stop:
                done = self._done()
                task = progress.add_task(
                    "train", total=1.0, completed=self._fraction(), spent=self._spent(), info=""
                )
                while not done:
                    if self._should_stop(stop):
                        raise Interrupted(stop[0] if stop else signal.SIGINT)
                    started = clock()
                    losses = [
                        self._phase_step(p.name, acc, p.repeat)
                        for p in self.model.phases
                        for _ in range(p.repeat)
                    ]
                    for schedule in self.schedulers.values():
                        schedule.step()
                    self.state.step += 1
                    n_acc += 1
                    # ranks follow rank 0's buffers, and its weights after the first step (ActNorm)
                    ddp_train.sync_replicas(self.model, first_step=self.state.step == 1)
                    check = self.setup.device.type == "cpu" or self.state.step % every == 0
                    if check and not self._all_finite(losses):
                        log.error(
                            "loss became %s at step %d: the run diverged; keeping the last "
                            "good checkpoint",
                            [float(v) for v in losses],
                            self.state.step,
                        )
                        self.state.status = "diverged"
                        return self.state
                    if self.ema is not None:
                        self.ema.update(self.model)
                    if self.governor is not None:
                        self.governor.tick()
                    self.state.train_flops += self.flops_per_step
                    self.state.train_seconds += clock() - started
                    done = self._done()
                    if self.state.step % every == 0 or done:
                        progress.update(task, info=self._log_row(stats, acc, n_acc))
                        acc.clear()
                        n_acc = 0
                    progress.update(task, completed=self._fraction(), spent=self._spent())
                    self._maybe_probe()
                    if self.state.step % eval_every == 0 or done:
                        self._maybe_select()
                    if self.state.step % ckpt_every == 0:
                        self.save()
                if self._should_stop(stop, now=True):
                    raise Interrupted(stop[0] if stop else signal.SIGINT)
        except KeyboardInterrupt as err:
            name = signal.Signals(getattr(err, "signum", signal.SIGINT)).name
            log.warning(
                "interrupted at step %d (%s): writing a checkpoint; resume with the same "
                "command (trainer.resume=auto)",
                self.state.step,
                name,
            )
            self.save("interrupted")
            raise
        finally:
            stats.close()
            if self.governor is not None:  # evaluation starts from the configured count
                torch.set_num_threads(self.setup.threads)
        ddp_train.check_replicas(self.model)
        self.save("finished")
        return self.state

    # -- the budget and the anytime curve ----------------------------------------------------
    def _done(self) -> bool:
        """Whether the budget is spent. A step budget (steps, images, flops) is a step count; a
        seconds budget is compared with the ranks' mean training seconds, so all ranks stop at
        the same step."""
        if self.total_steps is not None:
            return self.state.step >= self.total_steps
        seconds = self.state.train_seconds
        if ddp.world_size() > 1:
            total = ddp.reduce_sum(torch.tensor(seconds, device=ddp.comm_device()))
            seconds = float(total) / ddp.world_size()
        self._agreed_seconds = seconds  # what _fraction uses: the probe runs on all ranks alike
        return seconds >= self.budget.amount

    def _fraction(self) -> float:
        """Share of the budget spent, in [0, 1] (1 once the run is done)."""
        if self.total_steps is not None and self.state.step >= self.total_steps:
            return 1.0
        s = self.state
        seconds = s.train_seconds if self.total_steps is not None else self._agreed_seconds
        spent = self.budget.spent(s.step, s.images_seen, seconds, s.train_flops)
        return min(1.0, spent / self.budget.amount)

    def _spent(self) -> str:
        """Progress-bar text: the budget spent in its unit, and the step."""
        s, b = self.state, self.budget
        spent = b.spent(s.step, s.images_seen, s.train_seconds, s.train_flops)
        return f"{spent:.4g}/{b.amount:.4g} {b.unit} (step {s.step})"

    def _maybe_probe(self) -> None:
        """Run the probe once when the spent fraction first reaches one or more ``eval_at``
        values; its metrics join ``state.curve``. The probe sees the evaluation weights in eval
        mode, without gradients and with forked random generators, and its time is not training
        time."""
        fraction = self._fraction()
        due = [f for f in self.eval_at if f <= fraction and f not in self.state.probed]
        if not due or self.probe is None:
            return
        model, s = self.eval_model, self.state
        devices = [self.setup.device] if self.setup.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), eval_mode(model):
            metrics = self.probe(model)
        for m in metrics:
            point = CurvePoint(m, fraction, s.step, s.images_seen, s.train_seconds, s.train_flops)
            s.curve.append(point.to_dict())
        s.probed.extend(due)

    def _log_row(self, stats: TextIO, acc: dict[str, torch.Tensor], n_acc: int) -> str:
        """Write the mean training terms since the last row (averaged over ranks) to
        ``stats.jsonl`` and the tracker; returns the progress-bar text."""
        keys = sorted(acc)
        means = ddp.reduce_mean(torch.stack([acc[k] for k in keys])) if keys else []
        row: dict[str, float] = {k: float(v) / n_acc for k, v in zip(keys, means)}
        row.update(
            step=self.state.step,
            images=self.state.images_seen,
            seconds=round(self.state.train_seconds, 3),
            flops=self.state.train_flops,
        )
        stats.write(json.dumps(row) + "\n")
        self.tracker.log({f"train/{k}": v for k, v in row.items()}, self.state.step)
        stats.flush()
        info = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if "/" in k)
        return f"{info}  {self.state.step / max(self.state.train_seconds, 1e-9):.1f} steps/s"

    def _all_finite(self, losses: list[torch.Tensor]) -> bool:
        """Whether this step's losses are finite on every rank (all ranks decide alike)."""
        return bool(torch.isfinite(ddp.reduce_sum(torch.stack(losses))).all())

    def _should_stop(self, stop: list[int], now: bool = False) -> bool:
        """Whether Ctrl-C arrived. With several ranks, all must stop at the same step: they agree
        every step on CPU and at the ``log_every`` cadence on CUDA (no extra device sync)."""
        if ddp.world_size() == 1:
            return bool(stop)
        if not now and self.setup.device.type != "cpu" and self.state.step % self._log_every:
            return False
        return bool(ddp.reduce_sum(torch.tensor(float(bool(stop)))) > 0)
