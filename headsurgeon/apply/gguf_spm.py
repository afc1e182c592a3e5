"""A SentencePiece-style tokenizer (Llama-2, Mistral) as GGUF's ``llama`` tokenizer model.

GGUF stores such a vocabulary as tokens, scores and token types; no merges, no pre-tokenizer.
llama.cpp merges, again and again, the adjacent pair whose joined text is the best-scoring
token, falls back to ``<0xNN>`` byte tokens, and writes spaces as "\u2581". transformers' GGUF
loader rebuilds a BPE with byte fallback whose merges it derives from the same scores (every
split of a token into two vocabulary tokens, best score first) behind a "\u2581" Metaspace that
prefixes only the start of the text. Neither can be told anything else, so the export is exact
only for a tokenizer that already is that; every other one is refused with the reason:

- the model is a BPE with byte fallback and all 256 byte tokens (a Unigram vocabulary would
  come back as a BPE and split text differently);
- no normalizer, and a "\u2581" Metaspace prepending to the first piece only;
- its merges are exactly the ones its scores imply (true of vocabularies converted from a
  SentencePiece model; a BPE trained by ``tokenizers`` has merges no score order reproduces).

A token's score is minus the 1-based rank of the first merge that makes it, 0 for tokens no
merge makes (llama.cpp merges the best score first, as SentencePiece does); the types follow llama.cpp's converter: control for
specials, unknown for the unk token, byte for ``<0xNN>``, user-defined for other added tokens.
"""
from __future__ import annotations

import re

from headsurgeon.core.errors import ValidationError

SPM_SPACE = "\u2581"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


def is_sentencepiece(tok: dict) -> bool:
    """Whether ``tok`` (a ``tokenizer.json``) writes spaces as "\u2581" the SentencePiece way
    (byte fallback, a Unigram model or a Metaspace pre-tokenizer), not byte-level."""
    model = tok.get("model") or {}
    pre = tok.get("pre_tokenizer") or {}
    return (model.get("type") == "Unigram" or bool(model.get("byte_fallback"))
            or pre.get("type") == "Metaspace")


def _check_model(model: dict, where: str) -> None:
    if model.get("type") == "Unigram":
        raise ValidationError(
            "model.type: a Unigram vocabulary cannot be exported to GGUF exactly (llama.cpp "
            "and transformers' GGUF loader rebuild it as a BPE, which splits text differently)",
            file=where)
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise ValidationError(
            "model.byte_fallback: a SentencePiece-style BPE needs byte fallback for GGUF "
            "(llama.cpp and transformers' GGUF loader spell unknown characters as <0xNN> tokens)",
            file=where)
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "ignore_merges"):
        if model.get(key):
            raise ValidationError(f"model.{key}: {model[key]!r} is not carried by GGUF",
                                  file=where)
    missing = [f"<0x{i:02X}>" for i in range(256)
               if f"<0x{i:02X}>" not in (model.get("vocab") or {})]
    if missing:
        raise ValidationError(f"model.vocab: byte fallback without {len(missing)} of the 256 "
                              f"byte tokens (e.g. {missing[0]}); llama.cpp needs them all",
                              file=where)


def _check_split(tok: dict, where: str) -> None:
    """No normalizer and a "\u2581" Metaspace prefixing the first piece: what both readers
    run. ``split`` may be on only if no token has a "\u2581" after its first character (then
    splitting at each "\u2581" changes nothing)."""
    if tok.get("normalizer") is not None:
        kind = tok["normalizer"].get("type")
        raise ValidationError(f"normalizer: {kind!r} is not carried by GGUF (the readers run "
                              "a \u2581 Metaspace and no normalizer)", file=where)
    pre = tok.get("pre_tokenizer") or {}
    if pre.get("type") != "Metaspace" or pre.get("replacement") != SPM_SPACE:
        raise ValidationError(f"pre_tokenizer: {pre.get('type')!r} is not the \u2581 Metaspace "
                              "GGUF readers run for a SentencePiece vocabulary", file=where)
    if pre.get("prepend_scheme", "always") != "first":
        raise ValidationError(
            f"pre_tokenizer.prepend_scheme: {pre.get('prepend_scheme')!r}; transformers' GGUF "
            "loader prefixes \u2581 to the start of the text only ('first')", file=where)
    if pre.get("split", True):
        inner = next((t for t in tok["model"]["vocab"] if SPM_SPACE in t[1:]), None)
        if inner is not None:
            raise ValidationError(f"pre_tokenizer.split: on, but token {inner!r} spans a "
                                  "\u2581; GGUF readers do not split at \u2581", file=where)


