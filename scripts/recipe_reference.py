"""Write docs/recipes.md, the recipe reference, from the pydantic schema and the plugins.

    python scripts/recipe_reference.py           # write the doc
    python scripts/recipe_reference.py --check   # exit 1 if the doc is stale

Every section and field of ``headsurgeon.core.recipe.Recipe`` (type, default, constraints,
description) and every built-in plugin's ``Params`` are read from the code; only the intro
and the example below are written by hand. A field without a ``description=``, or a
validator without a note in ``VALIDATOR_NOTES``, stops the script (and fails
tests/test_recipe_reference.py), so the reference cannot silently fall behind the schema.
"""
from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "recipes.md"
PLUGIN_KINDS = ("locators", "metrics", "objectives", "judges", "datasets")
BUILTIN_PREFIX = "headsurgeon_plugins."  # third-party plugins installed here are not documented
LONG_DEFAULT = 48  # longer defaults go into a YAML block under the table

from recipe_reference_text import EXAMPLE, EXTRA_KEYS, INTRO, VALIDATOR_NOTES  # noqa: E402


# ---------------------------------------------------------------- rendering helpers

def md(text: str) -> str:
    """A docstring (reST-ish) as Markdown: ``x`` -> `x`, :role:`x` -> `x`."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def slug(title: str) -> str:
    """GitHub's heading anchor."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def own_doc(cls) -> str:
    doc = cls.__dict__.get("__doc__")
    return md(inspect.cleandoc(doc)) if doc else ""


def is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def nested_models(annotation) -> list[tuple[type, bool]]:
    """(model class, inside a list) for every model in an annotation, PluginRef excepted."""
    from headsurgeon.core.recipe import PluginRef

    out = []

    def walk(tp, in_list):
        origin = typing.get_origin(tp)
        if is_model(tp):
            if tp is not PluginRef:
                out.append((tp, in_list))
        elif origin is list:
            for a in typing.get_args(tp):
                walk(a, True)
        elif origin is not None and origin is not typing.Literal:
            for a in typing.get_args(tp):
                walk(a, in_list)
    walk(annotation, False)
    return out


