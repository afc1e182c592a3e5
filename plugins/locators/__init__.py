"""Built-in locators: path_patching, activation_patching, attribution."""
from headsurgeon import hookimpl

from .activation_patching import ActivationPatching
from .attribution import Attribution
from .path_patching import PathPatching


@hookimpl
def register_locators(register):
    for cls in (PathPatching, ActivationPatching, Attribution):
        register(cls)
