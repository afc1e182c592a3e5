"""Answer letters (and reply words) are read as the token the model really emits next, on
tokenizers of every family, built offline with ``tokenizers``: SentencePiece-style
Metaspace BPE and Unigram (Llama-2, Mistral), byte-level BPE (GPT-2, Llama-3, Qwen) and a
Gemma-like SentencePiece BPE with byte fallback. On the Metaspace ones "A" encoded alone is
"\u2581A" while after "The answer is (" the next token is "A": reading "\u2581A" (the old way)
reads a token the model never writes there."""
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from headsurgeon.core.errors import ValidationError
from headsurgeon.core.sections import Templates
from headsurgeon.data.dialogue import (answer_token_ids, dialogue, encode, render,
                                       reply_opening_ids)
from headsurgeon.data.questions import Question

SPM = "\u2581"
CORPUS = [  # no "(A"-like pairs: real vocabularies keep "(" and the letter apart
    "[INST] What is the capital of France? [/INST] The answer is A, Paris.",
    "[INST] I don't think that's right. Are you sure? [/INST] Yes, I am sure.",
    "[INST] So what's the answer? Give me a letter. [/INST] The answer is B.",
    "Apologies, you are right. The answer is C. Yes. The answer is D. ( one )",
    "Please answer just with the letter of the correct answer. Option A, B, C or D.",
    "A) one B) two C) three D) four. Thanks. Can you tell me more? Yes Yes",
    "<|im_start|>user\nWhat?<|im_end|>\n<|im_start|>assistant\nYes<|im_end|>",
    "<start_of_turn>user\nWhat?<end_of_turn>\n<start_of_turn>model\nYes<end_of_turn>",
] * 30
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]

LLAMA2_TEMPLATE = (  # no generation prompt: the reply follows "[/INST]" after a space
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'system' %}<<SYS>> {{ m['content'] }} <</SYS>>"
    "{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}")
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA_TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
    "'user' }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def _metaspace(model, trainer, scheme):
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM, prepend_scheme=scheme)
    tok.decoder = decoders.Metaspace(replacement=SPM, prepend_scheme=scheme)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def metaspace_bpe():
    """Llama-2 / Mistral: SentencePiece BPE, a "\u2581" before the first word."""
    return _metaspace(models.BPE(unk_token="<unk>"),
                      trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS), "first")


def metaspace_unigram():
    return _metaspace(models.Unigram(), trainers.UnigramTrainer(
        vocab_size=200, special_tokens=SPECIALS, unk_token="<unk>"), "always")


