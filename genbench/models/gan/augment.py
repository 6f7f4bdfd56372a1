"""Differentiable augmentations of the images a GAN discriminator sees: DiffAugment and ADA.

Both act on ``[N, C, H, W]`` floats in ``[-1, 1]`` (the GAN's data space) and are applied to real
*and* generated images, in the D phase and in the G phase alike, so the generator is not
pushed to produce augmented images: D only ever sees augmented ones. Every operation is
differentiable with respect to the images (indexing, masks, affine colour maps), so the
generator's gradient passes through. Random draws come from the ``generator`` argument (or
the global RNG) and depend only on the batch size and image shape, never on the pixels: the
same seed gives the same transforms for a real and a fake batch.

- :class:`DiffAugment` (Zhao et al. 2020): every transform of the policy on every image:
  ``color`` (brightness + (u - 0.5), saturation x 2u about the channel mean, contrast x (u + 0.5)
  about the image mean, u ~ U[0, 1)), ``translation`` (integer shifts up to 1/8 of the size,
  zero padding), ``cutout`` (a zeroed square of half the size).
- :class:`ADA` (Karras et al. 2020): each transform of its pipeline applied to an image with
  probability p: ``xflip``, ``rotate90`` (k · 90°), ``translation`` (integer, up to 1/8 of the
  size, reflection padding), ``brightness`` (+ N(0, 0.2)), ``contrast`` (x lognormal, std
  0.5 ln 2), ``saturation`` (x lognormal, std ln 2), ``cutout``. p starts at 0 and is adjusted
  from the overfitting heuristic r_t = E[sign(D(x_real))]: every ``interval`` D steps,
  p += sign(r_t - target) · (images seen in those steps) / ``speed_images``, clamped to [0, 1]
  (target 0.6 and ``speed_images`` = 500k images for p to go from 0 to 1 in the paper). p and
  the sign accumulators are buffers: checkpointed, and a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from genbench.models.options import OptionError, option_choice, option_number

AUGMENTS = ("none", "diffaugment", "ada")
DIFFAUGMENT_POLICY = ("color", "translation", "cutout")
ADA_TRANSFORMS = (
    "xflip",
    "rotate90",
    "translation",
    "brightness",
    "contrast",
    "saturation",
    "cutout",
)
#: ADA's settings and their defaults (``model.ada.<key>``)
ADA_DEFAULTS: dict[str, Any] = {
    "target": 0.6,  # r_t the heuristic steers towards
    "interval": 4,  # D steps between adjustments of p
    "speed_images": 500_000,  # images over which p can move from 0 to 1
    "p": 0.0,  # initial p
    "transforms": list(ADA_TRANSFORMS),
}


# -- draws and primitives ------------------------------------------------------------------------
def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``[n]`` U[0, 1) from ``generator`` (on its device) or the global RNG of ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=where).to(device)


def _randn(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    where = generator.device if generator is not None else device
    return torch.randn(n, generator=generator, device=where).to(device)


def _reflect(i: Tensor, size: int) -> Tensor:
    """Indices reflected into ``[0, size)`` (mirror without repeating the edge)."""
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * (size - 1)
    i = i.remainder(period)
    return torch.where(i >= size, period - i, i)


def translate(y: Tensor, dx: Tensor, dy: Tensor, padding: str = "zeros") -> Tensor:
    """``y`` ``[N, C, H, W]`` shifted by integer ``dx``, ``dy`` ``[N]`` pixels (right, down);
    uncovered pixels are 0 (``zeros``) or mirrored (``reflect``). A gather: differentiable."""
    n, c, h, w = y.shape
    rows = torch.arange(h, device=y.device)[None] - dy.long()[:, None]  # source rows [N, H]
    cols = torch.arange(w, device=y.device)[None] - dx.long()[:, None]  # source cols [N, W]
    if padding == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
        valid = None
    else:
        valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    index = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    out = y.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)
    return out if valid is None else out * valid[:, None].to(y.dtype)


def cutout(y: Tensor, cx: Tensor, cy: Tensor, size: tuple[int, int], keep: Tensor) -> Tensor:
    """``y`` ``[N, C, H, W]`` with a ``size`` = (h, w) rectangle centred at integer ``(cx, cy)``
    ``[N]`` set to 0, on the rows where ``keep`` ``[N]`` (bool) is False."""
    n, _, h, w = y.shape
    rows = torch.arange(h, device=y.device)[None] - (cy.long() - size[0] // 2)[:, None]
    cols = torch.arange(w, device=y.device)[None] - (cx.long() - size[1] // 2)[:, None]
    inside = ((rows >= 0) & (rows < size[0]))[:, :, None] & ((cols >= 0) & (cols < size[1]))[
        :, None, :
    ]
    mask = ~(inside & ~keep[:, None, None])  # [N, H, W]: 0 inside a cut
    return y * mask[:, None].to(y.dtype)


def _rows(v: Tensor) -> Tensor:
    return v[:, None, None, None]


def _shift_limit(size: int, ratio: float = 0.125) -> int:
    return int(size * ratio + 0.5) if size > 1 else 0


# -- DiffAugment ---------------------------------------------------------------------------------
class DiffAugment(nn.Module):
    """DiffAugment (Zhao et al. 2020) with ``policy`` a subset of ``color``, ``translation``,
    ``cutout``; stateless. ``forward(y, generator)`` = ``apply(y, draw(...))``."""

    def __init__(self, policy: Sequence[str] = DIFFAUGMENT_POLICY) -> None:
        super().__init__()
        policy = list(policy)
        for name in policy:
            option_choice("model.diffaugment", name, DIFFAUGMENT_POLICY)
        self.policy = tuple(policy)

    def draw(
        self,
        n: int,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, Tensor]:
        """The transform parameters of ``n`` images of ``shape`` ``(C, H, W)``: ``[N]`` each.
        Always the same number of draws, whatever the policy."""
        device = torch.device(device)
        _, h, w = shape
        u = [_rand(n, generator, device) for _ in range(7)]
        sh, sw = _shift_limit(h), _shift_limit(w)
        return {
            "brightness": u[0] - 0.5,
            "saturation": 2 * u[1],
            "contrast": u[2] + 0.5,
            "dx": torch.floor(u[3] * (2 * sw + 1)) - sw,
            "dy": torch.floor(u[4] * (2 * sh + 1)) - sh,
            "cx": torch.floor(u[5] * w),
            "cy": torch.floor(u[6] * h),
        }

    def apply(self, y: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """``y`` ``[N, C, H, W]`` transformed by ``params`` (from :meth:`draw`)."""
        _, _, h, w = y.shape
        if "color" in self.policy:
            y = y + _rows(params["brightness"])
            mean = y.mean(1, keepdim=True)
            y = (y - mean) * _rows(params["saturation"]) + mean
            mean = y.mean((1, 2, 3), keepdim=True)
            y = (y - mean) * _rows(params["contrast"]) + mean
        if "translation" in self.policy:
            y = translate(y, params["dx"], params["dy"], "zeros")
        if "cutout" in self.policy and h > 1 and w > 1:
            keep = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
            y = cutout(y, params["cx"], params["cy"], (h // 2, w // 2), keep)
        return y

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``y`` ``[N, C, H, W]`` in ``[-1, 1]`` through the policy, parameters drawn from
        ``generator`` (or the global RNG)."""
        params = self.draw(y.shape[0], y.shape[1:], generator=generator, device=y.device)
        return self.apply(y, params)