def _check_added(tok: dict, where: str) -> None:
    for added in tok.get("added_tokens") or []:
        if _BYTE_TOKEN.fullmatch(added["content"]):
            raise ValidationError(f"added_tokens: byte token {added['content']!r} is an added "
                                  "token; GGUF readers match byte tokens only as byte fallback",
                                  file=where)
        flags = [k for k in ("lstrip", "rstrip", "single_word") if added.get(k)]
        if flags:
            raise ValidationError(f"added_tokens: {added['content']!r} has {flags[0]} set, "
                                  "which GGUF does not carry", file=where)


def _types(tokens: list[str], types: list[int], tok: dict, unk_id: int | None) -> list[int]:
    """gguf_vocab's types (normal / control / user-defined / unused) with llama.cpp's byte
    and unknown types on top."""
    vocab = tok["model"]["vocab"]
    out = list(types)
    for i, text in enumerate(tokens):
        if _BYTE_TOKEN.fullmatch(text) and vocab.get(text) == i:
            out[i] = BYTE
    if unk_id is not None:
        out[unk_id] = UNKNOWN
    return out


def _merge_pairs(merges) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def merge_scores(tokens: list[str], merges: list[tuple[str, str]]) -> list[float]:
    """Minus the rank (from 1) of the first merge making each token; 0 for the others."""
    first: dict[str, int] = {}
    for rank, (left, right) in enumerate(merges):
        first.setdefault(left + right, rank)
    return [-float(first[t] + 1) if t in first else 0.0 for t in tokens]


def _groups(merges: list[tuple[str, str]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Runs of consecutive merges making the same token: (token, its merges in order)."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for left, right in merges:
        if out and out[-1][0] == left + right:
            out[-1][1].append((left, right))
        else:
            out.append((left + right, [(left, right)]))
    return out


def _same_merging(ours: list[tuple[str, str]], theirs: list[tuple[str, str]]) -> bool:
    """Whether two merge lists merge every text alike: the same tokens in the same order, each
    from the same pairs. Pairs making one token may come in another order (converters of
    different transformers versions order them differently) unless two of them can overlap
    ("ab"+"a" and "a"+"ba"), where the first listed wins."""
    a, b = _groups(ours), _groups(theirs)
    if [t for t, _ in a] != [t for t, _ in b]:
        return False
    for (_, x), (_, y) in zip(a, b):
        if x != y and (set(x) != set(y) or {r for _, r in x} & {l for l, _ in x}):
            return False
    return True


def _check_scores_give_merges(tokens: list[str], scores: list[float],
                              merges: list[tuple[str, str]], where: str) -> None:
    """The merges transformers' GGUF loader derives from the scores (its own function) must
    merge like the tokenizer's; llama.cpp, merging the best-scoring token first, then agrees."""
    from transformers.tokenization_utils_base import generate_merges

    derived = generate_merges({t: i for i, t in enumerate(tokens)}, dict(zip(tokens, scores)))
    if derived == merges or _same_merging(derived, merges):
        return
    at = next((i for i, (a, b) in enumerate(zip(derived, merges)) if a != b),
              min(len(derived), len(merges)))
    have = " ".join(merges[at]) if at < len(merges) else "none"
    got = " ".join(derived[at]) if at < len(derived) else "none"
    raise ValidationError(
        f"model.merges: merge {at} is {have!r} but GGUF's scores would give {got!r}; this BPE "
        "was not converted from SentencePiece and would split text differently", file=where)


def check_sentencepiece(tok: dict, where: str) -> None:
    """Refuse, with the reason, a ``tokenizer.json`` (as transformers loads it) that GGUF's
    ``llama`` model cannot carry exactly."""
    _check_model(tok.get("model") or {}, where)
    _check_split(tok, where)
    _check_added(tok, where)


def spm_fields(tok: dict, tokens: list[str], types: list[int], unk_id: int | None,
               where: str) -> dict:
    """The :class:`GGUFVocab` fields of the ``llama`` model: scores and llama.cpp's types."""
    merges = _merge_pairs(tok["model"].get("merges") or [])
    scores = merge_scores(tokens, merges)
    _check_scores_give_merges(tokens, scores, merges, where)
    return {"tokenizer_model": "llama", "scores": scores,
            "token_types": _types(tokens, types, tok, unk_id)}
