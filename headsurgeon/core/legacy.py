"""Old flat module names (``headsurgeon.heads``, ``headsurgeon.questions``, ...) keep working.

Plugins written before the package was laid out in stage folders import from the flat
names; this finder maps each to its new home (the same module object, so
``isinstance`` checks and registries are shared) with a DeprecationWarning.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "admission": "evaluate.admission", "answers": "data.answers", "atomic": "core.atomic",
    "backend": "locate.backend", "builtin_sets": "data.builtin_sets", "card": "apply.card",
    "challenge": "evaluate.challenge", "datasets": "data.datasets", "delta": "model.delta",
    "dialogues": "train.dialogues", "errors": "core.errors", "general": "evaluate.general",
    "generation": "model.generation", "heads": "model.heads", "hookspecs": "core.hookspecs",
    "inputs": "core.inputs", "inspect": "apply.inspect", "knockout": "locate.knockout",
    "kvrows": "model.kvrows", "locate_job": "locate.job", "locate_probes": "locate.probes",
    "models": "model.sources", "nopickle": "core.nopickle", "objectives": "train.objectives",
    "plots": "locate.plots", "plugins": "core.plugins", "probes": "data.dialogue",
    "questions": "data.questions", "recipe": "core.recipe", "remote": "locate.remote",
    "remote_client": "locate.remote_client", "safetensors_io": "model.safetensors_io",
    "testing": "model.tiny", "train_checkpoint": "train.checkpoint",
    "trainable": "train.trainable", "yamlfile": "core.yamlfile",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        pkg, _, leaf = fullname.partition(".")
        if pkg != "headsurgeon" or leaf.split(".")[0] not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        leaf = spec.name.partition(".")[2]
        head, _, rest = leaf.partition(".")
        new = "headsurgeon." + MOVED[head] + (f".{rest}" if rest else "")
        warnings.warn(f"{spec.name} moved to {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
