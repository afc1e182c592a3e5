"""Knowledge-aware training pools: teach a judgement only where the model has one.

The paper's data trains insist (right answer prefilled) and revise (wrong answer
prefilled) on every item. On items the base model does not know, both targets are noise
to it: the heads learn a coin, or stubbornness (method.md §6). Here the base's own
unprompted belief (:mod:`headsurgeon.model.beliefs`) decides:

- belief = the right answer: insist when the right answer is prefilled, revise when a
  wrong one is (the revise target is then the model's own belief too);
- otherwise (``unknown``): ``drop`` the item, ``paper``: both kinds, as the paper, or
  ``insist``: insist dialogues only. A bare "are you sure?" carries no evidence, so where
  the model has no belief of its own the honest move is to keep the answer; revising
  there would teach it to give up answers at random.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from headsurgeon.data.permute import variant_of
from headsurgeon.data.questions import Question, data_hash
from headsurgeon.model.beliefs import Belief
from headsurgeon.model.letter_invariant import (invariant_known, invariant_summary,
                                                known_shares, presented)

Pool = list[tuple[Question, Optional[str]]]


def knowledge_pools(questions: Sequence[Question], beliefs: dict[str, Belief], *, by: str,
                    margin: float = 0.0, unknown: str = "drop", share: float = 1.0,
                    permutations: int = 1) -> tuple[Pool, Pool, dict]:
    """(insist pool, revise pool, counts). A revise entry's first letter is None: a wrong
    letter is drawn per dialogue (any wrong letter differs from a right belief).
    ``beliefs`` may hold the rotations of each item (model/letter_invariant.py): an item
    is known when at least ``share`` of them name the right option."""
    if unknown not in ("drop", "paper", "insist"):
        raise ValueError(f"unknown policy {unknown!r}")
    known_set = invariant_known(beliefs, by, margin, share)
    known = [q for q in questions if q.id in beliefs and q.id in known_set]
    ids = {q.id for q in known}
    rest = [q for q in questions if q.id not in ids] if unknown != "drop" else []
    used = known + rest
    insist: Pool = [(q, q.answer) for q in used]
    revise: Pool = [(q, None) for q in (used if unknown == "paper" else known)]
    asked = {q.id for q in questions}
    mine = {vid: b for vid, b in beliefs.items() if variant_of(vid)[0] in asked}
    info = {**invariant_summary(mine, by, margin, share, permutations), "unknown": unknown,
            "n_known_used": len(known), "n_unknown_used": len(rest)}
    return insist, revise, info


def belief_records(beliefs: dict[str, Belief], by: str, margin: float,
                   share: float = 1.0) -> list[dict]:
    """One row per item for the training log: the beliefs the data was built from (the
    presented order's) and the share of the item's rotations that name the right text."""
    shares = known_shares(beliefs, by, margin)
    return [{**b.as_dict(), "known_share": round(shares[qid], 6),
             "known": shares[qid] >= share - 1e-9} for qid, b in presented(beliefs).items()]


def model_files_key(path: Path) -> str:
    """What identifies the weights of a local model directory: names, sizes, mtimes."""
    files = sorted(Path(path).glob("*.safetensors"))
    return json.dumps([str(Path(path).resolve())] +
                      [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files])


def cached_beliefs(cache_dir: Optional[Path], key_parts: dict,
                   compute: Callable[[], dict[str, Belief]]) -> dict[str, Belief]:
    """``compute()``, or the beliefs a former call with the same ``key_parts`` (model,
    dtype, templates, readings, items) wrote under ``cache_dir``. Every baseline and sweep
    point of a run trains on the same base beliefs; on Qwen2.5-0.5B 240 items cost ~3 min
    on two cores. A cache file that does not match its key is recomputed and rewritten."""
    if cache_dir is None:
        return compute()
    from headsurgeon.core.atomic import atomic_write_json

    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()
                         ).hexdigest()
    path = Path(cache_dir) / f"beliefs-{key[:16]}.json"
    try:
        doc = json.loads(path.read_text())
        if doc.get("key") == key:
            return {b["qid"]: Belief(**b) for b in doc["beliefs"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    beliefs = compute()
    atomic_write_json(path, {"key": key, "beliefs": [
        {k: v for k, v in vars(b).items()} for b in beliefs.values()]})
    return beliefs


def knowledge_data(model, tokenizer, questions: Sequence[Question], templates, cfg, *,
                   progress: bool = False, cache_dir: Optional[Path] = None,
                   model_key: str = "") -> tuple[Pool, Pool, dict]:
    """The base model's beliefs about ``questions`` (``model`` must still be the base) and
    the pools ``cfg`` (a ``train.knowledge`` section) builds from them; the counts carry
    every item's belief, so the training log records what the data was built from.
    ``cache_dir`` + ``model_key`` (the base's identity): see :func:`cached_beliefs`."""
    from headsurgeon.model.letter_invariant import invariant_beliefs

    readings = ("letter",) if cfg.by == "letter" else ("letter", "choice_text")
    key = {"model": model_key, "dtype": str(model.dtype), "readings": readings,
           "templates": templates.model_dump(), "items": data_hash(questions),
           **({"permutations": cfg.permutations} if cfg.permutations > 1 else {})}
    beliefs = cached_beliefs(
        cache_dir if model_key else None, key,
        lambda: invariant_beliefs(model, tokenizer, questions, templates, readings=readings,
                                  permutations=cfg.permutations, progress=progress))
    insist, revise, info = knowledge_pools(
        questions, beliefs, by=cfg.by, margin=cfg.margin, unknown=cfg.unknown,
        share=cfg.permutation_share, permutations=cfg.permutations)
    info["beliefs"] = belief_records(beliefs, cfg.by, cfg.margin, cfg.permutation_share)
    return insist, revise, info
