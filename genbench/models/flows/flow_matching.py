"""Flow matching (Lipman et al. 2023): a continuous normalizing flow trained by regression.

Time convention: **t = 0 is data, t = 1 is noise**. The conditional path is the linear one
(Lipman et al.'s optimal-transport path with σ_min = 0, the rectified flow of Liu et al. 2023),

    x_t = (1 - t) x_0 + t ε,   ε ~ N(0, I),   u = dx_t/dt = ε - x_0,

with x_0 the data scaled to ``[-1, 1]`` (level k ↦ 2k/(K-1) - 1, as for DDPM). The network
v_θ(x_t, t) regresses u: the loss of an example is mean_dims (v_θ(x_t, t) - (ε - x_0))² with
t ~ U(0, 1) or, with ``time_dist=logit_normal``, t = sigmoid(n), n ~ N(0, 1) (Esser et al. 2024).
Its minimizer is the marginal velocity v(x, t) = E[ε - x_0 | x_t = x], whose ODE dx/dt = v carries
the data distribution at t = 0 to N(0, I) at t = 1. Sampling integrates it from t = 1 to 0.

Network time: the U-Net / MLP of :mod:`genbench.models.diffusion.unet` embeds time with sinusoids
of frequencies 1 ... 10⁻⁴ per unit, made for DDPM's step indices 0..999; the network gets
``NET_TIME_SCALE`` · t = 1000 t, so t ∈ [0, 1] spans the same range.

VE coordinates (for solvers written in σ): y = x_t / (1 - t) = x_0 + σ ε with σ = t / (1 - t);
the denoiser is x̂_0 = x_t - t v(x_t, t) (:meth:`FlowMatching.denoise`).

Samplers (``sampler.name``): ``ode`` (``solver`` euler | heun | rk45, ``steps``, ``rtol``,
``atol``) in t, or the multistep solvers ``dpmpp`` (DPM-Solver++(2M)) and ``unipc`` (``order``
1..3) of :mod:`genbench.models.diffusion.multistep` in the VE coordinates, ``steps`` network calls
on a ``logsnr`` or ``karras`` grid from σ = 999 (t = 0.999) to 0.002, then to 0.

Likelihood (``likelihood = "ode"``): the gaussian-dequantization ODE bound of
:mod:`.cnf_likelihood`, stopped at σ_0 = max(Δ/4, 10⁻⁴), exact trace when D ≤ 16 by default.

Class-conditional (``num_classes > 0``, ``model.conditional=true``): the label's embedding is
added to the network's time embedding, labels are dropped to the null label with probability
``p_uncond`` in training, and every sampler takes ``guidance`` (w >= 0, default 0):
classifier-free guidance of the velocity, hence of x̂_0 and ε alike
(:mod:`genbench.models.diffusion.guidance`), applied in :meth:`FlowMatching.velocity`, which
every sampler calls; w > 0 costs 2 network evaluations per call (counted in the NFE). ``nll``
and ``ode`` take the labels ``y`` and bound -log P(x | y) with the conditional field (no
guidance).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from genbench.models.base import (
    GenerativeModel,
    LikelihoodEstimator,
    NllEstimate,
    Sampled,
    check_sampler_options,
)
from genbench.models.diffusion.guidance import OPTION as GUIDANCE
from genbench.models.diffusion.guidance import (
    check_guidance,
    check_p_uncond,
    conditional_of,
    guided_nfe,
    guided_output,
)
from genbench.models.diffusion.multistep import dpmpp_2m, logsnr_sigmas, unipc
from genbench.models.diffusion.samplers import (
    Solver,
    integrate_fixed,
    integrate_rk45,
    karras_sigmas,
)
from genbench.models.diffusion.scaling import SignedUnitLevels
from genbench.models.diffusion.unet import NetKind, build_denoiser
from genbench.models.flows.cnf_likelihood import SOLVERS, Velocity, ode_nll
from genbench.models.options import bad_option, option_choice, option_number
from genbench.nn.random import Generator, randn

TimeDist = Literal["uniform", "logit_normal"]
TIME_DISTS: tuple[str, ...] = ("uniform", "logit_normal")
SAMPLER_NAMES: tuple[str, ...] = ("ode", "dpmpp", "unipc")
SAMPLER_OPTIONS: tuple[str, ...] = ("solver", "steps", "rtol", "atol")
#: options of the multistep solvers (:mod:`genbench.models.diffusion.multistep`)
MULTISTEP_OPTIONS: dict[str, tuple[str, ...]] = {
    "dpmpp": ("steps", "grid"),
    "unipc": ("steps", "order", "grid"),
}
MULTISTEP_DEFAULTS: dict[str, Any] = {"steps": 20, "order": 2, "grid": "logsnr"}
#: noise-to-signal range σ = t / (1 - t) of the multistep solvers: from t = 0.999 (x_t taken to
#: be the prior draw x_1, off by (1 - t)(x_0 - ε)) down to σ = 0.002 (then a last step to 0)
MULTISTEP_SIGMA_MAX, MULTISTEP_SIGMA_MIN = 999.0, 0.002
#: options of the ``ode`` likelihood (``model.nll_options`` and ``eval.estimator_options.ode``)
ODE_OPTIONS: tuple[str, ...] = ("solver", "steps", "rtol", "atol", "probes")
DEFAULT_SAMPLER: dict[str, Any] = {"name": "ode", "solver": "heun", "steps": 20}
DEFAULT_NLL: dict[str, Any] = {"solver": "rk45", "rtol": 1e-5, "atol": 1e-5, "probes": None}
#: network time = NET_TIME_SCALE · t (the embedding was made for DDPM's indices 0..999)
NET_TIME_SCALE = 1000.0
#: data sizes up to which the likelihood's trace is exact by default
EXACT_TRACE_MAX_DIMS = 16


def sample_time(n: int, dist: TimeDist, *, device: torch.device | str | None = None) -> Tensor:
    """``[n]`` float64 training times (global RNG): U[0, 1) or sigmoid(N(0, 1)) (logit-normal,
    mean 0, std 1; Esser et al. 2024)."""
    if dist == "uniform":
        return torch.rand(n, dtype=torch.float64, device=device)
    if dist == "logit_normal":
        return torch.sigmoid(torch.randn(n, dtype=torch.float64, device=device))
    raise ValueError(f"time_dist must be one of {TIME_DISTS}, got {dist!r}")


def flow_matching_loss(velocity: Velocity, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """``[N]``: mean over dims of (v(x_t, t) - (ε - x_0))² with x_t = (1 - t) x_0 + t ε, for data
    x_0 and noise ε ``[N, C, H, W]`` and times t ``[N]``."""
    tb = t.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    x_t = (1 - tb) * x0 + tb * eps
    return (velocity(x_t, t) - (eps - x0)).square().flatten(1).mean(1)


def ode_sample(
    velocity: Velocity,
    x1: Tensor,
    *,
    solver: Solver = "heun",
    steps: int = 20,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Integrate dx/dt = v from noise x_1 ``[N, ...]`` at t = 1 to t = 0. ``euler``/``heun``:
    ``steps`` uniform steps (NFE ``steps`` / ``2 steps``; Heun's last corrector evaluates v at
    t = 0); ``rk45``: adaptive per row (``rtol``/``atol``). ``labels``: ``[N]`` class labels of
    a conditional field, called ``velocity(x, t, labels)`` with its rows' labels. Returns x_0
    (data scale, unclipped) and the velocity evaluations per row ``[N]`` float64."""
    shape = x1.shape

    def drift(t: Tensor, state: Tensor, rows: Tensor) -> Tensor:
        """v ``[n, D]`` at flat states ``[n, D]`` and times ``t`` ``[n]`` of the rows ``rows``."""
        args = () if labels is None else (labels[rows],)
        return velocity(state.view(-1, *shape[1:]), t, *args).flatten(1)

    if solver == "rk45":
        x, nfe = integrate_rk45(drift, x1.flatten(1), 1.0, 0.0, rtol=rtol, atol=atol)
    elif solver in ("euler", "heun"):
        grid = [1.0 - i / int(steps) for i in range(int(steps) + 1)]
        x, n = integrate_fixed(drift, x1.flatten(1), grid, solver)
        nfe = torch.full((x.shape[0],), n, dtype=torch.float64, device=x.device)
    else:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return x.view(shape), nfe.double()


