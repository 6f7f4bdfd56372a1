"""Training budgets (steps, seconds, images, flops), FLOP counting and the anytime hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genbench import checkpoint
from genbench.build import build, seed_everything
from genbench.commands import train_command
from genbench.data.base import Batches
from genbench.errors import ConfigError
from genbench.eval.metric import CurvePoint, Metric
from genbench.models.base import Phase
from genbench.train.budget import Budget, count_flops, parse_budget, parse_eval_at, per_step
from genbench.train.device import DeviceSetup
from genbench.train.loop import Trainer
from genbench.train.schedule import build_scheduler
from genbench.validation import validate

CPU = DeviceSetup(torch.device("cpu"), "fp32", False, 1)


# -- parsing and validation ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "unit", "amount", "shown"),
    [
        ("steps:1200", "steps", 1200, "steps:1200"),
        ("flops:5e12", "flops", 5e12, "flops:5e+12"),
        ("seconds:60", "seconds", 60, "seconds:60"),
        ("images:1e5", "images", 100_000, "images:100000"),
        (None, "steps", 7, "steps:7"),
    ],
)
def test_budget_parses_each_unit(text, unit, amount, shown):
    b = parse_budget(text, max_steps=7)
    assert (b.unit, b.amount, str(b)) == (unit, amount, shown)


@pytest.mark.parametrize("bad", ["weeks:3", "flops", "flops:-1", "steps:2.5", "flops:nan", 12])
def test_bad_budget_is_a_config_error_naming_key_value_and_units(train_cfg, bad):
    with pytest.raises(ConfigError, match=r"trainer\.budget=.*(steps|unit)") as err:
        validate(train_cfg(f"trainer.budget={bad}"))
    assert str(bad) in str(err.value)
    assert "flops" in str(err.value) or "steps" in str(err.value)


def test_max_steps_is_the_default_budget_and_an_explicit_budget_replaces_it(train_cfg):
    cfg = train_cfg("trainer.max_steps=9")
    assert cfg.trainer.budget == "steps:9"
    assert train_cfg("trainer.max_steps=9", "trainer.budget=seconds:5").trainer.budget == (
        "seconds:5"
    )


def test_eval_at_is_checked():
    assert parse_eval_at([1.0, 0.25, 0.25]) == [0.25, 1.0]
    for bad in ([0.0], [1.5], ["half"], "0.5"):
        with pytest.raises(ConfigError, match=r"trainer\.eval_at="):
            parse_eval_at(bad)


def test_seconds_budget_refuses_a_schedule_whose_length_is_the_run(train_cfg):
    with pytest.raises(ConfigError, match=r"scheduler\.T_max=null .*seconds"):
        validate(train_cfg("scheduler=cosine", "trainer.budget=seconds:5"))
    validate(train_cfg("scheduler=cosine", "scheduler.T_max=50", "trainer.budget=seconds:5"))
    validate(train_cfg("scheduler=multistep", "trainer.budget=seconds:5"))
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="seconds budget"):
        build_scheduler({"_target_": "torch.optim.lr_scheduler.LinearLR", "_partial_": True,
                         "total_iters": None}, opt, None)  # fmt: skip


def test_experiment_compare_gives_every_model_one_budget(tmp_path):
    from conftest import compose_cfg

    cfg = compose_cfg("train", ["experiment=compare", "+quickstart=glow"], tmp_path)
    assert (cfg.trainer.budget, cfg.run.model) == ("flops:1e12", "glow")
    cfg = compose_cfg("train", ["experiment=compare", "trainer.budget=seconds:30"], tmp_path)
    validate(cfg)
    with pytest.raises(ConfigError, match=r"trainer\.budget has no value"):
        validate(compose_cfg("train", ["experiment=compare", "trainer.budget=???"], tmp_path))


# -- FLOP counting: hand counts -----------------------------------------------------------------
class _Toy(nn.Module):
    """A stand-in with the model contract's ``training_losses``: the mean of ``net(x)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_losses(self, x, phase="main"):
        return {"loss": self.net(x.float()).flatten(1).sum(1)}


