"""Reading answers out of model text: option letters, numbers, open answers.

Three ways to get a final multiple-choice answer (``eval.extract``):
- ``letter``: forced choice; the letter with the highest next-token logit after
  ``templates.final_prefix`` ("The answer is ("). Always yields an answer, needs no generation.
- ``choice_text``: the option whose text ("B) Mars" after the prefix) has the highest mean
  per-token log-likelihood. Always yields an answer.
- ``generate``: free generation, then :func:`extract_letter`; may find no answer (no-match).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from headsurgeon.data.questions import Question

EXTRACTORS = ("letter", "choice_text", "generate")

_NUM = r"[-+]?\$?\d[\d,]*(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)


def extract_letter(text: str, letters: str, choices: Sequence[str] = ()) -> Optional[str]:
    """The option letter a free-text answer gives, or None.

    In order: the last "answer is (X)" / "answer: X"; otherwise the single distinct "(X)"
    mentioned; a reply that is just "X", "X)", "X." or "(X) ..."; otherwise the single
    option whose full text appears in the reply."""
    if not text:
        return None
    valid = set(letters)
    pats = [r"(?i:answer\s+(?:is|would be|should be))\s*:?\s*\(?([A-Z])\b(?![a-z'])",
            r"(?i:answer)\s*:\s*\(?([A-Z])\b(?![a-z'])"]
    for pat in pats:
        found = [m for m in re.findall(pat, text) if m in valid]
        if found:
            return found[-1]
    paren = {m for m in re.findall(r"\(([A-Z])\)", text) if m in valid}
    if len(paren) == 1:
        return paren.pop()
    m = re.match(r"^\s*\(?([A-Z])(?:[).:]|\s*$|\s)", text)
    if m and m.group(1) in valid and not re.match(r"^\s*[AI]\s+[a-z]", text):
        return m.group(1)
    if choices:
        low = text.lower()
        hits = [l for l, c in zip(letters, choices) if c.strip() and
                re.search(r"(?<![a-z0-9])" + re.escape(c.strip().lower()) + r"(?![a-z0-9])", low)]
        if len(hits) == 1:
            return hits[0]
    return None


def parse_number(s: str) -> Optional[float]:
    s = s.replace(",", "").replace("$", "").strip()
    try:
        return float(s)
    except ValueError:
        return None


def extract_number(text: str) -> Optional[float]:
    """The number a free-text answer gives: the last one after "answer is"/"answer:"/"=",
    else the last number in the text (chain-of-thought answers end with the result)."""
    if not text:
        return None
    marked = re.findall(r"(?:answer\s+is|answer\s*:|=)\s*(" + _NUM + ")", text, flags=re.I)
    if marked:
        return parse_number(marked[-1])
    nums = _NUM_RE.findall(text)
    return parse_number(nums[-1]) if nums else None


def is_numeric(q: Question) -> bool:
    return not q.is_mc and parse_number(q.answer) is not None


def _normalise(s: str) -> str:
    s = re.sub(r"[^a-z0-9 ]", " ", s.lower())
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def grade_open(text: str, q: Question) -> Optional[bool]:
    """Whether a free-text answer to an open question is right; None when no answer is
    found (numeric: no number; text: empty reply)."""
    if is_numeric(q):
        got = extract_number(text)
        if got is None:
            return None
        return abs(got - parse_number(q.answer)) < 1e-6 * max(1.0, abs(got))
    if not text.strip():
        return None
    golds = [q.answer] + [a for a in q.extras.get("aliases", []) if isinstance(a, str)]
    reply = f" {_normalise(text)} "
    return any(_normalise(g) and f" {_normalise(g)} " in reply for g in golds)


def open_answer_text(text: str, q: Question) -> Optional[str]:
    """A canonical string for an open answer (the number, or the normalised text)."""
    if is_numeric(q):
        n = extract_number(text)
        return None if n is None else format_number(n)
    return _normalise(text) or None


def format_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
