"""Question families, and the disjoint choose / confirm / report splits of a real set.

A family is what an item's neighbours share (a built-in family, an MMLU subject): items
of one family are not independent evidence, so intervals resample families as wholes
(:mod:`headsurgeon.evaluate.intervals`) and a split never cuts one. An item with no family
is its own.

``split: choose | confirm | report`` on a data source keeps one of three disjoint parts
of it, by a seeded hash of each item's family: pick settings on ``choose``, check that
the pick holds on ``confirm``, and quote ``report``, which nothing was tuned on. The
parts are about a third each for sets of single items; sets of large families (MMLU
subjects) split less evenly, never across a family.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from headsurgeon.data.questions import Question

SPLITS = ("choose", "confirm", "report")


def family_of(q: Question) -> str:
    """The item's source and family (``family`` or ``subject`` extra), else the item alone.
    A ``category`` is not a family: OpenTriviaQA's has two values for 2,074 independent
    items, which would make two clusters of them."""
    fam = next((str(q.extras[k]) for k in ("family", "subject")
                if q.extras.get(k) not in (None, "")), "")
    if fam:
        return f"{q.source}|{fam}" if q.source else fam
    return f"item:{q.source}|{q.id}" if q.source else f"item:{q.id}"


def split_of(q: Question, seed: int = 0) -> str:
    """Which of :data:`SPLITS` the item's family falls in (seeded, stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{family_of(q)}".encode("utf-8")).digest()
    return SPLITS[int.from_bytes(digest[:8], "big") % len(SPLITS)]


def take_split(items: Sequence[Question], split: str, seed: int = 0) -> list[Question]:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {', '.join(SPLITS)}")
    return [q for q in items if split_of(q, seed) == split]
