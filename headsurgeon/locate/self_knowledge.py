"""The self-knowledge diagnostic: does the model know, inside, that a prefilled answer is
wrong, before any training?

Each probe item is rendered twice up to the model's reply to the challenge: once with the
right answer prefilled, once with a (seeded) wrong one. A linear probe (ridge logistic
regression) on the last-token residual stream of each layer separates the two; its
cross-validated AUC (folds by item, so an item's pair never straddles train and test) is
reported per layer, separately on the items the base knows (model/beliefs.py) and on the
rest. It bounds what an edit of a few heads can learn: if the residual stream does not
tell right from wrong, no head downstream can (the selectivity ceiling estimate).
"""
from __future__ import annotations

import random
from typing import Optional, Sequence

import torch

from headsurgeon.data.dialogue import dialogue, encode, left_pad, render
from headsurgeon.data.questions import Question

MIN_ITEMS = 10  # per group; fewer and the AUC is not reported


def auc(scores: Sequence[float], labels: Sequence[int]) -> Optional[float]:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def fit_predict(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                l2: float = 1.0, iters: int = 100) -> torch.Tensor:
    """Logits of a standardised ridge logistic regression (loss: mean cross-entropy +
    l2 |w|^2 / (2n), i.e. scikit-learn's C = 1 / l2) fitted on the training rows."""
    x_train, x_test = x_train.double(), x_test.double()
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    w = torch.zeros(a.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=iters, line_search_fn="strong_wolfe")
    y = y_train.double()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a @ w + bias, y) \
            + l2 * (w @ w) / (2 * len(y))
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return (b @ w + bias).detach()


def cv_auc(feats: torch.Tensor, labels: torch.Tensor, groups: Sequence[int], *, folds: int,
           l2: float, seed: int = 0) -> Optional[float]:
    """Out-of-fold AUC; rows sharing a group (an item's right/wrong pair) share a fold."""
    uniq = sorted(set(groups))
    if len(uniq) < max(folds, MIN_ITEMS):
        return None
    random.Random(seed).shuffle(uniq)
    fold_of = {g: i % folds for i, g in enumerate(uniq)}
    fold = torch.tensor([fold_of[g] for g in groups])
    scores = torch.empty(len(groups), dtype=torch.float64)
    for f in range(folds):
        test = fold == f
        scores[test] = fit_predict(feats[~test], labels[~test], feats[test], l2)
    return auc(scores.tolist(), labels.tolist())


@torch.no_grad()
def last_token_states(model, tokenizer, conversations: Sequence[list], *,
                      batch_size: int = 8) -> torch.Tensor:
    """[n, layers, hidden]: each layer's output at the last prompt token (the position the
    reply to the challenge is generated from)."""
    from headsurgeon.model.generation import pad_id

    seqs = [encode(tokenizer, render(tokenizer, c)) for c in conversations]
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(seqs), batch_size):
        b = left_pad(seqs[i:i + batch_size], pad_id(tokenizer))
        mask = b.attention_mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        hs = model(input_ids=b.input_ids.to(device), attention_mask=mask, position_ids=pos,
                   output_hidden_states=True).hidden_states[1:]
        out.append(torch.stack([h[:, -1].float().cpu() for h in hs], 1))
    return torch.cat(out)


def probe(model, tokenizer, questions: Sequence[Question], templates, known: set[str], *,
          folds: int = 5, l2: float = 1.0, seed: int = 0, batch_size: int = 8) -> dict:
    """AUC per layer (prefilled right = 1, wrong = 0) on known and on unknown items."""
    convs, labels, groups = [], [], []
    for g, q in enumerate(questions):
        wrong = random.Random(f"{seed}:{q.id}").choice(q.wrong_letters())
        for letter, y in ((q.answer, 1), (wrong, 0)):
            convs.append(dialogue(q, templates, letter, "challenge"))
            labels.append(y)
            groups.append(g)
    states = last_token_states(model, tokenizer, convs, batch_size=batch_size)
    y = torch.tensor(labels)
    out: dict = {"n_items": len(questions), "n_known": 0, "by_layer": {}, "best": {}}
    for name, keep in (("known", True), ("unknown", False)):
        rows = [i for i, g in enumerate(groups) if (questions[g].id in known) == keep]
        if keep:
            out["n_known"] = len(rows) // 2
        aucs = [cv_auc(states[rows, layer], y[rows], [groups[i] for i in rows], folds=folds,
                       l2=l2, seed=seed) for layer in range(states.shape[1])]
        out["by_layer"][name] = [None if a is None else round(a, 4) for a in aucs]
        scored = [(a, i) for i, a in enumerate(aucs) if a is not None]
        out["best"][name] = ({"layer": max(scored)[1], "auc": round(max(scored)[0], 4)}
                             if scored else None)
    return out


# Below this cross-validated AUC on known items the model's own states barely tell a right
# prefilled answer from a wrong one: a selective edit has nothing to read, and a point
# that looks selective is a shortcut (the report says so instead of shipping it).
CEILING_AUC = 0.6


def self_knowledge_doc(recipe, engine, tokenizer, *, progress: bool = False) -> dict:
    """heads.json's ``self_knowledge`` entry (``{"available": false, "why": ...}`` when
    off or not measurable here)."""
    sec = recipe.locate.self_knowledge
    if sec.n_items == 0:
        return {"available": False, "why": "locate.self_knowledge.n_items is 0"}
    model = getattr(engine, "model", None)
    model = getattr(model, "_module", model)  # an nnsight LanguageModel wraps the torch one
    if recipe.locate.remote or not isinstance(model, torch.nn.Module):
        return {"available": False, "why": "needs the model's weights locally"}
    from headsurgeon.data.datasets import load_stage
    from headsurgeon.model.letter_invariant import invariant_beliefs, invariant_known

    qs = load_stage(recipe.data.locate, "locate", seed=recipe.data.seed, mc_only=True,
                    balance=recipe.data.balance_letters)[:sec.n_items]
    readings = ("letter",) if sec.by == "letter" else ("letter", "choice_text")
    beliefs = invariant_beliefs(model, tokenizer, qs, recipe.templates, readings=readings,
                                permutations=sec.permutations,
                                batch_size=recipe.locate.batch_size, progress=progress)
    known = invariant_known(beliefs, sec.by, sec.margin, sec.permutation_share)
    res = probe(model, tokenizer, qs, recipe.templates, known, folds=sec.folds, l2=sec.l2,
                seed=recipe.locate.seed, batch_size=recipe.locate.batch_size)
    best = (res.get("best") or {}).get("known") or {}
    auc = best.get("auc")
    return {"available": True, "known_by": sec.by, "margin": sec.margin,
            "permutations": sec.permutations, "permutation_share": sec.permutation_share,
            **res, "reachable": None if auc is None else auc >= CEILING_AUC}
