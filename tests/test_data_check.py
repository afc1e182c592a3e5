"""Every data source of a recipe is opened before any stage starts (headsurgeon.data.check):
``validate`` and every command fail on a missing file, a broken line, a letter out of
range, overlapping splits or a stage without sources with one line, exit 2, before a
model is built or anything is written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from headsurgeon.cli import cli
from headsurgeon.core.errors import ValidationError
from headsurgeon.core.recipe import load_recipe
from headsurgeon.data.check import check_data, needed_stages

HEAD = "model: {source: 'tiny:llama'}\n"  # never built: the data check comes first
TRAIN = "  train: [{name: builtin, set: arithmetic, split: train, n: 8}]\n"
LOCATE = "  locate: [{name: builtin, set: arithmetic, split: locate, n: 4}]\n"


def q(i, answer="A", **extra) -> str:
    return json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?",
                       "choices": [str(i + 1), str(i + 2), str(i + 3), str(i + 4)],
                       "answer": answer, **extra}) + "\n"


def cli_run(args, cwd: Path, monkeypatch):
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HEADSURGEON_CACHE", str(cwd / "cache"))
    result = CliRunner().invoke(cli, args, prog_name="headsurgeon")
    return result.exit_code, result.stdout, result.stderr


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def write(d: Path, recipe: str, **files) -> Path:
    for name, text in files.items():
        (d / name).write_text(text)
    (d / "r.yaml").write_text(recipe)
    return d / "r.yaml"


@pytest.mark.parametrize("command", ["validate", "locate", "train", "eval", "run"])
def test_missing_eval_file_fails_every_command_before_anything(command, tmp_path,
                                                               monkeypatch):
    write(tmp_path, HEAD + "data:\n" + LOCATE + TRAIN +
          "  eval: [{name: jsonl, path: /nonexistent/x.jsonl}]\n")
    before = tree(tmp_path)
    code, out, err = cli_run([command, "r.yaml"], tmp_path, monkeypatch)
    assert (code, err) == (2, "error: r.yaml:5: data.eval.0.path: /nonexistent/x.jsonl: "
                              "no such file\n"), (code, out, err)
    assert "[locate]" not in out
    assert tree(tmp_path) == before  # no run directory, no model built in the cache


@pytest.mark.parametrize("lines,message", [
    (q(1) + '{"id": "q2", "question": \n', "e.jsonl:2: invalid JSON: Expecting value"),
    (q(1) + q(2) + q(3, answer="F"),
     "e.jsonl:3: answer: 'F' is not one of the option letters A-D"),
    (q(1) + q(1), "e.jsonl:2: id: duplicate id 'q1'"),
    ("\n\n", "e.jsonl: contains no questions"),
])
def test_validate_opens_the_eval_file(lines, message, tmp_path, monkeypatch):
    write(tmp_path, HEAD + "data:\n" + TRAIN + "  eval: [{name: jsonl, path: e.jsonl}]\n",
          **{"e.jsonl": lines})
    code, _, err = cli_run(["validate", "r.yaml"], tmp_path, monkeypatch)
    assert (code, err) == (2, f"error: {message}\n")
    assert not (tmp_path / "cache").exists()


def test_run_with_a_bad_eval_line_writes_nothing(tmp_path, monkeypatch):
    write(tmp_path, HEAD + "data:\n" + LOCATE + TRAIN +
          "  eval: [{name: jsonl, path: e.jsonl}]\n", **{"e.jsonl": q(1) + q(2, answer="E")})
    before = tree(tmp_path)
    code, out, err = cli_run(["run", "r.yaml"], tmp_path, monkeypatch)
    assert (code, out) == (2, "")
    assert err == "error: e.jsonl:2: answer: 'E' is not one of the option letters A-D\n"
    assert tree(tmp_path) == before


@pytest.mark.parametrize("stages,field,pair", [
    (("locate", "eval"), "data.locate", "locate and eval"),
    (("train", "eval"), "data.train", "train and eval"),
    (("train", "locate"), "data.train", "train and locate"),
])
def test_overlapping_splits(stages, field, pair, tmp_path, monkeypatch):
    """The same question (here by text: the ids differ) in two stages."""
    a, b = stages
    (tmp_path / "a.jsonl").write_text(q(1) + q(2))
    (tmp_path / "b.jsonl").write_text(q(3) + json.dumps(
        {"id": "other", "question": "  what is 2 + 1? ", "choices": ["x", "y"],
         "answer": "B"}) + "\n")
    text = HEAD + f"data:\n  {a}: [{{name: jsonl, path: a.jsonl}}]\n" \
                  f"  {b}: [{{name: jsonl, path: b.jsonl}}]\n"
    write(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError) as exc:
        check_data(load_recipe("r.yaml"))
    line = 3 if field == f"data.{a}" else 4
    assert str(exc.value) == (f"r.yaml:{line}: {field}: {pair} data overlap in 1 "
                              "question(s), e.g. 'what is 2 + 1?'; they must be disjoint")


@pytest.mark.parametrize("command,recipe,message", [
    ("run", HEAD + "data:\n" + TRAIN, "r.yaml:2: data.locate: no probe questions (add a "
                                      "data.locate source)"),
    ("run", HEAD + "heads: [[0, 1]]\ndata:\n" + TRAIN,
     "r.yaml:3: data.eval: no evaluation questions (add a data.eval source)"),
    ("train", HEAD + "heads: [[0, 1]]\n",
     "r.yaml: data.train: no training questions (add a data.train source)"),
    ("locate", HEAD + "data:\n  locate: [{name: builtin, set: numeric, split: locate, n: 3}]\n",
     "r.yaml:3: data.locate: no multiple-choice questions (every item has empty choices)"),
])
def test_a_command_without_the_data_it_needs(command, recipe, message, tmp_path,
                                             monkeypatch):
    write(tmp_path, recipe)
    code, out, err = cli_run([command, "r.yaml"], tmp_path, monkeypatch)
    assert (code, err) == (2, f"error: {message}\n"), out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_needed_stages():
    with_heads = load_recipe_text(HEAD + "heads: [[0, 1]]\n")
    without = load_recipe_text(HEAD)
    assert needed_stages(without, "run") == ("locate", "train", "eval")
    assert needed_stages(with_heads, "run") == ("train", "eval")
    assert needed_stages(without, "validate") == ()
    assert needed_stages(without, "eval") == ("eval",)


def load_recipe_text(text):
    from headsurgeon.core.recipe import load_recipe_text as load

    return load(text, "r.yaml")


def test_validate_reports_what_each_stage_holds(tmp_path, monkeypatch):
    (tmp_path / "e.jsonl").write_text("".join(q(i) for i in range(5)) + json.dumps(
        {"id": "open", "question": "Capital of France?", "choices": [], "answer": "Paris"})
        + "\n")
    write(tmp_path, HEAD + "data:\n" + TRAIN + "  eval: [{name: jsonl, path: e.jsonl}]\n"
          "  general:\n    - {name: builtin, set: numeric, split: eval, n: 3}\n"
          "    - {name: builtin, set: facts, split: eval, n: 7}\n"
          "eval: {n_items: 4, n_general: 5}\n")
    monkeypatch.chdir(tmp_path)
    check = check_data(load_recipe(tmp_path / "r.yaml"))
    assert check.summary(load_recipe(tmp_path / "r.yaml")) == {
        "train": "8 items (8 multiple choice) from 1 source(s)",
        "eval": "6 items (5 multiple choice) from 1 source(s); 4 used (eval.n_items: 4)",
        "general": "10 items (7 multiple choice) from 2 source(s); 8 used "
                   "(eval.n_general: 5 per source)",
    }
    assert check.per_source == {"train": [8], "eval": [6], "general": [3, 7]}
    assert check.notes == []


def test_hub_dataset_not_in_the_local_cache(tmp_path, monkeypatch):
    """A Hub id is read offline as the stages read it: not cached -> the one-line error
    validate gives now (it used to pass and fail after locate and train)."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    write(tmp_path, HEAD + "data:\n" + TRAIN +
          "  eval: [{name: hf, path: nobody/no-such-set, split: test}]\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError) as exc:
        check_data(load_recipe(tmp_path / "r.yaml"))
    msg = str(exc.value)
    assert msg.startswith("nobody/no-such-set: cannot load offline (") and \
        msg.endswith("headsurgeon never downloads: pass a local file, a save_to_disk "
                     "directory or an id already in the local datasets cache"), msg
    assert "\n" not in msg


def test_hub_dataset_from_a_local_file_is_checked_and_noted(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    (tmp_path / "arc.jsonl").write_text("".join(json.dumps(
        {"id": f"a{i}", "question": f"Q{i}?", "choices": {"text": ["x", "y"],
                                                          "label": ["A", "B"]},
         "answerKey": "C" if i == 2 else "B"}) + "\n" for i in range(3)))
    write(tmp_path, HEAD + "data:\n" + TRAIN +
          "  eval: [{name: hf, path: ./arc.jsonl}]\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError) as exc:
        check_data(load_recipe(tmp_path / "r.yaml"))
    assert str(exc.value).startswith("./arc.jsonl[train]:3: answer: ")
    (tmp_path / "arc.jsonl").write_text((tmp_path / "arc.jsonl").read_text()
                                        .replace('"C"', '"A"'))
    check = check_data(load_recipe(tmp_path / "r.yaml"))
    assert check.per_source["eval"] == [3]
    assert check.notes == ["data.eval.0: ./arc.jsonl read offline from local files or the "
                           "local datasets cache; the Hub is not contacted"]
