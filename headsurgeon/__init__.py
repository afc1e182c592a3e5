"""headsurgeon: supervised pinpoint tuning of the attention heads behind a behaviour.

The Python API mirrors the CLI: ``load_recipe``, ``locate``, ``train``, ``apply``,
``evaluate`` and ``run`` (see :mod:`headsurgeon.api`).
"""
__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402,F401
