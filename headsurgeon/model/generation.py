"""Batched inference for evaluation: greedy generation, next-token log-probabilities,
per-token KL between two models. Prompts are rendered strings (``probes.render``);
batches are left-padded with explicit position ids, so a prompt scores the same alone or
in a padded batch.

Prompts are processed longest-first in batches of similar length (less padding); results
come back in the caller's order. A batch that runs out of device memory is retried at half
the size (:func:`headsurgeon.model.placement.fit_batches`), so ``batch_size`` is an upper
bound, not a promise to crash.
"""
from __future__ import annotations

from typing import Sequence

import torch

from headsurgeon.core.progress import progress_bar
from headsurgeon.data.dialogue import encode, left_pad


def pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    if pid is None:
        pid = tokenizer.eos_token_id
    return 0 if pid is None else int(pid)


def end_of_turn(tokenizer) -> tuple[list[int], str]:
    """Token ids that end an assistant turn, and the text to cut a decoded reply at.

    The chat template is rendered with a marker reply; what follows the marker closes the
    turn. Its first token stops generation when it is a special token (``<|im_end|>``,
    ``<end_of_turn>``); a plain-text closer (a newline) is not used as a stop token.
    """
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    marker = "\u2063MARK\u2063"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
        tokenize=False)
    after = text.split(marker, 1)[1] if marker in text else ""
    cut = ""
    if after.strip():
        first = encode(tokenizer, after)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        if first and first[0] in special:
            ids.add(int(first[0]))
            cut = tokenizer.decode([first[0]])
    return sorted(ids), cut


def _order(seqs: Sequence[Sequence[int]]) -> list[int]:
    return sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))


def _batches(seqs, batch_size: int, desc: str | None, progress: bool, run) -> None:
    """``run(chunk)`` on every chunk of indices, longest first, halving on out-of-memory."""
    from headsurgeon.model.placement import fit_batches

    bar = progress_bar(total=len(seqs), desc=desc, disable=not progress or not desc,
                       leave=False, unit="item")
    try:
        fit_batches(_order(seqs), batch_size, lambda chunk: (run(chunk), bar.update(len(chunk))))
    finally:
        bar.close()


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _device(model) -> torch.device:
    """Where inputs go: the input embeddings' device (a split model's first device)."""
    from headsurgeon.model.placement import input_device

    return input_device(model)


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
             batch_size: int = 16, desc: str | None = None, progress: bool = True
             ) -> list[str]:
    """Greedy continuations of ``prompts`` (rendered chat text), cut at end of turn."""
    from transformers import GenerationConfig

    if not prompts:
        return []
    stops, cut = end_of_turn(tokenizer)
    pid = pad_id(tokenizer)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                           eos_token_id=stops or None, pad_token_id=pid)
    seqs = [encode(tokenizer, p) for p in prompts]
    out: list[str] = [""] * len(prompts)
    dev = _device(model)

    def run(chunk):
        batch = left_pad([seqs[i] for i in chunk], pid)
        ids, mask = batch.input_ids.to(dev), batch.attention_mask.to(dev)
        gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
        for row, i in enumerate(chunk):
            new = gen[row, ids.shape[1]:].tolist()
            for j, t in enumerate(new):  # drop everything from the first stop token on
                if t in stops:
                    new = new[:j]
                    break
            text = tokenizer.decode(new, skip_special_tokens=True)
            if cut and cut in text:
                text = text.split(cut, 1)[0]
            out[i] = text.strip()

    _batches(seqs, batch_size, desc, progress, run)
    return out


def _forward(model, ids, mask, keep: int | None = None):
    kw = {"logits_to_keep": keep} if keep else {}
    return model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                 use_cache=False, **kw).logits


@torch.inference_mode()
def next_token_logprobs(model, tokenizer, prompts: Sequence[str], token_ids: Sequence[int], *,
                        batch_size: int = 16, desc: str | None = None, progress: bool = True
                        ) -> torch.Tensor:
    """``[len(prompts), len(token_ids)]`` log-probabilities (over the full vocabulary) of
    each of ``token_ids`` as the next token after each prompt. One forward a batch, no
    generation; the prefix a batch's prompts share (chat template, system prompt) is
    computed once (:meth:`headsurgeon.model.kvrows.KVRows.prefill`)."""
    from headsurgeon.model.kvrows import KVRows

    seqs = [encode(tokenizer, p) for p in prompts]
    out = torch.empty(len(prompts), len(token_ids))
    index = torch.tensor(list(token_ids), dtype=torch.long)
    pid = pad_id(tokenizer)

    def run(chunk):
        out[chunk] = KVRows(model, pid).prefill([seqs[i] for i in chunk])[:, index]

    _batches(seqs, batch_size, desc, progress, run)
    return out


@torch.inference_mode()
def token_kl(base, edited, tokenizer, texts: Sequence[str], *, batch_size: int = 8,
             max_tokens: int = 256, desc: str | None = None, progress: bool = True
             ) -> tuple[float, int]:
    """Summed next-token KL(base || edited) over every position of every text, and the
    number of positions (texts truncated to ``max_tokens``)."""
    seqs = [encode(tokenizer, t)[:max_tokens] for t in texts]
    seqs = [s for s in seqs if len(s) >= 1]
    sums = [0.0, 0]
    pid = pad_id(tokenizer)

    def run(chunk):
        batch = left_pad([seqs[i] for i in chunk], pid)
        lp = []
        for m in (base, edited):
            dev = _device(m)
            logits = _forward(m, batch.input_ids.to(dev), batch.attention_mask.to(dev))
            lp.append(torch.log_softmax(logits.float(), dim=-1).cpu())
        kl = (lp[0].exp() * (lp[0] - lp[1])).sum(-1)  # [B, T]
        valid = batch.attention_mask.bool()
        sums[0] += kl[valid].sum().item()
        sums[1] += int(valid.sum())

    _batches(seqs, batch_size, desc, progress, run)
    return sums[0], sums[1]
