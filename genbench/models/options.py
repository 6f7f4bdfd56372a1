"""Checked sampler and estimator options: a bad one is one sentence naming its config key.

A model validates the options it is sampled with in a classmethod
(:meth:`~genbench.models.base.GenerativeModel.validate_sampler`) that needs no weights, so
``genbench train`` refuses ``sampler.eta=-1`` when it starts instead of after training. The
helpers below turn one option into a checked value or raise :class:`OptionError`, which is both
a :class:`ValueError` (for code calling a model) and a :class:`~genbench.errors.ConfigError`
(printed without a traceback, exit code 2, by the command line).

>>> option_number("sampler.eta", 0.5, low=0, high=1)
0.5
>>> option_number("sampler.eta", float("nan"), low=0, high=1)
Traceback (most recent call last):
...
genbench.models.options.OptionError: sampler.eta=nan is invalid: expected a finite number in [0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from genbench.errors import ConfigError


class OptionError(ConfigError, ValueError):
    """An option a model does not accept. ``key`` is its config key (``sampler.eta``)."""

    def __init__(self, key: str, value: Any, message: str) -> None:  # noqa: ANN401
        super().__init__(message)
        self.key, self.value = key, value


def bad_option(key: str, value: Any, expected: str) -> OptionError:  # noqa: ANN401
    """``key=value is invalid: expected <expected>``."""
    return OptionError(key, value, f"{key}={value!r} is invalid: expected {expected}")


def _range(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"<= {high:g}" if high is not None else ""


def option_number(
    key: str,
    value: Any,
    *,
    low: float | None = None,  # noqa: ANN401
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
) -> float:
    """``value`` as a finite number (an integral one when ``integer``) in the given range, or an
    :class:`OptionError` naming ``key``."""
    what = ("an integer" if integer else "a finite number") + (
        f" {_range(low, high, low_open)}" if low is not None or high is not None else ""
    )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_option(key, value, what)
    if not math.isfinite(value) or (integer and value != int(value)):
        raise bad_option(key, value, what)
    if (low is not None and (value < low or (low_open and value == low))) or (
        high is not None and value > high
    ):
        raise bad_option(key, value, what)
    return int(value) if integer else float(value)


def option_choice(key: str, value: Any, choices: Sequence[str]) -> str:  # noqa: ANN401
    """``value`` if it is one of ``choices``, else an :class:`OptionError` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise bad_option(key, value, "one of " + ", ".join(choices))
    return value


def option_bool(key: str, value: Any) -> bool:  # noqa: ANN401
    """``value`` if it is ``true`` or ``false``, else an :class:`OptionError`."""
    if not isinstance(value, bool):
        raise bad_option(key, value, "true or false")
    return value


def unknown_options(
    options: Mapping[str, Any], allowed: Iterable[str], owner: str, *, prefix: str = "sampler"
) -> None:
    """Raise an :class:`OptionError` for the first option ``owner`` does not understand."""
    allowed = sorted(set(allowed))
    unknown = sorted((str(k), k) for k in options if k not in allowed)
    if unknown:
        name, value = unknown[0][0], options[unknown[0][1]]
        key = f"{prefix}.{name}"
        raise OptionError(
            key,
            value,
            f"{key}={value!r}: option {name!r} is not understood by "
            f"{owner}; valid: {', '.join(allowed) or 'none'}",
        )
