"""The model card (``README.md``) of an exported LoRA adapter: the base it needs (name
and file hashes), the edited heads, the ranks and how to load it."""
from __future__ import annotations

import yaml

from headsurgeon.apply.card import _HUB_ID, heads_table
from headsurgeon.model.lora_factors import LoraPlan


def render_lora_card(plan: LoraPlan, manifest: dict) -> str:
    meta = plan.delta.meta
    base = str(manifest.get("base_model") or "unknown")
    front: dict = {}
    if _HUB_ID.match(base):  # the Hub rejects local paths as base_model
        front["base_model"] = base
    front["library_name"] = "peft"
    front["tags"] = ["headsurgeon", "sycophancy", "lora"]
    ranks = sorted(set(plan.ranks.values()))
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {base.rstrip('/').split('/')[-1]} — headsurgeon edit as a LoRA adapter", "",
             f"This adapter is a headsurgeon edit of `{base}` (a few attention heads tuned "
             "to reduce sycophancy), written as an exact low-rank update: base + adapter "
             "gives the edited model's weights. Each module's rank is the number of rows or "
             "columns the edit changed, and its alpha equals its rank, so the LoRA scale "
             "is 1.", "",
             "## Base model", "",
             f"- base model: `{base}`",
             f"- full checkpoint: {manifest.get('checkpoint_bytes')} bytes; this adapter: "
             f"{manifest.get('adapter_bytes')} bytes"]
    for shard, rec in sorted((manifest.get("base_files") or {}).items()):
        lines.append(f"- `{shard}` sha256 `{rec['sha256']}` ({rec['size']} bytes)")
    lines += ["", "Use it only on that base: on any other the result is not the edit.", "",
              "## Adapter", "",
              f"- modules: {len(plan.modules)}, ranks {'/'.join(map(str, ranks))}",
              f"- `lora_bias`: {'true (the edit changes q/k/v bias entries)' if plan.lora_bias else 'false'}",
              f"- objective: `{meta.get('objective') or '-'}`, kv policy "
              f"`{meta.get('kv_policy') or '-'}`, steps {meta.get('steps', '-')}, seed "
              f"{meta.get('seed', '-')}, recipe hash `{meta.get('recipe_hash') or '-'}`", "",
              "| module | edits | rank |", "|---|---|---|"]
    for m in plan.modules:
        what = {"rows": "output rows", "cols": "input columns", "bias": "bias only"}[m.kind]
        lines.append(f"| `{m.module}` | {what}{' + bias' if m.bias_slices else ''} | "
                     f"{m.rank} |")
    lines += ["", "## Edited heads", "", "| layer | head | selected | roles |", "|---|---|---|---|"]
    for r in heads_table(meta):
        lines.append(f"| {r['layer']} | {r['head']} | {'yes' if r['selected'] else 'sibling'} "
                     f"| {', '.join(r['roles']) or '-'} |")
    lines += ["", "## Loading", "", "```python",
              "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM",
              f"base = AutoModelForCausalLM.from_pretrained({base!r})",
              "model = PeftModel.from_pretrained(base, \"THIS_ADAPTER\")", "```", ""]
    if plan.lora_bias:
        lines += ["peft's `merge_and_unload()` refuses adapters with `lora_bias` on layers "
                  "without a bias of their own (o_proj): run the adapter unmerged, or use the "
                  "merged checkpoint.", ""]
    return "\n".join(lines)
