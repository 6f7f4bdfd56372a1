"""Bad input: every user mistake gives one clear error that names the key or value, a non-zero exit
and no traceback, and writes or overwrites nothing (no run files, no leaderboard row, existing
checkpoints and leaderboard bytes unchanged).

Cases run in-process through ``genbench.cli.main`` (the real Hydra app, as the console script);
a few slow ones run the console command in a subprocess to prove the same end to end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg, run_cli
from omegaconf import OmegaConf
from PIL import Image

from genbench import checkpoint, cli, files
from genbench.commands import train_command
from genbench.leaderboard.store import Store, StoreError
from genbench.rundir import RunDir

SMOKE = ["experiment=smoke", "eval.sample_metrics=false", "eval.nll_examples=16"]


@dataclass
class World:
    """A tmp folder with a finished run in ``out`` and things to point configs at."""

    root: Path
    out: Path  # paths.outputs: leaderboard.sqlite with one run, runs/test_run
    run: Path  # the finished run folder
    empty: Path  # an empty folder
    images: Path  # 20 readable 8x8 PNGs and one corrupt .png
    file: Path  # a regular file


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Errors on one line: rich wraps at the terminal width, COLUMNS sets it."""
    monkeypatch.setenv("COLUMNS", "1000")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One finished smoke run of the VAE (last.pt, best.pt, leaderboard row)."""
    out = tmp_path_factory.mktemp("bad_input") / "out"
    rec = train_command(compose_cfg("train", SMOKE, out))
    assert rec.status == "finished"
    return out


@pytest.fixture
def world(template, tmp_path) -> World:
    out = tmp_path / "out"
    shutil.copytree(template, out)
    (run,) = [p.parent for p in (out / "runs").rglob("config.yaml")]
    cfg = OmegaConf.load(run / "config.yaml")  # the copy must point at itself
    cfg.paths.run_dir, cfg.paths.outputs = str(run), str(out)
    OmegaConf.save(cfg, run / "config.yaml")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("a regular file\n")
    return World(tmp_path, out, run, tmp_path / "empty", images, tmp_path / "file")


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def invoke(argv: list[str], capsys) -> tuple[int, str]:
    """``genbench <argv>`` in this process: (exit code, stdout + stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out + out.err


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def shrink_model(w: World) -> None:
    """The run's config.yaml asks for a smaller model than its checkpoint holds."""
    cfg = OmegaConf.load(w.run / "config.yaml")
    cfg.model.hidden = 8
    OmegaConf.save(cfg, w.run / "config.yaml")


def foreign_sqlite(w: World) -> None:
    (w.out / "leaderboard.sqlite").unlink()
    con = sqlite3.connect(w.out / "leaderboard.sqlite")
    con.execute("CREATE TABLE accounts (id INTEGER, owner TEXT)")
    con.execute("INSERT INTO accounts VALUES (1, 'someone')")
    con.commit()
    con.close()


def garbage_leaderboard(w: World) -> None:
    (w.out / "leaderboard.sqlite").write_bytes(os.urandom(8192))


def read_only_outputs(w: World) -> None:
    if os.geteuid() == 0:
        pytest.skip(
            "running as root: chmod does not stop root from writing "
            "(the paths.outputs-under-a-file cases cover unwritable outputs)"
        )
    w.out.chmod(0o500)


class _Payload:
    def __reduce__(self):
        return (print, ("PAYLOAD RAN",))


def unsafe_best(w: World) -> None:
    """best.pt replaced by a zip checkpoint whose pickle would call print() when loaded."""
    torch.save({"model": _Payload()}, w.run / "checkpoints" / "best.pt")


def no_cuda(w: World) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")


Args = Callable[[World], list[str]]


def train(*extra: str) -> Args:
    return lambda w: ["train", *SMOKE, f"paths.outputs={w.out}", *(e.format(w=w) for e in extra)]


def on_run(command: str, *extra: str) -> Args:
    return lambda w: [
        command,
        f"run={w.run}",
        f"paths.outputs={w.out}",
        "eval=fast",
        "eval.sample_metrics=false",
        *(e.format(w=w) for e in extra),
    ]


# (id, argv, substrings the error must contain, setup)
CASES: list[tuple[str, Args, list[str], Callable[[World], None] | None]] = [
    ("unknown-model", train("model=nope"), ["Could not find 'model/nope'", "vae"], None),
    ("unknown-dataset", train("dataset=nope"), ["Could not find 'dataset/nope'"], None),
    ("unknown-optimizer", train("optimizer=nope"), ["Could not find 'optimizer/nope'"], None),
    ("unknown-sampler", train("sampler=nope"), ["Could not find 'sampler/nope'"], None),
    ("unknown-device", train("device=nope"), ["Could not find 'device/nope'"], None),
    ("unknown-eval", train("eval=nope"), ["Could not find 'eval/nope'"], None),
    ("unknown-logger", train("logger=nope"), ["Could not find 'logger/nope'"], None),
    ("unknown-experiment", train("experiment=nope"), ["Could not find 'experiment/nope'"], None),
    ("unknown-key", train("trainer.max_stesp=5"), ["max_stesp"], None),
    (
        "max-steps-text",
        train("trainer.max_steps=abc"),
        ["trainer.max_steps='abc' is invalid"],
        None,
    ),
    ("max-steps-fraction", train("trainer.max_steps=1.5"), ["trainer.max_steps=1.5"], None),
    ("batch-size-zero", train("trainer.batch_size=0"), ["trainer.batch_size=0 is invalid"], None),
    ("eval-every-negative", train("trainer.eval_every=-3"), ["trainer.eval_every=-3"], None),
    ("lr-negative", train("optimizer.lr=-1"), ["optimizer.lr=-1", "> 0"], None),
    ("lr-text", train("optimizer.lr=fast"), ["optimizer.lr='fast'"], None),
    ("ema-decay-above-one", train("trainer.ema_decay=2"), ["trainer.ema_decay=2"], None),
    ("grad-clip-negative", train("trainer.grad_clip=-1"), ["trainer.grad_clip=-1"], None),
    (
        "weight-decay-negative",
        train("optimizer.weight_decay=-1"),
        ["optimizer", "weight_decay", "-1"],
        None,
    ),
    ("betas-out-of-range", train("optimizer.betas=[2,0.9]"), ["optimizer", "beta", "2"], None),
    ("precision-fp8", train("device.precision=fp8"), ["device.precision='fp8'", "bf16"], None),
    ("fp16-on-cpu", train("device=cpu", "device.precision=fp16"), ["fp16", "CUDA"], None),
    ("threads-zero", train("device.threads=0"), ["device.threads=0 is invalid"], None),
    ("device-name", train("device.name=tpu"), ["device.name='tpu'", "cuda"], None),
    ("compile-not-bool", train("device.compile=maybe"), ["device.compile='maybe'"], None),
    ("cuda-missing", train("device=cuda"), ["device.name='cuda'", "no CUDA device"], no_cuda),
    (
        "resume-sometimes",
        train("trainer.resume=sometimes"),
        ["trainer.resume='sometimes'", "auto or never"],
        None,
    ),
    ("seed-text", train("seed=abc"), ["seed='abc' is invalid"], None),
    ("n-samples-negative", train("eval.n_samples=-5"), ["eval.n_samples=-5 is invalid"], None),
    ("eval-batch-zero", train("eval.batch_size=0"), ["eval.batch_size=0"], None),
    ("grid-zero", train("eval.grid=0"), ["eval.grid=0"], None),
    ("nll-examples-text", train("eval.nll_examples=all"), ["eval.nll_examples='all'"], None),
    ("extractor", train("eval.extractor=nope"), ["eval.extractor='nope'", "inception-v3"], None),
    ("metrics", train("eval.metrics=[fid,nope]"), ["eval.metrics=['fid', 'nope']"], None),
    ("reference-split", train("eval.reference_split=nope"), ["eval.reference_split='nope'"], None),
    ("sampler-sweep", train("eval.sampler_sweep=[10,abc]"), ["eval.sampler_sweep='abc'"], None),
    ("kid-subset-zero", train("eval.kid_subset_size=0"), ["eval.kid_subset_size=0"], None),
    ("test-fraction", train("dataset.test_fraction=2"), ["dataset.test_fraction=2"], None),
    ("val-fraction", train("dataset.val_fraction=-0.1"), ["dataset.val_fraction=-0.1"], None),
    ("model-hparam", train("model.latent=-3"), ["could not build model", "VAE"], None),
    ("folder-root-missing", train("dataset=folder"), ["dataset.root has no value"], None),
    (
        "folder-root-absent",
        train("dataset=folder", "dataset.root={w.root}/nowhere"),
        ["dataset.root=", "nowhere", "not a directory"],
        None,
    ),
    (
        "folder-root-empty",
        train("dataset=folder", "dataset.root={w.empty}"),
        ["dataset.root=", "0 readable images"],
        None,
    ),
    (
        "folder-root-is-file",
        train("dataset=folder", "dataset.root={w.file}"),
        ["dataset.root=", "not a directory"],
        None,
    ),
    (
        "mnist-data-empty",
        train("dataset=mnist", "paths.data={w.empty}"),
        ["mnist", "dataset.root=", "dataset.download=true"],
        None,
    ),
    (
        "outputs-under-a-file",
        train("paths.outputs={w.file}/sub", "hydra.run.dir={w.root}/r"),
        ["paths.outputs=", "not a writable folder"],
        None,
    ),
    (
        "outputs-read-only",
        train("hydra.run.dir={w.root}/r"),
        ["paths.outputs=", "not a writable folder"],
        read_only_outputs,
    ),
    ("foreign-sqlite", train(), ["not a genbench leaderboard", "left untouched"], foreign_sqlite),
    ("garbage-leaderboard", train(), ["not a readable genbench leaderboard"], garbage_leaderboard),
    (
        "run-dir-of-other-config",
        train("trainer.max_steps=7", "hydra.run.dir={w.run}"),
        ["different config", "nothing was overwritten"],
        None,
    ),
    ("eval-without-run", lambda w: ["eval", f"paths.outputs={w.out}"], ["run= is required"], None),
    ("eval-not-a-run", on_run("eval", "run={w.empty}"), ["is not a genbench run folder"], None),
    (
        "sample-not-a-run",
        on_run("sample", "run={w.images}"),
        ["is not a genbench run folder"],
        None,
    ),
    (
        "eval-truncated-last",
        on_run("eval"),
        ["last.pt", "truncated or corrupt"],
        lambda w: truncate(w.run / "checkpoints" / "last.pt"),
    ),
    (
        "eval-truncated-best",
        on_run("eval"),
        ["best.pt", "truncated or corrupt"],
        lambda w: truncate(w.run / "checkpoints" / "best.pt"),
    ),
    (
        "sample-garbage-last",
        on_run("sample"),
        ["last.pt", "truncated or corrupt"],
        lambda w: (w.run / "checkpoints" / "last.pt").write_bytes(os.urandom(4096)),
    ),
    (
        "eval-unsafe-best",
        on_run("eval"),
        ["refusing to load", "best.pt", "GLOBAL print"],
        unsafe_best,
    ),
    (
        "eval-missing-last",
        on_run("eval"),
        ["no checkpoint at", "last.pt"],
        lambda w: (w.run / "checkpoints" / "last.pt").unlink(),
    ),
    (
        "eval-other-model-config",
        on_run("eval"),
        ["does not match its config's model"],
        shrink_model,
    ),
    ("sample-n-zero", on_run("sample", "n=0"), ["n=0 is invalid"], None),
    (
        "eval-outputs-under-a-file",
        on_run("eval", "paths.outputs={w.file}/sub"),
        ["not a writable folder"],
        None,
    ),
    ("eval-foreign-sqlite", on_run("eval"), ["not a genbench leaderboard"], foreign_sqlite),
    (
        "leaderboard-format",
        lambda w: ["leaderboard", "format=xml", f"paths.outputs={w.out}"],
        ["format='xml' is invalid"],
        None,
    ),
    (
        "leaderboard-missing",
        lambda w: ["leaderboard", f"paths.outputs={w.empty}"],
        ["no leaderboard at"],
        None,
    ),
    ("unknown-command", lambda w: ["trian"], ["unknown command 'trian'"], None),
    # sampler and evaluation options, checked against the model when train starts
    (
        "ddim-eta-negative",
        train("model=ddpm", "+sampler.eta=-1"),
        ["sampler.eta=-1", "[0, 1]"],
        None,
    ),
    (
        "ddim-eta-nan",
        train("model=ddpm", "sampler=ddim", "sampler.eta=nan"),
        ["sampler.eta=nan", "finite"],
        None,
    ),
    (
        "ddim-steps-above-t",
        train("model=ddpm", "sampler=ddim", "sampler.steps=5000"),
        ["sampler.steps=5000", "[1, 1000]"],
        None,
    ),
    (
        "ddpm-default-sampler",
        train("model=ddpm", "model.sampler.eta=2"),
        ["model.sampler.eta=2", "[0, 1]"],
        None,
    ),
    (
        "ode-solver-unknown",
        train("model=ddpm", "sampler=ode", "sampler.solver=rk4"),
        ["sampler.solver='rk4'", "rk45, heun, euler"],
        None,
    ),
    (
        "ode-rtol-negative",
        train("model=ddpm", "sampler=ode", "sampler.rtol=-1"),
        ["sampler.rtol=-1", "> 0"],
        None,
    ),
    (
        "sampler-name-unknown",
        train("model=ddpm", "+sampler.name=euler"),
        ["sampler.name='euler'", "unknown sampler", "ddim"],
        None,
    ),
    (
        "ancestral-variance",
        train("model=ddpm", "sampler=ancestral", "+sampler.variance=huge"),
        ["sampler.variance='huge'", "small, large"],
        None,
    ),
    (
        "pixelcnn-temperature-zero",
        train("model=pixelcnn", "+sampler.temperature=0"),
        ["sampler.temperature=0", "> 0"],
        None,
    ),
    (
        "flow-temperature-inf",
        train("model=realnvp", "+sampler.temperature=inf"),
        ["sampler.temperature=inf", "finite"],
        None,
    ),
    (
        "gan-truncation-negative",
        train("model=dcgan", "+sampler.truncation=-1"),
        ["sampler.truncation=-1", "> 0"],
        None,
    ),
    (
        "sampler-option-unknown",
        train("+sampler.bar=2"),
        ["sampler.bar=2", "not understood by VAE", "temperature"],
        None,
    ),
    (
        "sampler-option-of-another-family",
        train("+sampler.steps=10"),
        ["sampler.steps=10", "not understood by VAE"],
        None,
    ),
    (
        "sweep-without-steps",
        train("eval.sampler_sweep=[10]"),
        ["eval.sampler_sweep=[10]", "sampler.steps=10", "temperature"],
        None,
    ),
    (
        "ode-likelihood-solver",
        train(
            "model=ddpm", "eval.estimators=[ode]", "eval.estimator_options={{ode:{{solver:rk4}}}}"
        ),
        ["eval.estimator_options.ode.solver='rk4'", "rk45"],
        None,
    ),
    (
        "ode-likelihood-option",
        train("model=ddpm", "eval.estimators=[ode]", "eval.estimator_options={{ode:{{tol:1}}}}"),
        ["eval.estimator_options.ode.tol=1", "probes"],
        None,
    ),
    ("eval-bool", train("eval.nll=maybe"), ["eval.nll='maybe'", "true or false"], None),
    (
        "inception-weights-missing",
        train("eval.inception_weights={w.root}/nowhere.pt"),
        ["eval.inception_weights=", "nowhere.pt", "existing weights file"],
        None,
    ),
    (
        "logger-key-added",
        train("+logger.project=x"),
        ["logger.project='x' is not a parameter of genbench.tracking.Tracker"],
        None,
    ),
    # keys added with +, config group paths, sizes and non-finite numbers
    (
        "model-key-added",
        train("+model.foo=1"),
        ["model.foo=1 is not a parameter of genbench.models.vae.VAE", "latent"],
        None,
    ),
    ("model-shape-added", train("+model.shape=[1,8,8]"), ["model.shape=", "cannot be set"], None),
    ("dataset-key-added", train("+dataset.foo=1"), ["dataset.foo=1", "test_fraction"], None),
    (
        "optimizer-key-added",
        train("+optimizer.momentum=0.9"),
        ["optimizer.momentum=0.9", "torch.optim.Adam", "betas"],
        None,
    ),
    (
        "trainer-key-added",
        train("+trainer.max_step=5"),
        ["+trainer.max_step=5", "does not read", "max_steps"],
        None,
    ),
    ("top-level-key-added", train("+seeds=3"), ["+seeds=3", "does not read", "seed"], None),
    (
        "model-group-path",
        train("model=../dataset/digits"),
        ["model='../dataset/digits'", "not a path", "vae"],
        None,
    ),
    (
        "batch-larger-than-split",
        train("trainer.batch_size=100000"),
        ["trainer.batch_size=100000", "training split"],
        None,
    ),
    ("lr-inf", train("optimizer.lr=inf"), ["optimizer.lr=inf", "finite"], None),
    ("lr-nan", train("optimizer.lr=nan"), ["optimizer.lr=nan", "finite"], None),
    (
        "weight-decay-inf",
        train("optimizer.weight_decay=inf"),
        ["optimizer.weight_decay=inf", "finite"],
        None,
    ),
    ("grad-clip-inf", train("trainer.grad_clip=inf"), ["trainer.grad_clip=inf"], None),
    ("max-steps-overflow", train("trainer.max_steps=1e400"), ["trainer.max_steps=inf"], None),
    ("seed-too-large", train("seed=1e30"), ["seed=1e+30", "4294967295"], None),
    ("model-hparam-nan", train("model.latent=nan"), ["model.latent=nan", "finite"], None),
    ("eval-batch-zero-on-eval", on_run("eval", "eval.batch_size=0"), ["eval.batch_size=0"], None),
    ("eval-seed-overflow-on-sample", on_run("sample", "eval.seed=1e30"), ["eval.seed=1e+30"], None),
    (
        "sampler-option-on-eval",
        on_run("eval", "+sampler.bar=2"),
        ["sampler.bar=2", "temperature"],
        None,
    ),
    ("sweep-on-eval", on_run("eval", "eval.sampler_sweep=[10]"), ["eval.sampler_sweep=[10]"], None),
    ("eval-key-added-on-eval", on_run("eval", "+eval.foo=1"), ["+eval.foo=1", "n_samples"], None),
    ("model-key-added-on-sample", on_run("sample", "+model.foo=1"), ["+model.foo=1"], None),
    (
        "sampler-group-path-on-eval",
        on_run("eval", "sampler=../model/vae"),
        ["sampler='../model/vae'", "not a path", "ddim"],
        None,
    ),
]


@pytest.mark.parametrize("argv,expect,setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(
    argv, expect, setup, world, capsys, monkeypatch
):
    monkeypatch.chdir(world.root)
    if setup is not None:
        setup(world)
    before, rows = snapshot(world.root), _runs(world.out)
    code, text = invoke(argv(world), capsys)
    assert code not in (0, None), text[-2000:]
    assert "Traceback" not in text and "PAYLOAD RAN" not in text, text[-3000:]
    for part in expect:
        assert part in text, f"{part!r} not in:\n{text[-2000:]}"
    assert snapshot(world.root) == before, "a file was written or changed"
    assert _runs(world.out) == rows


def _runs(out: Path) -> int | None:
    try:
        return len(Store(out / "leaderboard.sqlite").runs())
    except StoreError:  # a deliberately broken leaderboard
        return None


def test_outputs_under_a_file_with_the_default_run_dir(world, capsys):
    code, text = invoke(["train", *SMOKE, f"paths.outputs={world.file}/sub"], capsys)
    assert code not in (0, None) and "Traceback" not in text and "paths.outputs" in text


def test_corrupt_image_in_a_folder_is_skipped_with_a_warning(world, capsys, monkeypatch):
    monkeypatch.chdir(world.root)
    code, text = invoke(
        train(
            "dataset=folder",
            "dataset.root={w.images}",
            "dataset.size=8",
            "dataset.channels=1",
            "dataset.test_fraction=0.2",
            "dataset.val_fraction=0.2",
            "trainer.batch_size=8",
        )(world),
        capsys,
    )
    assert code == 0, text[-3000:]
    (run,) = [r for r in Store(world.out / "leaderboard.sqlite").runs() if r["dataset"] == "folder"]
    assert run["status"] == "finished"
    log = (Path(run["run_dir"]) / "train.log").read_text()
    assert "skipping" in log and "broken.png" in log and "not a readable image" in log
    assert run["config"]["dataset"]["root"] == str(world.images)


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(world, capsys, monkeypatch):
    """ENOSPC while writing the step-4 checkpoint: a clear error, step 2 kept, no row; the same
    command later resumes from step 2 and finishes."""
    monkeypatch.chdir(world.root)
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full to make writes fail with ENOSPC")
    real_mkstemp, lasts = tempfile.mkstemp, []

    def full_disk(*args, **kwargs):  # the second last.pt write goes to a full device
        fd, name = real_mkstemp(*args, **kwargs)
        if os.path.basename(name).startswith(".last.pt."):
            lasts.append(name)
            if len(lasts) == 2:
                os.close(fd)
                return os.open("/dev/full", os.O_WRONLY), name
        return fd, name

    out = world.root / "fresh"
    argv = ["train", *SMOKE, f"paths.outputs={out}", "hydra.run.dir={}".format(out / "run")]
    monkeypatch.setattr(files.tempfile, "mkstemp", full_disk)
    code, text = invoke(argv, capsys)
    monkeypatch.undo()
    assert code == 2 and "Traceback" not in text, text[-3000:]
    assert "No space left on device" in text and "the previous checkpoint is kept" in text
    ckpts = out / "run" / "checkpoints"
    assert checkpoint.load(ckpts / "last.pt")["state"]["step"] == 2
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]  # no temp file
    assert RunDir(out / "run").status()["status"] == "running"
    assert not (out / "leaderboard.sqlite").exists() or not Store(out / "leaderboard.sqlite").runs()

    monkeypatch.chdir(world.root)
    code, text = invoke(argv, capsys)
    assert code == 0, text[-3000:]
    (run,) = Store(out / "leaderboard.sqlite").runs()
    assert run["status"] == "finished" and run["steps"] == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,expect",
    [
        (["train", "experiment=smoke", "optimizer.weight_decay=-1"], "weight_decay"),
        (["train", "experiment=smoke", "dataset=folder"], "dataset.root has no value"),
        (["train", "experiment=smoke", "eval.grid=0"], "eval.grid=0"),
    ],
)
def test_console_command_prints_no_traceback(args, expect, tmp_path):
    proc = run_cli(*args, f"paths.outputs={tmp_path}/out", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert expect in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
