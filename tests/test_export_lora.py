"""`headsurgeon export RUN --lora OUT` / `--lora-gguf OUT.gguf`: the edit as an exact adapter.

Every registered architecture (tiny random models, fp32): stock peft loads the adapter onto
the base and gives the merged model's logits (max |diff| <= 1e-5) and greedy tokens; the
adapter's ``W + B @ A`` is the merged checkpoint bit for bit, and it covers every tensor the
edit changed. The GGUF LoRA is read back with ``gguf`` and rebuilds the merged weights
exactly after llama.cpp's q/k permutation is undone. SmolLM2 and Qwen: the same on a few
heads with random deltas.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from headsurgeon.cli import cli
from headsurgeon.model import safetensors_io as sio
from headsurgeon.model.delta import DeltaSlice, base_tensor_hashes, write_delta
from headsurgeon.model.heads import HeadMap
from headsurgeon.model.tiny import TINY_ARCHS
from test_hub_push import servers  # noqa: F401 - the fake Hub fixture

HEADS = [(1, 2), (2, 0), (2, 1)]   # two heads of layer 2: ranks differ across modules
BIASED = ("qwen2", "gpt2", "gpt_neox")  # q/k/v biases (the head map owns their entries)


def head_delta(base: Path, path: Path, heads, *, base_model=None, bias=True, seed=0,
               scale=0.1) -> Path:
    """A random delta over every slice of ``heads`` (kv policy "group"), through the
    project's delta writer."""
    idx = sio.read_checkpoint_index(base)
    hm = HeadMap.from_config(json.loads((base / "config.json").read_text()),
                             param_names=list(idx))
    g = torch.Generator().manual_seed(seed)
    slices = []
    for ps in hm.slices_for(heads, kv="group"):
        if ps.param.endswith(".bias") and not bias:
            continue
        shape = list(idx.info(ps.param).shape)
        shape[ps.axis] = ps.stop - ps.start
        slices.append(DeltaSlice(ps.param, ps.axis, ps.start, ps.stop, ps.role, [],
                                 torch.randn(*shape, generator=g) * scale))
    return write_delta(path, slices,
                       base_tensors=base_tensor_hashes(base, [s.param for s in slices]),
                       meta={"base_model": base_model or str(base), "kv_policy": "group",
                             "heads": [list(h) for h in heads]})


def cli_run(*args):
    res = CliRunner().invoke(cli, [*map(str, args)], prog_name="headsurgeon")
    return res.exit_code, res.stdout, res.stderr.strip()


def make_run(base: Path, run: Path, heads=HEADS, **kw) -> Path:
    """``run/delta.safetensors`` and ``run/model`` (the apply CLI), as `headsurgeon run`
    leaves them."""
    head_delta(base, run / "delta.safetensors", heads, **kw)
    code, _, err = cli_run("apply", "--base", base, "--delta", run / "delta.safetensors",
                           "--out", run / "model")
    assert code == 0, err
    return run


def expected_ranks(base: Path, heads) -> dict[str, int]:
    """Each edited module's rank from the head map alone: rows (or columns) it owns."""
    hm = HeadMap.from_config(json.loads((base / "config.json").read_text()),
                             param_names=list(sio.read_checkpoint_index(base)))
    out: dict[str, int] = {}
    for s in hm.slices_for(heads, kv="group"):
        if s.param.endswith(".weight"):
            module = s.param.removesuffix(".weight")
            out[module] = out.get(module, 0) + s.stop - s.start
    return out


def state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if path.is_file():
        return load_file(path)
    idx = sio.read_checkpoint_index(path)
    return {n: sio.read_tensor(idx.shard_path(idx[n]), n, idx.headers[idx[n]]) for n in idx}