def check_options(options: Mapping[str, Any], prefix: str) -> None:
    """Values of sampler / likelihood options under config key ``prefix`` (``None`` = unset):
    ``solver`` euler | heun | rk45, ``steps`` an integer >= 1, ``rtol``/``atol`` > 0, ``probes``
    an integer >= 0, ``guidance`` >= 0."""
    checks = {
        "solver": lambda k, v: option_choice(k, v, SOLVERS),
        "steps": lambda k, v: option_number(k, v, low=1, integer=True),
        "rtol": lambda k, v: option_number(k, v, low=0, low_open=True),
        "atol": lambda k, v: option_number(k, v, low=0, low_open=True),
        "probes": lambda k, v: option_number(k, v, low=0, integer=True),
        "order": lambda k, v: option_number(k, v, low=1, high=3, integer=True),
        "grid": lambda k, v: option_choice(k, v, ("logsnr", "karras")),
        GUIDANCE: lambda k, v: option_number(k, v, low=0),
    }
    for name, value in options.items():
        if value is not None and name in checks:
            checks[name](f"{prefix}.{name}", value)


def _ode_options(options: Any, key: str) -> dict[str, Any]:  # noqa: ANN401
    """Likelihood options over ``DEFAULT_NLL``, checked under config key ``key``."""
    if options is not None and not isinstance(options, Mapping):
        raise bad_option(key, options, "a mapping of options such as {solver: rk45}")
    options = dict(options or {})
    check_sampler_options(options, ODE_OPTIONS, "the flow-matching ODE likelihood", prefix=key)
    check_options(options, key)
    return {**DEFAULT_NLL, **{k: v for k, v in options.items() if v is not None}}


