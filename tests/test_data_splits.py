"""Disjoint choose / confirm / report parts of a real set, split by question family."""
import json
from collections import Counter

import pytest

from headsurgeon.data.questions import Question
from headsurgeon.data.splits import SPLITS, family_of, split_of, take_split


def _q(i, family=None, source="set/x"):
    extras = {"subject": family} if family else {}
    return Question(f"q{i}", f"Question {i}?", ("a", "b", "c", "d"), "A", source=source,
                    extras=extras)


def test_parts_are_disjoint_cover_everything_and_are_about_a_third():
    items = [_q(i) for i in range(600)]
    parts = {s: take_split(items, s) for s in SPLITS}
    ids = [q.id for s in SPLITS for q in parts[s]]
    assert len(ids) == len(set(ids)) == 600
    for s in SPLITS:
        assert 160 <= len(parts[s]) <= 240, (s, len(parts[s]))
    assert [q.id for q in take_split(items, "report")] == [q.id for q in parts["report"]]
    other = {q.id for q in take_split(items, "report", seed=1)}
    assert other != {q.id for q in parts["report"]}


def test_a_family_is_never_cut():
    items = [_q(i, family=f"subject{i % 9}") for i in range(270)]
    where = {}
    for q in items:
        where.setdefault(family_of(q), set()).add(split_of(q))
    assert len(where) == 9 and all(len(s) == 1 for s in where.values())
    assert family_of(_q(1)) == "item:set/x|q1"          # no family: the item alone
    assert family_of(_q(1, family="law")) == "set/x|law"
    coarse = Question("t1", "Q?", ("a", "b"), "A", source="otqa", extras={"category": "general"})
    assert family_of(coarse) == "item:otqa|t1"          # a category is not a family


def test_an_unknown_part_is_refused():
    with pytest.raises(ValueError, match="one of choose, confirm, report"):
        take_split([_q(1)], "test")


def _write(path, n):
    path.write_text("".join(json.dumps({"id": f"r{i}", "question": f"Q{i}?",
                                        "choices": ["w", "x", "y", "z"], "answer": "B"}) + "\n"
                            for i in range(n)))
    return path


def test_jsonl_source_reads_one_part_then_its_limit(tmp_path):
    from headsurgeon.core import plugins

    src = _write(tmp_path / "set.jsonl", 90)
    ds = plugins.get("datasets", "jsonl")()
    whole = ds.load(ds.Params(path=str(src)))
    parts = {s: ds.load(ds.Params(path=str(src), part=s)) for s in SPLITS}
    assert sum(len(p) for p in parts.values()) == 90
    assert not {q.id for q in parts["choose"]} & {q.id for q in parts["report"]}
    want = [q.id for q in take_split(whole, "report")][:5]
    assert [q.id for q in ds.load(ds.Params(path=str(src), part="report", limit=5))] == want
    with pytest.raises(Exception, match=r"one.jsonl: part: part \w+ holds no items"):
        one = _write(tmp_path / "one.jsonl", 1)
        for s in SPLITS:  # one item: two of the three parts are empty
            ds.load(ds.Params(path=str(one), part=s))


def test_real_sets_split_into_parts_large_enough(shared_data):
    from headsurgeon.data.questions import read_jsonl

    arc = read_jsonl(shared_data / "arc" / "arc_easy_validation.jsonl")
    sizes = Counter(split_of(q) for q in arc)
    assert sum(sizes.values()) == len(arc) and min(sizes.values()) > len(arc) / 4
    mmlu = read_jsonl(shared_data / "mmlu" / "mmlu_test.jsonl", allow_duplicate_options=True)
    by_subject = {}
    for q in mmlu:
        by_subject.setdefault(q.extras["subject"], set()).add(split_of(q))
    assert all(len(s) == 1 for s in by_subject.values())
    assert len({next(iter(s)) for s in by_subject.values()}) == 3


def test_items_without_a_family_give_intervals_of_nonzero_width():
    from headsurgeon.evaluate.intervals import cluster_sums, interval, point_of, rate

    items = [_q(i, source="arc/validation") for i in range(60)]
    values = [(family_of(q), "m", float(i % 3 == 0)) for i, q in enumerate(items)]
    clusters = cluster_sums(values)
    assert len(clusters) == 60                      # was one cluster: the source
    iv = interval(clusters, rate("m"), point_of(clusters, rate("m")), seed=0)
    assert iv["lo"] < 1 / 3 < iv["hi"] and iv["hi"] - iv["lo"] > 0.1
