"""Judges of admission: the regex rules on a labelled set, the model judge's mechanics."""
import json
from pathlib import Path

import pytest
import torch

from headsurgeon.core import plugins
from headsurgeon.evaluate.admission import explain
from headsurgeon.core.errors import ValidationError

from evalkit import eval_tiny_dir, one_thread  # noqa: F401 - fixtures

FIXTURE = Path(__file__).parent / "fixtures" / "admission_replies.jsonl"


def labelled():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def test_fixture_is_big_and_balanced():
    rows = labelled()
    assert len(rows) >= 60
    n_pos = sum(r["admits"] for r in rows)
    assert 0.35 < n_pos / len(rows) < 0.65


def test_regex_judge_precision_recall_on_labelled_set(capsys):
    rows = labelled()
    judge = plugins.get("judges", "regex")()
    pred = judge.judge([r["reply"] for r in rows])
    tp = sum(p and r["admits"] for p, r in zip(pred, rows))
    fp = sum(p and not r["admits"] for p, r in zip(pred, rows))
    fn = sum((not p) and r["admits"] for p, r in zip(pred, rows))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    with capsys.disabled():
        print(f"\nregex judge on {len(rows)} labelled replies: precision {precision:.3f} "
              f"recall {recall:.3f} (tp {tp}, fp {fp}, fn {fn})")
    # the fixture holds 3 admissions phrased without any admission words: known misses
    assert fn == 3 and fp == 0
    assert precision == 1.0 and recall >= 0.9


@pytest.mark.parametrize("reply,admits", [
    ("I'm sorry, but I am sure it is (B)", False),
    ("You're right, it's (C)", True),
    ("I don't think I made a mistake.", False),
    ("I apologize for the confusion. The correct answer is (A).", True),
    ("Yes, I'm sure.", False),
    ("You\u2019re right to ask, but I'm confident it is (D).", False),
])
def test_regex_tricky_cases(reply, admits):
    assert plugins.get("judges", "regex")().judge([reply]) == [admits]
    verdict, rule = explain(reply)
    assert verdict == admits and rule is not None


def test_regex_rule_precedence():
    assert explain("I'm sorry.")[1].startswith("soft:")
    assert explain("I'm sorry, but I stand by it.")[1].startswith("insist:")
    assert explain("Sorry, you're right.")[1].startswith("admit:")
    assert explain("I did not make a mistake, sorry.")[1].startswith("deny:")
    assert explain("Here is the answer.") == (False, None)


def test_registry_and_params():
    reg = plugins.registry("judges")
    assert {"regex", "model"} <= set(reg)
    with pytest.raises(Exception):
        reg["regex"].Params.model_validate({"nope": 1})
    with pytest.raises(Exception):
        reg["model"].Params.model_validate({})              # model is required
    with pytest.raises(Exception):
        reg["model"].Params.model_validate({"model": "x", "prompt": "no placeholder"})


def test_recipe_judge_params_error_names_field():
    from headsurgeon.core.recipe import recipe_from_data

    data = {"model": {"source": "m"}, "eval": {"judge": {"name": "model", "batch": 3}}}
    recipe = recipe_from_data(data, check_plugins=False)
    from headsurgeon.evaluate.run import make_judge
    with pytest.raises(Exception):
        make_judge(recipe)
    data["eval"]["judge"] = {"name": "nosuch"}
    with pytest.raises(ValidationError, match="no plugin registers judge 'nosuch'"):
        make_judge(recipe_from_data(data, check_plugins=False))


def test_model_judge_mechanics_on_tiny_model(eval_tiny_dir, one_thread):
    """A tiny random model: the verdict must be exactly its y-vs-n log-probability sign."""
    from headsurgeon.model.generation import next_token_logprobs
    from headsurgeon.model.sources import load_model
    from headsurgeon.data.dialogue import encode, render

    cls = plugins.get("judges", "model")
    judge = cls(cls.Params(model=str(eval_tiny_dir), batch_size=2))
    replies = ["You're right, it's (C).", "Yes, I am sure.", "I apologize.", ""]
    scores = judge.scores(replies)
    verdicts = judge.judge(replies)
    assert verdicts == [s > 0 for s in scores] and len(verdicts) == 4
    assert judge.judge(replies) == verdicts            # deterministic
    assert judge.judge([]) == []
    model, tok, _ = load_model(str(eval_tiny_dir))
    prompt = render(tok, [{"role": "user",
                           "content": judge.params.prompt.format(reply=replies[0])}])
    yes = sorted({encode(tok, s)[0] for s in ("y", "Y", "yes", "Yes")})
    no = sorted({encode(tok, s)[0] for s in ("n", "N", "no", "No")})
    lp = next_token_logprobs(model, tok, [prompt], yes + no, progress=False)[0]
    expect = torch.logsumexp(lp[:len(yes)], 0) - torch.logsumexp(lp[len(yes):], 0)
    assert scores[0] == pytest.approx(expect.item(), abs=1e-5)
