"""Data-parallel training on CPU with gloo: the helpers of genbench.distributed in a real
2-process group, DistributedDataParallel's gradients against hand-averaged ones for every model,
replicas kept identical by the runner, and `torchrun -m genbench train` end to end against a
one-process evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODELS, compose_cfg

from genbench import checkpoint
from genbench import distributed as ddp
from genbench.commands import eval_command
from genbench.data.base import Batches, DatasetError
from genbench.leaderboard.store import Store
from genbench.rundir import RunDir
from genbench.train import distributed as ddp_train


def torchrun(
    nproc: int, *args: str, cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=<nproc> <args>`` with one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# -- one process ---------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [2, 4])
def test_batches_deal_each_rank_its_slice_of_the_global_batch(world):
    data = torch.arange(50).reshape(50, 1, 1, 1)
    single = Batches(data, 8, seed=3)
    ranks = [Batches(data, 8, seed=3, rank=r, world=world) for r in range(world)]
    for _ in range(20):  # 6 batches per epoch: crosses two epoch boundaries
        parts = [b.next()[0] for b in ranks]
        assert all(p.shape[0] == 8 // world for p in parts)
        assert torch.equal(torch.cat(parts), single.next()[0])
    assert all(b.state_dict() == single.state_dict() for b in ranks)


def test_batches_refuse_a_global_batch_that_does_not_split():
    with pytest.raises(DatasetError, match="split evenly across 4 processes"):
        Batches(torch.zeros(20, 1, 1, 1), 6, seed=0, rank=1, world=4)


def test_helpers_are_identities_in_one_process():
    x = torch.arange(6.0).reshape(3, 2)
    assert (ddp.world_size(), ddp.rank(), ddp.is_main()) == (1, 0, True)
    assert ddp.reduce_sum(x) is x and ddp.gather_rows(x) is x
    assert ddp.on_main(lambda a: a + 1, 1) == 2 and ddp.union(["b", "a"]) == ["b", "a"]
    assert ddp.my_batches(10, 4) == [(0, 4), (4, 8), (8, 10)]
    ddp_train.check_batch_size(7)  # any batch splits across one process


def test_one_process_trains_through_the_model_itself_without_a_wrapper():
    model = torch.nn.Linear(2, 2)
    model.training_losses = lambda x, phase: {"loss": x}
    fns = ddp_train.loss_functions(model, {"main": list(model.parameters())})
    assert fns == {"main": model.training_losses}


def test_process_group_block_tears_down_after_success_and_after_an_error(monkeypatch):
    calls = []
    monkeypatch.setattr(ddp, "teardown", calls.append)

    def command(fail):
        with ddp.process_group():
            if fail:
                raise KeyboardInterrupt
            return "done"

    assert command(False) == "done"
    with pytest.raises(KeyboardInterrupt):
        command(True)
    assert calls == [True, False]


# -- two processes: the helpers --------------------------------------------------------------------
WORKER = r'''
"""Runs in each rank: exercises genbench.distributed and writes what it saw as JSON."""
import json, os, sys
import torch
from torch import nn
from genbench.errors import ConfigError
from genbench import distributed as ddp
from genbench.train import distributed as ddp_train
from genbench.train.device import DeviceSetup

setup = ddp.init(DeviceSetup(torch.device("cpu"), "fp32", False, 1))
r, out = ddp.rank(), {}
out["world"], out["threads"] = ddp.world_size(), setup.threads

# broadcast: parameters and buffers become rank 0's
bn = nn.BatchNorm1d(2)
with torch.no_grad():
    bn.weight.fill_(r + 10.0)
    bn.running_mean.fill_(r + 20.0)
ddp.broadcast_module(bn, buffers_only=True)
out["buffers_only"] = [bn.weight.tolist(), bn.running_mean.tolist()]
ddp.broadcast_module(bn)
out["weight_after"] = bn.weight.tolist()

# gathering rows of uneven counts, zero included, in rank order
mine = torch.arange(3 * r, dtype=torch.long).reshape(-1, 1) + 100 * r
out["gathered"] = ddp.gather_rows(mine).flatten().tolist()
out["batches"] = ddp.my_batches(10, 3)
out["sum"] = float(ddp.reduce_sum(torch.tensor(float(r + 1))))
out["union"] = ddp.union(["nll", "kl"] if r == 0 else ["nll", "extra"])
out["main_value"] = ddp.main_value(f"rank-{r}")

# rank 0's error reaches every rank
try:
    ddp.on_main(lambda: (_ for _ in ()).throw(ConfigError("bad value on rank 0")))
except ConfigError as err:
    out["error"] = str(err)
try:
    ddp_train.check_batch_size(3)
except ConfigError as err:
    out["batch_error"] = str(err)

# replica check: equal weights pass, different weights fail on every rank
torch.manual_seed(0)
same = nn.Linear(4, 4)
ddp_train.check_replicas(same)
torch.manual_seed(r)
try:
    ddp_train.check_replicas(nn.Linear(4, 4))
    out["diverged"] = None
except RuntimeError as err:
    out["diverged"] = str(err)
with ddp.process_group():  # leaves the group when the block ends
    pass
out["after_teardown"] = ddp.world_size()
with open(os.path.join(sys.argv[1], f"rank{r}.json"), "w") as f:
    json.dump(out, f)
'''


def test_helpers_in_a_two_process_gloo_group(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = torchrun(2, str(script), str(tmp_path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, out in enumerate(ranks):
        assert out["world"] == 2 and out["after_teardown"] == 1
        assert out["threads"] >= 1
        assert out["buffers_only"] == [[10.0 + r] * 2, [20.0] * 2]
        assert out["weight_after"] == [10.0, 10.0]
        assert out["gathered"] == [100, 101, 102]  # rank 0 had no rows, rank 1 three
        assert out["sum"] == 3.0
        assert out["union"] == ["nll", "kl", "extra"] and out["main_value"] == "rank-0"
        assert out["error"] == "bad value on rank 0"
        assert "divisible by the number of processes (2)" in out["batch_error"]
        assert out["diverged"] and "weights differ" in out["diverged"]
    assert ranks[0]["batches"] == [(0, 3), (3, 6)] or ranks[0]["batches"] == [[0, 3], [3, 6]]
    assert ranks[1]["batches"] == [[6, 9], [9, 10]]


# -- two processes: DistributedDataParallel in the runner ----------------------------------------
DDP_WORKER = r'''
"""Runs in each rank. For every model: two rounds of every phase through genbench's DDP wrappers
against a copy whose gradients are all-reduced by hand. Then Trainer.fit() for a few steps of
Glow (ActNorm's data-dependent init) and DCGAN (batch norm, two phases), with and without the
runner's replica synchronization."""
import copy, json, sys
from pathlib import Path
import torch
import torch.distributed as dist
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from genbench import distributed as ddp
from genbench.build import build_model
from genbench.train import distributed as ddp_train
from genbench.train.device import DeviceSetup
from genbench.train.loop import Trainer

setup = ddp.init(DeviceSetup(torch.device("cpu"), "fp32", False, 1), threads=1)
r, world, out, tmp = ddp.rank(), ddp.world_size(), {}, Path(sys.argv[1])
shape, levels = (1, 8, 8), 17
with initialize_config_module("genbench.conf", version_base="1.3"):
    cfgs = {m: compose("train", overrides=[f"model={m}"]) for m in sys.argv[2].split(",")}


def phase_params(model):
    return {p.name: [q for q in model.parameters_for(p.name) if q.requires_grad]
            for p in model.phases}


x = torch.randint(0, levels, (4, *shape), generator=torch.Generator().manual_seed(10 + r))
for name, cfg in cfgs.items():
    torch.manual_seed(0)
    ref = build_model(cfg.model, shape, levels)
    model = copy.deepcopy(ref)
    ref_params, params = phase_params(ref), phase_params(model)
    fns = ddp_train.loss_functions(model, params)
    equal, averaged = True, False
    for round in range(2):
        for phase in params:
            torch.manual_seed(100 * round + r)
            ref.zero_grad(set_to_none=True)
            ref.training_losses(x, phase)["loss"].mean().backward()
            local = [p.grad.clone() for p in ref_params[phase]]
            for p in ref_params[phase]:
                dist.all_reduce(p.grad)
                p.grad.div_(world)
            averaged |= any(not torch.equal(a, p.grad) for a, p in zip(local, ref_params[phase]))
            torch.manual_seed(100 * round + r)
            model.zero_grad(set_to_none=True)
            fns[phase](x, phase)["loss"].mean().backward()
            equal &= all(torch.equal(a.grad, b.grad)
                         for a, b in zip(ref_params[phase], params[phase]))
    out[name] = {"equal": equal, "averaged": averaged}

data = torch.randint(0, levels, (64, *shape), generator=torch.Generator().manual_seed(5))
for name in ("glow", "dcgan"):
    for sync in (True, False):
        cfg = cfgs[name]
        torch.manual_seed(0)
        model = build_model(cfg.model, shape, levels)
        ddp_train.seed_rank(0)
        run_dir = tmp / f"{name}-{sync}"
        run_dir.mkdir(exist_ok=True)
        trainer_cfg = OmegaConf.merge(cfg.trainer, {"max_steps": 3, "batch_size": 8,
                                                    "eval_every": 3, "ckpt_every": 100,
                                                    "log_every": 100, "val_examples": 8})
        trainer = Trainer(model, data, data[:8], trainer_cfg, cfg.optimizer, setup, run_dir, 0)
        real = ddp_train.sync_replicas
        if not sync:
            ddp_train.sync_replicas = lambda model, first_step: None
        try:
            trainer.fit()
            out[f"{name}/sync={sync}"] = ddp_train.fingerprint(model)
        except RuntimeError as err:
            out[f"{name}/sync={sync}"] = str(err)
        finally:
            ddp_train.sync_replicas = real
# the DDP wrappers go before the group does (as they do when a command returns): a reducer
# destroyed at interpreter exit, after its process group, can abort the process
del fns, trainer, model
import gc
gc.collect()
with ddp.process_group():
    pass
(tmp / f"rank{r}.json").write_text(json.dumps(out))
'''


def test_ddp_gradients_equal_hand_averaged_ones_and_replicas_stay_identical(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(DDP_WORKER)
    proc = torchrun(2, str(script), str(tmp_path), ",".join(MODELS), cwd=tmp_path, timeout=200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name in MODELS:
        for out in ranks:  # bit-identical to all_reduce + divide, and not the local gradient
            assert out[name] == {"equal": True, "averaged": True}, name
    for name in ("glow", "dcgan"):
        synced = [out[f"{name}/sync=True"] for out in ranks]
        assert len(synced[0]) == 64 and synced[0] == synced[1], synced  # same sha256 on both
        assert "weights differ" in ranks[0][f"{name}/sync=False"]  # the sync is what keeps them


# -- two processes: the runner end to end ----------------------------------------------------------
def test_torchrun_training_matches_one_process_evaluation(tmp_path):
    out = tmp_path / "out"
    evals = [
        "eval.sample_metrics=false",
        "eval.batch_size=8",
        "eval.nll_examples=32",
        "eval.n_samples=32",
        "eval.grid=32",
    ]
    proc = torchrun(
        2,
        "-m",
        "genbench",
        "train",
        "experiment=smoke",
        "model=vae",
        f"paths.outputs={out}",
        "trainer.max_steps=6",
        *evals,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    day = next((out / "runs").iterdir())
    assert len(list(day.iterdir())) == 1, "ranks made more than one run folder"
    run_dir = next(day.iterdir())
    assert [p.parent for p in out.rglob("checkpoints")] == [run_dir]
    runs = Store(out / "leaderboard.sqlite").runs()
    assert len(runs) == 1 and runs[0]["status"] == "finished" and runs[0]["steps"] == 6
    assert runs[0]["images_seen"] == 6 * 16  # the global batch, not one rank's half
    assert runs[0]["config"]["run"]["world_size"] == 2
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [2, 4, 6]
    last = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert last["state"]["status"] == "finished" and last["batches"]["index"] == 6 * 16
    ddp_nll = {m["name"]: m["value"] for m in runs[0]["metrics"]}
    ddp_grid = (run_dir / "samples.png").read_bytes()
    ddp_per_example = RunDir(run_dir).read_nll_per_example(32)  # gathered in test order
    assert ddp_per_example.mean() == pytest.approx(ddp_nll["nll"], rel=1e-12)

    cfg = compose_cfg(
        "eval", [f"run={run_dir}", "eval=fast", "device.name=cpu", *evals], tmp_path / "single"
    )
    eval_command(cfg)
    one = {
        m["name"]: m["value"]
        for m in Store(tmp_path / "single" / "leaderboard.sqlite").runs()[0]["metrics"]
    }
    for name in ("nll", "bpd", "neg_elbo", "recon", "kl"):  # 4 test batches: 2 per rank
        assert one[name] == pytest.approx(ddp_nll[name], rel=1e-12, abs=1e-12), name
    # per-example NLLs gathered from the ranks are the one process's, in the same order
    np.testing.assert_allclose(
        RunDir(run_dir).read_nll_per_example(32), ddp_per_example, rtol=1e-12
    )
    # samples drawn 16 per rank and gathered are the one-process samples
    assert (run_dir / "samples.png").read_bytes() == ddp_grid


@pytest.mark.slow
@pytest.mark.parametrize("model", ["glow", "dcgan"])
def test_torchrun_keeps_replicas_identical_with_data_dependent_init_and_batch_norm(model, tmp_path):
    """Glow's ActNorm initializes from each rank's first batch and DCGAN's batch norm keeps
    per-rank statistics (and trains two phases): the runner re-broadcasts rank 0's weights after
    the first step and its buffers after every step, and checks the replicas are bit-identical
    at the end (a run whose ranks differ fails)."""
    out = tmp_path / "out"
    proc = torchrun(
        2,
        "-m",
        "genbench",
        "train",
        "experiment=smoke",
        f"model={model}",
        f"paths.outputs={out}",
        "trainer.max_steps=4",
        "eval.sample_metrics=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    runs = Store(out / "leaderboard.sqlite").runs()
    assert len(runs) == 1 and runs[0]["status"] == "finished"
