"""The runtime half of "never unpickle": loading a pickle can run any code it names.

headsurgeon reads safetensors and JSON only (a test scans the code for pickle use). This
guard catches what a scan cannot see, such as a library called on our behalf: while
active, an audit hook refuses the ``pickle.find_class`` event, which every unrestricted
unpickler raises before it imports the global that a malicious pickle calls. Loaders
that resolve globals from an allowlist of their own (``torch.load(weights_only=True)``,
the NDIF envelope loader) do not raise the event and keep working.

Audit hooks cannot be removed, so one hook is installed once and consults a counter;
the CLI holds the guard around every command.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Iterator

from headsurgeon.core.errors import CheckpointError

_lock = threading.Lock()
_depth = 0
_installed = False


class UnpicklingRefused(CheckpointError):
    """Something tried to unpickle an arbitrary object while the guard was active."""


def _hook(event: str, args: tuple) -> None:
    if event == "pickle.find_class" and _depth:
        module, name = (list(args) + ["?", "?"])[:2]
        raise UnpicklingRefused(f"refusing to unpickle {module}.{name}: a pickle can run "
                                "code when loaded; headsurgeon reads safetensors and JSON "
                                "only (a pickle checkpoint needs --allow-pickle, which loads "
                                "it with weights_only)")


def install() -> None:
    global _installed
    with _lock:
        if not _installed:
            sys.addaudithook(_hook)
            _installed = True


@contextlib.contextmanager
def refuse_unpickling() -> Iterator[None]:
    """Within this block (every thread of the process) unrestricted unpickling raises
    :class:`UnpicklingRefused`."""
    global _depth
    install()
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1


def active() -> bool:
    return bool(_depth)
