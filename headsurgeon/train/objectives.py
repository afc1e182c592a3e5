"""The objective plugin contract, and the loss pieces objectives share.

An objective is a class registered under ``objectives`` with

- ``name: str`` and a pydantic ``Params`` model (``extra="forbid"``);
- ``needs_heads: bool``: whether training needs the selected heads (locate's output);
- ``trainable(ctx, params) -> Trainable``: which parameters train, as delta tensors or
  (baselines) whole weights -- see :mod:`headsurgeon.train.trainable`;
- ``loss(ctx, model, trainable, batch, params) -> (loss, {name: float})``: the scalar to
  minimise on one micro-batch; ``model`` is the (possibly accelerate-wrapped) forward;
- optionally ``collate(ctx, params, dialogues) -> batch``: build the micro-batch from
  :class:`~headsurgeon.train.dialogues.TrainDialogue` objects itself (any object with ``.to``,
  ``.step`` and ``.micro``); without it the batch is a :class:`TrainBatch` of the
  tokenized dialogues with labels on the recipe's ``loss_on`` turns.

Every registered objective must pass ``tests/test_objectives_contract.py``: after
training, the model outside the delta's declared slices is bit-identical to the base,
the delta round-trips through :func:`headsurgeon.model.delta.write_delta`, and equal seeds
give equal bytes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict
import torch.nn.functional as F

from headsurgeon.model.heads import HeadMap


@dataclass
class TrainBatch:
    input_ids: torch.Tensor       # [B, T], right-padded
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor          # [B, T], -100 where no loss
    step: int = 0                 # optimiser step this micro-batch belongs to
    micro: int = 0                # micro-batch index within the step

    def to(self, device) -> "TrainBatch":
        return TrainBatch(self.input_ids.to(device), self.attention_mask.to(device),
                          self.labels.to(device), self.step, self.micro)


@dataclass
class ObjectiveContext:
    """What the trainer hands an objective."""

    model: torch.nn.Module
    tokenizer: object
    hm: HeadMap
    heads: list                           # selected [layer, head] (may be empty)
    kv: str                               # resolved kv policy
    seed: int
    checkpoint_names: set                 # tensor names stored in the base checkpoint
    neutral_texts: Callable[[], list[str]] = field(default=lambda: [])
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    templates: object = None              # recipe.templates (dialogue wording)
    reuse_base: bool = True               # keep the frozen base's outputs once per row
    _neutral_cache: Optional[list] = None

    def neutral(self) -> list[str]:
        if self._neutral_cache is None:
            self._neutral_cache = list(self.neutral_texts())
        return self._neutral_cache


def safe_pad_id(tokenizer, model) -> int:
    """The tokenizer's pad id, or 0 when it has none or it lies outside the model's
    embedding (padded positions are masked, any valid id will do)."""
    pad = tokenizer.pad_token_id
    n = model.get_input_embeddings().num_embeddings
    return pad if pad is not None and 0 <= pad < n else 0


def right_pad(pairs: Sequence[tuple[list, list]], pad_id: int) -> TrainBatch:
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for i, (seq, lab) in enumerate(pairs):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, :len(lab)] = torch.tensor(lab)
    return TrainBatch(ids, mask, labels)


def forward_logits(model, batch: TrainBatch, keep: Optional[torch.Tensor] = None):
    """Logits at sequence positions ``keep`` (all when None). Skipping the LM head where
    no loss is taken saves a large share of a small model's compute."""
    kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    if keep is not None:
        try:
            return model(**kw, logits_to_keep=keep).logits
        except TypeError:  # a model without logits_to_keep
            return model(**kw).logits[:, keep]
    return model(**kw).logits


