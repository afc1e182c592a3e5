"""Built-in architectures: every JSON file in this folder is one ArchSpec."""
import json
from importlib.resources import files

from headsurgeon import hookimpl
from headsurgeon.model.heads import ArchSpec


@hookimpl
def register_architectures(register):
    for entry in sorted(files(__name__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            register(ArchSpec.from_dict(json.loads(entry.read_text())))
