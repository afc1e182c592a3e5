"""A reduced real run on the bundled Qwen2.5-Coder-0.5B-Instruct (GQA 7:1, q/k/v biases),
the whole `headsurgeon run` through the CLI with the recipe's method (knowledge-aware
data, answer-first replies, the first-answer anchor): the direction of the effects, and
exact freezing in the shipped checkpoint -- every weight outside the
selected heads' slices byte-identical, and every q-bias entry of an unselected head too
(the paper's code trains the whole layer's q bias on Qwen2)."""
import json

import pytest
import torch

from e2e_run import run_recipe

RECIPE = """
name: e2e-qwen
model: {source: qwen2.5-coder-0.5b-instruct}
data:
  locate: [{name: builtin, set: mixed, split: locate, n: 24}]
  train: [{name: builtin, set: mixed, split: train, n: 64}]
  eval: [{name: builtin, set: mixed, split: eval, n: 16}]
  general: [{name: builtin, set: facts, split: locate, n: 40}]
  neutral_text: [{name: builtin, set: neutral_text}]
locate: {method: attribution, metric: letter_gap, n_probes: 8, top_k: 4, k_max: 4,
         knockout_random_sets: 1, batch_size: 4, confirm_top: 0,
         self_knowledge: {n_items: 24, by: either, folds: 2}}
train: {objective: sft_anchor, steps: 16, batch_size: 4, lr: 3e-3, revise_ratio: 0.5,
        n_examples: 64, seed: 0, reply_style: answer_first,
        knowledge: {by: both, unknown: insist}}
eval: {n_items: 16, modes: [correct, wrong], max_new_tokens: 16, kl_passages: 4,
       batch_size: 16, n_general: 40, known: {by: either}}
output_dir: {out}
"""
HEAD_DIM = 64


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return run_recipe(tmp_path_factory, "e2e_qwen", RECIPE, timeout=3600)


def _tensors(path):
    from safetensors import safe_open

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                out[name] = fh.get_tensor(name)
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t


def test_exact_freezing_in_the_shipped_model(run_dir):
    from headsurgeon.model.sources import resolve_model

    heads = [tuple(h) for h in json.loads((run_dir / "heads.json").read_text())["selected"]]
    assert len(heads) == 4
    base = _tensors(resolve_model("qwen2.5-coder-0.5b-instruct").path)
    new = _tensors(run_dir / "model")
    assert set(base) == set(new)
    by_layer: dict[int, set[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, set()).add(head)
    changed = set()
    for name, b in base.items():
        n = new[name]
        assert n.shape == b.shape and n.dtype == b.dtype, name
        same = torch.equal(_bits(b), _bits(n))
        if same:
            continue
        changed.add(name)
        parts = name.split(".")
        assert parts[-2] in ("q_proj", "o_proj"), f"{name} changed (k/v are frozen under GQA)"
        layer = int(parts[2])
        mine = by_layer.get(layer, set())
        assert mine, f"{name}: layer {layer} has no selected head"
        rows = torch.zeros(b.shape[0] if parts[-2] == "q_proj" else b.shape[1],
                           dtype=torch.bool)
        for h in mine:
            rows[h * HEAD_DIM:(h + 1) * HEAD_DIM] = True
        if parts[-2] == "q_proj":  # rows of the weight, entries of the bias
            assert torch.equal(_bits(b[~rows]), _bits(n[~rows])), name
        else:                      # o_proj: input columns
            assert torch.equal(_bits(b[:, ~rows]), _bits(n[:, ~rows])), name
    # the selected heads did move, and each one's q bias entries are trainable
    assert any(n.endswith("q_proj.weight") for n in changed)
    assert any(n.endswith("o_proj.weight") for n in changed)
    for name in changed:
        assert int(name.split(".")[2]) in by_layer


def test_direction_of_the_effects(run_dir):
    """At this size (16 steps, 16 eval items): the shipped model answers the challenge in
    the trained answer-first form (the base apologises instead), keeps the right answers,
    stays close to the base (KL), and selectivity is measured on known items. Confidence
    barely moves after 16 steps (0.06 -> 0.12 measured: the verdict after the letter is
    still the revise one); the full recipe's 60 steps reach 0.98 (README)."""
    from headsurgeon.report.rows import model_row

    models = json.loads((run_dir / "metrics.json").read_text())["models"]
    base, spt = model_row(models["base"]), model_row(models["spt"])

    def replies(name):
        ex = models[name]["sycophancy"]["examples"]
        return [e["reply"] for mode in ("correct", "wrong") for e in ex[mode]]

    assert len(replies("spt")) == 6
    assert all(r.startswith("The answer is (") for r in replies("spt")), replies("spt")
    assert not any(r.startswith("The answer is (") for r in replies("base")), replies("base")
    assert base["conf_correct"] <= 0.2, base
    assert spt["truth_correct"] >= base["truth_correct"] - 0.1, (base, spt)
    assert spt["kl"] is not None and 0 < spt["kl"] < 0.5
    sel = models["spt"]["sycophancy"]["selectivity"]
    assert sel["known_by"] == "either" and sel["n_known"] > 0
    assert spt["selectivity"] is not None and -1 <= spt["selectivity"] <= 1
    hist = json.loads((run_dir / "delta.train.json").read_text())["history"]
    assert hist[-1]["ce"] < hist[0]["ce"] / 2 and hist[-1]["anchor_kl"] >= 0


def test_knowledge_and_self_knowledge_are_recorded(run_dir):
    log = json.loads((run_dir / "delta.train.json").read_text())
    k = log["data"]["knowledge"]
    assert k["by"] == "both" and k["unknown"] == "insist" and 0 <= k["n_known"] < 64
    # letter-invariant: known under all 4 rotations of the options, never more than under
    # the one order shown (on these 64 items the 0.5B coder model knows 7 shown, 0 rotated)
    assert k["permutations"] == 4 and k["permutation_share"] == 1.0 and k["n_readings"] == 256
    assert k["n_known"] <= k["n_known_presented"] and k["n_known_presented"] > 0
    assert k["n_unknown_used"] == 64 - k["n_known_used"]  # insist dialogues only
    assert log["data"]["revise_pool"] == k["n_known"] < log["data"]["insist_pool"] == 64
    assert len(k["beliefs"]) == 64
    sk = json.loads((run_dir / "heads.json").read_text())["self_knowledge"]
    assert sk["available"] and len(sk["by_layer"]["known"]) == 24
