"""Class conditioning of DDPM, EDM and flow matching: the label embedding and its dropout,
classifier-free guidance checked against (1 + w) · cond - w · uncond computed by hand, its NFE,
labels that follow the rows of the adaptive solvers, unconditional models unchanged (parameters
and seeded numbers recorded before conditioning existed), and short trainings on toy moons whose
samples the toy's exact posterior classifies."""

from __future__ import annotations

import pytest
import torch

from genbench.data.toy2d import toy
from genbench.models.diffusion.ddpm import DDPM
from genbench.models.diffusion.edm import EDM
from genbench.models.diffusion.samplers import ddim_sample, edm_sample, karras_sigmas
from genbench.models.flows.flow_matching import FlowMatching, ode_sample
from genbench.models.options import OptionError
from genbench.nn.random import per_sample_generators, randn

TOY = {"mlp_hidden": 16, "mlp_blocks": 1}
IMG = {"ch": 8, "ch_mult": (1, 2), "attn_resolutions": (4,), "norm_groups": 4}
#: class, constructor arguments, a cheap sampler, cheap likelihood options
CASES = {
    "ddpm": (DDPM, {"timesteps": 20}, {"name": "ddim", "steps": 5}, {}),
    "edm": (EDM, {}, {"steps": 3}, {"solver": "heun", "steps": 6, "probes": 0}),
    "flow_matching": (FlowMatching, {}, {"steps": 3}, {"solver": "heun", "steps": 6}),
}
#: every sampler of each model, at a few steps
SAMPLERS = {
    "ddpm": [
        {"name": "ancestral"},
        {"name": "ddim", "steps": 4},
        {"name": "ode", "solver": "heun", "steps": 3},
        {"name": "dpmpp", "steps": 3},
        {"name": "unipc", "steps": 3},
    ],
    "edm": [{"name": n, "steps": 3} for n in ("heun", "euler", "stochastic", "dpmpp", "unipc")],
    "flow_matching": [
        {"name": "ode", "solver": "euler", "steps": 3},
        {"name": "ode", "solver": "heun", "steps": 3},
        {"name": "dpmpp", "steps": 3},
        {"name": "unipc", "steps": 3},
    ],
}
X = torch.tensor([[10, 50], [32, 31], [60, 3]]).reshape(3, 2, 1, 1)
#: the unconditional toy models' state_dict keys, samples, NLL and training loss, recorded with
#: the code before conditioning existed (commit 3a96cec), with the setup of :func:`fingerprint`
KEYS = sorted(
    f"net.{k}"
    for k in (
        "fc1.0.bias fc1.0.weight fc2.0.bias fc2.0.weight inp.bias inp.weight out.bias out.weight "
        "temb.dense0.bias temb.dense0.weight temb.dense1.bias temb.dense1.weight "
        "temb_proj.0.bias temb_proj.0.weight"
    ).split()
)
BEFORE = {
    "ddpm": (
        [25, 33, 42, 0, 63, 30],
        [16.459912, 9.732347, 22.409153],
        [0.297567, 1.628936, 1.440021],
    ),
    "edm": ([35, 26, 63, 0, 63, 42], [6.97846, 6.170357, 5.952055], [1.975214, 0.302822, 0.595874]),
    "flow_matching": (
        [23, 35, 36, 6, 60, 27],
        [8.956704, 8.94435, 8.871998],
        [5.202973, 0.750541, 0.732556],
    ),
}


def build(name, num_classes=0, shape=(2, 1, 1), levels=64, **kw):
    """A small model with its zero-initialized layers perturbed (seeded), in eval mode."""
    cls, kwargs, _, _ = CASES[name]
    torch.manual_seed(0)
    net = TOY if shape[1] == 1 else IMG
    m = cls(shape, levels, num_classes=num_classes, **net, **{**kwargs, **kw})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m.eval()


