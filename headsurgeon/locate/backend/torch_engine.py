"""The plain-torch engine: forward hooks, a KV-cached prefix per probe and *packed* rows
(see :class:`TorchEngine`). Local only; the numbers equal :mod:`.nnsight_engine`'s.

Inputs are built on the CPU and moved to the model's device in :meth:`TorchEngine._call`
(a split model takes them where its input embeddings are); hook state follows each
layer's device; what the engine returns (metrics, scores, head outputs, tokens) is on
the CPU, scores in float32."""
from __future__ import annotations

from typing import Optional

import torch

from headsurgeon.model.heads import HeadMap
from headsurgeon.locate.backend import MetricBatch, RefRun, pad_left, span_masks
from headsurgeon.locate.backend.hook_state import HookState as _State, uses_sliding_window
from headsurgeon.locate.backend.prefix_memo import PrefixMemo
from headsurgeon.locate.backend.torch_greedy import GreedyRows
from headsurgeon.model.kvrows import common_prefix
from headsurgeon.model.placement import input_device


class TorchEngine(GreedyRows):
    """Plain forward hooks. Per probe the unchanged prefix runs once into a KV cache
    (shared with the counterfactual up to their first differing token); the rows then run
    *packed*: one sequence of R x K new tokens over that batch-1 cache, with a block
    attention mask so each row sees the prefix and its own tokens only. Nothing is copied
    R times, which is what makes hundreds of rows per probe cheap. Models with sliding
    window layers fall back to full-sequence rows."""

    name = "torch"
    remote = False

    def __init__(self, model, hm: HeadMap, *, rows_per_pass: int = 128, use_cache: bool = True,
                 memo_mb: float = 1024.0):
        self.model, self.hm = model, hm
        self.rows_per_pass, self.use_cache = rows_per_pass, use_cache
        self.memo = PrefixMemo(memo_mb)  # the model must not change while the engine lives
        self.device = input_device(model)
        self.o_mods = [model.get_submodule(hm.o_module(l)) for l in range(hm.n_layers)]
        self.att_mods = [model.get_submodule(hm.arch.attention.format(layer=l))
                         for l in range(hm.n_layers)]
        self.state: Optional[_State] = None
        self._handles = []
        for l in range(hm.n_layers):
            self._handles += [self.o_mods[l].register_forward_pre_hook(self._pre(l)),
                              self.o_mods[l].register_forward_hook(self._post(l)),
                              self.att_mods[l].register_forward_hook(self._att(l))]

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        self.memo.clear()

    # -- hooks ------------------------------------------------------------------------------
    def _pre(self, l):
        H, d = self.hm.n_heads, self.hm.head_dim

        def hook(mod, args):
            st = self.state
            if st is None:
                return None
            x = args[0]
            xv = st.view(x)
            if st.capture:
                st.head_out[l] = xv[:, -st.n:].detach()
            if st.masks is None or not bool(st.masks[:, l].any()):
                return None
            cur = xv[:, -st.n:].unflatten(-1, (H, d))
            src = st.src[:, l].unflatten(-1, (H, d)).to(x.device, x.dtype)
            new = xv.clone()
            keep = st.masks[:, l][:, None, :, None].to(x.device)
            new[:, -st.n:] = torch.where(keep, src, cur).flatten(-2)
            return (new.reshape(x.shape),) + tuple(args[1:])
        return hook

    def _post(self, l):
        def hook(mod, args, out):
            st = self.state
            if st is None:
                return None
            ov = st.view(out)
            if st.capture:
                st.attn_out[l] = ov[:, -st.n:].detach()
            if st.freeze is None or not bool(st.freeze[:, l].any()):
                return None
            new = ov.clone()
            new[:, -st.n:] = torch.where(st.freeze[:, l][:, None, None].to(out.device),
                                         st.ref_out[:, l].to(out.device, out.dtype),
                                         ov[:, -st.n:])
            return new.reshape(out.shape)
        return hook

    def _att(self, l):
        def hook(mod, args, out):
            st = self.state
            if st is None or st.spans is None:
                return None
            w = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            if w is not None:
                st.attn[l] = (w[:, :, -1, :].float() * st.spans[:, None, :].to(w.device)).sum(-1)
            return None
        return hook

    # -- forwards ---------------------------------------------------------------------------
    def _call(self, st: Optional[_State], head_ids=None, **kw):
        """One forward with hook state ``st``; with ``head_ids`` the output embedding
        computes only those vocabulary columns (logits [.., len(head_ids)]; anything the
        model applies after it, e.g. soft-capping, is elementwise)."""
        self.state = st
        kw = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        emb = self.model.get_output_embeddings() if head_ids is not None else None
        swap = isinstance(emb, torch.nn.Linear)
        if swap:
            prev = emb.__dict__.get("forward")  # e.g. another library's wrapper: put back
            head_ids = head_ids.to(emb.weight.device)
            w, bias = emb.weight[head_ids], None if emb.bias is None else emb.bias[head_ids]
            emb.forward = lambda h: torch.nn.functional.linear(h, w, bias)
        try:
            return self.model(**kw)
        finally:
            self.state = None
            if swap:
                if prev is None:
                    del emb.forward
                else:
                    emb.forward = prev

    def _cached(self, seq) -> bool:
        return self.use_cache and not uses_sliding_window(self.model.config, len(seq))

    @staticmethod
    def _cache(kv):
        from transformers import DynamicCache

        return DynamicCache(kv) if kv else DynamicCache()

    def _extend(self, kv, toks, start: int):
        """The batch-1 cache ``kv`` (``start`` tokens) extended by ``toks`` (no hooks)."""
        if not len(toks):
            return kv
        cache = self._cache(kv)
        n = len(toks)
        self._call(None, input_ids=torch.tensor([list(toks)]),
                   attention_mask=torch.ones(1, start + n, dtype=torch.long),
                   position_ids=torch.arange(start, start + n)[None], cache=cache,
                   use_cache=True, logits_to_keep=1)
        return [(lay.keys, lay.values) for lay in cache.layers]

    def _packed(self, kv, shared: int, toks, pos, st: Optional[_State], owner=None,
                head_ids=None, row_ids=None):
        """Rows ``toks`` [R, n] (positions ``pos`` [R, n]) as ONE sequence over the
        batch-1 cache ``kv``: ``shared`` cached tokens every row sees, then cached tokens
        owned by row ``owner[i]``. Returns (logits at each row's last token [R, V], the
        grown cache, owners of its non-shared tokens)."""
        R, n = toks.shape
        mine = (torch.arange(R) if row_ids is None else row_ids).repeat_interleave(n)
        step = torch.arange(n).repeat(R)
        prev = owner if owner is not None else torch.zeros(0, dtype=torch.long)
        allowed = torch.cat([torch.ones(R * n, shared, dtype=torch.bool),
                             prev[None, :] == mine[:, None],
                             (mine[None, :] == mine[:, None]) & (step[None, :] <= step[:, None])],
                            1)
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed,
                                                                   torch.finfo(dtype).min)
        cache = self._cache(kv)
        if st is not None:
            st.rows = R
        out = self._call(st, head_ids, input_ids=toks.reshape(1, -1),
                         attention_mask=mask[None, None],
                         position_ids=pos.reshape(1, -1), cache=cache, use_cache=True,
                         logits_to_keep=torch.arange(R) * n + n - 1)
        return (out.logits[0], [(lay.keys, lay.values) for lay in cache.layers],
                torch.cat([prev, mine]))

    def _rows(self, seq, P, R):
        T = len(seq)
        return (torch.tensor([list(seq[P:])]).expand(R, T - P),
                torch.arange(P, T)[None].expand(R, T - P))

    def _full(self, rows, st: _State, head_ids=None):
        R, T = rows.shape
        return self._call(st, head_ids, input_ids=rows, attention_mask=torch.ones(R, T, dtype=torch.long),
                          position_ids=torch.arange(T)[None].expand(R, T), use_cache=False,
                          logits_to_keep=1).logits[:, -1]

    def _stack(self, d):
        return torch.stack([d[l].to(self.device) for l in range(self.hm.n_layers)], 1)

    @torch.no_grad()
    def _plain(self, toks):
        """The batch-1 cache of ``toks``, computed once per engine (:mod:`.prefix_memo`)."""
        key = tuple(int(t) for t in toks)
        kv = self.memo.get(key)
        if kv is None:
            kv = self._extend(None, toks, 0)
            self.memo.put(key, kv)
        return kv

    @torch.no_grad()
    def _prefix(self, seq, K, cf=None):
        """(cache of seq[:T-K] or None, counterfactual head outputs [L, K, H*d] or None);
        the counterfactual runs from the cache of the prefix it shares with ``seq`` (the
        first positions of seq's own cache: a causal cache's prefix is the prefix's cache)."""
        P = len(seq) - K
        if not self._cached(seq):
            cf_out = None
            if cf is not None:
                st = _State(n=K, capture=True)
                self._full(torch.tensor([list(cf)]), st)
                cf_out = self._stack(st.head_out)[0]
            return None, cf_out
        kv = self._plain(seq[:P])
        key = (tuple(seq), K, None if cf is None else tuple(cf))
        if cf is None or key in self.memo.cf_out:
            return kv, self.memo.cf_out.get(key)
        c = min(common_prefix(seq, cf), P, len(cf) - K)
        base = [(k[:, :, :c], v[:, :, :c]) for k, v in kv] if c else None
        st = _State(n=K, capture=True)
        self._packed(base, c, torch.tensor([list(cf[c:])]),
                     torch.arange(c, len(cf))[None], st)
        self.memo.cf_out[key] = self._stack(st.head_out)[0]
        return kv, self.memo.cf_out[key]

    @torch.no_grad()
    def _reference_one(self, seq, metric, K, kv, span=None):
        st = _State(n=K, capture=True)
        if span is not None:
            st.spans = span_masks([seq], [span], len(seq))
        if kv is not None or self._cached(seq):
            logits = self._packed(kv, len(seq) - K, *self._rows(seq, len(seq) - K, 1), st)[0]
        else:
            logits = self._full(torch.tensor([list(seq)]), st)
        attn = self._stack(st.attn)[0] if len(st.attn) == self.hm.n_layers else None
        return (metric.values(logits)[0], self._stack(st.head_out)[0],
                self._stack(st.attn_out)[0], attn)

    def reference(self, seqs, metric: MetricBatch, K, spans=None) -> RefRun:
        rows = [self._reference_one(s, metric.take([i]), K, self._prefix(s, K)[0],
                                    spans[i] if spans else None)
                for i, s in enumerate(seqs)]
        attn = (torch.stack([r[3] for r in rows]).cpu() if all(r[3] is not None for r in rows)
                else None)
        return RefRun(torch.stack([r[0] for r in rows]).cpu(),
                      torch.stack([r[1] for r in rows]).cpu(), attn)

    @torch.no_grad()
    def head_outputs(self, seqs, K, along=None) -> torch.Tensor:
        """[B, L, K, H*d] head outputs at the last K positions of ``seqs``; ``along[b]``:
        a probe that ``seqs[b]`` is the counterfactual of (its cached prefix is shared)."""
        if along is not None and all(self._cached(a) for a in along):
            return torch.stack([self._prefix(a, K, s)[1].cpu() for a, s in zip(along, seqs)])
        outs = []
        for s in seqs:
            st = _State(n=K, capture=True)
            self._full(torch.tensor([list(s)]), st)
            outs.append(self._stack(st.head_out)[0].cpu())
        return torch.stack(outs)

    @torch.no_grad()
    def patch(self, seqs, metric: MetricBatch, K, masks, *, source=None, cf_seqs=None,
              freeze=None, progress=None) -> torch.Tensor:
        """Metric of every (probe, row): [B, R]. The source is ``source`` [B|1, L, K, H*d]
        or the counterfactual run of ``cf_seqs``; ``freeze`` [R, L] bool or None."""
        R, out = masks.shape[0], torch.empty(len(seqs), masks.shape[0])
        head_ids, local = metric.restricted()
        for b, seq in enumerate(seqs):
            kv, cf_out = self._prefix(seq, K, cf_seqs[b] if source is None else None)
            src = (cf_out if source is None else source[b if source.shape[0] > 1 else 0])[None]
            mb, P = local.take([b]), len(seq) - K
            ref_out = None
            if freeze is not None:
                ref_out = self._reference_one(seq, mb, K, kv)[2][None]
            for a in range(0, R, self.rows_per_pass):
                z = min(R, a + self.rows_per_pass)
                st = _State(n=K, masks=masks[a:z], src=src, ref_out=ref_out,
                            freeze=None if freeze is None else freeze[a:z])
                if kv is not None:
                    logits = self._packed(kv, P, *self._rows(seq, P, z - a), st,
                                          head_ids=head_ids)[0]
                else:
                    logits = self._full(torch.tensor([list(seq)]).expand(z - a, -1), st,
                                        head_ids)
                out[b, a:z] = mb.repeat(z - a).values(logits).cpu()
            if progress is not None:
                progress.update(1)
        return out

    def attribution(self, seqs, cf_seqs, metric: MetricBatch, K, *, path: bool = False):
        """(metric [B], scores [B, L, H]): sum over the last K positions of
        (counterfactual - reference) x d metric / d head output. Gradients flow only
        through the last K positions (the prefix runs once, without grad, into a cache).
        ``path``: attention inputs are detached, so gradients reach the final residual
        stream through residual + MLP paths only (the linearisation of path patching)."""
        H, d, L = self.hm.n_heads, self.hm.head_dim, self.hm.n_layers
        xs, handles = {}, []

        def pre_o(l):
            def hook(mod, args):
                x = args[0].detach().requires_grad_(True) if path else args[0]
                xs[l] = x
                return (x,) + tuple(args[1:])
            return hook

        def pre_att(mod, args, kwargs):
            if "hidden_states" in kwargs:
                return args, dict(kwargs, hidden_states=kwargs["hidden_states"].detach())
            return (args[0].detach(),) + tuple(args[1:]), kwargs

        def embed_out(mod, args, out):  # the graph's root when parameters are frozen
            return out if path else out.requires_grad_(True)

        head_ids, local = metric.restricted()
        params = [prm for prm in self.model.parameters() if prm.requires_grad]
        vals, scores = [], []
        for b, (seq, cf) in enumerate(zip(seqs, cf_seqs)):
            kv, cf_out = self._prefix(seq, K, cf)
            P = len(seq) - K
            handles.append(self.model.get_input_embeddings().register_forward_hook(embed_out))
            for l in range(L):
                handles.append(self.o_mods[l].register_forward_pre_hook(pre_o(l)))
                if path:
                    handles.append(self.att_mods[l].register_forward_pre_hook(
                        pre_att, with_kwargs=True))
            for prm in params:  # no weight gradients: only the head outputs' are needed
                prm.requires_grad_(False)
            try:
                with torch.enable_grad():
                    if kv is not None:
                        logits = self._packed(kv, P, *self._rows(seq, P, 1), None,
                                              head_ids=head_ids)[0]
                    else:
                        logits = self._full(torch.tensor([list(seq)]), None, head_ids)
                    v = local.take([b]).values(logits)
                    grads = torch.autograd.grad(v.sum(), [xs[l] for l in range(L)])
            finally:
                for prm in params:
                    prm.requires_grad_(True)
                for h in handles:
                    h.remove()
                handles.clear()
            x = torch.stack([xs[l][0, -K:].detach().to(self.device) for l in range(L)])
            g = torch.stack([gr[0, -K:].to(self.device) for gr in grads])
            score = ((cf_out - x).float() * g.float()).unflatten(-1, (H, d)).sum(-1).sum(1)
            scores.append(score.cpu())
            vals.append(v.detach()[0].float().cpu())
        return torch.stack(vals), torch.stack(scores)

    @torch.no_grad()
    def next_token_stats(self, seqs):
        """(greedy next token [B], mean next-token probabilities [V])."""
        ids, mask, pos = pad_left(seqs)
        logits = self._call(None, input_ids=ids, attention_mask=mask, position_ids=pos,
                            logits_to_keep=1, use_cache=False).logits[:, -1].float()
        return logits.argmax(-1).cpu(), logits.softmax(-1).mean(0).cpu()
