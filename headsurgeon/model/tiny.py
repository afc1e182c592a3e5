"""Tiny random models of every supported architecture, for tests and benchmarks.

``build_tiny(arch, out_dir)`` writes a complete local HF directory (config, safetensors,
a small tokenizer) that ``transformers`` and headsurgeon load like a real checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch

TINY_ARCHS = ("llama", "mistral", "qwen2", "gemma3", "gpt2", "gpt_neox", "phi3")

_COMMON = dict(vocab_size=260, max_position_embeddings=2048)
# the geometry every tiny decoder shares (4 heads of 8 over hidden 32, 3 layers)
_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                **_COMMON)


def tiny_config(arch: str):
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(num_key_value_heads=2, **_DECODER)
    if arch == "mistral":
        return tf.MistralConfig(num_key_value_heads=1, **_DECODER)
    if arch == "qwen2":
        return tf.Qwen2Config(num_key_value_heads=2, **_DECODER)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(num_key_value_heads=1, head_dim=16, sliding_window=16,
                                   layer_types=["sliding_attention", "full_attention",
                                                "sliding_attention"], **_DECODER)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=260, n_positions=2048)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(rotary_pct=0.5, **_DECODER)
    if arch == "phi3":
        return tf.Phi3Config(num_key_value_heads=2, pad_token_id=0, **_DECODER)
    raise ValueError(f"no tiny config for {arch!r}; known: {', '.join(TINY_ARCHS)}")


def _fix_special_ids(cfg):
    cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id = 256, 257, 258  # the specials
    return cfg


def tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges (256 byte tokens + specials) and a chat
    template, so probes and dialogues work on tiny models without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    # The specials get ids 256-258; tiny configs have a 260-token vocabulary.
    fast.add_special_tokens({"eos_token": "<eos>", "bos_token": "<bos>", "pad_token": "<pad>"})
    fast.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
    return fast


def build_tiny(arch: str, out_dir: str | Path, *, seed: int = 0,
               dtype: torch.dtype = torch.float32, max_shard_size: str | None = None) -> Path:
    """Write a tiny random ``arch`` model (weights, config, tokenizer) to ``out_dir``."""
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    torch.manual_seed(seed)
    cfg = _fix_special_ids(tiny_config(arch))
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    with torch.no_grad():  # random biases too, so bias handling is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kw)
    tiny_tokenizer().save_pretrained(out)
    return out
