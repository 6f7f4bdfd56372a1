"""``check_model``: run the contract checks on a model and report each one."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from genbench.models.base import GenerativeModel
from genbench.testing.checks import (
    check_declares,
    check_losses,
    check_nll,
    check_phases,
    check_sample,
    check_state_dict,
)
from genbench.testing.conditional import check_conditional
from genbench.testing.likelihood import EXACT_TOLERANCE, check_enumeration, check_estimators
from genbench.testing.resume import check_resume
from genbench.testing.subject import (
    MAX_ENUMERATION,
    ConformanceError,
    Skipped,
    Subject,
)

#: the checks, in the order they run: name -> check (each docstring says what it asserts)
CHECKS: dict[str, Callable[[Subject], None]] = {
    "declares": check_declares,
    "losses": check_losses,
    "phases": check_phases,
    "sample": check_sample,
    "nll": check_nll,
    "enumeration": check_enumeration,
    "estimators": check_estimators,
    "state_dict": check_state_dict,
    "resume": check_resume,
    "conditional": check_conditional,
}

__all__ = [
    "CHECKS",
    "EXACT_TOLERANCE",
    "MAX_ENUMERATION",
    "ConformanceError",
    "Subject",
    "check_model",
]


def check_model(
    model: Callable[..., GenerativeModel],
    shape: Sequence[int] = (1, 4, 4),
    levels: int = 4,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    seed: int = 0,
    exact_shape: Sequence[int] | None = None,
    exact_levels: int | None = None,
    estimator_options: Mapping[str, Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> dict[str, str]:
    """Run the contract checks (:data:`CHECKS`) on CPU; raise at the first failure.

    Args:
        model: a :class:`~genbench.models.base.GenerativeModel` subclass, or any callable
            ``model(shape=..., levels=..., **kwargs)`` returning one.
        shape: ``(C, H, W)`` of the random data most checks use (keep it tiny).
        levels: K, levels per sub-pixel.
        only: run just these checks (names from :data:`CHECKS`), in their usual order.
        skip: checks not to run.
        seed: seed of the weights (other seeds derive from it).
        exact_shape, exact_levels: the size whose every input the ``enumeration`` check scores
            (default: the first of ``shape``, ``(C, 2, 2)``, ``(C, 1, 1)`` with at most
            :data:`MAX_ENUMERATION` inputs, at the most levels that allows).
        estimator_options: keyword options per likelihood estimator name.
        kwargs: the model's own constructor arguments.

    Returns:
        ``{check: "passed" | "skipped: <why>"}`` in running order.

    Raises:
        ConformanceError: naming the model, the first failing check and what is wrong.
        ValueError: for a check name that does not exist.
    """
    names = list(CHECKS) if only is None else list(only)
    unknown = sorted((set(names) | set(skip)) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; valid: {list(CHECKS)}")
    if len(tuple(shape)) != 3:
        raise ValueError(f"shape must be (C, H, W), got {tuple(shape)}")
    subject = Subject(
        model,
        tuple(int(v) for v in shape),
        int(levels),
        dict(kwargs),
        int(seed),
        tuple(exact_shape) if exact_shape is not None else None,
        exact_levels,
        dict(estimator_options or {}),
    )
    report: dict[str, str] = {}
    for name, check in CHECKS.items():
        if name not in names or name in set(skip):
            continue
        try:
            check(subject)
        except Skipped as why:
            report[name] = f"skipped: {why}"
            continue
        except ConformanceError as err:
            raise ConformanceError(
                f"{subject.name} fails the genbench contract check {name!r}: {err}"
            ) from err.__cause__
        except Exception as err:  # noqa: BLE001  (the model's own error, with its traceback)
            raise ConformanceError(
                f"{subject.name} fails the genbench contract check "
                f"{name!r}: {type(err).__name__}: {err}"
            ) from err
        report[name] = "passed"
    return report