def check_factors_rebuild_the_merged_weights(base: Path, merged: Path, adapter: Path,
                                             conv1d: bool) -> None:
    """``W + B @ A`` (and ``b + lora_B.bias``) is every merged tensor, bit for bit."""
    w0, w1 = state(base), state(merged)
    lora = state(adapter / "adapter_model.safetensors")
    covered = set()
    for key in lora:
        if not key.endswith("lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        stem = f"base_model.model.{module}"
        dw = lora[f"{stem}.lora_B.weight"] @ lora[key]
        name = f"{module}.weight"
        assert torch.equal(w0[name].float() + (dw.T if conv1d else dw), w1[name].float()), name
        covered.add(name)
        if f"{stem}.lora_B.bias" in lora and f"{module}.bias" not in w0:  # o_proj
            assert not lora[f"{stem}.lora_B.bias"].any()
        elif f"{stem}.lora_B.bias" in lora:
            assert torch.equal(w0[f"{module}.bias"].float() + lora[f"{stem}.lora_B.bias"],
                               w1[f"{module}.bias"].float()), module
            covered.add(f"{module}.bias")
    moved = {n for n in w0 if not torch.equal(w0[n], w1[n])}
    assert moved and moved <= covered  # the adapter carries every change the edit made


def logits_and_tokens(model, ids):
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        tokens = model.generate(input_ids=ids[:1], attention_mask=torch.ones_like(ids[:1]),
                                max_new_tokens=10, do_sample=False, pad_token_id=0)
    return logits, tokens


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_peft_adapter_reproduces_the_merged_model(arch, tiny_dirs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = tiny_dirs[arch]
    run = make_run(base, tmp_path / "run")
    code, out, err = cli_run("export", run, "--lora", tmp_path / "lora")
    assert code == 0, err
    assert "peft LoRA adapter" in out and "the full checkpoint is" in out

    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    ranks = expected_ranks(base, HEADS)
    assert cfg["rank_pattern"] == ranks and cfg["alpha_pattern"] == ranks
    assert cfg["r"] == cfg["lora_alpha"] == max(ranks.values())  # every scale alpha/r is 1
    assert len(set(ranks.values())) > 1  # per-module ranks really differ here
    assert cfg["target_modules"] == sorted(ranks)
    assert (cfg["peft_type"], cfg["task_type"], cfg["lora_dropout"]) == ("LORA", "CAUSAL_LM", 0)
    assert cfg["lora_bias"] is (arch in BIASED)
    assert cfg["fan_in_fan_out"] is (arch == "gpt2")
    check_factors_rebuild_the_merged_weights(base, run / "model", tmp_path / "lora",
                                             arch == "gpt2")

    ids = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(1))
    plain = logits_and_tokens(AutoModelForCausalLM.from_pretrained(base), ids)
    merged = logits_and_tokens(AutoModelForCausalLM.from_pretrained(run / "model"), ids)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                        tmp_path / "lora")
    got = logits_and_tokens(adapted, ids)
    assert (merged[0] - plain[0]).abs().max() > 1e-2  # the edit moves the logits
    assert (got[0] - merged[0]).abs().max() <= 1e-5
    assert torch.equal(got[1], merged[1])


