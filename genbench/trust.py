"""The trust boundary: a config read back from a run folder is data, never code.

People share run folders. When ``genbench eval run=``, ``sample run=`` or ``leaderboard rebuild``
read one, its ``config.yaml`` may have been written by anyone, so it is read as follows:

- bounded: at most :data:`MAX_CONFIG_BYTES`, parsed by a safe YAML loader that refuses aliases
  (a "billion laughs" file fails at once instead of expanding) and builds plain containers only;
- no interpolation: genbench stores configs fully resolved, so any ``${...}`` (an ``oc.env``
  lookup, ``oc.create``, a custom resolver) is refused before OmegaConf sees it;
- allowlisted objects: every ``_target_`` must name exactly one of the classes genbench ships a
  config for (its models, datasets, optimizers, schedulers and loggers, from the packaged
  ``genbench.conf`` tree) or an installed plugin registers (:mod:`genbench.plugins`), and resolve
  to that very object. A dotted path that reaches further
  through an allowed module (``genbench.run.subprocess.run``) is not on the list.

Configs typed on the command line are the user's own and are not restricted.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from genbench.errors import ConfigError
from genbench.files import FileError, read_bytes

MAX_CONFIG_BYTES = 2 * 2**20


class _PlainLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (anchors may be declared, never expanded)."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in a genbench config", mark
            )
        return super().compose_node(parent, index)


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated values in full instead of as anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ANN401
        return True


def dump_yaml(value: Any) -> str:
    """``value`` (plain containers) as YAML without anchors, in key order."""
    return yaml.dump(
        value, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def parse_yaml(text: bytes | str, where: str) -> Any:
    """Plain containers from YAML ``text``; a :class:`FileError` naming ``where`` when it is not
    YAML genbench accepts."""
    try:
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506  (a SafeLoader subclass)
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileError(f"{where} is not a config genbench can read ({reason})") from None


def _walk(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf and mapping below ``node``."""
    yield where.rstrip("."), node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{where}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{where}{i}.")


@functools.cache
def allowed_targets() -> dict[str, Any]:
    """``_target_`` name -> object for every class the packaged configs name, and for the models
    installed plugins register (:mod:`genbench.plugins`)."""
    from hydra.utils import get_object

    import genbench.conf

    root = Path(genbench.conf.__file__).parent
    names: set[str] = set()
    for file in sorted(root.rglob("*.yaml")):
        for _, node in _walk(yaml.safe_load(file.read_text()) or {}):
            if isinstance(node, dict) and isinstance(node.get("_target_"), str):
                names.add(node["_target_"])
    out = {}
    for name in sorted(names):
        try:
            out[name] = get_object(name)
        except Exception:  # noqa: BLE001  (an optional dependency that is not installed)
            continue
    from genbench.plugins import plugin_models, target_name

    out.update({target_name(cls): cls for cls in plugin_models().values()})
    return out


def check_targets(node: Any, where: str = "config") -> None:
    """Refuse a ``_target_`` in ``node`` (plain containers) that is not an allowed object."""
    allowed = allowed_targets()
    for key, value in _walk(node):
        if not isinstance(value, dict) or "_target_" not in value:
            continue
        target = value["_target_"]
        name = f"{key + '.' if key else ''}_target_"
        if not isinstance(target, str) or target not in allowed:
            raise ConfigError(
                f"{where}: {name}={target!r} is not allowed: a config read from a run folder may "
                "only build the models, datasets, optimizers, schedulers and loggers genbench "
                "ships configs for"
            )
        from hydra.utils import get_object

        if get_object(target) is not allowed[target]:
            raise ConfigError(f"{where}: {name}={target!r} does not resolve to the allowed object")


def check_plain(node: Any, where: str = "config") -> None:
    """Refuse interpolations (``${...}``) and non-string keys in ``node``."""
    for key, value in _walk(node):
        if isinstance(value, dict) and any(not isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: {key or 'the top level'} has a key that is not a string")
        if isinstance(value, str) and "${" in value:
            raise ConfigError(
                f"{where}: {key}={value!r} is an interpolation; configs read from a "
                "run folder must be fully resolved (genbench writes them so)"
            )


def load_untrusted_config(path: Path) -> DictConfig:
    """Read a stored run config (see the module docstring); a :class:`ConfigError` or
    :class:`FileError` names the file and the key for anything refused."""
    data = read_bytes(path, max_bytes=MAX_CONFIG_BYTES, what="run config")
    where = repr(str(path))
    plain = parse_yaml(data, where)
    if not isinstance(plain, dict):
        raise FileError(f"{where} does not hold a mapping of config keys")
    check_plain(plain, where)
    check_targets(plain, where)
    return OmegaConf.create(plain)
