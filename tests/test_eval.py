"""Eval mechanics on tiny random models: the cached protocol equals plain forwards and
generation, KL, end-to-end metrics.json, determinism, bad input."""
import copy
import json
import shutil

import pytest
import torch

from headsurgeon.core.errors import ValidationError
from headsurgeon.model.generation import generate, next_token_logprobs, pad_id
from headsurgeon.model.kvrows import KVRows
from headsurgeon.data.dialogue import encode

from evalkit import build_eval_tiny, eval_tiny_dir, one_thread, tiny  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Hello there, what is the answer?", "Short", "A much longer prompt that goes on"]


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from headsurgeon.model.sources import load_model

    model, tok, _ = load_model(str(build_eval_tiny("gpt2", tmp_path_factory.mktemp("g") / "g")))
    return model, tok


def _all_ids(model):
    return list(range(model.config.vocab_size))


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    from headsurgeon.model.sources import load_model

    model, tok, _ = load_model(str(build_eval_tiny("gemma3", tmp_path_factory.mktemp("g3") / "g")))
    return model, tok


@pytest.mark.parametrize("which", ["tiny", "tiny_gpt2", "tiny_gemma3"])
def test_kvrows_advance_equals_plain_forward(which, request):
    """Rotary and absolute positions; a 16-token sliding window (re-encodes, no reuse)."""
    model, tok = request.getfixturevalue(which)
    rows = KVRows(model, pad_id(tok))
    assert rows.reuse == (which != "tiny_gemma3")
    steps = [PROMPTS, [p + " The answer is (" for p in PROMPTS],
             [PROMPTS[0] + " xyz", "Sh", PROMPTS[2] + " and then some more"], PROMPTS]
    for texts in steps:  # extend, branch back, shrink: holes in the cache
        lp = rows.advance([encode(tok, x) for x in texts])
        ref = next_token_logprobs(model, tok, texts, _all_ids(model), progress=False)
        assert torch.allclose(lp[:, :model.config.vocab_size], ref, atol=1e-4)
    if not rows.reuse:
        return  # scoring feeds two chunks: with a 16-token window the holes matter
    targets = [encode(tok, PROMPTS[i] + " and more words") for i in range(3)]
    froms = [len(encode(tok, p)) for p in PROMPTS]
    _, sums = rows.advance(targets, score_from=froms)
    for tgt, s, got in zip(targets, froms, sums):
        with torch.no_grad():
            lg = torch.log_softmax(model(input_ids=torch.tensor([tgt])).logits[0].float(), -1)
        assert got == pytest.approx(sum(lg[j - 1, tgt[j]].item() for j in range(s, len(tgt))),
                                    abs=1e-3)


def test_kvrows_greedy_equals_hf_generate_and_stops(tiny, monkeypatch):
    from headsurgeon.model import generation

    model, tok = tiny
    stops, _ = generation.end_of_turn(tok)
    texts = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=2, progress=False)
    rows = KVRows(model, pad_id(tok))
    toks = rows.greedy(rows.advance([encode(tok, p) for p in PROMPTS]), 6, stops=stops)
    assert [tok.decode(t, skip_special_tokens=True).strip() for t in toks] == texts
    # no stop tokens: always max_new_tokens; a stop token ends a row before it (not kept)
    rows = KVRows(model, pad_id(tok))
    full = rows.greedy(rows.advance([encode(tok, p) for p in PROMPTS]), 6, stops=[])
    assert all(len(t) == 6 for t in full)
    stop = full[0][2]
    rows = KVRows(model, pad_id(tok))
    cut = rows.greedy(rows.advance([encode(tok, p) for p in PROMPTS]), 6, stops=[stop])
    for f, c in zip(full, cut):
        assert c == (f[:f.index(stop)] if stop in f else f)
    monkeypatch.setattr(generation, "end_of_turn", lambda t: (stops + [stop], ""))
    rows = KVRows(model, pad_id(tok))
    both = rows.greedy(rows.advance([encode(tok, p) for p in PROMPTS]), 6, stops=stops + [stop])
    got = generate(model, tok, PROMPTS, max_new_tokens=6, progress=False)
    assert got == [tok.decode(t, skip_special_tokens=True).strip() for t in both]
    assert len(both[0]) <= 2


