"""What a plugin needs installed, checked before any stage starts.

A plugin class (or object) may declare ``requires = {"module": "install hint"}``: the
Python modules it imports when it runs, and what brings each one (an extra of
headsurgeon, e.g. ``headsurgeon[hf]``, or a package name). Every plugin a recipe names
is checked when the recipe loads, so a missing package is one line naming the recipe
field, the module and the command that installs it, with exit 2, before any model loads.
"""
from __future__ import annotations

import importlib.util
from typing import Any


def declared(plugin: Any) -> dict[str, str]:
    """The modules a plugin declares it needs, with what installs each."""
    return dict(getattr(plugin, "requires", None) or {})


def missing(plugin: Any) -> list[tuple[str, str]]:
    """``(module, install hint)`` for every declared module that cannot be imported."""
    out = []
    for module, hint in declared(plugin).items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append((module, hint))
    return out


def describe_missing(kind: str, name: str, plugin: Any) -> str | None:
    """One sentence saying what is missing for plugin ``name`` of ``kind``, or None."""
    gaps = missing(plugin)
    if not gaps:
        return None
    module, hint = gaps[0]
    more = f" (and {len(gaps) - 1} more)" if len(gaps) > 1 else ""
    return (f"{kind} {name!r} needs the Python package {module!r}, which is not "
            f"installed{more}; install it with: pip install '{hint}'")
