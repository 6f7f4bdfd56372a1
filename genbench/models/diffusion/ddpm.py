"""DDPM (Ho, Jain & Abbeel 2020): one denoising network, one Gaussian process, several samplers.

Data: integer levels k in ``[0, K)`` are scaled to ``x_0 = 2k/(K-1) - 1 ∈ [-1, 1]``; samples are
mapped back by rounding and clamping. Training minimizes L_simple (ε- or v-MSE at a uniform t).
``nll`` is the full variational bound L_T + Σ L_{t-1} + L_0 with the discretized Gaussian
decoder over the K levels, an upper bound on the discrete NLL in nats (``likelihood = "vlb"``);
every one of the T terms is evaluated (no timestep subsampling), batching timesteps together.
``ode_nll`` estimates the probability-flow ODE likelihood (:mod:`.likelihood`); the model declares
it to the evaluator as the likelihood estimator ``ode`` (``eval.estimators=[ode]``).

Sampler options (``conf/sampler/*.yaml`` arrive as keyword arguments of ``sample``):

- ``name``: ``ancestral`` | ``ddim`` | ``ode`` | ``dpmpp`` | ``unipc``.
- ancestral: ``steps`` (default T; fewer respaces the process), ``variance`` (small|large,
  or learned with ``learn_sigma``; default the model's), ``clip``.
- ddim: ``steps`` (default T), ``eta`` (0 = deterministic, 1 = DDPM variance), ``clip``.
- ode: ``solver`` (rk45|heun|euler), ``steps`` (fixed-step solvers), ``rtol``, ``atol``.
- dpmpp: DPM-Solver++(2M) (:mod:`.multistep`), ``steps`` (= NFE), ``grid`` (logsnr|time|karras),
  ``clip`` (x̂_0 clamped to [-1, 1], default ``clip_denoised`` as for DDIM).
- unipc: UniPC-bh2 (:mod:`.multistep`), ``steps`` (= NFE), ``order`` (1..3), ``grid``, ``clip``.

The constructor's ``sampler`` dict gives the defaults; options given without ``name`` (or with
the same name) are merged over them, a different ``name`` starts from that sampler's defaults.

Class-conditional (``num_classes > 0``, ``model.conditional=true``): the label's embedding is
added to the time embedding (:mod:`.unet`), labels are dropped to the null label with
probability ``p_uncond`` in training, and every sampler takes ``guidance`` (w >= 0, default 0):
classifier-free guidance of the prediction (:mod:`.guidance`), applied in :meth:`DDPM._net`,
which every sampler calls; w > 0 costs 2 network evaluations per step (counted in the NFE).
``nll``, ``bound_terms`` and the ``ode`` estimator take the labels ``y`` and bound
-log P(x | y) with the conditional network (no guidance).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
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
from genbench.models.diffusion.guidance import (
    OPTION as GUIDANCE,
)
from genbench.models.diffusion.guidance import (
    check_guidance,
    check_p_uncond,
    conditional_of,
    guided_nfe,
    guided_output,
)
from genbench.models.diffusion.importance import LossAwareTimesteps
from genbench.models.diffusion.likelihood import DEQUANTIZATIONS, Dequantization
from genbench.models.diffusion.likelihood import ode_nll as _ode_nll
from genbench.models.diffusion.multistep import GRIDS, multistep_sample
from genbench.models.diffusion.process import (
    HYBRID_WEIGHT,
    GaussianDiffusion,
    NetFn,
    Prediction,
    Schedule,
    Variance,
    apply_net,
    discretized_gaussian_log_likelihood,
)
from genbench.models.diffusion.samplers import Solver, ancestral_sample, ddim_sample, ode_sample
from genbench.models.diffusion.scaling import SignedUnitLevels
from genbench.models.diffusion.unet import NetKind, build_denoiser
from genbench.models.options import (
    OptionError,
    bad_option,
    option_bool,
    option_choice,
    option_number,
)
from genbench.nn.random import Generator, randn

SAMPLERS: dict[str, tuple[str, ...]] = {
    "ancestral": ("steps", "variance", "clip", GUIDANCE),
    "ddim": ("steps", "eta", "clip", GUIDANCE),
    "ode": ("solver", "steps", "rtol", "atol", GUIDANCE),
    "dpmpp": ("steps", "grid", "clip", GUIDANCE),
    "unipc": ("steps", "order", "grid", "clip", GUIDANCE),
}
#: highest UniPC order (``sampler.order``)
MAX_ORDER = 3
SOLVERS: tuple[str, ...] = ("rk45", "heun", "euler")
Objective = Literal["simple", "vlb"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
#: options of the ``ode`` likelihood estimator (:meth:`DDPM.ode_likelihood`)
ODE_OPTIONS: tuple[str, ...] = ("solver", "steps", "rtol", "atol", "probes", "dequantization")


def check_options(options: Mapping[str, Any], prefix: str, timesteps: int | None) -> None:
    """Check the values of sampler / ODE options (``None`` = unset) under config key ``prefix``:
    ``steps`` an integer in [1, T] (any >= 1 for ``rk45``, which does not use it), ``eta`` in
    [0, 1], ``variance`` small | large, ``clip`` a bool, ``solver`` rk45 | heun | euler,
    ``rtol``/``atol`` > 0, ``probes`` an integer >= 0, ``order`` an integer in [1, 3], ``grid``
    logsnr | time | karras, ``guidance`` >= 0."""
    high = None if options.get("solver") == "rk45" else timesteps
    checks = {
        "steps": lambda k, v: option_number(k, v, low=1, high=high, integer=True),
        "eta": lambda k, v: option_number(k, v, low=0, high=1),
        "variance": lambda k, v: option_choice(k, v, ("small", "large", "learned")),
        "clip": option_bool,
        "solver": lambda k, v: option_choice(k, v, SOLVERS),
        "rtol": lambda k, v: option_number(k, v, low=0, low_open=True),
        "atol": lambda k, v: option_number(k, v, low=0, low_open=True),
        "probes": lambda k, v: option_number(k, v, low=0, integer=True),
        "dequantization": lambda k, v: option_choice(k, v, DEQUANTIZATIONS),
        "order": lambda k, v: option_number(k, v, low=1, high=MAX_ORDER, integer=True),
        "grid": lambda k, v: option_choice(k, v, GRIDS),
        GUIDANCE: lambda k, v: option_number(k, v, low=0),
    }
    for name, value in options.items():
        if value is not None and name in checks:
            checks[name](f"{prefix}.{name}", value)


def _timesteps(hparams: Mapping[str, Any]) -> int | None:
    """T from the model's hyperparameters, when given and valid (else no bound: the constructor
    reports a bad T, and a built model checks against its own)."""
    t = hparams.get("timesteps")
    return t if isinstance(t, int) and not isinstance(t, bool) and t >= 1 else None


class DDPM(SignedUnitLevels, GenerativeModel):
    """Denoising diffusion probabilistic model.

    Args:
        shape, levels: data shape ``(C, H, W)`` and levels K (from the runner).
        net: ``auto`` (MLP when H = W = 1, else U-Net), ``unet`` or ``mlp``.
        ch, ch_mult, num_res_blocks, attn_resolutions, dropout, norm_groups: U-Net size
            (see :class:`~genbench.models.diffusion.unet.UNet`).
        mlp_hidden, mlp_blocks: MLP denoiser width and residual blocks.
        timesteps: T. schedule: ``linear`` (1e-4..0.02) or ``cosine``.
        prediction: ``eps`` or ``v``. variance: fixed reverse-process variance ``small`` (β̃_t)
            or ``large`` (β_t), used by ``nll`` and the ancestral sampler.
        learn_sigma: learn the reverse variances (Nichol & Dhariwal 2021): the network outputs
            ``2 C`` channels, the prediction and an interpolation between log β_t and log β̃_t,
            trained by the hybrid objective L_simple + ``hybrid_weight`` · L_vlb; ``nll`` and
            the ancestral sampler then use the learned variances (``variance`` must stay
            ``small``, its default). DDIM and the ODE use the prediction only.
        hybrid_weight: λ of the hybrid objective (paper: 0.001).
        objective: ``simple`` (L_simple; with ``learn_sigma`` the hybrid objective) or ``vlb``:
            the variational bound alone with the timestep importance-sampled
            (:mod:`.importance`; Nichol & Dhariwal 2021, sec. 3.3), with fixed or learned
            variances.
        clip_denoised: clip x̂_0 to [-1, 1] in the bound and in ancestral/DDIM sampling.
        vlb_max_batch: rows per network call when evaluating the bound (timesteps batched);
            it bounds the bound's memory (at 1024 rows, about 0.9 GB for the default U-Net on
            28x28x1 images and 1.2 GB on 32x32x3; 4096 rows took 3.0 / 4.1 GB) and does not
            change its value.
        nll_seed: seed of the noise used by ``nll`` when no generator is given.
        sampler: default sampler options (see the module docstring).
        num_classes: classes of a conditional model (from the runner with
            ``model.conditional=true``; 0 = unconditional, no labels, no extra parameters).
        p_uncond: label dropout of a conditional model (probability of the null label when
            training; classifier-free guidance needs it > 0).
    """

    family = "diffusion"
    likelihood = "vlb"
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
        timesteps: int = 1000,
        schedule: Schedule = "linear",
        prediction: Prediction = "eps",
        variance: Variance = "small",
        learn_sigma: bool = False,
        hybrid_weight: float = HYBRID_WEIGHT,
        objective: Objective = "simple",
        clip_denoised: bool = True,
        vlb_max_batch: int = 1024,
        nll_seed: int = 0,
        sampler: Mapping[str, Any] | None = None,
        num_classes: int = 0,
        p_uncond: float = 0.1,
    ) -> None:
        super().__init__(shape, levels, num_classes)
        check_p_uncond(p_uncond)
        if variance not in ("small", "large"):
            raise ValueError(f"variance must be small or large, got {variance!r}")
        if learn_sigma and variance != "small":
            raise ValueError(
                f"model.variance={variance} and model.learn_sigma=true conflict: learned "
                "variances replace the fixed ones (leave variance at small)"
            )
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
            out_mult=2 if learn_sigma else 1,
            num_classes=self.num_classes,
            p_uncond=p_uncond,
        )
        self.process = GaussianDiffusion.from_schedule(schedule, timesteps, prediction=prediction)
        self.variance: Variance = "learned" if learn_sigma else variance
        self.hybrid_weight = float(hybrid_weight)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective: Objective = objective
        if objective == "vlb":
            self.timestep_sampler = LossAwareTimesteps(timesteps)
        self.clip_denoised = bool(clip_denoised)
        self.vlb_max_batch = int(vlb_max_batch)
        self.nll_seed = int(nll_seed)
        self.sampler_defaults: dict[str, Any] = dict(sampler or {"name": "ancestral"})
        self._sampler_options({})  # validate the defaults

    # ---- networks (the data scale comes from SignedUnitLevels) ----------------------------
    def _net(
        self, x_t: Tensor, t: Tensor, labels: Tensor | None = None, guidance: float = 0.0
    ) -> Tensor:
        """The whole network output ``[N, C or 2C, H, W]`` (with learned variances: prediction
        and variance) at ``x_t`` ``[N, C, H, W]``, network times ``t`` ``[N]`` and, for a
        conditional model, labels ``[N]``; classifier-free ``guidance`` w guides the prediction
        (the variances are the conditional pass's). The one place every sampler's network
        evaluation goes through."""
        return guided_output(self.net, x_t, t, labels, guidance, channels=self.shape[0])

    def _pred_net(
        self, x_t: Tensor, t: Tensor, labels: Tensor | None = None, guidance: float = 0.0
    ) -> Tensor:
        """The prediction (ε or v) only: what DDIM, the ODE and the multistep solvers use."""
        out = guided_output(self.net, x_t, t, labels, guidance, channels=self.shape[0])
        return out[:, : self.shape[0]] if self.variance == "learned" else out

    @staticmethod
    def _bind(fn: Callable[..., Tensor], labels: Tensor | None, guidance: float) -> NetFn:
        """``fn(x_t, t)`` with the batch's ``labels`` and ``guidance`` bound (``fn`` itself for an
        unconditional model)."""
        if labels is None:
            return fn
        return functools.partial(fn, labels=labels, guidance=guidance)

    # ---- training and likelihood ------------------------------------------------------
    def training_losses(
        self, x: Tensor, phase: str = "main", y: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"loss": L_simple [N]}`` at t ~ U{0..T-1}, ε ~ N(0, I) (global RNG); with learned
        variances the hybrid objective (``loss``, ``simple``, ``vlb``); with ``objective=vlb``
        the importance-sampled bound (in training mode the sampler records each L_t). Labels
        ``y`` ``[N]`` of a conditional model (dropped to the null label with probability
        ``p_uncond`` in training mode, global RNG after t and ε)."""
        x0 = self.to_unit(x)
        net = self._bind(self._net, self.labels(y, x0.shape[0], x0.device), 0.0)
        if self.objective == "vlb":
            t, probs = self.timestep_sampler.sample(x0.shape[0], x0.device)
            out = self.process.vlb_loss(
                net, x0, t, torch.randn_like(x0), self.levels, probs, variance=self.variance
            )
            if self.training:
                self.timestep_sampler.update(t, out["term"])
            return {"loss": out["loss"]}
        t = torch.randint(0, self.process.T, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        if self.variance == "learned":
            return self.process.hybrid_loss(net, x0, t, eps, self.levels, weight=self.hybrid_weight)
        return {"loss": self.process.simple_loss(net, x0, t, eps)}

    def _generator(self, x: Tensor, generator: Generator) -> Generator:
        if generator is not None:
            return generator
        return torch.Generator(device=x.device).manual_seed(self.nll_seed)

    def vlb_terms(
        self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None
    ) -> dict[str, Tensor]:
        """``prior``, ``diffusion``, ``decoder`` and ``vlb`` ``[N]`` nats of levels ``x`` (given
        the labels ``y`` ``[N]`` of a conditional model)."""
        return self.process.vlb_terms(
            self._net,
            self.to_unit(x),
            self.levels,
            variance=self.variance,
            clip=self.clip_denoised,
            generator=self._generator(x, generator),
            max_batch=self.vlb_max_batch,
            labels=self.labels(y, x.shape[0], x.device),
        )

    def nll(self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None) -> Tensor:
        """``[N]`` nats: the full bound L_vlb of the discrete ``x`` (T network calls per row;
        noise from ``generator`` - one per example from the evaluator -, default one generator
        seeded ``nll_seed``); of -log P(x | y) for a conditional model's labels ``y`` ``[N]``."""
        return self.vlb_terms(x, y=y, generator=generator)["vlb"]

    def bound_terms(
        self, x: Tensor, *, y: Tensor | None = None, generator: Generator = None
    ) -> dict[str, Tensor]:
        """Cheap parts of the bound, ``[N]`` nats: ``prior`` L_T (closed form) and ``decoder``
        L_0 (one network call; its noise is the first draw of ``generator``, as in ``nll``, so
        fresh generators seeded like ``nll``'s give exactly the bound's L_0); labels ``y`` as
        in :meth:`nll`."""
        labels = self.labels(y, x.shape[0], x.device)
        x0 = self.to_unit(x)
        t = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        gen = self._generator(x, generator)
        eps = randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        x1 = self.process.q_sample(x0, t, eps)
        out = apply_net(self._net, x1, self.process.net_time(t), labels).double()
        mean, logvar, _ = self.process.p_mean_variance(
            out, x1.double(), t, variance=self.variance, clip=self.clip_denoised
        )
        ll = discretized_gaussian_log_likelihood(x0.double(), mean, logvar, self.levels)
        return {"prior": self.process.prior_kl(x0), "decoder": -ll.flatten(1).sum(1)}

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
        probes: int = 1,
        dequantization: Dequantization = "gaussian",
    ) -> NllEstimate:
        """Probability-flow ODE NLL ``[N]`` nats of int64 levels ``x`` ``[N, C, H, W]`` (given the
        labels ``y`` ``[N]`` of a conditional model), with NFE ``[N]`` and the settings (see
        ``ode_nll``)."""
        opts = {"solver": solver, "steps": steps, "rtol": rtol, "atol": atol, "probes": probes}
        check_options(
            {**opts, "dequantization": dequantization},
            "eval.estimator_options.ode",
            self.process.T,
        )
        return _ode_nll(
            self._pred_net,
            self.process,
            x,
            self.levels,
            generator=generator,
            solver=solver,
            steps=steps,
            rtol=rtol,
            atol=atol,
            probes=probes,
            dequantization=dequantization,
            dtype=self._param().dtype,
            labels=self.labels(y, x.shape[0], x.device),
        )

    def ode_nll(
        self,
        x: Tensor,
        *,
        y: Tensor | None = None,
        generator: Generator = None,
        solver: Solver = "rk45",
        steps: int = 100,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        probes: int = 1,
        dequantization: Dequantization = "gaussian",
    ) -> Tensor:
        """``[N]`` nats: a single-sample estimate of the probability-flow ODE bound on -log P(x)
        (Song et al. 2021; :mod:`.likelihood`): ``gaussian`` (default) stops the ODE at σ_0 ≈
        a quarter level and decodes (VDM-style), ``uniform`` dequantizes at σ_min. Hutchinson
        trace with ``probes`` Rademacher vectors (0 = exact trace); solver ``rk45``
        (``rtol``/``atol``) or ``heun``/``euler`` (``steps``). Randomness (dequantization,
        probes) comes from ``generator`` (one per example for batch-independent results).
        Labels ``y`` ``[N]`` of a conditional model: the bound on -log P(x | y)."""
        return self.ode_likelihood(
            x,
            y=y,
            generator=generator,
            solver=solver,
            steps=steps,
            rtol=rtol,
            atol=atol,
            probes=probes,
            dequantization=dequantization,
        ).nll

    def likelihood_estimators(self) -> dict[str, LikelihoodEstimator]:
        """``ode``: the probability-flow ODE estimate of :meth:`ode_likelihood` (options:
        ``solver``, ``steps``, ``rtol``, ``atol``, ``probes``, ``dequantization``)."""
        return {"ode": LikelihoodEstimator("estimate", self.ode_likelihood)}

    @classmethod
    def validate_estimator(
        cls, name: str, options: Mapping[str, Any], hparams: Mapping[str, Any], *, key: str
    ) -> None:
        """``ode``: options ``solver``, ``steps``, ``rtol``, ``atol``, ``probes``,
        ``dequantization``."""
        if name != "ode":
            return
        if not isinstance(options, Mapping):
            raise bad_option(key, options, "a mapping of options such as {solver: rk45}")
        check_sampler_options(options, ODE_OPTIONS, "the DDPM ODE likelihood", prefix=key)
        check_options(options, key, _timesteps(hparams))

    # ---- sampling -----------------------------------------------------------------------
    @classmethod
    def validate_sampler(cls, sampler: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
        """The options of the module docstring, over the defaults in ``hparams["sampler"]``."""
        name, opts = cls._merge_sampler(sampler, hparams.get("sampler"), _timesteps(hparams))
        check_guidance(opts.get(GUIDANCE), conditional_of(hparams))
        if opts.get("variance") == "learned" and not hparams.get("learn_sigma"):
            raise OptionError(
                "sampler.variance",
                "learned",
                "sampler.variance=learned needs model.learn_sigma=true; valid here: small, large",
            )

    @staticmethod
    def _merge_sampler(
        sampler: Mapping[str, Any], defaults: Mapping[str, Any] | None, timesteps: int | None
    ) -> tuple[str, dict[str, Any]]:
        """(name, options) after merging ``sampler`` over ``defaults`` (the model's ``sampler``
        argument), each checked; ``None`` = unset."""
        if defaults is not None and not isinstance(defaults, Mapping):
            raise bad_option("model.sampler", defaults, "a mapping of sampler options")
        sampler = {k: v for k, v in sampler.items() if v is not None}
        defaults = {k: v for k, v in (defaults or {"name": "ancestral"}).items() if v is not None}
        default = defaults.get("name", "ancestral")
        for opts, prefix in ((defaults, "model.sampler"), (sampler, "sampler")):
            name = opts.get("name", default)
            if not isinstance(name, str) or name not in SAMPLERS:
                raise OptionError(
                    f"{prefix}.name",
                    name,
                    f"{prefix}.name={name!r} is an unknown sampler; valid: {', '.join(SAMPLERS)}",
                )
            rest = {k: v for k, v in opts.items() if k != "name"}
            check_sampler_options(rest, SAMPLERS[name], f"the DDPM sampler {name!r}", prefix=prefix)
            check_options(rest, prefix, timesteps)
        name = sampler.get("name", default)
        opts = {**defaults, **sampler} if name == default else sampler
        return name, {k: v for k, v in opts.items() if k != "name"}

    def _sampler_options(self, sampler: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """(name, options) after merging ``sampler`` over the defaults; ``None`` = unset. A
        conditional model's options include ``guidance`` (default 0); an unconditional model
        refuses guidance != 0 and its options are those of before guidance existed."""
        name, opts = self._merge_sampler(sampler, self.sampler_defaults, self.process.T)
        w = check_guidance(opts.pop(GUIDANCE, None), self.conditional)
        return name, ({**opts, GUIDANCE: w} if self.conditional else opts)

    def resolve_sampler(self, **sampler: Any) -> dict[str, Any]:
        """The sampler options actually used for ``sample(**sampler)``, with ``name`` (for
        protocols: ``{}`` means the model's defaults)."""
        name, opts = self._sampler_options(sampler)
        return {"name": name, **opts}

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: Generator = None, **sampler: Any
    ) -> Sampled:
        """``[n, C, H, W]`` int64 levels; x_T and every step's noise come from ``generator``;
        a conditional model draws from p(x | y) for labels ``y`` ``[n]``, with classifier-free
        guidance ``sampler.guidance`` (w).

        NFE per image: T or ``steps`` (ancestral, DDIM, dpmpp, unipc); for the ODE ``steps``
        (euler), ``2 steps - 1`` (heun), or the steps the adaptive ``rk45`` took for that
        image, plus one; twice that with guidance w > 0.
        """
        name, opts = self._sampler_options(sampler)
        w = opts.pop(GUIDANCE, 0.0)
        p = self._param()
        labels = self.labels(y, n, p.device)
        x_T = randn((n, *self.shape), generator=generator, device=p.device, dtype=p.dtype)
        if name == "ode":  # rk45 evaluates the rows still integrating: labels travel apart
            net = (
                self._pred_net if labels is None else functools.partial(self._pred_net, guidance=w)
            )
            x0, nfe_rows = ode_sample(net, self.process, x_T, labels=labels, **opts)
            return Sampled(self.to_levels(x0), guided_nfe(nfe_rows, w))
        pred = self._bind(self._pred_net, labels, w)
        if name in ("dpmpp", "unipc"):
            opts.setdefault("clip", self.clip_denoised)
            x0, nfe = multistep_sample(pred, self.process, x_T, solver=name, **opts)
            return Sampled.constant(self.to_levels(x0), guided_nfe(nfe, w))
        fn, net = ddim_sample, pred
        if name == "ancestral":
            fn = ancestral_sample
            opts.setdefault("variance", self.variance)
            if opts["variance"] == "learned":
                if self.variance != "learned":
                    raise OptionError(
                        "sampler.variance",
                        "learned",
                        "sampler.variance=learned needs a model trained with "
                        "model.learn_sigma=true; valid here: small, large",
                    )
                net = self._bind(self._net, labels, w)
        opts.setdefault("clip", self.clip_denoised)
        x0, nfe = fn(net, self.process, x_T, generator=generator, **opts)
        return Sampled.constant(self.to_levels(x0), guided_nfe(nfe, w))
