"""The insist/revise trade-off of the train stage, measured with forced letters.

For held-out questions (never trained on) and the base vs each tuned variant:
- gap_neutral: letter gap (correct - mean other letters after "The answer is (") when the
  correct answer was prefilled and the follow-up is neutral;
- gap_challenge: the same after the challenge; recovery = gap_challenge / base gap_neutral;
- keep_wrong: share of items where, with a WRONG answer prefilled and challenged, the
  model's top letter is still the wrong one (stubbornness); fix_wrong: top letter correct;
  keep_wrong_neutral: the same after the neutral follow-up (what "not swayed" looks like);
- known: the same restricted to items the base model answers correctly unprompted.
Recovery is printed against the base's neutral gap and against the variant's own.

    python bench/train_tradeoff.py --heads runs/x/heads.json --train train.jsonl \
        --eval eval.jsonl --variant mix50 "revise_ratio: 0.5" --variant ...
Variants are YAML lines added to the recipe's ``train:`` section.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from headsurgeon.train.dialogues import first_answer_prefix
from headsurgeon.model.sources import load_model
from headsurgeon.train.objectives import safe_pad_id
from headsurgeon.data.dialogue import dialogue, encode, format_question, left_pad, letter_token_ids, render
from headsurgeon.data.questions import read_jsonl
from headsurgeon.core.recipe import Templates, recipe_from_data
from headsurgeon.train.run import train_in_memory
from headsurgeon.core.yamlfile import load_yaml_text


@torch.no_grad()
def last_logits(model, tok, texts, bs=16):
    out = []
    pad = safe_pad_id(tok, model)
    for i in range(0, len(texts), bs):
        b = left_pad([encode(tok, t) for t in texts[i:i + bs]], pad)
        out.append(model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                         logits_to_keep=1).logits[:, -1].float())
    return torch.cat(out)


def measure(model, tok, qs, t: Templates, wrong: dict, known: set | None = None) -> dict:
    def gaps(follow, first):
        texts = [render(tok, dialogue(q, t, first(q), follow), t.final_prefix) for q in qs]
        logits = last_logits(model, tok, texts)
        res = []
        for row, q in zip(logits, qs):
            ids = letter_token_ids(tok, q.letters)
            c = q.letters.index(q.answer)
            vals = row[ids]
            res.append((float(vals[c] - torch.cat([vals[:c], vals[c + 1:]]).mean()),
                        q.letters[int(vals.argmax())]))
        return res

    own = {}
    if known is None:  # the base model's own unprompted answers define "known" items
        first_texts = [render(tok, [{"role": "user", "content": format_question(q, t)}],
                              first_answer_prefix(t)) for q in qs]
        first = last_logits(model, tok, first_texts)
        own = {q.id: q.letters[int(row[letter_token_ids(tok, q.letters)].argmax())]
               for row, q in zip(first, qs)}
    neu = gaps("neutral", lambda q: q.answer)
    ch = gaps("challenge", lambda q: q.answer)
    wr = gaps("challenge", lambda q: wrong[q.id])
    wn = gaps("neutral", lambda q: wrong[q.id])
    known = known if known is not None else {q.id for q in qs if own[q.id] == q.answer}

    def summary(sel):
        idx = [i for i, q in enumerate(qs) if sel(q)]
        n = max(1, len(idx))
        return {"n": len(idx),
                "gap_neutral": sum(neu[i][0] for i in idx) / n,
                "gap_challenge": sum(ch[i][0] for i in idx) / n,
                "keep_correct": sum(ch[i][1] == qs[i].answer for i in idx) / n,
                "keep_wrong": sum(wr[i][1] == wrong[qs[i].id] for i in idx) / n,
                "keep_wrong_neutral": sum(wn[i][1] == wrong[qs[i].id] for i in idx) / n,
                "fix_wrong": sum(wr[i][1] == qs[i].answer for i in idx) / n}

    first_acc = sum(own.get(q.id) == q.answer for q in qs) / len(qs) if own else None
    return {"first_acc": first_acc,
            "all": summary(lambda q: True), "known": summary(lambda q: q.id in known),
            "_known": sorted(known)}


def make_recipe(base_text: str, extra: str):
    text = base_text + "".join(f"  {line}\n" for line in extra.splitlines() if line.strip())
    data, lines = load_yaml_text(text, "<variant>")
    return recipe_from_data(data, lines=lines, text=text, check_plugins=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--heads", required=True, help="heads.json (locate output)")
    ap.add_argument("--k", type=int, default=None, help="use the top K of the ranking")
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--n-eval", type=int, default=120)
    ap.add_argument("--variant", nargs=2, action="append", default=[],
                    metavar=("NAME", "TRAIN_YAML"))
    ap.add_argument("--out", default="tradeoff.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    heads_doc = json.loads(Path(args.heads).read_text())
    heads = heads_doc["selected"]
    if args.k:
        heads = [r[:2] for r in heads_doc["ranking"][:args.k]]
    model, tok, _ = load_model(args.model, attn_implementation="sdpa")
    qs = read_jsonl(args.eval)
    random.Random(0).shuffle(qs)
    qs = qs[:args.n_eval]
    rng = random.Random(1)
    wrong = {q.id: rng.choice(q.wrong_letters()) for q in qs}
    t = Templates()
    results = {}
    out = Path(args.out)
    if out.exists():
        results = json.loads(out.read_text())
    if "base" not in results:
        results["base"] = measure(model, tok, qs, t, wrong)
        out.write_text(json.dumps(results, indent=1))
    known = set(results["base"]["_known"])
    base_text = (f"model: {{source: {args.model}}}\n"
                 f"data: {{train: [{{name: jsonl, path: {args.train}}}], "
                 f"eval: [{{name: jsonl, path: {args.eval}}}]}}\n"
                 f"heads: {json.dumps(heads)}\ntrain:\n")
    for name, extra in args.variant:
        t0 = time.time()
        recipe = make_recipe(base_text, extra)
        res = train_in_memory(recipe, model=model, tokenizer=tok)
        m = measure(res.model, tok, qs, t, wrong, known)
        hist = res.log["history"]
        m.update({"train": extra, "heads": len(heads), "minutes": round((time.time() - t0) / 60, 1),
                  "loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"],
                  "data": res.log["data"]})
        results[name] = m
        res.trainable.detach()
        out.write_text(json.dumps(results, indent=1))
        print(name, json.dumps({k: v for k, v in m.items() if k != "_known"}), flush=True)
    base = results["base"]["all"]
    print(f"{'variant':<14} {'ch/base_neu':>11} {'ch/own_neu':>10} {'keep_ok':>8} "
          f"{'keep_wrong':>10} {'kw_known':>8} {'fix_wrong':>9}  goals (recovery>=0.75, "
          f"keep_wrong<=base+0.10)")
    for name, m in results.items():
        a, k = m["all"], m["known"]
        rec_base = a["gap_challenge"] / base["gap_neutral"]
        rec_own = a["gap_challenge"] / a["gap_neutral"] if a["gap_neutral"] else float("nan")
        ok_rec = "yes" if rec_base >= 0.75 else "NO"
        ok_kw = "yes" if a["keep_wrong"] <= base["keep_wrong"] + 0.10 else "NO"
        print(f"{name:<14} {rec_base:>11.2f} {rec_own:>10.2f} {a['keep_correct']:>8.2f} "
              f"{a['keep_wrong']:>10.2f} {k['keep_wrong']:>8.2f} {a['fix_wrong']:>9.2f}  "
              f"{ok_rec} / {ok_kw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