def test_end_of_turn_tokens(tiny):
    from transformers import AutoTokenizer

    from headsurgeon.model.generation import end_of_turn
    from headsurgeon.model.sources import resolve_model

    _, tok = tiny
    assert end_of_turn(tok) == ([tok.eos_token_id], "<eos>")  # tiny turns end "<eos>\n"
    smol = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct").path)
    assert end_of_turn(smol) == ([smol.convert_tokens_to_ids("<|im_end|>")], "<|im_end|>")


def test_kl_zero_for_identical_positive_for_perturbed(tiny):
    from headsurgeon.evaluate.general import kl_divergence

    model, tok = tiny
    passages = ["The quick brown fox jumps over the lazy dog.", "Water boils at 100 C."]
    assert kl_divergence(model, model, tok, passages, progress=False) == 0.0
    kls = []
    for eps in (1e-3, 1e-1):
        edited = copy.deepcopy(model)
        with torch.no_grad():
            w = edited.model.layers[1].self_attn.o_proj.weight
            w[:, :8] += eps * torch.randn(w.shape[0], 8, generator=torch.Generator().manual_seed(0))
        kls.append(kl_divergence(model, edited, tok, passages, progress=False))
    assert 0 < kls[0] < kls[1]
    assert kl_divergence(model, model, tok, [], progress=False) is None


def _items_file(tmp_path, shared_data, n_mc=5, n_num=2):
    lines = (shared_data / "arc" / "arc_easy_validation.jsonl").read_text().splitlines()[:n_mc]
    lines += (shared_data / "arithmetic_gpt3" / "arithmetic_gpt3.jsonl").read_text() \
        .splitlines()[:n_num]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _recipe(tmp_path, model_dir, items, **eval_kw):
    from headsurgeon.core.recipe import load_recipe

    ev = {"n_items": 7, "max_new_tokens": 6, "batch_size": 3, "n_general": 6,
          "kl_passages": 3, "extract": ["letter", "choice_text", "generate"], **eval_kw}
    data = {"name": "t", "model": {"source": str(model_dir)},
            "data": {"eval": {"name": "jsonl", "path": str(items)},
                     "general": [{"name": "jsonl", "path": str(items)}]},
            "eval": ev, "output_dir": str(tmp_path / "run")}
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return load_recipe(path, check_plugins=False)


def test_protocol_records_match_naive_reference(tiny, tmp_path, shared_data):
    from headsurgeon.evaluate.challenge import run_protocol
    from headsurgeon.evaluate.run import load_eval_items, make_judge
    from headsurgeon.data.dialogue import dialogue, render

    model, tok = tiny
    recipe = _recipe(tmp_path, "unused", _items_file(tmp_path, shared_data))
    items = load_eval_items(recipe)
    assert len(items) == 7 and sum(not q.is_mc for q in items) == 2
    t = recipe.templates
    own, recs = run_protocol(model, tok, items, t, modes=["own", "correct", "wrong"],
                             judge=make_judge(recipe), extract=recipe.eval.extract,
                             max_new_tokens=6, batch_size=3, progress=False)
    judge = make_judge(recipe)
    for mode, rs in recs.items():
        assert [r.id for r in rs] == [q.id for q in items]
        assert [r.admitted for r in rs] == judge.judge([r.reply for r in rs])
        for q, r, o in zip(items, rs, own):
            if q.is_mc:
                assert r.first == {"own": o, "correct": q.answer}.get(mode, r.first)
                assert (r.first != q.answer) if mode == "wrong" else True
                assert set(r.by_method) == {"letter", "choice_text", "generate"}
                assert r.final == r.by_method["letter"]["answer"] in q.letters
                assert r.kept_first == (r.final == r.first)
            else:
                assert set(r.by_method) == {"generate"}
    # the cached path gives what plain prompts give: replies and final letters
    q, r = items[0], recs["correct"][0]
    conv = dialogue(q, t, q.answer, "challenge")
    assert r.reply == generate(model, tok, [render(tok, conv)], max_new_tokens=6,
                               progress=False)[0]
    final = conv + [{"role": "assistant", "content": r.reply},
                    {"role": "user", "content": t.final_question}]
    from headsurgeon.data.dialogue import letter_token_ids
    lp = next_token_logprobs(model, tok, [render(tok, final, t.final_prefix)],
                             letter_token_ids(tok, q.letters), progress=False)
    assert "ABCDE"[int(lp[0].argmax())] == r.final
    # choice_text: the option text written where the letter goes, summed log-likelihood,
    # one plain forward per option (not the text after its letter, which copies it)
    from headsurgeon.data.dialogue import encode
    from headsurgeon.model.kvrows import common_prefix

    for q, r in zip(items, recs["correct"]):
        if not q.is_mc:
            continue
        final = dialogue(q, t, q.answer, "challenge") + [
            {"role": "assistant", "content": r.reply},
            {"role": "user", "content": t.final_question}]
        head = render(tok, final, "The answer is ")
        sums = []
        for choice in q.choices:
            f = encode(tok, head + choice.strip())
            start = max(min(common_prefix(encode(tok, head), f), len(f) - 1), 1)
            with torch.no_grad():
                lo = torch.log_softmax(model(torch.tensor([f])).logits[0].float(), -1)
            sums.append(sum(float(lo[j - 1, f[j]]) for j in range(start, len(f))))
        assert r.by_method["choice_text"]["answer"] == \
            "ABCDE"[max(range(len(sums)), key=sums.__getitem__)], (q.id, sums)


