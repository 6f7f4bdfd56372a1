"""EDM (Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"): a preconditioned denoiser, its σ-distribution and loss weight, and samplers
on the ρ = 7 noise grid.

Data: integer levels k in ``[0, K)`` are scaled to ``x_0 = 2k/(K-1) - 1 ∈ [-1, 1]`` (as DDPM);
noisy data are ``x = x_0 + σ n``, n ~ N(0, I) (the "variance-exploding" coordinates every method
below works in). The denoiser is D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ)), F the
network of :func:`~genbench.models.diffusion.unet.build_denoiser` fed c_noise as its float time
input (through its sinusoidal embedding, as the paper's positional-embedding networks are).
``precond`` picks a column of the paper's Table 1:

- ``edm``: c_skip = σ_d²/(σ²+σ_d²), c_out = σ σ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²),
  c_noise = ¼ ln σ; training ln σ ~ N(P_mean, P_std²); λ(σ) = (σ²+σ_d²)/(σ σ_d)².
- ``vp``: c_skip = 1, c_out = -σ, c_in = 1/√(σ²+1), c_noise = (M-1) t(σ) with
  σ(t) = √(exp(½ β_d t² + β_min t) - 1); training t ~ U(ε_t, 1); λ = 1/σ².
- ``ve``: c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(σ/2); training ln σ ~
  U(ln 0.02, ln 100); λ = 1/σ².

Training minimizes denoising score matching, per example the mean over the D sub-pixels of
λ(σ) (D(x_0 + σn; σ) - x_0)² (the paper's denoising loss, weighted by λ). At the optimum
D(x; σ) = x + σ² ∇ log p_σ(x), so ``score(x, σ) = (D(x; σ) - x) / σ²``.

Sampler options (``sampler.*``; the constructor's ``sampler`` dict gives the defaults, merged as
DDPM merges them): ``name`` ``heun`` (Algorithm 1; NFE 2·steps - 1) | ``euler`` (NFE steps) |
``stochastic`` (Algorithm 2: ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``) | ``dpmpp``
(DPM-Solver++(2M)) | ``unipc`` (UniPC-bh2, ``order`` 1..3) of :mod:`.multistep`, NFE steps, on
``grid`` ``logsnr`` (λ = -log σ uniform) or ``karras``; ``steps`` noise levels between σ_max and
σ_min spaced by ``rho`` (eq. 5; or log-SNR for the multistep solvers), then σ = 0. σ_min = 0.002 and
σ_max = 80 (the paper's, for data in [-1, 1]: σ_max is 160 data standard deviations) are model
hyperparameters, shared by sampling and the likelihood.

Likelihood (``likelihood = "ode"``, a stochastic estimate): ``nll`` integrates the
probability-flow ODE dx/dσ = (x - D(x; σ))/σ (:mod:`.likelihood`, Hutchinson trace, rk45) from
σ_0 = max(Δ/4, σ_min) to σ_max with the prior N(0, σ_max² I) - the distribution the samplers
start from, so the number is that of the model that draws the samples - and decodes to the K
levels (``gaussian``) or dequantizes uniformly at σ_min (``uniform``); ``nll_options`` sets the
solver. The same computation, with its NFE, is the estimator ``ode``.

Class-conditional (``num_classes > 0``, ``model.conditional=true``): the label's embedding is
added to the network's time (c_noise) embedding (:mod:`.unet`), labels are dropped to the null
label with probability ``p_uncond`` in training, and every sampler takes ``guidance`` (w >= 0,
default 0): classifier-free guidance of F, hence of D and ε alike (:mod:`.guidance`), applied in
:meth:`EDM.denoise`, which every sampler calls; w > 0 costs 2 network evaluations per call
(counted in the NFE). ``nll`` and ``ode`` take the labels ``y`` and estimate -log P(x | y) with
the conditional network (no guidance).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

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
from genbench.models.diffusion.likelihood import DEQUANTIZATIONS, ProbabilityFlow, flow_nll
from genbench.models.diffusion.multistep import dpmpp_2m, logsnr_sigmas, unipc
from genbench.models.diffusion.samplers import Solver, edm_sample, karras_sigmas
from genbench.models.diffusion.scaling import SignedUnitLevels
from genbench.models.diffusion.unet import NetKind, build_denoiser
from genbench.models.options import OptionError, bad_option, option_choice, option_number
from genbench.nn.random import Generator, randn

Precond = Literal["edm", "vp", "ve"]
PRECONDS: tuple[str, ...] = get_args(Precond)
#: VP column of Table 1: β_d, β_min, M and ε_t (training t ~ U(ε_t, 1))
VP_BETA_D, VP_BETA_MIN, VP_M, VP_EPS_T = 19.9, 0.1, 1000, 1e-5
#: VE column of Table 1: training σ log-uniform in [0.02, 100]
VE_SIGMA_MIN, VE_SIGMA_MAX = 0.02, 100.0
SAMPLERS: dict[str, tuple[str, ...]] = {
    "heun": ("steps", "rho", GUIDANCE),
    "euler": ("steps", "rho", GUIDANCE),
    "stochastic": ("steps", "rho", "s_churn", "s_tmin", "s_tmax", "s_noise", GUIDANCE),
    "dpmpp": ("steps", "grid", "rho", GUIDANCE),
    "unipc": ("steps", "order", "grid", "rho", GUIDANCE),
}
#: defaults of every sampler option (stochastic: the paper's CIFAR-10 VP row of Table 5)
SAMPLER_DEFAULTS: dict[str, Any] = {
    "steps": 18,
    "rho": 7.0,
    "s_churn": 30.0,
    "s_tmin": 0.01,
    "s_tmax": 1.0,
    "s_noise": 1.007,
    "order": 2,
    "grid": "logsnr",
    GUIDANCE: 0.0,
}
NLL_OPTIONS: tuple[str, ...] = ("solver", "steps", "rtol", "atol", "probes", "dequantization")
NLL_DEFAULTS: dict[str, Any] = {
    "solver": "rk45",
    "steps": 100,
    "rtol": 1e-5,
    "atol": 1e-5,
    "probes": 1,
    "dequantization": "gaussian",
}


def vp_sigma(t: Tensor) -> Tensor:
    """VP noise level σ(t) = √(exp(½ β_d t² + β_min t) - 1) of times ``t`` ``[N]`` (any shape;
    σ has the shape of ``t``)."""
    return torch.expm1(0.5 * VP_BETA_D * t**2 + VP_BETA_MIN * t).sqrt()


def vp_time(sigma: Tensor) -> Tensor:
    """Inverse of :func:`vp_sigma`: t = (√(β_min² + 2 β_d ln(1 + σ²)) - β_min) / β_d, of the
    shape of ``sigma`` (e.g. ``[N]``)."""
    return (
        (VP_BETA_MIN**2 + 2 * VP_BETA_D * torch.log1p(sigma**2)).sqrt() - VP_BETA_MIN
    ) / VP_BETA_D


def check_options(options: Mapping[str, Any], prefix: str) -> None:
    """Check sampler / likelihood option values (``None`` = unset) under config key ``prefix``."""
    positive = {"low": 0, "low_open": True}
    checks = {
        "steps": lambda k, v: option_number(k, v, low=1, integer=True),
        "rho": lambda k, v: option_number(k, v, **positive),
        "s_churn": lambda k, v: option_number(k, v, low=0),
        "s_tmin": lambda k, v: option_number(k, v, low=0),
        "s_tmax": lambda k, v: option_number(k, v, low=0),
        "s_noise": lambda k, v: option_number(k, v, **positive),
        "order": lambda k, v: option_number(k, v, low=1, high=3, integer=True),
        "grid": lambda k, v: option_choice(k, v, ("logsnr", "karras")),
        "solver": lambda k, v: option_choice(k, v, ("rk45", "heun", "euler")),
        "rtol": lambda k, v: option_number(k, v, **positive),
        "atol": lambda k, v: option_number(k, v, **positive),
        "probes": lambda k, v: option_number(k, v, low=0, integer=True),
        "dequantization": lambda k, v: option_choice(k, v, DEQUANTIZATIONS),
        GUIDANCE: lambda k, v: option_number(k, v, low=0),
    }
    for name, value in options.items():
        if value is not None and name in checks:
            checks[name](f"{prefix}.{name}", value)


def merge_sampler(
    sampler: Mapping[str, Any], defaults: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """(name, every option of that sampler) after merging ``sampler`` over ``defaults`` (the
    model's ``sampler`` argument) and :data:`SAMPLER_DEFAULTS`; a ``name`` other than the
    default's starts from :data:`SAMPLER_DEFAULTS`. Raises :class:`OptionError`."""
    if defaults is not None and not isinstance(defaults, Mapping):
        raise bad_option("model.sampler", defaults, "a mapping of sampler options")
    sampler = {k: v for k, v in sampler.items() if v is not None}
    defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
    default = defaults.get("name", "heun")
    for opts, prefix in ((defaults, "model.sampler"), (sampler, "sampler")):
        name = opts.get("name", default)
        if not isinstance(name, str) or name not in SAMPLERS:
            raise OptionError(
                f"{prefix}.name",
                name,
                f"{prefix}.name={name!r} is an unknown sampler; valid: {', '.join(SAMPLERS)}",
            )
        rest = {k: v for k, v in opts.items() if k != "name"}
        check_sampler_options(rest, SAMPLERS[name], f"the EDM sampler {name!r}", prefix=prefix)
        check_options(rest, prefix)
    name = sampler.get("name", default)
    opts = {**defaults, **sampler} if name == default else sampler
    return name, {k: opts.get(k, SAMPLER_DEFAULTS[k]) for k in SAMPLERS[name]}


def merge_nll_options(options: Mapping[str, Any], defaults: Mapping[str, Any], key: str) -> dict:
    """Likelihood options ``options`` over ``defaults`` over :data:`NLL_DEFAULTS`, checked."""
    for opts, prefix in ((defaults, "model.nll_options"), (options, key)):
        if not isinstance(opts, Mapping):
            raise bad_option(prefix, opts, "a mapping of options such as {solver: rk45}")
        check_sampler_options(opts, NLL_OPTIONS, "the EDM ODE likelihood", prefix=prefix)
        check_options(opts, prefix)
    given = {k: v for k, v in {**defaults, **options}.items() if v is not None}
    merged = {**NLL_DEFAULTS, **given}
    if merged["solver"] != "rk45" and merged["steps"] < 2:  # the σ grid needs both ends
        where = key if "steps" in options else "model.nll_options"
        raise bad_option(f"{where}.steps", merged["steps"], "an integer >= 2 with heun or euler")
    return merged


class EDM(SignedUnitLevels, GenerativeModel):
    """Preconditioned denoiser D(x; σ) of Karras et al. (2022).

    Args:
        shape, levels: data shape ``(C, H, W)`` and levels K (from the runner).
        net, ch, ch_mult, num_res_blocks, attn_resolutions, dropout, norm_groups, mlp_hidden,
            mlp_blocks: the network F, as for DDPM (:func:`.unet.build_denoiser`).
        precond: ``edm`` | ``vp`` | ``ve`` (Table 1; see the module docstring).
        sigma_data: σ_d, the data standard deviation assumed by ``edm`` (0.5).
        p_mean, p_std: ln σ ~ N(P_mean, P_std²) when training with ``edm`` (-1.2, 1.2).
        sigma_min, sigma_max: the noise range of sampling and of the likelihood (0.002, 80).
        sampler: default sampler options (``name``, ``steps``, ...).
        nll_options: defaults of the ODE likelihood (``solver`` rk45 | heun | euler, ``steps``,
            ``rtol``, ``atol``, ``probes`` (0 = exact trace), ``dequantization``).
        num_classes: classes of a conditional model (from the runner with
            ``model.conditional=true``; 0 = unconditional, no labels, no extra parameters).
        p_uncond: label dropout of a conditional model (probability of the null label when
            training; classifier-free guidance needs it > 0).
    """

    family = "diffusion"
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
        precond: Precond = "edm",
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sampler: Mapping[str, Any] | None = None,
        nll_options: Mapping[str, Any] | None = None,
        num_classes: int = 0,
        p_uncond: float = 0.1,
    ) -> None:
        super().__init__(shape, levels, num_classes)
        check_p_uncond(p_uncond)
        option_choice("model.precond", precond, PRECONDS)
        for key, value in (("sigma_data", sigma_data), ("sigma_min", sigma_min)):
            option_number(f"model.{key}", value, low=0, low_open=True)
        option_number("model.p_std", p_std, low=0, low_open=True)
        option_number("model.p_mean", p_mean)
        option_number("model.sigma_max", sigma_max, low=sigma_min, low_open=True)
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
        self.precond: Precond = precond
        self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.sampler_defaults: dict[str, Any] = dict(sampler or {"name": "heun"})
        self._sampler_options({})  # validate the defaults
        self.nll_defaults: dict[str, Any] = dict(nll_options or {})
        merge_nll_options({}, self.nll_defaults, "model.nll_options")

    # ---- preconditioning (the data scale comes from SignedUnitLevels) -----------------

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, c_noise) of Table 1 at noise levels ``sigma`` ``[N]`` (or any
        shape; each coefficient float64 of that shape)."""
        s = sigma.double()
        one = torch.ones_like(s)
        if self.precond == "vp":
            return one, -s, (s**2 + 1).rsqrt(), (VP_M - 1) * vp_time(s)
        if self.precond == "ve":
            return one, s, one, (0.5 * s).log()
        sd2 = self.sigma_data**2
        return (
            sd2 / (s**2 + sd2),
            s * self.sigma_data * (s**2 + sd2).rsqrt(),
            (s**2 + sd2).rsqrt(),
            0.25 * s.log(),
        )

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """λ(σ) of Table 1 at ``sigma`` ``[N]`` (float64 ``[N]``, or the shape of ``sigma``)."""
        s = sigma.double()
        if self.precond == "edm":
            return (s**2 + self.sigma_data**2) / (s * self.sigma_data) ** 2
        return s**-2

    def training_sigmas(self, n: int, device: torch.device) -> Tensor:
        """``[n]`` float64 noise levels drawn (global RNG) from the training distribution."""
        u = torch.rand(n, dtype=torch.float64, device=device)
        if self.precond == "vp":
            return vp_sigma(VP_EPS_T + (1 - VP_EPS_T) * u)
        if self.precond == "ve":
            lo, hi = math.log(VE_SIGMA_MIN), math.log(VE_SIGMA_MAX)
            return (lo + (hi - lo) * u).exp()
        z = torch.randn(n, dtype=torch.float64, device=device)
        return (self.p_mean + self.p_std * z).exp()

    def denoise(
        self,
        x: Tensor,
        sigma: Tensor | float,
        labels: Tensor | None = None,
        guidance: float = 0.0,
    ) -> Tensor:
        """D(x; σ) ``[N, C, H, W]``: the denoised estimate of the data ``[-1, 1]`` scale from
        noisy ``x`` ``[N, C, H, W]`` (data + σ·noise) at noise levels ``sigma`` ``[N]`` (or a
        number for all rows); given the ``labels`` ``[N]`` of a conditional model, with F
        guided by ``guidance`` w. The one place every sampler's network evaluation goes
        through."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        c_skip, c_out, c_in, c_noise = (
            c.to(x.dtype).view(-1, *([1] * (x.ndim - 1))) for c in self.coefficients(sigma)
        )
        # one expression, in this order: autograd then sums the Jacobian's parts as it always has
        return c_skip * x + c_out * guided_output(
            self.net, c_in * x, c_noise.flatten(), labels, guidance
        )

    def score(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """∇_x log p_σ(x) ≈ (D(x; σ) - x) / σ² ``[N, C, H, W]`` for ``x``, ``sigma`` and
        ``labels`` as in :meth:`denoise`."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        s2 = (sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma).to(x.dtype) ** 2
        return (self.denoise(x, sigma, labels) - x) / s2.view(-1, *([1] * (x.ndim - 1)))

    # ---- training and likelihood ------------------------------------------------------
    def training_losses(
        self, x: Tensor, phase: str = "main", y: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"loss": [N]}``: mean over sub-pixels of λ(σ) (D(x_0 + σn; σ) - x_0)², σ from the
        training distribution and n ~ N(0, I) (global RNG); D given the labels ``y`` ``[N]`` of
        a conditional model (dropped to the null label with probability ``p_uncond``)."""
        labels = self.labels(y, x.shape[0], x.device)
        x0 = self.to_unit(x)
        sigma = self.training_sigmas(x0.shape[0], x0.device)
        noisy = x0 + sigma.to(x0.dtype).view(-1, 1, 1, 1) * torch.randn_like(x0)
        err = (self.denoise(noisy, sigma, labels) - x0).square().flatten(1).mean(1)
        return {"loss": self.loss_weight(sigma).to(err.dtype) * err}

    def flow(self) -> ProbabilityFlow:
        """The probability-flow ODE dx/dσ = (x - D(x; σ))/σ on [σ_min, σ_max], prior
        N(0, σ_max² I), fixed-step grids on the ρ = 7 spacing (a conditional model's flow takes
        the rows' labels)."""

        def eps(y: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
            """ε̂ ``[N, C, H, W]`` = (y - D(y; σ)) / σ at ``y`` ``[N, C, H, W]``, σ ``[N]`` and
            labels ``[N]`` (conditional models)."""
            d = self.denoise(y, sigma, labels)
            return (y - d) / sigma.to(y.dtype).view(-1, *([1] * (y.ndim - 1)))

        def grid(steps: int, solver: Solver, start: float | None) -> list[float]:
            lo = self.sigma_min if start is None else float(start)
            return karras_sigmas(lo, self.sigma_max, steps)[::-1]

        return ProbabilityFlow(eps, self.sigma_min, self.sigma_max, self.sigma_max**2, grid)

    def ode_likelihood(
        self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None, **options: Any
    ) -> NllEstimate:
        """Probability-flow ODE NLL ``[N]`` nats of int64 levels ``x`` ``[N, C, H, W]`` (given the
        labels ``y`` ``[N]`` of a conditional model) with NFE ``[N]`` and settings; ``options``
        (:data:`NLL_OPTIONS`) over ``nll_options``; every random draw (dequantization, probes)
        from ``generator`` (``None``: the global RNG)."""
        opts = merge_nll_options(options, self.nll_defaults, "eval.estimator_options.ode")
        labels = self.labels(y, x.shape[0], x.device)
        return flow_nll(
            self.flow(),
            x,
            self.levels,
            generator=generator,
            dtype=self._param().dtype,
            labels=labels,
            **opts,
        )

    def nll(self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None) -> Tensor:
        """``[N]`` nats: a one-draw estimate of the ODE bound on -log P(x) (-log P(x | y) for a
        conditional model's labels ``y`` ``[N]``; see the module docstring); noise from
        ``generator`` (the evaluator passes one per test image, so an image's number does not
        depend on its batch) or, when ``None``, the global RNG."""
        return self.ode_likelihood(x, y=y, generator=generator).nll

    def likelihood_estimators(self) -> dict[str, LikelihoodEstimator]:
        """``ode``: :meth:`ode_likelihood` (options as ``nll_options``), an estimate."""
        return {"ode": LikelihoodEstimator("estimate", self.ode_likelihood)}

    @classmethod
    def validate_estimator(
        cls, name: str, options: Mapping[str, Any], hparams: Mapping[str, Any], *, key: str
    ) -> None:
        """``ode``: the options of ``nll_options``."""
        if name == "ode":
            merge_nll_options(options, hparams.get("nll_options") or {}, key)

    # ---- sampling -----------------------------------------------------------------------
    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """The options of the module docstring, over the defaults in ``hparams["sampler"]``."""
        _, opts = merge_sampler(sampler, hparams.get("sampler"))
        check_guidance(opts[GUIDANCE], conditional_of(hparams))

    def _sampler_options(self, sampler: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """(name, every option) of ``sampler`` over the defaults; ``guidance`` only for a
        conditional model (an unconditional one refuses guidance != 0)."""
        name, opts = merge_sampler(sampler, self.sampler_defaults)
        w = check_guidance(opts.pop(GUIDANCE), self.conditional)
        return name, ({**opts, GUIDANCE: w} if self.conditional else opts)

    def resolve_sampler(self, **sampler: Any) -> dict[str, Any]:
        """Every option ``sample(**sampler)`` uses, with ``name``."""
        name, opts = self._sampler_options(sampler)
        return {"name": name, **opts}

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """``[n, C, H, W]`` int64 levels from x ~ N(0, σ_max² I) (and the stochastic sampler's
        noise) drawn from ``generator``, given the labels ``y`` ``[n]`` of a conditional model
        (guided by ``sampler.guidance``); NFE per image: 2·steps - 1 (heun, stochastic) or steps
        (euler, dpmpp, unipc), twice that with guidance w > 0."""
        name, opts = self._sampler_options(sampler)
        w = opts.pop(GUIDANCE, 0.0)
        p = self._param()
        labels = self.labels(y, n, p.device)
        denoise = self.denoise
        if labels is not None:
            denoise = functools.partial(self.denoise, labels=labels, guidance=w)
        steps = int(opts["steps"])
        sigmas = karras_sigmas(self.sigma_min, self.sigma_max, steps, opts["rho"])
        x_T = self.sigma_max * randn(
            (n, *self.shape), generator=generator, device=p.device, dtype=p.dtype
        )
        if name in ("dpmpp", "unipc"):  # multistep solvers on EDM's own (VE) coordinates
            if opts["grid"] == "logsnr":
                sigmas = logsnr_sigmas(self.sigma_min, self.sigma_max, steps)
            grid = [*sigmas, 0.0]  # steps network calls, the last step to σ = 0
            if name == "dpmpp":
                x0, nfe = dpmpp_2m(denoise, x_T, grid)
            else:
                x0, nfe = unipc(denoise, x_T, grid, order=int(opts["order"]))
            return Sampled.constant(self.to_levels(x0), guided_nfe(nfe, w))
        kw: dict[str, Any] = {"second_order": name != "euler", "generator": generator}
        if name == "stochastic":
            kw.update(
                churn=opts["s_churn"],
                s_tmin=opts["s_tmin"],
                s_tmax=opts["s_tmax"],
                s_noise=opts["s_noise"],
            )
        x0, nfe = edm_sample(denoise, x_T, sigmas, **kw)
        return Sampled.constant(self.to_levels(x0), guided_nfe(nfe, w))
