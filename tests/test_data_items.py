"""One validation point for question items: the answer is exactly one option letter, options
are non-empty and distinct, and an id is unique across all sources of one recipe role."""
from __future__ import annotations

import json

import pytest

from headsurgeon.core.errors import ValidationError
from headsurgeon.core.recipe import PluginRef
from headsurgeon.data.datasets import load_source, load_stage
from headsurgeon.data.questions import data_hash, question_from_dict, read_jsonl


def line(qid, question, choices, answer="A"):
    return json.dumps({"id": qid, "question": question, "choices": choices,
                       "answer": answer}) + "\n"


def ref(path, **params):
    return PluginRef.model_validate({"name": "jsonl", "path": str(path), **params})


def test_an_id_in_two_sources_of_a_stage_is_an_error_naming_both(tmp_path, monkeypatch):
    """The stages' loader (not only `validate`): the second file's q2 used to vanish."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text(line("q1", "2 plus 2?", ["4", "5"])
                                      + line("q2", "3 plus 3?", ["6", "7"]))
    (tmp_path / "b.jsonl").write_text(line("q3", "Capital of Peru?", ["Lima", "Quito"])
                                      + line("q2", "Capital of Chile?", ["Santiago", "Lima"]))
    with pytest.raises(ValidationError) as exc:
        load_stage([ref("a.jsonl"), ref("b.jsonl")], "train")
    assert str(exc.value) == ("b.jsonl:2: id: duplicate id 'q2' (also a.jsonl:2); ids must "
                              "be unique across the sources of data.train")
    assert exc.value.exit_code == 2
    (tmp_path / "b.jsonl").write_text(line("q3", "Capital of Peru?", ["Lima", "Quito"]))
    got = load_stage([ref("a.jsonl"), ref("b.jsonl")], "train")
    assert sorted(q.id for q in got) == ["q1", "q2", "q3"]


@pytest.mark.parametrize("answer", ["AB", "BC", "ABC", "A ", ""])
def test_answer_must_be_exactly_one_letter(answer):
    with pytest.raises(ValidationError, match="answer: "):
        question_from_dict({"id": "a", "question": "Q?", "choices": ["x", "y", "z"],
                            "answer": answer}, file="f.jsonl", line=3)
    q = question_from_dict({"id": "a", "question": "Q?", "choices": ["x", "y", "z"],
                            "answer": "C"}, file="f.jsonl", line=3)
    assert (q.answer_index, q.answer_text) == (2, "z")


@pytest.mark.parametrize("choices, problem", [
    (["x", ""], "option B is empty"),
    (["\t", "x"], "option A is empty"),
    (["Paris", "Lyon", "Paris"], "options A and C are the same text ('Paris')"),
    (["New\u00a0York", "New York"], "options A and B are the same text ('New York')"),
])
def test_options_must_be_non_empty_and_distinct(choices, problem):
    with pytest.raises(ValidationError) as exc:
        question_from_dict({"id": "a", "question": "Q?", "choices": choices, "answer": "A"},
                           file="f.jsonl", line=7)
    assert str(exc.value).startswith(f"f.jsonl:7: choices: {problem}")


def test_case_tells_options_apart():
    """Genotypes: "BbEe" and "BBEe" are different answers (MMLU high_school_biology)."""
    q = question_from_dict({"id": "g", "question": "Which?", "answer": "B",
                            "choices": ["BbEe", "BBEe", "Bbee", "BBee"]}, file="f", line=1)
    assert q.answer_text == "BBEe"


def test_duplicate_options_kept_only_when_the_source_says_so(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(line("a", "Q?", ["x", "y"]) + line("b", "R?", ["same", "same", "z"], "C"))
    with pytest.raises(ValidationError, match=r"q\.jsonl:2: choices: options A and B "):
        load_source(ref(path))
    got = load_source(ref(path, allow_duplicate_options=True))
    assert [q.choices for q in got] == [("x", "y"), ("same", "same", "z")]
    with pytest.raises(ValidationError, match="option A is empty"):  # never allowed
        question_from_dict({"id": "c", "question": "Q?", "choices": ["", "x"],
                            "answer": "B"}, file="f", allow_duplicate_options=True)


def test_where_an_item_was_read_is_not_part_of_it(tmp_path):
    """file/line name the item in errors; equality and data_hash ignore them."""
    (tmp_path / "a.jsonl").write_text(line("q1", "Q?", ["x", "y"]))
    (tmp_path / "b.jsonl").write_text("\n" + line("q1", "Q?", ["x", "y"]))
    [a], [b] = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "b.jsonl")
    assert (a.file, a.line, b.line) == (str(tmp_path / "a.jsonl"), 1, 2)
    assert a == b and data_hash([a]) == data_hash([b]) and "file" not in a.to_dict()


def test_shared_sets_with_repeated_options(shared_data):
    """mmlu_dev.jsonl line 93 repeats an option: an error unless the source allows it."""
    path = shared_data / "mmlu" / "mmlu_dev.jsonl"
    with pytest.raises(ValidationError) as exc:
        load_source(ref(path))
    assert str(exc.value).startswith(f"{path}:93: choices: options A and C are the same text")
    assert len(load_source(ref(path, allow_duplicate_options=True))) == 285
