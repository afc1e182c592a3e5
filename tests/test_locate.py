"""The locate stage end to end on a tiny model: heads.json contents and determinism,
every locator/metric, the nnsight backend, knockout/auto-K logic, and bad input."""
from __future__ import annotations

import json

import pytest
import torch

from headsurgeon.model.heads_file import load_heads_file
from headsurgeon.core.errors import ValidationError
from headsurgeon.locate.knockout import decided, is_apology, knockout_sets
from headsurgeon.locate.knockout_stats import versus_random
from headsurgeon.locate.run import locate
from headsurgeon.core.recipe import load_recipe

QUESTIONS = [
    {"id": f"q{i}", "question": q, "choices": c, "answer": a}
    for i, (q, c, a) in enumerate([
        ("Red?", ["red", "blue"], "A"), ("Two?", ["1", "2", "3"], "B"),
        ("Sky?", ["green", "grey", "blue"], "C"), ("Cat?", ["dog", "cat"], "B"),
        ("Sun?", ["hot", "cold"], "A")])]
TEMPLATES = """templates:
  question: "{question} {options}"
  option: "{letter}){text}"
  first_answer: "({letter})"
  challenge: "No?"
  counterfactual: "Yes."
  final_prefix: "("
"""


def write_recipe(tmp_path, model_dir, locate_yaml: str, questions=QUESTIONS, name="r"):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions))
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel:\n  source: {model_dir}\n"
                    f"data:\n  locate:\n    - {{name: jsonl, path: {data}}}\n"
                    f"{TEMPLATES}locate:\n  n_probes: 4\n  batch_size: 2\n  k_max: 4\n"
                    f"  knockout_random_sets: 2\n" + locate_yaml)
    return load_recipe(path)


def run(recipe, tmp_path, sub="out"):
    out = tmp_path / sub / "heads.json"
    return locate(recipe, out, progress=False), out


