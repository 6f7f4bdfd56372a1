"""Adaptive ODE solves: genbench's own Dormand-Prince RK45 (``samplers.integrate_rk45``: one step
size per sample, finished samples leave the network calls) against torchdiffeq's ``dopri5`` (one
step size for the whole batch, error norm = RMS over every element of the batch), both at
rtol = atol = 1e-3 and 1e-5, on

(a) the probability-flow ODE of the exact denoiser of Gaussian data, N(μ, diag s²) in 64
    dimensions with s from 0.05 to 1 (closed-form endpoint at σ_min), and
(b) the DDPM digits U-Net (``conf/model/ddpm.yaml``), untrained (one Adam step) and briefly
    trained, against a tight-tolerance reference: dopri5 at 1e-8 (for the untrained net also the
    own solver at 1e-8, as a check of the reference; the trained net's reference takes ~5000
    evaluations, too slow to solve twice on two cores).

Everything runs in float64 with one thread, in log σ from σ_max to σ_min (as ``ode_sample``).
torchdiffeq is measured twice: on the batch (what a batched sampler would do; every sample pays
the batch's evaluations and its result depends on the batch) and one sample at a time (batch
independent, as genbench's protocol requires, at the price of batch-1 network calls).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bench_lib.common import (
    Check,
    Result,
    build_model,
    compose_train,
    dataset,
    log,
    make_optimizers,
    table,
)
from genbench.models.diffusion import unet
from genbench.models.diffusion.samplers import integrate_rk45, pf_ode_eps

TOLS = (1e-3, 1e-5)
REF_TOL = 1e-8
Drift = Callable[[Tensor, Tensor, Tensor], Tensor]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def own(drift: Drift, y0: Tensor, s0: float, s1: float, tol: float) -> tuple[Tensor, Tensor]:
    """(state at s1 [N, D], evaluations per sample [N]) of genbench's RK45."""
    return integrate_rk45(drift, y0, s0, s1, rtol=tol, atol=tol, max_steps=100_000)


def dopri5(drift: Drift, y0: Tensor, s0: float, s1: float, tol: float) -> tuple[Tensor, Tensor]:
    """(state at s1, evaluations per sample: the batch's count for every row) of torchdiffeq."""
    from torchdiffeq import odeint

    rows, calls = torch.arange(y0.shape[0]), [0]

    def f(s: Tensor, y: Tensor) -> Tensor:
        calls[0] += 1
        return drift(s.double().expand(y.shape[0]), y, rows)

    t = torch.tensor([s0, s1], dtype=torch.float64)
    y = odeint(f, y0, t, rtol=tol, atol=tol, method="dopri5")[-1]
    return y, torch.full((y0.shape[0],), float(calls[0]), dtype=torch.float64)


def dopri5_alone(
    drift: Drift, y0: Tensor, s0: float, s1: float, tol: float
) -> tuple[Tensor, Tensor]:
    """torchdiffeq one sample at a time (batch independent)."""
    outs, nfes = [], []
    for i in range(y0.shape[0]):

        def one(s: Tensor, y: Tensor, rows: Tensor, i: int = i) -> Tensor:
            return drift(s, y, rows + i)

        y, n = dopri5(one, y0[i : i + 1], s0, s1, tol)
        outs.append(y)
        nfes.append(n)
    return torch.cat(outs), torch.cat(nfes)


SOLVERS = {"own RK45 (per-sample steps)": own, "dopri5, batch": dopri5}
SOLVERS["dopri5, one sample at a time"] = dopri5_alone