class Renderer:
    def __init__(self):
        from headsurgeon.core.recipe import PluginRef

        self.PluginRef = PluginRef
        self.anchors: dict[type, str] = {}  # model class -> heading of its table
        self.problems: list[str] = []

    # -- types and values ---------------------------------------------------------------
    def type_name(self, tp) -> str:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is type(None):
            return "null"
        if tp is self.PluginRef:
            return "[plugin](#plugin-references)"
        if is_model(tp):
            title = self.anchors.get(tp)
            return f"[mapping](#{slug(title)})" if title else "mapping"
        if origin is typing.Literal:
            return " \\| ".join(f"`{json.dumps(a)}`" for a in args)
        if origin in (typing.Union, types.UnionType):
            return " \\| ".join(self.type_name(a) for a in args)
        if origin is list:
            return f"list of {self.type_name(args[0])}"
        if origin is tuple:
            return "[" + ", ".join(self.type_name(a) for a in args) + "]"
        if origin is dict:
            return "mapping"
        return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
            tp, getattr(tp, "__name__", str(tp)))

    def default(self, field) -> tuple[str, str | None]:
        """(table cell, long YAML value or None)."""
        if field.is_required():
            return "required", None
        value = field.get_default(call_default_factory=True)
        if isinstance(value, self.PluginRef):
            return f"`{value.name}`", None
        if isinstance(value, BaseModel):
            return "see its table", None
        text = json.dumps(value, ensure_ascii=False)
        if len(text) > LONG_DEFAULT:
            return "see below", text
        return f"`{text}`", None

    @staticmethod
    def constraints(field) -> list[str]:
        out = []
        for m in field.metadata:
            for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                if getattr(m, attr, None) is not None:
                    out.append(f"{sym} {getattr(m, attr)}")
            if getattr(m, "min_length", None) is not None:
                out.append(f"length >= {m.min_length}")
            if getattr(m, "max_length", None) is not None:
                out.append(f"length <= {m.max_length}")
            if getattr(m, "pattern", None) is not None:
                out.append(f"matches `{m.pattern}`")
        return out

    def validator_notes(self, cls) -> tuple[dict[str, list[str]], list[str]]:
        """Notes per field name, and notes on the whole model."""
        per_field: dict[str, list[str]] = {}
        whole: list[str] = []
        decs = cls.__pydantic_decorators__
        for fname, dec in decs.field_validators.items():
            note = self._note(cls, fname)
            for f in dec.info.fields:
                per_field.setdefault(f, []).append(note)
        for fname in decs.model_validators:
            whole.append(self._note(cls, fname))
        return per_field, whole

    def _note(self, cls, fname: str) -> str:
        key = f"{cls.__qualname__}.{fname}"
        if key not in VALIDATOR_NOTES:
            self.problems.append(f"validator {key} has no entry in VALIDATOR_NOTES")
            return "(undocumented check)"
        return VALIDATOR_NOTES[key]

    # -- tables ---------------------------------------------------------------------------
    def table(self, cls, where: str) -> list[str]:
        notes, whole = self.validator_notes(cls)
        rows = ["| key | type | default | constraints | description |",
                "|---|---|---|---|---|"]
        long_defaults = []
        for name, field in cls.model_fields.items():
            key = field.alias or name
            desc = field.description or ""
            if not desc:
                self.problems.append(f"{where}.{key} has no description")
            dflt, long = self.default(field)
            if long is not None:
                long_defaults.append(f"{key}: {long}")
            cons = self.constraints(field) + notes.get(name, [])
            rows.append(f"| `{key}` | {self.type_name(field.annotation)} | {cell(dflt)} | "
                        f"{cell('; '.join(cons)) or '–'} | {cell(md(desc))} |")
        if not cls.model_fields:
            rows = ["No parameters."]
        out = rows
        if cls.model_config.get("extra") == "allow":
            if cls.__qualname__ not in EXTRA_KEYS:
                self.problems.append(f"{cls.__qualname__} allows extra keys; say what they "
                                     "are in EXTRA_KEYS")
            out += ["", EXTRA_KEYS.get(cls.__qualname__, "")]
        if long_defaults:
            out += ["", "Defaults too long for the table:", "", "```yaml", *long_defaults, "```"]
        if whole:
            out += [""] + [f"Also: {w}." for w in whole]
        return out

    def sections(self, cls, path: str, level: int, intro: str = "") -> list[str]:
        """A heading and table for ``cls`` at ``path``, then its nested models."""
        title = f"`{path}`"
        self.anchors[cls] = title
        children = []
        for name, field in cls.model_fields.items():
            for sub, in_list in nested_models(field.annotation):
                key = field.alias or name
                children.append((sub, f"{path}.{key}{'[]' if in_list else ''}"))
        for sub, sub_path in children:  # anchors first, so the parent's types link
            self.anchors.setdefault(sub, f"`{sub_path}`")
        out = ["#" * level + " " + title, ""]
        doc = intro or own_doc(cls)
        if doc:
            out += [doc, ""]
        out += self.table(cls, path) + [""]
        for sub, sub_path in children:
            out += self.sections(sub, sub_path, level + 1)
        return out

    # -- the document ---------------------------------------------------------------------
    def render(self) -> str:
        from headsurgeon.core import plugins
        from headsurgeon.core.recipe import PLUGIN_FIELDS, Recipe

        out = [INTRO.replace("{example}", EXAMPLE), "## Sections", ""]
        top = ["| key | type | default | description |", "|---|---|---|---|"]
        body: list[str] = []
        for name, field in Recipe.model_fields.items():  # anchors first: types link to them
            for sub, _ in nested_models(field.annotation):
                self.anchors[sub] = f"`{name}`"
        for name, field in Recipe.model_fields.items():
            if not field.description:
                self.problems.append(f"{name} has no description")
            dflt, _ = self.default(field)
            top.append(f"| `{name}` | {self.type_name(field.annotation)} | {cell(dflt)} | "
                       f"{cell(md(field.description or ''))} |")
            for sub, _ in nested_models(field.annotation):
                if is_model(field.annotation):
                    body += self.sections(sub, name, 3)
                else:  # heads: {from: FILE}, one branch of a union
                    body += self.sections(sub, name, 3, intro=(
                        f"`{name}` written as a mapping (the other forms are in the table "
                        "above)."))
        notes, whole = self.validator_notes(Recipe)
        out += ["Top-level keys of a recipe:", "", *top, ""]
        for fname, ns in notes.items():
            out.append(f"`{fname}`: {'; '.join(ns)}.")
        out += [f"Also: {w}." for w in whole] + [""]
        out += body

        out += ["## Plugin references", "",
                "Where a recipe names a plugin, it writes a mapping with the plugin's `name` "
                "and its parameters, or only the name. Data stages take a list of them (or "
                "one).", ""]
        out += self.table(self.PluginRef, "plugin") + [""]
        uses = ["| recipe key | plugin kind | default |", "|---|---|---|"]
        for fpath, kind, is_list in PLUGIN_FIELDS:
            section = getattr(Recipe.model_fields[fpath[0]].annotation, "model_fields")
            dflt, _ = self.default(section[fpath[1]])
            uses.append(f"| `{'.'.join(fpath)}` | [{kind}](#{slug(kind)}) | {dflt} |")
        out += uses + [""]

        out += ["## Built-in plugins", "",
                "Each plugin's parameters, as its `Params` schema declares them. Plugins "
                "that other packages register are documented there.", ""]
        for kind in PLUGIN_KINDS:
            reg = {n: p for n, p in plugins.registry(kind).items()
                   if getattr(p, "__module__", "").startswith(BUILTIN_PREFIX)}
            out += [f"### {kind}", ""]
            for name in sorted(reg):
                plugin = reg[name]
                out += [f"#### {kind}: `{name}`", ""]
                doc = self.plugin_doc(kind, name, plugin, reg)
                if doc:
                    out += [doc, ""]
                params = getattr(plugin, "Params", None)
                if params is None:
                    out += ["No parameters.", ""]
                    continue
                nested = [(sub, fname, f"{kind}: `{name}` `{fname}{'[]' if in_list else ''}`")
                          for fname, field in params.model_fields.items()
                          for sub, in_list in nested_models(field.annotation)]
                for sub, _, title in nested:
                    self.anchors[sub] = title
                out += self.table(params, f"{kind}.{name}") + [""]
                for sub, fname, title in nested:
                    out += ["#" * 5 + " " + title, "",
                            *self.table(sub, f"{kind}.{name}.{fname}"), ""]
        text = "\n".join(out).rstrip("\n") + "\n"
        text = re.sub(r"\n{3,}", "\n\n", text)
        return text

    @staticmethod
    def plugin_doc(kind: str, name: str, plugin, reg: dict) -> str:
        """The plugin's own docstring, else its module's; when a module registers several
        plugins, the lines of the module docstring that start with ``name``."""
        own = plugin.__dict__.get("__doc__") if isinstance(plugin, type) else None
        if own:
            return md(inspect.cleandoc(own))
        module = sys.modules.get(plugin.__module__)
        doc = inspect.cleandoc((module and module.__doc__) or "")
        siblings = [n for n, p in reg.items() if p.__module__ == plugin.__module__]
        if len(siblings) > 1:
            lines, keep = doc.splitlines(), []
            for line in lines:
                if keep and (not line.strip() or line.startswith("``")):
                    break
                if keep or line.startswith(f"``{name}``"):
                    keep.append(line)
            doc = "\n".join(keep) or doc
        return md(doc)


def render() -> str:
    """The reference; ValueError listing every undocumented field or validator."""
    r = Renderer()
    text = r.render()
    if r.problems:
        raise ValueError("the recipe reference is incomplete:\n  " + "\n  ".join(r.problems))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    args = ap.parse_args(argv)
    try:
        text = render()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.check:
        stale = not DOC.exists() or DOC.read_text(encoding="utf-8") != text
        print(f"{DOC}: {'stale' if stale else 'up to date'}")
        return int(stale)
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
