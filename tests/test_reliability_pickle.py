"""No unpickling: a scan of the code, and the runtime guard every CLI command runs under.

The scan walks the AST of headsurgeon/ and plugins/ and reports: pickle-family imports
(pickle, dill, joblib, shelve, marshal, cloudpickle) outside the allowlist below; any
``*.load``/``*.loads`` on them; ``torch.load`` without ``weights_only=True``;
``np.load(..., allow_pickle=True)``; ``read_pickle``; ``use_safetensors=False`` or
``weights_only=False`` passed to a loader without ``weights_only=True``; unsafe YAML
loaders; ``eval``/``exec``. A ``pickle.Unpickler`` subclass must override ``find_class``.
"""
from __future__ import annotations

import ast
import io
import os
import pickle
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "joblib", "shelve", "marshal",
            "cloudpickle"}
# file -> why its pickle import is safe (a test below checks the claim)
ALLOWED_IMPORTS = {
    "headsurgeon/locate/remote_client.py": "NDIF envelope: a pickle.Unpickler whose find_class "
                                    "allows only nnsight's Status enum",
}
UNSAFE_YAML = {"unsafe_load", "full_load", "Loader", "UnsafeLoader", "FullLoader"}


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "<expr>")  # f().eval: not eval
    return ".".join(reversed(parts))


