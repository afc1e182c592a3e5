"""Dialogues in the model's own chat template: question, first answer, challenge, reply,
final-answer turn. Locate, train and eval all build their inputs here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from headsurgeon.core.errors import ValidationError
from headsurgeon.data.questions import Question
from headsurgeon.core.recipe import Templates

FOLLOWUPS = ("challenge", "counterfactual", "neutral")


def format_question(q: Question, t: Templates) -> str:
    if not q.is_mc:
        return q.question
    options = "\n".join(t.option.format(letter=l, text=c) for l, c in zip(q.letters, q.choices))
    return t.question.format(question=q.question, options=options)


def followup_text(kind: str, t: Templates) -> str:
    if kind in FOLLOWUPS:
        return getattr(t, kind)
    return kind  # a literal follow-up sentence


def dialogue(q: Question, t: Templates, first_letter: str, followup: str | None = "challenge",
             reply: str | None = None, final_question: bool = False,
             first_answer: str | None = None) -> list[dict]:
    """question -> first answer -> follow-up [-> reply -> final question]."""
    msgs = []
    if t.system:
        msgs.append({"role": "system", "content": t.system})
    msgs.append({"role": "user", "content": format_question(q, t)})
    msgs.append({"role": "assistant",
                 "content": first_answer or t.first_answer.format(letter=first_letter)})
    if followup is not None:
        msgs.append({"role": "user", "content": followup_text(followup, t)})
    if reply is not None:
        msgs.append({"role": "assistant", "content": reply})
    if final_question:
        msgs.append({"role": "user", "content": t.final_question})
    return msgs


def render(tokenizer, messages: Sequence[dict], assistant_prefix: str = "") -> str:
    """The prompt text up to the next assistant turn (plus an optional prefilled opening)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValidationError("the tokenizer has no chat template; headsurgeon builds dialogues "
                              "with the model's own template", field="model.source")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=True)
    return text + assistant_prefix


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class Batch:
    input_ids: torch.Tensor       # [B, T], left-padded
    attention_mask: torch.Tensor  # [B, T]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> Batch:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return Batch(ids, mask)


def tokenize_dialogue(tokenizer, messages: Sequence[dict], loss_turns: Sequence[int]
                      ) -> tuple[list[int], list[int]]:
    """Token ids of a whole dialogue and labels that are -100 except on the assistant turns
    whose message indices are in ``loss_turns`` (their content and end-of-turn tokens)."""
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    ids = encode(tokenizer, full)
    labels = [-100] * len(ids)
    for i in loss_turns:
        if messages[i]["role"] != "assistant":
            raise ValueError(f"message {i} is not an assistant turn")
        start_text = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False,
                                                   add_generation_prompt=True)
        end_text = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not full.startswith(start_text) or not full.startswith(end_text):
            raise ValidationError("the chat template does not render dialogues prefix-stably; "
                                  "cannot mask loss per turn", field="model.source")
        start, end = len(encode(tokenizer, start_text)), len(encode(tokenizer, end_text))
        # tokenisation at the boundary can merge; trust the full sequence's own tokens
        for j in range(start, min(end, len(ids))):
            labels[j] = ids[j]
    return ids, labels


def single_token_id(tokenizer, text: str, field: str) -> int:
    """The id of ``text`` as the first token of a reply; it must be exactly one token."""
    ids = encode(tokenizer, text)
    if len(ids) != 1:
        raise ValidationError(f"{text!r} is {len(ids)} tokens for this tokenizer, not one",
                              field=field)
    return ids[0]


def letter_token_ids(tokenizer, letters: str) -> list[int]:
    return [single_token_id(tokenizer, l, "choices") for l in letters]
