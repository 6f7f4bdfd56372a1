"""``genbench train | eval | sample``: each takes the composed Hydra config of its command."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from genbench import checkpoint
from genbench import distributed as ddp
from genbench.build import build, config_hash, resolved, seed_everything
from genbench.errors import ConfigError, UserError, positive_int
from genbench.eval.anytime import Probe, ProbeSettings, build_probe
from genbench.eval.evaluate import evaluate, sample_to_files
from genbench.eval.metric import Metric, MetricSpec
from genbench.eval.objective import resolve_objective, validation_objective
from genbench.eval.registry import register_spec
from genbench.leaderboard.report import print_metrics
from genbench.leaderboard.store import RunRecord, Store
from genbench.output import check_out_folder
from genbench.record import open_store, record
from genbench.rundir import RunDir, find_resumable, move_logs
from genbench.tracking import Tracker, make_tracker
from genbench.train import distributed as ddp_train
from genbench.train.device import setup_device
from genbench.train.loop import Trainer, TrainState
from genbench.tuning import objective_name, pop_search_space, tuning_record
from genbench.validation import check_evaluation, validate

log = logging.getLogger(__name__)
#: the runner's own row: the validation loss of the weights it evaluated (models that select by it)
BEST_VAL_LOSS = register_spec(
    MetricSpec(name="best_val_loss", lower_is_better=True, label="best val loss")
)


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _choose_run_dir(cfg: DictConfig, outputs: Path, hash_: str) -> tuple[RunDir, bool]:
    """The run folder to use and whether it holds a checkpoint to resume."""
    run = RunDir(cfg.paths.run_dir)
    if run.checkpoint_file("last").exists():
        found = run.status().get("config_hash")
        if found != hash_:
            raise checkpoint.CheckpointError(
                f"{str(run.path)!r} holds a checkpoint of a different config (hash {found} vs "
                f"{hash_}); pick another hydra.run.dir — nothing was overwritten"
            )
        return run, True
    if cfg.trainer.resume == "auto":
        store = Store(outputs / "leaderboard.sqlite")
        recorded = {r["run_dir"] for r in store.runs()} if store.path.exists() else set()
        previous = find_resumable(outputs, hash_, recorded)
        if previous is not None:
            return previous, True
    return run, False


def _start(
    cfg: DictConfig, outputs: Path, hash_: str, hold: contextlib.ExitStack
) -> tuple[Path, bool] | None:
    """The run folder and whether to resume it, or None to skip a config that already finished
    in a sweep. Decided by rank 0 alone when several processes train together; rank 0 takes the
    run folder's lock (held in ``hold``) and moves its log file there."""
    store = open_store(outputs)
    if _is_multirun() and not cfg.trainer.rerun:
        done = store.finished_run(hash_)
        if done:
            log.info(
                "skipping: this config already finished in %s (trainer.rerun=true to "
                "train it again)",
                done,
            )
            return None
    run, resuming = _choose_run_dir(cfg, outputs, hash_)
    hold.enter_context(run.lock("train"))
    move_logs(Path(cfg.paths.run_dir), run)
    if run.path.resolve() != Path(cfg.paths.run_dir).resolve():
        log.info("resuming the unfinished run %s (trainer.resume=auto)", run.path)
    return run.path, resuming


def train_command(cfg: DictConfig) -> RunRecord | None:
    """Train, evaluate and record one run; returns its leaderboard record (on rank 0; other
    ranks of a multi-process run return None). ``cfg.tune`` (the search space) is taken
    out of ``cfg``; ``RunRecord.tuning`` holds the validation objective (``objective=``)."""
    space = pop_search_space(cfg)
    validate(cfg)
    with ddp.process_group():
        setup = ddp.init(setup_device(cfg.device), cfg.device.get("threads", "auto"))
        return _train(cfg, setup, space)


