"""The one model-source consistency check (model/consistency.py): config.json against the
tensors the shards hold, run by validate and before every stage; loading never
initialises a weight at random; validate checks the device; a conversion says so once.
(The bad inputs themselves are corpus cases: tests/fixtures/bad/corpus.yaml.)"""
from __future__ import annotations

import json
import shutil
import tracemalloc

import pytest
import torch
from click.testing import CliRunner

from headsurgeon.core.errors import CheckpointError, ValidationError
from headsurgeon.model import consistency
from headsurgeon.model import safetensors_io as sio
from headsurgeon.model import safetensors_write as siw
from headsurgeon.model.tiny import TINY_ARCHS, build_tiny

from train_helpers import recipe_text, write_questions


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny("llama", tmp_path_factory.mktemp("cons") / "llama")


def _copy(src, dst, **config):
    shutil.copytree(src, dst)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _drop(model_dir, name):
    p = model_dir / "model.safetensors"
    ts = {k: v for k, v in sio.iter_tensors(p) if k != name}
    p.unlink()
    siw.save_tensors(p, ts, {"format": "pt"})


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_tiny_arch_is_consistent(arch, tiny_dirs):
    """GPT-2's Conv1D, GPT-NeoX's embed_out (transformers renames it lm_head), tied
    Gemma-3: none is refused."""
    consistency.check_model_source(tiny_dirs[arch])


def test_a_sharded_checkpoint_is_consistent(tmp_path):
    consistency.check_model_source(build_tiny("llama", tmp_path / "s", max_shard_size="20KB"))


def test_a_billion_layers_is_refused_from_the_headers(llama, tmp_path, monkeypatch):
    """Nothing proportional to the claim: no config object, no model, no big set."""
    import transformers

    d = _copy(llama, tmp_path / "m", num_hidden_layers=10**9)

    def built(*a, **k):
        raise AssertionError("a model was built for a config the weights contradict")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", built)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", built)
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError) as exc:
            consistency.check_model_source(d)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(exc.value) == (f"{d / 'config.json'}: num_hidden_layers: 1000000000, but the "
                              "weights hold 3 layers (model.layers.0-2)")
    assert exc.value.exit_code == 2
    assert peak < 256 << 20, peak  # anything per claimed layer would be gigabytes


def test_a_passed_check_is_redone_when_a_file_changes(llama, tmp_path):
    d = _copy(llama, tmp_path / "m")
    consistency.check_model_source(d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 4}))
    with pytest.raises(ValidationError, match="num_hidden_layers: 4, but the weights hold 3"):
        consistency.check_model_source(d)


def test_layer_ranges_in_the_message():
    assert consistency._spans({0, 1, 2}) == "0-2"
    assert consistency._spans({0, 1, 3, 5, 6}) == "0-1, 3, 5-6"
    assert consistency._spans({0, 2, 4, 6, 8, 10}) == "0, 2, 4, 6, ..."


def test_load_model_refuses_what_transformers_would_initialise(llama, tmp_path, monkeypatch):
    """Second line of defence: with the header check bypassed, transformers' own loading
    info refuses the load instead of returning a randomly initialised down_proj."""
    from headsurgeon.model import sources

    d = _copy(llama, tmp_path / "m")
    _drop(d, "model.layers.2.mlp.down_proj.weight")
    monkeypatch.setattr(sources, "check_model_source", lambda path: None, raising=False)
    with pytest.raises(CheckpointError) as exc:
        sources.load_model(str(d))
    assert str(exc.value) == (f"{d}: tensor model.layers.2.mlp.down_proj.weight is missing "
                              "from the weights, and loading would initialise it at random")


def test_train_on_a_config_weights_mismatch_exits_2_before_any_step(llama, tmp_path,
                                                                     monkeypatch):
    from headsurgeon.cli import cli
    from headsurgeon.train import run as train_run

    d = _copy(llama, tmp_path / "m", num_hidden_layers=5)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(d, write_questions(tmp_path / "q.jsonl", 8), steps=1,
                                  out_dir=tmp_path / "runs"))
    started = []
    monkeypatch.setattr(train_run, "run_training", lambda *a, **k: started.append(1))
    result = CliRunner().invoke(cli, ["train", str(recipe)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {d / 'config.json'}: num_hidden_layers: 5, but the weights hold 3 layers "
        "(model.layers.0-2)")
    assert started == []  # refused before the training loop, not by it
    assert not list(tmp_path.glob("runs/**/*.safetensors"))


def _fake_cuda(monkeypatch, n: int):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (8 << 30, 16 << 30))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.mark.parametrize("n_cuda, why", [
    (0, "cuda:7 asked for, but torch sees no CUDA device (use auto or cpu)"),
    (2, "cuda:7 asked for, but there are 2 CUDA devices"),
])
def test_validate_checks_the_device(llama, tmp_path, monkeypatch, n_cuda, why):
    from headsurgeon import api

    _fake_cuda(monkeypatch, n_cuda)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{source: {llama}, device: 'cuda:7'}}\n")
    with pytest.raises(ValidationError) as exc:
        api.validate(recipe)
    assert str(exc.value) == f"{recipe}:1: model.device: {why}"
    assert exc.value.exit_code == 2


def test_validate_accepts_a_device_that_is_there(llama, tmp_path, monkeypatch):
    from headsurgeon import api

    _fake_cuda(monkeypatch, 8)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{source: {llama}, device: 'cuda:7'}}\n")
    assert api.validate(recipe)["model_geometry"].startswith("3 layers x 4 heads")


def _fake_gguf_load(llama, info):
    """transformers' GGUF load as the conversion sees it: 37 progress updates from the
    GGUF reader's own tqdm, then a model and its loading info."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained

    def load(where, **kw):
        for _ in gguf_utils.tqdm(range(37), desc="Converting and de-quantizing GGUF tensors",
                                 mininterval=0, miniters=1):
            pass
        model = real(llama)
        return (model, info) if kw.get("output_loading_info") else model
    return load


def test_a_gguf_conversion_says_once_that_it_prepares_the_model(llama, tmp_path, monkeypatch,
                                                                  capfd):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from headsurgeon.model import sources

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF fake")
    info = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()}
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", _fake_gguf_load(llama, info))
    tokenizer = AutoTokenizer.from_pretrained(llama)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(sources, "restore_pre_tokenizer", lambda tok, path: {})
    capfd.readouterr()
    target = sources._convert_gguf(gguf, tmp_path / "cache")
    err = capfd.readouterr().err
    assert err.splitlines() == [f"preparing model: converting m.gguf into "
                                f"{tmp_path / 'cache' / 'gguf'} (once; later runs reuse it)"]
    assert (target / "model.safetensors").is_file()


def test_a_gguf_conversion_never_caches_a_randomly_initialised_weight(llama, tmp_path,
                                                                      monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from headsurgeon.model import sources

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF fake")
    info = {"missing_keys": {"lm_head.weight"}, "unexpected_keys": set(),
            "mismatched_keys": set()}
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", _fake_gguf_load(llama, info))
    tokenizer = AutoTokenizer.from_pretrained(llama)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(sources, "restore_pre_tokenizer", lambda tok, path: {})
    with pytest.raises(CheckpointError) as exc:
        sources._convert_gguf(gguf, tmp_path / "cache")
    assert str(exc.value) == (f"{gguf}: tensor lm_head.weight is missing from the weights, "
                              "and loading would initialise it at random")
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()
            if not p.name.startswith(".")] == []
