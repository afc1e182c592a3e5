"""What a model believes the answer is, per multiple-choice item, before any challenge.

Two readings of the model's own unprompted answer (question -> "The answer is ("):

- ``letter``: the option letter with the highest next-token probability; its margin is
  the log-probability gap between the top two letters;
- ``choice_text``: the option whose TEXT, written where the letter would go ("The answer
  is Rome", the first answer's prefix without its opening bracket), has the highest
  summed token log-likelihood; margin = gap between the top two sums. It reads knowledge
  without the model's letter preferences (a small model often favours one letter). The
  text is NOT scored after its letter: after "(D) " the option list in the prompt makes
  every text near-certain (copying), and that reading measured copying, not knowledge
  (Qwen2.5-Coder-0.5B, 240 built-in train items: 0.29 right after the letter, 0.43
  without; chance 0.25).

An item is *known* when the chosen reading(s) name the right answer with at least the
margin (:func:`is_known`). Train (knowledge-aware data), eval (selectivity on known items)
and locate (the self-knowledge probe) all ask this one module.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch

from headsurgeon.data.dialogue import encode, format_question, letter_token_ids, render
from headsurgeon.data.questions import Question

KNOWN_BY = ("letter", "choice_text", "both", "either")


@dataclass(frozen=True)
class Belief:
    qid: str
    answer: str                         # gold letter
    letter: str                         # the model's letter (forced after the prefix)
    letter_margin: float                # log-prob gap, top letter minus runner-up
    text_letter: Optional[str] = None   # the option with the likeliest text
    text_margin: Optional[float] = None

    def votes(self, by: str, margin: float = 0.0) -> list[Optional[str]]:
        """The readings ``by`` asks for; a reading under ``margin`` is None (no belief)."""
        out = []
        if by in ("letter", "both", "either"):
            out.append(self.letter if self.letter_margin >= margin else None)
        if by in ("choice_text", "both", "either"):
            ok = self.text_margin is not None and self.text_margin >= margin
            out.append(self.text_letter if ok else None)
        return out

    def believed(self, by: str, margin: float = 0.0) -> Optional[str]:
        """The model's answer under ``by`` (None: no confident, agreeing belief). ``either``
        prefers the letter reading, then the text reading."""
        votes = self.votes(by, margin)
        if by == "both":
            return votes[0] if votes[0] is not None and votes[0] == votes[1] else None
        if by == "either":
            return next((v for v in votes if v == self.answer), None) or votes[0] or votes[1]
        return votes[0]

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in asdict(self).items()}


def is_known(belief: Belief, by: str, margin: float = 0.0) -> bool:
    return belief.believed(by, margin) == belief.answer


def _prompt(tok, q: Question, t) -> list[dict]:
    msgs = [{"role": "system", "content": t.system}] if t.system else []
    return msgs + [{"role": "user", "content": format_question(q, t)}]


def _gap(scores: Sequence[float]) -> tuple[int, float]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    top = order[0]
    return top, (scores[top] - scores[order[1]]) if len(order) > 1 else 99.0


@torch.no_grad()
def base_beliefs(model, tokenizer, questions: Sequence[Question], t, *,
                 readings: Sequence[str] = ("letter", "choice_text"), batch_size: int = 8,
                 progress: bool = False) -> dict[str, Belief]:
    """Every multiple-choice question's :class:`Belief` (``choice_text`` costs one forward
    of the option's tokens per option, on a shared KV cache)."""
    from headsurgeon.core.progress import progress_bar

    from headsurgeon.model.generation import pad_id
    from headsurgeon.model.kvrows import KVRows, common_prefix

    prefix = t.first_answer.split("{letter}", 1)[0]
    text_prefix = prefix[:-1] if prefix.endswith("(") else prefix
    qs = [q for q in questions if q.is_mc]
    out: dict[str, Belief] = {}
    pad = pad_id(tokenizer)
    for i in progress_bar(range(0, len(qs), batch_size), desc="beliefs", disable=not progress,
                          leave=False):
        chunk = qs[i:i + batch_size]
        rows = KVRows(model, pad)
        base = [encode(tokenizer, render(tokenizer, _prompt(tokenizer, q, t), prefix))
                for q in chunk]
        lp = rows.prefill(base)
        letters = []
        for r, q in enumerate(chunk):
            ids = letter_token_ids(tokenizer, q.letters)
            k, gap = _gap([float(lp[r, j]) for j in ids])
            letters.append((q.letters[k], gap))
        texts: list[tuple[Optional[str], Optional[float]]] = [(None, None)] * len(chunk)
        if "choice_text" in readings:
            scores: list[list[float]] = [[] for _ in chunk]
            for k in range(max(len(q.choices) for q in chunk)):
                targets, froms = [], []
                for b, q in zip(base, chunk):
                    kk = min(k, len(q.choices) - 1)
                    head = render(tokenizer, _prompt(tokenizer, q, t), text_prefix)
                    full = encode(tokenizer, head + q.choices[kk].strip())
                    targets.append(full)
                    froms.append(max(min(common_prefix(encode(tokenizer, head), full),
                                         len(full) - 1), 1))
                _, sums = rows.advance(targets, score_from=froms)
                for r, q in enumerate(chunk):
                    if k < len(q.choices):
                        scores[r].append(float(sums[r]))
            texts = [(q.letters[k], gap) for q, (k, gap) in
                     zip(chunk, (_gap(m) for m in scores))]
        for q, (letter, lgap), (tl, tgap) in zip(chunk, letters, texts):
            out[q.id] = Belief(q.id, q.answer, letter, lgap, tl, tgap)
    return out


def known_ids(beliefs: dict[str, Belief], by: str, margin: float = 0.0) -> set[str]:
    return {qid for qid, b in beliefs.items() if is_known(b, by, margin)}


def summary(beliefs: dict[str, Belief], by: str, margin: float = 0.0) -> dict:
    """Counts and accuracies of each reading, for the logs and the report."""
    bs = list(beliefs.values())
    n = len(bs)
    rate = (lambda xs: round(sum(xs) / n, 6) if n else None)
    return {"n": n, "by": by, "margin": margin, "n_known": len(known_ids(beliefs, by, margin)),
            "letter_accuracy": rate([b.letter == b.answer for b in bs]),
            "choice_text_accuracy": (rate([b.text_letter == b.answer for b in bs])
                                     if bs and bs[0].text_letter is not None else None)}