def scan_source(text: str, rel: str) -> list[str]:
    """Findings for one file (``rel`` names it in the messages)."""
    tree = ast.parse(text, filename=rel)
    found = []

    def at(node, msg):
        found.append(f"{rel}:{node.lineno}: {msg}")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""])
            for m in mods:
                if m.split(".")[0] in PICKLERS and rel not in ALLOWED_IMPORTS:
                    at(node, f"imports {m}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            head, _, last = name.rpartition(".")
            if head.split(".")[0] in PICKLERS and last in ("load", "loads", "Unpickler",
                                                          "open"):
                at(node, f"calls {name}")
            if name == "torch.load" and _kw(node, "weights_only") is not True:
                at(node, "torch.load without weights_only=True")
            if last == "load" and head in ("np", "numpy") and _kw(node, "allow_pickle"):
                at(node, f"{name}(allow_pickle=...)")
            if last == "read_pickle":
                at(node, f"calls {name}")
            if (_kw(node, "use_safetensors") is False or _kw(node, "weights_only") is False) \
                    and _kw(node, "weights_only") is not True:
                at(node, f"{name} may unpickle without weights_only=True")
            if head == "yaml" and last in UNSAFE_YAML | {"load"} and not (
                    last == "load" and "Safe" in str(ast.unparse(node))):
                at(node, f"unsafe YAML: {name}")
            if name in ("eval", "exec"):
                at(node, f"calls {name}")
        elif isinstance(node, ast.ClassDef):
            bases = {_dotted(b) for b in node.bases}
            if bases & {"pickle.Unpickler", "Unpickler", "pickle._Unpickler"}:
                defs = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                if "find_class" not in defs:
                    at(node, f"Unpickler subclass {node.name} without find_class")
        elif isinstance(node, ast.Attribute) and _dotted(node) in {
                f"yaml.{n}" for n in UNSAFE_YAML}:
            at(node, f"unsafe YAML: {_dotted(node)}")
    return found


def scan_tree() -> list[str]:
    found = []
    for top in ("headsurgeon", "plugins"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found += scan_source(path.read_text(encoding="utf-8"), rel)
    return found


def test_code_never_unpickles():
    assert scan_tree() == []
    assert len(list((ROOT / "headsurgeon").rglob("*.py"))) > 30  # it did scan the code


UNSAFE = (ROOT / "tests" / "fixtures" / "unsafe_loads" / "snippets.txt").read_text()
SNIPPETS = [b.strip() for b in "\n".join(line for line in UNSAFE.splitlines()
                                          if not line.startswith("#")).split("\n---\n")]


def test_there_are_unsafe_snippets():
    assert len(SNIPPETS) == 11 and all(SNIPPETS)


@pytest.mark.parametrize("snippet", SNIPPETS)
def test_scan_catches(snippet):
    assert scan_source(snippet, "x.py"), snippet


def test_scan_allows_the_safe_forms():
    ok = ("import torch\ntorch.load(f, map_location='cpu', weights_only=True)\n"
          "M.from_pretrained(p, use_safetensors=False, weights_only=True)\n"
          "import yaml\nyaml.safe_load(t)\nimport numpy as np\nnp.load(f)\n")
    assert scan_source(ok, "x.py") == []


def test_allowlisted_unpickler_is_restricted():
    """The one allowed pickle import: its Unpickler refuses every other global."""
    import torch

    from headsurgeon.locate.remote_client import _load_envelope

    buf = io.BytesIO()
    torch.save({"status": _Evil()}, buf)  # a COMPLETED frame is a torch.save zip
    with pytest.raises(pickle.UnpicklingError, match="refused posix.system"):
        _load_envelope(buf.getvalue())


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('PWN_FILE', '/nonexistent/x')}",))


def test_runtime_guard_refuses_unpickling(tmp_path, monkeypatch):
    from headsurgeon.core.nopickle import UnpicklingRefused, refuse_unpickling

    pwned = tmp_path / "PWNED"
    monkeypatch.setenv("PWN_FILE", str(pwned))
    blob = pickle.dumps(_Evil())
    with refuse_unpickling():
        with pytest.raises(UnpicklingRefused, match="refusing to unpickle posix.system"):
            pickle.loads(blob)
        with pytest.raises(UnpicklingRefused):
            pickle._Unpickler(io.BytesIO(blob)).load()  # the pure-Python one too
        buf = io.BytesIO()  # allowlist loaders (weights_only) raise no event: still work
        torch.save({"w": torch.arange(3)}, buf)
        buf.seek(0)
        assert torch.equal(torch.load(buf, weights_only=True)["w"], torch.arange(3))
    assert not pwned.exists()


def test_every_cli_command_runs_under_the_guard(tmp_path, monkeypatch):
    """A command (as a plugin could add) that unpickles fails with one line, exit 2, and
    the payload does not run."""
    from headsurgeon.cli import cli

    pwned = tmp_path / "PWNED"
    monkeypatch.setenv("PWN_FILE", str(pwned))
    blob = pickle.dumps(_Evil())

    @click.command(name="unpickle-something")
    def cmd():
        pickle.loads(blob)

    cli.add_command(cmd)
    try:
        res = CliRunner().invoke(cli, ["unpickle-something"])
    finally:
        cli.commands.pop("unpickle-something")
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("error: refusing to unpickle posix.system")
    assert len(res.stderr.strip().splitlines()) == 1 and not pwned.exists()


def test_weights_only_loading_still_works_under_the_guard(tmp_path, monkeypatch):
    """--allow-pickle (here allow_pickle: true in a recipe) converts a real .bin through
    torch's weights_only loader while the guard is active."""
    import torch

    from headsurgeon.model import safetensors_io as sio
    from headsurgeon.cli import cli
    from headsurgeon.model.tiny import build_tiny

    src = build_tiny("llama", tmp_path / "src")
    base = tmp_path / "base"
    base.mkdir()
    torch.save(dict(sio.iter_tensors(src / "model.safetensors")), base / "pytorch_model.bin")
    for f in src.iterdir():
        if not f.name.endswith(".safetensors"):
            (base / f.name).write_bytes(f.read_bytes())
    (tmp_path / "r.yaml").write_text(f"model: {{source: {base}, allow_pickle: true}}\n")
    monkeypatch.setenv("HEADSURGEON_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(cli, ["validate", str(tmp_path / "r.yaml")])
    assert res.exit_code == 0, res.stderr
    assert "3 layers x 4 heads" in res.stdout
    assert list((tmp_path / "cache" / "pickle").glob("base-*/model.safetensors"))
