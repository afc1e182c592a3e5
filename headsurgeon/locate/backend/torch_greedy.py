"""Greedy continuations with heads ablated, the torch engine's generation half: one
packed pass over the probe's cached prefix for every mask row, then one token per row
per step (:class:`headsurgeon.locate.backend.torch_engine.TorchEngine` mixes it in)."""
from __future__ import annotations

import torch

from headsurgeon.locate.backend.hook_state import HookState as _State


class GreedyRows:
    """Needs the engine's ``_cached``, ``_plain``, ``_packed``, ``_rows``, ``_full``,
    ``hm`` and ``rows_per_pass``."""

    @torch.no_grad()
    def greedy(self, seqs, n_new: int, K: int, masks=None, source=None, progress=None,
               stop=None):
        """Greedy continuations [B, R, n_new]; heads in ``masks`` [R, L, H] are replaced by
        ``source`` [L, K, H*d] at the last K prompt positions and (with the last
        position's value) at every generated position. ``stop(tokens) -> bool`` ends a row
        early (its remaining entries are -1)."""
        if masks is None:
            masks = torch.zeros(1, self.hm.n_layers, self.hm.n_heads, dtype=torch.bool)
            source = torch.zeros(self.hm.n_layers, K, self.hm.n_heads * self.hm.head_dim)
        R = masks.shape[0]
        out = torch.empty(len(seqs), R, n_new, dtype=torch.long)
        for b, seq in enumerate(seqs):
            cached = self._cached(list(seq) + [0] * n_new)
            kv = self._plain(seq[:len(seq) - K]) if cached else None
            for a in range(0, R, self.rows_per_pass):
                z = min(R, a + self.rows_per_pass)
                out[b, a:z] = self._greedy_rows(seq, n_new, K, masks[a:z], source, kv, cached,
                                                stop)
            if progress is not None:
                progress.update(1)
        return out

    def _greedy_rows(self, seq, n_new, K, masks, source, kv, cached, stop):
        R, T = masks.shape[0], len(seq)
        P = T - K
        out = torch.full((R, n_new), -1, dtype=torch.long)
        st = _State(n=K, masks=masks, src=source[None])
        if cached:
            logits, kv, owner = self._packed(kv, P, *self._rows(seq, P, R), st)
        else:
            logits = self._full(torch.tensor([list(seq)]).expand(R, T), st)
        out[:, 0] = logits.argmax(-1).cpu()
        active = torch.arange(R)
        for j in range(1, n_new):
            if stop is not None:
                active = torch.tensor([int(r) for r in active if not stop(out[r, :j].tolist())],
                                      dtype=torch.long)
                if not len(active):
                    break
            m = masks[active]
            if cached:
                st = _State(n=1, masks=m, src=source[None, :, -1:])
                logits, kv, owner = self._packed(kv, P, out[active, j - 1][:, None],
                                                 torch.full((len(active), 1), T + j - 1), st,
                                                 owner, row_ids=active)
            else:
                full = torch.cat([torch.tensor([list(seq)]).expand(len(active), T),
                                  out[active, :j]], 1)
                src = torch.cat([source, source[:, -1:].expand(-1, j, -1)], 1)
                logits = self._full(full, _State(n=K + j, masks=m, src=src[None]))
            out[active, j] = logits.argmax(-1).cpu()
        return out
