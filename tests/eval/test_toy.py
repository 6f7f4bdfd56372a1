"""Toy sample metrics: exact samples, collapsed samples and hand-built densities."""

import math

import pytest
import torch

from genbench.data.toy2d import ToyDensity, toy_density
from genbench.eval.toy import mode_metrics, sample_log_likelihood


def levels(points):
    return torch.tensor(points, dtype=torch.int64).reshape(-1, 2, 1, 1)


@pytest.fixture(scope="module")
def grid():
    """16 x 16 grid, two modes at levels (2, 2) and (10, 10) with std 1 level."""
    probs = torch.full((16, 16), 1.0 / 256, dtype=torch.float64)
    return ToyDensity("hand", probs, 3.0, torch.tensor([[2.0, 2.0], [10.0, 10.0]]), 1.0)


@pytest.mark.parametrize("name,m", [("8gaussians", 8), ("25gaussians", 25)])
def test_exact_samples_cover_every_mode(name, m):
    d = toy_density(name, 64)
    s = d.sample(20000, torch.Generator().manual_seed(0))
    out = mode_metrics(s, d)
    assert out["modes_covered"] == m and out["modes_total"] == m
    # a 2-D Gaussian puts 1 - exp(-4.5) = 0.989 of its mass within 3 sigma
    assert abs(out["high_quality_share"] - (1 - math.exp(-4.5))) < 0.01, out
    assert out["mode_kl"] < 0.01, out


def test_collapsed_samples_cover_one_mode():
    d = toy_density("8gaussians", 64)
    s = d.modes[3].round().long().repeat(500, 1).reshape(500, 2, 1, 1)
    out = mode_metrics(s, d)
    assert out["modes_covered"] == 1 and out["high_quality_share"] == 1.0
    assert out["mode_kl"] == pytest.approx(math.log(8))


def test_hand_built_mode_metrics(grid):
    # distances to the nearest mode: 0, 3 (= 3 sigma, high quality), 4 (not), 0
    s = levels([[2, 2], [2, 5], [2, 6], [10, 10]])
    out = mode_metrics(s, grid)
    assert out["modes_covered"] == 2 and out["high_quality_share"] == 0.75
    # high-quality shares (2/3, 1/3) against uniform (1/2, 1/2)
    kl = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert out["mode_kl"] == pytest.approx(kl)
    assert mode_metrics(s, grid, min_count=2)["modes_covered"] == 1
    assert mode_metrics(s, grid, n_stds=4.0)["high_quality_share"] == 1.0
    none = mode_metrics(levels([[15, 0]]), grid)
    assert none["modes_covered"] == 0 and math.isnan(none["mode_kl"])


def test_hand_built_sample_log_likelihood():
    probs = torch.tensor([[0.5, 0.25], [0.25, 0.0]], dtype=torch.float64)
    d = ToyDensity("tiny", probs, 1.0, None, 0.0)
    out = sample_log_likelihood(levels([[0, 0], [0, 1], [1, 1]]), d)
    floor = math.log(1e-3 / 4)
    assert out["sample_ll"] == pytest.approx((math.log(0.5) + math.log(0.25) + floor) / 3)
    assert out["zero_prob_share"] == pytest.approx(1 / 3)
    assert out["clipped_share"] == pytest.approx(1 / 3)
    entropy = 0.5 * math.log(2) + 0.5 * math.log(4)
    assert out["sample_ll_gap"] == pytest.approx(out["sample_ll"] + entropy)


def test_exact_samples_score_minus_entropy():
    d = toy_density("checkerboard", 64)  # has zero-probability cells
    s = d.sample(20000, torch.Generator().manual_seed(1))
    out = sample_log_likelihood(s, d)
    logp = d.log_prob(s)
    stderr = float(logp.std()) / math.sqrt(len(logp))
    assert abs(out["sample_ll_gap"]) < 4 * stderr + 1e-9, (out, stderr)
    assert out["zero_prob_share"] == 0.0 and out["clipped_share"] == 0.0


def test_inputs_are_validated(grid):
    with pytest.raises(ValueError, match="not a mixture"):
        mode_metrics(levels([[0, 0]]), toy_density("moons", 16))
    with pytest.raises(ValueError, match=r"\[N, 2, 1, 1\]"):
        mode_metrics(torch.zeros(3, 1, 8, 8, dtype=torch.int64), grid)
    with pytest.raises(ValueError, match="levels in"):
        sample_log_likelihood(levels([[0, 16]]), grid)
