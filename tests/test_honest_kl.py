"""Honest selection and regularisation.

``sft_kl`` never regularises on the passages eval measures KL(base || edited) on: with
``data.neutral_text`` given to both (examples/sweep.yaml does), training gets the other
passages, compared by text hash, and the split is recorded in the train log. The sweep
chooses its point on ``data.eval`` items the report does not evaluate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from headsurgeon.core.errors import ValidationError

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """name: kl
model: {{source: {model}}}
data:
  locate: [{{name: builtin, set: arithmetic, split: locate, n: 4}}]
  train: [{{name: builtin, set: arithmetic, split: train, n: 8}}]
  eval: [{{name: builtin, set: arithmetic, split: eval, n: 6}}]
  neutral_text: [{{name: builtin, set: neutral_text}}]
heads: [[0, 1], [1, 2]]
train: {{objective: {{name: sft_kl, kl_weight: 0.5, kl_batch: 4}}, steps: 3, batch_size: 2}}
eval: {{n_items: 6, kl_passages: {kl}}}
"""


def hashes(texts):
    from headsurgeon.data.neutral import text_hash

    return {text_hash(t) for t in texts}


def recipe_with(tmp_path, model, kl: int):
    from headsurgeon.core.recipe import load_recipe

    p = tmp_path / f"kl{kl}.yaml"
    p.write_text(RECIPE.format(model=model, kl=kl))
    return load_recipe(p)


def eval_kl_texts(recipe):
    from headsurgeon.evaluate.general import neutral_passages
    from headsurgeon.evaluate.run import load_eval_items

    return neutral_passages(recipe, load_eval_items(recipe))[0]


def test_the_sweep_example_regularises_on_other_passages_than_eval_measures():
    from headsurgeon.core.recipe import load_recipe
    from headsurgeon.data.neutral import regulariser_passages
    from headsurgeon.evaluate.run import load_eval_items

    recipe = load_recipe(ROOT / "examples" / "sweep.yaml")
    measured = eval_kl_texts(recipe)
    train, info = regulariser_passages(recipe, load_eval_items(recipe))
    assert len(measured) == recipe.eval.kl_passages == 24
    assert hashes(train) & hashes(measured) == set()
    assert (info["train"], info["excluded"], info["eval_kl_passages"]) == (26, 24, 24)


def test_train_plan_excludes_eval_kl_passages(tiny_dirs, tmp_path):
    from headsurgeon.train.run import plan_training

    recipe = recipe_with(tmp_path, tiny_dirs["llama"], kl=10)
    plan = plan_training(recipe)
    measured = eval_kl_texts(recipe)
    assert len(measured) == 10 and len(plan.neutral) == 50 - 10
    assert hashes(plan.neutral) & hashes(measured) == set()
    assert plan.neutral_info["excluded"] == 10


def test_the_regulariser_batches_never_hold_an_eval_passage(tiny_dirs, tmp_path, monkeypatch):
    import headsurgeon_plugins.objectives.sft as sft
    from headsurgeon.train.run import train_in_memory

    recipe = recipe_with(tmp_path, tiny_dirs["llama"], kl=41)  # 9 of the 50 left to train on
    seen = []
    real = sft.neutral_batch

    def spy(ctx, texts, *a, **k):
        seen.extend(texts)
        return real(ctx, texts, *a, **k)
    monkeypatch.setattr(sft, "neutral_batch", spy)
    result = train_in_memory(recipe, progress=False)
    assert len(set(seen)) == 9
    assert hashes(seen) & hashes(eval_kl_texts(recipe)) == set()
    assert result.log["neutral_text"]["train"] == 9
    assert result.log["history"][-1]["kl"] >= 0


def test_when_eval_takes_every_passage_training_falls_back_to_built_in_text(tiny_dirs,
                                                                           tmp_path):
    from headsurgeon.train.run import plan_training

    recipe = recipe_with(tmp_path, tiny_dirs["llama"], kl=500)
    plan = plan_training(recipe)
    assert plan.neutral == []  # sft_kl then uses its built-in passages, written apart
    assert plan.neutral_info["train_source"].startswith("the objective's built-in passages")
    from headsurgeon_plugins.objectives.neutral import PASSAGES

    assert hashes(PASSAGES) & hashes(eval_kl_texts(recipe)) == set()


def test_no_kl_measured_leaves_every_passage_to_training(tiny_dirs, tmp_path):
    from headsurgeon.train.run import plan_training

    plan = plan_training(recipe_with(tmp_path, tiny_dirs["llama"], kl=0))
    assert len(plan.neutral) == 50 and plan.neutral_info["excluded"] == 0


# ------------------------------------------------ the sweep chooses on a validation split

SWEEP = """name: sw
model: {{source: {model}}}
data:
  train: [{{name: builtin, set: arithmetic, split: train, n: 8}}]
  eval: [{{name: builtin, set: arithmetic, split: eval, n: {n_eval}}}]
