"""Where headsurgeon may write, and what an output it finds there may be replaced by.

Every writer asks this module, so there is one policy:

- **Recipe paths stay inside.** A path a recipe names for output (``output_dir``,
  ``apply.output``) stays inside its base (the recipe's folder, the run directory): no
  ``~`` (never expanded, never created as a folder), no ``$``, no ``..``, and an absolute
  path only when it lies inside the base. A recipe may come from anyone; a path given on
  the command line (``--out``, ``--gguf``) is the user's own choice and is not limited.
- **Only what headsurgeon wrote is replaced.** An existing output is replaced only when
  asked (``--force``, or a stage rewriting its own file) and only when it is what that
  writer wrote before (its ``ours`` test: a model directory with its manifest, a GGUF
  with headsurgeon's key, a delta): never a model's own files, never a symlink, device
  node, FIFO or socket, whatever ``--force`` says.
- **A bad place is a usage error.** A parent that is a file is exit 2, "not a directory".
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Callable, Optional

from headsurgeon.core.errors import ValidationError

# what an apply output directory holds (apply/run.py writes it, inspect reads it)
OUTPUT_MANIFEST = "headsurgeon.json"
OUTPUT_FORMAT = "headsurgeon.output/1"
_MANIFEST_MAX = 64 * 1024 * 1024


RUN_DIR = ("the run directory", "pass --out to write elsewhere")
RECIPE_DIR = ("the recipe's folder", "keep the recipe where its runs belong")


def recipe_output_path(value: Optional[str], base: tuple[str, str]) -> Optional[str]:
    """A pydantic validator's body for a recipe's output path field: ``value`` unchanged,
    or ValueError with the reason (a recipe may come from anyone: its outputs stay inside)."""
    if value is not None and (problem := recipe_path_problem(value, base)):
        raise ValueError(problem)
    return value


def recipe_path_problem(value: str, base: tuple[str, str]) -> Optional[str]:
    """Why ``value`` may not be a recipe's output path (None when it may): the lexical part
    of the rule, checked when the recipe is validated. ``base``: (its name, a hint)."""
    if not value.strip() or value.startswith("~") or "$" in value or ".." in Path(value).parts:
        return (f"must stay inside {base[0]} (no '~', '$' or '..'; an absolute path only "
                f"inside it); {base[1]}")
    return None


def inside(base: Path, value: str, what: tuple[str, str]) -> Path:
    """``base / value`` when it stays inside ``base``; ValueError naming ``what`` otherwise.
    An absolute ``value`` must lie inside ``base`` (compared as given and resolved)."""
    problem = recipe_path_problem(value, what)
    if problem:
        raise ValueError(problem)
    p = Path(value)
    if not p.is_absolute():
        return base / p
    base_abs, p_abs = Path(os.path.abspath(base)), Path(os.path.abspath(p))
    if p_abs.is_relative_to(base_abs) or p_abs.resolve().is_relative_to(base_abs.resolve()):
        return p
    raise ValueError(recipe_path_problem("..", what))


def kind_of(path: Path) -> Optional[str]:
    """"file", "directory", "symlink", "device", "FIFO", "socket", or None when absent."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def check_replace(path: str | os.PathLike, *, force: bool, ours: Callable[[Path], bool],
                  what: str) -> None:
    """Raise ValidationError (exit 2) unless writing ``path`` replaces nothing, or replaces,
    with ``force``, ``what`` headsurgeon wrote there before (``ours(path)``)."""
    path = Path(path)
    kind = kind_of(path)
    if kind is None:
        return
    if kind not in ("file", "directory"):
        raise ValidationError(f"is a {kind}; headsurgeon never replaces one, even with "
                              "--force: choose another output", file=str(path))
    if not force:
        raise ValidationError("output exists; pass --force to replace it", file=str(path))
    if not ours(path):
        raise ValidationError(f"exists and is not {what} written by headsurgeon, the only "
                              "kind replaced: remove it yourself or choose another output",
                              file=str(path))


def refuse_special(path: str | os.PathLike) -> None:
    """What any writer checks before its rename: never over a link, device, FIFO, socket."""
    kind = kind_of(Path(path))
    if kind not in (None, "file", "directory"):
        raise ValidationError(f"is a {kind}; headsurgeon never replaces one: choose another "
                              "output", file=str(path))


def make_parent(path: str | os.PathLike) -> None:
    """Create ``path``'s parent folders; a file in the way is a usage error (exit 2)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.is_dir():
            return
    except (FileExistsError, NotADirectoryError):
        pass
    for parent in reversed(path.absolute().parents):
        if not parent.is_dir() and (parent.exists() or parent.is_symlink()):
            raise ValidationError(f"{parent} is not a directory", file=str(path))
    raise ValidationError(f"{path.parent} is not a directory", file=str(path))


def is_output_dir(path: Path) -> bool:
    """A model directory an apply wrote: a real directory with its manifest."""
    if kind_of(path) != "directory":
        return False
    manifest = path / OUTPUT_MANIFEST
    try:
        if kind_of(manifest) != "file" or manifest.stat().st_size > _MANIFEST_MAX:
            return False
        obj = json.loads(manifest.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("format") == OUTPUT_FORMAT


def is_plain_dir(path: Path) -> bool:
    return kind_of(path) == "directory"