def _train(cfg: DictConfig, setup: Any, space: dict[str, str]) -> RunRecord | None:
    ddp_train.check_batch_size(int(cfg.trainer.batch_size))
    outputs = Path(cfg.paths.outputs)
    hash_ = config_hash(cfg)
    with contextlib.ExitStack() as hold:  # the run folder's lock, on rank 0
        start = ddp.on_main(_start, cfg, outputs, hash_, hold)
        if start is None:
            return None
        run, resuming = RunDir(start[0]), start[1]
        ddp_train.adopt_run_dir(Path(cfg.paths.run_dir), run.path)
        plain = resolved(cfg)
        plain["paths"]["run_dir"] = str(run.path)
        plain["run"]["world_size"] = ddp.world_size()
        seed_everything(int(cfg.seed))
        data, model = build(cfg, setup)
        asked = objective_name(cfg.get("objective"))
        objective = (
            None if asked is None else resolve_objective(asked, type(model).likelihood, data.is_toy)
        )
        ddp_train.seed_rank(int(cfg.seed))  # same initial weights on every rank, then own noise
        probe = _probe(cfg, data, setup.device, outputs)
        trainer = Trainer(
            model,
            data.train,
            data.val,
            cfg.trainer,
            cfg.optimizer,
            setup,
            run,
            int(cfg.seed),
            {"config_hash": hash_},
            scheduler=cfg.get("scheduler"),
            augment=data.augment,
            probe=probe,
            train_labels=data.train_labels,
            val_labels=data.val_labels,
        )
        if resuming:
            trainer.load_state_dict(run.load_checkpoint("last"))
            ddp_train.seed_rank(int(cfg.seed), trainer.state.step)
        # the run folder is written only once the data, model and optimizers are known to be valid
        if ddp.is_main():
            run.write_config(plain)
        log.info(
            "%s on %s: %s parameters, data %s with %d levels, device %s (%d threads)",
            cfg.run.model,
            cfg.run.dataset,
            f"{sum(p.numel() for p in model.parameters()):,}",
            data.shape,
            data.levels,
            setup.device,
            setup.threads,
        )
        if resuming:
            log.info("resumed at step %d (status %s)", trainer.state.step, trainer.state.status)
        trainer.tracker = (
            make_tracker(cfg.logger, plain, run.path, trainer.extra_state.get("tracker_id"))
            if ddp.is_main()
            else Tracker()
        )
        trainer.extra_state["tracker_id"] = trainer.tracker.run_id
        try:
            return _train_and_record(
                cfg, plain, trainer, data, setup, run, outputs, hash_, (objective, space)
            )
        finally:
            trainer.tracker.finish()


def _probe(cfg: DictConfig, data: Any, device: torch.device, outputs: Path) -> Probe | None:
    """The anytime probe (:mod:`genbench.eval.anytime`) when ``trainer.eval_at`` names points
    of the budget, else None. It samples with the run's sampler and shares the final
    evaluation's cache (domain extractor, reference features)."""
    if not cfg.trainer.get("eval_at"):
        return None
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.sampler else {}
    settings = ProbeSettings.from_cfg(cfg.trainer.get("probe"))
    return build_probe(settings, data, cfg.eval, sampler, device, outputs / "cache")


def _train_and_record(
    cfg: DictConfig,
    plain: dict,
    trainer: Trainer,
    data: Any,
    setup: Any,
    run: RunDir,
    outputs: Path,
    hash_: str,
    tune: tuple[str | None, dict[str, str]],
) -> RunRecord | None:
    model, main = trainer.model, ddp.is_main()
    try:
        state = trainer.fit() if trainer.state.status != "finished" else trainer.state
    except KeyboardInterrupt:
        if main:
            record(plain, run, outputs, model, trainer.state, setup.device.type, [], hash_)
        raise
    if state.status == "diverged":
        if not main:
            return None
        run.write_status("diverged", state.step, hash_)
        tuning = tuning_record(tune[1], tune[0], None)  # a sweeper reads it as +inf
        return record(plain, run, outputs, model, state, setup.device.type, [], hash_, tuning)
    eval_model = trainer.eval_model
    if main:
        weights, which = run.eval_weights(type(model).select_best, setup.device)
        eval_model.load_state_dict(weights)
        log.info("evaluating the %s weights", which)
    ddp.broadcast_module(eval_model)  # rank 0 read the file; the others get its weights
    rows = _evaluate(eval_model, data, cfg, setup.device, outputs, run)
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.sampler else {}
    objective = (
        None
        if tune[0] is None
        else validation_objective(
            eval_model,
            data,
            tune[0],
            cfg.get("objective_examples", 500),
            cfg.eval,
            sampler,
            setup.device,
            outputs / "cache",
        )
    )
    if not main:
        return None
    if state.best_step >= 0:  # models that select by validation loss
        rows.append(Metric("best_val_loss", state.best_val, "measured", "val", len(data.val)))
    if objective is not None:
        rows.append(objective)
    value = None if objective is None else objective.value
    tuning = tuning_record(tune[1], tune[0], value)
    rec = record(plain, run, outputs, model, state, setup.device.type, rows, hash_, tuning)
    trainer.tracker.log({f"eval/{m.name}": m.value for m in rows}, state.step)
    trainer.tracker.log_image("eval/samples", run.samples_png, state.step)
    trainer.tracker.log_table(
        "eval/metrics", [m.to_dict() | {"protocol": m.protocol_key} for m in rows]
    )
    print_metrics(rec, rows)
    _floor(cfg, data, setup.device, outputs)
    return rec


