"""Dataset loaders: built-in sets, Hugging Face datasets, SycophancyEval, jsonl."""
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from headsurgeon.data import builtin_sets as B
from headsurgeon.core import plugins
from headsurgeon.data.datasets import load_source, load_stage
from headsurgeon.core.errors import ValidationError
from headsurgeon.data.questions import LETTERS, check_disjoint
from headsurgeon.core.recipe import PluginRef, load_recipe_text

FIXTURES = Path(__file__).parent / "fixtures"
SYC = FIXTURES / "are_you_sure_sample.jsonl"


def _bytes(qs) -> bytes:
    return b"".join(json.dumps(q.to_dict(), sort_keys=True).encode() + b"\n" for q in qs)


def _one_line(exc: ValidationError, *parts: str) -> str:
    msg = str(exc)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


# ---------------------------------------------------------------- builtin

def test_builtin_plugins_registered():
    reg = plugins.registry("datasets")
    assert {"jsonl", "hf", "sycophancy_eval", "builtin"} <= set(reg)


def test_builtin_same_seed_same_bytes_across_processes():
    here = _bytes(q for name in B.ALL_SETS for q in B.builtin_questions(name, seed=3))
    code = ("import sys, json; from headsurgeon import builtin_sets as B; "
            "sys.stdout.buffer.write(b''.join(json.dumps(q.to_dict(), sort_keys=True).encode()"
            " + b'\\n' for n in B.ALL_SETS for q in B.builtin_questions(n, seed=3)))")
    for hashseed in ("1", "2"):  # set/dict iteration order must not leak into the data
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             check=True).stdout
        assert hashlib.sha256(out).hexdigest() == hashlib.sha256(here).hexdigest()


def test_builtin_seed_moves_options_and_order_not_content():
    a = {q.id: q for q in B.builtin_questions("mixed", seed=0)}
    b = {q.id: q for q in B.builtin_questions("mixed", seed=1)}
    assert a.keys() == b.keys()
    assert all(a[i].question == b[i].question and a[i].answer_text == b[i].answer_text
               and sorted(a[i].choices) == sorted(b[i].choices) for i in a)
    moved = sum(a[i].choices != b[i].choices for i in a)
    assert moved > 0.5 * len(a)
    first0 = [q.id for q in B.builtin_questions("mixed", "train", n=20, seed=0)]
    first1 = [q.id for q in B.builtin_questions("mixed", "train", n=20, seed=1)]
    assert first0 != first1
    # n takes a prefix of the seeded order
    assert first0 == [q.id for q in B.builtin_questions("mixed", "train", seed=0)][:20]


@pytest.mark.parametrize("name", B.ALL_SETS)
def test_builtin_splits_disjoint_and_complete(name):
    full = B.builtin_questions(name)
    parts = {s: B.builtin_questions(name, s) for s in B.SPLITS}
    check_disjoint(parts)  # ids and texts
    assert sorted(q.id for p in parts.values() for q in p) == sorted(q.id for q in full)
    for s, qs in parts.items():
        assert all(q.source.endswith(f"/{s}") for q in qs)
        assert name in B.GROUPS or all(q.source == f"builtin-{name}/{s}" for q in qs)
    for seed in (0, 7):  # the split of an item never depends on the seed
        assert {q.id for q in B.builtin_questions(name, "eval", seed=seed)} == \
            {q.id for q in parts["eval"]}


def test_builtin_split_is_by_text_across_all_sets():
    every = [q for name in B.MC_SETS + B.OPEN_SETS for q in B.builtin_questions(name)]
    by_split = {s: [q for q in every if B.split_of(q.question) == s] for s in B.SPLITS}
    check_disjoint(by_split)
    texts = [q.question.strip().lower() for q in every]
    assert len(texts) == len(set(texts))  # no text repeats anywhere


def test_builtin_counts_and_ratios():
    counts = B.split_counts()
    assert counts["mixed"]["all"] >= 600
    assert counts["numeric"]["all"] >= 200
    assert counts["neutral_text"]["all"] >= 40
    assert counts["mixed"]["all"] == sum(counts[s]["all"] for s in B.MC_SETS)
    assert counts["facts"]["all"] == sum(counts[s]["all"] for s in B.GROUPS["facts"])
    for name in ("mixed", "numeric"):
        total = counts[name]["all"]
        for split, share in (("train", 0.5), ("locate", 0.2), ("eval", 0.3)):
            assert abs(counts[name][split] / total - share) < 0.07, (name, split)
    assert min(counts["mixed"][s] for s in B.SPLITS) >= 150


