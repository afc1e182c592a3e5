"""Dialogues in the model's own chat template: question, first answer, challenge, reply,
final-answer turn. Locate, train and eval all build their inputs here.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
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


def first_answer_text(t: Templates, q: Question, letter: str) -> str:
    """``templates.first_answer`` for ``letter``; ``{text}`` there is that option's text."""
    text = q.choices[q.letters.index(letter)].strip() if letter and letter in q.letters else ""
    return t.first_answer.format(letter=letter, text=text)


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
                 "content": first_answer or first_answer_text(t, q, first_letter)})
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


# -- answer tokens, read in context ------------------------------------------------------------
# A letter is not a token by itself: SentencePiece tokenizers (Llama-2, Mistral) encode "A"
# alone as "▁A", while after "The answer is (" the model's next token is "A". So every
# answer token is derived from the text the model really sees.

_CACHE_SIZE = 4096
_answer_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_REPLY_MARK = "\x1fheadsurgeon-reply\x1f"


def tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def continuation_ids(tokenizer, prefix: str, text: str, *, field: str = "choices"
                     ) -> list[int]:
    """The tokens ``prefix + text`` adds after ``prefix``'s own tokens; a ValidationError
    when ``text`` merges with the end of ``prefix`` (then it has no tokens of its own)."""
    head = encode(tokenizer, prefix)
    full = encode(tokenizer, prefix + text)
    if full[:len(head)] != head:
        raise ValidationError(
            f"{text!r} merges with the preceding {prefix[-20:]!r} for tokenizer "
            f"{tokenizer_name(tokenizer)}, so it is not a token of its own there", field=field)
    return full[len(head):]


def _cache_for(tokenizer) -> "OrderedDict | None":
    try:
        return _answer_cache.setdefault(tokenizer, OrderedDict())
    except TypeError:  # not weak-referenceable: no cache
        return None


def answer_token_ids(tokenizer, prefix: str, options: Sequence[str], *,
                     field: str = "choices") -> list[int]:
    """Per option (a letter, or an answer word), the ONE token a model emits next to write
    it right after ``prefix``, the text it has seen (e.g. the rendered chat template up to
    and including "The answer is ("). Where the bare options merge with the end of
    ``prefix`` ("Final answer:" + "A" is one token ":A" in Qwen2.5's vocabulary), they are
    read as the model writes them there, after a space (" A"). ValidationError, naming
    the tokenizer and option, when an option is several tokens there or two options
    share a token. Cached per (tokenizer, prefix, options)."""
    cache, key = _cache_for(tokenizer), (prefix, tuple(options))
    if cache is not None and key in cache:
        cache.move_to_end(key)
        return list(cache[key])
    try:
        ids = _one_token_each(tokenizer, prefix, options, field)
    except ValidationError:
        if not prefix or prefix[-1].isspace() or any(o[:1].isspace() for o in options):
            raise
        try:
            ids = _one_token_each(tokenizer, prefix, [" " + o for o in options], field)
        except ValidationError:
            pass
        else:
            return _remember(cache, key, ids)
        raise
    return _remember(cache, key, ids)


def _one_token_each(tokenizer, prefix: str, options: Sequence[str], field: str) -> list[int]:
    ids: list[int] = []
    for opt in options:
        got = continuation_ids(tokenizer, prefix, opt, field=field)
        if len(got) != 1:
            raise ValidationError(
                f"{opt!r} is {len(got)} tokens after {prefix[-20:]!r} for tokenizer "
                f"{tokenizer_name(tokenizer)}, not one", field=field)
        if got[0] in ids:
            raise ValidationError(
                f"{options[ids.index(got[0])]!r} and {opt!r} are the same token after "
                f"{prefix[-20:]!r} for tokenizer {tokenizer_name(tokenizer)}", field=field)
        ids.append(got[0])
    return ids


def _remember(cache, key, ids: list[int]) -> list[int]:
    if cache is not None:
        cache[key] = tuple(ids)
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return ids


def reply_lead(tokenizer, messages: Sequence[dict]) -> str:
    """What the chat template writes between the generation prompt and the assistant's
    content when it is only whitespace (Llama-2 renders "[/INST] " + content), else ""."""
    prompt = render(tokenizer, messages)
    try:
        full = tokenizer.apply_chat_template(
            list(messages) + [{"role": "assistant", "content": _REPLY_MARK}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses the turn: no lead
        return ""
    at = full.find(_REPLY_MARK)
    lead = full[len(prompt):at] if at >= 0 and full.startswith(prompt) else ""
    return lead if not lead.strip() else ""


def reply_opening_ids(tokenizer, messages: Sequence[dict], words: Sequence[str], *,
                      field: str) -> list[int]:
    """The one token each of ``words`` opens the model's reply with, after ``messages``."""
    lead = reply_lead(tokenizer, messages)
    return answer_token_ids(tokenizer, render(tokenizer, messages), [lead + w for w in words],
                            field=field)


def letter_token_ids(tokenizer, letters: str) -> list[int]:
    """DEPRECATED context-free form (each letter encoded alone): wrong on SentencePiece
    tokenizers; use :func:`answer_token_ids` with the text the model has seen."""
    ids = [encode(tokenizer, l) for l in letters]
    bad = next((l for l, i in zip(letters, ids) if len(i) != 1), None)
    if bad is not None:
        raise ValidationError(f"{bad!r} is not one token for this tokenizer", field="choices")
    return [i[0] for i in ids]
