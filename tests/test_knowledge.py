"""The base model's beliefs (model/beliefs.py), knowledge-aware training pools
(train/knowledge.py) and the consistency objective's unprompted teacher."""
import json

import pytest
import torch

from headsurgeon.core.recipe import Templates
from headsurgeon.data.dialogue import dialogue, encode, format_question, letter_token_ids, render
from headsurgeon.data.questions import read_jsonl
from headsurgeon.model.beliefs import Belief, base_beliefs, is_known, known_ids, summary
from headsurgeon.train.knowledge import knowledge_pools

from evalkit import eval_tiny_dir, one_thread, tiny  # noqa: F401 - fixtures
from train_helpers import load, recipe_text, write_questions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    return read_jsonl(write_questions(tmp_path_factory.mktemp("q") / "q.jsonl", 16))


def _b(letter="A", lm=1.0, text="A", tm=1.0, answer="A"):
    return Belief("q", answer, letter, lm, text, tm)


def test_belief_readings_and_margins():
    assert is_known(_b(), "letter") and is_known(_b(), "choice_text") and is_known(_b(), "both")
    assert not is_known(_b(letter="B"), "letter") and is_known(_b(letter="B"), "choice_text")
    assert not is_known(_b(letter="B"), "both") and is_known(_b(letter="B"), "either")
    assert not is_known(_b(letter="B", text="C"), "either")
    assert is_known(_b(lm=0.5), "letter", 0.4) and not is_known(_b(lm=0.5), "letter", 0.6)
    # under the margin a reading is no belief at all
    assert _b(lm=0.1).believed("letter", 0.5) is None
    assert _b(letter="B", tm=0.1).believed("either", 0.5) == "B"


def test_beliefs_equal_plain_forwards(tiny, questions):
    """The letter reading is the argmax over option letters after "The answer is (", the
    text reading the option whose text, written where the letter goes ("The answer is
    Rome"), has the best summed token log-likelihood: both recomputed here with one plain
    forward per sequence."""
    from headsurgeon.model.kvrows import common_prefix

    model, tok = tiny
    t = Templates()
    beliefs = base_beliefs(model, tok, questions, t, batch_size=5)
    assert set(beliefs) == {q.id for q in questions}
    ids = letter_token_ids(tok, "ABCD")
    for q in questions[:6]:
        prompt = render(tok, dialogue(q, t, "", followup=None)[:-1], "The answer is (")
        with torch.no_grad():
            row = model(torch.tensor([encode(tok, prompt)])).logits[0, -1].float()
        lp = torch.log_softmax(row, -1)[ids]
        b = beliefs[q.id]
        assert b.letter == "ABCD"[int(lp.argmax())]
        top2 = lp.topk(2).values
        assert b.letter_margin == pytest.approx(float(top2[0] - top2[1]), abs=1e-4)
        sums = []
        head = render(tok, [{"role": "user", "content": format_question(q, t)}],
                      "The answer is ")
        for k in range(len(q.letters)):
            f = encode(tok, head + q.choices[k].strip())
            start = max(min(common_prefix(encode(tok, head), f), len(f) - 1), 1)
            with torch.no_grad():
                lo = torch.log_softmax(model(torch.tensor([f])).logits[0].float(), -1)
            sums.append(sum(float(lo[j - 1, f[j]]) for j in range(start, len(f))))
        assert b.text_letter == "ABCD"[max(range(4), key=sums.__getitem__)]
        srt = sorted(sums, reverse=True)
        assert b.text_margin == pytest.approx(srt[0] - srt[1], abs=1e-3)
    s = summary(beliefs, "letter")
    assert s["n"] == len(questions)
    assert s["n_known"] == len(known_ids(beliefs, "letter")) == round(
        s["letter_accuracy"] * len(questions))


def test_knowledge_pools_policy(questions):
    beliefs = {q.id: Belief(q.id, q.answer, q.answer if i % 2 == 0 else q.wrong_letters()[0],
                            1.0) for i, q in enumerate(questions)}
    insist, revise, info = knowledge_pools(questions, beliefs, by="letter")
    known = {q.id for i, q in enumerate(questions) if i % 2 == 0}
    assert {q.id for q, _ in insist} == known == {q.id for q, _ in revise}
    assert all(first == q.answer for q, first in insist)
    assert all(first is None for _, first in revise)  # a wrong letter is drawn later
    assert info["n_known_used"] == len(known) and info["n_unknown_used"] == 0
    insist, revise, info = knowledge_pools(questions, beliefs, by="letter", unknown="paper")
    assert len(insist) == len(revise) == len(questions) and info["n_unknown_used"] == 8
    # insist: unknown items are kept when right, never taught to be given up
    insist, revise, info = knowledge_pools(questions, beliefs, by="letter", unknown="insist")
    assert len(insist) == len(questions) and {q.id for q, _ in revise} == known
    assert all(first == q.answer for q, first in insist) and info["n_unknown_used"] == 8
    with pytest.raises(ValueError):
        knowledge_pools(questions, beliefs, by="letter", unknown="guess")


