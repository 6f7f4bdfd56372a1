"""``genbench <command> [overrides]``: one Hydra app per command, dispatched on the first argument.

Commands: train, eval, sample, leaderboard, score, floor, families. ``genbench <command> --help``
shows Hydra's help for that command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

# Before torch loads: idle OpenMP threads spin briefly, then sleep (genbench/train/device.py);
# the user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
SPIN = {
    "GOMP_SPINCOUNT": "3000",  # GNU OpenMP (torch's Linux wheels): spin ~3000 rounds
    "KMP_BLOCKTIME": "0",
}  # LLVM/Intel OpenMP builds: sleep at once, as PASSIVE did
if "OMP_WAIT_POLICY" not in os.environ:
    for _key, _value in SPIN.items():
        os.environ.setdefault(_key, _value)

COMMANDS: dict[str, str] = {
    "train": "train a model, evaluate it and record it in the leaderboard",
    "eval": "re-evaluate a finished run from its checkpoint (run=<folder>)",
    "sample": "write a PNG grid and an .npz of samples from a run (run=<folder> n=64)",
    "leaderboard": "show, export or plot runs (format=table|md|csv|json|html, out=, sort=, best=, "
    "agg=, refs=, plot=; `leaderboard rebuild`)",
    "score": "FID / IS / KID / precision-recall between two image sets (input1=, input2=)",
    "floor": "score real held-out images like a model's samples and record the `data` row "
    "(dataset=, eval=)",
    "families": "the model taxonomy: families, likelihood kinds and registered models",
}


#: command-line keys renamed in this release: old key -> new key. The old spelling still works
#: (rewritten, with a warning on stderr); it will be refused in the next release.
RENAMED: dict[str, str] = {
    "trainer.warmup_steps": "scheduler.warmup_steps",
    "model.n_dis": "model.d_steps",
    "model.n_critic": "model.d_steps",
    "model.gp_weight": "model.reg_weight",
}


def rename_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` with the keys of :data:`RENAMED` rewritten to their new names (a deprecation
    warning on stderr for each)."""
    out = []
    for item in overrides:
        prefix = item[: len(item) - len(item.lstrip("+~"))]
        key, eq, value = item[len(prefix) :].partition("=")
        if key in RENAMED:
            new = RENAMED[key]
            print(
                f"warning: {key} is deprecated and will be removed in the next release: use "
                f"{new} (read as {new}{eq}{value})",
                file=sys.stderr,
            )
            item = f"{'' if prefix == '+' else prefix}{new}{eq}{value}"  # the new key exists
        out.append(item)
    return out


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: genbench <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += [
        "",
        "`genbench <command> --help` shows the command's config and Hydra's options.",
        "example: genbench train model=vae dataset=digits trainer.max_steps=500",
    ]
    return "\n".join(lines)


def stderr_log_handler() -> logging.Handler:
    """The rich log handler of the console commands, writing to stderr (their stdout carries
    only their output: a table, JSON, CSV or paths)."""
    from rich.console import Console
    from rich.logging import RichHandler

    return RichHandler(console=Console(stderr=True), show_path=False, markup=False)


def _task(command: str) -> Callable:
    from omegaconf import DictConfig

    def task(cfg: DictConfig) -> object:
        from genbench.errors import Interrupted, UserError

        try:
            with _sigterm_as_interrupt():
                from genbench.validation import check_command_line

                check_command_line(cfg)
                return _run(command, cfg)
        except UserError as err:
            from rich.console import Console

            Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
            sys.exit(2)
        except KeyboardInterrupt as err:  # Ctrl-C: 130; SIGTERM: 143, as shells report them
            sys.exit(err.exit_code if isinstance(err, Interrupted) else 130)

    return task


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (SLURM, Kubernetes, `timeout`) stops a command the way Ctrl-C does: training
    checkpoints and marks the run interrupted; the process exits with 143."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        from genbench.errors import Interrupted

        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(command: str, cfg: object) -> object:
    if command == "train":  # the validation objective, for Hydra's sweepers
        from genbench.commands import train_command, train_objective

        return train_objective(train_command(cfg), cfg)
    if command == "eval":
        from genbench.commands import eval_command

        return eval_command(cfg)
    if command == "sample":
        from genbench.commands import sample_command

        return sample_command(cfg)
    if command == "leaderboard":
        from genbench.leaderboard.command import leaderboard_command

        return leaderboard_command(cfg)
    if command == "score":
        from genbench.eval.score import score_command

        return score_command(cfg)
    if command == "floor":
        from genbench.floor import floor_command

        return floor_command(cfg)
    from genbench.leaderboard.command import families_command

    return families_command(cfg)


def _unwritable_outputs(overrides: list[str]) -> str | None:
    """``train``: Hydra creates the run folder under ``paths.outputs`` before genbench runs, so
    check first that it can: a bad path is one clear sentence rather than a traceback. (The other
    commands check when they write, so a read-only outputs folder can still be viewed.)"""
    from pathlib import Path

    for item in overrides:
        if item.startswith("paths.outputs="):
            path = Path(item.split("=", 1)[1]).expanduser()
            probe = path
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
                return (
                    f"paths.outputs={str(path)!r} cannot be created or written "
                    f"({str(probe)!r} is not a writable folder)"
                )
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"genbench: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if command == "leaderboard" and rest and rest[0] == "rebuild":
        rest = ["action=rebuild"] + rest[1:]
    rest = rename_overrides(rest)
    from genbench.plugins import search_path_override

    plugins = search_path_override()  # installed plugins' config folders (genbench.configs)
    if plugins and not any(a.startswith("hydra.searchpath=") for a in rest):
        rest = [plugins, *rest]
    problem = _unwritable_outputs(rest) if command == "train" else None
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import hydra

    config = "leaderboard" if command == "families" else command
    app = hydra.main(config_path="pkg://genbench.conf", config_name=config, version_base="1.3")(
        _task(command)
    )
    sys.argv = [f"genbench {command}"] + rest
    app()
    return 0


if __name__ == "__main__":
    sys.exit(main())
