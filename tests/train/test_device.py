"""Device setup: the thread governor follows the cores other processes leave free; channels-last
placement of image models."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf
from threadpoolctl import threadpool_limits

from genbench.train.device import ThreadGovernor, setup_device

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")


def _stat(busy_ticks: list[int]) -> str:
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{i} {b} 0 0 1000 0 0 0 0 0 0" for i, b in enumerate(busy_ticks)]
    return "\n".join(lines) + "\n"


class FakeClock:
    """Feeds the governor a scripted /proc/stat, wall clock and own CPU time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: object, cpus: int) -> None:
        self.wall, self.own, self.busy = 0.0, 0.0, [0] * cpus
        self.path = tmp_path / "stat"
        self.path.write_text(_stat(self.busy))
        monkeypatch.setattr(ThreadGovernor, "STAT", self.path)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
        monkeypatch.setattr(os, "sysconf", lambda name: 100)
        monkeypatch.setattr("genbench.train.device.time.monotonic", lambda: self.wall)
        monkeypatch.setattr(os, "times", lambda: os.times_result((self.own, 0, 0, 0, 0)))

    def advance(self, seconds: float, own_cores: float, other_cores: float) -> None:
        """``seconds`` pass: this process uses ``own_cores``, others ``other_cores``."""
        self.wall += seconds
        self.own += seconds * own_cores
        total = round(100 * seconds * (own_cores + other_cores))
        self.busy = [b + total // len(self.busy) for b in self.busy]
        self.path.write_text(_stat(self.busy))


@pytest.fixture
def threads():
    """setup_device sets torch's and numpy's BLAS thread counts: restore both."""
    before = torch.get_num_threads()
    with threadpool_limits(limits=None):  # restores the BLAS limits on exit
        yield
    torch.set_num_threads(before)


def test_threads_drop_when_another_process_takes_a_core_and_come_back(
    monkeypatch, tmp_path, threads
):
    clock = FakeClock(monkeypatch, tmp_path, cpus=2)
    torch.set_num_threads(2)
    gov = ThreadGovernor(limit=2, interval=2.0)
    clock.advance(1.0, own_cores=1.3, other_cores=0.7)  # a busy process arrives
    assert gov.tick() is None and torch.get_num_threads() == 2  # interval not over yet
    clock.advance(1.5, own_cores=1.3, other_cores=0.7)
    assert gov.tick() == 1 and torch.get_num_threads() == 1
    assert gov.others == pytest.approx(0.7, abs=0.02)
    clock.advance(2.0, own_cores=1.0, other_cores=1.0)
    assert gov.tick() is None and torch.get_num_threads() == 1  # still busy: stays at 1
    clock.advance(2.0, own_cores=1.0, other_cores=0.0)  # it left
    assert gov.tick() == 2 and torch.get_num_threads() == 2


def test_limit_is_respected_and_unreadable_stat_does_nothing(monkeypatch, tmp_path, threads):
    clock = FakeClock(monkeypatch, tmp_path, cpus=4)
    torch.set_num_threads(2)
    gov = ThreadGovernor(limit=2)
    clock.advance(3.0, own_cores=2.0, other_cores=0.0)
    assert gov.tick() is None and torch.get_num_threads() == 2  # 4 free cores, limit 2
    monkeypatch.setattr(ThreadGovernor, "STAT", tmp_path / "missing")
    assert ThreadGovernor(limit=2).tick() is None


def test_only_auto_threads_on_cpu_are_adaptive(threads):
    auto = setup_device(OmegaConf.create({"name": "cpu", "precision": "fp32", "threads": "auto"}))
    fixed = setup_device(OmegaConf.create({"name": "cpu", "precision": "fp32", "threads": 1}))
    assert auto.adaptive_threads == ((os.cpu_count() or 1) > 1)
    assert not fixed.adaptive_threads and fixed.threads == 1


def _cpu(**extra: object) -> object:
    return setup_device(
        OmegaConf.create({"name": "cpu", "precision": "fp32", "threads": 1, **extra})
    )


@pytest.mark.parametrize(
    "setting,shape,expected",
    [
        ("auto", (1, 8, 8), True),
        ("auto", (2, 1, 1), False),
        (False, (1, 8, 8), False),
        (True, (2, 1, 1), True),
    ],
)
def test_channels_last_for_image_data_unless_configured(setting, shape, expected, threads):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2))
    placed = _cpu(channels_last=setting).place_model(net, shape)
    weight = placed[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) is expected
    assert weight.is_contiguous() is not expected
    assert placed[1].weight.is_contiguous()  # 2-D weights are untouched


def test_bad_channels_last_names_key_value_and_choices(threads):
    from genbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"device\.channels_last.*sometimes.*auto, true or false"):
        _cpu(channels_last="sometimes")
