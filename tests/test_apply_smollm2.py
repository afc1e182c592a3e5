"""The real model (SmolLM2-135M-Instruct, fp32): what `headsurgeon apply` ships, reloaded
with plain ``transformers``, gives exactly the logits of the tuned model in memory.

The tuned model is the trainer's own parametrisation (:func:`slice_trainable`) with its
delta tensors set to seeded random values (no training needed); the delta goes through
the trainer's writer and the apply CLI."""
from __future__ import annotations

import torch
from click.testing import CliRunner

from headsurgeon.cli import cli
from headsurgeon.model.delta import base_tensor_hashes, write_delta
from headsurgeon.model.heads import HeadMap
from headsurgeon.model.sources import load_model
from headsurgeon.train.trainable import slice_trainable

ALIAS = "smollm2-135m-instruct"
HEADS = [(3, 1), (11, 4), (24, 8)]
PROMPTS = ["The capital of France is", "Is the sky green? Answer yes or no:",
           "def fibonacci(n):\n    "]


def test_applied_checkpoint_reloads_with_the_tuned_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    # the library's default attention on both sides: the comparison is then bit for bit
    model, tok, resolved = load_model(ALIAS, dtype="float32", attn_implementation=None)
    hm = HeadMap.from_model(model)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**batch).logits

    tr = slice_trainable(model, hm, HEADS, "group")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in tr.named:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        tuned = model(**batch).logits
    assert not torch.equal(tuned, before)  # the edit moves the logits: a no-op apply fails
    slices = tr.delta_slices()
    assert {s.role for s in slices} == {"q", "k", "v", "o"}
    delta = write_delta(
        tmp_path / "delta.safetensors", slices,
        base_tensors=base_tensor_hashes(resolved.path, {s.param for s in slices}),
        meta={"base_model": ALIAS, "heads": [list(h) for h in HEADS],
              "touched_heads": tr.touched_heads, "kv_policy": "group"})

    out = tmp_path / "merged"
    res = CliRunner().invoke(cli, ["apply", "--base", ALIAS, "--delta", str(delta),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output

    got = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no headsurgeon
    assert got.dtype == torch.float32
    with torch.no_grad():
        for name, w in got.state_dict().items():  # every weight, bit for bit
            module, _, attr = name.rpartition(".")
            # on an edited module the attribute is the parametrisation: base + delta
            assert torch.equal(w, getattr(model.get_submodule(module), attr)), name
        assert torch.equal(got(**batch).logits, tuned)
