"""The one place that runs a model for locate (a package: the shared vocabulary here,
the engines beside it).

- :mod:`.torch_engine`: plain forward hooks, fast, local: each probe's unchanged prefix
  runs once into a KV cache and the patched rows run *packed* over the final positions.
- :mod:`.nnsight_engine`: the same computations as nnsight traces, locally or on NDIF
  (``remote=True``); it is the ONLY module of headsurgeon's locate that calls nnsight.

Vocabulary. A *probe* is a token sequence whose final-position logits give a metric
(``MetricBatch``: ``link(sum(weights * logits[ids]))``). A *row* is one intervention on
every probe of a batch: ``masks[r]`` [L, H] picks heads whose output (their slice of the
o_proj INPUT) is replaced at the last ``K`` positions by a *source* (the counterfactual
run's values, or a mean); ``freeze[r]`` [L] picks layers whose attention output is held
at the reference run's value at those positions (path patching). Both engines give the
same numbers (tests hold them to 1e-4 of an unbatched, uncached reference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from headsurgeon.core.errors import ValidationError
from headsurgeon.model.heads import HeadMap

Seqs = Sequence[Sequence[int]]


@dataclass
class MetricBatch:
    ids: torch.Tensor      # [B, M] long
    weights: torch.Tensor  # [B, M] float (0 on padding)
    link: str = "identity"

    def take(self, idx) -> "MetricBatch":
        return MetricBatch(self.ids[idx], self.weights[idx], self.link)

    def repeat(self, n: int) -> "MetricBatch":
        """One probe's targets for ``n`` rows."""
        return MetricBatch(self.ids.expand(n, -1), self.weights.expand(n, -1), self.link)

    def restricted(self) -> tuple[torch.Tensor, "MetricBatch"]:
        """(the vocabulary ids the metric reads, the metric re-indexed into them)."""
        ids = self.ids.unique()
        return ids, MetricBatch(torch.searchsorted(ids, self.ids), self.weights, self.link)

    def values(self, logits: torch.Tensor) -> torch.Tensor:
        ids, w = self.ids.to(logits.device), self.weights.to(logits.device)  # scores: fp32
        v = (logits.float().gather(-1, ids) * w).sum(-1)
        return torch.sigmoid(v) if self.link == "sigmoid" else v


@dataclass
class RefRun:
    metric: torch.Tensor                 # [B]
    head_out: torch.Tensor               # [B, L, K, H*d] o_proj inputs at the last K
    attn: Optional[torch.Tensor] = None  # [B, L, H] last-position attention to the span


def pad_left(seqs: Seqs, pad_id: int = 0):
    """ids, attention mask and position ids of a left-padded batch."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def span_masks(seqs: Seqs, spans, width: int) -> torch.Tensor:
    """[B, width] 1.0 on each probe's span (given in its own, unpadded coordinates)."""
    out = torch.zeros(len(seqs), width)
    for i, (s, (a, b)) in enumerate(zip(seqs, spans)):
        off = width - len(s)
        out[i, off + a: off + b] = 1.0
    return out


from headsurgeon.locate.backend.torch_engine import TorchEngine  # noqa: E402
from headsurgeon.locate.backend.nnsight_engine import NNsightEngine  # noqa: E402


def make_engine(kind: str, model, hm: HeadMap, *, tokenizer=None, mapper=None,
                remote: bool = False, rows_per_pass: int = 64):
    """``torch`` (hooks, KV-cached prefix; local) or ``nnsight`` (``model`` a loaded
    model, or with ``remote`` an nnsight meta model whose traces ``mapper`` runs on NDIF)."""
    if kind == "torch" and not remote:
        return TorchEngine(model, hm, rows_per_pass=rows_per_pass)
    if kind in ("nnsight", "torch"):
        if remote:
            return NNsightEngine(model, hm, mapper=mapper, rows_per_pass=rows_per_pass,
                                 remote=True)
        from headsurgeon.locate.backend.nnsight_engine import wrap_local

        return NNsightEngine(wrap_local(model, tokenizer), hm, rows_per_pass=rows_per_pass)
    raise ValidationError(f"unknown backend {kind!r} (torch or nnsight)", field="locate.backend")

