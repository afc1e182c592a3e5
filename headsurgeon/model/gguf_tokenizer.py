"""Give a tokenizer converted from a GGUF file the text splitting its model was trained with.

A GGUF stores a byte-level BPE vocabulary's merges but names its pre-tokenizer only by
llama.cpp's ``tokenizer.ggml.pre`` (``"smollm"``, ``"qwen2"``, ...). transformers' GGUF
loader rebuilds the splits it knows and silently falls back to plain GPT-2 splitting for the
rest, so e.g. SmolLM2's ``"smollm"`` (every digit its own piece, then GPT-2's regex) came out
as GPT-2's regex alone: ``"city.  40"`` then gives ``"Ġ", "Ġ", "4"`` where the original model
saw ``"ĠĠ", "4"``. :func:`restore_pre_tokenizer` sets the original model's normalizer and
pre-tokenizer (as its Hugging Face ``tokenizer.json`` states them) from :data:`BYTE_LEVEL_SPLITS`
and refuses a byte-level vocabulary whose pre type it does not know, rather than guess.
Sentencepiece vocabularies (``tokenizer.ggml.model`` ``"llama"``, Gemma's) have no pre type
(llama.cpp ignores it there) and are left as transformers builds them.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from headsurgeon.core.errors import ValidationError

FIELD = "model.source"
# Bump when what restore_pre_tokenizer writes changes: caches converted before are re-made.
TOKENIZER_VERSION = 2
PROVENANCE = "headsurgeon_source.json"

_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
            "use_regex": use_regex}


# tokenizer.ggml.pre -> (normalizer, pre_tokenizer) of the original tokenizer.json
BYTE_LEVEL_SPLITS: dict[str, tuple[dict | None, dict]] = {
    "gpt2": (None, _byte_level(True)),
    # llama.cpp: "\p{N}" first, then GPT-2's regex (HuggingFaceTB/SmolLM2's tokenizer.json)
    "smollm": (None, {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _byte_level(True)]}),
    "qwen2": ({"type": "NFC"}, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _QWEN2_SPLIT}, "behavior": "Isolated",
         "invert": False}, _byte_level(False)]}),
}

# GGUF value types: fixed sizes by type id; 8 is a string, 9 an array
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def read_gguf_strings(path: Path, keys: tuple[str, ...]) -> dict[str, str]:
    """The string values of ``keys`` in a GGUF's metadata (absent keys are left out),
    read without loading its arrays or tensors."""
    found: dict[str, str] = {}
    with open(path, "rb") as fh:
        def read(fmt: str):
            data = fh.read(struct.calcsize(fmt))
            if len(data) != struct.calcsize(fmt):
                raise ValidationError("truncated GGUF metadata", file=str(path), field=FIELD)
            return struct.unpack(fmt, data)[0]

        def string() -> bytes:
            return fh.read(read("<Q"))

        def skip(kind: int) -> None:
            if kind == 8:
                fh.seek(read("<Q"), 1)
            elif kind == 9:
                item, count = read("<I"), read("<Q")
                if item in _SIZES:
                    fh.seek(_SIZES[item] * count, 1)
                else:
                    for _ in range(count):
                        skip(item)
            elif kind in _SIZES:
                fh.seek(_SIZES[kind], 1)
            else:
                raise ValidationError(f"unknown GGUF value type {kind}", file=str(path),
                                      field=FIELD)

        if fh.read(4) != b"GGUF":
            raise ValidationError("not a GGUF file (bad magic)", file=str(path), field=FIELD)
        read("<I")  # version
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            key, kind = string().decode("utf-8", "replace"), read("<I")
            if key in keys and kind == 8:
                found[key] = string().decode("utf-8", "replace")
                if len(found) == len(keys):
                    break
            else:
                skip(kind)
    return found


def _transformers_splits() -> set[str]:
    """Pre types transformers' GGUF loader already rebuilds with their own regex."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_PRE_TOKENIZER_SPLITS)
    except ImportError:  # another transformers layout: trust only our table
        return set()
    return set(GGUF_PRE_TOKENIZER_SPLITS)


def restore_pre_tokenizer(tokenizer, gguf: Path) -> dict:
    """Set ``tokenizer``'s (a transformers fast tokenizer built from ``gguf``) normalizer
    and pre-tokenizer to the original model's; return what was done, for the provenance."""
    meta = read_gguf_strings(gguf, ("tokenizer.ggml.model", "tokenizer.ggml.pre"))
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    done = {"tokenizer_version": TOKENIZER_VERSION, "tokenizer_model": model, "pre": pre}
    if model != "gpt2":  # sentencepiece and friends: no pre type to honour
        return {**done, "pre_tokenizer": "transformers"}
    if pre in BYTE_LEVEL_SPLITS:
        normalizer, pre_tokenizer = _pipeline(*BYTE_LEVEL_SPLITS[pre])
        tokenizer.backend_tokenizer.normalizer = normalizer
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizer
        return {**done, "pre_tokenizer": "restored"}
    if pre in _transformers_splits():
        return {**done, "pre_tokenizer": "transformers"}
    known = sorted(BYTE_LEVEL_SPLITS.keys() | _transformers_splits())
    raise ValidationError(
        f"tokenizer.ggml.pre {pre!r}: unknown pre-tokenizer for this byte-level vocabulary "
        f"(known: {', '.join(known)}); converting it would split text unlike the original "
        "model, load the model's Hugging Face directory instead", file=str(gguf), field=FIELD)


def _pipeline(normalizer: dict | None, pre_tokenizer: dict):
    """``tokenizers`` objects from their ``tokenizer.json`` form (read back through a
    throwaway tokenizer: the one public way to parse them)."""
    from tokenizers import Tokenizer

    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
           "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": None,
           "decoder": None, "model": {"type": "WordLevel", "vocab": {"?": 0}, "unk_token": "?"}}
    parsed = Tokenizer.from_str(json.dumps(doc))
    return parsed.normalizer, parsed.pre_tokenizer


def cache_is_current(target: Path) -> bool:
    """Whether a converted GGUF directory is complete and its tokenizer was written by this
    version of :func:`restore_pre_tokenizer`."""
    if not (target / "config.json").is_file():
        return False
    try:
        provenance = json.loads((target / PROVENANCE).read_text())
    except (OSError, ValueError):
        return False
    tok = provenance.get("tokenizer") if isinstance(provenance, dict) else None
    return isinstance(tok, dict) and tok.get("tokenizer_version") == TOKENIZER_VERSION
