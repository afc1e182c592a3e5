"""headsurgeon: supervised pinpoint tuning of the attention heads behind a behaviour.

The Python API mirrors the CLI: ``load_recipe``, ``locate``, ``train``, ``apply``,
``evaluate`` and ``run`` (see :mod:`headsurgeon.api`).
"""
__version__ = "0.1.0"

from headsurgeon.core.hookspecs import hookimpl  # noqa: E402,F401
from headsurgeon.core.legacy import install as _install_legacy_names  # noqa: E402

_install_legacy_names()