def test_half_precision_base_gets_the_shipped_change(tmp_path):
    """bf16 base: the merge rule rounds base + delta to bf16, so the adapter carries the
    change the shipped checkpoint holds (merged - base), not the delta's own values; the
    factors rebuild every shipped tensor exactly and peft gives its logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from headsurgeon.model.delta import read_delta
    from headsurgeon.model.tiny import build_tiny

    base = build_tiny("qwen2", tmp_path / "base", dtype=torch.bfloat16)
    run = make_run(base, tmp_path / "run")
    assert cli_run("export", run, "--lora", tmp_path / "lora")[0] == 0
    check_factors_rebuild_the_merged_weights(base, run / "model", tmp_path / "lora", False)
    w0, w1 = state(base), state(run / "model")
    raw = [(w0[s.param][s.index()].float() + s.value, w1[s.param][s.index()].float())
           for s in read_delta(run / "delta.safetensors").slices]
    assert any(not torch.equal(a, b) for a, b in raw)  # the delta's own values would not do
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(2))
    merged = AutoModelForCausalLM.from_pretrained(run / "model", dtype=torch.float32)
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tmp_path / "lora")
    with torch.no_grad():
        assert (adapted(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max() <= 1e-5


def test_model_dir_input_and_refusals(tiny_dirs, tmp_path):
    """The applied model directory finds its run's delta; the same bytes come out. A model
    directory whose run holds another delta, or a delta with a norm slice, is refused with
    one line (exit 2) and nothing written."""
    base = tiny_dirs["llama"]
    run = make_run(base, tmp_path / "run")
    assert cli_run("export", run, "--lora", tmp_path / "a")[0] == 0
    assert cli_run("export", run / "model", "--lora", tmp_path / "b")[0] == 0
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    card = (tmp_path / "a" / "README.md").read_text()
    assert sio.file_sha256(base / "model.safetensors") in card and str(base) in card

    head_delta(base, run / "delta.safetensors", HEADS, seed=5)  # not what model/ holds
    code, _, err = cli_run("export", run / "model", "--lora", tmp_path / "c")
    assert code == 2 and "another delta" in err and "\n" not in err
    assert not (tmp_path / "c").exists()

    from test_apply import make_delta  # q/k/v/o slices plus a layer-norm slice

    make_delta(base, tmp_path / "norm.safetensors")
    code, _, err = cli_run("export", tmp_path / "norm.safetensors", "--base", base,
                           "--lora", tmp_path / "d")
    assert code == 2 and "input_layernorm" in err and "attention projection" in err
    assert not (tmp_path / "d").exists()


def unpermute(b: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's interleaved rotary rows -> HF's rotate-half rows (per head)."""
    return (b.reshape(n_head, b.shape[0] // n_head // 2, 2, *b.shape[1:])
            .swapaxes(1, 2).reshape(b.shape))


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_gguf_lora_rebuilds_the_merged_weights(arch, tiny_dirs, tmp_path):
    from gguf import GGUFReader

    base = tiny_dirs[arch]
    run = make_run(base, tmp_path / "run", bias=False)  # llama.cpp LoRAs carry no bias
    code, out, err = cli_run("export", run, "--lora-gguf", tmp_path / "edit.gguf")
    assert code == 0, err
    assert "llama.cpp LoRA" in out
    reader = GGUFReader(tmp_path / "edit.gguf")
    field = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    ranks = expected_ranks(base, HEADS)
    top = max(ranks.values())
    assert (field["general.type"], field["adapter.type"]) == ("adapter", "lora")
    assert field["general.architecture"] == ("qwen2" if arch == "qwen2" else "llama")
    assert field["adapter.lora.alpha"] == top  # every pair is padded to rank `top`: scale 1
    cfg = json.loads((base / "config.json").read_text())
    gguf_part = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v",
                 "o_proj": "attn_output"}
    want = {}
    for module in ranks:
        layer, proj = int(module.split(".")[2]), module.split(".")[-1]
        want[f"blk.{layer}.{gguf_part[proj]}.weight"] = module
    tensors = {t.name: t.data for t in reader.tensors}
    assert set(tensors) == {f"{n}.lora_{x}" for n in want for x in "ab"}
    w0, w1 = state(base), state(run / "model")
    for name, module in want.items():
        a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
        assert a.dtype == b.dtype == np.float32 and a.shape[0] == b.shape[1] == top
        proj = module.split(".")[-1]
        if arch != "qwen2" and proj in ("q_proj", "k_proj"):
            heads = cfg["num_attention_heads"] if proj == "q_proj" else cfg["num_key_value_heads"]
            stored = torch.from_numpy(b.copy()) @ torch.from_numpy(a.copy())
            # the rows really are in llama.cpp's order: unpermuted they would not rebuild it
            assert not torch.equal(w0[f"{module}.weight"] + stored, w1[f"{module}.weight"])
            b = unpermute(b, heads)
        dw = torch.from_numpy(np.array(b)) @ torch.from_numpy(a.copy())
        assert torch.equal(w0[f"{module}.weight"] + dw, w1[f"{module}.weight"]), name


