"""Run the bad-input corpus and write docs/reliability.md.

    python scripts/reliability_table.py           # write the doc
    python scripts/reliability_table.py --check   # exit 1 if the doc is stale

Every case (tests/fixtures/bad/corpus.yaml + tests/fixtures/recipes/bad/) runs through
the real CLI in a fresh temporary directory; a case whose outcome differs from what the
corpus promises is printed and makes the script exit 1 without writing the doc.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    args = ap.parse_args(argv)

    import torch

    import reliability_corpus as rc

    torch.set_num_threads(1)
    cases = rc.load_cases()
    outcomes, failed = {}, 0
    with tempfile.TemporaryDirectory(prefix="headsurgeon-corpus-") as tmp:
        ws = rc.Workspace(Path(tmp) / "models")
        for case in cases:
            out = rc.run_case(case, ws, Path(tmp) / "cases" / case.id)
            outcomes[case.id] = out
            for problem in rc.problems(case, out):
                failed += 1
                print(f"{case.id}: {problem}", file=sys.stderr)
    if failed:
        print(f"{failed} problem(s); {rc.DOC} not written", file=sys.stderr)
        return 1
    text = rc.render(cases, outcomes, rc.EXAMPLES)
    if args.check:
        stale = not rc.DOC.exists() or rc.DOC.read_text(encoding="utf-8") != text
        print(f"{rc.DOC}: {'stale' if stale else 'up to date'}")
        return int(stale)
    rc.DOC.write_text(text, encoding="utf-8")
    print(f"wrote {rc.DOC} ({len(cases)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
