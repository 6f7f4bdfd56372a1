"""Runner overhead: genbench's Trainer.fit() against a bare PyTorch loop over the same model,
interleaved step by step so both see the same machine load.

Both sides build the model from the same ``conf/model`` yaml and seed, draw the same batches
(``Batches`` with the run seed), and step the same per-phase optimizers (``conf/optimizer`` with
the model's phase overrides). The bare loop is ``zero_grad``, ``training_losses(x)["loss"]
.mean().backward()``, ``step`` per phase repeat, on its own copy of the model. The Trainer runs
with the default cadence of ``conf/train.yaml``: progress bar (rendered to a terminal that
discards its output), EMA, stats.jsonl logging, validation and checkpoints.

A hook at the start of each Trainer step runs one bare step first and times it; the Trainer's own
step is the time from the end of that bare step to the start of the next hook (it contains the
phases and everything fit() does after them). Clock readings are wall and CPU time: the main
thread's, plus the CPU of genbench's other threads (rich's progress bar) during fit(), charged to
the Trainer. The first two steps of each side are warm-up and not counted. Validation passes and
checkpoints are timed per call and amortized at the default cadence, fit()'s start-up and end
over a default run:

    loop     = mean Trainer step (validation/checkpoints taken out)
    defaults = loop + val/call / eval_every + checkpoint/call / ckpt_every + extra / max_steps
    ratio    = loop (or defaults) / mean bare step           one ratio per run, median over runs
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import rich
import torch
from omegaconf import DictConfig, OmegaConf

from bench_lib.common import (
    NOT_MEASURED,
    Check,
    Result,
    Spread,
    build_model,
    compose_train,
    dataset,
    log,
    make_optimizers,
    model_names,
    sync,
    table,
    verdict,
)
from genbench.data.base import Batches
from genbench.train.device import DeviceSetup
from genbench.train.loop import Trainer

TARGET = 1.03
SEED = 0
WARMUP = 2  # steps of each side not counted


class BareLoop:
    """The bare PyTorch loop over its own model, one training step per call."""

    def __init__(self, model: Any, data: Any, cfg: DictConfig) -> None:
        self.model = model.train()
        self.opts = make_optimizers(model, cfg.optimizer)
        self.batches = Batches(data.train, int(cfg.trainer.batch_size), SEED)

    def step(self) -> None:
        for p in self.model.phases:
            for _ in range(p.repeat):
                x = self.batches.next()
                self.model.zero_grad(set_to_none=True)
                self.model.training_losses(x, p.name)["loss"].mean().backward()
                self.opts[p.name].step()


class Recorder:
    """Per-step (wall, CPU) seconds of both sides and spans of the Trainer's periodic calls."""

    def __init__(self, device: torch.device, bare: BareLoop) -> None:
        self.device, self.bare = device, bare
        self.last: tuple[float, float] | None = None
        self.genbench: list[tuple[float, float, float]] = []  # (start wall, wall, cpu)
        self.bare_steps: list[tuple[float, float]] = []
        self.spans: dict[str, list[tuple[float, float, float]]] = defaultdict(list)

    def now(self) -> tuple[float, float]:
        """(wall, this thread's CPU) seconds."""
        sync(self.device)
        return time.perf_counter(), time.thread_time()

    def tick(self) -> None:
        """At the start of a Trainer step: close the previous one, run and time a bare step."""
        t = self.now()
        if self.last is not None:
            self.genbench.append((self.last[0], t[0] - self.last[0], t[1] - self.last[1]))
        self.bare.step()
        self.last = self.now()
        self.bare_steps.append((self.last[0] - t[0], self.last[1] - t[1]))

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        """Record every call of ``obj.attr`` as a span ``name`` (start, wall, CPU)."""
        inner = getattr(obj, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            w, c = time.perf_counter(), time.thread_time()
            out = inner(*args, **kwargs)
            self.spans[name].append((w, time.perf_counter() - w, time.thread_time() - c))
            return out

        setattr(obj, attr, wrapper)

    def result(
        self, total: tuple[float, float], background: float, trainer: DictConfig, steps: int
    ) -> dict[str, Any]:
        """Seconds per step for each side and kind (wall, cpu); see the module docstring.
        ``background``: CPU seconds of the other threads during fit() (rich's progress bar),
        added to the Trainer's CPU per step."""
        out: dict[str, Any] = {"ema": sum(s[1] for s in self.spans["ema"]) / steps}
        g = self.genbench[WARMUP:]
        for k, kind in enumerate(("wall", "cpu")):
            inside = sum(
                s[k + 1]
                for name in ("val", "ckpt")
                for s in self.spans[name]
                if any(a <= s[0] < a + w for a, w, _ in g)
            )
            loop = (sum(x[k + 1] for x in g) - inside) / len(g) + k * background / steps
            bare = sum(x[k] for x in self.bare_steps[WARMUP:]) / len(self.bare_steps[WARMUP:])
            per = {name: [s[k + 1] for s in self.spans[name]] for name in ("val", "ckpt")}
            per_call = {name: sum(v) / len(v) if v else 0.0 for name, v in per.items()}
            extra = (
                total[k]
                - sum(x[k] for x in self.bare_steps)
                - steps * loop
                - sum(sum(v) for v in per.values())
            )
            defaults = (
                loop
                + per_call["val"] / int(trainer.eval_every)
                + per_call["ckpt"] / int(trainer.ckpt_every)
                + extra / int(trainer.max_steps)
            )
            out[kind] = {
                "bare": bare,
                "loop": loop,
                "defaults": defaults,
                "extra": extra,
                **per_call,
            }
        return out


def interleaved_run(
    cfg: DictConfig, data: Any, device: torch.device, steps: int, run_dir: Path
) -> dict[str, Any]:
    """One Trainer.fit() of ``steps`` steps with a bare step run before each of its steps."""
    bare = BareLoop(build_model(cfg, data, device, SEED), data, cfg)
    model = build_model(cfg, data, device, SEED)
    tcfg = OmegaConf.merge(cfg.trainer, {"max_steps": steps})
    setup = DeviceSetup(device, "fp32", False, torch.get_num_threads())
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, data.train, data.val, tcfg, cfg.optimizer, setup, run_dir, SEED)
    rec = Recorder(device, bare)
    per_step = sum(p.repeat for p in model.phases)
    inner, calls = trainer._phase_step, [0]

    def phase_step(*args: Any, **kwargs: Any) -> Any:
        if calls[0] % per_step == 0:
            rec.tick()
        calls[0] += 1
        return inner(*args, **kwargs)

    trainer._phase_step = phase_step
    rec.wrap(trainer, "_maybe_select", "val")
    rec.wrap(trainer, "save", "ckpt")
    if trainer.ema is not None:
        rec.wrap(trainer.ema, "update", "ema")
    begin, process = rec.now(), time.process_time()
    trainer.fit()
    end, process = rec.now(), time.process_time() - process
    thread = end[1] - begin[1]
    return rec.result((end[0] - begin[0], thread), process - thread, cfg.trainer, steps)


