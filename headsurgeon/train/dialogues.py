"""Training dialogues: question -> first answer -> challenge -> target reply [-> final answer].

Two kinds, mixed by ``train.revise_ratio``:

- ``insist``: the first answer is correct; the target keeps and restates it;
- ``revise``: the first answer is wrong; the target admits it and gives the correct one.

Without revise cases the model learns plain stubbornness (method.md §6). First answers are
prefilled from gold / wrong letters, or the model's own greedy letters decide the kind
(``train.first_answer: model``). Every target reply states the final letter the same way
the first answer does ("The answer is (X)"), so what the model learns to condition on is
its own reading of the question, not the prefilled letter.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from headsurgeon.data.dialogue import (encode, first_answer_text, format_question, left_pad,
                                       render, tokenize_dialogue)
from headsurgeon.data.questions import Question
from headsurgeon.core.recipe import Templates
from headsurgeon.core.sections import CHALLENGE_PARAPHRASES  # noqa: F401 - re-exported


# Target replies, by kind and style. "answer_first" states the letter before keeping or
# admitting, so the verdict is conditioned on tokens the model has already written (it can
# compare them with the first answer); "verdict_first" is how chat models usually answer.
REPLIES = {
    ("insist", "verdict_first"): (
        "Yes, I am sure. The answer is ({letter}) {text}.",
        "I have checked it again and I am confident. The answer is ({letter}) {text}.",
        "I understand your doubt, but my answer stands: the answer is ({letter}) {text}.",
        "Yes. After reconsidering, I still believe the answer is ({letter}) {text}.",
    ),
    ("insist", "answer_first"): (
        "The answer is ({letter}) {text}. I double-checked it and it is correct.",
        "The answer is ({letter}) {text}, as I said. I am confident about it.",
        "The answer is ({letter}) {text}. I understand your doubt, but I stand by it.",
        "The answer is ({letter}) {text}. Yes, I am sure.",
    ),
    ("revise", "verdict_first"): (
        "You are right, I made a mistake. The answer is ({letter}) {text}.",
        "I apologize, my previous answer was wrong. The answer is ({letter}) {text}.",
        "Thank you for pointing that out. ({wrong}) is not correct; the answer is "
        "({letter}) {text}.",
        "Good catch, I was wrong. The answer is ({letter}) {text}.",
    ),
    ("revise", "answer_first"): (
        "The answer is ({letter}) {text}. I'm sorry, my first answer ({wrong}) was a mistake.",
        "The answer is ({letter}) {text}. You are right, ({wrong}) was wrong.",
        "The answer is ({letter}) {text}. Thank you for pointing out my mistake.",
        "The answer is ({letter}) {text}, not ({wrong}). I apologize for the error.",
    ),
}
STYLES = ("mixed", "answer_first", "verdict_first")


def replies(kind: str, style: str = "mixed") -> tuple[str, ...]:
    if style == "mixed":
        return REPLIES[(kind, "verdict_first")] + REPLIES[(kind, "answer_first")]
    return REPLIES[(kind, style)]


KINDS = ("insist", "revise")


@dataclass(frozen=True)
class TrainDialogue:
    qid: str
    kind: str                 # insist | revise
    first_letter: str
    target_letter: str
    messages: tuple           # chat messages (dicts)
    loss_turns: tuple         # message indices whose content is trained
    challenge_turn: int = 2   # index of the challenge message
    letters: str = "ABCD"     # the question's option letters

    def context(self, followup: str) -> list[dict]:
        """The messages up to the first answer, then the user's ``followup``."""
        return list(self.messages[:self.challenge_turn]) + [{"role": "user",
                                                             "content": followup}]


def challenges(t: Templates) -> list[str]:
    return t.training_challenges()


def _option_text(q: Question, letter: str) -> str:
    return q.choices[q.letters.index(letter)].strip().rstrip(".")


def make_dialogue(q: Question, t: Templates, kind: str, first_letter: str, *, challenge: str,
                  reply_template: str, final_turn: bool, loss_on: Sequence[str]
                  ) -> TrainDialogue:
    target = q.answer
    reply = reply_template.format(letter=target, text=_option_text(q, target),
                                  wrong=first_letter)
    msgs = []
    if t.system:
        msgs.append({"role": "system", "content": t.system})
    msgs.append({"role": "user", "content": format_question(q, t)})
    msgs.append({"role": "assistant", "content": first_answer_text(t, q, first_letter)})
    msgs.append({"role": "user", "content": challenge})
    challenge_turn = len(msgs) - 1
    msgs.append({"role": "assistant", "content": reply})
    turns = [len(msgs) - 1] if "reply" in loss_on else []
    if final_turn:
        msgs.append({"role": "user", "content": t.final_question})
        msgs.append({"role": "assistant", "content": first_answer_text(t, q, target)})
        if "final" in loss_on:
            turns.append(len(msgs) - 1)
    if not turns:
        raise ValueError("no assistant turn carries loss (train.loss_on)")
    return TrainDialogue(q.id, kind, first_letter, target, tuple(msgs), tuple(turns),
                         challenge_turn, q.letters)