def test_flops_of_a_small_mlp_equal_the_hand_count():
    n, d_in, hidden, d_out = 4, 6, 5, 3
    toy = _Toy(nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out)))
    got = count_flops(toy, [Phase()], torch.randint(0, 4, (n, d_in)))["main"]
    # a linear layer in -> out on n rows: forward 2 n in out; backward 2 n in out for the weight
    # gradient and 2 n in out for the input gradient, which the first layer does not need (the
    # data needs no gradient); biases, ReLU, sum and mean are elementwise: not counted
    fwd = 2 * n * d_in * hidden + 2 * n * hidden * d_out
    bwd = 2 * n * hidden * d_out * 2 + 2 * n * d_in * hidden
    assert got == fwd + bwd == 840


def test_flops_of_a_small_conv_net_equal_the_hand_count():
    n, c_in, c_out, k, h = 2, 2, 3, 3, 5
    net = nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=1), nn.Flatten(), nn.Linear(75, 1))
    got = count_flops(_Toy(net), [Phase()], torch.randint(0, 4, (n, c_in, h, h)))["main"]
    # a 'same' conv: 2 n H W c_out c_in k^2 forward (a multiply and an add per weight and output
    # pixel), the same for its weight gradient (no input gradient: the data needs none); the
    # linear layer 75 -> 1 as above: forward, weight gradient and input gradient
    conv = 2 * n * h * h * c_out * c_in * k * k
    linear = 2 * n * 75 * 1
    assert got == 2 * conv + 3 * linear == 11_700


class _Lazy(_Toy):
    """A toy whose every k-th call adds a second pass through its net (a lazy regularizer)."""

    def __init__(self, net: nn.Module, k: int) -> None:
        super().__init__(net)
        self.k, self.calls = k, 0

    def training_losses(self, x, phase="main"):
        out = super().training_losses(x, phase)
        if self.calls % self.k == 0:
            out["loss"] = out["loss"] + super().training_losses(x, phase)["loss"]
        self.calls += 1
        return out


def test_a_lazy_phase_is_charged_its_mean_cost_over_one_period():
    n, d_in, d_out, k = 4, 6, 3, 4
    one = 2 * n * d_in * d_out * 2  # forward + weight gradient of a linear layer (no input grad)
    lazy = _Lazy(nn.Linear(d_in, d_out), k)
    x = torch.randint(0, 4, (n, d_in))
    # the first step alone pays the extra pass: counting it alone overcharges every step
    assert count_flops(lazy, [Phase()], x)["main"] == 2 * one
    assert count_flops(lazy, [Phase(period=k)], x)["main"] == one * (k + 1) / k
    assert lazy.calls == 0  # counted on a copy


def test_flop_count_leaves_model_and_random_state_untouched():
    torch.manual_seed(0)
    toy = _Toy(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)))
    before = {k: v.clone() for k, v in toy.state_dict().items()}
    rng = torch.get_rng_state()
    count_flops(toy, [Phase()], torch.ones(8, 3))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in toy.state_dict().items())
    assert all(p.grad is None for p in toy.parameters())


def test_a_step_costs_each_phase_times_its_repeats():
    phases = [Phase("d", repeat=5), Phase("g")]
    assert per_step({"d": 10.0, "g": 3.0}, phases) == 53.0
    b = Budget("flops", 530.0)
    assert b.steps(images_per_step=1, flops_per_step=53.0) == 10
    assert b.steps(images_per_step=1, flops_per_step=52.0) == 11  # the first step spending it
    assert Budget("images", 100).steps(images_per_step=64, flops_per_step=1.0) == 2
    assert Budget("seconds", 5).steps(images_per_step=64, flops_per_step=1.0) is None


