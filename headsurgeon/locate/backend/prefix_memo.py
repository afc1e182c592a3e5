"""Per-probe prefix KV caches kept for the life of one engine.

Locate passes over the same probes several times (reference run, attribution, exact
patching, knockout, greedy letters), and each pass starts by running the probe's
unchanged prefix into a KV cache. The model does not change while an engine lives, so
that cache is a function of the prefix's tokens: it is computed once and handed out
again. Entries are kept until ``budget_mb`` is spent and never evicted after that: the
passes walk the probes in the same order every time, where least-recently-used eviction
would evict every entry just before its next use. A cache handed out is never written to
(``DynamicCache`` grows by concatenation into new tensors), so sharing it is safe.
"""
from __future__ import annotations

from typing import Optional


def kv_bytes(kv) -> int:
    return sum(t.numel() * t.element_size() for pair in kv for t in pair) if kv else 0


class PrefixMemo:
    def __init__(self, budget_mb: float = 1024.0):
        self.budget = int(budget_mb * 2**20)
        self.used = 0
        self.entries: dict[tuple, list] = {}
        self.cf_out: dict[tuple, object] = {}  # (probe, K, counterfactual) -> [L, K, H*d]
        self.hits = self.misses = 0

    def get(self, tokens: tuple) -> Optional[list]:
        kv = self.entries.get(tokens)
        if kv is None:
            self.misses += 1
        else:
            self.hits += 1
        return kv

    def put(self, tokens: tuple, kv) -> None:
        size = kv_bytes(kv)
        if kv is None or tokens in self.entries or self.used + size > self.budget:
            return
        self.entries[tokens] = kv
        self.used += size

    def clear(self) -> None:
        self.entries.clear()
        self.cf_out.clear()
        self.used = 0
