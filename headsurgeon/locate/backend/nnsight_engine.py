"""The nnsight engine: THE one module that calls nnsight (its API churns; fix it here).

Bodies ``body(model, units) -> [dict[str, Tensor] per unit]`` follow the contract of
:class:`headsurgeon.locate.remote.RemoteRunner`.map. On NDIF this module is shipped by value, so
the bodies use only torch, nnsight and the helpers defined here; every unit carries what
it needs (ids, masks, module paths, geometry) and results are scores, not activations.
"""
from __future__ import annotations

from typing import Optional

import torch

from headsurgeon.model.heads import HeadMap
from headsurgeon.locate.backend import MetricBatch, RefRun, pad_left, span_masks


def wrap_local(model, tokenizer):
    """An nnsight model around an already loaded transformers model."""
    import warnings

    from nnsight.modeling.transformers import TransformersModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformersModel(model, tokenizer=tokenizer, task="text-generation")


def run_local(lm, units, body):
    """Run ``body`` here: unit tensors go to the model's device, results come back to the
    CPU (floating point ones as float32)."""
    module = lm._module
    try:
        dev = module.get_input_embeddings().weight.device
    except AttributeError:
        dev = next(module.parameters()).device
    moved = [{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in u.items()}
             for u in units]
    return [{k: (v.float() if v.is_floating_point() else v).cpu()
             if isinstance(v, torch.Tensor) else v for k, v in r.items()}
            for r in body(lm, moved)]


def _nn_envoy(model, path):
    env = model
    for part in path.split("."):
        env = env[int(part)] if part.isdigit() else getattr(env, part)
    return env


def _nn_metric(logits, u):
    v = (logits.float().gather(-1, u["mids"]) * u["mw"]).sum(-1)
    return torch.sigmoid(v) if u["sig"] else v


def nn_reference(model, units):
    """Metric, head outputs at the last K positions, attention mass to ``spans``."""
    import nnsight

    out = []
    for u in units:
        K, L = u["K"], len(u["o_paths"])
        o_envs = [_nn_envoy(model, p) for p in u["o_paths"]]
        att_envs = [_nn_envoy(model, p) for p in u["att_paths"]]
        head_env = _nn_envoy(model, u["head_path"])
        sp = u.get("spans")
        with torch.no_grad():
            with model.trace(input_ids=u["ids"], attention_mask=u["mask"], position_ids=u["pos"]):
                hos, ats = [], []
                for l in range(L):
                    hos.append(o_envs[l].input[:, -K:].clone())
                    if sp is not None:
                        w = att_envs[l].output[1]
                        ats.append((w[:, :, -1, :].float() * sp[:, None, :]).sum(-1))
                res = {"metric": _nn_metric(head_env.output[:, -1], u),
                       "head_out": torch.stack(hos, 1)}
                if sp is not None:
                    res["attn"] = torch.stack(ats, 1)
                res = nnsight.save(res)
        out.append(res)
    return out


def nn_patch(model, units):
    """Metric of patched rows ``ids[S:]``: heads in ``masks`` take the source (row 1 when
    ``S == 2``: the counterfactual; else ``src``) at the last K positions; ``freeze`` holds
    attention outputs at row 0's (the reference) values."""
    import nnsight

    out = []
    for u in units:
        K, S, H, d = u["K"], u["S"], u["H"], u["d"]
        m, fz, src = u["masks"], u.get("freeze"), u.get("src")
        o_envs = [_nn_envoy(model, p) for p in u["o_paths"]]
        head_env = _nn_envoy(model, u["head_path"])
        with torch.no_grad():
            with model.trace(input_ids=u["ids"], attention_mask=u["mask"], position_ids=u["pos"]):
                for l in range(len(o_envs)):
                    x = o_envs[l].input
                    s = x[1:2, -K:] if S == 2 else src[None, l].to(x.dtype)
                    cur = x[S:, -K:].unflatten(-1, (H, d))
                    new = torch.where(m[:, l][:, None, :, None], s.unflatten(-1, (H, d)), cur)
                    x[S:, -K:] = new.flatten(-2)
                    if fz is not None:
                        y = o_envs[l].output
                        y[S:, -K:] = torch.where(fz[:, l][:, None, None], y[0:1, -K:],
                                                 y[S:, -K:])
                res = nnsight.save({"metric": _nn_metric(head_env.output[:, -1], u)[S:]})
        out.append(res)
    return out