def measure_model(
    name: str, device: torch.device, steps: int, runs: int, tmp: Path
) -> dict[str, Any]:
    """``runs`` interleaved runs of one model: medians and ranges of the per-run figures."""
    cfg = compose_train(f"model={name}", "dataset=digits")
    data = dataset("digits", str(device))
    rows = [interleaved_run(cfg, data, device, steps, tmp / f"{r}") for r in range(runs)]

    def s(fn: Any) -> Spread:
        return Spread.of([fn(r) for r in rows])

    out = {
        "bare_ms": s(lambda r: 1e3 * r["wall"]["bare"]),
        "loop_ms": s(lambda r: 1e3 * r["wall"]["loop"]),
        "ema_share": s(lambda r: r["ema"] / r["wall"]["bare"]),
        "val_ms": s(lambda r: 1e3 * r["wall"]["val"]),
        "ckpt_ms": s(lambda r: 1e3 * r["wall"]["ckpt"]),
        "extra_ms": s(lambda r: 1e3 * r["wall"]["extra"]),
        "runs": rows,
    }
    for kind in ("wall", "cpu"):
        out[f"loop_{kind}"] = s(lambda r, k=kind: r[k]["loop"] / r[k]["bare"])
        out[f"defaults_{kind}"] = s(lambda r, k=kind: r[k]["defaults"] / r[k]["bare"])
    return out


