"""Variational dequantization: q(u | x) is a normalized density on the unit cube whose log q is
the change of variables of its flow."""

from __future__ import annotations

import math

import pytest
import torch

from genbench.models.flows.dequantization import VariationalDequantizer
from genbench.nn.random import per_sample_generators


def randomized(shape, levels=5, seed=0):
    """A dequantizer with every conditioner's last layer randomized (they start at zero)."""
    torch.manual_seed(seed)
    q = VariationalDequantizer(shape, levels, hidden=8, couplings=3).double()
    for c in q.couplings:
        torch.nn.init.normal_(c.net[-1].weight, std=0.5)
        torch.nn.init.normal_(c.net[-1].bias, std=0.5)
    return q


@pytest.mark.parametrize("shape", [(2, 1, 1), (1, 2, 2), (3, 1, 2)])
def test_log_q_is_the_change_of_variables_of_the_flow(shape):
    q = randomized(shape)
    x = torch.randint(0, 5, (1, *shape))
    eps = torch.randn(1, *shape, dtype=torch.float64)
    u, log_q = q(x, eps)
    jac = torch.autograd.functional.jacobian(lambda e: q(x, e.view(1, *shape))[0].flatten(), eps)
    jac = jac.reshape(math.prod(shape), math.prod(shape))
    log_n = float(-0.5 * (eps.square() + math.log(2 * math.pi)).sum())
    assert float(log_q.detach()) == pytest.approx(
        log_n - float(torch.linalg.slogdet(jac)[1]), abs=1e-9
    )
    assert ((u > 0) & (u < 1)).all()


def test_the_context_changes_q_and_generators_make_rows_independent():
    q = randomized((1, 2, 2))
    x = torch.randint(0, 5, (4, 1, 2, 2))
    u, _ = q.sample(x, generator=per_sample_generators(0, 0, 4))
    u1, _ = q.sample(x[2:3], generator=per_sample_generators(0, 2, 1))
    assert torch.allclose(u[2:3], u1)
    eps = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    a, _ = q(torch.zeros(1, 1, 2, 2, dtype=torch.long), eps)
    b, _ = q(torch.full((1, 1, 2, 2), 4), eps)
    assert not torch.allclose(a, b)


def test_a_fresh_dequantizer_is_the_logistic_transform_of_a_gaussian():
    q = VariationalDequantizer((1, 2, 2), 5, hidden=4, couplings=2)
    eps = torch.randn(3, 1, 2, 2)
    u, log_q = q(torch.zeros(3, 1, 2, 2, dtype=torch.long), eps)
    assert torch.allclose(u, torch.sigmoid(eps))
    with pytest.raises(ValueError, match="couplings"):
        VariationalDequantizer((1, 2, 2), 5, couplings=1)
