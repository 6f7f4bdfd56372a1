"""The evaluator over the model contract: stages in their declared order, sampling cost as the
model reports it per sample, and optional likelihood estimators run the same way for any model."""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import pytest
import torch
from conftest import compose_cfg
from omegaconf import open_dict
from torch import Tensor, nn

from genbench.data.base import Data
from genbench.data.toy2d import toy
from genbench.errors import ConfigError
from genbench.eval import registry
from genbench.eval.context import EvalContext
from genbench.eval.evaluate import evaluate
from genbench.eval.likelihood import estimator_names
from genbench.models.base import (
    GenerativeModel,
    LikelihoodEstimator,
    NllEstimate,
    Sampled,
    check_sampler_options,
)
from genbench.nn.random import per_sample_generators, rand

STAGES = [
    "training_state",
    "sampling",
    "likelihood",
    "likelihood_estimators",
    "fidelity",
    "conditional",
    "toy",
]
SHAPE, K = (1, 2, 2), 5


class Toy(GenerativeModel):
    """Uniform levels; sample i costs 1 + floor(4 u_i) evaluations (u_i its first uniform), and
    the model declares two extra estimators: a bound that counts its evaluations (``k`` per
    example) and an estimate that does not."""

    family = "flow"
    likelihood = "exact"

    def __init__(self, shape=SHAPE, levels=K, bare=False):
        super().__init__(shape, levels)
        self.w = nn.Parameter(torch.zeros(()))
        self.bare = bare

    def training_losses(self, x, phase="main"):
        return {"loss": self.w + self.nll(x)}

    def sample(self, n, *, generator=None, **sampler):
        check_sampler_options(sampler, (), "Toy")
        u = rand((n, *self.shape), generator=generator)
        x = (u * self.levels).long().clamp(max=self.levels - 1)
        return x if self.bare else Sampled(x, 1 + (4 * u.flatten(1)[:, 0]).floor())

    def nll(self, x):
        return torch.full((x.shape[0],), self.dims * math.log(self.levels), dtype=torch.float64)

    def likelihood_estimators(self):
        return {
            "kbound": LikelihoodEstimator("bound", self.k_bound, {"bound": "k-sample"}),
            "guess": LikelihoodEstimator("estimate", self.guess),
        }

    def k_bound(self, x: Tensor, *, generator=None, k: int = 4) -> NllEstimate:
        noise = rand((x.shape[0],), generator=generator, dtype=torch.float64)
        return NllEstimate(self.nll(x) + noise, torch.full((x.shape[0],), float(k)), {"k": k})

    def guess(self, x: Tensor, *, generator=None) -> NllEstimate:
        return NllEstimate(self.nll(x) - 1.0)


def toy_data(n=7):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, K, (n, *SHAPE), generator=g, dtype=torch.uint8)
    return Data("toyimg", K, x, x[:2], x)


def eval_cfg(tmp_path, **values):
    cfg = compose_cfg("eval", ["run=unused"], tmp_path).eval
    with open_dict(cfg):
        cfg.update({"n_samples": 6, "batch_size": 2, "sample_metrics": False, **values})
    return cfg


def rows_by_name(rows):
    return {m.name: m for m in rows}


def test_stages_run_in_their_declared_order():
    assert list(registry.registered()) == STAGES