def nn_attribution(model, units):
    """Rows ``[reference B; counterfactual B]``: per-head (cf - ref) x grad, summed over
    the last K positions and the head's dims -> ``scores`` [B, L, H]."""
    import nnsight

    out = []
    for u in units:
        K, B, H, d, path = u["K"], u["B"], u["H"], u["d"], u["path"]
        o_envs = [_nn_envoy(model, p) for p in u["o_paths"]]
        att_envs = [_nn_envoy(model, p) for p in u["att_paths"]]
        head_env = _nn_envoy(model, u["head_path"])
        L = len(o_envs)
        with torch.enable_grad():
            with model.trace(input_ids=u["ids"], attention_mask=u["mask"], position_ids=u["pos"]):
                xs = []
                for l in range(L):
                    if path:
                        args, kwargs = att_envs[l].inputs
                        if "hidden_states" in kwargs:
                            kwargs = dict(kwargs)
                            kwargs["hidden_states"] = kwargs["hidden_states"].detach()
                        else:
                            args = (args[0].detach(),) + tuple(args[1:])
                        att_envs[l].inputs = (args, kwargs)
                        x = o_envs[l].input.detach().requires_grad_(True)
                        o_envs[l].input = x
                    else:
                        x = o_envs[l].input
                        if l == 0:  # NDIF freezes parameters: the graph must start here
                            x = x.detach().requires_grad_(True)
                            o_envs[l].input = x
                    xs.append(x)
                v = _nn_metric(head_env.output[:B, -1], u)
                with v.sum().backward():
                    scores = []
                    for l in reversed(range(L)):
                        g = xs[l].grad[:B, -K:]
                        diff = xs[l][B:, -K:].detach() - xs[l][:B, -K:].detach()
                        scores.append((diff * g).unflatten(-1, (H, d)).sum(-1).sum(1))
                    res = nnsight.save({"metric": v.detach(),
                                        "scores": torch.stack(scores[::-1], 1).float()})
        out.append(res)
    return out


def nn_greedy(model, units):
    """Greedy continuation of ``n_new`` tokens for rows ``ids`` (one probe, no padding);
    heads in ``masks`` take ``src`` [L, K, H*d] at the last K prompt positions and its
    last position's value at each generated one."""
    import nnsight

    out = []
    for u in units:
        K, H, d, m, src0 = u["K"], u["H"], u["d"], u["masks"], u["src"]
        o_envs = [_nn_envoy(model, p) for p in u["o_paths"]]
        head_env = _nn_envoy(model, u["head_path"])
        rows, T0 = u["ids"], u["ids"].shape[1]
        for j in range(u["n_new"]):
            n, T = K + j, rows.shape[1]
            src = torch.cat([src0, src0[:, -1:].expand(-1, j, -1)], 1)
            with torch.no_grad():
                with model.trace(input_ids=rows, attention_mask=torch.ones_like(rows),
                                 position_ids=torch.arange(T)[None].expand(rows.shape[0], -1)):
                    for l in range(len(o_envs)):
                        x = o_envs[l].input
                        cur = x[:, -n:].unflatten(-1, (H, d))
                        new = torch.where(m[:, l][:, None, :, None],
                                          src[None, l].unflatten(-1, (H, d)).to(x.dtype), cur)
                        x[:, -n:] = new.flatten(-2)
                    nxt = nnsight.save(head_env.output[:, -1].argmax(-1))
            rows = torch.cat([rows, nxt[:, None]], 1)
        out.append({"tokens": rows[:, T0:]})
    return out


def nn_stats(model, units):
    import nnsight

    out = []
    for u in units:
        head_env = _nn_envoy(model, u["head_path"])
        with torch.no_grad():
            with model.trace(input_ids=u["ids"], attention_mask=u["mask"], position_ids=u["pos"]):
                logits = head_env.output[:, -1].float()
                res = nnsight.save({"argmax": logits.argmax(-1),
                                    "probs": logits.softmax(-1).mean(0)})
        out.append(res)
    return out


