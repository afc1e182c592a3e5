"""Unbatched, uncached reference computations for the locate tests: one plain full
forward per probe and per patched head, hooks written independently of backend.py."""
from __future__ import annotations

import torch


def _mods(model, hm):
    o = [model.get_submodule(hm.o_module(l)) for l in range(hm.n_layers)]
    att = [model.get_submodule(hm.arch.attention.format(layer=l)) for l in range(hm.n_layers)]
    return o, att


def metric_of(logits_last, ids, weights, link):
    v = (logits_last.float()[ids] * weights).sum()
    return torch.sigmoid(v) if link == "sigmoid" else v


@torch.no_grad()
def run(model, hm, seq, *, K, patch=None, freeze_from=None, ref_attn_out=None):
    """Full forward of one sequence. ``patch``: {(layer, head): value [K, d]} written into
    the o_proj input at the last K positions; ``freeze_from``: layers > it get their o_proj
    output at the last K positions from ``ref_attn_out`` [L, K, D]. Returns (last logits,
    o_proj inputs [L, K, H*d], o_proj outputs [L, K, D])."""
    o_mods, _ = _mods(model, hm)
    d = hm.head_dim
    got_in, got_out, handles = {}, {}, []
    for l, mod in enumerate(o_mods):
        def pre(m, args, l=l):
            x = args[0].clone()
            got_in[l] = x[0, -K:].clone()
            for (pl, ph), val in (patch or {}).items():
                if pl == l:
                    x[0, -K:, ph * d:(ph + 1) * d] = val
            return (x,)

        def post(m, args, out, l=l):
            got_out[l] = out[0, -K:].clone()
            if freeze_from is not None and l > freeze_from:
                out = out.clone()
                out[0, -K:] = ref_attn_out[l]
                return out
            return None
        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        ids = torch.tensor([list(seq)])
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       use_cache=False).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    L = hm.n_layers
    return logits, torch.stack([got_in[l] for l in range(L)]), \
        torch.stack([got_out[l] for l in range(L)])


def patch_effects(model, hm, ref, cf, ids, weights, link, K, heads, *, path=False):
    """metric(patched) - metric(reference) per head, one full forward per head."""
    logits, _, ref_out = run(model, hm, ref, K=K)
    base = metric_of(logits, ids, weights, link)
    _, cf_in, _ = run(model, hm, cf, K=K)
    d = hm.head_dim
    out = []
    for l, h in heads:
        val = cf_in[l, :, h * d:(h + 1) * d]
        lg, _, _ = run(model, hm, ref, K=K, patch={(l, h): val},
                       freeze_from=l if path else None, ref_attn_out=ref_out)
        out.append(float(metric_of(lg, ids, weights, link) - base))
    return torch.tensor(out)


def attribution(model, hm, ref, cf, ids, weights, link, K):
    """(cf - ref) . grad per head, full forward + backward without any cache: [L, H]."""
    _, cf_in, _ = run(model, hm, ref if cf is None else cf, K=K)
    o_mods, _ = _mods(model, hm)
    xs, handles = {}, []
    for l, mod in enumerate(o_mods):
        def pre(m, args, l=l):
            xs[l] = args[0]
        handles.append(mod.register_forward_pre_hook(pre))
    try:
        ids_t = torch.tensor([list(ref)])
        logits = model(input_ids=ids_t, use_cache=False).logits[0, -1]
        v = metric_of(logits, ids, weights, link)
        grads = torch.autograd.grad(v, [xs[l] for l in range(hm.n_layers)])
    finally:
        for h in handles:
            h.remove()
    x = torch.stack([xs[l][0, -K:].detach() for l in range(hm.n_layers)])
    g = torch.stack([gr[0, -K:] for gr in grads])
    return ((cf_in - x) * g).unflatten(-1, (hm.n_heads, hm.head_dim)).sum(-1).sum(1)
