"""Training dialogues: kinds, mix, first answers, phrasings, loss masks."""
from collections import Counter

import pytest

from headsurgeon.train.dialogues import (CHALLENGE_PARAPHRASES, STYLES, build_dialogues, build_pools,
                                   challenges, replies, tokenize_all)
from headsurgeon.data.questions import Question
from headsurgeon.core.recipe import Templates
from headsurgeon.model.tiny import tiny_tokenizer


def qs(n=20):
    return [Question(f"q{i}", f"Question {i}?", ("red", "green", "blue", "pink"), "ABCD"[i % 4])
            for i in range(n)]


def test_phrasings_are_many_and_canonical_first():
    t = Templates()
    ch = challenges(t)
    assert len(ch) >= 10 and len(set(ch)) == len(ch)
    assert ch[0] == "I don't think that's right. Are you sure?"
    assert len(CHALLENGE_PARAPHRASES) == len(ch)
    for kind in ("insist", "revise"):
        assert len(replies(kind)) >= 8
        for style in STYLES:
            assert all("({letter})" in r for r in replies(kind, style))
        assert all(r.startswith("The answer is ({letter})") for r in replies(kind, "answer_first"))
        assert not any(r.startswith("The answer") for r in replies(kind, "verdict_first"))
    custom = Templates(challenge_paraphrases=["Sure?", "Really?"])
    assert challenges(custom) == ["Sure?", "Really?"]


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_prefilled_mix_and_letters(ratio):
    t = Templates()
    ins, rev = build_pools(qs(), "prefilled")
    ds = build_dialogues(ins, rev, t, n=40, revise_ratio=ratio, seed=3)
    kinds = Counter(d.kind for d in ds)
    assert kinds["revise"] == round(40 * ratio) and len(ds) == 40
    for d in ds:
        q = qs()[int(d.qid[1:])]
        assert d.target_letter == q.answer
        if d.kind == "insist":
            assert d.first_letter == q.answer
        else:
            assert d.first_letter != q.answer and d.first_letter in q.letters
        msgs = d.messages
        assert msgs[1]["content"] == f"The answer is ({d.first_letter})."
        assert msgs[2]["content"] in challenges(t)
        assert f"({q.answer})" in msgs[3]["content"]
        assert msgs[4]["content"] == t.final_question
        assert msgs[5]["content"] == f"The answer is ({q.answer})."
        assert d.loss_turns == (3, 5)
    # seeded: same seed same dialogues, other seed other dialogues
    assert ds == build_dialogues(ins, rev, t, n=40, revise_ratio=ratio, seed=3)
    assert ds != build_dialogues(ins, rev, t, n=40, revise_ratio=ratio, seed=4)


def test_model_mode_uses_the_models_letters():
    questions = qs(8)
    letters = {q.id: (q.answer if i % 2 == 0 else q.wrong_letters()[0])
               for i, q in enumerate(questions)}
    ins, rev = build_pools(questions, "model", model_letters=letters)
    assert {q.id for q, _ in ins} == {f"q{i}" for i in range(0, 8, 2)}
    assert all(first == letters[q.id] != q.answer for q, first in rev)
    ds = build_dialogues(ins, rev, Templates(), n=16, revise_ratio=0.5, seed=0,
                         final_turn=False, loss_on=("reply",))
    for d in ds:
        assert d.first_letter == letters[d.qid]
        assert (d.kind == "insist") == (d.first_letter == d.target_letter)
        assert len(d.messages) == 4 and d.loss_turns == (3,)
    # "known" keeps only items the model answers correctly
    ins_k, rev_k = build_pools(questions, "prefilled", model_letters=letters, items="known")
    assert {q.id for q, _ in ins_k} == {q.id for q, _ in rev_k} == {f"q{i}" for i in range(0, 8, 2)}


def test_loss_only_on_chosen_turns():
    tok = tiny_tokenizer()
    ins, rev = build_pools(qs(4), "prefilled")
    for loss_on in (("reply",), ("final",), ("reply", "final")):
        d = build_dialogues(ins, rev, Templates(), n=1, revise_ratio=0.0, seed=0,
                            loss_on=loss_on)[0]
        (ids, labels), = tokenize_all(tok, [d])
        trained = tok.decode([i for i, lab in zip(ids, labels) if lab != -100])
        reply, final = d.messages[3]["content"], d.messages[5]["content"]
        assert (reply in trained) == ("reply" in loss_on)
        assert (final in trained) == ("final" in loss_on)
        assert d.messages[0]["content"][:10] not in trained   # never the question
        assert d.messages[2]["content"] not in trained          # nor the challenge
    with pytest.raises(ValueError):
        build_dialogues(ins, rev, Templates(), n=1, revise_ratio=0.0, seed=0, loss_on=())


def test_empty_pool_hands_over_its_share():
    ins, _ = build_pools(qs(4), "prefilled")
    ds = build_dialogues(ins, [], Templates(), n=10, revise_ratio=0.5, seed=0)
    assert all(d.kind == "insist" for d in ds)
    with pytest.raises(ValueError):
        build_dialogues([], [], Templates(), n=3, revise_ratio=0.5, seed=0)