@pytest.mark.parametrize(
    "first", ["genbench.eval.stages", "genbench.eval.likelihood", "genbench.eval.registry"]
)
def test_stage_order_does_not_depend_on_import_order(first):
    code = (
        f"import {first}; from genbench.eval.registry import registered; "
        "print(','.join(registered()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().split(",") == STAGES


def test_a_new_stage_runs_where_its_order_puts_it(monkeypatch):
    monkeypatch.setattr(registry, "_STAGES", dict(registry._STAGES))
    registry.register_metric("probe", lambda ctx: [], order=15)
    assert list(registry.registered()) == [*STAGES[:2], "probe", *STAGES[2:]]
    with pytest.raises(ValueError, match="order 15 is already stage 'probe'"):
        registry.register_metric("other", lambda ctx: [], order=15)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_metric("probe", lambda ctx: [], order=16)
    with pytest.raises(ValueError, match="order must be an int"):
        registry.register_metric("other", lambda ctx: [], order=1.5)


def test_evaluate_writes_rows_stage_by_stage_with_declared_estimators(tmp_path, caplog):
    """``eval.estimators`` runs what the model declares, with its kind, options, NFE and
    protocol; one it lacks is skipped with a warning. Rows come out in stage order."""
    cfg = eval_cfg(
        tmp_path,
        estimators=["kbound", "ode", "guess"],
        estimator_examples=5,
        estimator_options={"kbound": {"k": 8}},
    )
    data = toy_data()
    with caplog.at_level(logging.WARNING):
        rows = evaluate(Toy(), data, cfg, {}, torch.device("cpu"), tmp_path)
    assert [m.name for m in rows] == [
        "ms_per_image",
        "nfe",
        "nll",
        "bpd",
        "nll_kbound",
        "bpd_kbound",
        "nfe_kbound",
        "nll_guess",
        "bpd_guess",
        "eval_seconds",
    ]
    assert "has no likelihood estimator 'ode' (it offers ['guess', 'kbound'])" in caplog.text
    r = rows_by_name(rows)
    exact = 4 * math.log(K)
    noise = torch.cat(
        [rand((1,), generator=g, dtype=torch.float64) for g in per_sample_generators(0, 0, 5)]
    )
    assert r["nll_kbound"].kind == r["bpd_kbound"].kind == "bound"
    assert r["nll_kbound"].value == pytest.approx(exact + float(noise.mean()), rel=1e-12)
    assert r["bpd_kbound"].value == pytest.approx(r["nll_kbound"].value / (4 * math.log(2)))
    assert (r["nll_kbound"].unit, r["bpd_kbound"].unit) == ("nats", "bits/dim")
    assert r["nfe_kbound"].value == 8.0 and r["nll_kbound"].n == 5
    assert r["nll_kbound"].protocol == {
        "likelihood": "kbound",
        "bound": "k-sample",
        "seed": 0,
        "k": 8,
        "interval": "t-se",  # over the 5 examples' own values
    }
    half = 2.776445 * float(noise.std()) / math.sqrt(5)  # t_{4}
    assert r["nll_kbound"].hi - r["nll_kbound"].value == pytest.approx(half, rel=1e-6)
    assert r["nll_guess"].kind == "estimate" and r["nll_guess"].value == exact - 1
    assert "nfe_guess" not in r  # the estimator does not count evaluations


def test_estimator_results_do_not_depend_on_the_batch_size(tmp_path):
    data, out = toy_data(), []
    for bs in (2, 5):
        ctx = EvalContext(
            Toy(),
            data,
            eval_cfg(tmp_path, batch_size=bs, estimators=["kbound"]),
            {},
            torch.device("cpu"),
            tmp_path,
        )
        out.append(rows_by_name(registry.registered()["likelihood_estimators"](ctx)))
    assert out[0]["nll_kbound"].value == pytest.approx(out[1]["nll_kbound"].value, rel=1e-12)


def test_every_metric_the_evaluator_writes_is_declared(tmp_path):
    """Image and 2-D toy data: each row's name has a MetricSpec with the row's unit."""
    cfg = eval_cfg(tmp_path, n_samples=16, batch_size=16, estimators=["kbound"])
    data = toy("8gaussians", 16, n_train=64, n_val=8, n_test=16)
    rows = evaluate(Toy((2, 1, 1), 16), data, cfg, {}, torch.device("cpu"), tmp_path)
    rows += evaluate(Toy(), toy_data(), cfg, {}, torch.device("cpu"), tmp_path)
    assert {"nll_gap", "modes_covered", "zero_prob_share", "nfe_kbound"} <= {m.name for m in rows}
    for m in rows:
        spec = registry.metric_spec(m.name)
        assert spec is not None and spec.unit == m.unit, (m.name, m.unit, spec)


def test_sampling_nfe_is_the_mean_of_every_samples_own_count(tmp_path):
    """Three batches of 2: the mean over all 6 samples, not the last batch's."""
    model, data = Toy(), toy_data()
    costs = model.sample(6, generator=per_sample_generators(0, 0, 6)).nfe
    assert len(set(costs.tolist())) > 1  # the per-sample costs differ (else the test is void)
    for bs in (2, 6):
        ctx = EvalContext(
            model, data, eval_cfg(tmp_path, batch_size=bs), {}, torch.device("cpu"), tmp_path
        )
        r = rows_by_name(registry.registered()["sampling"](ctx))
        assert r["nfe"].value == float(costs.mean()) and r["nfe"].unit == "count"


def test_a_sample_without_its_cost_is_refused(tmp_path):
    ctx = EvalContext(
        Toy(bare=True), toy_data(), eval_cfg(tmp_path), {}, torch.device("cpu"), tmp_path
    )
    with pytest.raises(
        RuntimeError,
        match=r"Toy.sample returned Tensor; the contract is "
        r"Sampled\(x, nfe\)",
    ):
        ctx.samples()


def test_sampled_checks_one_count_per_sample():
    x = torch.zeros(3, 1, 2, 2, dtype=torch.long)
    assert Sampled.constant(x, 7).nfe.tolist() == [7.0] * 3
    with pytest.raises(ValueError, match=r"nfe must be \[N\] = \[3\]"):
        Sampled(x, torch.ones(2))
    with pytest.raises(ValueError, match="estimator kind"):
        LikelihoodEstimator("upper", Toy().guess)


@pytest.mark.parametrize(
    "key,value",
    [
        ("estimators", "ode"),
        ("estimators", [3]),
        ("estimator_examples", 0),
        ("estimator_options", {"ode": 3}),
    ],
)
def test_bad_estimator_settings_name_the_key(tmp_path, key, value):
    cfg = eval_cfg(tmp_path, **{key: value})
    with pytest.raises(ConfigError, match=f"eval.{key}="):
        estimator_names(cfg)


class NoisyBound(Toy):
    """A bound with Monte-Carlo noise drawn from the contract's per-example generators."""

    likelihood = "dequantized"

    def nll(self, x, *, generator=None):
        noise = rand((x.shape[0],), generator=generator, dtype=torch.float64)
        return torch.full((x.shape[0],), self.dims * math.log(self.levels)) + noise

    def bound_terms(self, x, *, generator=None):
        return {"noise": rand((x.shape[0],), generator=generator, dtype=torch.float64)}


@pytest.mark.parametrize("model", [NoisyBound, Toy])
def test_an_examples_nll_does_not_depend_on_its_batch_and_follows_the_seed(tmp_path, model):
    data, per_example = toy_data(), {}
    for bs, seed in ((2, 0), (5, 0), (7, 0), (2, 1)):
        cfg = eval_cfg(tmp_path, batch_size=bs, seed=seed)
        ctx = EvalContext(model(), data, cfg, {}, torch.device("cpu"), tmp_path)
        rows = rows_by_name(registry.registered()["likelihood"](ctx))
        per_example[bs, seed] = ctx.per_example["nll"]
        if model is NoisyBound:  # the generators' first draw is shared by nll and its terms
            assert rows["noise"].value == pytest.approx(rows["nll"].value - 4 * math.log(K))
    for bs in (5, 7):
        assert per_example[bs, 0].tolist() == per_example[2, 0].tolist()
    if model is NoisyBound:  # eval.seed reaches the noise: every example's number moves
        assert (per_example[2, 1] != per_example[2, 0]).all()
        first = per_sample_generators(0, 0, 7)
        expect = 4 * math.log(K) + rand((7,), generator=first, dtype=torch.float64)
        assert per_example[2, 0].tolist() == pytest.approx(expect.tolist(), abs=1e-6)


def test_nll_settings_travel_in_the_protocol_and_split_the_leaderboard(tmp_path):
    """A VAE's IWAE k is recorded as ``protocol["nll_settings"]`` of its nll / bpd rows (not of
    the k-independent -ELBO); two VAEs differing only in k land in different leaderboard sections,
    and a model that declares no settings gets its own."""
    from genbench.leaderboard.sections import build_sections
    from genbench.leaderboard.store import RunRecord, Store
    from genbench.models.vae import VAE

    cfg, data = eval_cfg(tmp_path), toy_data()
    store = Store(tmp_path / "leaderboard.sqlite")
    for i, (name, model) in enumerate(
        [
            ("k2", VAE(SHAPE, K, hidden=4, latent=2, iwae_samples=2)),
            ("k8", VAE(SHAPE, K, hidden=4, latent=2, iwae_samples=8)),
            ("toy", Toy()),
        ]
    ):
        rows = rows_by_name(evaluate(model, data, cfg, {}, torch.device("cpu"), tmp_path))
        k = getattr(model, "iwae_samples", None)
        for row in ("nll", "bpd"):
            assert rows[row].protocol.get("nll_settings") == (k and {"iwae_samples": k}), row
        if k is not None:
            assert "nll_settings" not in rows["neg_elbo"].protocol
        store.record(
            RunRecord(
                name,
                f"2026-01-01T0{i}",
                name,
                model.family,
                model.likelihood,
                "toyimg",
                1,
                1,
                1,
                1.0,
                "cpu",
                "finished",
                str(tmp_path),
                name,
            ),
            list(rows.values()),
        )
    sections = build_sections(store.runs())
    assert [[r.run["run_id"] for r in s.rows] for s in sections] == [["k2"], ["k8"], ["toy"]]
    assert [s.title for s in sections] == [
        "toyimg [iwae_samples=2]",
        "toyimg [iwae_samples=8]",
        "toyimg [other likelihood settings]",
    ]


def test_eval_dequant_samples_reaches_the_flows_bound_and_its_protocol(tmp_path):
    """``eval.dequant_samples=k`` is passed to a flow's ``nll`` (k importance-weighted draws,
    recorded as ``nll_settings``) and ignored by a model whose ``nll`` does not take it."""
    from genbench.models.flows.realnvp import RealNVP

    data = toy_data()
    flow = RealNVP(SHAPE, K, hidden=4, flat_couplings=2)
    got = {}
    for k in (None, 8):
        cfg = eval_cfg(tmp_path, dequant_samples=k)
        ctx = EvalContext(flow, data, cfg, {}, torch.device("cpu"), tmp_path)
        rows = rows_by_name(registry.registered()["likelihood"](ctx))
        assert rows["bpd"].protocol["nll_settings"] == {"dequant_samples": k or 1}
        got[k] = ctx.per_example["nll"]
        toy = EvalContext(Toy(), data, cfg, {}, torch.device("cpu"), tmp_path)
        assert (
            "nll_settings"
            not in rows_by_name(registry.registered()["likelihood"](toy))["bpd"].protocol
        )
    assert got[8].mean() < got[None].mean()  # the k = 8 bound is tighter on average
