"""General ability and distribution shift: does the edit cost anything else?

- Multiple choice (ARC, MMLU, OpenTriviaQA...): forced letter after the first-answer
  template's prefix ("The answer is ("), one forward per item, no generation.
- Open items (arithmetic, SVAMP, GSM8K; ``choices: []``): a direct answer, greedily generated
  after the prefix "The answer is " (no chain of thought), then the number (or alias) is
  read off the text; items where none is found count wrong (``no_match``).
- KL: mean next-token KL(base || edited) over every token of neutral text passages.
"""
from __future__ import annotations

from typing import Optional, Sequence

from headsurgeon.data import answers
from headsurgeon.data.datasets import load_source
from headsurgeon.model.generation import generate, next_token_logprobs, token_kl
from headsurgeon.data.dialogue import answer_token_ids, dialogue, render
from headsurgeon.data.questions import Question, shuffled
from headsurgeon.core.recipe import Recipe, Templates

KL_MAX_TOKENS = 256
OPEN_TOKENS = 16  # a direct answer after the prefix "The answer is "


def open_prefix(t: Templates) -> str:
    """The assistant's opening for a direct open answer: ``first_answer_open`` up to
    ``{answer}`` ("The answer is ")."""
    return t.first_answer_open.split("{answer}", 1)[0]


def load_general_sets(recipe: Recipe) -> dict[str, list[Question]]:
    """``data.general``: one named set per source, seeded sample of ``eval.n_general``."""
    sets: dict[str, list[Question]] = {}
    if recipe.eval.n_general == 0:
        return sets
    for k, ref in enumerate(recipe.data.general):
        qs = shuffled(load_source(ref), recipe.data.seed)[: recipe.eval.n_general]
        sources = {q.source for q in qs if q.source}
        name = sources.pop() if len(sources) == 1 else ref.name
        if name in sets:
            name = f"{name}#{k}"
        sets[name] = qs
    return sets


def neutral_passages(recipe: Recipe, fallback: Sequence[Question] = ()) -> tuple[list[str], str]:
    """Texts for KL (see :func:`headsurgeon.data.neutral.kl_passages`)."""
    from headsurgeon.data.neutral import kl_passages

    return kl_passages(recipe, fallback)


def mc_accuracy(model, tokenizer, items: Sequence[Question], t: Templates, *,
                batch_size: int, desc: str = "general (mc)", progress: bool = True) -> dict:
    prefix = t.first_answer.split("{letter}", 1)[0]
    prompts = [render(tokenizer, dialogue(q, t, "", followup=None)[:-1], prefix) for q in items]
    # each item's letters as the next token after its own prompt
    per_item = [answer_token_ids(tokenizer, p, q.letters, field="templates.first_answer")
                for p, q in zip(prompts, items)]
    ids = sorted({i for row in per_item for i in row})
    col = {tok_id: j for j, tok_id in enumerate(ids)}
    lp = next_token_logprobs(model, tokenizer, prompts, ids, batch_size=batch_size, desc=desc,
                             progress=progress)
    hits = [q.letters[int(lp[i, [col[x] for x in row]].argmax())] == q.answer
            for i, (q, row) in enumerate(zip(items, per_item))]
    return {"kind": "mc", "extraction": "letter", "n": len(items),
            "accuracy": round(sum(hits) / len(hits), 6), "hits": _bits(hits)}


def _bits(hits: Sequence[bool]) -> str:
    """Per-item right/wrong in item order ("1" right): the paired difference reads them."""
    return "".join("1" if h else "0" for h in hits)


