"""The paired probes locate patches between, built in the model's own chat template.

Per multiple-choice question: user question with lettered options -> assistant's first
answer prefilled with the CORRECT letter -> user follow-up. The *reference* follow-up is
``templates.challenge``; the *counterfactual* one is ``locate.counterfactual``
(``counterfactual`` = ``templates.counterfactual``, ``neutral``, or a literal sentence).
The metric plugin may prefill the assistant turn (letter_gap: ``final_prefix``). The
*reply* probes (reference dialogue, no prefix) are what the apology rate is read from;
``reply_cf`` are the same with the counterfactual follow-up (the knockout's source).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from headsurgeon.locate.backend import MetricBatch
from headsurgeon.core.errors import ValidationError
from headsurgeon.data.dialogue import dialogue, encode, followup_text, render


@dataclass
class ProbeSet:
    questions: list
    ref: list[list[int]]
    cf: list[list[int]]
    reply: list[list[int]]
    spans: list[tuple[int, int]]          # challenge tokens in each ``ref`` sequence
    metric: MetricBatch
    info: dict = field(default_factory=dict)
    reply_cf: list = field(default_factory=list)  # ``reply`` with the counterfactual follow-up

    def __len__(self):
        return len(self.ref)

    def batches(self, size: int):
        for a in range(0, len(self.ref), size):
            yield a, min(len(self.ref), a + size)


class MetricContext:
    """What a metric plugin's ``prepare``/``targets``/``messages`` may ask for."""

    def __init__(self, tokenizer, templates, questions, engine, counterfactual: str):
        self.tokenizer, self.templates, self.questions = tokenizer, templates, questions
        self.engine, self.counterfactual = engine, counterfactual
        self._replies: dict = {}

    def _reply_seqs(self, followup):
        return [encode(self.tokenizer, render(self.tokenizer, dialogue(
            q, self.templates, q.answer, followup=followup))) for q in self.questions]

    def reply_stats(self) -> dict:
        """Greedy first reply tokens after the challenge and after the counterfactual."""
        ref_top, _ = self.engine.next_token_stats(self._reply_seqs("challenge"))
        cf_top, cf_probs = self.engine.next_token_stats(self._reply_seqs(self.counterfactual))
        return {"reference_first": ref_top.tolist(), "counterfactual_first": cf_top.tolist(),
                "counterfactual_mean_probs": cf_probs}

    def reply_text(self, q, n_tokens: int) -> str:
        """The model's own greedy reply to the reference challenge (cached per question)."""
        if q.id not in self._replies:
            seqs = self._reply_seqs("challenge")
            toks = self.engine.greedy(seqs, n_tokens, 1)[:, 0]
            for qq, t in zip(self.questions, toks):
                self._replies[qq.id] = self.tokenizer.decode(t.tolist(),
                                                             skip_special_tokens=True).strip()
        return self._replies[q.id]


def challenge_span(tokenizer, text: str, needle: str, messages=None) -> tuple[int, int]:
    """Token range of the challenge ``needle`` in the rendered probe ``text``: its
    occurrence in the user turn that carries it (else the last occurrence)."""
    start = -1
    turn = next((i for i, m in enumerate(messages or ()) if m["role"] == "user"
                 and m["content"] == needle), None)
    if turn is not None:
        upto = tokenizer.apply_chat_template(list(messages[:turn + 1]), tokenize=False)
        if text.startswith(upto):
            start = upto.rfind(needle)
    if start < 0:
        start = text.rfind(needle)
    if start < 0:
        raise ValidationError("the challenge text does not appear in the rendered probe",
                              field="templates.challenge")
    stop = start + len(needle)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        toks = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < stop and b > start]
        if toks:
            return toks[0], toks[-1] + 1
    except (NotImplementedError, KeyError, TypeError):
        pass
    return len(encode(tokenizer, text[:start])), len(encode(tokenizer, text[:stop]))


def build_probes(metric, tokenizer, templates, questions, engine, *, counterfactual: str,
                 positions: int) -> ProbeSet:
    ctx = MetricContext(tokenizer, templates, questions, engine, counterfactual)
    info = metric.prepare(ctx) or {}
    prefix = metric.prefix(templates)
    challenge = followup_text("challenge", templates)
    ref, cf, reply, reply_cf, spans, ids, ws = [], [], [], [], [], [], []
    for q in questions:
        msgs = metric.messages(q, templates, "challenge", ctx)
        text = render(tokenizer, msgs, prefix)
        ref.append(encode(tokenizer, text))
        cf.append(encode(tokenizer, render(tokenizer, metric.messages(
            q, templates, counterfactual, ctx), prefix)))
        spans.append(challenge_span(tokenizer, text, challenge, msgs))
        if prefix or getattr(metric.params, "variant", "prefix") != "prefix":
            reply.append(encode(tokenizer, render(tokenizer, dialogue(
                q, templates, q.answer, followup="challenge"))))
            reply_cf.append(encode(tokenizer, render(tokenizer, dialogue(
                q, templates, q.answer, followup=counterfactual))))
        else:
            reply.append(ref[-1])
            reply_cf.append(cf[-1])
        i, w = metric.targets(q, ctx)
        ids.append(i)
        ws.append(w)
    shortest = min(len(s) for s in ref + cf + reply + reply_cf)
    if positions >= shortest:
        raise ValidationError(f"{positions} positions but the shortest probe has only "
                              f"{shortest} tokens", field="locate.positions")
    width = max(len(i) for i in ids)
    mids = torch.zeros(len(ids), width, dtype=torch.long)
    mw = torch.zeros(len(ids), width)
    for r, (i, w) in enumerate(zip(ids, ws)):
        mids[r, :len(i)] = torch.tensor(i)
        mw[r, :len(w)] = torch.tensor(w, dtype=torch.float32)
    return ProbeSet(list(questions), ref, cf, reply, spans,
                    MetricBatch(mids, mw, metric.link), info, reply_cf)