def likelihood(m, name, x, **kw):
    _, _, _, opts = CASES[name]
    gens = per_sample_generators(3, 0, len(x))
    if name == "ddpm":
        return m.nll(x, generator=gens, **kw)
    return m.ode_likelihood(x, generator=gens, **opts, **kw).nll


@pytest.mark.parametrize("name", CASES)
def test_unconditional_model_is_unchanged(name):
    m = build(name)
    assert not m.conditional and sorted(m.state_dict()) == KEYS
    samples, nll, loss = BEFORE[name]
    with torch.no_grad():
        got = m.sample(3, generator=per_sample_generators(2, 0, 3), **CASES[name][2])
        assert got.x.flatten().tolist() == samples
        torch.testing.assert_close(likelihood(m, name, X).tolist(), nll, rtol=1e-5, atol=1e-5)
    m.train()
    torch.manual_seed(4)
    got_loss = m.training_losses(X, "main")["loss"].tolist()
    torch.testing.assert_close(got_loss, loss, rtol=1e-5, atol=1e-5)
    assert "guidance" not in m.resolve_sampler(**CASES[name][2])  # protocols as before


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("shape,width", [((2, 1, 1), 16), ((1, 8, 8), 32)])
def test_conditional_model_adds_only_the_label_table(name, shape, width):
    plain, cond = build(name, shape=shape, levels=17), build(name, 3, shape=shape, levels=17)
    extra = set(cond.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(cond.state_dict()) and extra == {"net.label.table.weight"}
    assert cond.state_dict()["net.label.table.weight"].shape == (4, width)  # C + the null label


@pytest.mark.parametrize("name", CASES)
def test_label_changes_samples_and_nll(name):
    m = build(name, 2)
    zeros, ones = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)
    with torch.no_grad():
        for opts in SAMPLERS[name]:
            a = m.sample(8, y=zeros, generator=per_sample_generators(2, 0, 8), **opts)
            b = m.sample(8, y=ones, generator=per_sample_generators(2, 0, 8), **opts)
            again = m.sample(8, y=zeros, generator=per_sample_generators(2, 0, 8), **opts)
            assert torch.equal(a.x, again.x) and not torch.equal(a.x, b.x), opts
        zeros, ones = zeros[:3], ones[:3]
        n0, n1 = likelihood(m, name, X, y=zeros), likelihood(m, name, X, y=ones)
    assert n0.shape == (3,) and torch.isfinite(n0).all() and (n0 - n1).abs().min() > 1e-4
    with pytest.raises(ValueError, match="labels y are required"):
        m.sample(2)
    with pytest.raises(ValueError, match="unconditional"):
        build(name).nll(X, y=zeros)


def by_hand(m, x, t, y, w):
    """(1 + w) · F(x, t, y) - w · F(x, t, ∅) from two separate calls of the network F."""
    cond = m.net(x, t, y)
    uncond = m.net(x, t, torch.full_like(y, m.num_classes))
    return (1 + w) * cond - w * uncond, cond


