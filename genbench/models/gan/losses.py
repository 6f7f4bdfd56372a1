"""GAN objectives as tiny functions of discriminator outputs, each returning per-example terms.

Notation: ``real`` = D(x) ``[N]`` on data, ``fake`` = D(G(z)) ``[N]`` on generated samples; both
are raw, unbounded outputs (logits for the non-saturating loss, critic values for Wasserstein and
hinge). Every function returns ``[N]`` terms; the runner takes the mean. The discriminator losses
are functions of both batches, paired row by row (real and fake batches have the same size).

- non-saturating (Goodfellow et al. 2014, used by DCGAN, Radford et al. 2016):
  L_D = -log σ(D(x)) - log(1 - σ(D(G(z)))),  L_G = -log σ(D(G(z)))
- hinge (Lim & Ye 2017; Miyato et al. 2018): L_D = max(0, 1 - D(x)) + max(0, 1 + D(G(z))),
  L_G = -D(G(z))
- Wasserstein (Arjovsky et al. 2017): L_D = D(G(z)) - D(x), L_G = -D(G(z))
- gradient penalty (Gulrajani et al. 2017, eq. 3): λ (‖∇_x̂ D(x̂)‖₂ - 1)² at x̂ = ε x + (1 - ε) x̃
- R1 / R2 (Mescheder et al. 2018, eq. 9 and 10): γ/2 ‖∇_x D(x)‖₂² at the real data (R1) or at
  the generated samples (R2)

``D_LOSSES`` / ``G_LOSSES`` look the pairs up by name; ``REGULARIZERS`` names the penalties a GAN's
``model.reg`` may choose (``none`` adds nothing).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def d_nonsaturating(real: Tensor, fake: Tensor) -> Tensor:
    """``[N]`` -log σ(real) - log(1 - σ(fake)) = softplus(-real) + softplus(fake) (nats)."""
    return F.softplus(-real) + F.softplus(fake)


def g_nonsaturating(fake: Tensor) -> Tensor:
    """``[N]`` -log σ(fake) = softplus(-fake) (nats): the generator maximizes log D(G(z))."""
    return F.softplus(-fake)


def d_hinge(real: Tensor, fake: Tensor) -> Tensor:
    """``[N]`` max(0, 1 - real) + max(0, 1 + fake)."""
    return F.relu(1.0 - real) + F.relu(1.0 + fake)


def g_hinge(fake: Tensor) -> Tensor:
    """``[N]`` -fake (the hinge generator loss is the Wasserstein one)."""
    return -fake


def d_wasserstein(real: Tensor, fake: Tensor) -> Tensor:
    """``[N]`` fake - real: minus the critic's per-pair estimate of the Wasserstein-1 distance."""
    return fake - real


def g_wasserstein(fake: Tensor) -> Tensor:
    """``[N]`` -fake."""
    return -fake


D_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "nonsaturating": d_nonsaturating,
    "hinge": d_hinge,
    "wasserstein": d_wasserstein,
}
G_LOSSES: dict[str, Callable[[Tensor], Tensor]] = {
    "nonsaturating": g_nonsaturating,
    "hinge": g_hinge,
    "wasserstein": g_wasserstein,
}


def interpolate(real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    """x̂ = ε x + (1 - ε) x̃ with one ε ``[N]`` in [0, 1] per row; returns the shape of ``real``."""
    eps = eps.reshape(-1, *([1] * (real.ndim - 1))).to(real.dtype)
    return eps * real + (1.0 - eps) * fake


REGULARIZERS = ("none", "r1", "r2", "gp")


def input_gradient(critic: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, bool]:
    """``(∇_x D(x), train)``: the gradient ``[N, ...]`` of the summed critic output at ``x``.

    ``x`` is detached first; when gradients are enabled (``train``) the result keeps its graph
    (``create_graph``), so a penalty built from it reaches the critic's parameters. Under
    ``torch.no_grad`` / ``inference_mode`` it is still computed, without a graph. Rows must not
    interact in ``critic`` (no batch norm) for row i to be D's own input gradient at x_i.
    """
    train = torch.is_grad_enabled()
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        out = critic(x)
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=train)
    return grad, train


def r1_penalty(critic: Callable[[Tensor], Tensor], x: Tensor, weight: float = 10.0) -> Tensor:
    """``[N]`` γ/2 ‖∇_x D(x)‖₂² (Mescheder et al. 2018): R1 when ``x`` are real data, R2 when
    they are generated samples (the formula is the same, only the points differ).

    Args:
        critic: maps ``[N, ...]`` to ``[N]``.
        x: ``[N, ...]`` points where the penalty is taken (detached from any graph).
        weight: γ.
    """
    grad, train = input_gradient(critic, x)
    penalty = 0.5 * weight * grad.flatten(1).pow(2).sum(1)
    return penalty if train else penalty.detach()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], x_hat: Tensor, weight: float = 10.0
) -> Tensor:
    """``[N]`` λ (‖∇_x̂ D(x̂)‖₂ - 1)², the two-sided penalty of WGAN-GP.

    Args:
        critic: maps ``[N, ...]`` to ``[N]``; rows must not interact (no batch norm), so the
            gradient of the summed output is each row's own input gradient.
        x_hat: ``[N, ...]`` points where the penalty is taken (detached from any graph).
        weight: λ (10 in Gulrajani et al. 2017).

    When gradients are enabled the penalty keeps its graph (``create_graph``), so its gradient
    reaches the critic's parameters. Under ``torch.no_grad`` / ``inference_mode`` (validation) it
    is still computed, on a detached copy, and returned without a graph.
    """
    grad, train = input_gradient(critic, x_hat)
    norm = grad.flatten(1).norm(dim=1)  # ‖∇_x̂ D(x̂)‖₂, [N]
    penalty = weight * (norm - 1.0) ** 2
    return penalty if train else penalty.detach()