def _perturbed_copy(src, dst, eps=0.05):
    from transformers import AutoModelForCausalLM

    shutil.copytree(src, dst)
    m = AutoModelForCausalLM.from_pretrained(dst)
    with torch.no_grad():
        m.model.layers[0].self_attn.q_proj.weight.add_(eps)
    m.save_pretrained(dst)
    return dst


def test_evaluate_end_to_end_deterministic(eval_tiny_dir, tmp_path, shared_data):
    from headsurgeon.evaluate.run import evaluate

    recipe = _recipe(tmp_path, eval_tiny_dir, _items_file(tmp_path, shared_data),
                     extract=["letter", "generate"])
    _perturbed_copy(eval_tiny_dir, recipe.run_dir() / "model")
    path = evaluate(recipe, progress=False)
    doc = json.loads(path.read_text())
    assert path == recipe.run_dir() / "metrics.json"
    assert doc["format"] == "headsurgeon.metrics/1" and list(doc["models"]) == ["base", "spt"]
    base, spt = doc["models"]["base"], doc["models"]["spt"]
    assert "kl" not in base and spt["kl"]["mean"] > 0 and spt["kl"]["n_passages"] == 3
    syc = base["sycophancy"]
    assert syc["n_items"] == 7 and set(syc["modes"]) == {"own", "correct", "wrong"}
    assert syc["n_known"] == len(base["known_ids"])
    assert syc["modes"]["own"]["known"]["n"] == syc["n_known"]
    assert set(spt["sycophancy"]["modes"]["wrong"]) == {"all", "known", "base_known"}
    assert spt["sycophancy"]["modes"]["wrong"]["base_known"]["n"] == syc["n_known"]
    ex = syc["examples"]["wrong"][0]
    assert {"question", "first_answer", "reply", "final_answer", "final_text"} <= set(ex)
    gen = base["general"]
    assert set(gen["sets"]) == {"jsonl/mc", "jsonl/open"}  # one mixed source, two halves
    assert gen["sets"]["jsonl/mc"]["n"] + gen["sets"]["jsonl/open"]["n"] == 6  # n_general
    assert gen["sets"]["jsonl/open"]["kind"] == "numeric"
    assert all(0 <= s["accuracy"] <= 1 for s in gen["sets"].values())

    def strip(d):
        d = copy.deepcopy(d)
        d.pop("wall_s")
        for m in d["models"].values():
            m.pop("timings")
        return d
    again = json.loads(evaluate(recipe, progress=False).read_text())
    assert strip(again) == strip(doc)  # deterministic
    # one model named on the command line: the other entry is kept (same config)
    evaluate(recipe, models=[str(recipe.run_dir() / "model")], progress=False)
    kept = json.loads(path.read_text())
    assert list(kept["models"]) == ["base", "spt"]
    assert strip(kept)["models"]["spt"] == strip(doc)["models"]["spt"]


def test_evaluate_bad_input_writes_nothing(tmp_path, shared_data):
    from headsurgeon.evaluate.run import evaluate

    recipe = _recipe(tmp_path, tmp_path / "missing-model", _items_file(tmp_path, shared_data))
    with pytest.raises(ValidationError) as exc:
        evaluate(recipe, progress=False)
    assert "model.source" in str(exc.value) and "\n" not in str(exc.value)
    assert not (recipe.run_dir() / "metrics.json").exists()
    from headsurgeon.core.recipe import load_recipe

    p = tmp_path / "noeval.yaml"
    p.write_text("model: {source: x}\n")
    with pytest.raises(ValidationError, match=r"noeval.yaml.*data.eval"):
        evaluate(load_recipe(p, check_plugins=False), progress=False)
