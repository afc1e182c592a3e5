"""Strict YAML loading that remembers the line of every key.

PyYAML's YAML 1.1 resolver reads ``5e-4`` as a string and silently lets a duplicated key
win; a recipe needs neither. ``load_yaml`` returns plain data plus a map from key paths
(``("train", "lr")``) to 1-based line numbers, so validation errors can point at lines.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from headsurgeon.core.errors import ValidationError

MAX_RECIPE_BYTES = 1 << 20
# values after expanding aliases: a real recipe has a few hundred; "billion laughs" aliases
# (each anchor repeated ten times by the next) would otherwise take forever to walk
MAX_NODES = 200_000


class _Loader(yaml.SafeLoader):
    pass


# YAML 1.2 floats: 5e-4, 1E+3, .5, 1.0 (YAML 1.1 needs a dot and a signed exponent).
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+|[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$
                  |^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$""", re.X),
    list("-+0123456789."))


def _construct_float(loader, node):
    value = loader.construct_scalar(node)
    if re.fullmatch(r"[-+]?[0-9][0-9_]*", value):  # plain integers stay ints
        return int(value.replace("_", ""))
    return yaml.SafeLoader.construct_yaml_float(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)

Lines = dict[tuple, int]
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _walk(loader: _Loader, node, path: tuple, lines: Lines, file: str,
          budget: list[int] | None = None) -> Any:
    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValidationError(f"more than {MAX_NODES} values once aliases are expanded",
                              file=file, line=node.start_mark.line + 1)
    lines.setdefault(path, node.start_mark.line + 1)
    if not isinstance(node, yaml.ScalarNode) and node.tag not in _PLAIN_TAGS:
        # e.g. !!python/object/apply: a safe loader would not run it, but a silently
        # ignored tag is a recipe that means something else than it says
        raise ValidationError(f"YAML tag {node.tag} is not supported", file=file,
                              line=node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ValidationError("keys must be plain scalars", file=file,
                                      line=key_node.start_mark.line + 1)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ValidationError("YAML merge keys (<<) are not supported", file=file,
                                      line=key_node.start_mark.line + 1)
            key = loader.construct_object(key_node)
            if key in out:
                raise ValidationError(f"duplicate key {key!r}", file=file,
                                      line=key_node.start_mark.line + 1,
                                      field=".".join(map(str, path + (key,))))
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _walk(loader, value_node, path + (key,), lines, file, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(loader, n, path + (i,), lines, file, budget)
                for i, n in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml_text(text: str, file: str = "<recipe>") -> tuple[Any, Lines]:
    lines: Lines = {}
    try:
        loader = _Loader(text)  # checks the characters: may raise ReaderError
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ValidationError(f"character {chr(exc.character)!r} is not allowed in YAML",
                              file=file, line=line) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        return _walk(loader, node, (), lines, file), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ValidationError(f"YAML syntax error: {exc.problem or exc}", file=file,
                              line=line) from None
    except yaml.YAMLError as exc:
        raise ValidationError(f"YAML error: {exc}", file=file) from None
    except RecursionError:
        raise ValidationError("YAML nested too deeply", file=file) from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> tuple[Any, Lines, str]:
    """Read a YAML file; returns (data, lines, text)."""
    from headsurgeon.core.inputs import read_input

    path = Path(path)
    name = str(path)
    raw = read_input(path, limit=MAX_RECIPE_BYTES, what="recipe file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"not UTF-8 (byte {exc.start})", file=name) from None
    data, lines = load_yaml_text(text, name)
    return data, lines, text
