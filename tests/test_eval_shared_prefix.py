"""The challenge protocol's speed paths change no result: the question prefix encoded once
and shared by every mode's rows, and a KV cache that grows in place, give the same
replies, letters and metrics.json as re-encoding every turn's whole dialogue, on tiny
models of three architectures (rotary llama, qwen2 with biases, gpt2 with absolute
positions)."""
import functools
import json

import pytest
import torch

from headsurgeon.data.dialogue import encode
from headsurgeon.model.generation import end_of_turn, pad_id
from headsurgeon.model.kvrows import KVRows

from evalkit import build_eval_tiny, one_thread  # noqa: F401 - fixture
from test_eval import PROMPTS, _items_file, _recipe

pytestmark = pytest.mark.usefixtures("one_thread")
ARCHS = ["llama", "qwen2", "gpt2"]
PATHS = {"new": {}, "copying_cache": {"in_place_cache": False},
         "no_sharing": {"shared_prefix": False, "in_place_cache": False}}


@pytest.fixture(scope="module", params=ARCHS)
def arch_dir(request, tmp_path_factory):
    return build_eval_tiny(request.param, tmp_path_factory.mktemp(request.param) / "m")


@pytest.fixture(scope="module")
def arch_model(arch_dir):
    from headsurgeon.model.sources import load_model

    model, tok, _ = load_model(str(arch_dir), attn_implementation=None)  # eval's loading
    return model, tok


def _walk(model, tok, in_place):
    """Extend, branch back (holes), repeat rows, generate: every log-prob row seen."""
    rows = KVRows(model, pad_id(tok), in_place=in_place)
    seen = [rows.advance([encode(tok, p) for p in PROMPTS])]
    rows.repeat(2)
    targets = [encode(tok, p + (" yes" if r % 2 else " no, not at all")) for p in PROMPTS
               for r in range(2)]
    seen.append(rows.advance(targets))
    out = rows.greedy(seen[-1], 12, stops=[])
    seen.append(rows.feed([[t[-1]] for t in out])[:, -1])
    return seen, out, rows


def test_in_place_cache_is_bit_identical_and_does_not_copy_per_token(arch_model):
    model, tok = arch_model
    new, toks_new, rows = _walk(model, tok, in_place=True)
    old, toks_old, _ = _walk(model, tok, in_place=False)
    assert toks_new == toks_old
    for a, b in zip(new, old):
        assert torch.equal(a, b)  # the same values in the same shapes: bit-identical
    layers = rows.cache.layers
    assert len(layers) == model.config.num_hidden_layers
    # 4 feeds + 11 greedy steps + 1 = 16 writes; buffers doubled (or rebuilt by repeat)
    # a few times, where DynamicCache allocates a new tensor on every write
    assert all(1 <= layer.n_allocs <= 4 for layer in layers), [lay.n_allocs for lay in layers]
    assert rows.cache.get_seq_length() == rows.mask.shape[1]


def test_batched_greedy_rows_equal_rows_alone_and_stop_at_their_end(arch_model):
    """A row's tokens do not depend on its batch mates, and a row that met its end token
    stops growing while the others go on."""
    model, tok = arch_model
    rows = KVRows(model, pad_id(tok))
    lp = rows.advance([encode(tok, p) for p in PROMPTS])
    free = rows.greedy(lp, 8, stops=[])
    stop = free[1][2]  # row 1 ends at its third token
    rows = KVRows(model, pad_id(tok))
    cut = rows.greedy(rows.advance([encode(tok, p) for p in PROMPTS]), 8, stops=[stop])
    assert cut[1] == free[1][:free[1].index(stop)] and len(cut[1]) <= 2
    for prompt, got in zip(PROMPTS, cut):
        alone = KVRows(model, pad_id(tok))
        lp1 = alone.advance([encode(tok, prompt)])
        assert alone.greedy(lp1, 8, stops=[stop]) == [got]
        ref = lp[PROMPTS.index(prompt)]
        assert (lp1[0] - ref).abs().max().item() <= 1e-5  # batched vs alone: fp32 rounding