class FlowMatching(SignedUnitLevels, GenerativeModel):
    """Conditional flow matching on the linear path (module docstring).

    Args:
        shape, levels: data shape ``(C, H, W)`` and levels K (from the runner).
        net, ch, ch_mult, num_res_blocks, attn_resolutions, dropout, norm_groups, mlp_hidden,
            mlp_blocks: the velocity network, built as DDPM's denoiser
            (:func:`~genbench.models.diffusion.unet.build_denoiser`; MLP for H = W = 1).
        time_dist: training times, ``uniform`` or ``logit_normal``.
        nll_seed: seed of the likelihood's noise when no generator is given.
        nll_options: options of the ODE likelihood behind ``nll`` (``solver``, ``steps``,
            ``rtol``, ``atol``, ``probes``; ``probes: null`` = exact trace when D ≤ 16, else 1).
        sampler: default sampler options: ``name: ode``, ``solver`` (euler | heun | rk45),
            ``steps`` (fixed-step solvers), ``rtol``/``atol`` (rk45), ``guidance``; options
            given to ``sample`` are merged over them.
        num_classes: classes of a conditional model (from the runner with
            ``model.conditional=true``; 0 = unconditional, no labels, no extra parameters).
        p_uncond: label dropout of a conditional model (probability of the null label when
            training; classifier-free guidance needs it > 0).
    """

    family = "flow"
    likelihood = "ode"
    conditional_support = True

    def __init__(
        self,
        shape: Sequence[int],
        levels: int,
        *,
        net: NetKind = "auto",
        ch: int = 16,
        ch_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        attn_resolutions: Sequence[int] = (4,),
        dropout: float = 0.1,
        norm_groups: int = 8,
        mlp_hidden: int = 256,
        mlp_blocks: int = 3,
        time_dist: TimeDist = "uniform",
        nll_seed: int = 0,
        nll_options: Mapping[str, Any] | None = None,
        sampler: Mapping[str, Any] | None = None,
        num_classes: int = 0,
        p_uncond: float = 0.1,
    ) -> None:
        super().__init__(shape, levels, num_classes)
        check_p_uncond(p_uncond)
        self.net = build_denoiser(
            self.shape,
            net,
            ch=ch,
            ch_mult=list(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=list(attn_resolutions),
            dropout=dropout,
            norm_groups=norm_groups,
            mlp_hidden=mlp_hidden,
            mlp_blocks=mlp_blocks,
            num_classes=self.num_classes,
            p_uncond=p_uncond,
        )
        self.time_dist: TimeDist = option_choice("model.time_dist", time_dist, TIME_DISTS)
        self.nll_seed = int(nll_seed)
        self.nll_options = _ode_options(nll_options, "model.nll_options")
        self.sampler_defaults: dict[str, Any] = dict(sampler or DEFAULT_SAMPLER)
        self.resolve_sampler()  # validate the defaults

    # ---- network ----------------------------------------------------------------------

    def velocity(
        self, x_t: Tensor, t: Tensor, labels: Tensor | None = None, guidance: float = 0.0
    ) -> Tensor:
        """v_θ(x_t, t) ``[N, C, H, W]`` at x_t ``[N, C, H, W]`` and times t ``[N]`` in [0, 1]; the
        network gets float32 times 1000 t (as DDPM's network times, whatever the precision).
        A conditional model takes the rows' ``labels`` ``[N]`` and guides v by ``guidance`` w:
        the one place every sampler's network evaluation goes through."""
        return guided_output(self.net, x_t, (t.double() * NET_TIME_SCALE).float(), labels, guidance)

    def denoise(
        self, y: Tensor, sigma: Tensor, labels: Tensor | None = None, guidance: float = 0.0
    ) -> Tensor:
        """x̂_0 ``[N, C, H, W]`` in VE coordinates: y = x_t / (1 - t) ``[N, C, H, W]`` at noise
        level σ = t / (1 - t) ``[N]``; x̂_0 = x_t - t v(x_t, t) with t = σ / (1 + σ) (``labels``
        and ``guidance`` as in :meth:`velocity`)."""
        t = sigma.double() / (1 + sigma.double())
        tb = t.to(y.dtype).reshape(-1, *([1] * (y.ndim - 1)))
        x_t = y * (1 - tb)
        v = self.velocity(x_t, t) if labels is None else self.velocity(x_t, t, labels, guidance)
        return x_t - tb * v

    # ---- training and likelihood ------------------------------------------------------
    def training_losses(
        self, x: Tensor, phase: str = "main", y: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"loss": [N]}``: mean_dims (v_θ(x_t, t) - (ε - x_0))², t from ``time_dist`` then
        ε ~ N(0, I), both from the global RNG; v given the labels ``y`` ``[N]`` of a
        conditional model (dropped to the null label with probability ``p_uncond``)."""
        labels = self.labels(y, x.shape[0], x.device)
        velocity = self.velocity
        if labels is not None:
            velocity = functools.partial(self.velocity, labels=labels)
        x0 = self.to_unit(x)
        t = sample_time(x0.shape[0], self.time_dist, device=x0.device)
        return {"loss": flow_matching_loss(velocity, x0, t, torch.randn_like(x0))}

    def ode_likelihood(
        self,
        x: Tensor,
        *,
        y: Tensor | None = None,
        generator: Generator = None,
        solver: Solver = "rk45",
        steps: int = 100,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        probes: int | None = None,
    ) -> NllEstimate:
        """The ODE bound (:func:`ode_nll`) of levels ``x`` ``[N, C, H, W]`` (given the labels
        ``y`` ``[N]`` of a conditional model): ``nll`` ``[N]`` nats, ``nfe`` ``[N]`` and
        settings. ``probes=None``: exact trace when D ≤ 16, else one Rademacher probe. Noise
        from ``generator`` (default one seeded ``nll_seed``)."""
        labels = self.labels(y, x.shape[0], x.device)
        opts = {"solver": solver, "steps": steps, "rtol": rtol, "atol": atol, "probes": probes}
        check_options(opts, "eval.estimator_options.ode")
        if probes is None:
            opts["probes"] = 0 if self.dims <= EXACT_TRACE_MAX_DIMS else 1
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.nll_seed)
        return ode_nll(
            self.velocity,
            x,
            self.levels,
            generator=generator,
            dtype=self._param().dtype,
            labels=labels,
            **opts,
        )

    def nll(self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None) -> Tensor:
        """``[N]`` nats: :meth:`ode_likelihood` with ``nll_options`` (labels ``y`` ``[N]`` of a
        conditional model: -log P(x | y))."""
        return self.ode_likelihood(x, y=y, generator=generator, **self.nll_options).nll

    def likelihood_estimators(self) -> dict[str, LikelihoodEstimator]:
        """``ode``: :meth:`ode_likelihood` with options from ``eval.estimator_options.ode``."""
        return {"ode": LikelihoodEstimator("estimate", self.ode_likelihood)}

    @classmethod
    def validate_estimator(
        cls, name: str, options: Mapping[str, Any], hparams: Mapping[str, Any], *, key: str
    ) -> None:
        """``ode``: options ``solver``, ``steps``, ``rtol``, ``atol``, ``probes``."""
        if name == "ode":
            _ode_options(options, key)

    # ---- sampling -----------------------------------------------------------------------
    @staticmethod
    def _merge_sampler(
        sampler: Mapping[str, Any], defaults: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """Options ``sampler`` over ``defaults`` (``None`` = unset), each checked, with ``name``;
        the options a solver does not use are dropped (``steps`` for rk45, tolerances for the
        fixed-step solvers); ``guidance`` is kept when given."""
        if defaults is not None and not isinstance(defaults, Mapping):
            raise bad_option("model.sampler", defaults, "a mapping of sampler options")
        merged: dict[str, Any] = {}
        default = (defaults or DEFAULT_SAMPLER).get("name") or "ode"
        for opts, prefix in ((defaults or DEFAULT_SAMPLER, "model.sampler"), (sampler, "sampler")):
            opts = {k: v for k, v in opts.items() if v is not None}
            name = opts.pop("name", default)
            option_choice(f"{prefix}.name", name, SAMPLER_NAMES)
            allowed = (*MULTISTEP_OPTIONS.get(name, SAMPLER_OPTIONS), GUIDANCE)
            check_sampler_options(
                opts, allowed, f"the flow-matching sampler {name!r}", prefix=prefix
            )
            check_options(opts, prefix)
            if prefix == "sampler" and name != default:  # another sampler: its own defaults
                merged = {}
            merged.update(opts)
        name = sampler.get("name") or default
        if name in MULTISTEP_OPTIONS:
            keys = MULTISTEP_OPTIONS[name]
            guidance = {GUIDANCE: merged[GUIDANCE]} if GUIDANCE in merged else {}
            return {
                "name": name,
                **{k: merged.get(k, MULTISTEP_DEFAULTS[k]) for k in keys},
                **guidance,
            }
        solver = merged.setdefault("solver", DEFAULT_SAMPLER["solver"])
        unused = ("steps",) if solver == "rk45" else ("rtol", "atol")
        used = {k: v for k, v in merged.items() if k not in unused}
        if solver != "rk45":
            used.setdefault("steps", DEFAULT_SAMPLER["steps"])
        return {"name": "ode", **used}

    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """The options of :class:`FlowMatching`'s ``sampler``, over ``hparams["sampler"]``."""
        opts = cls._merge_sampler(sampler, hparams.get("sampler"))
        check_guidance(opts.get(GUIDANCE), conditional_of(hparams))

    def resolve_sampler(self, **sampler: Any) -> dict[str, Any]:
        """The options ``sample(**sampler)`` uses, with ``name`` (recorded in protocols);
        ``guidance`` (default 0) only for a conditional model, an unconditional one refuses
        guidance != 0."""
        opts = self._merge_sampler(sampler, self.sampler_defaults)
        w = check_guidance(opts.pop(GUIDANCE, None), self.conditional)
        return {**opts, GUIDANCE: w} if self.conditional else opts

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """``[n, C, H, W]`` int64 levels from x_1 ~ N(0, I) (drawn from ``generator``, one row
        per generator when it is a sequence) through the ODE to t = 0, given the labels ``y``
        ``[n]`` of a conditional model (guided by ``sampler.guidance``). NFE per image:
        ``steps`` (euler, dpmpp, unipc), ``2 steps`` (heun) or what rk45 took for that image;
        twice that with guidance w > 0."""
        opts = self.resolve_sampler(**sampler)
        name, w = opts.pop("name"), opts.pop(GUIDANCE, 0.0)
        p = self._param()
        labels = self.labels(y, n, p.device)
        x1 = randn((n, *self.shape), generator=generator, device=p.device, dtype=p.dtype)
        velocity, denoise = self.velocity, self.denoise
        if labels is not None:
            velocity = functools.partial(self.velocity, guidance=w)  # labels travel with rows
            denoise = functools.partial(self.denoise, labels=labels, guidance=w)
        if name in MULTISTEP_OPTIONS:  # in VE coordinates y = x_t / (1 - t), σ = t / (1 - t)
            steps, lo, hi = int(opts["steps"]), MULTISTEP_SIGMA_MIN, MULTISTEP_SIGMA_MAX
            levels = logsnr_sigmas(lo, hi, steps) if opts["grid"] == "logsnr" else None
            grid = [*(levels or karras_sigmas(lo, hi, steps)), 0.0]
            y = x1 * (1 + hi)  # x_t / (1 - t) at t = hi / (1 + hi)
            if name == "dpmpp":
                x0, nfe = dpmpp_2m(denoise, y, grid)
            else:
                x0, nfe = unipc(denoise, y, grid, order=int(opts["order"]))
            return Sampled.constant(self.to_levels(x0), guided_nfe(nfe, w))
        x0, nfe = ode_sample(velocity, x1, labels=labels, **opts)
        return Sampled(self.to_levels(x0), guided_nfe(nfe, w))
