"""``eval.scope: known``: the challenge protocol runs only on the base's known items.

Every selectivity figure is read on known items, so a report that needs a few hundred of
them reads the beliefs of a larger pool (cheap: no generation) and runs only the known
ones. The pool, not the known subset, is what training and the sweep keep apart from."""
from __future__ import annotations

import json

import pytest

from headsurgeon.core.errors import ValidationError

RECIPE = """name: sc
model: {{source: {model}}}
data:
  train: [{{name: builtin, set: arithmetic, split: train, n: 8}}]
  eval: [{{name: builtin, set: arithmetic, split: eval, n: 40}}]
heads: [[0, 1], [1, 2]]
train: {{steps: 1, batch_size: 2}}
eval: {{n_items: {n_items}, max_new_tokens: 4, modes: [correct, wrong], kl_passages: 0,
       n_general: 0, known: {{by: letter, permutations: 1}}{extra}}}
output_dir: {out}
"""


def _recipe(tmp_path, model, n_items=5, extra=", scope: known, pool: 30"):
    from headsurgeon.core.recipe import load_recipe

    p = tmp_path / "sc.yaml"
    p.write_text(RECIPE.format(model=model, n_items=n_items, extra=extra,
                               out=tmp_path / "run"))
    return load_recipe(p)


def test_scope_known_runs_only_the_known_items_of_the_pool(tiny_dirs, tmp_path, monkeypatch):
    import headsurgeon.evaluate.run as ev
    from headsurgeon.model.beliefs import base_beliefs, known_ids
    from headsurgeon.model.sources import load_model
    from headsurgeon.report.shortcut_section import shortcut_blocks

    recipe = _recipe(tmp_path, tiny_dirs["llama"])
    pool = ev.load_eval_items(recipe)
    assert len(pool) == 30                       # eval.pool, not eval.n_items
    model, tok, _ = load_model(str(tiny_dirs["llama"]))
    known = known_ids(base_beliefs(model, tok, pool, recipe.templates, readings=("letter",)),
                      "letter")
    assert len(known) > 5                        # a random tiny model: ~1/4 of 30 by luck
    expected = [q.id for q in pool if q.id in known][:5]
    ran, real = [], ev.evaluate_model

    def spy(model, tok, r, items, **kw):
        ran.append(([q.id for q in items], kw["known_items"]))
        return real(model, tok, r, items, **kw)
    monkeypatch.setattr(ev, "evaluate_model", spy)
    doc = json.loads(ev.evaluate(recipe, progress=False).read_text())
    assert ran == [(expected, set(expected))]
    syc = doc["models"]["base"]["sycophancy"]
    assert syc["n_items"] == 5 and syc["selectivity"]["n_known"] == 5
    assert syc["selectivity"]["beliefs"]["scope"] == {"pool": 30, "known_in_pool": len(known),
                                                      "evaluated": 5}
    assert doc["config"]["scope"] == "known" and doc["config"]["n_items"] == 30
    text = " ".join(b.text or "" for b in shortcut_blocks(doc["models"]))
    assert f"5 evaluated, of {len(known)} known among the 30 data.eval items read" in text


def test_scope_all_reads_the_first_n_items_and_says_nothing(tiny_dirs, tmp_path):
    import headsurgeon.evaluate.run as ev
    from headsurgeon.report.shortcut_section import _scope_blocks

    every = [q.id for q in ev.load_eval_items(_recipe(tmp_path, tiny_dirs["llama"]))]
    recipe = _recipe(tmp_path, tiny_dirs["llama"], extra="")
    assert [q.id for q in ev.load_eval_items(recipe)] == every[:5]
    assert _scope_blocks({"base": {"sycophancy": {"selectivity": {"beliefs": {}}}}},
                         ["base"]) == []


def test_the_sweep_reads_after_the_pool(tiny_dirs, tmp_path):
    from headsurgeon.core.recipe import load_recipe
    from headsurgeon.evaluate.run import load_eval_items
    from headsurgeon.sweep import selection_items

    p = tmp_path / "sw.yaml"
    p.write_text(RECIPE.format(model=tiny_dirs["llama"], n_items=5, out=tmp_path / "run",
                               extra=", scope: known, pool: 30")
                 + "sweep:\n  n_items: 8\n  points: [{name: a}, {name: b, revise_ratio: 0.2}]\n")
    recipe = load_recipe(p)
    pool = {q.id for q in load_eval_items(recipe)}
    chosen = selection_items(recipe)
    assert len(chosen) == 8 and not pool & {q.id for q in chosen}
    p.write_text(p.read_text().replace("pool: 30", "pool: 38"))
    with pytest.raises(ValidationError) as e:
        selection_items(load_recipe(p))
    assert "beyond the 38 the report reads (eval.pool)" in str(e.value)


@pytest.mark.parametrize("extra, field, message", [
    (", scope: known, known: {by: first_answer}", "eval.scope",
     "scope known needs eval.known read from beliefs"),
    (", pool: 30", "eval.pool", "pool is read only with scope: known"),
    (", scope: some", "eval.scope", "Input should be 'all' or 'known'"),
])
def test_scope_settings_are_checked_at_their_line(tmp_path, extra, field, message):
    from headsurgeon.core.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("model: {source: x}\neval:\n  n_items: 5\n"
                 + "".join(f"  {kv.strip()}\n" for kv in _split(extra)))
    with pytest.raises(ValidationError) as e:
        load_recipe(p)
    assert f"{field}: {message}" in str(e.value), str(e.value)
    assert e.value.exit_code == 2


def _split(extra: str) -> list[str]:
    """", a: 1, b: {c: d}" -> ["a: 1", "b: {c: d}"] (top-level commas only)."""
    out, depth, cur = [], 0, ""
    for ch in extra.lstrip(", "):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur] if cur.strip() else out
