"""`headsurgeon export --gguf` of SentencePiece-style tokenizers (Llama-2, Mistral): GGUF's
``llama`` tokenizer model (tokens, scores, types, no merges), loaded back through transformers'
own GGUF loader from a directory holding nothing but the file.

The exported tokenizer is built as Llama-2's is: a BPE with byte fallback and all 256 byte
tokens whose merges were derived from SentencePiece scores, behind a "\u2581" Metaspace. Token
ids must be identical on text with leading and repeated spaces, digits, CJK, emoji (spelled as
byte tokens), special and added tokens and chat-template text; logits bit-identical (f16 of a
float16 model). Tokenizers the readers would rebuild differently are refused with one line.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_answer_tokens import (CORPUS, LLAMA2_TEMPLATE, SPECIALS, SPM, gemma_like,
                                metaspace_bpe, metaspace_unigram)
from test_export_gguf import _one_line_error, export, load_gguf, load_ref, metadata

BYTES = [f"<0x{i:02X}>" for i in range(256)]
TEXT = CORPUS + ["12 345 6789 2024 3.14159 100%", "naive cafe uber strasse", "the answer"] * 20
ADDED = "<tool>"  # an added token that is not special (llama.cpp: user-defined)
STRINGS = [
    "Hello world", "The answer is (A)", " leading space", "  two leading spaces",
    "a  b   c    d", "trailing spaces   ", "\n\nnew\tlines\n and tabs\t", "12345 67 3.14 2024",
    "naïve café über", "日本語のテキストと中文", "emoji 😀🎉 ok", "ǅ ꙮ Ω ∑", "x😀y",
    "</s>[INST] Is it? [/INST] Yes</s>", "<s>What?</s>", f"call {ADDED} now{ADDED}",
    "<unk> in text", "", " ", "  ",
]
CARD = ("---\nlicense: apache-2.0\nbase_model: meta-llama/Llama-2-7b-chat-hf\n"
        "tags:\n- headsurgeon\n---\n\n# edit\n")


def _trained_bpe():
    """A byte-fallback BPE trained by ``tokenizers`` (its merges follow training order)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM, prepend_scheme="first")
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(
        vocab_size=700, special_tokens=SPECIALS + BYTES, limit_alphabet=60,
        show_progress=False))
    return tok


def llama2_tokenizer():
    """Llama-2's shape: SentencePiece scores (minus the piece id) turned into merges the way
    transformers converts a SentencePiece model, loaded by ``LlamaTokenizer``."""
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    vocab = _trained_bpe().get_vocab()
    merges = generate_merges(vocab, {t: -i for t, i in vocab.items()},
                             skip_tokens=set(SPECIALS + BYTES))
    fast = LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>",
                          eos_token="</s>", pad_token="<pad>", add_bos_token=True)
    fast.add_tokens([ADDED])
    fast.chat_template = LLAMA2_TEMPLATE
    return fast


def fast_of(tok):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    fast.chat_template = LLAMA2_TEMPLATE
    return fast


def build(arch: str, tokenizer, out: Path, vocab: int | None = None) -> Path:
    from transformers import AutoModelForCausalLM

    from headsurgeon.model.tiny import tiny_config

    cfg = tiny_config(arch)
    cfg.vocab_size = vocab or len(tokenizer)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, 3
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(CARD)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("spm")
    tok = llama2_tokenizer()
    return {arch: build(arch, tok, base / f"{arch}-edit") for arch in ("llama", "mistral")}


def exported(model_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "gguf" / "edit-f16.gguf"  # a directory holding only the GGUF
    code, _, stderr = export(model_dir, "--gguf", out)
    assert code == 0, stderr
    return out


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_sentencepiece_bpe_round_trips_ids_and_logits(models, arch, tmp_path):
    out = exported(models[arch], tmp_path)
    ref, ref_tok = load_ref(models[arch])
    got, tok = load_gguf(out)
    assert metadata(out, "tokenizer.ggml.model") == "llama"
    assert "tokenizer.ggml.merges" not in _fields(out)  # llama.cpp merges by score
    assert tok.chat_template == ref_tok.chat_template == LLAMA2_TEMPLATE
    used_bytes = False
    for text in STRINGS:
        for specials in (True, False):
            want = ref_tok(text, add_special_tokens=specials).input_ids
            assert tok(text, add_special_tokens=specials).input_ids == want, (text, specials)
        used_bytes |= any(t in BYTES for t in ref_tok.convert_ids_to_tokens(want))
        assert tok.decode(want) == ref_tok.decode(want), text
    assert used_bytes  # characters outside the vocabulary really went through byte fallback
    assert ref_tok("Hi").input_ids[0] == ref_tok.bos_token_id  # BOS added, on both sides
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "Sure?  日本"}]
    want = ref_tok.apply_chat_template(msgs, return_dict=True)["input_ids"]
    assert tok.apply_chat_template(msgs, return_dict=True)["input_ids"] == want
    ids = torch.tensor([ref_tok("The answer is  (A) 😀 12").input_ids])
    with torch.no_grad():  # float16 weights stored as F16: lossless, logits bit-identical
        assert torch.equal(got(ids).logits, ref(ids).logits)


def _fields(path: Path) -> dict:
    from gguf import GGUFReader

    return GGUFReader(path).fields


