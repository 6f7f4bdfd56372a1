"""Where training left the model: the numbers a model reports through
:meth:`~genbench.models.base.GenerativeModel.training_state` (a GAN's final ADA probability),
recorded as metrics of split ``train``. They describe the run, not its quality: never ranked,
shown in an optional leaderboard column where some run has them."""

from __future__ import annotations

import math

from genbench.eval.context import EvalContext
from genbench.eval.metric import Column, Metric, MetricSpec
from genbench.eval.registry import register_metric, register_spec

ADA_P = register_spec(
    MetricSpec(
        name="ada_p",
        lower_is_better=None,
        label="ADA p",
        column=Column(order=80, optional=True),
    )
)


@register_metric("training_state", order=5)
def training_state(ctx: EvalContext) -> list[Metric]:
    """One ``train`` metric per entry of the model's ``training_state()`` (finite numbers)."""
    rows = []
    for name, value in ctx.model.training_state().items():
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"training_state()[{name!r}] = {value!r} is not a finite number")
        rows.append(Metric(name, v, "measured", "train", 0, "", {}))
    return rows
