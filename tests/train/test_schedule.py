"""Learning-rate schedules (conf/scheduler): the warm-up against the earlier closed form, decay end
points, one step per training step, and exact resume with the schedule state in checkpoints."""

from __future__ import annotations

import importlib.resources

import pytest
import torch
from omegaconf import OmegaConf

from genbench import checkpoint
from genbench.commands import train_command
from genbench.data.base import Batches
from genbench.errors import ConfigError
from genbench.train.schedule import build_scheduler
from genbench.validation import validate

CONF = importlib.resources.files("genbench.conf") / "scheduler"
SCHEDULERS = sorted(p.name[:-5] for p in CONF.iterdir() if p.name.endswith(".yaml"))


def _spec(name: str, **extra: object) -> dict:
    """``conf/scheduler/<name>.yaml`` with ``extra`` keys set (no defaults lists there)."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), extra)
    return OmegaConf.to_container(cfg, resolve=True)


def _lrs(
    spec: dict | None, steps: int, lr: float = 2e-4, max_steps: int | None = None
) -> list[float]:
    """The lr used at each of ``steps`` training steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(spec, opt, max_steps or steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


@pytest.mark.parametrize("warmup", [1, 2, 3, 7, 1000, 5000])
@pytest.mark.parametrize("lr", [1e-3, 2e-4, 3e-3])
def test_warmup_matches_the_earlier_closed_form(warmup, lr):
    """Today's factors min(1, (i + 1) / W) (the hand-written LambdaLR of earlier versions), per
    step: exact at step 0 and from step W on; in between torch's multiplicative LinearLR drifts
    by at most 3e-14 relative (measured: 0 for W <= 3, 2.2e-16 for W = 7, 2.8e-14 for W = 5000)."""
    steps = warmup + 50
    ours = _lrs(_spec("linear_warmup", warmup_steps=warmup), steps, lr, max_steps=10**6)
    closed = [lr * min(1.0, (i + 1) / warmup) for i in range(steps)]
    assert ours[0] == closed[0] and ours[warmup:] == closed[warmup:]
    drift = max(abs(a - b) / b for a, b in zip(ours, closed))
    assert drift <= 3e-14, drift
    if warmup <= 3:
        assert ours == closed


@pytest.mark.parametrize("fused", [True, False])
def test_float32_adam_under_the_warmup_ends_bit_identical_to_the_earlier_one(fused):
    """The drift above is below float32 resolution: Adam's float32 weights after a 600-step
    warm-up equal those under the earlier LambdaLR closure bit for bit (also measured for
    W = 5000, lr 2e-4: equal)."""

    def run(new: bool) -> torch.Tensor:
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(64, 32))
        opt = torch.optim.Adam([p], lr=1e-3, fused=fused)
        sched = (
            build_scheduler(_spec("linear_warmup", warmup_steps=600), opt, 10**6)
            if new
            else torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 600))
        )
        g = torch.Generator().manual_seed(1)
        for _ in range(610):
            p.grad = torch.randn(p.shape, generator=g)
            opt.step()
            sched.step()
        return p.detach()

    assert torch.equal(run(True), run(False))


def test_constant_schedule_leaves_the_lr_untouched():
    assert _lrs(_spec("constant"), 20, 1e-3) == [1e-3] * 20
    assert _lrs(None, 5, 1e-3) == [1e-3] * 5


def test_decays_end_at_max_steps_after_the_warmup():
    lin = _lrs(_spec("linear_decay"), 101, 1e-3, max_steps=100)
    assert lin[0] == 1e-3 and lin[100] == 0.0  # the released WGAN-GP code: lr (1 - s / S)
    assert lin[50] == pytest.approx(5e-4, rel=1e-12)
    cos = _lrs(_spec("cosine", warmup_steps=10), 101, 1e-3, max_steps=100)
    assert cos[:10] == pytest.approx([1e-3 * (i + 1) / 10 for i in range(10)], rel=1e-14)
    assert cos[10] == 1e-3 and cos[100] == pytest.approx(0.0, abs=1e-18)
    assert cos[55] == pytest.approx(5e-4, rel=1e-12)  # halfway through the 90 cosine steps
    steps = _lrs(_spec("multistep", milestones=[3, 5], gamma=0.5), 7, 1.0)
    assert steps == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_config_builds_and_steps(name):
    extra = {"warmup_steps": 4} if name == "linear_warmup" else {}
    lrs = _lrs(_spec(name, **extra), 30, 1e-3, max_steps=30)
    assert all(0.0 <= v <= 1e-3 for v in lrs) and lrs[-1] >= 0


def test_bad_scheduler_configs_name_the_key(train_cfg):
    with pytest.raises(ConfigError, match="scheduler.warmup_steps=-1"):
        validate(train_cfg("scheduler.warmup_steps=-1"))
    with pytest.raises(ConfigError, match="scheduler.warmup_steps has no value"):
        validate(train_cfg("scheduler=linear_warmup"))
    with pytest.raises(ConfigError, match="scheduler._target_"):
        validate(train_cfg("scheduler._target_=os.system"))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="lr schedule of phase 'main'"):
        build_scheduler(_spec("constant", factor=2.0), opt, 10)


def test_gan_schedules_advance_once_per_training_step(train_cfg, tmp_path):
    """The critic's 5 repeats share the step's lr; both phases decay over trainer.max_steps."""
    cfg = train_cfg(
        "model=wgan_gp",
        "scheduler=linear_decay",
        "trainer.max_steps=4",
        "eval.sample_metrics=false",
        "eval.n_samples=0",
    )
    train_command(cfg)
    ckpt = checkpoint.load(tmp_path / "out" / "runs" / "test_run" / "checkpoints" / "last.pt")
    for phase in ("d", "g"):
        assert ckpt["schedulers"][phase]["last_epoch"] == 4
        assert ckpt["optimizers"][phase]["param_groups"][0]["lr"] == 0.0  # end of the decay


def test_schedule_and_augmentation_resume_exactly(train_cfg, tmp_path, monkeypatch):
    """A run with a warm-up + cosine schedule and flips, killed and resumed, ends bit-identical
    to an uninterrupted one (the schedule state and the batch position are checkpointed)."""
    overrides = [
        "trainer.max_steps=8",
        "trainer.ckpt_every=3",
        "trainer.eval_every=4",
        "scheduler=cosine",
        "scheduler.warmup_steps=3",
        "dataset.augment=[hflip]",
        "eval.sample_metrics=false",
    ]
    train_command(train_cfg(*overrides, outputs=tmp_path / "ref"))
    calls, original = {"n": 0}, Batches.next

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Batches, "next", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_command(train_cfg(*overrides, outputs=tmp_path / "cut"))
    monkeypatch.setattr(Batches, "next", original)
    train_command(train_cfg(*overrides, outputs=tmp_path / "cut"))
    a, b = (
        checkpoint.load(tmp_path / d / "runs" / "test_run" / "checkpoints" / "last.pt")
        for d in ("ref", "cut")
    )
    assert a["state"]["step"] == b["state"]["step"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["schedulers"] == b["schedulers"]
    assert a["schedulers"]["main"]["last_epoch"] == 8
    assert a["optimizers"]["main"]["param_groups"][0]["lr"] == 0.0  # the cosine's end
