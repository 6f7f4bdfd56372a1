"""95 % intervals: the helpers against known distributions, the likelihood rows' intervals and
their per-example file in the run folder (refused when it holds anything but floats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from omegaconf import open_dict
from torch import nn

from genbench.data.base import Data
from genbench.errors import ConfigError
from genbench.eval import intervals as iv
from genbench.eval.evaluate import evaluate
from genbench.files import FileError
from genbench.models.base import GenerativeModel, Sampled
from genbench.nn.random import rand
from genbench.rundir import RunDir
from genbench.validation import _validate_eval

SHAPE, K = (1, 2, 2), 5


def test_quantiles_are_the_textbook_values():
    assert iv.quantile() == pytest.approx(1.959964, abs=1e-6)
    assert iv.quantile(dof=9) == pytest.approx(2.262157, abs=1e-6)
    assert iv.quantile(0.9) == pytest.approx(1.644854, abs=1e-6)


def test_interval_of_a_normal_mean_has_the_right_width_and_coverage():
    """N(0, 1) samples: half-width ≈ 1.96 / √n, and the true mean 0 is inside ≈ 95 % of the
    time (2,000 repetitions: binomial sd ≈ 0.5 %)."""
    rng = np.random.default_rng(0)
    n = 400
    halves, covered = [], 0
    for _ in range(2000):
        mean, lo, hi = iv.mean_interval(rng.standard_normal(n), method="normal")
        assert lo < mean < hi and mean - lo == pytest.approx(hi - mean)
        halves.append((hi - lo) / 2)
        covered += lo <= 0.0 <= hi
    assert np.mean(halves) == pytest.approx(1.96 / math.sqrt(n), rel=0.02)
    assert 0.93 <= covered / 2000 <= 0.97
    x = rng.standard_normal(10)  # the t interval: t_{9} · s / √n exactly
    mean, lo, hi = iv.mean_interval(x)
    assert hi - mean == pytest.approx(2.262157 * x.std(ddof=1) / math.sqrt(10), rel=1e-6)
    assert all(math.isnan(v) for v in iv.mean_interval([3.0])[1:])


def test_bootstrap_helpers():
    idx = iv.resample_indices(50, 20, seed=3)
    assert idx.shape == (20, 50) and idx.min() >= 0 and idx.max() < 50
    assert (idx == iv.resample_indices(50, 20, seed=3)).all()
    assert not (idx == iv.resample_indices(50, 20, seed=4)).all()
    reps = np.arange(1001, dtype=float)  # uniform on 0..1000
    assert iv.percentile_interval(reps) == pytest.approx((25.0, 975.0))
    half = 1.959964 * np.std(reps / 1000, ddof=1)  # ≈ 0.57
    lo, hi = iv.bootstrap_se_interval(0.5, reps / 1000, bounds=(0.0, math.inf))
    assert (lo, hi) == (0.0, pytest.approx(0.5 + half))  # clipped below only
    assert iv.bootstrap_se_interval(2.0, reps / 1000) == pytest.approx((2 - half, 2 + half))
    assert all(map(math.isnan, iv.bootstrap_se_interval(1.0, [2.0])))
    assert iv.finite_or_none(math.nan, 1.0) == (None, None)


class Noisy(GenerativeModel):
    """NLL = D log K + (sum of the levels) / 10 nats: differs from image to image."""

    family = "flow"
    likelihood = "exact"

    def __init__(self):
        super().__init__(SHAPE, K)
        self.w = nn.Parameter(torch.zeros(()))

    def training_losses(self, x, phase="main"):
        return {"loss": self.w + self.nll(x)}

    def sample(self, n, *, generator=None, **sampler):
        x = (rand((n, *self.shape), generator=generator) * K).long().clamp(max=K - 1)
        return Sampled(x, torch.ones(n))

    def nll(self, x):
        return self.dims * math.log(K) + x.flatten(1).double().sum(1) / 10


def eval_cfg(tmp_path, **values):
    cfg = compose_cfg("eval", ["run=unused"], tmp_path).eval
    with open_dict(cfg):
        cfg.update({"n_samples": 4, "batch_size": 3, "sample_metrics": False, **values})
    return cfg


def test_likelihood_rows_carry_a_t_interval_and_the_per_example_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, K, (11, *SHAPE), generator=g, dtype=torch.uint8)
    data = Data("toyimg", K, x, x[:2], x)
    run = RunDir(tmp_path / "run")
    rows = evaluate(Noisy(), data, eval_cfg(tmp_path), {}, torch.device("cpu"), tmp_path, run=run)
    r = {m.name: m for m in rows}
    per = run.read_nll_per_example(11)
    expected = Noisy().nll(x.long()).numpy()
    np.testing.assert_allclose(per, expected, rtol=1e-15)  # test order, float64 nats
    assert per.mean() == pytest.approx(r["nll"].value, rel=1e-12)
    half = 2.228139 * expected.std(ddof=1) / math.sqrt(11)  # t_{10}
    assert (r["nll"].lo, r["nll"].hi) == pytest.approx((per.mean() - half, per.mean() + half))
    to_bpd = 1 / (4 * math.log(2))
    assert r["bpd"].lo == pytest.approx(r["nll"].lo * to_bpd)
    assert r["bpd"].hi == pytest.approx(r["nll"].hi * to_bpd)
    assert r["nll"].protocol["interval"] == r["bpd"].protocol["interval"] == "t-se"
    # an evaluation without likelihoods leaves no stale file behind
    evaluate(
        Noisy(), data, eval_cfg(tmp_path, nll=False), {}, torch.device("cpu"), tmp_path, run=run
    )
    assert not run.nll_file.exists()


def test_a_hostile_or_malformed_per_example_file_is_refused(tmp_path):
    run = RunDir(tmp_path)
    np.save(run.nll_file, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(FileError, match="pickled or corrupt"):
        run.read_nll_per_example()
    np.save(run.nll_file, np.zeros((2, 3)))
    with pytest.raises(FileError, match=r"expected a float vector \[n\]"):
        run.read_nll_per_example()
    run.nll_file.write_bytes(b"not numpy")
    with pytest.raises(FileError, match="per-example NLL file"):
        run.read_nll_per_example()
    run.write_nll_per_example(np.arange(3.0))
    with pytest.raises(FileError, match="holds 3 values; the evaluation used 4"):
        run.read_nll_per_example(4)
    assert run.read_nll_per_example(3).tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("value", [-1, 1.5, "many", True])
def test_a_bad_bootstrap_count_names_the_key(tmp_path, value):
    cfg = eval_cfg(tmp_path, bootstrap=value)
    with pytest.raises(ConfigError, match="eval.bootstrap"):
        _validate_eval(cfg)
