"""Rows of token sequences that share one KV cache, for the multi-turn challenge protocol.

A challenge dialogue is re-read many times: question -> first answer -> challenge ->
reply -> final question, in three first-answer modes. Run naively, every turn re-encodes
the whole dialogue (~1,500 prompt tokens an item on SmolLM2). Here each row keeps its
tokens in a cache and :meth:`KVRows.advance` moves it to a new target sequence by keeping
the longest common token prefix, masking the rest out of the cache (a hole) and feeding
only the new tokens, with position ids that count real tokens only. Every target is the
full-text tokenisation of its prompt, so results equal a plain forward of that prompt
(up to float rounding); tests check this against :mod:`headsurgeon.model.generation`.

Chunks are left-padded, so the last column of every chunk is a real token and one
logit row per sequence is enough (``logits_to_keep=1``). The cache grows in place
(:mod:`headsurgeon.model.kvcache`; ``in_place=False``: transformers' ``DynamicCache``, which
copies it on every step). ``fed_tokens`` / ``fed_slots`` count the real tokens and the
token slots (padding included) run through the model.
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch


# transformers >= 5.2x names the cache argument ``cache``; older 5.x ``past_key_values``
_CACHE_KW = "cache" if "cache" in inspect.signature(
    __import__("transformers").LlamaForCausalLM.forward).parameters else "past_key_values"


def has_short_window(config, limit: int = 2048) -> bool:
    cfgs = [config, getattr(config, "text_config", None)]
    for c in cfgs:
        w = getattr(c, "sliding_window", None) if c is not None else None
        if isinstance(w, int) and 0 < w < limit and getattr(c, "use_sliding_window", True):
            return True
    return False


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


MIN_SHARED = 4  # tokens a prefix must hold to be fed once for several rows


def shared_runs(targets: Sequence[Sequence[int]], after: int, least: int
                ) -> list[tuple[int, int, int]]:
    """Runs of consecutive targets sharing more than ``least`` tokens past ``after``:
    ``(first, end, depth)``, ``depth`` the run's common prefix length (``after`` for a
    single target, which shares nothing more)."""
    runs, i = [], 0
    while i < len(targets):
        depth, j = len(targets[i]), i + 1
        while j < len(targets):
            d = min(depth, common_prefix(targets[i], targets[j]))
            if d - after < least:
                break
            depth, j = d, j + 1
        runs.append((i, j, depth if j > i + 1 else after))
        i = j
    return runs


class KVRows:
    def __init__(self, model, pad_id: int, *, reuse: Optional[bool] = None,
                 in_place: bool = True):
        self.model, self.in_place = model, in_place
        # Sliding-window attention counts cache slots, holes included: re-encode instead.
        self.reuse = (not has_short_window(model.config)) if reuse is None else reuse
        self.pad_id = int(pad_id)
        from headsurgeon.model.placement import input_device

        self.device = input_device(model)  # a split model takes inputs at its embeddings
        self.cache = self._new_cache()
        self.fed_tokens = self.fed_slots = 0
        self.mask: Optional[torch.Tensor] = None  # [R, slots], 1 = real token
        self.toks: list[list[int]] = []
        self.slots: list[list[int]] = []

    def _new_cache(self):
        from transformers import DynamicCache

        from headsurgeon.model.kvcache import InPlaceCache

        return InPlaceCache() if self.in_place else DynamicCache()

    @property
    def n_rows(self) -> int:
        return len(self.toks)

    # -- structure -----------------------------------------------------------------------
    def repeat(self, n: int) -> None:
        """Each row becomes ``n`` consecutive copies (row r -> rows r*n ... r*n+n-1)."""
        if n == 1:
            return
        with torch.inference_mode():
            self.cache.batch_repeat_interleave(n)
        self.mask = self.mask.repeat_interleave(n, 0)
        self.toks = [list(t) for t in self.toks for _ in range(n)]
        self.slots = [list(s) for s in self.slots for _ in range(n)]

    def expand(self, index: Sequence[int]) -> None:
        """Row ``i`` becomes a copy of old row ``index[i]`` (rows may repeat)."""
        with torch.inference_mode():
            self.cache.batch_select_indices(torch.tensor(list(index), dtype=torch.long,
                                                         device=self.device))
        self.mask = self.mask[list(index)]
        self.toks = [list(self.toks[i]) for i in index]
        self.slots = [list(self.slots[i]) for i in index]

    def prefill(self, targets: Sequence[Sequence[int]]) -> torch.Tensor:
        """Fresh rows read ``targets`` computing each shared prefix once: the prefix every
        target shares (a chat template, a system prompt), then the one each run of
        consecutive targets shares (an item's rotations share its question), then the
        rest. Returns ``[R, V]`` next-token log-probabilities, as :meth:`advance`."""
        if self.toks:
            raise ValueError("prefill starts fresh rows")
        if any(not t for t in targets):
            raise ValueError("empty target sequence")
        cap = min(len(t) for t in targets) - 1  # every row feeds at least its last token
        shared = min(cap, min(common_prefix(targets[0], t) for t in targets))
        shared = shared if shared >= MIN_SHARED else 0
        runs = shared_runs(targets, shared, MIN_SHARED)
        if not self.reuse or (not shared and len(runs) == len(targets)):
            return self.advance(targets)
        if shared:
            self.feed([list(targets[0][:shared])])
            self.expand([0] * len(runs))
        else:
            self.toks, self.slots = [[] for _ in runs], [[] for _ in runs]
        deeper = [list(targets[first][shared:min([depth] + [len(targets[k]) - 1
                                                            for k in range(first, end)])])
                  for first, end, depth in runs]
        if any(deeper):
            self.feed(deeper)
        self.expand([g for g, (first, end, _) in enumerate(runs) for _ in range(first, end)])
        return self.feed([list(t[len(self.toks[r]):]) for r, t in enumerate(targets)])[:, -1]

    def rewind(self, row: int, n_tokens: int) -> None:
        """Forget all but the first ``n_tokens`` tokens of ``row``."""
        gone = self.slots[row][n_tokens:]
        if gone:
            self.mask[row, gone] = 0
        del self.toks[row][n_tokens:], self.slots[row][n_tokens:]

    # -- computation -----------------------------------------------------------------------
    def feed(self, chunks: Sequence[Sequence[int]], keep: int = 1) -> torch.Tensor:
        """Append ``chunks[r]`` to row r (empty: nothing). Returns float log-probabilities
        of the last ``keep`` columns, ``[R, keep, V]``; column -1 is each row's last token
        (rows with an empty chunk: meaningless)."""
        if not self.toks:
            self.toks = [[] for _ in chunks]
            self.slots = [[] for _ in chunks]
        if len(chunks) != self.n_rows:
            raise ValueError(f"{len(chunks)} chunks for {self.n_rows} rows")
        width = max(1, max(len(c) for c in chunks))
        start = 0 if self.mask is None else self.mask.shape[1]
        ids = torch.full((self.n_rows, width), self.pad_id, dtype=torch.long)
        new = torch.zeros((self.n_rows, width), dtype=torch.long)
        pos = torch.zeros((self.n_rows, width), dtype=torch.long)
        for r, c in enumerate(chunks):
            off = width - len(c)
            base = len(self.toks[r])
            if c:
                ids[r, off:] = torch.tensor(list(c), dtype=torch.long)
                new[r, off:] = 1
            pos[r] = torch.arange(width) - off + base
            self.slots[r].extend(range(start + off, start + width))
            self.toks[r].extend(c)
        pos.clamp_(min=0)
        self.fed_tokens += sum(len(c) for c in chunks)
        self.fed_slots += self.n_rows * width
        self.mask = new if self.mask is None else torch.cat([self.mask, new], 1)
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(self.device),
                             attention_mask=self.mask.to(self.device),
                             position_ids=pos.to(self.device), use_cache=True,
                             logits_to_keep=keep, **{_CACHE_KW: self.cache})
            return torch.log_softmax(out.logits[:, -keep:].float(), dim=-1).cpu()

    def reset(self) -> None:
        self.cache = self._new_cache()
        self.mask = None
        self.toks = [[] for _ in self.toks]
        self.slots = [[] for _ in self.slots]

    def advance(self, targets: Sequence[Sequence[int]],
                score_from: Optional[Sequence[int]] = None):
        """Move every row to ``targets[r]`` (its whole token sequence). Returns ``[R, V]``
        next-token log-probabilities after each target and, with ``score_from``, the summed
        log-probability of ``targets[r][score_from[r]:]`` per row (``score_from`` >= 1)."""
        if len(targets) != max(self.n_rows, 1) and self.toks:
            raise ValueError(f"{len(targets)} targets for {self.n_rows} rows")
        if any(not t for t in targets):
            raise ValueError("empty target sequence")
        froms = [max(int(s), 1) for s in score_from] if score_from is not None else None
        keeps = []
        for r, tgt in enumerate(targets):
            keep = common_prefix(self.toks[r], tgt) if (self.toks and self.reuse) else 0
            keep = min(keep, len(tgt) - 1)  # re-feed at least one token: its logits
            if froms is not None:
                keep = min(keep, froms[r] - 1)
            keeps.append(keep)
        if self.toks and not any(keeps):
            self.reset()
        elif self.toks:
            for r, keep in enumerate(keeps):
                self.rewind(r, keep)
        if froms is None:
            return self.feed([list(t[k:]) for t, k in zip(targets, keeps)])[:, -1]
        pre = [list(t[k:f - 1]) for t, k, f in zip(targets, keeps, froms)]
        if any(pre):
            self.feed(pre)
        rest = [list(t[f - 1:]) for t, f in zip(targets, froms)]
        width = max(len(c) for c in rest)
        logp = self.feed(rest, keep=width)
        sums = []
        for r, tgt in enumerate(targets):
            total = 0.0
            for j in range(froms[r], len(tgt)):
                col = width - (len(tgt) - j) - 1  # column of token j-1, which predicts j
                total += logp[r, col, tgt[j]].item()
            sums.append(total)
        return logp[:, -1], sums

    def greedy(self, logp: torch.Tensor, max_new_tokens: int, stops: Sequence[int],
               active: Optional[Sequence[bool]] = None) -> list[list[int]]:
        """Greedy continuation from next-token ``logp`` ``[R, V]``; a row stops at a stop
        token (not kept) or after ``max_new_tokens``. Inactive rows generate nothing."""
        stops = set(int(s) for s in stops)
        live = list(active) if active is not None else [True] * self.n_rows
        out: list[list[int]] = [[] for _ in range(self.n_rows)]
        for step in range(max_new_tokens):
            nxt = logp.argmax(-1).tolist()
            for r in range(self.n_rows):
                if live[r]:
                    if nxt[r] in stops:
                        live[r] = False
                    else:
                        out[r].append(nxt[r])
            if not any(live) or step == max_new_tokens - 1:
                break
            logp = self.feed([[nxt[r]] if live[r] else [] for r in range(self.n_rows)])[:, -1]
        return out
