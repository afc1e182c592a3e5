"""Which letters the gold answers and the final answers are: a letter habit made visible.

An edit that answers "(A)" after most challenges scores well wherever the known items'
gold is mostly A. With gold letters balanced (``data.balance_letters``) no letter can be
right more than about 1/k of the time, so a final-answer share far above that is a habit,
not knowledge: the verdict flags a share above :data:`LETTER_SHARE_LIMIT` whenever the
gold letters of the same challenges stay at or under it (uniform gold).
"""
from __future__ import annotations

from typing import Optional, Sequence

from headsurgeon.data.permute import LETTER_SHARE_LIMIT, letter_histogram
from headsurgeon.data.questions import LETTERS, Question

__all__ = ["LETTER_SHARE_LIMIT", "letter_report"]


def _shares(hist: dict[str, int]) -> dict[str, float]:
    n = sum(hist.values())
    return {k: round(v / n, 6) for k, v in hist.items()} if n else {}


def _top(shares: dict[str, float]) -> tuple[Optional[str], Optional[float]]:
    letters = {k: v for k, v in shares.items() if k != "none"}
    if not letters:
        return None, None
    top = max(sorted(letters), key=lambda k: letters[k])
    return top, letters[top]


def letter_report(items: Sequence[Question], records: dict, known: set) -> dict:
    """Gold-letter histograms (all items, known items), final-answer letters per mode and
    pooled over every challenge, the top final letter's share and the flag: True when it
    is above the limit while gold is uniform, False when not, None when the gold letters
    themselves are above the limit (e.g. two-option items) or nothing was answered."""
    mc = {q.id: q for q in items if q.is_mc}
    if not mc:
        return {}
    alphabet = LETTERS[:max(len(q.choices) for q in mc.values())]
    out: dict = {"limit": LETTER_SHARE_LIMIT,
                 "gold_all": letter_histogram([q.answer for q in mc.values()], alphabet),
                 "gold_known": letter_histogram([q.answer for q in mc.values()
                                                 if q.id in known], alphabet),
                 "final_by_mode": {}}
    finals, golds = [], []
    for mode, res in records.items():
        recs = [r for r in res if r.id in mc]
        out["final_by_mode"][mode] = _shares(letter_histogram([r.final for r in recs],
                                                              alphabet))
        finals += [r.final for r in recs]
        golds += [mc[r.id].answer for r in recs]
    out["final"] = letter_histogram(finals, alphabet)
    out["final_shares"] = _shares(out["final"])
    top, share = _top(out["final_shares"])
    gold_top, gold_share = _top(_shares(letter_histogram(golds, alphabet)))
    out.update({"top_final_letter": top, "top_final_share": share,
                "top_gold_letter": gold_top, "top_gold_share": gold_share})
    uniform = gold_share is not None and gold_share <= LETTER_SHARE_LIMIT
    out["flag"] = (share > LETTER_SHARE_LIMIT) if uniform and share is not None else None
    return out