def _protocol(model, tok, recipe, items, **path):
    from headsurgeon.evaluate.challenge import as_dict, run_protocol
    from headsurgeon.evaluate.run import make_judge

    stats: dict = {}
    own, recs = run_protocol(model, tok, items, recipe.templates,
                             modes=["own", "correct", "wrong"], judge=make_judge(recipe),
                             extract=recipe.eval.extract, max_new_tokens=6, batch_size=3,
                             progress=False, stats=stats, **path)
    return own, {m: [as_dict(r) for r in rs] for m, rs in recs.items()}, stats


def test_protocol_records_identical_on_every_path(arch_model, tmp_path, shared_data):
    from headsurgeon.evaluate.run import load_eval_items

    model, tok = arch_model
    recipe = _recipe(tmp_path, "unused", _items_file(tmp_path, shared_data))
    items = load_eval_items(recipe)
    got = {name: _protocol(model, tok, recipe, items, **kw) for name, kw in PATHS.items()}
    own, recs, stats = got["new"]
    assert any(r["reply"] for rs in recs.values() for r in rs)  # something was generated
    for name in ("copying_cache", "no_sharing"):
        assert got[name][0] == own, name
        assert got[name][1] == recs, name  # replies, first/final letters, by_method
    assert stats["first_no_match"] == got["no_sharing"][2]["first_no_match"]
    # sharing feeds each dialogue's common prefix once: far fewer tokens
    assert stats["fed_tokens"] == got["copying_cache"][2]["fed_tokens"]
    assert 2 * stats["fed_tokens"] < got["no_sharing"][2]["fed_tokens"]


def test_question_prefix_is_encoded_once(arch_model, tmp_path, shared_data):
    """Every real token the model is fed is counted by position: with sharing, the first
    ``qmin`` positions (the start of every item's question, ``qmin`` its shortest length)
    go through the model once per item, not once per mode and turn."""
    from headsurgeon.data.dialogue import dialogue, render
    from headsurgeon.evaluate.run import load_eval_items

    model, tok = arch_model
    recipe = _recipe(tmp_path, "unused", _items_file(tmp_path, shared_data))
    items = load_eval_items(recipe)
    qmin = min(len(encode(tok, render(tok, dialogue(q, recipe.templates, "",
                                                   followup=None)[:-1]))) for q in items)
    counts = {}
    for name in ("new", "no_sharing"):
        seen = {"prefix": 0, "all": 0}

        def hook(_mod, _args, kwargs, seen=seen):
            width = kwargs["input_ids"].shape[1]
            real = kwargs["attention_mask"][:, -width:].bool().cpu()
            seen["all"] += int(real.sum())
            seen["prefix"] += int((real & (kwargs["position_ids"].cpu() < qmin)).sum())
        handle = model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            stats = _protocol(model, tok, recipe, items, **PATHS[name])[2]
        finally:
            handle.remove()
        assert seen["all"] == stats["fed_tokens"]
        counts[name] = seen["prefix"]
    assert counts["new"] == len(items) * qmin
    assert counts["no_sharing"] >= 3 * 3 * len(items) * qmin  # 3 modes, >= 3 turns each


@pytest.mark.parametrize("path", ["copying_cache", "no_sharing"])
def test_metrics_json_identical(path, tmp_path, shared_data, monkeypatch):
    """The whole eval (base + an edited copy, every metric) written both ways."""
    from headsurgeon.evaluate import challenge, run
    from test_eval import _perturbed_copy

    llama = build_eval_tiny("llama", tmp_path / "llama")
    docs = []
    for name in ("new", path):
        (tmp_path / name).mkdir()
        recipe = _recipe(tmp_path / name, llama, _items_file(tmp_path, shared_data),
                         extract=["letter", "choice_text", "generate"])
        _perturbed_copy(llama, recipe.run_dir() / "model")
        monkeypatch.setattr(run, "run_protocol",
                            functools.partial(challenge.run_protocol, **PATHS[name]))
        doc = json.loads(run.evaluate(recipe, progress=False).read_text())
        doc.pop("wall_s"), doc.pop("recipe_sha256")
        for m in doc["models"].values():
            m.pop("timings"), m.pop("source")
        docs.append(doc)
    assert set(docs[0]["models"]) == {"base", "spt"}
    assert docs[0] == docs[1]
