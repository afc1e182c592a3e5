"""Plugin hook specifications. Each hook hands the plugin a ``register`` callable.

A plugin module implements any of these with ``@headsurgeon.hookimpl`` and calls
``register(obj)`` once per thing it provides. Built-ins in ``plugins/`` use the same
hooks and the same entry-point group (``headsurgeon``) as third-party plugins.
"""
from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("headsurgeon")
hookimpl = HookimplMarker("headsurgeon")


@hookspec
def register_locators(register):
    """Register head-scoring methods (classes with ``name``, ``Params``, ``score``)."""


@hookspec
def register_metrics(register):
    """Register sycophancy metrics read off the final logits of a probe."""


@hookspec
def register_objectives(register):
    """Register training objectives (classes with ``name``, ``Params``, ``loss``)."""


@hookspec
def register_judges(register):
    """Register judges that decide whether a reply admits a mistake."""


@hookspec
def register_architectures(register):
    """Register :class:`headsurgeon.model.heads.ArchSpec` descriptions of where heads live."""


@hookspec
def register_datasets(register):
    """Register question-set loaders (classes with ``name``, ``Params``, ``load``)."""


@hookspec
def register_commands(cli):
    """Add click commands to the ``headsurgeon`` command group."""
