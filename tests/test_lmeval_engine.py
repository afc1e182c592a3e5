"""General ability through lm-evaluation-harness (``eval.general_engine: lmeval``): on tiny
random models and a 20-item local task, lm-eval's acc / acc_norm, their standard errors and
the paired difference to the base equal a direct computation with plain forwards."""
import json
import math
import shutil
import statistics

import pytest
import torch
import yaml
from click.testing import CliRunner

from headsurgeon.data.questions import LETTERS, question_from_dict

from evalkit import eval_tiny_dir, one_thread, tiny  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")

# 20 items in the shared data schema, 2 to 4 options. On a random model a long option has
# a far lower summed log-likelihood (acc and acc_norm disagree); among options of one
# length the model's own preferences decide (an edit moves them). Some are not ASCII.
OPTIONS = [["4", "four apples in a basket", "café"], ["red", "tan", "sky", "ink"],
           ["Paris", "Lyon", "a small village near the coast", "naïve"], ["yes", "not"],
           ["cat", "dog", "owl"], ["Rome", "Oslo", "Bern", "Riga"]]


def _rows() -> list[dict]:
    rows = []
    for i in range(20):
        opts = OPTIONS[i % len(OPTIONS)]
        opts = opts[i % len(opts):] + opts[:i % len(opts)]  # rotate: gold moves around
        rows.append({"id": f"item-{i}", "question": f"Question number {i}: which one fits?",
                     "choices": opts, "answer": LETTERS[(i * 7) % len(opts)],
                     "source": "toy/test"})
    return rows


@pytest.fixture(scope="module")
def items():
    return [question_from_dict(r, file="toy.jsonl") for r in _rows()]


def direct_scores(model, tok, q) -> list[float]:
    """Summed log-probability of each option (" " + text) after "Question: ...\\nAnswer:",
    one plain forward per option, the continuation's tokens read off the whole text."""
    ctx = f"Question: {q.question}\nAnswer:"
    n_ctx = len(tok(ctx)["input_ids"])
    out = []
    for option in q.choices:
        ids = tok(ctx + " " + option)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        out.append(sum(logp[p - 1, ids[p]].item() for p in range(n_ctx, len(ids))))
    return out


def direct(model, tok, items) -> dict:
    """Per item: the chosen letter by summed log-likelihood and per character (lm-eval's
    acc_norm divides by the option's length in characters), and whether each is right."""
    out = {"choice": [], "choice_norm": [], "acc": [], "acc_norm": []}
    for q in items:
        lls = direct_scores(model, tok, q)
        norm = [ll / len(c) for ll, c in zip(lls, q.choices)]
        pick, pick_norm = (q.letters[max(range(len(x)), key=x.__getitem__)] for x in (lls, norm))
        out["choice"].append(pick)
        out["choice_norm"].append(pick_norm)
        out["acc"].append(int(pick == q.answer))
        out["acc_norm"].append(int(pick_norm == q.answer))
    return out


def stderr(xs) -> float:
    return statistics.stdev(xs) / math.sqrt(len(xs))


def _edited_copy(src, dst):
    from transformers import AutoModelForCausalLM

    shutil.copytree(src, dst)
    m = AutoModelForCausalLM.from_pretrained(dst)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in m.model.layers:
            for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight):
                w.add_(w.abs().mean() * torch.randn(w.shape, generator=gen))
    m.save_pretrained(dst)
    return dst


def test_engine_equals_a_direct_computation(tiny, items, tmp_path):
    from headsurgeon.evaluate.lmeval_engine import general_lmeval

    model, tok = tiny
    res = general_lmeval(model, tok, {"toy/test": items}, tmp_path / "lmeval", batch_size=3)
    want = direct(model, tok, items)
    got = res["sets"]["toy/test"]
    assert got["per_item"]["ids"] == [q.id for q in items]
    for key in ("choice", "choice_norm", "acc", "acc_norm"):
        assert got["per_item"][key] == want[key], key
    assert want["choice"] != want["choice_norm"]  # the items tell the two readings apart
    for m in ("acc", "acc_norm"):
        assert got[m] == pytest.approx(sum(want[m]) / 20, abs=1e-12)
        assert got[f"{m}_stderr"] == pytest.approx(stderr(want[m]), rel=1e-9)
        assert res[m] == got[m] and res[f"{m}_stderr"] == got[f"{m}_stderr"]  # one set
    assert got["n"] == res["n"] == 20 and res["engine"].startswith("lm-eval 0.4.")
    # the task is local files: a jsonl in the shared schema's terms and a json-dataset YAML
    task = yaml.safe_load((tmp_path / "lmeval" / "headsurgeon_general_0.yaml").read_text())
    assert task["dataset_path"] == "json" and task["output_type"] == "multiple_choice"
    data = task["dataset_kwargs"]["data_files"]["test"]
    rows = [json.loads(x) for x in open(data, encoding="utf-8")]
    assert [r["gold"] for r in rows] == [q.answer_index for q in items]


