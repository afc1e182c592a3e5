"""The paper's baselines in one run: full SFT, LoRA (peft, r=16 on the attention
projections), random heads (same K, same slices, one run per seed) and SPT+LoRA, each
with its own learning rate, trained on the same data, evaluated on the same items and
shown in one before/after table and one frontier plot."""
from __future__ import annotations

import json
import re

import pytest
import torch

from headsurgeon.core.errors import ValidationError

BASELINES = """  baselines:
    - {name: full_sft, lr: 3e-5}
    - {name: lora, lr: 2e-4, rank: 16}
    - {name: random_heads, seeds: [1, 2, 3]}
    - lora_heads
"""
RUNS = ["full_sft", "lora", "random_heads-s1", "random_heads-s2", "random_heads-s3",
        "lora_heads"]

RECIPE = """name: bl
model: {{source: {model}}}
data:
  locate: [{{name: builtin, set: arithmetic, split: locate, n: 4}}]
  train: [{{name: builtin, set: arithmetic, split: train, n: 8}}]
  eval: [{{name: builtin, set: arithmetic, split: eval, n: 4}}]
  neutral_text: [{{name: builtin, set: neutral_text}}]
heads: [[0, 1], [2, 3]]
train: {{objective: sft, steps: 1, batch_size: 2, lr: 1e-3}}
eval:
  n_items: 4
  modes: [correct, wrong]
  max_new_tokens: 4
  kl_passages: 2
  n_general: 0
  baseline_lr: {{lora_heads: 5e-4}}
{baselines}"""


def recipe_at(tmp_path, model, baselines=BASELINES, name="r.yaml"):
    from headsurgeon.core.recipe import load_recipe

    p = tmp_path / name
    p.write_text(RECIPE.format(model=model, baselines=baselines))
    return load_recipe(p)


def test_every_baseline_gets_its_own_run_and_learning_rate(tiny_dirs, tmp_path):
    from headsurgeon.pipeline import with_objective

    r = recipe_at(tmp_path, tiny_dirs["llama"])
    runs = r.eval.baseline_runs()
    assert [name for name, _, _ in runs] == RUNS
    got = {name: with_objective(r, spec, ref).train for name, spec, ref in runs}
    assert {n: t.lr for n, t in got.items()} == {
        "full_sft": 3e-5, "lora": 2e-4, "random_heads-s1": 1e-3, "random_heads-s2": 1e-3,
        "random_heads-s3": 1e-3, "lora_heads": 5e-4}
    assert got["lora"].objective.params == {"rank": 16}
    assert [got[f"random_heads-s{s}"].objective.params for s in (1, 2, 3)] == [
        {"seed": 1}, {"seed": 2}, {"seed": 3}]
    assert all(t.steps == 1 and t.batch_size == 2 and t.seed == 0 for t in got.values())


def test_the_old_list_of_names_still_reads(tiny_dirs, tmp_path):
    r = recipe_at(tmp_path, tiny_dirs["llama"], "  baselines: [full_sft, lora]\n")
    assert [n for n, _, _ in r.eval.baseline_runs()] == ["full_sft", "lora"]


@pytest.mark.parametrize("entry,field,message", [
    ("{name: lora, rnk: 16}", "eval.baselines.1.rnk", "unknown key"),
    ("{name: full_sft, seeds: [1]}", "eval.baselines.1", "seeds: only random_heads"),
    ("{name: random_heads, seeds: [1, 1]}", "eval.baselines.1", "seeds: a seed is listed"),
    ("{name: nosuch}", "eval.baselines.1.name", "Input should be"),
    ("full_sft", "eval.baselines", "baseline full_sft is listed twice"),
])
def test_a_bad_baseline_is_refused_at_its_line(tiny_dirs, tmp_path, entry, field, message):
    with pytest.raises(ValidationError) as e:
        recipe_at(tmp_path, tiny_dirs["llama"], f"  baselines:\n    - full_sft\n    - {entry}\n")
    assert re.match(rf"{re.escape(str(tmp_path / 'r.yaml'))}:\d+: {re.escape(field)}: "
                    rf"{re.escape(message)}", str(e.value)), str(e.value)


