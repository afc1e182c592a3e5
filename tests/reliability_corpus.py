"""The bad-input corpus: ``tests/fixtures/bad/corpus.yaml`` plus the bad recipes of
``tests/fixtures/recipes/bad`` (each with its ``# expect:`` line).

Every case gets a fresh directory holding its inputs (files from the manifest, binary
inputs made by the generators below from tiny random models), is run through the real
CLI in-process (click's CliRunner, cwd = the case directory) and yields an
:class:`Outcome`: exit code, stderr, and every path under the case directory (and the
shared base it reads) that was created, changed or removed. Used by
``tests/test_reliability_corpus.py`` and ``scripts/reliability_table.py``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reliability_generators import GENERATORS, make_delta  # noqa: F401 - re-exported

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "fixtures" / "bad" / "corpus.yaml"
RECIPE_FIXTURES = ROOT / "tests" / "fixtures" / "recipes" / "bad"
DOC = ROOT / "docs" / "reliability.md"
# examples per property of tests/test_reliability_fuzz.py (fixed, recorded in the doc)
EXAMPLES = {
    "recipe: arbitrary text": 1000,
    "recipe: YAML-like text": 1000,
    "recipe: structured values": 300,
    "recipe: file bytes": 1000,
    "jsonl: file bytes": 1000,
    "jsonl: records": 300,
    "sycophancy_eval: records": 300,
    "heads.json": 300,
    "safetensors header": 300,
    "delta metadata": 300,
}


@dataclass
class Case:
    id: str
    kind: str
    what: str
    run: list[str]
    exit: int
    expect: str
    files: dict = field(default_factory=dict)      # name -> text | bytes
    links: dict = field(default_factory=dict)      # name -> symlink target
    make: list = field(default_factory=list)       # [{generator: args}]
    base: str | None = None                        # copy a tiny model into ./base
    delta: bool = False                            # and make ./delta.safetensors for it


@dataclass
class Outcome:
    exit: int
    stderr: str
    message: str        # the stderr line without "error: ", paths normalised
    written: list[str]  # paths created, changed or removed


# ---------------------------------------------------------------- loading the corpus

def load_cases() -> list[Case]:
    doc = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    templates = doc["templates"]
    cases = []
    for path in sorted(RECIPE_FIXTURES.glob("*.yaml")):
        first = path.read_text(encoding="utf-8", errors="replace").splitlines()[0]
        what = first.removeprefix("# expect: ")
        cases.append(Case(id=f"recipe-{path.stem}", kind="recipe",
                          what=_fixture_what(path), run=["validate", path.name], exit=2,
                          expect=what.replace("{file}", path.name),
                          files={path.name: path.read_bytes()}))
    for raw in doc["cases"]:
        raw = dict(raw)
        files = dict(raw.pop("files", None) or {})
        if "recipe" in raw:
            files["r.yaml"] = templates[raw.pop("recipe")]
        if "data" in raw:
            files["bad.jsonl"] = raw.pop("data")
        raw["run"] = raw["run"].split() if isinstance(raw["run"], str) else raw["run"]
        cases.append(Case(files=files, **raw))
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids {dup}"
    return cases


def _fixture_what(path: Path) -> str:
    words = path.stem.split("_", 1)[-1].replace("_", " ")
    return f"{words} (tests/fixtures/recipes/bad/{path.name})"


# ---------------------------------------------------------------- shared models

class Workspace:
    """Tiny models shared by every case (copied into a case before it is mutated), a good
    question file, and the environment the cases run with."""

    def __init__(self, root: Path):
        from headsurgeon.model.tiny import build_tiny

        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.single = build_tiny("llama", root / "single")
        self.sharded = build_tiny("llama", root / "sharded", max_shard_size="20KB")
        self.other = build_tiny("llama", root / "other", seed=7)
        self.good = root / "good.jsonl"
        self.good.write_text("".join(json.dumps(
            {"id": f"g{i}", "question": f"What is {i} plus 1?",
             "choices": [str(i + 1), str(i + 2)], "answer": "A"}) + "\n" for i in range(6)))

    def env(self, case_dir: Path) -> dict:
        return {"BASE": str(self.single), "TINY_LLAMA": str(self.single),
                "GOOD": str(self.good), "HEADSURGEON_CACHE": str(case_dir / ".cache"),
                "HF_HUB_OFFLINE": "1", "HEADSURGEON_DEBUG": None}


# ---------------------------------------------------------------- running a case

def build(case: Case, ws: Workspace, d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    if case.base:
        shutil.copytree({"single": ws.single, "sharded": ws.sharded}[case.base], d / "base")
    if case.delta:
        make_delta(d / "base", d / "delta.safetensors")
    for name, content in case.files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (d / name).write_bytes(content)
        else:
            (d / name).write_text(content, encoding="utf-8")
    for step in case.make:
        (name, args), = step.items()
        GENERATORS[name](d, ws, **(args or {}))
    for name, target in case.links.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, d / name)


def snapshot(*roots: Path) -> dict:
    """Every path under ``roots`` (symlinks not followed) -> what it holds."""
    out = {}
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                p = Path(dirpath) / name
                st = p.lstat()
                if p.is_symlink():
                    out[str(p)] = ("link", os.readlink(p))
                elif p.is_dir():
                    out[str(p)] = ("dir",)
                elif p.is_file():
                    h = hashlib.sha256()
                    with open(p, "rb") as fh:
                        while chunk := fh.read(1 << 22):
                            h.update(chunk)
                    out[str(p)] = ("file", st.st_size, h.hexdigest())
                else:
                    out[str(p)] = ("special", st.st_mode)
    return out


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_case(case: Case, ws: Workspace, d: Path) -> Outcome:
    from click.testing import CliRunner

    from headsurgeon.cli import cli

    build(case, ws, d)
    roots = [d, ws.single]
    before = snapshot(*roots)
    with _cwd(d):
        result = CliRunner().invoke(cli, case.run, env=ws.env(d), prog_name="headsurgeon")
    after = snapshot(*roots)
    written = sorted(normalise(p, d, ws) for p in set(before) | set(after)
                     if before.get(p) != after.get(p))
    err = result.stderr.strip()
    last = err.splitlines()[-1] if err else ""
    return Outcome(result.exit_code, err, normalise(last.removeprefix("error: "), d, ws),
                   written)


def normalise(text: str, d: Path, ws: Workspace) -> str:
    for path, name in ((d.resolve(), "{dir}"), (d, "{dir}"), (ws.single, "{base}")):
        text = text.replace(str(path), name)
    home = str(Path.home())
    return text.replace(home + "/", "~/") if len(home) > 1 else text  # names no machine's home


def expected_pattern(case: Case) -> re.Pattern:
    from headsurgeon.core import plugins

    subs = {"{%s}" % kind: ", ".join(sorted(plugins.registry(kind)))
            for kind in ("objectives", "locators", "datasets")}
    pattern = re.escape(case.expect)
    for key, value in subs.items():
        pattern = pattern.replace(re.escape(key), re.escape(value))
    return re.compile(pattern.replace(re.escape("{any}"), ".+"))


def problems(case: Case, out: Outcome) -> list[str]:
    """Why ``out`` is not what ``case`` promises (empty when it is)."""
    bad = []
    if out.exit != case.exit:
        bad.append(f"exit {out.exit}, want {case.exit}")
    lines = out.stderr.splitlines()
    if len(lines) != 1 or not lines[0].startswith("error: "):
        bad.append(f"stderr is not one 'error: ' line: {out.stderr[-600:]!r}")
    if "Traceback" in out.stderr:
        bad.append("traceback on stderr")
    if not expected_pattern(case).fullmatch(out.message):
        bad.append(f"message\n  got: {out.message}\n want: {case.expect}")
    if out.written:
        bad.append(f"wrote {out.written}")
    return bad


# ---------------------------------------------------------------- the table

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(cases: list[Case], outcomes: dict[str, Outcome], fuzz: dict) -> str:
    kinds: dict[str, int] = {}
    for c in cases:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    lines = [
        "# Reliability: bad inputs, kills, secrets, pickles, full disks",
        "",
        "<!-- generated by scripts/reliability_table.py; do not edit by hand "
        "(tests/test_reliability_corpus.py fails when this file is stale) -->",
        "",
        "headsurgeon is pointed at multi-GB checkpoints people care about and at recipes and",
        "data files they did not write. Each input below is a case of the corpus",
        "(`tests/fixtures/bad/corpus.yaml`, plus the bad recipes of",
        "`tests/fixtures/recipes/bad/`); binary inputs are made from tiny random models by",
        "`tests/reliability_generators.py`. Every case runs through the real CLI with the case",
        "directory as working directory and must exit with the listed code and print exactly",
        "one line, `error: <message>`; `{dir}` stands for the case directory and `{base}`",
        "for the shared tiny model. *Nothing written* compares every file under the case",
        "directory and the shared model before and after the run, byte for byte.",
        "",
        f"**{len(cases)} cases**: " + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ".",
        "",
        "| case | input | what is wrong | exit | message | nothing written |",
        "|---|---|---|---|---|---|",
    ]
    for c in cases:
        o = outcomes[c.id]
        lines.append(f"| `{c.id}` | {c.kind} | {_cell(c.what)} | {o.exit} | "
                     f"{_cell(o.message)} | "
                     f"{'yes' if not o.written else 'NO: ' + ', '.join(o.written)} |")
    lines += ["", "## Property-based tests (hypothesis)", "",
              "`tests/test_reliability_fuzz.py` feeds generated inputs to the loaders; the "
              "property is that each input either loads or raises the one-line error of "
              "exit code 2, never anything else. Examples per property (fixed, with "
              "`derandomize=True`, so CI runs the same inputs every time):", "",
              "| property | examples |", "|---|---|"]
    for name, n in fuzz.items():
        lines.append(f"| {name} | {n} |")
    lines.append(f"| **total** | **{sum(fuzz.values())}** |")
    lines += ["", "## The other checks", "", *OTHER_CHECKS]
    return "\n".join(lines) + "\n"


OTHER_CHECKS = [
    "- **Header before allocation**: a safetensors header claiming 10^12 elements is "
    "refused before anything is allocated (`tests/test_safetensors_io.py::"
    "test_absurd_element_count_raises_without_allocating`; corpus case "
    "`ckpt-header-huge-shape`).",
    "- **SIGKILL**: `tests/test_apply_kill.py` (apply: output absent or complete, base "
    "untouched); `tests/test_reliability_kill.py` (train: killed at seeded random moments "
    "and resumed, the delta is byte-identical to an uninterrupted run; locate: no partial "
    "`heads.json`, a rerun gives the same bytes).",
    "- **Determinism**: `tests/test_reliability_kill.py` also runs locate and train in two "
    "fresh processes with different hash seeds and compares `heads.json` and the delta "
    "byte for byte.",
    "- **Secrets**: `tests/test_reliability_secrets.py` sets `NDIF_API_KEY` and `HF_TOKEN` "
    "to sentinels, runs `headsurgeon run` on the tiny smoke recipe and error paths, and "
    "finds them in no file, log or message.",
    "- **No unpickling**: `tests/test_reliability_pickle.py` scans `headsurgeon/` and "
    "`plugins/` (no `pickle`/`dill`/`joblib`/`shelve`/`marshal` loads, `torch.load` only "
    "with `weights_only=True`, no `allow_pickle=True`); at run time every CLI command runs "
    "under `headsurgeon.core.nopickle.refuse_unpickling()`, an audit hook that refuses "
    "unrestricted unpickling.",
    "- **Disk full, concurrent apply**: `tests/test_reliability_disk.py` makes writes fail "
    "with ENOSPC after N bytes (apply, train, locate: one-line error, exit 1, no partial "
    "output, base untouched) and races two applies to one output (one wins, the other "
    "fails cleanly, the output verifies).",
]