def test_heads_json_contents_and_byte_determinism(tiny_dirs, tmp_path):
    recipe = write_recipe(tmp_path, tiny_dirs["llama"], "  method: attribution\n"
                          "  metric: letter_gap\n  confirm_top: 3\n  positions: 2\n")
    path, _ = run(recipe, tmp_path, "a")
    doc = json.loads(path.read_text())
    assert doc["format"] == "headsurgeon.heads/1"
    assert load_heads_file(path) == [tuple(h) for h in doc["selected"]]
    assert len(doc["selected"]) == doc["k"] and doc["k_reason"]
    assert sorted(map(tuple, doc["ranking"])) == [(l, h) for l in range(3) for h in range(4)]
    assert doc["ranking"][:doc["k"]] == doc["selected"]
    attr = doc["scores"]["attribution/letter_gap"]
    exact = doc["scores"]["activation_patching/letter_gap"]
    assert len(attr) == 3 and len(attr[0]) == 4
    assert sum(v is not None for row in exact for v in row) == 3  # the confirmed shortlist
    confirmed = [h for h in doc["ranking"][:3]]
    assert sorted(exact[l][h] for l, h in confirmed) == [exact[l][h] for l, h in confirmed]
    ko = doc["knockout"]
    assert ko["k"] == [1, 2, 3, 4] and len(ko["random"]["sets"]) == 4
    assert all(len(s) == 2 for s in ko["random"]["sets"])
    prov = doc["provenance"]
    assert set(prov["versions"]) == {"headsurgeon", "torch", "transformers", "nnsight"}
    assert doc["model"]["weights_sha256"].startswith("sha256:")
    assert doc["probes"]["data_sha256"].startswith("sha256:") and doc["probes"]["n"] == 4
    assert doc["attention_to_challenge"]["available"]
    for name in doc["files"].values():
        assert (path.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again, _ = run(recipe, tmp_path, "b")
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("method,metric", [
    ("path_patching", "{name: first_token_gap}"),
    ("activation_patching", "{name: ratio, sycophantic: N, steadfast: Y}"),
    ("{name: attribution, approximates: path_patching}", "letter_gap"),
    ("activation_patching", "{name: letter_gap, variant: final_turn, reply_tokens: 3}"),
])
def test_each_locator_and_metric(tiny_dirs, tmp_path, method, metric):
    recipe = write_recipe(tmp_path, tiny_dirs["llama"],
                          f"  method: {method}\n  metric: {metric}\n  top_k: 2\n")
    path, _ = run(recipe, tmp_path)
    doc = json.loads(path.read_text())
    assert doc["k"] == 2 and doc["k_reason"] == "locate.top_k = 2"
    if "first_token_gap" in metric:  # auto-picked tokens are recorded
        toks = doc["metric"]["tokens"]
        assert toks["sycophantic"]["auto"] and toks["steadfast"]["auto"]
        assert toks["sycophantic"]["id"] != toks["steadfast"]["id"]
    if "final_turn" in metric:
        assert doc["metric"]["variant"] == "final_turn"
    if "ratio" in metric:
        assert doc["metric"]["tokens"]["sycophantic"]["token"] == "N"
        assert doc["metric"]["link"] == "sigmoid"


def test_nnsight_backend_gives_the_same_scores(tiny_dirs, tmp_path):
    loc = "  method: path_patching\n  metric: letter_gap\n"
    a = json.loads(run(write_recipe(tmp_path, tiny_dirs["llama"], loc, name="t"),
                       tmp_path, "t")[0].read_text())
    b = json.loads(run(write_recipe(tmp_path, tiny_dirs["llama"], loc + "  backend: nnsight\n",
                                    name="n"), tmp_path, "n")[0].read_text())
    assert b["model"]["backend"] == "nnsight-local"
    sa = torch.tensor(a["scores"]["path_patching/letter_gap"])
    sb = torch.tensor(b["scores"]["path_patching/letter_gap"])
    assert torch.allclose(sa, sb, atol=1e-4)
    assert torch.allclose(torch.tensor(a["knockout"]["metric"]),
                          torch.tensor(b["knockout"]["metric"]), atol=1e-4)


# -- bad input: one-line ValidationError, nothing written ---------------------------------
def _assert_fails(recipe, tmp_path, *needles):
    out = tmp_path / "bad" / "heads.json"
    with pytest.raises(ValidationError) as exc:
        locate(recipe, out, progress=False)
    msg = str(exc.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    assert not out.parent.exists() or not any(out.parent.iterdir())
    return msg


def test_question_set_without_choices(tiny_dirs, tmp_path):
    open_ended = [{"id": "a", "question": "2+2?", "choices": [], "answer": "4"}]
    recipe = write_recipe(tmp_path, tiny_dirs["llama"], "", questions=open_ended)
    _assert_fails(recipe, tmp_path, "data.locate", "multiple-choice", "r.yaml:")


def test_metric_token_that_is_not_one_token(tiny_dirs, tmp_path):
    recipe = write_recipe(tmp_path, tiny_dirs["llama"],
                          "  metric: {name: first_token_gap, sycophantic: Sorry}\n")
    _assert_fails(recipe, tmp_path, "locate.metric.sycophantic", "'Sorry' is 5 tokens",
                  "r.yaml:")


def test_k_larger_than_head_count(tiny_dirs, tmp_path):
    recipe = write_recipe(tmp_path, tiny_dirs["llama"], "  top_k: 13\n")
    _assert_fails(recipe, tmp_path, "locate.top_k", "13 is more than the model's 12 heads")


def test_empty_data_file(tiny_dirs, tmp_path):
    recipe = write_recipe(tmp_path, tiny_dirs["llama"], "", questions=[])
    _assert_fails(recipe, tmp_path, "r.jsonl", "contains no questions")


def test_cli_exit_code_2_and_one_line(tiny_dirs, tmp_path):
    from click.testing import CliRunner

    from headsurgeon.cli import cli

    recipe = write_recipe(tmp_path, tiny_dirs["llama"], "  top_k: 99\n")
    res = CliRunner().invoke(cli, ["locate", str(recipe.path), "--out",
                                   str(tmp_path / "c" / "heads.json")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "locate.top_k" in lines[-1]
    assert not (tmp_path / "c").exists()


# -- knockout / auto-K logic --------------------------------------------------------------
def test_versus_random_uses_the_median_random_effect():
    ko = {"effect": [0.2, 0.6], "random": {"median_effect": [0.1, 0.2]}}
    assert versus_random(ko, 1) == pytest.approx(2.0)
    assert versus_random(ko, 2) == pytest.approx(3.0)
    assert versus_random({"effect": [0.2], "random": {"median_effect": [-0.1]}}, 1) is None
    assert versus_random({"effect": [0.2], "random": None}, 1) is None


def test_knockout_sets_are_seeded_and_sized():
    heads = [(l, h) for l in range(4) for h in range(3)]
    ranking = list(reversed(heads))
    top, rand = knockout_sets(ranking, heads, 5, 3, seed=7)
    assert top[2] == sorted(ranking[:3])
    assert [len(s) for s in rand[4]] == [5, 5, 5]
    assert all(len(set(s)) == len(s) for per_k in rand for s in per_k)
    assert knockout_sets(ranking, heads, 5, 3, seed=7) == (top, rand)
    assert knockout_sets(ranking, heads, 5, 3, seed=8)[1] != rand


def test_apology_detection_and_early_decision():
    for t in ("I'm sorry for any confusion", " i apologize", "You\u2019re right, it is",
              "Apologies, the answer"):
        assert is_apology(t) and decided(t)
    for t in ("The answer is (B).", "Yes, I am sure.", "I'm glad"):
        assert not is_apology(t) and decided(t)
    for t in ("I", "I'm", "I'm sor", "You're", "", "I\ufffd"):
        assert not decided(t)


# -- plugin contracts ------------------------------------------------------------------------
def test_every_locator_and_metric_plugin_honours_the_contract():
    import pydantic

    from headsurgeon.core import plugins

    locs, mets = plugins.registry("locators"), plugins.registry("metrics")
    assert {"path_patching", "activation_patching", "attribution"} <= set(locs)
    assert {"first_token_gap", "ratio", "letter_gap"} <= set(mets)
    for kind, reg in (("locators", locs), ("metrics", mets)):
        for name, cls in reg.items():
            assert cls.name == name
            with pytest.raises(pydantic.ValidationError):
                cls.Params.model_validate({"no_such_param": 1})
            obj = cls(cls.Params())
            assert callable(obj.score if kind == "locators" else obj.compute)
    for cls in mets.values():
        m = cls(cls.Params())
        assert m.link in ("identity", "sigmoid")
        logits = torch.randn(2, 10)
        ids, w = torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1.0, -1.0], [1.0, -1.0]])
        assert m.compute(logits, ids, w).shape == (2,)


def test_a_short_confirmation_is_warned_about_but_no_confirmation_is_not():
    from types import SimpleNamespace

    from headsurgeon.locate.run import _warnings

    def result(confirmed):
        return SimpleNamespace(notes={"screen": "attribution", "exact": False,
                                      "confirmed": confirmed})

    assert _warnings(None, result(0), 8) == []          # locate.confirm_top: 0
    assert _warnings(None, result(24), 8) == []         # 3 x K confirmed
    (line,) = _warnings(None, result(5), 8)
    assert line.startswith("only 5 heads were confirmed") and "3 x K = 24" in line
