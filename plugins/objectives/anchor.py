"""``sft_anchor``: the paper's SFT, with the model's unchallenged answers held in place.

Loss: cross-entropy on the dialogues' chosen assistant turns (as ``sft``) plus
``anchor_weight`` x KL(base || tuned) over the option letters after the BARE question
("The answer is (" with nothing before it but the question): the first answer the base
would give.

Why: the challenge targets end in a letter read after the same prefix the model answers
every multiple-choice question with, so plain SFT of a few heads also moves the model's
first answers (Qwen2.5-Coder-0.5B: MC general accuracy 0.42 -> 0.23 after 60 steps,
method.md §6). The edit should change how the model treats a challenge, not what it
believes before one; the anchor says exactly that, on the training questions only.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from headsurgeon.data.dialogue import answer_token_ids, encode, left_pad, render
from headsurgeon.train.dialogues import tokenize_all
from headsurgeon.train.objectives import StrictParams, TrainBatch, lm_loss, right_pad, safe_pad_id

from .consistency import cached_base_letters, last_logits, letter_kl
from .sft import SFT


@dataclass
class AnchorBatch:
    sft: TrainBatch
    first: tuple              # (input_ids, attention_mask) of the bare questions, left-padded
    letter_ids: list          # per row: the option letters' token ids after the prefix
    keys: list                # per row: the question id (the base's answer is cached)
    step: int = 0
    micro: int = 0

    def to(self, device) -> "AnchorBatch":
        return AnchorBatch(self.sft.to(device), tuple(t.to(device) for t in self.first),
                           self.letter_ids, self.keys, self.step, self.micro)


class SFTAnchor(SFT):
    name = "sft_anchor"

    class Params(StrictParams):
        anchor_weight: float = Field(1.0, ge=0, description=(
            "weight of KL(base || tuned) over the letters of the unchallenged first answer"))

    def __init__(self):
        self._base: dict = {}  # question id -> the base's letter log-probs (never changes)

    def collate(self, ctx, params, dialogues):
        tok, t = ctx.tokenizer, ctx.templates
        pad = safe_pad_id(tok, ctx.model)
        prefix = t.first_answer.split("{letter}", 1)[0]
        texts = [render(tok, d.messages[:d.challenge_turn - 1], prefix) for d in dialogues]
        first = left_pad([encode(tok, x) for x in texts], pad)
        letters = [answer_token_ids(tok, x, d.letters, field="templates.first_answer")
                   for x, d in zip(texts, dialogues)]
        return AnchorBatch(right_pad(tokenize_all(tok, dialogues), pad),
                           (first.input_ids, first.attention_mask), letters,
                           [d.qid for d in dialogues])

    def loss(self, ctx, model, trainable, batch: AnchorBatch, params):
        base = cached_base_letters(self._base, model, trainable, batch.keys, batch.first,
                                   batch.letter_ids)
        ce = lm_loss(model, batch.sft)
        kl = letter_kl(last_logits(model, *batch.first), batch.letter_ids, base)
        return ce + params.anchor_weight * kl, {"ce": float(ce.detach()),
                                                "anchor_kl": float(kl.detach())}