heads: [[0, 1], [1, 2]]
train: {{steps: 1, batch_size: 2}}
eval: {{n_items: 6, max_new_tokens: 4}}
sweep:
  n_items: 5
  points: [{{name: a}}, {{name: b, revise_ratio: 0.2}}]
"""


def sweep_recipe(tmp_path, model, n_eval):
    from headsurgeon.core.recipe import load_recipe

    p = tmp_path / "sw.yaml"
    p.write_text(SWEEP.format(model=model, n_eval=n_eval))
    return load_recipe(p)


def test_the_sweep_point_is_chosen_on_items_the_report_does_not_evaluate(
        tiny_dirs, tmp_path, monkeypatch):
    import headsurgeon.evaluate.run as ev
    from headsurgeon.sweep import run_sweep

    recipe = sweep_recipe(tmp_path, tiny_dirs["llama"], n_eval=12)
    measured = []
    real = ev.evaluate_model

    def spy(model, tok, r, items, **kw):
        measured.append([q.id for q in items])
        return real(model, tok, r, items, **kw)
    monkeypatch.setattr(ev, "evaluate_model", spy)
    doc = run_sweep(recipe, tmp_path / "run", [[0, 1], [1, 2]], progress=False)
    reported = {q.id for q in ev.load_eval_items(recipe)}
    assert len(measured) == 3 and all(ids == doc["selection"]["ids"] for ids in measured)
    assert len(doc["selection"]["ids"]) == 5 and not reported & set(doc["selection"]["ids"])
    assert doc["chosen"] in ("a", "b")
    saved = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert saved["selection"]["ids"] == doc["selection"]["ids"]


def test_a_sweep_without_items_beyond_the_report_is_refused(tiny_dirs, tmp_path):
    from headsurgeon.sweep import selection_items

    recipe = sweep_recipe(tmp_path, tiny_dirs["llama"], n_eval=8)
    with pytest.raises(ValidationError) as e:
        selection_items(recipe)
    assert str(e.value).startswith(f"{tmp_path / 'sw.yaml'}:10: sweep.n_items: the sweep "
                                   "needs at least 4 validation items beyond the 6")


def test_a_sweep_with_belief_known_items_runs_and_scores_only_those(
        tiny_dirs, tmp_path, monkeypatch):
    """eval.known read from beliefs: the sweep measures only the validation items the base
    knows (the only ones scored), and each point's numbers are the report's selectivity
    entry on exactly those items."""
    import headsurgeon.evaluate.run as ev
    from headsurgeon.core.recipe import load_recipe
    from headsurgeon.model.beliefs import base_beliefs, known_ids
    from headsurgeon.model.sources import load_model
    from headsurgeon.sweep import run_sweep, selection_items

    p = tmp_path / "sw.yaml"
    p.write_text(SWEEP.format(model=tiny_dirs["llama"], n_eval=40).replace(
        "eval: {n_items: 6, max_new_tokens: 4}",
        # one order: a random tiny model knows no item under every rotation of its options
        "eval: {n_items: 6, max_new_tokens: 4, known: {by: letter, permutations: 1}}").replace(
        "n_items: 5", "n_items: 30"))
    recipe = load_recipe(p)
    pool = selection_items(recipe)
    model, tok, _ = load_model(str(tiny_dirs["llama"]))
    known = known_ids(base_beliefs(model, tok, pool, recipe.templates, readings=("letter",)),
                      "letter")
    assert 0 < len(known) < len(pool)
    measured, real = [], ev.evaluate_model

    def spy(model, tok, r, items, **kw):
        out = real(model, tok, r, items, **kw)
        measured.append(([q.id for q in items], out["sycophancy"]["selectivity"]))
        return out
    monkeypatch.setattr(ev, "evaluate_model", spy)
    doc = run_sweep(recipe, tmp_path / "run", [[0, 1], [1, 2]], progress=False)
    assert len(measured) == 3 and doc["known_by"] == "letter"
    assert doc["n_known"] == len(known) and doc["n_items"] == len(pool)
    order = [q.id for q in pool if q.id in known]
    assert doc["selection"]["measured_ids"] == order
    for (ids, sel), point in zip(measured, doc["points"]):
        assert ids == order and sel["n_known"] == len(known)
        assert point["keeps_right"] == sel["keeps_right"]
        assert point["kept_wrong"] == sel["keeps_wrong"]
        assert point["correction"] == sel["correction"]
        assert point["selectivity"] == sel["selectivity"]