def lm_loss(model, batch: TrainBatch) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens."""
    shifted = batch.labels[:, 1:]
    keep = (shifted != -100).any(0).nonzero().squeeze(1)
    if keep.numel() == 0:
        raise ValueError("a micro-batch without any labelled token")
    logits = forward_logits(model, batch, keep)
    target = shifted[:, keep]
    return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100)


def neutral_batch(ctx: ObjectiveContext, texts: Sequence[str], step: int, micro: int, n: int,
                  max_tokens: int) -> TrainBatch:
    """A deterministic batch of ``n`` of ``texts`` for (step, micro)."""
    if not texts:
        raise ValueError("no neutral text available")
    rng = random.Random(f"{ctx.seed}:{step}:{micro}")
    chosen = [texts[rng.randrange(len(texts))] for _ in range(n)]
    tok = ctx.tokenizer
    pad = safe_pad_id(tok, ctx.model)
    pairs = []
    for t in chosen:
        ids = tok(t, add_special_tokens=False)["input_ids"][:max_tokens]
        pairs.append((ids, ids))
    b = right_pad(pairs, pad)
    return TrainBatch(b.input_ids, b.attention_mask, b.labels, step, micro)


def kl_to_base(model, trainable, batch: TrainBatch,
               teacher: Optional["BaseLogProbs"] = None) -> torch.Tensor:
    """Mean per-token KL(base || tuned) of next-token distributions on ``batch``;
    ``teacher`` keeps the base's side once per row instead of recomputing it."""
    with torch.no_grad():
        if teacher is not None:
            base_logp = teacher.log_probs(model, trainable, batch)
        else:
            with trainable.base():
                base_logp = F.log_softmax(forward_logits(model, batch).float(), -1)
    logp = F.log_softmax(forward_logits(model, batch).float(), -1)
    kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
    mask = batch.attention_mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum()


class BaseLogProbs:
    """The frozen base's next-token log-probs on right-padded rows, computed once per row
    (its tokens are the key): the base's hidden states entering the LM head are kept
    (``[tokens, hidden]``, far smaller than ``[tokens, vocab]``) and the head re-applied.
    Used only where the head alone reproduces the model's logits bit for bit (checked on
    the first batch; a softcap or scale after the head, or autocast, turns it off)."""

    def __init__(self):
        self.rows: dict[bytes, torch.Tensor] = {}
        self.exact: Optional[bool] = None

    def log_probs(self, model, trainable, batch: TrainBatch) -> torch.Tensor:
        head = _unwrap(model).get_output_embeddings()
        spans = [int(n) for n in batch.attention_mask.sum(1)]
        keys = [batch.input_ids[i, :n].cpu().numpy().tobytes() for i, n in enumerate(spans)]
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        if missing or self.exact is False:
            captured: list = []
            hook = head.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
            try:
                with trainable.base():
                    logits = forward_logits(model, batch)
            finally:
                hook.remove()
            if self.exact is None:
                self.exact = torch.equal(head(captured[0]), logits)
            if not self.exact:
                return F.log_softmax(logits.float(), -1)
            for i in missing:
                self.rows[keys[i]] = captured[0][i, :spans[i]].detach().clone()
            return F.log_softmax(logits.float(), -1)
        ref = self.rows[keys[0]]
        hidden = ref.new_zeros(batch.input_ids.shape + ref.shape[-1:])
        for i, (k, n) in enumerate(zip(keys, spans)):
            hidden[i, :n] = self.rows[k]
        return F.log_softmax(head(hidden).float(), -1)


def _unwrap(model):
    """The model under accelerate's / DDP's wrappers."""
    return getattr(model, "module", model)


class StrictParams(BaseModel):
    """Base of an objective's ``Params``: an unknown key in the recipe is an error."""
    model_config = ConfigDict(extra="forbid")


class CrossEntropyObjective:
    """Cross-entropy on the dialogues' chosen assistant turns (the paper's loss). The
    objectives that train with it differ only in what they make trainable."""
    Params = StrictParams

    def loss(self, ctx, model, trainable, batch, params):
        ce = lm_loss(model, batch)
        return ce, {"ce": float(ce.detach())}