def test_training_log_records_beliefs_and_uses_known_items_only(tmp_path, eval_tiny_dir):
    from headsurgeon.model.beliefs import base_beliefs as bb
    from headsurgeon.model.sources import load_model
    from headsurgeon.train.run import build_training_data, plan_training

    qfile = write_questions(tmp_path / "train.jsonl", 16)
    rpath = tmp_path / "r.yaml"
    rpath.write_text(recipe_text(eval_tiny_dir, qfile, extra_train=(
        "knowledge: {by: either, unknown: drop}")))
    plan = plan_training(load(rpath))
    model, tok, _ = load_model(str(eval_tiny_dir))
    dialogues, _, info = build_training_data(plan, model, tok, progress=False)
    from headsurgeon.data.permute import rotations

    beliefs = bb(model, tok, plan.questions, Templates())
    presented = known_ids(beliefs, "either")
    # the default rule is letter-invariant: right under all 4 rotations of the options
    rotated = bb(model, tok, [v for q in plan.questions for v in rotations(q, 4)],
                 Templates())
    known = {q.id for q in plan.questions
             if all(is_known(rotated[v.id], "either") for v in rotations(q, 4))}
    assert 0 < len(known) < len(presented) < len(plan.questions)
    assert {d.qid for d in dialogues} <= known
    rec = info["knowledge"]
    assert rec["n_known"] == len(known) and len(rec["beliefs"]) == len(plan.questions)
    assert rec["n_known_presented"] == len(presented) and rec["permutations"] == 4
    assert {r["qid"] for r in rec["beliefs"] if r["known"]} == known
    assert {d.kind for d in dialogues} == {"insist", "revise"}
    for d in dialogues:  # revise: a wrong letter prefilled, the (believed) gold as target
        assert (d.first_letter == d.target_letter) == (d.kind == "insist")
    json.dumps(info)  # recorded in <delta>.train.json as is


def test_consistency_unprompted_teacher_has_no_first_answer(tiny, questions):
    """teacher: unprompted reads the base after the bare question; neutral after the
    first answer and the neutral follow-up."""
    from types import SimpleNamespace

    from headsurgeon.train.dialogues import build_dialogues
    from headsurgeon_plugins.objectives.consistency import Consistency

    model, tok = tiny
    t = Templates()
    dialogues = build_dialogues([(q, q.answer) for q in questions[:4]],
                                [(q, None) for q in questions[:4]], t, n=4,
                                revise_ratio=0.5, seed=0)
    ctx = SimpleNamespace(tokenizer=tok, templates=t, model=model)
    obj = Consistency()
    un = obj.collate(ctx, obj.Params(teacher="unprompted"), dialogues)
    ne = obj.collate(ctx, obj.Params(), dialogues)
    pad = tok.pad_token_id
    for row, d in enumerate(dialogues):
        ids = [i for i, m in zip(un.neutral[0][row].tolist(), un.neutral[1][row].tolist()) if m]
        want = render(tok, d.messages[:d.challenge_turn - 1], "The answer is (")
        assert ids == encode(tok, want)
        assert t.first_answer.format(letter=d.first_letter) not in tok.decode(ids)
        n_ids = [i for i, m in zip(ne.neutral[0][row].tolist(), ne.neutral[1][row].tolist())
                 if m]
        assert t.neutral in tok.decode(n_ids) and n_ids != ids
        assert un.keys[row] == (d.qid, None) and ne.keys[row] == (d.qid, d.first_letter)
    assert pad is not None


def test_a_second_training_plan_reads_the_run_beliefs_cache(tmp_path, eval_tiny_dir,
                                                            monkeypatch):
    """Every baseline and sweep point of a run trains on the same base beliefs: the second
    build reads them from the run's cache (no forward), identical to the first; other
    templates (another key) are computed again, and a tampered file is not trusted."""
    import headsurgeon.model.beliefs as mb
    from headsurgeon.model.sources import load_model
    from headsurgeon.train.run import build_training_data, plan_training

    qfile = write_questions(tmp_path / "train.jsonl", 16)
    rpath = tmp_path / "r.yaml"
    rpath.write_text(recipe_text(eval_tiny_dir, qfile, extra_train=(
        "knowledge: {by: either, unknown: drop}")) + f"output_dir: {tmp_path / 'run'}\n")
    model, tok, _ = load_model(str(eval_tiny_dir))
    calls = []
    real = mb.base_beliefs
    monkeypatch.setattr(mb, "base_beliefs", lambda *a, **k: calls.append(1) or real(*a, **k))
    plan = plan_training(load(rpath))
    first = build_training_data(plan, model, tok, progress=False)[2]["knowledge"]
    files = list((tmp_path / "run" / "cache").glob("beliefs-*.json"))
    assert len(calls) == 1 and len(files) == 1
    second = build_training_data(plan_training(load(rpath)), model, tok,
                                 progress=False)[2]["knowledge"]
    assert len(calls) == 1 and second == first
    other = plan_training(load(rpath))
    other.recipe.templates = Templates(challenge="Really? Think again.")
    build_training_data(other, model, tok, progress=False)
    assert len(calls) == 2 and len(list(files[0].parent.glob("beliefs-*.json"))) == 2
    doc = json.loads(files[0].read_text())
    doc["key"] = "0" * 64
    files[0].write_text(json.dumps(doc))
    assert build_training_data(plan, model, tok, progress=False)[2]["knowledge"] == first
    assert len(calls) == 3 and json.loads(files[0].read_text())["key"] != "0" * 64
