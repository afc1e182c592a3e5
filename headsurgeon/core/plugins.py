"""The plugin manager: entry-point discovery, registries of named plugin objects.

``HEADSURGEON_PLUGINS`` (comma-separated entry-point names) restricts which entry points
load; unset loads them all, an empty string loads none. The built-ins are ordinary entry
points (``builtin-locators``, ``builtin-objectives``, ...) in the same group.

Nothing loads at import: a registry loads the plugins when first asked. Commands come only
from third-party plugins (the built-ins add none, a test checks it), so listing them loads
the third-party entry points alone, never the built-ins or torch.
"""
from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Any, Callable

import pluggy

from headsurgeon.core import hookspecs
from headsurgeon.core.errors import ValidationError

GROUP = "headsurgeon"
KINDS = ("locators", "metrics", "objectives", "judges", "architectures", "datasets")

pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)
BUILTIN_PACKAGE = "headsurgeon_plugins"
_loaded: set[str] = set()  # "builtin", "third-party": which entry points are registered
_cache: dict[str, dict[str, Any]] = {}


def _allowed() -> set[str] | None:
    raw = os.environ.get("HEADSURGEON_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _origin(ep) -> str:
    return "builtin" if ep.module.split(".")[0] == BUILTIN_PACKAGE else "third-party"


def load_plugins(*, builtins: bool = True) -> None:
    """Register the entry points' plugins; ``builtins=False``: the third-party ones only."""
    todo = {"third-party", "builtin"} if builtins else {"third-party"}
    todo -= _loaded
    if not todo:
        return
    _loaded.update(todo)
    allowed = _allowed()
    for ep in entry_points(group=GROUP):
        if allowed is not None and ep.name not in allowed or _origin(ep) not in todo:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not break the tool
            raise ValidationError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}")
    if "builtin" in todo and allowed is None and not any(
            n.startswith("builtin-") for n, _ in pm.list_name_plugin()):
        _register_builtins_from_source()


def _register_builtins_from_source() -> None:
    """Running from a checkout that was not pip-installed: load built-ins directly."""
    import importlib

    for kind in KINDS:
        try:
            mod = importlib.import_module(f"headsurgeon_plugins.{kind}")
        except ModuleNotFoundError:
            continue
        pm.register(mod, name=f"builtin-{kind}")


def register_plugin(obj, name: str | None = None) -> None:
    """Register a plugin object (module or class with hookimpls) at run time."""
    load_plugins()
    pm.register(obj, name=name)
    _cache.clear()


def unregister_plugin(name: str) -> None:
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    _cache.clear()


def _collect(kind: str) -> dict[str, Any]:
    if kind in _cache:
        return _cache[kind]
    load_plugins()
    found: dict[str, Any] = {}

    def register(obj, name: str | None = None) -> None:
        key = name or getattr(obj, "name")
        if key in found and found[key] is not obj:
            raise ValidationError(f"two plugins register {kind[:-1]} {key!r}")
        found[key] = obj

    getattr(pm.hook, f"register_{kind}")(register=register)
    _cache[kind] = found
    return found


def registry(kind: str) -> dict[str, Any]:
    if kind not in KINDS:
        raise KeyError(kind)
    return _collect(kind)


def get(kind: str, name: str) -> Any:
    reg = registry(kind)
    if name not in reg:
        known = ", ".join(sorted(reg)) or "none"
        raise ValidationError(f"no plugin registers {kind[:-1]} {name!r} (known: {known})")
    return reg[name]


def get_architectures() -> dict[str, Any]:
    return registry("architectures")


def add_plugin_commands(cli: Callable, *, builtins: bool = True) -> None:
    """Let every registered plugin add its commands to ``cli`` (``builtins=False``: load
    only the third-party entry points first, as ``--help`` does)."""
    load_plugins(builtins=builtins)
    pm.hook.register_commands(cli=cli)