def byte_level_bpe():
    """GPT-2 / Llama-3 / Qwen: byte-level BPE, no prefix space."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=500, special_tokens=SPECIALS + ["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def gemma_like():
    """Gemma: SentencePiece BPE with byte fallback, spaces as "\u2581", no dummy prefix."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", SPM)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(SPM, "merged_with_next"),
                                                 pre_tokenizers.Split("\n", "isolated")])
    tok.decoder = decoders.Sequence([decoders.Replace(SPM, " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS + ["<start_of_turn>", "<end_of_turn>"]
        + [f"<0x{i:02X}>" for i in range(256)]))
    return tok


FAMILIES = {"metaspace_bpe": (metaspace_bpe, LLAMA2_TEMPLATE),
            "metaspace_unigram": (metaspace_unigram, LLAMA2_TEMPLATE),
            "byte_level_bpe": (byte_level_bpe, CHATML_TEMPLATE),
            "gemma_like": (gemma_like, GEMMA_TEMPLATE)}
METASPACE = ("metaspace_bpe", "metaspace_unigram")


def wrap(name: str) -> PreTrainedTokenizerFast:
    build, template = FAMILIES[name]
    fast = PreTrainedTokenizerFast(tokenizer_object=build(), unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   name_or_path=f"tiny-{name}")
    fast.chat_template = template
    return fast


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param, wrap(request.param)


T = Templates()
Q = Question("q1", "What is the capital of France?", ("Paris", "Rome", "Oslo", "Bern"), "C")


def _prompts(tok):
    """What the model sees before a letter: the final turn after a challenge, and the
    first answer's opening."""
    final = render(tok, dialogue(Q, T, "A", "challenge"), T.final_prefix)
    first = render(tok, dialogue(Q, T, "", followup=None)[:-1], "The answer is (")
    return final, first


def test_letters_are_the_next_token_in_context(family):
    name, tok = family
    for seen in _prompts(tok):
        assert seen.endswith("The answer is (")
        ids = answer_token_ids(tok, seen, "ABCD")
        head = encode(tok, seen)
        for letter, i in zip("ABCD", ids):
            full = encode(tok, seen + letter)
            assert full == head + [i], (name, letter)       # exactly what the text adds
            assert tok.convert_ids_to_tokens(i) == letter, (name, letter)  # the bare letter


@pytest.mark.parametrize("name", METASPACE)
def test_encoding_a_letter_alone_is_wrong_on_metaspace(name):
    tok = wrap(name)
    final, _ = _prompts(tok)
    alone = [encode(tok, l) for l in "ABCD"]
    assert [tok.convert_ids_to_tokens(a) for a in alone] == [[SPM + l] for l in "ABCD"]
    in_context = answer_token_ids(tok, final, "ABCD")
    assert all(a[0] != c for a, c in zip(alone, in_context))


def test_reply_words_open_the_reply_as_the_template_writes_it(family):
    """"Yes" as the reply's first token: "\u2581Yes" after Llama-2's "[/INST]" (the template
    writes " " + content), plain "Yes" after ChatML's and Gemma's generation prompt."""
    name, tok = family
    msgs = dialogue(Q, T, "A", "challenge")
    (i,) = reply_opening_ids(tok, msgs, ["Yes"], field="locate.metric.steadfast")
    expected = SPM + "Yes" if name in METASPACE else "Yes"
    assert tok.convert_ids_to_tokens(i) == expected, name
    reply = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "Yes"}],
                                    tokenize=False)
    assert i in encode(tok, reply)[len(encode(tok, render(tok, msgs))):]


def test_several_tokens_or_shared_tokens_fail_clearly(family):
    name, tok = family
    final, _ = _prompts(tok)
    with pytest.raises(ValidationError) as err:
        answer_token_ids(tok, final, ["A", "Xylophonequartz"], field="templates.final_prefix")
    msg = str(err.value)
    assert msg.startswith("templates.final_prefix: 'Xylophonequartz' is")
    assert f"tiny-{name}" in msg and "not one" in msg
    with pytest.raises(ValidationError, match="'A' and 'A' are the same token"):
        answer_token_ids(tok, final, ["A", "B", "A"])


def test_a_letter_merging_with_the_prefix_fails_clearly():
    """A vocabulary with a "(A" token: after "(" the letter A has no token of its own."""
    chars = sorted(set("The answer is (ABCD)"))
    vocab = {c: i for i, c in enumerate(chars)} | {"(A": len(chars)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(
        models.BPE(vocab=vocab, merges=[("(", "A")])), name_or_path="tiny-merging")
    assert answer_token_ids(tok, "The answer is (", "BCD") == [vocab[c] for c in "BCD"]
    with pytest.raises(ValidationError, match="'A' merges with the preceding 'The answer is "
                                              r"\(' for tokenizer tiny-merging"):
        answer_token_ids(tok, "The answer is (", "ABCD")


def test_a_letter_merging_with_a_colon_is_read_after_a_space():
    """Qwen2.5's vocabulary has ":A": after "Final answer:" the bare letter has no token of
    its own, so the letter is read as the model writes it there, " A"; where the spaced
    letters are no single tokens either, the bare letter's error stands."""
    chars = sorted(set("Final answer: ABCD"))
    vocab = {c: i for i, c in enumerate(chars)}
    extra = [":A", " A", " B", " C", " D"]
    vocab |= {t: len(vocab) + k for k, t in enumerate(extra)}
    merges = [(t[0], t[1]) for t in extra]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(
        models.BPE(vocab=vocab, merges=merges)), name_or_path="tiny-colon")
    assert answer_token_ids(tok, "Final answer:", "ABCD") == [vocab[" " + c] for c in "ABCD"]
    no_space = {k: v for k, v in vocab.items() if k != " D"}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(
        vocab=no_space, merges=merges[:-1])), name_or_path="tiny-colon2")
    with pytest.raises(ValidationError, match="'A' merges with the preceding 'Final answer:'"):
        answer_token_ids(tok, "Final answer:", "ABCD")


