"""The bad-input corpus through the real CLI: for every case the exit code, exactly one
``error:`` line matching the expected message, and nothing written (byte-compared
snapshots of the case directory and the shared model). docs/reliability.md must be what
scripts/reliability_table.py would write."""
from __future__ import annotations

import pytest
import torch

import reliability_corpus as rc

CASES = rc.load_cases()
OUTCOMES: dict[str, rc.Outcome] = {}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield rc.Workspace(tmp_path_factory.mktemp("corpus-models"))
    torch.set_num_threads(threads)


def test_corpus_size_and_kinds():
    kinds = {}
    for c in CASES:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    assert len(CASES) >= 50, kinds
    assert set(kinds) == {"recipe", "data", "checkpoint", "delta"}
    assert min(kinds.values()) >= 10, kinds


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, ws, tmp_path):
    out = rc.run_case(case, ws, tmp_path / "case")
    OUTCOMES[case.id] = out
    assert not rc.problems(case, out), "\n".join(rc.problems(case, out))


def test_problems_detects_a_wrong_outcome():
    """The checker itself can fail: each kind of deviation is reported."""
    case = rc.Case(id="x", kind="recipe", what="", run=[], exit=2, expect="r.yaml:1: bad {any}")
    good = rc.Outcome(2, "error: r.yaml:1: bad thing", "r.yaml:1: bad thing", [])
    assert rc.problems(case, good) == []
    for wrong in (rc.Outcome(1, good.stderr, good.message, []),
                  rc.Outcome(2, "Traceback (most recent call last):\n" + good.stderr,
                             good.message, []),
                  rc.Outcome(2, good.stderr, "r.yaml:2: bad thing", []),
                  rc.Outcome(2, good.stderr, good.message, ["{dir}/out"])):
        assert rc.problems(case, wrong), wrong


def test_doc_is_generated_from_the_corpus(ws, tmp_path):
    """docs/reliability.md == scripts/reliability_table.py's output (cases not run in
    this session are run here)."""
    for case in CASES:
        if case.id not in OUTCOMES:
            OUTCOMES[case.id] = rc.run_case(case, ws, tmp_path / case.id)
    want = rc.render(CASES, OUTCOMES, rc.EXAMPLES)
    got = rc.DOC.read_text(encoding="utf-8") if rc.DOC.exists() else ""
    assert got == want, "docs/reliability.md is stale: run python scripts/reliability_table.py"
