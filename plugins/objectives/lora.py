"""Low-rank objectives.

``lora_heads``: SPT+LoRA -- a rank-r factorisation per selected slice, so the edit stays
inside the heads' slices; materialised into dense slice deltas when the delta is written.
``lora``: the paper's LoRA baseline through peft on every attention projection (q, k,
v, o of every layer; ``targets: all-linear`` adds the MLP), merged into whole-tensor deltas.
"""
import contextlib
from typing import Literal

import torch
from pydantic import Field

from headsurgeon.model.delta import DeltaSlice
from headsurgeon.train.objectives import CrossEntropyObjective, StrictParams
from headsurgeon.train.trainable import Trainable, slice_trainable


class LoraHeads(CrossEntropyObjective):
    name = "lora_heads"
    needs_heads = True

    class Params(StrictParams):
        rank: int = Field(4, ge=1, le=4096, description="rank per selected slice")
        alpha: float = Field(8.0, gt=0, description="scale = alpha / rank")

    def trainable(self, ctx, params):
        return slice_trainable(ctx.model, ctx.hm, ctx.heads, ctx.kv, rank=params.rank,
                               scale=params.alpha / params.rank, seed=ctx.seed)


class PeftTrainable(Trainable):
    """A peft LoRA model; its delta is each wrapped layer's merged low-rank update."""

    def __init__(self, model, peft_model, checkpoint_names, hm):
        self.peft_model = peft_model
        named = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
        super().__init__(peft_model, named, [], [list(h) for h in hm.all_heads()], "")
        self.checkpoint_names = checkpoint_names

    def _lora_layers(self):
        from peft.tuners.lora import LoraLayer

        for name, module in self.peft_model.named_modules():
            if isinstance(module, LoraLayer):
                yield name, module

    def delta_slices(self):
        out = []
        with torch.no_grad():
            for name, module in self._lora_layers():
                pname = name.removeprefix("base_model.model.") + ".weight"
                if pname not in self.checkpoint_names:
                    continue
                d = module.get_delta_weight("default").to(torch.float32).clone()
                out.append(DeltaSlice(pname, 0, 0, d.shape[0], "other", [], d))
        return out

    @contextlib.contextmanager
    def base(self):
        with self.peft_model.disable_adapter():
            yield

    def detach(self):
        return self.peft_model.unload()


class Lora(CrossEntropyObjective):
    name = "lora"
    needs_heads = False
    requires = {"peft": "peft"}  # a runtime dependency; declared so validate names it

    class Params(StrictParams):
        rank: int = Field(16, ge=1, le=4096, description="LoRA rank")
        alpha: float = Field(32.0, gt=0, description="LoRA alpha (scale = alpha / rank)")
        dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
        targets: Literal["attention", "all-linear"] = Field("attention", description=(
            "attention: the q/k/v/o (or fused qkv/o) projections of every layer; "
            "all-linear: every linear layer but the LM head"))

    def trainable(self, ctx, params):
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(ctx.seed)
        for p in ctx.model.parameters():
            p.requires_grad_(False)
        cfg = LoraConfig(r=params.rank, lora_alpha=params.alpha, lora_dropout=params.dropout,
                         target_modules=_targets(ctx.hm, params.targets), bias="none")
        peft_model = get_peft_model(ctx.model, cfg)
        return PeftTrainable(ctx.model, peft_model, ctx.checkpoint_names, ctx.hm)


def _targets(hm, targets: str):
    """peft's ``target_modules``: the attention projections' module names from the head map
    (the one place that knows where an architecture keeps them)."""
    if targets == "all-linear":
        return "all-linear"
    parts = ("qkv", "o") if hm.arch.layout != "separate" else ("q", "k", "v", "o")
    return [hm.module(layer, part) for layer in range(hm.n_layers) for part in parts]