def test_gguf_lora_refuses_bias_edits_before_writing(tiny_dirs, tmp_path):
    run = make_run(tiny_dirs["qwen2"], tmp_path / "run")  # q/k/v bias entries move
    code, _, err = cli_run("export", run, "--lora", tmp_path / "lora", "--lora-gguf",
                           tmp_path / "edit.gguf")
    assert code == 2 and "\n" not in err
    assert "bias" in err and "cannot carry bias changes" in err
    assert not (tmp_path / "lora").exists() and not (tmp_path / "edit.gguf").exists()
    run = make_run(tiny_dirs["phi3"], tmp_path / "phi3")  # no llama.cpp name map here
    code, _, err = cli_run("export", run, "--lora-gguf", tmp_path / "edit.gguf")
    assert code == 2 and "'phi3' cannot be exported as a llama.cpp LoRA" in err
    assert not (tmp_path / "edit.gguf").exists()


def test_the_report_sizes_the_adapter_next_to_the_checkpoint(tiny_dirs, tmp_path):
    from headsurgeon.model.delta import read_delta
    from headsurgeon.model.lora_factors import plan_lora, planned_adapter_bytes
    from headsurgeon.report.size_section import size_blocks

    base = tiny_dirs["qwen2"]
    run = make_run(base, tmp_path / "run")
    assert cli_run("export", run, "--lora", tmp_path / "lora")[0] == 0
    actual = (tmp_path / "lora" / "adapter_model.safetensors").stat().st_size
    plan = plan_lora(read_delta(run / "delta.safetensors", load_values=False),
                     json.loads((base / "config.json").read_text()))
    assert planned_adapter_bytes(plan) == actual  # the report's number is the file's
    full = (run / "model" / "model.safetensors").stat().st_size
    [head, para] = size_blocks(run)
    assert head.text == "Size"
    assert f"is {full / 1e6:.2f} MB" in para.text and f"is {actual / 1e6:.2f} MB" in para.text
    manifest = json.loads((tmp_path / "lora" / "headsurgeon-lora.json").read_text())
    assert (manifest["adapter_bytes"], manifest["checkpoint_bytes"]) == (actual, full)


def test_push_lora_sends_exactly_the_adapter(tiny_dirs, tmp_path, servers):
    from test_hub_push import REPO, committed, listing, on_disk, run_push

    hub, trap = servers
    run = make_run(tiny_dirs["llama"], tmp_path / "run")
    adapter = tmp_path / "lora"
    assert cli_run("export", run, "--lora", adapter)[0] == 0
    code, dry, err = run_push([adapter, "--repo", REPO, "--lora", "--dry-run"], hub, trap,
                              tmp_path)
    assert code == 0, err
    size = (adapter / "adapter_model.safetensors").stat().st_size
    full = (tiny_dirs["llama"] / "model.safetensors").stat().st_size
    assert f"LoRA adapter: {size} bytes of weights; the full checkpoint: {full} bytes" in dry
    planned = listing(dry)
    assert planned == on_disk(adapter) and {"adapter_config.json", "README.md"} <= set(planned)
    code, out, err = run_push([adapter, "--repo", REPO, "--lora"], hub, trap, tmp_path)
    assert code == 0, err
    assert committed(hub) == planned and trap.requests == []

    code, _, err = run_push([adapter, "--repo", REPO, "--dry-run"], hub, trap, tmp_path)
    assert code == 2 and "pass --lora" in err
    code, _, err = run_push([run / "model", "--repo", REPO, "--lora", "--dry-run"], hub,
                            trap, tmp_path)
    assert code == 2 and "not a LoRA adapter directory" in err


# ---------------------------------------------------------------- real models

def _forward(model, batch, tokens: bool = False):
    with torch.no_grad():
        logits = model(**batch).logits
        if not tokens:
            return logits
        return logits, model.generate(**batch, max_new_tokens=8, do_sample=False)