@pytest.mark.parametrize("name", B.MC_SETS)
def test_builtin_options_shuffled_and_letter_correct(name):
    truth = {it.id: it for it in B.universe(name)}
    qs = B.builtin_questions(name, seed=5)
    for q in qs:
        it = truth[q.id]
        assert len(q.choices) == 4 and len(set(q.choices)) == 4
        assert q.answer in "ABCD" and q.choices[q.answer_index] == it.answer
        assert set(q.choices) == {it.answer, *it.distractors}
    letters = Counter(q.answer for q in qs)
    assert set(letters) == set("ABCD")
    assert max(letters.values()) - min(letters.values()) <= 1  # balanced by construction


def test_builtin_answers_are_right():
    """Recompute every generated answer from the question text."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b,
           "plus": lambda a, b: a + b, "minus": lambda a, b: a - b,
           "times": lambda a, b: a * b}
    arith = B.builtin_questions("arithmetic") + B.builtin_questions("numeric")
    for q in arith:
        a, op, b = re.match(r"What is (\d+) (\S+) (\d+)\?", q.question).groups()
        assert q.answer_text == str(ops[op](int(a), int(b))), q.question
    assert not any(q.is_mc for q in B.builtin_questions("numeric"))
    for q in B.builtin_questions("comparisons"):
        fam = q.extras["family"]
        listed = re.search(r": (.*)\?$", q.question).group(1).replace(" or ", ", ").split(", ")
        assert sorted(listed) == sorted(q.choices)
        if fam.startswith(("int_", "decimal_")):
            pick = max if "largest" in fam else min
            assert float(q.answer_text) == pick(map(float, listed))
        elif fam == "alphabet":
            assert q.answer_text == min(listed)
        elif fam == "month_order":
            assert q.answer_text == min(listed, key=B.F.MONTHS.index)
    cap = {q.question: q.answer_text for q in B.builtin_questions("capitals")}
    assert cap["What is the capital of France?"] == "Paris"
    assert cap["What is the capital of Australia?"] == "Canberra"
    day = {q.question: q.answer_text for q in B.builtin_questions("everyday")}
    assert day["Which day comes right after Sunday?"] == "Monday"
    assert day["Which month comes right before January?"] == "December"


def test_builtin_neutral_text_representation():
    qs = B.builtin_questions("neutral_text")
    assert all(q.choices == () and q.answer == "-" and q.extras == {"kind": "text"}
               and len(q.question.split()) >= 15 for q in qs)
    assert len({q.question for q in qs}) == len(qs)


def test_builtin_n_too_large_and_bad_names():
    with pytest.raises(ValidationError) as e:
        B.builtin_questions("science", "eval", n=10_000)
    _one_line(e.value, "science", "n=10000")
    with pytest.raises(ValidationError):
        B.builtin_questions("nope")
    with pytest.raises(ValidationError):
        B.builtin_questions("science", "dev")


def test_builtin_through_a_recipe():
    recipe = load_recipe_text(
        "model: {source: x}\n"
        "data:\n"
        "  train: {name: builtin, set: mixed, split: train, n: 200}\n"
        "  eval: [{name: builtin, set: facts, split: eval}, {name: builtin, set: numeric,"
        " split: eval}]\n"
        "  neutral_text: {name: builtin, set: neutral_text}\n")
    train = load_stage(recipe.data.train, "train", seed=0, mc_only=True)
    ev = load_stage(recipe.data.eval, "eval", seed=0)
    assert len(train) == 200 and len(ev) == B.split_counts()["facts"]["eval"] + \
        B.split_counts()["numeric"]["eval"]
    check_disjoint({"train": train, "eval": ev})
    with pytest.raises(ValidationError) as e:
        load_recipe_text("model: {source: x}\ndata:\n  train: {name: builtin, set: nope}\n")
    _one_line(e.value, ":3:", "data.train.0.set")


# ---------------------------------------------------------------- Hugging Face datasets

@pytest.fixture
def hf(tmp_path, monkeypatch):
    """The optional ``datasets`` package (``pip install datasets``), caching under tmp."""
    datasets = pytest.importorskip("datasets", reason="optional: pip install datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    datasets.disable_progress_bars()
    yield datasets
    datasets.enable_progress_bars()


def _hf(**params):
    return load_source(PluginRef(name="hf", **params))


def test_hf_arc_style_save_to_disk(hf, tmp_path):
    dd = hf.DatasetDict({
        "train": hf.Dataset.from_dict({
            "id": ["a1", "a2"], "question": ["Q one?", "Q two?"],
            "choices": [{"text": ["x", "y", "z"], "label": ["A", "B", "C"]},
                        {"text": ["p", "q", "r", "s"], "label": ["1", "2", "3", "4"]}],
            "answerKey": ["C", "2"]}),
        "test": hf.Dataset.from_dict({
            "id": ["t1"], "question": ["T?"],
            "choices": [{"text": ["u", "v"], "label": ["A", "B"]}], "answerKey": ["A"]})})
    dd.save_to_disk(str(tmp_path / "arc"))
    qs = _hf(path=str(tmp_path / "arc"), split="train")
    assert [(q.id, q.choices, q.answer) for q in qs] == [
        ("a1", ("x", "y", "z"), "C"), ("a2", ("p", "q", "r", "s"), "B")]
    assert _hf(path=str(tmp_path / "arc"), split="test")[0].answer_text == "u"
    with pytest.raises(ValidationError) as e:
        _hf(path=str(tmp_path / "arc"))
    _one_line(e.value, "arc", "split", "train, test")
    with pytest.raises(ValidationError) as e:
        _hf(path=str(tmp_path / "arc"), split="validation")
    _one_line(e.value, "no split 'validation'")


def test_hf_mmlu_and_hellaswag_styles(hf, tmp_path):
    hf.Dataset.from_dict({"question": ["M1?", "M2?"], "subject": ["bio", "law"],
                          "choices": [["a", "b", "c", "d"], ["e", "f", "g", "h"]],
                          "answer": [3, 0]}).save_to_disk(str(tmp_path / "mmlu"))
    qs = _hf(path=str(tmp_path / "mmlu"), limit=1)
    assert len(qs) == 1 and qs[0].answer == "D" and qs[0].extras == {"subject": "bio"}
    assert qs[0].id == "mmlu-0"
    hf.Dataset.from_dict({"ind": [7], "ctx": ["A man walks"], "endings": [["a", "b", "c", "d"]],
                          "label": ["2"]}).save_to_disk(str(tmp_path / "hs"))
    q = _hf(path=str(tmp_path / "hs"))[0]
    assert (q.id, q.question, q.answer) == ("7", "A man walks", "C")
    hf.Dataset.from_dict({"question": ["M?"], "choices": [["a", "b"]], "answer": [5]}
                         ).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValidationError) as e:
        _hf(path=str(tmp_path / "bad"))
    _one_line(e.value, "bad:1:", "answer", "index 5")


def test_hf_plain_json_file_and_field_mapping(hf, tmp_path):
    f = tmp_path / "qa.jsonl"
    rows = [{"question": "What is 2+2?", "answer": "Two and two make four.\n#### 4"},
            {"question": "Capital of France?",
             "answer": {"value": "Paris", "aliases": ["Paris", "Paris, France"]}},
            {"question": "How many legs has a spider?", "answer": 8}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    qs = _hf(path=str(f))
    assert [(q.choices, q.answer) for q in qs] == [((), "4"), ((), "Paris"), ((), "8")]
    assert qs[0].extras["solution"].endswith("#### 4")
    assert qs[1].extras["aliases"] == ["Paris", "Paris, France"]
    g = tmp_path / "custom.jsonl"
    g.write_text(json.dumps({"key": "k1", "prompt_text": "Pick one", "opts": ["x", "y"],
                             "gold": "y"}) + "\n")
    q = _hf(path=str(g), fields={"question": "prompt_text", "choices": "opts",
                                 "answer": "gold", "id": "key"})[0]
    assert (q.id, q.question, q.choices, q.answer) == ("k1", "Pick one", ("x", "y"), "B")
    with pytest.raises(ValidationError) as e:
        _hf(path=str(g), fields={"question": "missing_col"})
    _one_line(e.value, "custom.jsonl", "missing_col")


def test_hf_offline_only(hf, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hf.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    with pytest.raises(ValidationError) as e:
        _hf(path=str(tmp_path / "nothing.jsonl"))
    _one_line(e.value, "nothing.jsonl", "no such file")
    with pytest.raises(ValidationError) as e:  # offline even where the user's env is not
        _hf(path="someone/not-in-the-cache-xyz")
    _one_line(e.value, "someone/not-in-the-cache-xyz", "OfflineModeIsEnabled")
    assert hf.config.HF_HUB_OFFLINE is False and hc.HF_HUB_OFFLINE is False  # restored


def test_hf_missing_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValidationError) as e:
        _hf(path=str(tmp_path / "x.jsonl"))
    _one_line(e.value, "pip install 'headsurgeon[hf]'")


# ---------------------------------------------------------------- SycophancyEval

def _syc(**params):
    return load_source(PluginRef(name="sycophancy_eval", **params))


def test_sycophancy_eval_fixture():
    qs = _syc(path=str(SYC))
    assert len(qs) == 6  # 7 lines, one repeated item
    by = {q.extras["dataset"]: q for q in qs}
    mmlu = by["mmlu_mc_cot"]
    assert mmlu.choices == ("Oxygen", "Nitrogen", "Carbon dioxide", "Argon")
    assert mmlu.answer == "B" and mmlu.answer_text == "Nitrogen"
    assert mmlu.id.startswith("syc-mmlu_mc_cot-") and mmlu.source == "sycophancy_eval/mmlu_mc_cot"
    assert by["truthful_qa_mc"].choices == ("4", "5", "6", "8")  # "(A)4" without a space
    assert len(by["aqua_mc"].choices) == 5 and by["aqua_mc"].answer_text == "40 km/h"
    trivia = by["trivia_qa"]
    assert not trivia.is_mc and trivia.answer == "Danube"
    assert trivia.extras["aliases"] == ["Danube", "The Danube", "River Danube"]
    assert by["truthful_qa"].extras["incorrect_answer"].startswith("It stays")
    assert by["math"].answer == "12"
    assert [q.id for q in _syc(path=str(SYC))] == [q.id for q in qs]  # stable ids
    assert {q.is_mc for q in _syc(path=str(SYC), kind="mc")} == {True}
    assert len(_syc(path=str(SYC), kind="open")) == 3
    assert [q.extras["dataset"] for q in _syc(path=str(SYC), datasets=["math"])] == ["math"]
    assert len(_syc(path=str(SYC), limit=2)) == 2


def test_sycophancy_eval_parse_options():
    from headsurgeon_plugins.datasets.sycophancy_eval import parse_options

    assert parse_options("(A) x\n(B) y (with a bracket)") == ["x", "y (with a bracket)"]
    assert parse_options("(A)1\\n(B)2\\n(C)3") == ["1", "2", "3"]
    assert parse_options("(A) red (B) blue") == ["red", "blue"]
    assert parse_options("(B) out of order\n(A) no") == []


@pytest.mark.parametrize("record, field", [
    ([1, 2], ""),
    ({"prompt": []}, "base"),
    ({"base": {"dataset": "d", "question": "Q?", "answers": "no options here",
               "correct_letter": "A"}}, "base.answers"),
    ({"base": {"dataset": "d", "question": "Q?", "answers": "(A) x\n(B) y",
               "correct_letter": "C"}}, "base.correct_letter"),
    ({"base": {"dataset": "d", "question": "Q?"}}, "base.correct_answer"),
    ({"base": {"dataset": "d", "question": ""}}, "base.question"),
])
def test_sycophancy_eval_bad_records(tmp_path, record, field):
    good = json.loads(SYC.read_text().splitlines()[0])
    f = tmp_path / "ays.jsonl"
    f.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValidationError) as e:
        _syc(path=str(f))
    _one_line(e.value, f"{f}:2: {field + ': ' if field else ''}")


# ---------------------------------------------------------------- jsonl

GOOD = {"id": "q1", "question": "Q?", "choices": ["a", "b"], "answer": "A"}


@pytest.mark.parametrize("content, line, words", [
    (json.dumps(GOOD) + "\n{not json\n", 2, "invalid JSON"),
    (json.dumps({"id": "q", "choices": [], "answer": "1"}) + "\n", 1, "question"),
    (json.dumps({**GOOD, "answer": "C"}) + "\n", 1, "'C' is not one of the option letters"),
    ("", None, "contains no questions"),
    (json.dumps(GOOD).encode() + b"\n" + b'{"id": "\xff"}\n', 2, "not UTF-8"),
    (json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "big", "question": "x" * (1 << 20)})
     + "\n", 2, "longer than"),
    (json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n", 2, "duplicate id 'q1'"),
])
def test_jsonl_bad_inputs(tmp_path, content, line, words):
    f = tmp_path / "bad.jsonl"
    if isinstance(content, str):
        f.write_text(content)
    else:
        f.write_bytes(content)
    with pytest.raises(ValidationError) as e:
        load_source(PluginRef(name="jsonl", path=str(f)))
    where = f"{f}:{line}: " if line else f"{f}: "
    _one_line(e.value, where, words)
    assert e.value.exit_code == 2


def test_jsonl_reads_shared_data(shared_data):
    arc = load_source(PluginRef(name="jsonl", path=str(shared_data / "arc" /
                                                        "arc_easy_validation.jsonl")))
    assert len(arc) == 570 and all(q.is_mc and q.answer in LETTERS[: len(q.choices)]
                                   for q in arc)
    assert all(q.extras["answer_text"] == q.answer_text for q in arc)
    gsm = load_source(PluginRef(name="jsonl", path="$HEADSURGEON_SHARED_DATA/gsm8k/"
                                                  "gsm8k_test.jsonl", limit=25))
    assert len(gsm) == 25 and not any(q.is_mc for q in gsm)
    assert all(re.fullmatch(r"-?[\d.]+", q.answer) for q in gsm)
