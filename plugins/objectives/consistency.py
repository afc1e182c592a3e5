"""``consistency``: answer under the challenge as the base model does without one.

Teacher: the frozen base model's distribution over the option letters after the NEUTRAL
follow-up (``templates.neutral``) and ``templates.final_prefix`` ("The answer is (");
student: the tuned model's after the dialogue's CHALLENGE. Loss: KL(teacher || student)
over the question's letters, plus ``ce_weight`` x cross-entropy on the dialogues' chosen
assistant turns (gold answers) when wanted.

``teacher: unprompted`` reads the teacher after the bare question instead ("The answer
is (" with no first answer in context): a model that copies the first letter after any
follow-up (Qwen2.5-Coder) would otherwise teach its heads to copy it (method.md §6b).

``anchor_weight`` adds the same KL on the teacher's own input: the tuned model, asked
what the base was asked, must still answer as the base did. The heads that learn to
re-answer after a challenge also carry the unchallenged answer; without the anchor their
edit moved it (Qwen2.5-Coder-1.5B: ARC-Challenge accuracy 0.60 -> 0.50, method.md §6f).

Why: with a small model that barely knows the answers, gold "insist"/"revise" targets
mostly teach it to copy (or to flip) the prefilled letter; the base model's own
unchallenged behaviour is a target that holds the right answers as firmly as it does
unchallenged, and no more firmly than that (method.md §6).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from headsurgeon.train.objectives import (StrictParams, TrainBatch, lm_loss, right_pad,
                                     safe_pad_id)
from headsurgeon.data.dialogue import answer_token_ids, encode, left_pad, render
from headsurgeon.train.trainable import slice_trainable


@dataclass
class PairBatch:
    challenge: tuple          # (input_ids, attention_mask), left-padded
    neutral: tuple
    letter_ids: list          # per row: the letters' token ids after the challenge side
    keys: list                # per row: cache key of the teacher distribution
    sft: Optional[TrainBatch] = None
    step: int = 0
    micro: int = 0
    teacher_ids: Optional[list] = None  # per row: the letters' ids after the teacher side

    def to(self, device) -> "PairBatch":
        mv = lambda pair: tuple(t.to(device) for t in pair)  # noqa: E731
        return PairBatch(mv(self.challenge), mv(self.neutral), self.letter_ids, self.keys,
                         self.sft.to(device) if self.sft is not None else None, self.step,
                         self.micro, self.teacher_ids)


def last_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens only
    return model(input_ids=ids, attention_mask=mask, position_ids=positions,
                 logits_to_keep=1).logits[:, -1].float()


def cached_base_letters(cache: dict, model, trainable, keys: list, inputs: tuple,
                        letter_ids: list) -> list[torch.Tensor]:
    """The frozen base's log-probs over each row's option letters at its last position,
    computed once per cache key (the base never changes during training)."""
    missing = [i for i, k in enumerate(keys) if k not in cache]
    if missing:
        ids, mask = inputs
        with torch.no_grad(), trainable.base():
            logits = last_logits(model, ids[missing], mask[missing])
        for row, i in zip(logits, missing):
            cache[keys[i]] = F.log_softmax(row[letter_ids[i]], -1).cpu()
    return [cache[k] for k in keys]


def letter_kl(logits: torch.Tensor, letter_ids: list, reference: list) -> torch.Tensor:
    """Mean over rows of KL(reference || model) over each row's option letters."""
    kls = []
    for row, ids, ref in zip(logits, letter_ids, reference):
        logp = F.log_softmax(row[ids], -1)
        ref = ref.to(logp.device)
        kls.append((ref.exp() * (ref - logp)).sum())
    return torch.stack(kls).mean()


class Consistency:
    name = "consistency"
    needs_heads = True

    class Params(StrictParams):
        kl_weight: float = Field(1.0, ge=0, description="weight of KL(teacher || student)")
        ce_weight: float = Field(0.0, ge=0, description="weight of the gold-answer SFT loss")
        teacher: Literal["neutral", "unprompted"] = Field("neutral", description=(
            "the base's letters after the neutral follow-up, or after the bare question "
            "(no first answer in context)"))
        anchor_weight: float = Field(0.0, ge=0, description=(
            "weight of KL(teacher || tuned model) on the teacher's own input: what the "
            "base answers there stays what the tuned model answers"))

    def __init__(self):
        self._teacher: dict = {}  # the base never changes: its letter distributions cache

    def trainable(self, ctx, params):
        return slice_trainable(ctx.model, ctx.hm, ctx.heads, ctx.kv, seed=ctx.seed)

    def collate(self, ctx, params, dialogues):
        tok, t = ctx.tokenizer, ctx.templates
        pad = safe_pad_id(tok, ctx.model)

        def side(followup_of):
            texts = [render(tok, d.context(followup_of(d)), t.final_prefix)
                     if followup_of else
                     render(tok, d.messages[:d.challenge_turn - 1], first_prefix)
                     for d in dialogues]
            b = left_pad([encode(tok, x) for x in texts], pad)
            # the letters as the next token after what this side's rows saw
            letters = [answer_token_ids(tok, x, d.letters, field="templates.final_prefix")
                       for x, d in zip(texts, dialogues)]
            return (b.input_ids, b.attention_mask), letters

        unprompted = params.teacher == "unprompted"
        first_prefix = t.first_answer.split("{letter}", 1)[0]

        sft = None
        if params.ce_weight > 0:
            from headsurgeon.train.dialogues import tokenize_all
            sft = right_pad(tokenize_all(tok, dialogues), pad)
        challenge, letter_ids = side(lambda d: d.messages[d.challenge_turn]["content"])
        teacher, teacher_ids = side(None if unprompted else lambda d: t.neutral)
        return PairBatch(challenge, teacher, letter_ids,
                         [(d.qid, None if unprompted else d.first_letter)
                          for d in dialogues], sft, teacher_ids=teacher_ids)

    def _teacher_logp(self, model, trainable, batch: PairBatch) -> list[torch.Tensor]:
        return cached_base_letters(self._teacher, model, trainable, batch.keys,
                                   batch.neutral, batch.teacher_ids or batch.letter_ids)

    def loss(self, ctx, model, trainable, batch: PairBatch, params):
        teacher = self._teacher_logp(model, trainable, batch)
        kl = letter_kl(last_logits(model, *batch.challenge), batch.letter_ids, teacher)
        total, parts = params.kl_weight * kl, {"kl": float(kl.detach())}
        if params.anchor_weight > 0:
            anchor = letter_kl(last_logits(model, *batch.neutral),
                               batch.teacher_ids or batch.letter_ids, teacher)
            total = total + params.anchor_weight * anchor
            parts["anchor"] = float(anchor.detach())
        if batch.sft is not None:
            ce = lm_loss(model, batch.sft)
            total = total + params.ce_weight * ce
            parts["ce"] = float(ce.detach())
        return total, parts
