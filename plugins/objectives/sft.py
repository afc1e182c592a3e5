"""Supervised pinpoint tuning: dense deltas on the selected heads' slices.

``sft``: cross-entropy on the chosen assistant turns (the paper's SPT).
``sft_kl``: the same plus ``kl_weight`` x KL(base || tuned) on neutral text, which keeps
the edit from drifting on everything that is not a challenge dialogue.
"""
from pydantic import Field

from headsurgeon.train.objectives import (BaseLogProbs, CrossEntropyObjective, StrictParams,
                                          kl_to_base, lm_loss, neutral_batch)
from headsurgeon.train.trainable import slice_trainable

from .neutral import PASSAGES


class SFT(CrossEntropyObjective):
    name = "sft"
    needs_heads = True

    def trainable(self, ctx, params):
        return slice_trainable(ctx.model, ctx.hm, ctx.heads, ctx.kv, seed=ctx.seed)


class SFTKL(SFT):
    name = "sft_kl"

    class Params(StrictParams):
        kl_weight: float = Field(1.0, ge=0, description="weight of KL(base || tuned)")
        kl_batch: int = Field(2, ge=1, le=256, description="neutral passages per micro-batch")
        kl_tokens: int = Field(96, ge=2, le=4096, description="tokens per neutral passage")

    def __init__(self):
        self._teacher = BaseLogProbs()  # the base never changes: its side once per passage

    def loss(self, ctx, model, trainable, batch, params):
        ce = lm_loss(model, batch)
        nb = neutral_batch(ctx, ctx.neutral() or PASSAGES, batch.step, batch.micro,
                           params.kl_batch, params.kl_tokens).to(batch.input_ids.device)
        kl = kl_to_base(model, trainable, nb, self._teacher if ctx.reuse_base else None)
        return ce + params.kl_weight * kl, {"ce": float(ce.detach()), "kl": float(kl.detach())}
