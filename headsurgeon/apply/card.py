"""The model card (``README.md``) shipped with every merged checkpoint."""
from __future__ import annotations

import re

import yaml

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TAGS = ["headsurgeon", "sycophancy"]


def heads_table(meta: dict) -> list[dict]:
    """One row per head whose weights moved: layer, head, whether it was selected (vs a
    GQA sibling whose shared k/v rows moved), its roles and the params touched."""
    selected = {tuple(h) for h in meta.get("heads") or []}
    rows: dict[tuple[int, int], dict] = {}
    for h in list(meta.get("heads") or []) + list(meta.get("touched_heads") or []):
        rows.setdefault(tuple(h), {"roles": set(), "params": set()})
    for s in meta.get("slices") or []:
        for h in s.get("heads") or []:
            row = rows.setdefault(tuple(h), {"roles": set(), "params": set()})
            row["roles"].add(s["role"])
            row["params"].add(f"{s['param']}[{'rows' if s['axis'] == 0 else 'cols'} "
                              f"{s['start']}:{s['stop']}]")
    order = {r: i for i, r in enumerate(("q", "k", "v", "o", "other"))}
    return [{"layer": layer, "head": head, "selected": (layer, head) in selected,
             "roles": sorted(r["roles"], key=lambda x: order.get(x, 9)),
             "params": sorted(r["params"])}
            for (layer, head), r in sorted(rows.items())]


def _fence(text: str) -> str:
    """A backtick fence longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _metrics_table(metrics: dict) -> list[str]:
    flat: list[tuple[str, object]] = []

    def walk(prefix: str, obj) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat.append((prefix, obj))

    walk("", metrics)
    return ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in flat]


def locator_of(recipe_text: str | None, meta: dict | None = None) -> str | None:
    """How the edited heads were chosen: the delta's own record when it has one, else the
    recipe's ``heads`` / ``locate`` settings (defaults filled in by the recipe schema)."""
    rec = (meta or {}).get("locator")
    if isinstance(rec, dict) and rec.get("name"):
        return _locator_words(rec.get("name"), rec.get("screen"), rec.get("confirmed"))
    if not recipe_text:
        return None
    try:
        data = yaml.safe_load(recipe_text) or {}
        heads = data.get("heads")
        if isinstance(heads, list):
            return "heads listed in the recipe (no locator ran)"
        if isinstance(heads, dict) and heads.get("from"):
            return f"heads from `{heads['from']}` (see its `method`)"
        from headsurgeon.core.sections import LocateSection

        sec = LocateSection.model_validate(data.get("locate") or {})
    except (yaml.YAMLError, ValueError, TypeError, AttributeError):
        # a card must render even from a recipe this version cannot read
        return None
    screen = sec.method.params.get("screen", "attribution" if sec.method.name == "path_patching"
                                   else None)
    if sec.method.name == "attribution":
        screen = "attribution"
    confirm = ("3 x K" if sec.confirm_top == "auto" else sec.confirm_top) if screen else None
    return _locator_words(sec.method.name, None if screen == "none" else screen, confirm)


def _locator_words(name, screen, confirmed) -> str:
    if not screen:
        return f"`{name}`, every head scored exactly"
    if not confirmed:
        return f"`{name}`: {screen} scores only, no exact confirmation"
    return f"`{name}`: {screen} screen of every head, top {confirmed} confirmed exactly"


def render_model_card(meta: dict, recipe_text: str | None, metrics: dict | None,
                      heads: list[dict]) -> str:
    """Markdown with YAML front matter. ``meta`` is the delta metadata (decoded),
    ``heads`` rows from :func:`heads_table`; the recipe is embedded verbatim."""
    base = str(meta.get("base_model") or "unknown")
    front: dict = {}
    if _HUB_ID.match(base):  # the Hub rejects local paths as base_model
        front["base_model"] = base
    front["tags"] = list(TAGS)
    front["library_name"] = "transformers"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {base.rstrip('/').split('/')[-1]} — headsurgeon edit", "",
             f"This checkpoint is `{base}` with a few attention heads fine-tuned by "
             "headsurgeon to reduce sycophancy. "
             "Only the weight slices listed below differ from the base model; every other "
             "tensor and element is bit-identical. It loads like the base model "
             "(`AutoModelForCausalLM.from_pretrained`).", "",
             "## Edit", "",
             f"- base model: `{base}`",
             f"- objective: `{meta.get('objective') or '-'}`",
             f"- locator: {locator_of(recipe_text, meta) or '-'}",
             f"- kv policy: `{meta.get('kv_policy') or '-'}`",
             f"- steps: {meta.get('steps', '-')}",
             f"- seed: {meta.get('seed', '-')}",
             f"- recipe hash: `{meta.get('recipe_hash') or '-'}`",
             f"- headsurgeon version: {meta.get('headsurgeon_version') or '-'}", "",
             "## Edited heads", ""]
    if heads:
        lines += ["| layer | head | selected | roles | params touched |", "|---|---|---|---|---|"]
        for r in heads:
            lines.append(f"| {r['layer']} | {r['head']} | {'yes' if r['selected'] else 'sibling'}"
                         f" | {', '.join(r['roles']) or '-'} | "
                         f"{'<br>'.join(f'`{p}`' for p in r['params']) or '-'} |")
    else:
        lines.append("No heads recorded.")
    lines.append("")
    if metrics:
        lines += ["## Evaluation", ""] + _metrics_table(metrics) + [""]
    if recipe_text:
        fence = _fence(recipe_text)
        body = recipe_text if recipe_text.endswith("\n") else recipe_text + "\n"
        lines += ["## Recipe", "", "The recipe that produced this edit (also shipped as "
                  "`headsurgeon-recipe.yaml`):", "", f"{fence}yaml\n{body}{fence}", ""]
    return "\n".join(lines)
