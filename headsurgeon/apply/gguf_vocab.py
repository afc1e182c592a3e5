"""A model directory's tokenizer as GGUF metadata (``tokenizer.*`` keys).

llama.cpp and transformers' GGUF loader both rebuild a byte-level BPE tokenizer (``gpt2``
model: GPT-2 style, as SmolLM2, Qwen2 and Llama 3 use) from ``tokenizer.ggml.tokens`` /
``token_type`` / ``merges`` / ``pre`` and the special ids, and a SentencePiece-style one
(``llama`` model: Llama-2, Mistral) from tokens, scores and types (``gguf_spm.py``); the chat
template travels as ``tokenizer.chat_template``. Anything the readers would silently rebuild
differently (another model type, an unknown pre-tokenizer) is refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from headsurgeon.core.errors import ValidationError

# llama.cpp's token types (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# Split regexes of the vocabularies we recognise -> llama.cpp's ``tokenizer.ggml.pre`` name.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_names() -> dict[str, str]:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    return {PRETOKENIZE_REGEX: "qwen2", _LLAMA3_SPLIT: "llama-bpe"}


@dataclass
class GGUFVocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    tokenizer_model: str = "gpt2"  # "llama": SentencePiece-style, merged by score
    scores: list[float] | None = None

    def write(self, writer) -> None:
        """Add the ``tokenizer.*`` keys to a ``gguf.GGUFWriter``."""
        writer.add_tokenizer_model(self.tokenizer_model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.token_types)
        if self.merges:
            writer.add_token_merges(self.merges)
        adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
                  "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
        for role, token_id in self.special_ids.items():
            adders[role](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def _pre_tokenizer_name(pre: dict | None, where: str) -> str:
    """llama.cpp's name for the way this tokenizer splits text before BPE."""
    def is_byte_level(p, use_regex: bool) -> bool:
        return (isinstance(p, dict) and p.get("type") == "ByteLevel"
                and not p.get("add_prefix_space", False)
                and bool(p.get("use_regex", True)) == use_regex)

    if is_byte_level(pre, True):
        return "gpt2"
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" \
        else None
    if steps and len(steps) == 2:
        first, second = steps
        if (first.get("type") == "Digits" and first.get("individual_digits")
                and is_byte_level(second, True)):
            return "smollm"
        regex = (first.get("pattern") or {}).get("Regex") if first.get("type") == "Split" else None
        if regex in _split_names() and is_byte_level(second, False):
            return _split_names()[regex]
    kind = pre.get("type") if isinstance(pre, dict) else pre
    raise ValidationError(f"pre_tokenizer: {kind!r} is not a split GGUF readers know (byte-level "
                          "GPT-2, SmolLM, Qwen2 or Llama 3 style)", file=where)


def _merge_strings(merges, where: str) -> list[str]:
    out = []
    for m in merges:
        pair = m.split(" ") if isinstance(m, str) else list(m)
        if len(pair) != 2 or any(" " in p or not p for p in pair):
            raise ValidationError(f"model.merges: cannot store merge {m!r} in GGUF", file=where)
        out.append(f"{pair[0]} {pair[1]}")
    if not out:
        raise ValidationError("model.merges: the BPE vocabulary has no merges; llama.cpp "
                              "cannot load a byte-level vocabulary without them", file=where)
    return out


def _token_table(tok: dict, n_vocab: int, where: str) -> tuple[list[str], list[int]]:
    """Tokens and types by id, padded to the embedding's ``n_vocab`` rows as llama.cpp's
    converter pads them (``[PAD<id>]``, unused)."""
    by_id: dict[int, tuple[str, int]] = {}
    for text, token_id in tok["model"]["vocab"].items():
        by_id[token_id] = (text, NORMAL)
    for added in tok.get("added_tokens") or []:
        by_id[added["id"]] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    too_big = [i for i in by_id if not 0 <= i < n_vocab]
    if too_big:
        worst = max(too_big)
        raise ValidationError(f"token {by_id[worst][0]!r} (id {worst}) is beyond the model's "
                              f"{n_vocab} embedding rows", file=where)
    tokens, types = [], []
    for i in range(n_vocab):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    return tokens, types


def _load_tokenizer(model_dir: Path):
    """The tokenizer as transformers loads it from ``model_dir``: the truth to export (its
    class may override the split ``tokenizer.json`` states, as Qwen2's does)."""
    from transformers import AutoTokenizer

    if not (model_dir / "tokenizer.json").is_file():
        raise ValidationError("no tokenizer.json (a fast tokenizer is needed for GGUF export)",
                              file=str(model_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
    except Exception as exc:  # noqa: BLE001 - any failure to load is the input's fault
        raise ValidationError(f"transformers cannot load the tokenizer: "
                              f"{str(exc).splitlines()[0][:160]}", file=str(model_dir)) from None
    return tokenizer, backend


def _behaviour(tokenizer, model_cfg: dict, n_tokens: int) -> dict:
    """Its special ids, whether it adds BOS/EOS to a text, and its chat template."""
    special = {}
    for role in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is None:
            token_id = model_cfg.get(f"{role}_token_id")
            token_id = token_id[0] if isinstance(token_id, list) and token_id else token_id
        if isinstance(token_id, int) and 0 <= token_id < n_tokens:
            special[role] = token_id
    with_specials = tokenizer("a").input_ids
    extra = len(with_specials) - len(tokenizer("a", add_special_tokens=False).input_ids)
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return {"special_ids": special,
            "add_bos": extra > 0 and with_specials[0] == special.get("bos"),
            "add_eos": extra > 0 and with_specials[-1] == special.get("eos"),
            "chat_template": template if isinstance(template, str) else None}


def read_vocab(model_dir: Path, model_cfg: dict, n_vocab: int) -> GGUFVocab:
    """The tokenizer of ``model_dir`` for an embedding of ``n_vocab`` rows."""
    from headsurgeon.apply.gguf_spm import check_sentencepiece, is_sentencepiece, spm_fields

    where = str(model_dir / "tokenizer.json")
    tokenizer, tok = _load_tokenizer(model_dir)
    model = tok.get("model") or {}
    if is_sentencepiece(tok):
        check_sentencepiece(tok, where)
        tokens, types = _token_table(tok, n_vocab, where)
        behaviour = _behaviour(tokenizer, model_cfg, len(tokens))
        return GGUFVocab(tokens=tokens, merges=[], pre="default", **behaviour,
                         **spm_fields(tok, tokens, types, behaviour["special_ids"].get("unk"),
                                      where))
    if model.get("type") != "BPE":
        raise ValidationError(f"model.type: {model.get('type')!r} tokenizers cannot be exported "
                              "to GGUF yet (byte-level or SentencePiece-style BPE)", file=where)
    if tok.get("normalizer") not in (None, {"type": "NFC"}):
        raise ValidationError(f"normalizer: {tok['normalizer'].get('type')!r} is not carried by "
                              "GGUF", file=where)
    pre = _pre_tokenizer_name(tok.get("pre_tokenizer"), where)
    tokens, types = _token_table(tok, n_vocab, where)
    return GGUFVocab(tokens=tokens, token_types=types,
                     merges=_merge_strings(model.get("merges") or [], where), pre=pre,
                     **_behaviour(tokenizer, model_cfg, len(tokens)))