@pytest.mark.parametrize("w", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("shape", [(2, 1, 1), (1, 8, 8)])
def test_guided_prediction_is_the_mixture_computed_by_hand(shape, w):
    """The one function each model's samplers call, at guidance w: DDPM's prediction (with
    learned variances: guided prediction, conditional variances), EDM's D(x; σ) and the flow's
    velocity; w = 0 is exactly the conditional output."""
    y = torch.tensor([0, 2, 1])
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3.0, 250.0, 900.0])
    with torch.no_grad():
        for kw in ({}, {"learn_sigma": True}):
            m = build("ddpm", 3, shape=shape, levels=17, **kw)
            mix, cond = by_hand(m, x, t, y, w)
            c = shape[0]
            got = m._net(x, t, y, guidance=w)
            torch.testing.assert_close(got[:, :c], mix[:, :c], rtol=1e-5, atol=1e-5)
            # learned variances: the conditional pass's
            torch.testing.assert_close(got[:, c:], cond[:, c:], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(m._pred_net(x, t, y, w), mix[:, :c], rtol=1e-5, atol=1e-5)
            if w == 0:
                assert torch.equal(m._pred_net(x, t, y, w), cond[:, :c])

        m = build("edm", 3, shape=shape, levels=17)
        sigma = torch.tensor([0.01, 0.7, 20.0], dtype=torch.float64)
        c_skip, c_out, c_in, c_noise = (k.float().view(-1, 1, 1, 1) for k in m.coefficients(sigma))
        mix, cond = by_hand(m, c_in * x, c_noise.flatten(), y, w)
        want = c_skip * x + c_out * mix
        torch.testing.assert_close(m.denoise(x, sigma, y, w), want, rtol=1e-5, atol=1e-5)

        m = build("flow_matching", 3, shape=shape, levels=17)
        tt = torch.tensor([0.01, 0.5, 0.97], dtype=torch.float64)
        mix, cond = by_hand(m, x, (tt * 1000).float(), y, w)
        torch.testing.assert_close(m.velocity(x, tt, y, w), mix, rtol=1e-5, atol=1e-5)
        if w == 0:
            assert torch.equal(m.velocity(x, tt, y, w), cond)


def test_samplers_step_with_the_guided_prediction():
    """Sampling with guidance equals the plain sampler run on the hand-made guided network."""
    y, w = torch.tensor([1, 0, 1]), 2.0
    gen = per_sample_generators(7, 0, 3)
    with torch.no_grad():
        m = build("ddpm", 2)
        x_t = randn((3, 2, 1, 1), generator=per_sample_generators(7, 0, 3))
        x0, _ = ddim_sample(lambda x, t: by_hand(m, x, t, y, w)[0], m.process, x_t, steps=4)
        got = m.sample(3, y=y, generator=gen, name="ddim", steps=4, eta=0.0, guidance=w)
        assert torch.equal(got.x, m.to_levels(x0))

        m = build("edm", 2)
        x_t = m.sigma_max * randn((3, 2, 1, 1), generator=per_sample_generators(7, 0, 3))

        def denoise(x, s):
            c_skip, c_out, c_in, c_noise = (k.float().view(-1, 1, 1, 1) for k in m.coefficients(s))
            return c_skip * x + c_out * by_hand(m, c_in * x, c_noise.flatten(), y, w)[0]

        sigmas = karras_sigmas(m.sigma_min, m.sigma_max, 3)
        x0, _ = edm_sample(denoise, x_t, sigmas, second_order=False)
        got = m.sample(
            3, y=y, generator=per_sample_generators(7, 0, 3), name="euler", steps=3, guidance=w
        )
        assert torch.equal(got.x, m.to_levels(x0))

        m = build("flow_matching", 2)
        x1 = randn((3, 2, 1, 1), generator=per_sample_generators(7, 0, 3))
        v = lambda x, t: by_hand(m, x, (t * 1000).float(), y, w)[0]  # noqa: E731
        x0, _ = ode_sample(v, x1, solver="euler", steps=3)
        got = m.sample(
            3, y=y, generator=per_sample_generators(7, 0, 3), solver="euler", steps=3, guidance=w
        )
        assert torch.equal(got.x, m.to_levels(x0))


@pytest.mark.parametrize("name", CASES)
def test_guidance_doubles_the_nfe_in_one_batched_pass_per_step(name):
    m = build(name, 2)
    rows: list[int] = []
    m.net.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    y = torch.tensor([0, 1, 1])
    with torch.no_grad():
        for opts in SAMPLERS[name]:
            rows.clear()
            plain = m.sample(3, y=y, generator=per_sample_generators(2, 0, 3), **opts)
            calls, plain_rows = len(rows), set(rows)
            rows.clear()
            guided = m.sample(
                3, y=y, generator=per_sample_generators(2, 0, 3), guidance=1.5, **opts
            )
            assert torch.equal(guided.nfe, 2 * plain.nfe), opts
            assert plain.nfe[0] == calls and len(rows) == calls, opts  # as many passes ...
            assert plain_rows == {3} and set(rows) == {6}, opts  # ... of twice the rows
            assert m.resolve_sampler(guidance=1.5, **opts)["guidance"] == 1.5


@pytest.mark.parametrize("name", CASES)
def test_guidance_needs_a_conditional_model(name):
    cls, kwargs, opts, _ = CASES[name]
    plain = build(name)
    for call in (plain.resolve_sampler, lambda **o: plain.sample(2, **o)):
        with pytest.raises(
            OptionError, match=r"sampler\.guidance=1\.0 needs a class-conditional"
        ) as err:
            call(guidance=1.0, **opts)
        assert err.value.key == "sampler.guidance"
    assert plain.sample(2, guidance=0, **opts).x.shape == (2, 2, 1, 1)  # 0: plain sampling
    with pytest.raises(OptionError, match=r"sampler\.guidance"):
        cls.validate_sampler({"guidance": 2.0}, {**kwargs, "num_classes": 0})
    with pytest.raises(OptionError, match=r"sampler\.guidance"):
        cls.validate_sampler({"guidance": 2.0}, {**kwargs, "conditional": False})
    cls.validate_sampler({"guidance": 2.0}, {**kwargs, "conditional": True})
    cls.validate_sampler({"guidance": 2.0}, kwargs)  # conditional or not is unknown here
    with pytest.raises(OptionError, match=r"sampler\.guidance=-1"):
        cls.validate_sampler({"guidance": -1}, kwargs)
    with pytest.raises(OptionError, match=r"sampler\.guidance=-0\.5"):
        build(name, 2).sample(2, y=torch.tensor([0, 1]), guidance=-0.5)
    with pytest.raises(OptionError, match=r"model\.p_uncond=1"):
        cls((2, 1, 1), 64, num_classes=2, p_uncond=1, **TOY)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("p", [0.1, 0.3])
def test_label_dropout_rate(name, p):
    """In training mode a label becomes the null label with probability p_uncond (binomial
    std 0.005-0.007 at 5000 labels); never in eval mode."""
    m = build(name, 2, p_uncond=p).train()
    seen: list[torch.Tensor] = []
    m.net.label.table.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    x = X.repeat(1700, 1, 1, 1)[:5000]
    y = torch.arange(5000) % 2
    torch.manual_seed(0)
    m.training_losses(x, "main", y=y)
    (labels,) = seen
    null = labels == 2
    assert abs(null.float().mean().item() - p) < 0.025
    assert torch.equal(labels[~null], y[~null])
    seen.clear()
    m.eval()
    with torch.no_grad():
        m.training_losses(x[:50], "main", y=y[:50])
    assert torch.equal(seen[0], y[:50])


@pytest.mark.parametrize(
    "name,opts",
    [
        ("ddpm", {"name": "ode", "solver": "rk45", "rtol": 1e-3, "atol": 1e-3}),
        ("flow_matching", {"solver": "rk45", "rtol": 1e-3, "atol": 1e-3}),
    ],
)
def test_adaptive_solver_gives_each_row_its_own_label(name, opts):
    """rk45 evaluates only the rows still integrating: a row's sample and NLL do not depend on
    the other rows' labels or on the batch."""
    m = build(name, 3)
    y = torch.tensor([0, 2, 1])
    with torch.no_grad():
        both = m.sample(3, y=y, generator=per_sample_generators(4, 0, 3), guidance=1.0, **opts)
        alone = m.sample(
            1, y=y[1:2], generator=per_sample_generators(4, 1, 1), guidance=1.0, **opts
        )
        assert torch.equal(both.x[1], alone.x[0]) and both.nfe[1] == alone.nfe[0]
        kw = {"solver": "rk45", "rtol": 1e-4, "atol": 1e-4}
        full = m.ode_likelihood(X, y=y, generator=per_sample_generators(5, 0, 3), **kw).nll
        one = m.ode_likelihood(X[2:], y=y[2:], generator=per_sample_generators(5, 2, 1), **kw).nll
    torch.testing.assert_close(full[2:], one, rtol=1e-4, atol=0)  # batch-size rounding only


def test_ddpm_bound_terms_and_ode_estimator_take_labels():
    m = build("ddpm", 2)
    zeros, ones = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    with torch.no_grad():
        for fn in (m.bound_terms, m.vlb_terms):
            a = fn(X, y=zeros, generator=per_sample_generators(3, 0, 3))
            b = fn(X, y=ones, generator=per_sample_generators(3, 0, 3))
            assert not torch.equal(a["decoder"], b["decoder"])
        full = m.vlb_terms(X, y=zeros, generator=per_sample_generators(3, 0, 3))
        bound = m.bound_terms(X, y=zeros, generator=per_sample_generators(3, 0, 3))
        torch.testing.assert_close(bound["decoder"], full["decoder"])  # the bound's own L_0
        m.vlb_max_batch = 4  # each timestep's rows split across calls: labels follow them
        split = m.vlb_terms(X, y=torch.tensor([0, 1, 0]), generator=per_sample_generators(3, 0, 3))
        m.vlb_max_batch = 1024
        whole = m.vlb_terms(X, y=torch.tensor([0, 1, 0]), generator=per_sample_generators(3, 0, 3))
        torch.testing.assert_close(split["vlb"], whole["vlb"], rtol=1e-6, atol=1e-6)
        (estimator,) = m.likelihood_estimators().values()
        kw = {"solver": "heun", "steps": 4, "probes": 0}
        e0 = estimator.fn(X, y=zeros, generator=per_sample_generators(3, 0, 3), **kw)
        e1 = estimator.fn(X, y=ones, generator=per_sample_generators(3, 0, 3), **kw)
    assert (e0.nll - e1.nll).abs().max() > 1e-3 and torch.equal(e0.nfe, e1.nfe)


@pytest.fixture(scope="module")
def moons():
    """toy_moons on a 32 x 32 grid (2 classes; labels drawn from the exact posterior)."""
    return toy("moons", levels=32, n_train=4000, n_val=10, n_test=10, seed=0)


def sample_accuracy(m, data, w, n=1000):
    """Share of n samples (half per class) whose Bayes class under the toy's exact posterior is
    the label they were drawn for (samples off the support count as wrong)."""
    y = torch.arange(n) % 2
    with torch.no_grad():
        x = m.sample(n, y=y, generator=torch.Generator().manual_seed(2), guidance=w).x
    posterior = data.density.class_posterior(x).nan_to_num(0.0)
    return (posterior.argmax(1) == y).float().mean().item()


@pytest.mark.parametrize(
    "name",
    [
        "flow_matching",
        pytest.param("ddpm", marks=pytest.mark.slow),
        pytest.param("edm", marks=pytest.mark.slow),
    ],
)
def test_short_training_on_moons_draws_the_asked_class(name, moons):
    """600 Adam steps on toy_moons: the exact posterior gives the asked class to >= 90 % of
    the samples without guidance (measured: ddpm 0.941, edm 0.989, flow matching 0.943) and
    guidance w = 2 does not lower it (measured: 0.998-1.000)."""
    cls, kwargs, _, _ = CASES[name]
    kwargs = {"timesteps": 100, "sampler": {"name": "ddim", "steps": 20}} if name == "ddpm" else {}
    torch.manual_seed(0)
    m = cls((2, 1, 1), 32, num_classes=2, mlp_hidden=64, mlp_blocks=2, dropout=0.0, **kwargs)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(600):
        idx = torch.randint(0, len(moons.train), (256,), generator=g)
        y = moons.train_labels[idx]
        loss = m.training_losses(moons.train[idx], "main", y=y)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    plain, guided = sample_accuracy(m, moons, 0.0), sample_accuracy(m, moons, 2.0)
    assert plain >= 0.9 and guided >= plain, (plain, guided)
