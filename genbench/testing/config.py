"""``from_config``: build a model from its yaml exactly as ``genbench train`` does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from genbench.models.base import GenerativeModel


def from_config(name: str, overrides: Sequence[str] = ()) -> Callable[..., GenerativeModel]:
    """A factory for :func:`~genbench.testing.check_model` that builds ``model=<name>`` as the
    runner does: ``conf/model/<name>.yaml`` composed from genbench's config tree and the config
    packages of installed plugins (``genbench.configs`` entry points), with ``overrides`` such as
    ``model.hidden=8``, then instantiated by Hydra with the data's shape and levels.

    Unlike passing the class, this also checks the yaml: its ``_target_``, its keys, and the
    ``DictConfig`` / ``ListConfig`` values Hydra hands the constructor."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from genbench.plugins import search_path_override

    search = search_path_override()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module("genbench.conf", version_base="1.3"):
        cfg = compose(
            "train", overrides=[*([search] if search else []), f"model={name}", *overrides]
        )
    from genbench.build import model_node

    node, _ = model_node(cfg.model)

    def build(shape: Sequence[int], levels: int, **kwargs: Any) -> GenerativeModel:
        return instantiate(node, shape=shape, levels=levels, **kwargs)

    build.__qualname__ = f"model={name}"
    return build