def _recipe(tmp_path, model_dir, general, engine="lmeval"):
    from headsurgeon.core.recipe import load_recipe

    data = {"name": "t", "model": {"source": str(model_dir)},
            "data": {"eval": {"name": "jsonl", "path": str(general)},
                     "general": [{"name": "jsonl", "path": str(general)}]},
            "eval": {"n_items": 2, "max_new_tokens": 4, "batch_size": 4, "n_general": 20,
                     "kl_passages": 0, "modes": ["own"], "general_engine": engine},
            "output_dir": str(tmp_path / "run")}
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(data))
    return load_recipe(path)


def test_evaluate_reports_lmeval_and_the_paired_difference(eval_tiny_dir, items, tmp_path):
    from headsurgeon.evaluate.run import evaluate
    from headsurgeon.model.sources import load_model
    from headsurgeon.report.lmeval_section import lmeval_rows

    general = tmp_path / "toy.jsonl"
    general.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    recipe = _recipe(tmp_path, eval_tiny_dir, general)
    spt_dir = _edited_copy(eval_tiny_dir, recipe.run_dir() / "model")
    doc = json.loads(evaluate(recipe, progress=False).read_text())
    assert doc["config"]["general_engine"] == "lmeval"
    base, spt = (doc["models"][n] for n in ("base", "spt"))
    assert base["general"]["mc_accuracy"] is not None  # headsurgeon's own measure stays
    order = base["general_lmeval"]["sets"]["toy/test"]["per_item"]["ids"]
    by_id = {q.id: q for q in items}
    shown = [by_id[i] for i in order]  # the run's seeded sample order
    scores = {}
    for name, src in (("base", eval_tiny_dir), ("spt", spt_dir)):
        model, tok, _ = load_model(str(src))
        scores[name] = direct(model, tok, shown)
        lm = doc["models"][name]["general_lmeval"]
        for m in ("acc", "acc_norm"):
            assert lm["sets"]["toy/test"]["per_item"][m] == scores[name][m], (name, m)
            assert lm[m] == pytest.approx(sum(scores[name][m]) / 20, abs=1e-12)
            assert lm[f"{m}_stderr"] == pytest.approx(stderr(scores[name][m]), rel=1e-9)
    assert "vs_base" not in base["general_lmeval"]
    for m in ("acc", "acc_norm"):
        diffs = [e - b for e, b in zip(scores["spt"][m], scores["base"][m])]
        pair = spt["general_lmeval"]["vs_base"][m]
        assert pair["n"] == 20 and pair["diff"] == pytest.approx(sum(diffs) / 20, abs=1e-12)
        assert pair["stderr"] == pytest.approx(stderr(diffs), rel=1e-9)
    assert scores["spt"]["acc"] != scores["base"]["acc"]  # the edit moved answers
    rows = {r[0]: r for r in lmeval_rows(doc["models"])}
    d = spt["general_lmeval"]["vs_base"]["acc"]
    assert rows["spt"][4] == f"{100 * d['diff']:.1f} ± {100 * d['stderr']:.1f}"
    assert rows["base"][4] == "–"
    from headsurgeon.report.report import write_report

    text = write_report(recipe, recipe.run_dir()).read_text()
    assert "## General ability (lm-evaluation-harness)" in text
    assert "| spt | " + " | ".join(rows["spt"][1:]) + " |" in text


def _validate(path):
    from headsurgeon.cli import cli

    return CliRunner().invoke(cli, ["validate", str(path)], prog_name="headsurgeon")


def test_validate_refuses_lmeval_when_lm_eval_is_missing(tmp_path, monkeypatch):
    import importlib.util

    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodel: {source: tiny:llama}\neval:\n  n_general: 5\n"
                    "  general_engine: lmeval\n")
    monkeypatch.chdir(tmp_path)
    assert _validate(path).exit_code == 0  # installed: fine
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lm_eval" else real(name, *a))
    res = _validate(path)
    assert res.exit_code == 2, res.output
    assert res.stderr == (
        f"error: {path}:5: eval.general_engine: general engine 'lmeval' needs the Python "
        "package 'lm_eval', which is not installed; install it with: "
        "pip install 'headsurgeon[lmeval]'\n")
    path.write_text("name: x\nmodel: {source: tiny:llama}\n")  # the default needs nothing
    assert _validate(path).exit_code == 0
    from headsurgeon.core.recipe import load_recipe

    assert load_recipe(path).eval.general_engine == "headsurgeon"
