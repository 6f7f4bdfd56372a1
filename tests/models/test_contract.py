"""The model contract, parametrized over every conf/model/*.yaml (new models are covered
automatically) and over two data shapes: 8x8 digits (17 levels) and 2-D toys (64 levels)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MODELS, compose_cfg
from hydra.utils import instantiate

from genbench.models.base import FAMILIES, LIKELIHOODS, GenerativeModel, Sampled
from genbench.nn.random import per_sample_generators

SHAPES = {"digits": ((1, 8, 8), 17), "toy": ((2, 1, 1), 64)}
CASES = [(m, s) for m in MODELS for s in SHAPES]


def build(model: str, shape_name: str, tmp_path) -> GenerativeModel:
    cfg = compose_cfg("train", [f"model={model}"], tmp_path)
    shape, levels = SHAPES[shape_name]
    torch.manual_seed(0)
    return instantiate(cfg.model, shape=shape, levels=levels)


def batch(shape_name: str, n: int = 6) -> torch.Tensor:
    shape, levels = SHAPES[shape_name]
    return torch.randint(0, levels, (n, *shape), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model,shape", CASES)
def test_declares_family_likelihood_and_phases(model, shape, tmp_path):
    m = build(model, shape, tmp_path)
    assert isinstance(m, GenerativeModel)
    assert m.family in FAMILIES and m.likelihood in LIKELIHOODS
    names = [p.name for p in m.phases]
    assert names and len(set(names)) == len(names) and all(p.repeat >= 1 for p in m.phases)


@pytest.mark.parametrize("model,shape", CASES)
def test_losses_are_finite_and_train_every_phase_parameter(model, shape, tmp_path):
    m = build(model, shape, tmp_path).train()
    x = batch(shape)
    for phase in m.phases:
        m.zero_grad(set_to_none=True)
        terms = m.training_losses(x, phase.name)
        assert "loss" in terms
        for k, v in terms.items():
            assert v.shape == (x.shape[0],), f"{model}: term {k} has shape {tuple(v.shape)}"
            assert torch.isfinite(v).all(), f"{model}: term {k} is not finite"
        terms["loss"].mean().backward()
        params = [p for p in m.parameters_for(phase.name) if p.requires_grad]
        assert params, f"{model}: phase {phase.name} trains no parameters"
        missing = sum(p.grad is None for p in params)
        assert missing == 0, f"{model}: {missing} parameters of phase {phase.name} got no grad"


@pytest.mark.parametrize("model,shape", CASES)
def test_sample_shape_range_and_per_sample_seeding(model, shape, tmp_path):
    m = build(model, shape, tmp_path)
    m.training_losses(batch(shape), m.phases[-1].name)  # data-dependent init, if any
    m.eval()
    (c, h, w), levels = SHAPES[shape]
    with torch.inference_mode():
        a = m.sample(3, generator=per_sample_generators(7, 0, 3)).x
        b = m.sample(3, generator=per_sample_generators(7, 0, 3)).x
        last = m.sample(1, generator=per_sample_generators(7, 2, 1)).x
    assert a.shape == (3, c, h, w) and a.dtype == torch.int64
    assert int(a.min()) >= 0 and int(a.max()) < levels
    assert torch.equal(a, b), "same generators must give the same samples"
    agree = (a[2:] == last).float().mean().item()
    assert agree >= 0.95, f"sample 2 depends on the batch size ({agree:.2f} of sub-pixels agree)"


def _plain_state(m: GenerativeModel) -> dict:
    """Every attribute of every submodule that is not a parameter, buffer or submodule."""
    return {(name, k): v for name, mod in m.named_modules() for k, v in vars(mod).items()
            if not k.startswith("_")}


@pytest.mark.parametrize("model,shape", CASES)
def test_sample_returns_its_cost_per_sample_and_leaves_no_state(model, shape, tmp_path):
    """``sample`` returns Sampled(x, nfe): one whole, positive count per sample, the same for a
    sample whatever batch it is drawn in; the call changes no attribute, parameter or buffer."""
    m = build(model, shape, tmp_path)
    m.training_losses(batch(shape), m.phases[-1].name)
    m.eval()
    before, weights = _plain_state(m), copy.deepcopy(m.state_dict())
    with torch.inference_mode():
        out = m.sample(3, generator=per_sample_generators(7, 0, 3))
        last = m.sample(1, generator=per_sample_generators(7, 2, 1))
    assert isinstance(out, Sampled) and isinstance(last, Sampled)
    assert out.nfe.shape == (3,) and out.nfe.dtype == torch.float64
    assert bool((out.nfe >= 1).all()) and torch.equal(out.nfe, out.nfe.round()), out.nfe
    assert float(last.nfe[0]) == float(out.nfe[2]), "a sample's cost depends on its batch"
    assert _plain_state(m) == before, "sample() left state behind in attributes"
    for k, v in m.state_dict().items():
        assert torch.equal(v, weights[k]), f"sample() changed {k}"


@pytest.mark.parametrize("model,shape", CASES)
def test_nll_is_nonnegative_finite_nats_or_refused(model, shape, tmp_path):
    m = build(model, shape, tmp_path)
    x = batch(shape, 4)
    m.training_losses(x, m.phases[-1].name)
    m.eval()
    if m.likelihood == "none":
        with pytest.raises(NotImplementedError):
            m.nll(x)
        return
    torch.manual_seed(0)
    with torch.inference_mode():
        nll = m.nll(x)
    assert nll.shape == (4,) and torch.isfinite(nll).all() and (nll >= 0).all()
    # a state-dict round trip (and a deepcopy, as EMA makes) gives the same numbers
    clone = build(model, shape, tmp_path)
    clone.load_state_dict(m.state_dict())
    clone.eval()
    for other in (clone, copy.deepcopy(m)):
        torch.manual_seed(0)
        with torch.inference_mode():
            torch.testing.assert_close(other.nll(x), nll)


@pytest.mark.parametrize("model", MODELS)
def test_unknown_sampler_option_is_refused(model, tmp_path):
    m = build(model, "toy", tmp_path).eval()
    m.training_losses(batch("toy"), m.phases[-1].name)
    with pytest.raises(ValueError, match="not_an_option"), torch.inference_mode():
        m.sample(2, not_an_option=1)