# -- the training loop under each budget --------------------------------------------------------
class FakeClock:
    """Seconds that advance only when told (``tick`` per call, ``+=`` for elsewhere)."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def _trainer(train_cfg, where, *overrides, seed=0, **kwargs) -> Trainer:
    cfg = train_cfg("trainer.eval_every=3", "trainer.ckpt_every=3", *overrides)
    where.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    data, model = build(cfg, CPU)
    return Trainer(
        model,
        data.train,
        data.val,
        cfg.trainer,
        cfg.optimizer,
        CPU,
        where,
        0,
        scheduler=cfg.get("scheduler"),
        **kwargs,
    )


def test_seconds_budget_stops_within_ten_percent_under_a_fake_clock(train_cfg, tmp_path):
    clock = FakeClock(0.07)  # two calls per step: 0.07 s of training per step

    def probe(model):  # 100 s of probing, which must not count as training
        clock.now += 100.0
        return []

    t = _trainer(
        train_cfg, tmp_path / "a", "trainer.budget=seconds:1", "trainer.eval_at=[0.5]",
        clock=clock, probe=probe,
    )  # fmt: skip
    state = t.fit()
    assert state.step == 15 and 1.0 <= state.train_seconds <= 1.1  # ceil(1 / 0.07)
    assert state.probed == [0.5]

    # a resumed run counts the seconds already spent (they are in the checkpoint)
    ckpt = checkpoint.load(tmp_path / "a" / "checkpoints" / "last.pt")
    longer = _trainer(train_cfg, tmp_path / "b", "trainer.budget=seconds:2", clock=FakeClock(0.07))
    longer.load_state_dict(ckpt)
    assert longer.fit().step == 29 and 2.0 <= longer.state.train_seconds <= 2.2


def test_images_count_every_phase_and_repeat_of_a_gan(train_cfg, tmp_path):
    # batch 16, a critic phase repeated 3 times and a generator phase: 64 images per step
    t = _trainer(
        train_cfg, tmp_path, "model=wgan_gp", "model.d_steps=3", "model.z_dim=4",
        "model.g_width=4", "model.d_width=4", "trainer.budget=images:100",
    )  # fmt: skip
    assert t.images_per_step == 64
    state = t.fit()
    assert (state.step, state.images_seen) == (2, 128)
    per_phase = count_flops(t.model, t.model.phases, t.batches.data[:16].long())
    assert state.train_flops == 2 * (3 * per_phase["d"] + per_phase["g"]) > 0


def _fraction_probe(calls):
    def probe(model):
        assert not model.training and not torch.is_grad_enabled()
        torch.rand(3)  # draws from the global generator: forked, so training is not affected
        calls.append(1)
        return [Metric("bpd", float(len(calls)), "exact", "test", 8)]

    return probe


def _states_equal(a: Trainer, b: Trainer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for key in ("model", "ema"):
        for name, v in (sa[key]["module"] if key == "ema" else sa[key]).items():
            w = (sb[key]["module"] if key == "ema" else sb[key])[name]
            assert torch.equal(v, w), (key, name)
    for phase, opt in sa["optimizers"].items():
        for i, st in opt["state"].items():
            for k, v in st.items():
                assert torch.equal(v, sb["optimizers"][phase]["state"][i][k]), (phase, i, k)


@pytest.mark.parametrize("unit", ["steps", "images", "flops"])
def test_deterministic_budgets_resume_bit_identical_with_the_probe(
    unit, train_cfg, tmp_path, monkeypatch
):
    flops = _trainer(train_cfg, tmp_path / "m").flops_per_step
    budget = {"steps": "steps:8", "images": "images:120", "flops": f"flops:{7.5 * flops!r}"}[unit]
    over = [f"trainer.budget={budget}", "trainer.eval_at=[0.25,0.5,1.0]", "scheduler=cosine"]
    plain = _trainer(train_cfg, tmp_path / "plain", *over)
    plain.fit()
    calls: list[int] = []
    whole = _trainer(train_cfg, tmp_path / "whole", *over, probe=_fraction_probe(calls))
    assert whole.total_steps == 8 and whole.schedulers["main"].T_max == 8
    whole.fit()
    assert len(calls) == 3 and whole.state.probed == [0.25, 0.5, 1.0]
    assert [p["step"] for p in whole.state.curve] == [2, 4, 8]
    _states_equal(plain, whole)  # the probe changes nothing

    n = {"calls": 0}
    original = Batches.next

    def flaky(self):
        n["calls"] += 1
        if n["calls"] == 6:
            raise KeyboardInterrupt
        return original(self)

    cut_calls: list[int] = []
    cut = _trainer(train_cfg, tmp_path / "cut", *over, probe=_fraction_probe(cut_calls))
    monkeypatch.setattr(Batches, "next", flaky)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    monkeypatch.setattr(Batches, "next", original)
    ckpt = checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert ckpt["state"]["step"] == 5 and ckpt["state"]["probed"] == [0.25, 0.5]
    resumed = _trainer(
        train_cfg, tmp_path / "resumed", *over, seed=1, probe=_fraction_probe(cut_calls)
    )
    resumed.load_state_dict(ckpt)
    resumed.fit()
    assert len(cut_calls) == 3 and resumed.state.probed == [0.25, 0.5, 1.0]  # once each
    _states_equal(whole, resumed)
    for key in ("step", "images_seen", "train_flops", "best_step", "best_val"):
        assert getattr(whole.state, key) == getattr(resumed.state, key), key
    points = [CurvePoint.from_dict(d) for d in resumed.state.curve]
    assert [(p.fraction, p.step) for p in points] == [
        (p["fraction"], p["step"]) for p in whole.state.curve
    ]
    assert points[-1].fraction == 1.0 and points[-1].flops == resumed.state.train_flops


def test_the_record_carries_budget_and_flops(train_cfg):
    rec = train_command(train_cfg("trainer.budget=images:40"))  # batch 16: 3 steps
    assert (rec.budget, rec.steps, rec.images_seen) == ("images:40", 3, 48)
    assert rec.train_flops > 0 and rec.train_flops % 3 == 0


def test_attention_on_cpu_is_counted_like_on_cuda():
    class Attention(nn.Module):
        def training_losses(self, x, phase="main"):
            q = x.float().requires_grad_()
            out = nn.functional.scaled_dot_product_attention(q, q, q)
            return {"loss": out.flatten(1).sum(1)}

    b, s, d = 2, 16, 8
    got = count_flops(Attention(), [Phase()], torch.ones(b, 1, s, d))["main"]
    # forward: scores q k^T and scores @ v, 2 b s s d each; backward (torch's formula for the
    # fused kernels): the scores again, then the gradients of v, the probabilities, q and k
    bmm = 2 * b * s * s * d
    assert got == 2 * bmm + 5 * bmm == 57_344


def test_a_step_that_cannot_be_counted_trains_by_steps_and_refuses_a_flops_budget(
    train_cfg, tmp_path, monkeypatch
):
    from genbench.train import budget

    def fails(*args, **kwargs):
        raise RuntimeError("not supported under FlopCounterMode")

    monkeypatch.setattr(budget, "count_flops", fails)
    assert _trainer(train_cfg, tmp_path / "a", "trainer.max_steps=2").fit().train_flops == 0
    with pytest.raises(ConfigError, match=r"trainer\.budget=flops:1e\+06 .*no FLOPs"):
        _trainer(train_cfg, tmp_path / "b", "trainer.budget=flops:1e6")


def test_default_budget_keeps_the_config_hash_of_runs_made_before_budgets(train_cfg):
    from omegaconf import open_dict

    from genbench.build import config_hash

    cfg = train_cfg()
    old = train_cfg()
    with open_dict(old):
        del old.trainer["budget"], old.trainer["eval_at"], old.trainer["probe"]
    assert config_hash(cfg) == config_hash(old)
    assert config_hash(train_cfg("trainer.probe.n_samples=7")) == config_hash(old)  # never runs
    assert config_hash(train_cfg("trainer.eval_at=[0.5]", "trainer.probe.n_samples=7")) != (
        config_hash(train_cfg("trainer.eval_at=[0.5]"))
    )
    assert config_hash(train_cfg("trainer.budget=steps:4")) == config_hash(old)  # smoke: 4 steps
    assert config_hash(train_cfg("trainer.budget=images:64")) != config_hash(old)
    assert config_hash(train_cfg("trainer.eval_at=[0.5]")) != config_hash(old)