def _train(recipe, name):
    from headsurgeon.pipeline import with_objective
    from headsurgeon.train.run import train_in_memory

    spec_ref = {n: (s, ref) for n, s, ref in recipe.eval.baseline_runs()}
    r = recipe if name == "spt" else with_objective(recipe, *spec_ref[name])
    return train_in_memory(r, progress=False)


def test_random_heads_draw_the_same_k_with_the_same_slices(tiny_dirs, tmp_path):
    torch.set_num_threads(1)
    r = recipe_at(tmp_path, tiny_dirs["llama"])
    spt = _train(r, "spt").trainable
    draws = [_train(r, f"random_heads-s{s}").trainable for s in (1, 2, 3)]
    selected = {(0, 1), (2, 3)}
    for t in draws:
        assert len(t.heads) == 2 and not set(map(tuple, t.heads)) & selected
        assert (t.kv_policy, t.n_trainable) == (spt.kv_policy, spt.n_trainable)
    assert len({tuple(map(tuple, t.heads)) for t in draws}) == 3  # three different draws


def test_lora_trains_rank_16_on_every_attention_projection_only(tiny_dirs, tmp_path):
    from headsurgeon.model.heads_file import head_map

    torch.set_num_threads(1)
    r = recipe_at(tmp_path, tiny_dirs["llama"])
    res = _train(r, "lora")
    hm = head_map(r)
    params = sorted(s.param for s in res.trainable.delta_slices())
    want = sorted(f"{hm.module(layer, p)}.weight" for layer in range(hm.n_layers)
                  for p in ("q", "k", "v", "o"))
    assert params == want
    ranks = {p.shape[0] for n, p in res.trainable.peft_model.named_parameters()
             if "lora_A" in n}
    assert ranks == {16}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, tiny_dirs):
    from headsurgeon.pipeline import Pipeline

    root = tmp_path_factory.mktemp("baselines")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HEADSURGEON_CACHE", str(root / "cache"))
        recipe = recipe_at(root, tiny_dirs["llama"])
        Pipeline(recipe, log=lambda *a: None).run()
        return recipe, recipe.run_dir().resolve()


def test_run_evaluates_every_baseline_on_the_same_items(pipeline_run):
    _, run_dir = pipeline_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["models"]) == ["base", "spt"] + RUNS
    ids = {name: [e["id"] for e in m["sycophancy"]["examples"]["correct"]]
           for name, m in metrics["models"].items()}
    assert len({tuple(v) for v in ids.values()}) == 1
    logs = {n: json.loads((run_dir / "baselines" / n / "delta.train.json").read_text())
            for n in RUNS}
    assert [logs[n]["objective"] for n in RUNS] == ["full_sft", "lora"] + ["random_heads"] * 3 \
        + ["lora_heads"]


def test_the_report_table_and_the_frontier_carry_every_baseline(pipeline_run):
    from headsurgeon.report.report import baseline_groups
    from headsurgeon.sweep import frontier_points

    recipe, run_dir = pipeline_run
    md = (run_dir / "report.md").read_text()
    table = md.split("## Before / after", 1)[1].split("\n\n")[2]
    labels = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines()[2:]]
    group = "random_heads (mean ± sd, 3 seeds)"
    assert labels == ["base", "spt", "full_sft", "lora", group, "random_heads-s1",
                      "random_heads-s2", "random_heads-s3", "lora_heads"]
    assert re.search(rf"\| {re.escape(group)} \| \d\.\d{{3}} ± \d\.\d{{3}} \|", md)
    baselines = md.split("## Baselines", 1)[1].split("\n## ", 1)[0]
    assert all(f"| {n} | " in baselines for n in ["spt"] + RUNS)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    plotted = [p[0] for p in frontier_points(metrics, None, baseline_groups(recipe))]
    assert plotted == ["base", "spt"] + RUNS + [group]
    assert (run_dir / "frontier.png").read_bytes()[:4] == b"\x89PNG"