def _rebuild(params, delta, lora, saved, dtype, exact: bool) -> None:
    """Set the touched params to the edit: ``exact`` = base + delta in ``dtype``; else the
    shipped tensor (merged in its stored dtype by the merge rule), as ``dtype``. Checks
    ``W + B @ A`` of the adapter file against the shipped tensor, bit for bit."""
    from headsurgeon.model.delta import merge_slice, stored_dtype

    for name, base in saved.items():
        params[name].data.copy_(base.to(dtype))
    for s in delta.slices:
        p = params[s.param].data
        if exact:
            p[s.index()] += s.value.to(dtype)
        else:
            stored = stored_dtype(delta.base_tensors[s.param]["dtype"])
            p.copy_(merge_slice(saved[s.param].to(stored), s).to(dtype))
    if not exact and dtype == torch.float32:
        for name in {s.param for s in delta.slices if s.param.endswith(".weight")}:
            stem = f"base_model.model.{name.removesuffix('.weight')}"
            dw = lora[f"{stem}.lora_B.weight"] @ lora[f"{stem}.lora_A.weight"]
            assert torch.equal(saved[name].float() + dw, params[name].data), name


def real_check(alias: str, heads, prompts, tmp_path) -> dict:
    """Delta on a few heads of a real model -> --lora (CLI) -> stock peft on the base.
    fp32: peft's logits against the shipped model's (its tensors merged by the merge
    rule in their stored dtype), next to fp32's own error on the shipped model (its fp32
    logits against fp64 ones); fp64: peft's logits against the exact edit."""
    from peft import PeftModel

    from headsurgeon.model.delta import read_delta
    from headsurgeon.model.sources import load_model, resolve_model

    head_delta(resolve_model(alias).path, tmp_path / "run" / "delta.safetensors", heads,
               base_model=alias, scale=0.05)
    code, _, err = cli_run("export", tmp_path / "run", "--lora", tmp_path / "lora")
    assert code == 0, err
    delta = read_delta(tmp_path / "run" / "delta.safetensors")
    lora = state(tmp_path / "lora" / "adapter_model.safetensors")
    model, tok, _ = load_model(alias, dtype="float32", attn_implementation=None)
    batch = tok(prompts, return_tensors="pt", padding=True)
    params = dict(model.named_parameters())
    saved = {s.param: params[s.param].data.clone() for s in delta.slices}
    before = _forward(model, batch)
    adapted = PeftModel.from_pretrained(model, tmp_path / "lora")
    got32, got_tokens = _forward(adapted, batch, tokens=True)
    model = adapted.unload()  # peft wrapped the base in place; this is the base again
    params = dict(model.named_parameters())
    _rebuild(params, delta, lora, saved, torch.float32, exact=False)
    shipped32, tokens = _forward(model, batch, tokens=True)
    model.to(torch.float64)
    params = dict(model.named_parameters())
    shipped64 = _forward(model, batch)
    _rebuild(params, delta, lora, saved, torch.float64, exact=True)
    exact64 = _forward(model, batch)
    for name, base in saved.items():
        params[name].data.copy_(base.double())
    got64 = _forward(PeftModel.from_pretrained(model, tmp_path / "lora").to(torch.float64),
                     batch)
    assert (shipped32 - before).abs().max() > 1e-2  # the edit moves the logits
    assert torch.equal(got_tokens, tokens)
    return {"fp32": float((got32 - shipped32).abs().max()),
            "fp32_own_error": float((shipped32 - shipped64).abs().max()),
            "fp64": float((got64 - exact64).abs().max()),
            "config": json.loads((tmp_path / "lora" / "adapter_config.json").read_text())}


PROMPTS = ["The capital of France is", "Is the sky green? Answer yes or no:",
           "def fibonacci(n):\n    "]


def test_smollm2_adapter_gives_the_merged_logits(tmp_path):
    out = real_check("smollm2-135m-instruct", [(3, 1), (11, 4), (24, 8)], PROMPTS, tmp_path)
    assert out["fp64"] <= 1e-9, out
    assert out["fp32"] <= out["fp32_own_error"], out  # within fp32's own error
    assert out["config"]["lora_bias"] is False and out["config"]["r"] == 64


def test_qwen_adapter_gives_the_merged_logits(tmp_path):
    out = real_check("qwen2.5-coder-0.5b-instruct", [(5, 3), (20, 7)], PROMPTS, tmp_path)
    assert out["fp64"] <= 1e-9, out
    assert out["fp32"] <= out["fp32_own_error"], out  # within fp32's own error
    assert out["config"]["lora_bias"] is True  # Qwen2's q/k/v bias entries move too