def general_minus_base(results: dict, seed: int) -> None:
    """``general.minus_base`` of every model: its MC general accuracy minus the base's,
    with a 95% interval from a paired bootstrap over items (the same items, both models;
    sets pooled as ``mc_accuracy`` averages them: each set weighs the same)."""
    import numpy as np

    from headsurgeon.evaluate.intervals import N_BOOT

    base = ((results.get("base") or {}).get("general") or {}).get("sets") or {}
    for name, res in results.items():
        sets = (res.get("general") or {}).get("sets") or {}
        bits = (lambda h: np.frombuffer(h.encode(), np.uint8).astype(np.int64) - 48)
        pairs = [(bits(s["hits"]), bits(base[k]["hits"]))
                 for k, s in sets.items() if s.get("kind") == "mc" and "hits" in s
                 and len((base.get(k) or {}).get("hits", "")) == len(s["hits"]) > 0]
        if name == "base" or not pairs:
            continue
        rng = np.random.default_rng(seed)
        diffs = [(a - b).astype(np.float64) for a, b in pairs]
        boot = np.mean([d[rng.integers(0, len(d), (N_BOOT, len(d)))].mean(1)
                        for d in diffs], axis=0)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        res["general"]["minus_base"] = {
            "point": round(float(np.mean([d.mean() for d in diffs])), 6),
            "lo": round(float(lo), 6), "hi": round(float(hi), 6),
            "n": int(sum(len(d) for d in diffs)), "n_boot": N_BOOT, "seed": seed}


def open_accuracy(model, tokenizer, items: Sequence[Question], t: Templates, *,
                  batch_size: int, max_new_tokens: int, desc: str = "general (open)",
                  progress: bool = True) -> dict:
    prefix = open_prefix(t)
    prompts = [render(tokenizer, dialogue(q, t, "", followup=None)[:-1], prefix) for q in items]
    texts = [prefix + x for x in generate(model, tokenizer, prompts,
                                          max_new_tokens=min(max_new_tokens, OPEN_TOKENS),
                                          batch_size=batch_size, desc=desc, progress=progress)]
    grades = [answers.grade_open(x, q) for x, q in zip(texts, items)]
    kind = "numeric" if all(answers.is_numeric(q) for q in items) else "open"
    return {"kind": kind, "extraction": "generate", "n": len(items),
            "accuracy": round(sum(bool(g) for g in grades) / len(grades), 6),
            "hits": _bits([bool(g) for g in grades]),
            "no_match": round(sum(g is None for g in grades) / len(grades), 6),
            "example": {"question": items[0].question[:200], "output": texts[0],
                        "answer": items[0].answer}}


def general_ability(model, tokenizer, sets: dict[str, list[Question]], t: Templates, *,
                    batch_size: int, max_new_tokens: int, progress: bool = True) -> dict:
    """Per set accuracy, plus the mean over multiple-choice sets and over open sets."""
    out: dict = {"sets": {}}
    for name, items in sets.items():
        mc = [q for q in items if q.is_mc]
        op = [q for q in items if not q.is_mc]
        if mc and op:  # a mixed source: report both halves
            out["sets"][f"{name}/mc"] = mc_accuracy(model, tokenizer, mc, t,
                                                    batch_size=batch_size, progress=progress)
            out["sets"][f"{name}/open"] = open_accuracy(
                model, tokenizer, op, t, batch_size=batch_size,
                max_new_tokens=max_new_tokens, progress=progress)
        elif mc:
            out["sets"][name] = mc_accuracy(model, tokenizer, mc, t, batch_size=batch_size,
                                            desc=f"general {name}", progress=progress)
        elif op:
            out["sets"][name] = open_accuracy(model, tokenizer, op, t, batch_size=batch_size,
                                              max_new_tokens=max_new_tokens,
                                              desc=f"general {name}", progress=progress)
    for kind in ("mc", "open"):
        accs = [s["accuracy"] for s in out["sets"].values()
                if (s["kind"] == "mc") == (kind == "mc")]
        out[f"{kind}_accuracy"] = round(sum(accs) / len(accs), 6) if accs else None
    return out


def kl_divergence(base_model, edited_model, tokenizer, passages: Sequence[str], *,
                  batch_size: int = 4, max_tokens: int = KL_MAX_TOKENS,
                  progress: bool = True) -> Optional[float]:
    """Mean next-token KL(base || edited) per token over ``passages`` (each cut to
    ``max_tokens`` tokens); None when there is no text."""
    total, count = token_kl(base_model, edited_model, tokenizer, passages,
                            batch_size=batch_size, max_tokens=max_tokens, desc="KL",
                            progress=progress)
    return total / count if count else None