def test_scores_types_and_general_keys(models, tmp_path):
    import gguf

    out = exported(models["llama"], tmp_path)
    ref_tok = load_ref(models["llama"])[1]
    tokens = metadata(out, "tokenizer.ggml.tokens")
    types = metadata(out, "tokenizer.ggml.token_type")
    scores = metadata(out, "tokenizer.ggml.scores")
    assert tokens == [ref_tok.convert_ids_to_tokens(i) for i in range(len(ref_tok))]
    kind = dict(zip(tokens, types))
    assert [kind[t] for t in ("<unk>", "<s>", "</s>", "<pad>", "<0x41>", ADDED, "\u2581the")] \
        == [2, 3, 3, 3, 6, 4, 1]  # unknown, control x3, byte, user-defined, normal
    merges = json.loads(ref_tok.backend_tokenizer.to_str())["model"]["merges"]
    first: dict[str, int] = {}
    for rank, (left, right) in enumerate(m.split(" ") if isinstance(m, str) else m
                                         for m in merges):
        first.setdefault(left + right, rank)
    # minus the rank of the first merge making a token: llama.cpp merges the best score first
    assert scores == [-(first[t] + 1.0) if t in first else 0.0 for t in tokens]
    assert scores[tokens.index("\u2581t")] > scores[tokens.index("\u2581the")]
    assert [metadata(out, f"tokenizer.ggml.{k}") for k in (
        "bos_token_id", "eos_token_id", "add_bos_token")] == [1, 2, True]
    n_params = sum(p.numel() for p in load_ref(models["llama"])[0].parameters())
    assert metadata(out, "general.type") == "model"
    assert metadata(out, "general.name") == "llama-edit"
    assert metadata(out, "general.license") == "apache-2.0"
    assert metadata(out, "general.basename") == "Llama-2"
    assert metadata(out, "general.finetune") == "chat-hf"
    assert metadata(out, "general.size_label") == gguf.size_label(n_params, 0, 0, 0)
    assert metadata(out, "general.base_model.0.repo_url") == \
        "https://huggingface.co/meta-llama/Llama-2-7b-chat-hf"


def _with_tokenizer(models, tokenizer, where: Path) -> Path:
    """The tiny llama's weights (vocabulary rows to spare) with another tokenizer."""
    shutil.copytree(models["llama"], where)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (where / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(where)
    return where


def unconverted_bpe():
    """A BPE whose merges no score order gives: "\u2581abc" is made from "\u2581" + "abc"
    only, so " abc" stays "\u2581a", "bc"; merging by score ("\u2581a" + "bc" makes the
    better token "\u2581abc", as llama.cpp and the loader's derived merges do) joins them."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    pieces = SPECIALS + BYTES + [SPM, "a", "b", "c", SPM + "a", "bc", "abc", SPM + "abc"]
    merges = [(SPM, "a"), ("b", "c"), ("a", "bc"), (SPM, "abc")]
    tok = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM, prepend_scheme="first")
    return fast_of(tok)


def always_prefixed():
    """Llama-2's vocabulary with the legacy "\u2581" in front of every piece of text."""
    from tokenizers import pre_tokenizers

    backend = llama2_tokenizer().backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM, prepend_scheme="always",
                                                     split=False)
    return fast_of(backend)


REFUSED = {  # tokenizer -> words of the one-line reason
    "unigram": (lambda: fast_of(metaspace_unigram()), ("Unigram", "rebuild it as a BPE")),
    "no_byte_fallback": (lambda: fast_of(metaspace_bpe()), ("model.byte_fallback",)),
    "gemma_like": (lambda: fast_of(gemma_like()), ("normalizer", "'Replace'")),
    "bytes_added": (lambda: fast_of(_trained_bpe()), ("added_tokens", "'<0x00>'")),
    "unconverted_bpe": (unconverted_bpe, ("model.merges", "SentencePiece")),
    "always_prefixed": (always_prefixed, ("prepend_scheme", "'always'")),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_tokenizers_gguf_cannot_carry_are_refused(models, case, tmp_path):
    make, words = REFUSED[case]
    model_dir = _with_tokenizer(models, make(), tmp_path / "model")
    out = tmp_path / "out" / "m.gguf"
    _one_line_error(*export(model_dir, "--gguf", out), "tokenizer.json", *words)
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))


def test_the_merges_check_guards_a_real_difference(models, tmp_path, monkeypatch):
    """Without the check, the unconverted BPE exports, and transformers' loader (deriving
    merges from the scores, as llama.cpp merges by them) splits " abc" differently."""
    from headsurgeon.apply import gguf_spm

    ref_tok = unconverted_bpe()
    model_dir = _with_tokenizer(models, ref_tok, tmp_path / "unconverted")
    monkeypatch.setattr(gguf_spm, "_check_scores_give_merges", lambda *a: None)
    tok = load_gguf(exported(model_dir, tmp_path))[1]
    assert ref_tok.tokenize("abc") == [SPM + "a", "bc"]
    assert tok.tokenize("abc") == [SPM + "abc"]


def test_merge_order_within_one_token_matters_only_where_pairs_overlap():
    """Converters of different transformers versions list the pairs making one token in other
    orders; that changes nothing unless two of them can overlap ("ab"+"a", "a"+"ba")."""
    from headsurgeon.apply.gguf_spm import _same_merging

    ours = [("a", "b"), ("ab", "c"), ("a", "bc")]
    assert _same_merging(ours, [("a", "b"), ("a", "bc"), ("ab", "c")])
    assert not _same_merging(ours, [("a", "b"), ("ab", "c")])  # a pair missing
    assert not _same_merging(ours, [("a", "bc"), ("a", "b"), ("ab", "c")])  # tokens reordered
    assert not _same_merging([("ab", "a"), ("a", "ba")], [("a", "ba"), ("ab", "a")])
