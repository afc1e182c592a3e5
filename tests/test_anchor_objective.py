"""``sft_anchor`` holds the unchallenged first answers where plain ``sft`` moves them.

Same tiny model, heads, data and steps; after training, the KL(base || tuned) of the
letter distribution after the bare question is measured on the training questions with
plain forwards (not through the objective's own code). A strong anchor must leave it far
below plain SFT's, and its reported ``anchor_kl`` must be that quantity."""
import torch
import torch.nn.functional as F

from headsurgeon.core.sections import Templates
from headsurgeon.data.datasets import load_stage
from headsurgeon.data.dialogue import answer_token_ids, encode, format_question, render
from headsurgeon.model.sources import load_model
from headsurgeon.train.run import train_in_memory

from train_helpers import load, one_thread, recipe_text, write_questions  # noqa: F401


def _first_answer_kl(base, tuned, tok, questions) -> float:
    t = Templates()
    kls = []
    for q in questions:
        text = render(tok, [{"role": "user", "content": format_question(q, t)}],
                      "The answer is (")
        ids = answer_token_ids(tok, text, q.letters)
        x = torch.tensor([encode(tok, text)])
        with torch.no_grad():
            b = F.log_softmax(base(x).logits[0, -1].float()[ids], -1)
            n = F.log_softmax(tuned(x).logits[0, -1].float()[ids], -1)
        kls.append(float((b.exp() * (b - n)).sum()))
    return sum(kls) / len(kls)


def _train(tmp_path, model_dir, data, objective):
    path = tmp_path / f"{objective.split()[0]}.yaml"
    path.write_text(recipe_text(model_dir, data, extra_train=objective, steps=12, lr=0.05))
    recipe = load(path)
    model, tok, _ = load_model(str(model_dir))
    res = train_in_memory(recipe, model=model, tokenizer=tok, progress=False)
    return recipe, model, tok, res


def test_anchor_keeps_first_answers_that_sft_moves(tmp_path, tiny_dirs, one_thread):  # noqa: F811
    model_dir = tiny_dirs["llama"]
    data = write_questions(tmp_path / "train.jsonl", 16)
    recipe, sft_model, tok, _ = _train(tmp_path, model_dir, data, "objective: sft")
    _, anchored, _, res = _train(tmp_path, model_dir, data, (
        "objective: {name: sft_anchor, anchor_weight: 50.0}"))
    base, _, _ = load_model(str(model_dir))
    questions = load_stage(recipe.data.train, "train")
    moved = _first_answer_kl(base, sft_model, tok, questions)
    held = _first_answer_kl(base, anchored, tok, questions)
    assert moved > 1e-3, moved         # plain SFT of these heads moves the first answers
    assert held < moved / 4, (held, moved)
    last = res.log["history"][-1]
    assert set(last) >= {"ce", "anchor_kl"} and last["anchor_kl"] >= 0
