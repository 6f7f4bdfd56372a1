"""Every conf/experiment preset composes and trains one step, shrunk, so presets cannot rot.

Paper presets name CIFAR-10 or MNIST, whose files are not available offline: each case swaps the
dataset to the bundled digits (keeping the preset's augmentation), shrinks the model's width and
depth keys (a small per-model mapping below) and the batch, keeps every other setting of the preset
(optimizer, its target, lr schedule, clipping, EMA, architecture switches) and runs one training
step in-process.
"""

from __future__ import annotations

import math
from numbers import Number

import pytest
import torch
from conftest import EXPERIMENTS, compose_cfg

from genbench.build import build, seed_everything
from genbench.train.device import setup_device
from genbench.train.loop import Trainer
from genbench.validation import validate

#: per model: overrides that make the preset's network tiny (keys absent from a preset are
#: harmless: Hydra adds or replaces them; the model's own defaults fill the rest)
SHRINK: dict[str, list[str]] = {
    "vae": ["model.hidden=8", "model.latent=4", "model.iwae_samples=2"],
    "pixelcnn": ["model.features=8", "model.layers=2"],
    "pixelcnnpp": ["model.nr_filters=8", "model.nr_resnet=1", "model.nr_logistic_mix=2"],
    "pixelrnn": ["model.features=8", "model.layers=1"],
    "realnvp": ["model.hidden=8", "model.blocks=1"],
    "glow": ["model.hidden=8", "model.steps=2"],
    "ddpm": ["model.ch=8", "model.norm_groups=4", "model.num_res_blocks=1"],
    "edm": ["model.ch=8", "model.norm_groups=4", "model.num_res_blocks=1"],
    "flow_matching": ["model.ch=8", "model.norm_groups=4", "model.num_res_blocks=1"],
    "dcgan": ["model.z_dim=8", "model.g_width=8", "model.d_width=8"],
    "sngan": ["model.z_dim=8", "model.g_width=8", "model.d_width=8"],
    "wgan_gp": ["model.z_dim=8", "model.g_width=8", "model.d_width=8"],
    "stylegan2": [
        "model.z_dim=8",
        "model.w_dim=8",
        "model.channel_base=64",
        "model.channel_max=8",
    ],
}
COMMON = [
    "dataset=digits",
    "device=cpu",
    "device.threads=1",
    "device.precision=fp32",
    "trainer.max_steps=1",
    "trainer.budget=steps:1",  # experiment=compare leaves the budget to the user
    "trainer.batch_size=8",
    "trainer.val_examples=8",
    "trainer.eval_every=1",
    "trainer.ckpt_every=100",
    "trainer.log_every=1",
]
#: presets for tests and for the quickstart sweep: no published numbers
NOT_PAPER = {"smoke", "quickstart", "quickstart_conditional", "data_efficiency", "compare"}


def _compose(experiment: str, tmp_path):
    base = compose_cfg("train", [f"experiment={experiment}"], tmp_path / "out")
    model = base.run.model
    if model not in SHRINK:
        pytest.fail(f"add a SHRINK entry for model {model!r} (used by experiment={experiment})")
    return compose_cfg(
        "train", [f"experiment={experiment}", *COMMON, *SHRINK[model]], tmp_path / "out"
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_preset_trains_one_step_shrunk(experiment, tmp_path):
    cfg = _compose(experiment, tmp_path)
    validate(cfg)
    setup = setup_device(cfg.device)
    seed_everything(int(cfg.seed))
    data, model = build(cfg, setup)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = Trainer(
        model,
        data.train,
        data.val,
        cfg.trainer,
        cfg.optimizer,
        setup,
        run_dir,
        int(cfg.seed),
        scheduler=cfg.scheduler,
        augment=data.augment,
        train_labels=data.train_labels,
        val_labels=data.val_labels,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = trainer.fit()
    assert state.status == "finished" and state.step == 1
    assert state.images_seen == 8 * sum(p.repeat for p in model.phases)
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    changed = [
        k
        for k, v in model.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert changed, "one optimizer step left every weight unchanged"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for opt in trainer.optimizers.values():  # the preset's optimizer is the one built
        assert type(opt).__name__ == cfg.optimizer._target_.rsplit(".", 1)[1]


@pytest.mark.parametrize("experiment", sorted(set(EXPERIMENTS) - NOT_PAPER))
def test_paper_preset_states_published_numbers(experiment, tmp_path):
    cfg = compose_cfg("train", [f"experiment={experiment}"], tmp_path / "out")
    expected = cfg.get("expected")
    assert expected is not None and len(expected) > 0, f"{experiment}: no `expected:` dict"
    numbers = [v for v in expected.values() if isinstance(v, Number) and not isinstance(v, bool)]
    assert numbers and all(math.isfinite(v) and v > 0 for v in numbers), dict(expected)
    assert cfg.run.dataset != "digits" and int(cfg.trainer.max_steps) >= 10_000


#: the published lr schedules and augmentations of the paper presets (see each preset's header)
PAPER_SCHEDULES = {
    "ddpm_cifar10": ("ConstantLR", 5000, ["hflip"]),  # Ho et al. 2020: warm-up 5000, flips
    "edm_cifar10": ("ConstantLR", 19531, []),  # released code: 10 Mimg ramp-up, batch 512
    "flow_matching_cifar10": ("LinearLR", 45000, []),  # Lipman et al. 2023: warm-up 45k, decay
    "glow_cifar10": ("ConstantLR", 1000, ["translate"]),  # released code: warm-up, --dal 1
    "pixelcnnpp_cifar10": ("ExponentialLR", 0, []),  # released code: lr x 0.999995 per step
    "realnvp_cifar10": ("ConstantLR", 0, ["hflip"]),  # Dinh et al. 2017: flips
    "wgan_gp_cifar10": ("LinearLR", 0, []),  # released code: linear decay to 0
    "sngan_cifar10": ("LinearLR", 0, []),  # released code: linear decay to 0
    "stylegan2_cifar10": ("ConstantLR", 0, []),  # released code: constant lr, no x-flips here
    "vae_mnist": ("MultiStepLR", 0, []),  # Burda et al. 2016: lr 10^(-i/7) for 3^i epochs
}


@pytest.mark.parametrize("experiment", sorted(PAPER_SCHEDULES))
def test_paper_presets_use_their_published_schedule_and_augmentation(experiment, tmp_path):
    cfg = compose_cfg("train", [f"experiment={experiment}"], tmp_path / "out")
    cls, warmup, augment = PAPER_SCHEDULES[experiment]
    assert cfg.scheduler._target_ == f"torch.optim.lr_scheduler.{cls}"
    assert cfg.scheduler.warmup_steps == warmup and list(cfg.dataset.augment) == augment
    if cls == "LinearLR":
        assert (cfg.scheduler.start_factor, cfg.scheduler.end_factor) == (1.0, 0.0)
        assert cfg.scheduler.total_iters is None  # to 0 at trainer.max_steps


def test_other_presets_keep_a_constant_lr_and_no_augmentation(tmp_path):
    for experiment in sorted(set(EXPERIMENTS) - set(PAPER_SCHEDULES) - {"quickstart"}):
        cfg = compose_cfg("train", [f"experiment={experiment}"], tmp_path / "out")
        assert cfg.scheduler._target_.endswith("ConstantLR") and cfg.scheduler.warmup_steps == 0
        assert list(cfg.dataset.get("augment", [])) == [], experiment
