"""``model.toy``: the settings a GAN uses on 2-D toy data, kept in the same yaml as its image
settings and chosen from the data (``H = W = 1``, :func:`genbench.data.base.is_toy`).

A GAN subclass's ``__init__`` is wrapped (by :class:`~genbench.models.gan.base.GAN`'s
``__init_subclass__``) so that, when the data are toys, the ``toy`` mapping is merged into its
keyword arguments before it runs: mappings key by key (``toy: {d_optimizer: {lr: 1e-3}}`` keeps
the yaml's betas), anything else replaced. ``inspect.signature`` still sees the subclass's own
signature, so config validation is unchanged. On toys the ``toy`` values win over the same keys
set elsewhere (``model.hidden=64`` on the command line included): set ``model.toy.hidden=64``,
or ``model.toy=null`` to train a toy with the image settings. The merge is logged.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from genbench.data.base import is_toy
from genbench.models.options import OptionError

log = logging.getLogger(__name__)


def plain(value: Any) -> Any:  # noqa: ANN401
    """Mappings (``DictConfig`` included) and sequences as plain dicts and lists."""
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value


def _merge(base: Any, over: Any) -> Any:  # noqa: ANN401
    """``over`` merged into ``base``: mappings key by key (recursively), anything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


def toy_overrides(
    init: Callable[..., None], shape: Sequence[int], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``kwargs`` of a GAN constructor with its ``toy`` overrides merged in when ``shape`` is a
    2-D toy's (``H = W = 1``); unchanged otherwise. A key that is not a parameter of ``init`` is
    an :class:`~genbench.models.options.OptionError` naming ``model.toy.<key>``."""
    toy = kwargs.get("toy")
    if not toy:
        return kwargs
    if not (isinstance(toy, Mapping) or hasattr(toy, "items")):
        raise OptionError("model.toy", toy, f"model.toy={toy!r} is invalid: expected a mapping")
    toy = plain(toy)
    params = inspect.signature(init).parameters
    valid = [n for n in params if n not in ("self", "shape", "levels", "toy")]
    valid = [n for n in valid if params[n].kind is not inspect.Parameter.VAR_KEYWORD]
    for key, value in toy.items():
        if key not in valid:
            raise OptionError(
                f"model.toy.{key}",
                value,
                f"model.toy.{key}={value!r}: {key!r} is not an option of this model; "
                f"valid: {', '.join(sorted(valid))}",
            )
    if not is_toy(shape):
        return kwargs
    out = dict(kwargs)
    for key, value in toy.items():
        current = out.get(key, params[key].default)
        current = None if current is inspect.Parameter.empty else plain(current)
        out[key] = _merge(current, value)
    log.info(
        "2-D toy data: model.toy settings used (model.toy=null keeps the others): %s",
        ", ".join(f"{k}={v}" for k, v in toy.items()),
    )
    return out


def applying_toy_overrides(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a GAN subclass's ``__init__`` so its ``toy`` overrides are merged in first (see
    :func:`toy_overrides`); the signature seen by ``inspect`` (config validation) is ``init``'s."""
    if getattr(init, "applies_toy_overrides", False):
        return init

    @functools.wraps(init)
    def wrapper(
        self: nn.Module, shape: Sequence[int], levels: int, *args: Any, **kwargs: Any
    ) -> None:
        init(self, shape, levels, *args, **toy_overrides(init, shape, kwargs))

    wrapper.applies_toy_overrides = True  # type: ignore[attr-defined]
    return wrapper