def _floor(cfg: DictConfig, data: Any, device: torch.device, outputs: Path) -> None:
    """Record the data floor of this evaluation's protocol (:mod:`genbench.floor`); once
    computed it is read back. After the model's own record: a failure here only warns."""
    from genbench.floor import ensure_floor

    try:
        ensure_floor(data, str(cfg.run.dataset), cfg.eval, device=device, outputs=outputs)
    except (UserError, OSError) as err:
        log.warning("the data floor was not recorded: %s", err)


def _evaluate(
    model: Any, data: Any, cfg: DictConfig, device: torch.device, outputs: Path, run: RunDir
) -> list[Metric]:
    """Evaluate on every rank. With several ranks, all share the test-set NLL and the sampling;
    rank 0 alone computes sample-quality metrics and writes files. Other ranks return []."""
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.sampler else {}
    check_evaluation(cfg.eval, model, sampler)  # before any work: one sentence for a bad option
    if ddp.is_main():
        return evaluate(
            model, data, cfg.eval, sampler, device, outputs / "cache", run.samples_png, run
        )
    eval_cfg = OmegaConf.merge(cfg.eval, {"sample_metrics": False})
    with tempfile.TemporaryDirectory(prefix="genbench-rank") as tmp:
        evaluate(model, data, eval_cfg, sampler, device, Path(tmp), Path(tmp) / "grid.png")
    return []


def load_run(cfg: DictConfig) -> tuple[DictConfig, RunDir, Any, Any, Any, TrainState]:
    """Rebuild a run from its folder, read as untrusted data: (run config, folder, setup, data,
    model with its evaluation weights, training state)."""
    if cfg.get("run") in (None, "", "???"):
        raise ConfigError("run= is required: the run folder, e.g. run=outputs/runs/<date>/<id>")
    run = RunDir(str(cfg.run)).require_run()
    run_cfg = run.read_config()
    if not isinstance(run_cfg.get("device"), DictConfig):
        raise ConfigError(f"{str(run.config_file)!r} has no device block")
    run_cfg.device = (
        OmegaConf.merge(run_cfg.device, cfg.device) if "device" in cfg else run_cfg.device
    )
    setup = ddp.init(setup_device(run_cfg.device), run_cfg.device.get("threads", "auto"))
    try:
        data, model = build(run_cfg, setup)
    except ConfigError as err:
        raise ConfigError(f"{str(run.config_file)!r}: {err}") from None
    try:
        state = TrainState(**run.load_checkpoint("last")["state"])
    except (KeyError, TypeError) as err:
        raise checkpoint.CheckpointError(
            f"the checkpoint in {str(run.path)!r} has no valid training state ({err})"
        ) from None
    weights, which = run.eval_weights(type(model).select_best, setup.device)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise checkpoint.CheckpointError(
            f"the checkpoint in {str(run.path)!r} does not match its config's model "
            f"({str(err).splitlines()[0]})"
        ) from None
    log.info("%s: the %s weights", run.path, which)
    return run_cfg, run, setup, data, model, state


def eval_command(cfg: DictConfig) -> RunRecord | None:
    """Re-evaluate a run from its checkpoint with the current ``eval`` / ``sampler`` config
    (under torchrun, the ranks share the work and rank 0 records; the others return None)."""
    with ddp.process_group():  # load_run starts it
        return _eval(cfg)


