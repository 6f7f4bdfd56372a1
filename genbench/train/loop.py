"""The family-agnostic training loop.

It knows the model only through :mod:`genbench.models.base`: it steps one optimizer per
``model.phases`` entry, reduces ``training_losses(x, phase)["loss"]`` to its mean, owns autocast,
grad scaling and clipping, keeps an EMA of the weights, selects the best-validation weights,
checkpoints atomically and resumes exactly.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from genbench.data.base import Batches
from genbench.models.base import GenerativeModel
from genbench.tracking import Tracker
from genbench.train import checkpoint
from genbench.train.device import DeviceSetup, eval_mode
from genbench.train.ema import EMA

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a run has done so far (saved in every checkpoint)."""

    step: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0
    best_val: float = math.inf
    best_step: int = -1
    status: str = "running"  # running | finished | diverged | interrupted
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Trains ``model`` on ``train`` batches; writes ``run_dir/checkpoints/{last,best}.pt``."""

    def __init__(self, model: GenerativeModel, train: torch.Tensor, val: torch.Tensor,
                 cfg: DictConfig, optimizer: DictConfig, setup: DeviceSetup, run_dir: Path,
                 seed: int, extra_state: dict[str, Any] | None = None,
                 tracker: Tracker | None = None) -> None:
        self.model, self.val, self.cfg, self.setup = model, val, cfg, setup
        self.run_dir, self.seed = run_dir, seed
        self.ckpt_dir = run_dir / "checkpoints"
        self.batches = Batches(train, int(cfg.batch_size), seed)
        self.optimizers = {p.name: instantiate(optimizer, **dict(p.optimizer))(
            params=[q for q in model.parameters_for(p.name) if q.requires_grad])
            for p in model.phases}
        warmup = int(cfg.get("warmup_steps", 0) or 0)
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / warmup)) for name, opt in self.optimizers.items()
        } if warmup > 0 else {}
        fp16 = setup.precision == "fp16"
        self.scalers = {p.name: torch.amp.GradScaler(setup.device.type, enabled=fp16)
                        for p in model.phases}
        self.ema = EMA(model, cfg.ema_decay) if float(cfg.ema_decay) > 0 else None
        self.state = TrainState()
        self.extra_state = extra_state or {}
        self.tracker = tracker or Tracker()
        self.losses = {p.name: (torch.compile(model.training_losses) if setup.compile
                                else model.training_losses) for p in model.phases}

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
                self.schedulers[k].load_state_dict(ckpt["schedulers"][k])
        self.batches.load_state_dict(ckpt["batches"])
        self.state = TrainState(**ckpt["state"])
        self.extra_state = dict(ckpt.get("extra") or {})
        checkpoint.set_rng_state(ckpt["rng"])

    def save(self, status: str | None = None) -> None:
        if status is not None:
            self.state.status = status
        checkpoint.save(self.state_dict(), self.ckpt_dir / "last.pt")
        checkpoint.write_status(self.run_dir, self.state.status, self.state.step,
                                self.extra_state.get("config_hash"))

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean ``loss`` of the last phase on the held-out split, with a fixed noise seed."""
        model, phase = self.eval_model, self.model.phases[-1].name
        n = min(len(self.val), int(self.cfg.val_examples))
        bs, total = int(self.cfg.batch_size), 0.0
        with torch.random.fork_rng(devices=[]), eval_mode(model):
            torch.manual_seed(self.seed + 1)
            for i in range(0, n, bs):
                x = self.val[i:i + bs].long()
                with self.setup.autocast():
                    total += float(model.training_losses(x, phase)["loss"].float().sum())
        return total / max(n, 1)

    def _maybe_select(self) -> None:
        if not type(self.model).select_best:
            return
        val = self.validation_loss()
        self.state.history.append({"step": self.state.step, "val_loss": val})
        if val < self.state.best_val:
            self.state.best_val, self.state.best_step = val, self.state.step
            checkpoint.save({"model": self.eval_model.state_dict(), "step": self.state.step,
                             "val_loss": val}, self.ckpt_dir / "best.pt")

    # -- training ----------------------------------------------------------------------------
    def _phase_step(self, name: str, terms_acc: dict[str, torch.Tensor]) -> torch.Tensor:
        opt, scaler = self.optimizers[name], self.scalers[name]
        x = self.batches.next()
        self.model.zero_grad(set_to_none=True)
        with self.setup.autocast():
            terms = self.losses[name](x, name)
        loss = terms["loss"].float().mean()
        scaler.scale(loss).backward()
        if float(self.cfg.grad_clip) > 0:
            scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, float(self.cfg.grad_clip))
        scaler.step(opt)
        scaler.update()
        if name in self.schedulers:
            self.schedulers[name].step()
        for k, v in terms.items():
            terms_acc[f"{name}/{k}"] += v.detach().float().mean()
        self.state.images_seen += x.shape[0]
        return loss.detach()

    def _open_stats(self) -> TextIO:
        """``stats.jsonl`` opened for appending, without rows past the current step: a killed run
        may have logged steps after its last checkpoint, which the resumed run logs again."""
        path = self.run_dir / "stats.jsonl"
        if path.exists():
            kept = []
            for line in path.read_text().splitlines(keepends=True):
                try:
                    if json.loads(line)["step"] <= self.state.step and line.endswith("\n"):
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    pass  # a line cut short by the kill
            tmp = self.run_dir / ".stats.jsonl.tmp"
            tmp.write_text("".join(kept))
            tmp.replace(path)
        return path.open("a")

    def fit(self) -> TrainState:
        """Train until ``trainer.max_steps``; returns the final state (status set)."""
        max_steps, every = int(self.cfg.max_steps), int(self.cfg.log_every)
        dev = self.setup.device
        acc: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=dev))
        n_acc, t0 = 0, time.perf_counter() - self.state.train_seconds
        stats = self._open_stats()
        progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False)
        try:
            with progress:
                task = progress.add_task("train", total=max_steps, completed=self.state.step,
                                         info="")
                while self.state.step < max_steps:
                    losses = [self._phase_step(p.name, acc)
                              for p in self.model.phases for _ in range(p.repeat)]
                    self.state.step += 1
                    n_acc += 1
                    check = self.setup.device.type == "cpu" or self.state.step % every == 0
                    if check and not all(torch.isfinite(v) for v in losses):
                        log.error("loss became %s at step %d: the run diverged; keeping the last "
                                  "good checkpoint", [float(v) for v in losses], self.state.step)
                        self.state.status = "diverged"
                        return self.state
                    if self.ema is not None:
                        self.ema.update(self.model)
                    self.state.train_seconds = time.perf_counter() - t0
                    if self.state.step % every == 0 or self.state.step == max_steps:
                        row = {k: float(v) / n_acc for k, v in acc.items()}
                        row.update(step=self.state.step, images=self.state.images_seen,
                                   seconds=round(self.state.train_seconds, 3))
                        stats.write(json.dumps(row) + "\n")
                        self.tracker.log({f"train/{k}": v for k, v in row.items()},
                                         self.state.step)
                        stats.flush()
                        info = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if "/" in k)
                        rate = self.state.step / max(self.state.train_seconds, 1e-9)
                        progress.update(task, info=f"{info}  {rate:.1f} steps/s")
                        acc.clear()
                        n_acc = 0
                    progress.update(task, completed=self.state.step)
                    if (self.state.step % int(self.cfg.eval_every) == 0
                            or self.state.step == max_steps):
                        self._maybe_select()
                    if self.state.step % int(self.cfg.ckpt_every) == 0:
                        self.save()
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: writing a checkpoint; resume with the same "
                        "command (trainer.resume=auto)", self.state.step)
            self.save("interrupted")
            raise
        finally:
            stats.close()
        self.save("finished")
        return self.state