# -- ADA -----------------------------------------------------------------------------------------
def ada_settings(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``model.ada`` over :data:`ADA_DEFAULTS`, checked (errors name ``model.ada.<key>``)."""
    given = dict(options or {})
    for key in given:
        if key not in ADA_DEFAULTS:
            raise OptionError(
                f"model.ada.{key}",
                given[key],
                f"model.ada.{key}={given[key]!r}: {key!r} is not an ADA setting; "
                f"valid: {', '.join(ADA_DEFAULTS)}",
            )
    out = {**ADA_DEFAULTS, **given}
    out["target"] = option_number("model.ada.target", out["target"], low=0, high=1)
    out["interval"] = int(option_number("model.ada.interval", out["interval"], low=1, integer=True))
    out["speed_images"] = option_number(
        "model.ada.speed_images", out["speed_images"], low=0, low_open=True
    )
    out["p"] = option_number("model.ada.p", out["p"], low=0, high=1)
    out["transforms"] = [
        option_choice("model.ada.transforms", t, ADA_TRANSFORMS) for t in list(out["transforms"])
    ]
    return out


class ADA(nn.Module):
    """Adaptive discriminator augmentation (Karras et al. 2020); see the module docstring.

    Buffers: ``p`` (probability of each transform), ``sign_sum`` and ``sign_count`` (Σ
    sign(D(x_real)) and the number of images since the last adjustment), ``steps`` (observed D
    steps since then) and ``rt`` (the last r_t, NaN before the first adjustment).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__()
        s = ada_settings(options)
        self.target, self.interval = s["target"], s["interval"]
        self.speed_images, self.transforms = s["speed_images"], tuple(s["transforms"])
        self.register_buffer("p", torch.tensor(s["p"], dtype=torch.float64))
        self.register_buffer("sign_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sign_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("rt", torch.tensor(math.nan, dtype=torch.float64))

    def observe(self, real_out: Tensor) -> None:
        """Accumulate sign(D(x_real)) of one D step (``real_out`` ``[N]``) and adjust ``p`` when
        ``interval`` steps have been seen."""
        with torch.no_grad():
            self.sign_sum += real_out.detach().sign().sum().double()
            self.sign_count += real_out.shape[0]
            self.steps += 1
            if int(self.steps) < self.interval:
                return
            rt = self.sign_sum / self.sign_count.clamp(min=1)
            step = torch.sign(rt - self.target) * self.sign_count.double() / self.speed_images
            self.p.copy_((self.p + step).clamp(0.0, 1.0))
            self.rt.copy_(rt)
            self.sign_sum.zero_()
            self.sign_count.zero_()
            self.steps.zero_()

    def draw(
        self,
        n: int,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, Tensor]:
        """Transform parameters ``[N]`` for ``n`` images of ``shape`` ``(C, H, W)``; ``on_<t>``
        (bool) says whether transform t applies to an image (probability p). The same number of
        draws for every p and pipeline."""
        device = torch.device(device)
        _, h, w = shape
        p = float(self.p)
        on = {t: _rand(n, generator, device) < p for t in ADA_TRANSFORMS}
        u = [_rand(n, generator, device) for _ in range(6)]
        z = [_randn(n, generator, device) for _ in range(3)]
        sh, sw = _shift_limit(h), _shift_limit(w)
        return {
            **{f"on_{t}": v for t, v in on.items()},
            "rotate90": torch.floor(u[0] * 4),
            "dx": torch.floor(u[1] * (2 * sw + 1)) - sw,
            "dy": torch.floor(u[2] * (2 * sh + 1)) - sh,
            "cx": torch.floor(u[3] * w),
            "cy": torch.floor(u[4] * h),
            "brightness": 0.2 * z[0],
            "contrast": torch.exp2(0.5 * z[1]),
            "saturation": torch.exp2(z[2]),
        }

    def apply(self, y: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """``y`` ``[N, C, H, W]`` through the pipeline with ``params`` (from :meth:`draw`)."""
        _, _, h, w = y.shape
        t = self.transforms

        def on(name: str) -> Tensor:
            """``[N, 1, 1, 1]`` 1.0 where transform ``name`` applies, else 0.0."""
            return _rows(params[f"on_{name}"].to(y.dtype))

        if "xflip" in t:
            y = torch.where(_rows(params["on_xflip"]), y.flip(3), y)
        if "rotate90" in t and h == w:
            k = params["rotate90"] * params["on_rotate90"]
            rotated = [y] + [torch.rot90(y, r, dims=(2, 3)) for r in (1, 2, 3)]
            y = sum(_rows((k == r).to(y.dtype)) * rotated[r] for r in range(4))
        if "translation" in t:
            keep = params["on_translation"]
            y = translate(y, params["dx"] * keep, params["dy"] * keep, "reflect")
        if "brightness" in t:
            y = y + on("brightness") * _rows(params["brightness"])
        if "contrast" in t:
            mean = y.mean((1, 2, 3), keepdim=True)
            y = (y - mean) * (1 + on("contrast") * (_rows(params["contrast"]) - 1)) + mean
        if "saturation" in t:
            mean = y.mean(1, keepdim=True)
            y = (y - mean) * (1 + on("saturation") * (_rows(params["saturation"]) - 1)) + mean
        if "cutout" in t and h > 1 and w > 1:
            y = cutout(y, params["cx"], params["cy"], (h // 2, w // 2), ~params["on_cutout"])
        return y

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``y`` ``[N, C, H, W]`` in ``[-1, 1]`` through the pipeline, parameters drawn from
        ``generator`` (or the global RNG); at p = 0 ``y`` itself (no draws, no rounding)."""
        if float(self.p) == 0.0:
            return y
        params = self.draw(y.shape[0], y.shape[1:], generator=generator, device=y.device)
        return self.apply(y, params)


def build_augment(
    kind: str, *, diffaugment: Sequence[str] = DIFFAUGMENT_POLICY, ada: Mapping[str, Any] | None
) -> nn.Module | None:
    """The pipeline ``model.augment`` names (``none``: ``None``)."""
    kind = option_choice("model.augment", kind, AUGMENTS)
    if kind == "diffaugment":
        return DiffAugment(diffaugment)
    if kind == "ada":
        return ADA(**dict(ada or {}))
    ada_settings(ada)  # checked even when unused: a typo is reported at once
    return None