class NNsightEngine:
    """The torch engine's computations as nnsight traces over full sequences (bodies
    above). ``mapper(stage, units, body)`` runs them: locally by default, on NDIF through
    :class:`headsurgeon.locate.remote.RemoteRunner`.map."""

    name = "nnsight"

    def __init__(self, lm, hm: HeadMap, *, mapper=None, rows_per_pass: int = 64,
                 remote: bool = False):
        self.lm, self.hm, self.rows_per_pass, self.remote = lm, hm, rows_per_pass, remote
        self._mapper = mapper or (lambda stage, units, body: run_local(lm, units, body))
        self._calls = 0
        module = lm._module
        head = module.get_output_embeddings()
        self.geom = {
            "o_paths": [hm.o_module(l) for l in range(hm.n_layers)],
            "att_paths": [hm.arch.attention.format(layer=l) for l in range(hm.n_layers)],
            "head_path": next(n for n, mod in module.named_modules() if mod is head),
            "H": hm.n_heads, "d": hm.head_dim}

    def close(self):
        pass

    def map(self, stage, units, body):
        """Stage names are numbered in call order, so a resumed remote run finds its jobs."""
        self._calls += 1
        return self._mapper(f"{self._calls:04d}-{stage}", units, body)

    def _unit(self, seqs, metric: Optional[MetricBatch] = None, **kw):
        ids, mask, pos = pad_left(seqs)
        u = dict(self.geom, ids=ids, mask=mask, pos=pos, **kw)
        if metric is not None:
            u.update(mids=metric.ids, mw=metric.weights, sig=int(metric.link == "sigmoid"))
        return u

    def reference(self, seqs, metric: MetricBatch, K, spans=None) -> RefRun:
        u = self._unit(seqs, metric, K=K)
        if spans:
            u["spans"] = span_masks(seqs, spans, u["ids"].shape[1])
        r = self.map("reference", [u], nn_reference)[0]
        return RefRun(r["metric"], r["head_out"], r.get("attn"))

    def head_outputs(self, seqs, K, along=None) -> torch.Tensor:  # along: torch engine only
        zero = MetricBatch(torch.zeros(len(seqs), 1, dtype=torch.long), torch.zeros(len(seqs), 1))
        return self.reference(seqs, zero, K).head_out

    def patch(self, seqs, metric: MetricBatch, K, masks, *, source=None, cf_seqs=None,
              freeze=None, progress=None) -> torch.Tensor:
        R, units, where = masks.shape[0], [], []
        for b, seq in enumerate(seqs):
            lead = [seq] + ([cf_seqs[b]] if source is None else [])
            for a in range(0, R, self.rows_per_pass):
                z = min(R, a + self.rows_per_pass)
                rows = lead + [seq] * (z - a)
                u = self._unit(rows, metric.take([b]).repeat(len(rows)), K=K, S=len(lead),
                               masks=masks[a:z])
                if freeze is not None:
                    u["freeze"] = freeze[a:z]
                if source is not None:
                    u["src"] = source[b if source.shape[0] > 1 else 0]
                units.append(u)
                where.append((b, a, z))
        out = torch.empty(len(seqs), R)
        for (b, a, z), r in zip(where, self.map("patch", units, nn_patch)):
            out[b, a:z] = r["metric"]
        if progress is not None:
            progress.update(len(seqs))
        return out

    def attribution(self, seqs, cf_seqs, metric: MetricBatch, K, *, path: bool = False):
        u = self._unit(list(seqs) + list(cf_seqs), metric, K=K, B=len(seqs), path=int(path))
        r = self.map("attribution", [u], nn_attribution)[0]
        return r["metric"], r["scores"]

    def greedy(self, seqs, n_new: int, K: int, masks=None, source=None, progress=None,
               stop=None):
        """As :meth:`TorchEngine.greedy`; ``stop`` is ignored (a remote body cannot call
        back), every row gets ``n_new`` tokens: callers' decisions must not depend on it."""
        L, H, d = self.hm.n_layers, self.hm.n_heads, self.hm.head_dim
        if masks is None:
            masks = torch.zeros(1, L, H, dtype=torch.bool)
            source = torch.zeros(L, K, H * d)
        R, units, where = masks.shape[0], [], []
        for b, seq in enumerate(seqs):
            for a in range(0, R, self.rows_per_pass):
                z = min(R, a + self.rows_per_pass)
                units.append(dict(self.geom, ids=torch.tensor([list(seq)]).expand(z - a, -1),
                                  K=K, n_new=n_new, masks=masks[a:z], src=source))
                where.append((b, a, z))
        out = torch.empty(len(seqs), R, n_new, dtype=torch.long)
        for (b, a, z), r in zip(where, self.map("greedy", units, nn_greedy)):
            out[b, a:z] = r["tokens"]
        if progress is not None:
            progress.update(len(seqs))
        return out

    def next_token_stats(self, seqs):
        r = self.map("stats", [self._unit(seqs)], nn_stats)[0]
        return r["argmax"], r["probs"]
