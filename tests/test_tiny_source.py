"""``tiny:ARCH`` model sources: built on first use into ``<cache>/tiny/ARCH``, the same
bytes on every machine, atomically; ``recipes/tiny-smoke.yaml`` validates on a fresh
cache with no manual step."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from headsurgeon.cli import cli
from headsurgeon.core.errors import ValidationError
from headsurgeon.model import tiny, tiny_source
from headsurgeon.model.sources import resolve_model

ROOT = Path(__file__).resolve().parents[1]


def digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.iterdir()) if p.is_file()}


def test_built_once_into_the_cache_and_reused(tmp_path):
    rm = resolve_model("tiny:llama", cache_dir=tmp_path / "a")
    assert (rm.kind, rm.model_id, rm.path) == ("tiny", "tiny:llama", tmp_path / "a" / "tiny" / "llama")
    cfg = json.loads((rm.path / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == \
        ("llama", 3, 4)
    assert json.loads((rm.path / "headsurgeon_source.json").read_text()) == \
        {"tiny": "llama", "seed": 0}
    mtimes = {p.name: p.stat().st_mtime_ns for p in rm.path.iterdir()}
    assert resolve_model("tiny:llama", cache_dir=tmp_path / "a").path == rm.path
    assert {p.name: p.stat().st_mtime_ns for p in rm.path.iterdir()} == mtimes  # not rebuilt
    # deterministic: another cache gets byte-identical weights
    other = resolve_model("tiny:llama", cache_dir=tmp_path / "b").path
    assert digest(other)["model.safetensors"] == digest(rm.path)["model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "a" / "tiny").iterdir()) == ["llama"]


@pytest.mark.parametrize("arch", tiny.TINY_ARCHS)
def test_every_tiny_arch_resolves_and_loads(arch, tmp_path):
    from headsurgeon.model.sources import check_weights, load_model

    rm = resolve_model(f"tiny:{arch}", cache_dir=tmp_path)
    check_weights(rm.path)
    model, tok, _ = load_model(rm)
    assert model.config.num_hidden_layers == 3 and tok.pad_token is not None


def test_unknown_arch_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValidationError) as exc:
        resolve_model("tiny:bert", cache_dir=tmp_path)
    assert str(exc.value) == ("model.source: tiny:bert: unknown tiny architecture 'bert'; "
                              "choose one of " + ", ".join(f"tiny:{a}" for a in tiny.TINY_ARCHS))
    assert exc.value.exit_code == 2
    assert not (tmp_path / "tiny").exists()


def test_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def broken(arch, out, **kw):
        (Path(out) / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tiny, "build_tiny", broken)
    with pytest.raises(Exception):
        resolve_model("tiny:gpt2", cache_dir=tmp_path)
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == []  # no target, no partial


def test_a_concurrent_build_is_kept(tmp_path, monkeypatch):
    """Another process finishing first: its (identical) directory stays, no error."""
    real = tiny.build_tiny
    target = tmp_path / "tiny" / "llama"

    def racing(arch, out, **kw):
        real(arch, target, **kw)  # the other process wins the rename
        return real(arch, out, **kw)
    monkeypatch.setattr(tiny, "build_tiny", racing)
    assert tiny_source.resolve_tiny("tiny:llama", tmp_path) == target
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["llama"]
    assert (target / "model.safetensors").is_file()


def test_tiny_smoke_validates_on_a_fresh_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "recipes" / "tiny-smoke.yaml"
    result = CliRunner().invoke(cli, ["validate", str(recipe)], prog_name="headsurgeon",
                                env={"HEADSURGEON_CACHE": str(tmp_path / "cache")})
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert result.stdout.splitlines()[0] == f"{recipe}: ok"
    assert "  model_geometry: 3 layers x 4 heads (2 KV), head_dim 8, model type llama, head layout llama" in \
        result.stdout.splitlines()
    assert (tmp_path / "cache" / "tiny" / "llama" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing else written
