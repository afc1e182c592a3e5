"""A letter-invariant belief: an item is known only if the base names the right option
TEXT under every (or a share of) rotation of its options.

A model with a letter habit (it reads "A" whatever the question) "knows" every item whose
gold letter is A under one presentation; under the rotations of the options the gold text
moves through the letters and the habit is right only once. The beliefs of every
rotation are read by :func:`headsurgeon.model.beliefs.base_beliefs`, keyed by the
rotation's id (``<id>#rot<r>``; rotation 0, the presented order, keeps the item's id),
so one flat dict goes through the run's belief cache unchanged.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from headsurgeon.data.permute import rotations, variant_of
from headsurgeon.data.questions import Question
from headsurgeon.model.beliefs import Belief, is_known, summary

SHARE_TOLERANCE = 1e-9


def variants(questions: Sequence[Question], permutations: int) -> list[Question]:
    """Every multiple-choice item's first ``permutations`` rotations, item by item."""
    return [v for q in questions if q.is_mc for v in rotations(q, permutations)]


def invariant_beliefs(model, tokenizer, questions: Sequence[Question], t, *,
                      readings: Sequence[str], permutations: int, batch_size: int = 16,
                      progress: bool = False) -> dict[str, Belief]:
    """The base's :class:`Belief` on every rotation of every item (``permutations`` x the
    cost of one reading)."""
    from headsurgeon.model.beliefs import base_beliefs

    return base_beliefs(model, tokenizer, variants(questions, permutations), t,
                        readings=readings, batch_size=batch_size, progress=progress)


def known_shares(beliefs: dict[str, Belief], by: str, margin: float = 0.0
                 ) -> dict[str, float]:
    """Per item id: the share of its rotations whose reading ``by`` names the right option
    (the right letter of that rotation, i.e. the right text)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for vid, b in beliefs.items():
        hits[variant_of(vid)[0]].append(is_known(b, by, margin))
    return {qid: sum(h) / len(h) for qid, h in hits.items()}


def invariant_known(beliefs: dict[str, Belief], by: str, margin: float = 0.0,
                    share: float = 1.0) -> set[str]:
    """Ids of the items known under at least ``share`` of their rotations."""
    return {qid for qid, s in known_shares(beliefs, by, margin).items()
            if s >= share - SHARE_TOLERANCE}


def presented(beliefs: dict[str, Belief]) -> dict[str, Belief]:
    """The beliefs read on the presented order (rotation 0) only."""
    return {qid: b for qid, b in beliefs.items() if variant_of(qid)[1] == 0}


def invariant_summary(beliefs: dict[str, Belief], by: str, margin: float, share: float,
                      permutations: int) -> dict:
    """:func:`headsurgeon.model.beliefs.summary` of the presented order, with ``n_known``
    the letter-invariant count and ``n_known_presented`` what one order alone marks known
    (the gap between them is what a letter habit passed off as knowledge)."""
    shown = presented(beliefs)
    out = summary(shown, by, margin)
    out.update({"n_known_presented": out["n_known"],
                "n_known": len(invariant_known(beliefs, by, margin, share)),
                "permutations": permutations, "permutation_share": share,
                "n_readings": len(beliefs)})
    return out
