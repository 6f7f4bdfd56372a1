"""The data scale of the diffusion-family models (DDPM, EDM, flow matching): level k of K sits
at 2k/(K-1) - 1 in ``[-1, 1]``, and a generated float goes back to the nearest level."""

from __future__ import annotations

from torch import Tensor


class SignedUnitLevels:
    """Mixin of a :class:`~genbench.models.base.GenerativeModel` (it reads ``self.levels`` and the
    module's parameters) that scales integer levels to ``[-1, 1]`` and back."""

    levels: int

    def _param(self) -> Tensor:
        """The first parameter: its dtype and device are the model's."""
        return next(self.parameters())  # type: ignore[attr-defined]

    def to_unit(self, x: Tensor) -> Tensor:
        """Levels ``[N, C, H, W]`` → floats (the parameters' dtype) in ``[-1, 1]``: 2k/(K-1) - 1."""
        return x.to(self._param().dtype) * (2.0 / (self.levels - 1)) - 1.0

    def to_levels(self, x: Tensor) -> Tensor:
        """``[-1, 1]`` floats ``[N, C, H, W]`` → int64 levels in ``[0, K)`` (rounded, clamped)."""
        return ((x + 1) * ((self.levels - 1) / 2)).round().clamp(0, self.levels - 1).long()
