"""Evaluation memory does not grow with the batch or with a model's internal sample count, and the
chunked computations give the numbers of the one-shot ones they replace: exactly where the rows
are independent by construction (random draws, the DDPM bound's timesteps), and to float rounding
where a convolution's kernel may depend on the batch size (equal bits on the development CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from genbench.eval import extractors as ex
from genbench.models.autoregressive.pixelcnn import PixelCNN
from genbench.models.autoregressive.pixelrnn import PixelRNN
from genbench.models.diffusion.ddpm import DDPM
from genbench.models.vae import VAE
from genbench.nn import chunks
from genbench.nn.random import per_sample_generators

CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_mb(fn) -> float:
    """MB the resident set grows to above its level before ``fn()`` (Linux: VmHWM reset)."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024


def assert_rounding_equal(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-4)


def iwae_one_shot(m: VAE, x: torch.Tensor) -> torch.Tensor:
    """The IWAE bound as it was computed before chunking: all k B decoder rows at once."""
    k, b = m.iwae_samples, x.shape[0]
    mu, log_std = m.encode(x)
    eps = torch.randn(b, k, mu.shape[1], device=mu.device).transpose(0, 1)  # example-major draws
    z = mu + log_std.exp() * eps
    log_q = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_p = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
    xs = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
    logp = m._level_log_probs(m.decode(z.reshape(k * b, -1)))
    log_px = logp.gather(-1, xs.long().unsqueeze(-1)).squeeze(-1).flatten(1).sum(1).reshape(k, b)
    return -(torch.logsumexp(log_px + log_p - log_q, 0) - math.log(k))


@pytest.fixture
def small_budget(monkeypatch):
    """Chunks of 2^13 elements: tiny models split into many chunks."""
    monkeypatch.setattr(chunks, "ELEMENT_BUDGET", 1 << 13)
    return 1 << 13


def decoder_rows(monkeypatch, model: torch.nn.Module, attr: str) -> list[int]:
    """Record the rows of every call of ``model.<attr>``."""
    rows: list[int] = []
    inner = getattr(model, attr)

    def spy(x, *args, **kwargs):
        rows.append(x.shape[0])
        return inner(x, *args, **kwargs)

    monkeypatch.setattr(model, attr, spy)
    return rows


@pytest.mark.parametrize("decoder", ["categorical", "logistic"])
def test_iwae_bound_equals_the_one_shot_bound(decoder, small_budget, monkeypatch):
    torch.manual_seed(0)
    m = VAE((1, 8, 8), 17, hidden=8, latent=4, decoder=decoder, iwae_samples=50).eval()
    x = torch.randint(0, 17, (6, 1, 8, 8))
    with torch.inference_mode():
        torch.manual_seed(1)
        expected = iwae_one_shot(m, x)
        rows = decoder_rows(monkeypatch, m, "decode")
        torch.manual_seed(1)
        got = m.nll(x)
    assert_rounding_equal(got, expected)
    per_chunk = small_budget // (64 * 17)
    assert max(rows) <= per_chunk and sum(rows) == 50 * 6  # k B rows, in chunks of 7


def test_iwae_memory_does_not_grow_with_k(monkeypatch):
    # 28x28 images with 256 levels, k = 64: the one-shot bound holds [256, 1, 28, 28, 256] floats
    # (205 MB) several times over; chunks of 2^21 elements hold 10 rows (8 MB) at a time
    monkeypatch.setattr(chunks, "ELEMENT_BUDGET", 1 << 21)
    torch.manual_seed(0)
    m = VAE((1, 28, 28), 256, hidden=8, latent=4, iwae_samples=64).eval()
    x = torch.randint(0, 256, (4, 1, 28, 28))
    with torch.inference_mode():
        m.nll(x[:1])  # first-call allocations (kernels, thread pools) are not the bound's
        grown = peak_mb(lambda: m.nll(x))
    assert grown < 120, f"IWAE bound grew the resident set by {grown:.0f} MB (limit 120)"


def test_vae_training_terms_run_in_one_call(small_budget, monkeypatch):
    """With autograd on (training), no chunking: the loss is computed as before."""
    m = VAE((1, 8, 8), 17, hidden=8, latent=4)
    rows = decoder_rows(monkeypatch, m, "decode")
    m.training_losses(torch.randint(0, 17, (32, 1, 8, 8)))["loss"].sum().backward()
    assert rows == [32]


@pytest.mark.parametrize("decoder", ["categorical", "logistic"])
def test_vae_samples_equal_unchunked_with_per_sample_generators(decoder, small_budget, monkeypatch):
    torch.manual_seed(0)
    m = VAE((1, 8, 8), 17, hidden=8, latent=4, decoder=decoder).eval()
    with torch.inference_mode():
        rows = decoder_rows(monkeypatch, m, "decode")
        chunked = m.sample(20, generator=per_sample_generators(0, 0, 20)).x
        monkeypatch.setattr(chunks, "ELEMENT_BUDGET", 1 << 30)
        whole = m.sample(20, generator=per_sample_generators(0, 0, 20)).x
    assert torch.equal(chunked, whole)
    assert rows[:-1] == [7, 7, 6] and rows[-1] == 20


@pytest.mark.parametrize("cls", [PixelCNN, PixelRNN])
def test_autoregressive_nll_equals_one_shot(cls, small_budget, monkeypatch):
    torch.manual_seed(0)
    m = cls((3, 4, 4), 16, features=6, layers=2).eval()
    x = torch.randint(0, 16, (23, 3, 4, 4))
    with torch.inference_mode():
        expected = m._nll(x)
        rows = decoder_rows(monkeypatch, m, "trunk")
        got = m.nll(x)
    assert_rounding_equal(got, expected)
    assert rows == [10, 10, 3]  # 2^13 // (48 sub-pixels * 16 logits) = 10 rows per chunk


def test_ddpm_bound_caps_rows_per_network_call(monkeypatch):
    torch.manual_seed(0)
    m = DDPM(
        (1, 4, 4), 9, ch=8, ch_mult=(1, 2), attn_resolutions=(), norm_groups=4, timesteps=20
    ).eval()
    x = torch.randint(0, 9, (12, 1, 4, 4))
    calls: list[int] = []
    net = m._net

    def spy(x_t, t):
        calls.append(x_t.shape[0])
        return net(x_t, t)

    with torch.inference_mode():
        m.vlb_max_batch = 1 << 20
        expected = m.nll(x)
        monkeypatch.setattr(m, "_net", spy)
        m.vlb_max_batch = 5  # smaller than the batch: each timestep's 12 rows are split
        got = m.nll(x)
    assert torch.equal(got, expected)
    assert max(calls) == 5 and sum(calls) == 12 * 20


def test_levels_to_uint8_in_chunks_equals_one_shot(small_budget):
    x = torch.randint(0, 17, (700, 1, 4, 4))
    expected = torch.round(x.double() * (255.0 / 16)).to(torch.uint8)
    assert torch.equal(ex.levels_to_uint8(x, 17), expected)