def gaussian_problem(n: int) -> tuple[Drift, Tensor, float, float, Tensor]:
    """(drift dy/d log σ, y at σ_max [n, 64], log σ_max, log σ_min, exact y at σ_min)."""
    g = torch.Generator().manual_seed(0)
    d = 64
    mu = torch.rand(d, generator=g, dtype=torch.float64) - 0.5
    s = torch.logspace(math.log10(0.05), 0.0, d, dtype=torch.float64)
    s_max, s_min = 157.4, 0.01  # the linear-β DDPM's range, T = 1000
    y0 = torch.randn(n, d, generator=g, dtype=torch.float64) * math.sqrt(1 + s_max**2)

    def drift(log_sig: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        sig2 = log_sig.exp()[:, None] ** 2
        return y - (mu + s**2 / (s**2 + sig2) * (y - mu))  # y - D(y, σ)

    exact = mu + (y0 - mu) * ((s**2 + s_min**2) / (s**2 + s_max**2)).sqrt()
    return drift, y0, math.log(s_max), math.log(s_min), exact


def _float64_embedding(t: Tensor, dim: int) -> Tensor:
    """The U-Net's sinusoidal embedding in float64 for float64 times (the packaged one rounds t to
    float32), in float32 otherwise (training)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) / max(half - 1, 1) * torch.arange(half).double())
    args = t.double()[:, None] * freqs[None, :]
    emb = torch.nn.functional.pad(torch.cat([args.sin(), args.cos()], 1), (0, dim % 2))
    return emb if t.dtype == torch.float64 else emb.float()


def unet_problem(train_steps: int, n: int) -> tuple[Drift, Tensor, float, float]:
    """The digits DDPM after ``train_steps`` Adam steps (batch 128), in float64."""
    cfg = compose_train("model=ddpm", "dataset=digits")
    data = dataset("digits")
    model = build_model(cfg, data, torch.device("cpu"))
    opt = make_optimizers(model, cfg.optimizer)["main"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(max(train_steps, 1)):
        idx = torch.randint(0, data.train.shape[0], (128,), generator=gen)
        model.zero_grad(set_to_none=True)
        model.training_losses(data.train[idx].long())["loss"].mean().backward()
        opt.step()
    model = model.double().eval()
    proc, shape = model.process, model.shape

    def net(x: Tensor, t: Tensor) -> Tensor:
        return model.net(x, t.double())

    def drift(log_sig: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        sig = log_sig.exp()
        with torch.no_grad():
            eps = pf_ode_eps(net, proc, y.view(-1, *shape), sig).flatten(1)
        return sig[:, None] * eps

    s_max, s_min = float(proc.sigmas[-1]), float(proc.sigmas[0])
    y0 = torch.randn(n, math.prod(shape), generator=gen, dtype=torch.float64)
    return drift, y0 * math.sqrt(1 + s_max**2), math.log(s_max), math.log(s_min)


def _rows(problem: str, drift: Drift, y0: Tensor, s0: float, s1: float, ref: Tensor) -> list:
    """One table row per (solver, tolerance): error vs ``ref`` and NFE per sample, wall time."""
    rows, batch = [], {}
    for tol in TOLS:
        for name, fn in SOLVERS.items():
            log(f"ode: {problem}, {name}, tol {tol:g}")
            (y, nfe), sec = _timed(lambda fn=fn, tol=tol: fn(drift, y0, s0, s1, tol))
            err = (y - ref).abs().amax(1)
            batch[(name, tol)] = y
            rows.append(
                [
                    problem,
                    name,
                    f"{tol:g}",
                    f"{float(err.max()):.1e}",
                    f"{float(err.median()):.1e}",
                    f"{float(nfe.mean()):.0f} [{float(nfe.min()):.0f}-{float(nfe.max()):.0f}]",
                    f"{sec:.2f}",
                ]
            )
    return rows, batch


def run(quick: bool) -> Result:
    torch.set_num_threads(1)
    n_gauss, n_unet, train_steps = (16, 4, 200) if quick else (32, 8, 600)
    res = Result("9. Adaptive ODE solvers: own RK45 vs torchdiffeq dopri5 (float64, 1 thread)")
    drift, y0, s0, s1, exact = gaussian_problem(n_gauss)
    all_rows, diffs = [], []
    rows, ys = _rows(f"Gaussian, n={n_gauss}", drift, y0, s0, s1, exact)
    all_rows += rows
    diffs.append(("Gaussian", ys))
    saved = unet.timestep_embedding
    unet.timestep_embedding = _float64_embedding
    try:
        for steps in (0, train_steps):
            label = "U-Net untrained" if steps == 0 else f"U-Net {steps} steps"
            log(f"ode: {label}: training and the reference at tol {REF_TOL:g}")
            drift, y0, s0, s1 = unet_problem(steps, n_unet)
            ref, ref_nfe = dopri5(drift, y0, s0, s1, REF_TOL)
            note = f"{label}: reference dopri5 at {REF_TOL:g} took {ref_nfe[0]:.0f} evaluations"
            if steps == 0:
                own_ref, own_nfe = own(drift, y0, s0, s1, REF_TOL)
                gap = float((own_ref - ref).abs().max())
                note += f"; the own RK45 at {REF_TOL:g} ({own_nfe.mean():.0f}) is within {gap:.1e}"
            res.notes.append(note)
            rows, ys = _rows(f"{label}, n={n_unet}", drift, y0, s0, s1, ref)
            all_rows += rows
            diffs.append((label, ys))
    finally:
        unet.timestep_embedding = saved
    res.table = table(
        [
            "problem",
            "solver",
            "rtol = atol",
            "max error",
            "median error",
            "NFE per sample mean [min-max]",
            "wall s",
        ],
        all_rows,
    )
    for label, ys in diffs:
        for tol in TOLS:
            dep = float(
                (ys[("dopri5, batch", tol)] - ys[("dopri5, one sample at a time", tol)]).abs().max()
            )
            res.checks.append(
                Check(f"ode {label} tol {tol:g}: dopri5 batch vs alone, max |Δy|", f"{dep:.1e}")
            )
    res.notes.append(
        "Errors are max |y - y_ref| over the dimensions of a sample at σ_min (before the final "
        "denoising step), max and median over samples."
    )
    return res