def run(quick: bool) -> Result:
    steps, runs = (14, 2) if quick else (60, 5)
    res = Result(
        "1. Runner overhead: genbench Trainer vs bare PyTorch loop "
        f"(digits, batch 128, 1 CPU thread, {runs} runs of {steps} interleaved steps)"
    )
    devnull = open(os.devnull, "w")  # noqa: SIM115 (kept open while the bars render)
    rich.reconfigure(file=devnull, force_terminal=True, width=120)
    rows, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            for name in model_names():
                log(f"runner overhead: {name} on {device}")
                with tempfile.TemporaryDirectory(prefix="gb_bench_") as tmp:
                    m = measure_model(name, torch.device(device), steps, runs, Path(tmp))
                res.raw[f"{name}@{device}"] = m
                ok = m["defaults_wall"].median <= TARGET
                res.checks.append(
                    Check(
                        f"runner {name}@{device} genbench/bare step time, "
                        "defaults (wall; CPU time)",
                        f"{m['defaults_wall'].fmt(3)}; {m['defaults_cpu'].median:.3f}",
                        f"<= {TARGET}",
                        ok,
                    )
                )
                rows.append(
                    [
                        name,
                        device,
                        f"{m['bare_ms'].median:.1f}",
                        f"{m['loop_ms'].median:.1f}",
                        f"{100 * m['ema_share'].median:.1f}%",
                        f"{m['val_ms'].median:.0f}",
                        f"{m['ckpt_ms'].median:.0f}",
                        f"{m['extra_ms'].median:.0f}",
                        m["loop_wall"].fmt(3),
                        f"{m['loop_cpu'].median:.3f}",
                        m["defaults_wall"].fmt(3),
                        f"{m['defaults_cpu'].median:.3f}",
                        verdict(ok),
                    ]
                )
    finally:
        torch.set_num_threads(threads)
        rich.reconfigure()
        devnull.close()
    if not torch.cuda.is_available():
        rows.append(["all models", "cuda", NOT_MEASURED + " (no GPU)", *["-"] * 10])
        res.checks.append(Check("runner overhead on GPU", NOT_MEASURED + " (no GPU)"))
    res.table = table(
        [
            "model",
            "device",
            "bare ms/step",
            "genbench ms/step",
            "EMA / bare step",
            "val ms/pass",
            "ckpt ms/save",
            "extra ms/run",
            "loop ratio",
            "loop ratio (CPU)",
            "defaults ratio",
            "defaults ratio (CPU)",
            f"<= {TARGET}",
        ],
        rows,
    )
    res.notes = [
        "ratio = genbench / bare seconds per step, one per run (a bare step runs before every "
        "Trainer step), median [min-max] over runs. 'loop': steady-state steps (progress bar, "
        "EMA, loss accumulation, finiteness check, stats logging). 'defaults': a default run "
        "(conf/train.yaml: 1200 steps, validation every 100, checkpoint every 200, plus "
        "fit()'s start-up and end, 'extra ms/run'), each part timed inside the measured runs.",
        "CPU = main-thread CPU time per step, plus the progress bar thread's CPU charged to "
        "genbench; less sensitive than wall time to the other processes sharing the cores.",
    ]
    return res
