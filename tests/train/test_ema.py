"""EMA: the averaging formula, buffers copied (also when reassigned), state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genbench.train.ema import EMA


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("flag", torch.zeros((), dtype=torch.long))


def test_parameters_follow_the_warmed_up_decay() -> None:
    torch.manual_seed(0)
    net = Net()
    ema = EMA(net, decay=0.9)
    expected = net.lin.weight.detach().clone()
    for n in range(1, 6):
        with torch.no_grad():
            net.lin.weight.add_(1.0)
        ema.update(net)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * net.lin.weight.detach()
        torch.testing.assert_close(ema.module.lin.weight, expected)
    assert ema.num_updates == 5
    assert not ema.module.lin.weight.requires_grad


def test_buffers_are_copied_in_place_or_reassigned() -> None:
    net = Net()
    ema = EMA(net, decay=0.99)
    net.flag.fill_(1)  # in place
    ema.update(net)
    assert int(ema.module.flag) == 1
    net.flag = torch.tensor(7)  # reassigned: a new tensor object
    ema.update(net)
    assert int(ema.module.flag) == 7  # copied, never averaged


def test_state_dict_round_trip_and_mismatch() -> None:
    net = Net()
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.lin.bias.add_(3.0)
    ema.update(net)
    other = EMA(Net(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.module.lin.bias, ema.module.lin.bias)
    assert other.num_updates == 1
    with pytest.raises(ValueError, match="parameters and buffers"):
        ema.update(nn.Linear(3, 2))
