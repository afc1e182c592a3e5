"""Option permutations: balanced gold letters, and the rotations a letter-invariant belief
is read under.

A small model prefers some letters (Qwen2.5-Coder-0.5B reads A for most built-in items),
so on a set whose gold letters are skewed toward A a letter habit looks like knowledge
and an edit that answers "(A)" after every challenge looks honest. Every multiple-choice
item a stage uses is therefore presented with its options permuted so that the gold
letters are uniform over the set (:func:`balance_letters`, ``data.balance_letters``), and
"known" can require the right option TEXT under every rotation of the options
(:func:`rotations`, ``eval.known.permutations`` / ``train.knowledge.permutations``).

Permutations are deterministic: the seed, the item's id and its place in the (seeded)
order decide them. The answer letter follows its text. Items whose options refer to
other options by place ("all of the above", "A and B", "(C)") keep their order.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import replace
from typing import Optional, Sequence

from headsurgeon.data.questions import LETTERS, Question

# an option that names other options by place: permuting it would change its meaning
_ORDER_BOUND = re.compile(
    r"(?i:\b(all|none|both|neither|either)\s+of\s+the\s+(above|following|others)\b"
    r"|\b(all|none)\s+of\s+these\b)|\b[A-E]\s*(,|and|&|or)\s*[A-E]\b|\(\s*[A-E]\s*\)")

# a final-answer letter share above this, with gold letters uniform, is a letter habit
LETTER_SHARE_LIMIT = 0.40
VARIANT_SEP = "#rot"  # a rotation's id: "<item id>#rot<r>" (rotation 0 keeps the id)


def order_bound(q: Question) -> bool:
    """True when an option refers to other options by their place or letter."""
    return any(_ORDER_BOUND.search(c) for c in q.choices)


def permuted(q: Question, order: Sequence[int]) -> Question:
    """``q`` with option ``order[i]`` shown at letter ``i``; the answer letter follows its
    text (and ``extras['answer_index']``, where a file has it)."""
    choices = tuple(q.choices[i] for i in order)
    answer = LETTERS[list(order).index(q.answer_index)]
    extras = dict(q.extras)
    if isinstance(extras.get("answer_index"), int):
        extras["answer_index"] = LETTERS.index(answer)
    return replace(q, choices=choices, answer=answer, extras=extras)


def with_gold_at(q: Question, target: int, rng: random.Random) -> Question:
    """``q`` with its gold option at index ``target`` and the wrong options in a seeded
    order around it."""
    wrong = [i for i in range(len(q.choices)) if i != q.answer_index]
    rng.shuffle(wrong)
    order = wrong[:target] + [q.answer_index] + wrong[target:]
    return permuted(q, order)


def balance_letters(questions: Sequence[Question], seed: int) -> list[Question]:
    """Every multiple-choice item permuted so that the gold letters are uniform over the
    list, in its order: each item's gold goes to the least-used letter so far among its
    own letters (ties broken by a seeded draw per item). With one number of options, any
    prefix of the result (``eval.n_items`` of a stage) has gold counts that differ by at
    most one. Open items and order-bound ones (:func:`order_bound`) are kept as they are;
    the latter still count toward their gold letter."""
    counts: Counter = Counter()
    out = []
    for q in questions:
        if not q.is_mc:
            out.append(q)
            continue
        rng = random.Random(f"balance:{seed}:{q.id}")
        if order_bound(q):
            counts[q.answer] += 1
            out.append(q)
            continue
        letters = list(q.letters)
        rng.shuffle(letters)
        target = min(letters, key=lambda l: counts[l])  # first least-used in seeded order
        counts[target] += 1
        out.append(with_gold_at(q, LETTERS.index(target), rng))
    return out


def rotations(q: Question, n: int) -> list[Question]:
    """The first ``n`` cyclic rotations of ``q``'s options (at most one per option), the
    presented order first: rotation ``r`` shows option ``(i + r) % k`` at letter ``i``, so
    with ``n`` = the number of options the gold text sits once at every letter. Rotation
    ``r`` > 0 has the id ``<id>#rot<r>``. Order-bound items have only their own order."""
    k = len(q.choices)
    if not q.is_mc or order_bound(q):
        return [q]
    out = [q]
    for r in range(1, min(max(n, 1), k)):
        rot = permuted(q, [(i + r) % k for i in range(k)])
        out.append(replace(rot, id=f"{q.id}{VARIANT_SEP}{r}"))
    return out


def variant_of(qid: str) -> tuple[str, int]:
    """(item id, rotation) of a rotation's id (rotation 0 for an item's own id)."""
    head, sep, tail = qid.rpartition(VARIANT_SEP)
    if sep and tail.isdigit():
        return head, int(tail)
    return qid, 0


def letter_histogram(letters: Sequence[Optional[str]], alphabet: str) -> dict[str, int]:
    """Count per letter of ``alphabet`` (every letter present, zeros included); ``None``
    (no answer) under ``"none"`` when any."""
    counts = Counter(letters)
    out = {l: counts.get(l, 0) for l in alphabet}
    extra = sorted(k for k in counts if k not in out and k is not None)
    out.update({k: counts[k] for k in extra})
    if counts.get(None):
        out["none"] = counts[None]
    return out
