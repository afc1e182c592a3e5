"""Neutral passages: those eval measures KL(base || edited) on, and those the ``sft_kl``
objective may regularise on, kept disjoint by the sha256 of their text.

Regularising on the very passages the KL column is measured on would make that column
report what was optimised rather than how far the edit drifts. Eval takes the first
``eval.kl_passages`` of ``data.neutral_text`` in seeded order (without it, the eval
questions); training gets every other passage of ``data.neutral_text`` (without it, or
when none is left, the objective's built-in passages, written apart from both).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from headsurgeon.core.recipe import Recipe
from headsurgeon.data.datasets import load_source, load_stage
from headsurgeon.data.questions import Question, shuffled


def text_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def set_hash(texts: Sequence[str]) -> str:
    """One hash of a set of passages (order does not matter)."""
    return "sha256:" + hashlib.sha256("\n".join(sorted(map(text_hash, texts))).encode()
                                      ).hexdigest()


def passage_text(q: Question) -> str:
    return q.extras.get("text") or q.question


def kl_passages(recipe: Recipe, fallback: Sequence[Question] = ()) -> tuple[list[str], str]:
    """Texts eval measures KL on: ``data.neutral_text`` (each item's ``text`` extra, else its
    question); without it, the eval questions (said so in the metrics)."""
    n = recipe.eval.kl_passages
    if n == 0:
        return [], "none"
    if recipe.data.neutral_text:
        texts = []
        for ref in recipe.data.neutral_text:
            texts += [passage_text(q) for q in shuffled(load_source(ref), recipe.data.seed)]
        return texts[:n], "data.neutral_text"
    return [q.question for q in fallback][:n], "data.eval questions (no data.neutral_text)"


def regulariser_passages(recipe: Recipe, eval_items: Sequence[Question]
                         ) -> tuple[list[str], dict]:
    """``data.neutral_text`` minus every passage eval measures KL on (``eval_items``: the
    items eval evaluates, its fallback), and a record of the split."""
    measured, source = kl_passages(recipe, eval_items)
    info = {"eval_kl_source": source, "eval_kl_passages": len(measured),
            "eval_kl_sha256": set_hash(measured)}
    if not recipe.data.neutral_text:
        return [], {**info, "train_source": "the objective's built-in passages", "train": 0,
                    "excluded": 0}
    held = {text_hash(t) for t in measured}
    texts = [passage_text(q) for q in load_stage(recipe.data.neutral_text, "neutral_text")]
    kept = [t for t in texts if text_hash(t) not in held]
    return kept, {**info, "train_source": ("data.neutral_text minus eval's KL passages" if kept
                                           else "the objective's built-in passages (every "
                                                "data.neutral_text passage is eval's)"),
                  "train": len(kept), "excluded": len(texts) - len(kept),
                  "train_sha256": set_hash(kept)}
