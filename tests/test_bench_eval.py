"""bench/eval.py: the BENCH line is arithmetic over the two paths' seconds, and a run on a
tiny model ends in it (the paths' records compared inside: a difference fails the run)."""
import re

import pytest

from bench_helpers import load_bench
from evalkit import build_eval_tiny

LINE = re.compile(r"^BENCH eval items_per_s_before=(\d+\.\d{3}) "
                  r"items_per_s_after=(\d+\.\d{3}) speedup=(\d+\.\d{2})$")


@pytest.fixture(scope="module")
def bench():
    return load_bench("eval")


def test_bench_line(bench):
    assert bench.bench_line(12, {"before": 24.0, "after": 16.0}) == (
        "BENCH eval items_per_s_before=0.500 items_per_s_after=0.750 speedup=1.50")


def test_tiny_run_ends_in_the_bench_line(bench, tmp_path, capsys):
    model = build_eval_tiny("llama", tmp_path / "llama")
    assert bench.main(["--model", str(model), "--n", "3", "--unshared"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    m = LINE.match(out[-1])
    assert m, out[-1]
    before, after, speedup = map(float, m.groups())
    assert before > 0 and after > 0 and speedup == pytest.approx(after / before, abs=0.02)
    assert out[-2].startswith("records identical on every path")
    fed = {line.split()[0]: int(line.split()[-3]) for line in out if "tokens fed" in line}
    assert fed["before"] == fed["after"] < fed["unshared"]  # sharing feeds fewer tokens
