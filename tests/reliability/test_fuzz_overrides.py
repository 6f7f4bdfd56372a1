"""Fuzzing the command line: hostile overrides for ``genbench train``, ``eval`` and ``sample``.

Every generated override is invalid by construction (a wrong type, a value out of range, NaN or
infinity, a huge number where there is a bound, an unknown key, a config group given as a path,
a foreign ``_target_``), alone or beside others; each case must be refused with a non-zero exit
and a message naming one of the keys at fault, without a traceback and without changing a file.
A second test draws valid edge values and requires them to be accepted.

``train`` cases stop just before the run's config would be written (the data is loaded, the
model built and the trainer set up by then: every check genbench makes has run), so a
hostile value accepted by mistake fails the test at once instead of training.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import pytest
from fuzzing import (
    FAST,
    SLOW,
    SMOKE,
    assert_clean,
    changed,
    copy_outputs,
    finished_outputs,
    fuzz_settings,
    invoke,
    snapshot,
)
from hypothesis import given
from hypothesis import strategies as st

from genbench.rundir import RunDir

KEYWORDS = {"true", "false", "null", "nan", "inf"}  # Hydra reads these words as values
MODELS = ["vae", "ddpm", "pixelcnn", "dcgan", "realnvp"]
T = 1000  # DDPM timesteps of conf/model/ddpm.yaml


class Accepted(BaseException):
    """Raised where ``train`` would write its run folder: every check passed."""


@pytest.fixture(scope="module")
def template() -> Path:
    """outputs/ with one finished VAE smoke run (for eval / sample and for "nothing changed")."""
    return finished_outputs()


@pytest.fixture
def stop_before_writing(monkeypatch):
    finished_outputs()  # the template run is written for real first

    def refuse(self, plain):
        raise Accepted

    monkeypatch.setattr(RunDir, "write_config", refuse)


# -- hostile values, each invalid for the keys it is drawn for ---------------------------------
def _show(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


words = st.text(string.ascii_letters + "_-", min_size=1, max_size=10).filter(
    lambda s: s.lower() not in KEYWORDS
)
non_finite = st.sampled_from(["nan", "inf", "-inf", "1e400", "-1e400", "NaN", "INF"])
fractions = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: x != int(x)).map(_show)
negatives = st.integers(max_value=-1).map(str)
wrong_types = st.sampled_from(
    ["[1,2]", "[]", "{a:1}", "{}", "''", "true", "false", "'${oc.env:HOME}'", "[[1]]", "[null]"]
)
path_tricks = st.sampled_from(
    [
        "../../etc/passwd",
        "/dev/null",
        "/dev/zero",
        "/proc/self/mem",
        "..",
        "/",
        "~root",
        "'a b'",
        "$HOME",
        "/nonexistent/x.pt",
    ]
)


def counts(minimum: int, bound: int | None = None) -> st.SearchStrategy[str]:
    """Invalid for an integer key ``>= minimum`` (and ``<= bound``)."""
    bad = [words, non_finite, fractions, wrong_types, st.integers(max_value=minimum - 1).map(str)]
    if bound is not None:
        bad.append(st.integers(bound + 1, bound * 10**30).map(str))
    return st.one_of(bad)


def numbers(
    low: float, high: float | None = None, open_low: bool = False
) -> st.SearchStrategy[str]:
    """Invalid for a finite number in ``[low, high]`` (``(low, high]`` when ``open_low``)."""
    below = st.floats(
        max_value=low, exclude_max=not open_low, allow_nan=False, allow_infinity=False
    ).map(_show)
    bad = [words, non_finite, wrong_types, below]
    if high is not None:
        bad.append(
            st.floats(min_value=high, exclude_min=True, allow_nan=False, allow_infinity=False).map(
                _show
            )
        )
    return st.one_of(bad)


def choices(*valid: str) -> st.SearchStrategy[str]:
    return st.one_of(
        words.filter(lambda s: s not in valid),
        path_tricks,
        negatives,
        non_finite,
        st.sampled_from(["[1,2]", "{a:1}", "''", "true"]),
    )


bools = st.one_of(words, st.sampled_from(["0", "1", "2.5", "[]", "{}", "''", "nan", "yes"]))

#: key -> hostile values, for ``genbench train`` (model=vae unless the key needs another)
TRAIN_KEYS: dict[str, st.SearchStrategy[str]] = {
    **{
        f"trainer.{k}": counts(1)
        for k in ("max_steps", "eval_every", "ckpt_every", "log_every", "val_examples")
    },
    "trainer.batch_size": counts(1, bound=1347),  # digits' training split: 1,347 images
    "trainer.warmup_steps": counts(0),
    "trainer.grad_clip": numbers(0),
    "trainer.ema_decay": numbers(0, 0.99999999),
    "trainer.resume": choices("auto", "never"),
    "trainer.rerun": bools,
    "optimizer.lr": numbers(0, open_low=True),
    "optimizer.weight_decay": numbers(0),
    "seed": counts(0, bound=2**32 - 1),
    "eval.seed": counts(0, bound=2**32 - 1),
    **{f"eval.{k}": counts(1) for k in ("batch_size", "grid", "kid_subset_size", "isc_splits")},
    "eval.n_samples": counts(0),
    "eval.nll_examples": counts(1).filter(lambda v: v != "null"),
    "eval.extractor": choices("auto", "inception-v3", "domain"),
    "eval.reference_split": choices("train", "val", "test"),
    "eval.metrics": st.one_of(
        words.map(lambda w: f"[fid,{w}]"),
        st.sampled_from(["fid", "[[fid]]", "[1]", "{a:1}", "[fid,null]"]),
    ),
    "eval.sampler_sweep": st.one_of(
        words.map(lambda w: f"[10,{w}]"),
        st.sampled_from(["5", "[0]", "[-3]", "[1.5]", "[[10]]", "{a:1}", "[nan]"]),
    ),
    **{f"eval.{k}": bools for k in ("nll", "sample_metrics")},
    "eval.inception_weights": path_tricks,
    "eval.estimators": st.one_of(
        words, st.sampled_from(["[1]", "[[ode]]", "{a:1}", "['a b']", "[null]", "5", "['']"])
    ),
    "eval.estimator_examples": counts(1),
    "eval.estimator_options": st.one_of(
        words, st.sampled_from(["5", "[1]", "{ode:5}", "{ode:[1]}"])
    ),
    "device.precision": choices("fp32", "bf16", "fp16"),
    "device.name": choices("auto", "cpu", "cuda"),
    "device.compile": bools,
    "model.latent": st.one_of(words, non_finite, fractions, wrong_types, negatives),
}
#: (model, key) -> hostile sampler or model-default values
SAMPLER_KEYS: dict[tuple[str, str], st.SearchStrategy[str]] = {
    ("ddpm", "+sampler.eta"): numbers(0, 1),
    ("ddpm", "+sampler.steps"): counts(1, bound=T),
    ("ddpm", "+sampler.name"): choices("ancestral", "ddim", "ode", "dpmpp", "unipc"),
    ("ddpm", "+sampler.clip"): bools,
    ("ddpm", "model.sampler.eta"): numbers(0, 1),
    ("ddpm", "model.sampler.steps"): counts(1, bound=T),
    ("pixelcnn", "+sampler.temperature"): numbers(0, open_low=True),
    ("pixelcnn", "+sampler.incremental"): bools,
    ("vae", "+sampler.temperature"): numbers(0),
    ("realnvp", "+sampler.temperature"): numbers(0),
    ("dcgan", "+sampler.truncation"): numbers(0, open_low=True).filter(lambda v: v != "null"),
}
#: option of DDPM's ``ode`` likelihood estimator -> hostile values
ESTIMATOR_KEYS: dict[str, st.SearchStrategy[str]] = {
    "solver": choices("rk45", "heun", "euler"),
    "steps": counts(1, bound=T).filter(lambda v: v != "''"),
    "rtol": numbers(0, open_low=True),
    "probes": counts(0),
    "tolerance": st.integers(0, 9).map(str),  # not an option of the estimator
}
ODE_KEYS: dict[str, st.SearchStrategy[str]] = {
    "sampler.solver": choices("rk45", "heun", "euler"),
    "sampler.rtol": numbers(0, open_low=True),
    "sampler.atol": numbers(0, open_low=True),
}
GROUPS = ["model", "dataset", "optimizer", "sampler", "eval", "device", "logger"]
identifiers = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8)


@st.composite
def train_case(draw) -> tuple[list[str], list[str]]:
    """(overrides, keys at fault) for one hostile ``train`` command."""
    kind = draw(
        st.sampled_from(["value", "sampler", "ode", "estimator", "added", "group", "target"])
    )
    if kind == "estimator":
        opt = draw(st.sampled_from(sorted(ESTIMATOR_KEYS)))
        more = ", solver: heun" if opt == "steps" else ""  # rk45 does not read steps
        return [
            "model=ddpm",
            "eval.estimators=[ode]",
            f"eval.estimator_options={{ode: {{{opt}: {draw(ESTIMATOR_KEYS[opt])}{more}}}}}",
        ], [f"eval.estimator_options.ode.{opt}"]
    if kind == "value":
        keys = draw(
            st.lists(st.sampled_from(sorted(TRAIN_KEYS)), min_size=1, max_size=3, unique=True)
        )
        return [f"{k}={draw(TRAIN_KEYS[k])}" for k in keys], keys
    if kind == "sampler":
        model, key = draw(st.sampled_from(sorted(SAMPLER_KEYS)))
        return [f"model={model}", f"{key}={draw(SAMPLER_KEYS[(model, key)])}"], [key.lstrip("+")]
    if kind == "ode":
        key = draw(st.sampled_from(sorted(ODE_KEYS)))
        return ["model=ddpm", "sampler=ode", f"{key}={draw(ODE_KEYS[key])}"], [key]
    if kind == "added":
        where = draw(
            st.sampled_from(
                [
                    "trainer",
                    "eval",
                    "device",
                    "model",
                    "dataset",
                    "optimizer",
                    "sampler",
                    "paths",
                    "",
                ]
            )
        )
        name = draw(identifiers)
        key = f"{where}.x{name}" if where else f"x{name}"
        return [f"+{key}={draw(st.one_of(st.integers().map(str), words))}"], [key]
    if kind == "group":
        group = draw(st.sampled_from(GROUPS))
        trick = draw(
            st.sampled_from(
                [
                    "../dataset/digits",
                    "./vae",
                    "..",
                    "/etc/passwd",
                    "vae/../ddpm",
                    "../../../../tmp",
                    "/",
                    "a//b",
                ]
            )
        )
        return [f"{group}={trick}"], [group]
    target = draw(
        st.sampled_from(
            [
                "os.system",
                "builtins.eval",
                "subprocess.Popen",
                "genbench.rundir.Path.touch",
                "genbench.data.bundled.digits",
                "torch.load",
                "no_such_module.Model",
                "genbench.nope",
            ]
        )
    )
    return [f"model._target_={target}"], ["model._target_"]


def _run_train(case: tuple[list[str], list[str]], template: Path) -> None:
    overrides, keys = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out, _ = copy_outputs(root / "out")
        before = snapshot(root)
        result = invoke(["train", *SMOKE, f"paths.outputs={out}", *overrides], root, Accepted)
        context = f"genbench train {' '.join(overrides)}"
        assert result.code != "stopped", f"{context}: accepted\n{result.text[-2000:]}"
        assert result.failed, f"{context}: exit 0\n{result.text[-2000:]}"
        assert_clean(result, keys, context=context)
        assert not changed(before, snapshot(root)), f"{context}: files changed"


@given(case=train_case())
@fuzz_settings(FAST)
def test_hostile_train_overrides_are_refused(case, template, stop_before_writing):
    _run_train(case, template)


@pytest.mark.slow
@given(case=train_case())
@fuzz_settings(SLOW)
def test_hostile_train_overrides_are_refused_full(case, template, stop_before_writing):
    _run_train(case, template)


# -- eval / sample of a finished run ------------------------------------------------------------
EVAL_KEYS = {
    k: v
    for k, v in TRAIN_KEYS.items()
    if k.startswith(("eval.", "device.")) and k not in ("eval.inception_weights", "device.compile")
}


@st.composite
def run_case(draw) -> tuple[list[str], list[str]]:
    """(overrides, keys at fault) for one hostile ``eval`` / ``sample`` command (the run is
    given as ``run={run}``)."""
    command = draw(st.sampled_from(["eval", "sample"]))
    kind = draw(st.sampled_from(["value", "sampler", "run", "n", "added"]))
    if kind == "value":
        key = draw(st.sampled_from(sorted(EVAL_KEYS)))
        return [command, "run={run}", f"{key}={draw(EVAL_KEYS[key])}"], [key]
    if kind == "sampler":
        return [command, "run={run}", f"+sampler.temperature={draw(numbers(0))}"], [
            "sampler.temperature"
        ]
    if kind == "run":
        trick = draw(
            st.sampled_from(
                [
                    "{root}",
                    "{root}/nowhere",
                    "{run}/config.yaml",
                    "{run}/checkpoints",
                    "/dev/null",
                    "/",
                    "..",
                    "''",
                    "{run}/../../..",
                    "/proc/self",
                ]
            )
        )
        return [command, f"run={trick}"], ["run="]
    if kind == "n" and command == "sample":
        return [command, "run={run}", f"n={draw(counts(1))}"], ["n="]
    key = f"{draw(st.sampled_from(['eval', 'device', 'model', 'trainer']))}.x{draw(identifiers)}"
    return [command, "run={run}", f"+{key}=1"], [key]


def _run_on_run(case: tuple[list[str], list[str]], template: Path) -> None:
    argv, keys = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out, run = copy_outputs(root / "out")
        argv = [a.replace("{run}", str(run)).replace("{root}", str(root)) for a in argv]
        before = snapshot(root)
        result = invoke(
            [argv[0], f"paths.outputs={out}", "eval=fast", "eval.sample_metrics=false", *argv[1:]],
            root,
        )
        context = f"genbench {' '.join(argv)}"
        assert result.failed, f"{context}: exit 0\n{result.text[-2000:]}"
        assert_clean(result, keys, context=context)
        assert not changed(before, snapshot(root)), f"{context}: files changed"


@given(case=run_case())
@fuzz_settings(FAST // 2)
def test_hostile_eval_and_sample_overrides_are_refused(case, template):
    _run_on_run(case, template)


@pytest.mark.slow
@given(case=run_case())
@fuzz_settings(SLOW // 2)
def test_hostile_eval_and_sample_overrides_are_refused_full(case, template):
    _run_on_run(case, template)


# -- valid edge values are accepted ---------------------------------------------------------------
VALID = st.sampled_from(
    [
        ["trainer.max_steps=1"],
        ["trainer.max_steps=2.0"],
        ["seed=4294967295"],
        ["seed=0"],
        ["eval.n_samples=0"],
        ["eval.nll_examples=null"],
        ["eval.metrics=[]"],
        ["trainer.ema_decay=0"],
        ["trainer.grad_clip=0"],
        ["trainer.batch_size=1347"],
        ["eval.sampler_sweep=[]"],
        ["optimizer.lr=1e-9"],
        ["++trainer.max_steps=3"],
        ["model=ddpm", "+sampler.eta=1.0"],
        ["model=ddpm", "+sampler.steps=1000"],
        ["model=ddpm", "sampler=ode", "sampler.solver=euler", "sampler.steps=1"],
        ["model=ddpm", "sampler=ancestral", "sampler.steps=1"],
        ["model=ddpm", "eval.sampler_sweep=[1,1000]"],
        ["model=pixelcnn", "+sampler.temperature=1e-3"],
        ["model=vae", "+sampler.temperature=0"],
        ["model=dcgan", "+sampler.truncation=null"],
        ["model=dcgan", "+sampler.truncation=0.5"],
        ["+model.decoder=logistic"],
        ["model=ddpm", "eval.estimators=[ode]", "eval.estimator_options={ode:{solver:rk45}}"],
    ]
)


@given(overrides=VALID)
@fuzz_settings(6)
def test_valid_edge_values_are_accepted(overrides, template, stop_before_writing):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result = invoke(
            ["train", *SMOKE, f"paths.outputs={root / 'out'}", *overrides], root, Accepted
        )
        assert result.code == "stopped", f"{overrides} refused:\n{result.text[-2000:]}"
