"""The package's folders are its architecture: imports run one way, stages never import each
other, no circle, no module over 400 lines and no function over 80 (docs/architecture.md)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "headsurgeon"
STAGES = ("locate", "train", "apply", "evaluate")
# what each layer may import (besides itself); top-level modules are their own layer
ALLOWED = {
    "core": {"core"},
    "model": {"core", "model", "data"},
    "data": {"core", "data", "model"},
    **{s: {"core", "model", "data", s} for s in STAGES},
    "report": {"core", "model", "data", "report"},
    "pipeline": {"core", "model", "data", *STAGES, "report", "sweep"},
    "sweep": {"core", "model", "data", *STAGES, "report"},
    "api": {"core", "model", "data", *STAGES, "report", "pipeline", "sweep"},
    "cli": {"core", "model", "data", *STAGES, "report", "pipeline", "sweep", "api"},
    "__main__": {"cli"},
}


def _modules(root: Path = PKG) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph(root: Path = PKG) -> dict[str, set[str]]:
    """module -> the package modules it imports (module level and inside functions)."""
    mods = _modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
                base = base[:len(base) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + "."):
                    edges[m].add(t)
    return edges


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, color, stack = [], {}, []

    def visit(u):
        color[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if color.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif not color.get(v):
                visit(v)
        stack.pop()
        color[u] = 2

    for m in sorted(edges):
        if not color.get(m):
            visit(m)
    return found


def layering_problems(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, targets in edges.items():
        src = layer(m)
        if src == "__init__":
            continue
        for t in targets:
            dst = layer(t)
            if dst != "__init__" and dst not in ALLOWED.get(src, {src}):
                bad.append(f"{m} -> {t}")
    return sorted(bad)


def test_no_circle_and_imports_run_one_way():
    edges = import_graph()
    assert circles(edges) == []
    assert layering_problems(edges) == []


def test_the_checks_catch_a_stage_importing_a_stage_and_a_circle(tmp_path):
    pkg = tmp_path / "headsurgeon"
    for folder in ("locate", "train", "core"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "locate" / "run.py").write_text("from headsurgeon.train import run\n")
    (pkg / "train" / "run.py").write_text("from ..locate.run import x\n")
    (pkg / "core" / "a.py").write_text("def f():\n    from headsurgeon.locate import run\n")
    edges = import_graph(pkg)
    assert ["headsurgeon.locate.run", "headsurgeon.train.run",
            "headsurgeon.locate.run"] in circles(edges)
    bad = layering_problems(edges)
    assert {"headsurgeon.core.a -> headsurgeon.locate.run",
            "headsurgeon.locate.run -> headsurgeon.train.run",
            "headsurgeon.train.run -> headsurgeon.locate.run"} <= set(bad)
    assert {b.split(" -> ")[0] for b in bad} == {"headsurgeon.core.a", "headsurgeon.locate.run",
                                                 "headsurgeon.train.run"}


def _sources():
    return sorted([*PKG.rglob("*.py"), *(ROOT / "plugins").rglob("*.py")])


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_size(path):
    text = path.read_text()
    assert text.count("\n") <= 400, "split this module by idea"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 80]
    assert long == []


def test_old_flat_module_names_still_import():
    """Plugins written against the flat layout (``headsurgeon.heads``, ...) keep loading."""
    import warnings

    from headsurgeon.core.legacy import MOVED

    for old, new in MOVED.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            mod = importlib.import_module(f"headsurgeon.{old}")
        assert mod.__name__ == f"headsurgeon.{new}"
    from headsurgeon.heads import ArchSpec
    from headsurgeon.model.heads import ArchSpec as New
    assert ArchSpec is New
