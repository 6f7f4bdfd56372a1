"""User-facing errors: printed as one clear sentence, without a traceback, exit code 2."""

from __future__ import annotations

import math
from typing import Any


class UserError(Exception):
    """A mistake in the user's input (a config value, a path, a file)."""


class ConfigError(UserError):
    """A config key holds a bad value."""


def bad_value(key: str, value: Any, expected: str) -> ConfigError:
    """``ConfigError`` naming the key, the bad value and what is valid."""
    return ConfigError(f"{key}={value!r} is invalid: expected {expected}")


#: the largest seed accepted (torch and numpy generators both take 32-bit seeds everywhere)
MAX_SEED = 2**32 - 1


def seed_int(key: str, value: Any) -> int:  # noqa: ANN401
    """``value`` as a seed in [0, MAX_SEED], or a ``ConfigError`` naming ``key``."""
    out = positive_int(key, value, minimum=0)
    if out > MAX_SEED:
        raise bad_value(key, value, f"an integer in [0, {MAX_SEED}]")
    return out


def positive_int(key: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a ``ConfigError`` naming ``key``."""
    if isinstance(value, bool):
        raise bad_value(key, value, f"an integer >= {minimum}")
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise bad_value(key, value, f"an integer >= {minimum}") from None
    if out != value and not (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        raise bad_value(key, value, f"an integer >= {minimum}")
    if out < minimum:
        raise bad_value(key, value, f"an integer >= {minimum}")
    return out


def nonneg_float(
    key: str, value: Any, *, positive: bool = False, maximum: float | None = None
) -> float:
    """``value`` as a finite float (> 0 if ``positive``, else >= 0), or a ``ConfigError``
    naming ``key``."""
    what = "a finite number > 0" if positive else "a finite number >= 0"
    if maximum is not None:
        what += f" and <= {maximum}"
    if isinstance(value, bool):
        raise bad_value(key, value, what)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise bad_value(key, value, what) from None
    if (
        not math.isfinite(out)
        or out < 0
        or (positive and out == 0)
        or (maximum is not None and out > maximum)
    ):
        raise bad_value(key, value, what)
    return out


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: the process stops cleanly and exits with 128 + the signal."""

    def __init__(self, signum: int = 2) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