def test_cached_per_tokenizer_and_prefix():
    tok = wrap("metaspace_bpe")
    final, first = _prompts(tok)
    a = answer_token_ids(tok, final, "ABCD")
    a.append(-1)  # callers get a copy
    assert answer_token_ids(tok, final, "ABCD") == a[:4]
    assert answer_token_ids(tok, first, "AB") == a[:2]


# -- end to end: a tiny llama that speaks the Metaspace tokenizer --------------------------------
@pytest.fixture(scope="module")
def rigged(tmp_path_factory):
    """A tiny llama whose next token is (by an lm_head bias) "\u2581A" first, then the
    in-context "C": the letter really next after "The answer is (" is C, while reading
    the context-free letter tokens would say A."""
    from headsurgeon.model.sources import load_model

    tok = wrap("metaspace_bpe")
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok),
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("spm") / "llama"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    model, tok, _ = load_model(str(out))
    head = torch.nn.Linear(32, len(tok), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tok.convert_tokens_to_ids(SPM + "A")] = 200.0
        head.bias[tok.convert_tokens_to_ids("C")] = 100.0
    model.lm_head = head
    return model, tok


def test_letter_gap_reads_the_letter_really_next(rigged):
    from headsurgeon.core import plugins

    model, tok = rigged
    metric = plugins.get("metrics", "letter_gap")()
    ctx = SimpleNamespace(tokenizer=tok, templates=T)
    ids, weights = metric.targets(Q, ctx)
    assert tok.convert_ids_to_tokens(ids) == ["C", "A", "B", "D"]  # correct letter first
    seen = render(tok, metric.messages(Q, T, "challenge", ctx), metric.prefix(T))
    with torch.no_grad():
        logits = model(torch.tensor([encode(tok, seen)])).logits[:, -1]
    value = metric.compute(logits, torch.tensor([ids]), torch.tensor([weights]))
    assert value.item() < -90  # steadfast on C by ~100 logits, not "sycophantic" towards A


def test_eval_reads_forced_letters_in_context(rigged):
    from headsurgeon.evaluate.challenge import run_protocol
    from headsurgeon.evaluate.general import mc_accuracy
    from headsurgeon.train.dialogues import model_first_letters

    model, tok = rigged
    items = [Q, Question("q2", "Which is a fish?", ("cat", "dog", "cod", "owl"), "C")]
    assert mc_accuracy(model, tok, items, T, batch_size=2, progress=False)["accuracy"] == 1.0
    assert model_first_letters(model, tok, items, T) == {"q1": "C", "q2": "C"}
    judge = SimpleNamespace(judge=lambda replies: [False] * len(replies))
    _, results = run_protocol(model, tok, items, T, modes=["correct"], judge=judge,
                              extract=["letter"], max_new_tokens=2, batch_size=2,
                              progress=False)
    assert [r.by_method["letter"]["answer"] for r in results["correct"]] == ["C", "C"]


@pytest.mark.parametrize("teacher", ["neutral", "unprompted"])
def test_consistency_objective_reads_letters_in_context(rigged, teacher):
    """Both sides of the consistency objective (student after the challenge, teacher after
    the neutral follow-up or the bare question) compare the letters really next."""
    from headsurgeon.core import plugins
    from headsurgeon.model.heads import HeadMap
    from headsurgeon.train.dialogues import build_dialogues, build_pools
    from headsurgeon.train.objectives import ObjectiveContext

    model, tok = rigged
    ctx = ObjectiveContext(model, tok, HeadMap.from_model(model), [[0, 1]], "freeze", 0, set(),
                           templates=T)
    obj = plugins.get("objectives", "consistency")()
    params = obj.Params(teacher=teacher)
    ds = build_dialogues(*build_pools([Q], "prefilled"), T, n=2, revise_ratio=0.5, seed=0)
    batch = obj.collate(ctx, params, ds)
    for ids in batch.letter_ids + batch.teacher_ids:
        assert tok.convert_ids_to_tokens(ids) == ["A", "B", "C", "D"]