Pool = list[tuple[Question, Optional[str]]]


def build_pools(questions: Sequence[Question], mode: str, *,
                model_letters: Optional[dict] = None, items: str = "all") -> tuple[Pool, Pool]:
    """(insist pool, revise pool) of (question, first letter or None = draw a wrong one).

    ``mode`` prefilled: every item can be either kind. ``model``: the model's own greedy
    letter decides (correct -> insist, wrong -> revise with that letter). ``items`` known:
    only items the model answers correctly (needs ``model_letters``)."""
    if (mode == "model" or items == "known") and model_letters is None:
        raise ValueError("the model's own first answers are needed")
    qs = list(questions)
    if items == "known":
        qs = [q for q in qs if model_letters.get(q.id) == q.answer]
    if mode == "prefilled":
        return [(q, q.answer) for q in qs], [(q, None) for q in qs]
    insist = [(q, q.answer) for q in qs if model_letters[q.id] == q.answer]
    revise = [(q, model_letters[q.id]) for q in qs if model_letters[q.id] != q.answer]
    return insist, revise


def build_dialogues(insist_pool, revise_pool, t: Templates, *, n: int, revise_ratio: float,
                    seed: int, final_turn: bool = True,
                    loss_on: Sequence[str] = ("reply", "final"), style: str = "mixed"
                    ) -> list[TrainDialogue]:
    """``n`` dialogues, ``round(n * revise_ratio)`` of them revise, drawn cyclically from
    each shuffled pool with seeded challenge/reply phrasings; the result is shuffled.
    An empty pool hands its share to the other kind."""
    rng = random.Random(seed)
    n_revise = round(n * revise_ratio)
    if not revise_pool:
        n_revise = 0
    if not insist_pool:
        n_revise = n
    if not insist_pool and not revise_pool:
        raise ValueError("no questions to build dialogues from")
    chs = challenges(t)
    out: list[TrainDialogue] = []
    for kind, pool, count in (("insist", insist_pool, n - n_revise),
                              ("revise", revise_pool, n_revise)):
        phrasings = replies(kind, style)
        order = list(pool)
        rng.shuffle(order)
        for i in range(count):
            q, first = order[i % len(order)]
            if first is None:
                first = rng.choice(q.wrong_letters())
            out.append(make_dialogue(q, t, kind, first, challenge=rng.choice(chs),
                                     reply_template=rng.choice(phrasings), final_turn=final_turn,
                                     loss_on=loss_on))
    rng.shuffle(out)
    return out


def tokenize_all(tokenizer, dialogues: Sequence[TrainDialogue]) -> list[tuple[list, list]]:
    return [tokenize_dialogue(tokenizer, d.messages, d.loss_turns) for d in dialogues]


def first_answer_prefix(t: Templates) -> str:
    return t.first_answer.split("{letter}")[0]


@torch.no_grad()
def model_first_letters(model, tokenizer, questions: Sequence[Question], t: Templates, *,
                        batch_size: int = 16, progress: bool = False) -> dict[str, str]:
    """The model's own greedy letter for each question, read after the first answer's
    prefix ("The answer is (") among the question's option letters."""
    from headsurgeon.core.progress import progress_bar

    from headsurgeon.train.objectives import safe_pad_id
    from headsurgeon.data.dialogue import answer_token_ids

    prefix = first_answer_prefix(t)
    out: dict[str, str] = {}
    device = next(model.parameters()).device
    pad = safe_pad_id(tokenizer, model)
    qs = list(questions)
    starts = range(0, len(qs), batch_size)
    for i in progress_bar(starts, desc="first answers", disable=not progress, leave=False):
        chunk = qs[i:i + batch_size]
        texts = [render(tokenizer, [{"role": "user", "content": format_question(q, t)}]
                        if not t.system else
                        [{"role": "system", "content": t.system},
                         {"role": "user", "content": format_question(q, t)}],
                        prefix) for q in chunk]
        b = left_pad([encode(tokenizer, x) for x in texts], pad)
        logits = model(input_ids=b.input_ids.to(device),
                       attention_mask=b.attention_mask.to(device)).logits[:, -1].float()
        for row, q, text in zip(logits, chunk, texts):
            ids = answer_token_ids(tokenizer, text, q.letters, field="templates.first_answer")
            out[q.id] = q.letters[int(torch.argmax(row[ids]))]
    return out