def _eval(cfg: DictConfig) -> RunRecord | None:
    run_cfg, run, setup, data, model, state = load_run(cfg)
    outputs = Path(cfg.paths.outputs)
    ddp.on_main(open_store, outputs)  # fail before overwriting the run's metrics.json
    ddp.on_main(run.check_writable)  # ... or before writing anything it could not finish
    run_cfg.eval, run_cfg.sampler = cfg.eval, cfg.sampler
    with run.lock("eval") if ddp.is_main() else contextlib.nullcontext():
        rows = _evaluate(model, data, run_cfg, setup.device, outputs, run)
        if not ddp.is_main():
            return None
        plain = resolved(run_cfg)
        objective, tuning = _kept_objective(run)  # chosen in training: kept as it was
        rec = record(
            plain,
            run,
            outputs,
            model,
            state,
            setup.device.type,
            rows + objective,
            run.status().get("config_hash") or config_hash(run_cfg),
            tuning,
        )
    print_metrics(rec, rows)
    _floor(run_cfg, data, setup.device, outputs)
    return rec


def _kept_objective(run: RunDir) -> tuple[list[Metric], dict[str, Any]]:
    """The validation ``objective`` rows and the tuning record a run was trained with (re-evaluation
    keeps them: they select among tuning trials); empty when unreadable."""
    from genbench.files import FileError

    try:
        rows = [
            Metric.from_dict(m)
            for m in run.read_metrics()
            if m.get("name") == "objective" and m.get("split") == "val"
        ]
        found = run.read_record()
        tuning = found.get("tuning") if isinstance(found, dict) else None
    except (FileError, ValueError):
        return [], {}
    return rows, tuning if isinstance(tuning, dict) else {}


def sample_label(value: Any, model: Any, data: Any) -> int | None:  # noqa: ANN401
    """``label=``: a class index or name of a conditional model's dataset, or null."""
    if value is None:
        return None
    if not model.conditional:
        raise ConfigError(f"label={value!r} is invalid: the run's model is unconditional")
    classes = list(data.classes)
    if str(value) in classes:
        return classes.index(str(value))
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return value
    raise ConfigError(
        f"label={value!r} is invalid: expected null or one of the classes {classes} "
        f"(a name or an index in [0, {len(classes)}))"
    )


def sample_command(cfg: DictConfig) -> Path | None:
    """Write an image grid and an ``.npz`` of ``n`` seeded samples from a run (under torchrun,
    the ranks share the sampling and rank 0 writes; the others return None)."""
    with ddp.process_group():  # load_run starts it
        return _sample(cfg)


def _sample(cfg: DictConfig) -> Path | None:
    run_cfg, run, setup, data, model, _ = load_run(cfg)
    n = positive_int("n", cfg.n)
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.sampler else {}
    check_evaluation(cfg.eval, model, sampler)
    label = sample_label(cfg.get("label"), model, data)
    if not ddp.is_main():
        with tempfile.TemporaryDirectory(prefix="genbench-rank") as tmp:
            sample_to_files(model, data, n, cfg.eval, sampler, setup.device, Path(tmp), label)
        return None
    out = check_out_folder(cfg.out, own_run=run.path) if cfg.get("out") else run.path
    png = sample_to_files(model, data, n, cfg.eval, sampler, setup.device, out, label)
    log.info("wrote %s and %s", png, png.with_suffix(".npz"))
    return png


def train_objective(rec: RunRecord | None, cfg: DictConfig) -> float | None:
    """What ``genbench train`` returns to Hydra: the run's validation objective (lower is
    better), ``+inf`` for a run without one (diverged, or no extractor), so a sweeper ranks it
    last; a config a sweep skipped as already finished returns its recorded objective. None on
    ranks other than 0."""
    if rec is None:
        if not ddp.is_main():
            return None
        store = Store(Path(cfg.paths.outputs) / "leaderboard.sqlite")
        hash_ = config_hash(cfg)
        rows = [r for r in store.runs() if r["config_hash"] == hash_ and r["status"] == "finished"]
        tuning = (rows[-1].get("tuning") or {}) if rows else {}
    else:
        tuning = rec.tuning
    if not tuning.get("objective"):  # no objective was asked for (a plain run or grid sweep)
        return None
    value = tuning.get("value")
    return float("inf") if value is None else float(value)
