"""Models from other packages: registered through entry points, found with ``importlib.metadata``.

A package puts its model into the benchmark by declaring, in its ``pyproject.toml``::

    [project.entry-points."genbench.models"]
    tinyflow = "mylab.models:TinyFlow"        # name = the model's yaml, value = its class

    [project.entry-points."genbench.configs"]
    mylab = "mylab.genbench_conf"             # a package holding model/tinyflow.yaml

After ``pip install``, ``genbench train model=tinyflow`` composes ``model/tinyflow.yaml`` from the
package's config folder (added to Hydra's search path by the CLI), the class joins the allowlist of
objects a stored run config may build (:mod:`genbench.trust`), and ``genbench families`` lists it.
Only installed packages register: nothing in a run folder can add to the list.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re

log = logging.getLogger(__name__)

MODELS_GROUP = "genbench.models"
CONFIGS_GROUP = "genbench.configs"
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def config_packages() -> list[str]:
    """The config packages of installed plugins (``genbench.configs`` entry points), in
    distribution order; malformed values are skipped with a warning. Imports nothing."""
    out = []
    for ep in importlib.metadata.entry_points(group=CONFIGS_GROUP):
        if _MODULE.match(ep.value):
            out.append(ep.value)
        else:
            log.warning(
                "ignoring the genbench.configs entry point %s = %r: not a package name",
                ep.name,
                ep.value,
            )
    return out


def search_path_override() -> str | None:
    """``hydra.searchpath=[pkg://...]`` for the installed plugins' configs (None without any)."""
    packages = config_packages()
    return f"hydra.searchpath=[{','.join(f'pkg://{p}' for p in packages)}]" if packages else None


@functools.cache
def plugin_models() -> dict[str, type]:
    """``{name: class}`` for every ``genbench.models`` entry point whose class loads and is a
    :class:`~genbench.models.base.GenerativeModel`; others are skipped with a warning."""
    from genbench.models.base import GenerativeModel

    out: dict[str, type] = {}
    for ep in importlib.metadata.entry_points(group=MODELS_GROUP):
        try:
            cls = ep.load()
        except Exception as err:  # noqa: BLE001  (a broken plugin must not break genbench)
            log.warning(
                "the genbench model plugin %s = %r cannot be loaded: %s", ep.name, ep.value, err
            )
            continue
        if not (isinstance(cls, type) and issubclass(cls, GenerativeModel)):
            log.warning(
                "the genbench model plugin %s = %r is not a GenerativeModel subclass",
                ep.name,
                ep.value,
            )
            continue
        out[ep.name] = cls
    return out


def plugin_source(name: str) -> str | None:
    """``"<distribution> <version>"`` of the installed package whose ``genbench.models`` entry
    point is named ``name`` (None when none is): recorded with every run of a plugin model and
    shown by ``genbench families``. Imports nothing."""
    found = None
    for ep in importlib.metadata.entry_points(group=MODELS_GROUP, name=name):
        dist = getattr(ep, "dist", None)  # the last one wins, as in plugin_models
        found = f"{dist.name} {dist.version}" if dist is not None else ep.value
    return found


def target_name(cls: type) -> str:
    """The ``_target_`` string that names ``cls``."""
    return f"{cls.__module__}.{cls.__qualname__}"
