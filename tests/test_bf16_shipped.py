"""Trained == shipped for a bfloat16 checkpoint loaded in float32: the forward trains
against the weights the merge rule writes (rounded to bfloat16), so the applied
checkpoint, read back with plain transformers, equals the trained model bit for bit."""
import json

import pytest
import torch

from headsurgeon.apply.run import apply_delta
from headsurgeon.model.delta import DeltaSlice, rounding_report
from headsurgeon.model.tiny import build_tiny
from headsurgeon.train.run import train_in_memory, write_outputs

from train_helpers import one_thread, tiny_recipe  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory):
    return build_tiny("llama", tmp_path_factory.mktemp("bf16") / "llama", dtype=torch.bfloat16)


def _recipe(tmp_path, model_dir, **kw):
    # loaded in float32 (the old default): the case where trained and shipped diverged
    return tiny_recipe(tmp_path, model_dir, "dtype: float32, device: cpu", **kw)


def _effective(model) -> dict:
    """Every weight as the forward sees it (parametrised ones included), by state name."""
    out = {}
    for name, _ in model.state_dict().items():
        if ".parametrizations." in name:
            if not name.endswith(".original"):
                continue
            name = name.replace(".parametrizations.", ".").removesuffix(".original")
        module, _, attr = name.rpartition(".")
        out[name] = getattr(model.get_submodule(module), attr).detach().clone()
    return out


@pytest.mark.parametrize("objective", ["sft", "full_sft"])
def test_trained_model_equals_applied_checkpoint(objective, bf16_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = _recipe(tmp_path, bf16_llama, steps=3, lr=0.01,
                     extra_train=f"objective: {objective}")
    res = train_in_memory(recipe, progress=False)
    assert next(res.model.parameters()).dtype == torch.float32      # trained in float32
    trained = _effective(res.model)
    delta = write_outputs(res, tmp_path / "delta.safetensors")
    out = tmp_path / "model"
    apply_delta(bf16_llama, delta, out, progress=False)

    shipped = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(bf16_llama, dtype=torch.bfloat16)
    moved = 0
    for name, w in shipped.state_dict().items():
        if name not in trained:  # tied copies
            continue
        t = trained[name]
        assert torch.equal(t.to(torch.bfloat16).float(), t), name   # bf16 values exactly
        assert torch.equal(w.float(), t), name                       # = the shipped bits
        moved += int((w != base.state_dict()[name]).sum())
    assert moved > 0                                                 # training did ship
    # and the logits agree: the shipped checkpoint loaded in float32 vs the trained model
    fp32 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 80, 81, 82, 90, 91, 92, 7]])
    with torch.no_grad():
        assert torch.equal(fp32(input_ids=ids).logits, res.model.eval()(input_ids=ids).logits)
    log = json.loads((tmp_path / "delta.train.json").read_text())
    assert log["shipped"]["stored_dtypes"] == ["bfloat16"]
    assert 0 < log["shipped"]["delta_elements"]


def test_deltas_too_small_for_bf16_are_reported(bf16_llama, tmp_path, capsys):
    """lr 1e-8: every change is far below half a bfloat16 ulp of the weights; the shipped
    model is the base, and train says so (count in the log, a line on stderr)."""
    recipe = _recipe(tmp_path, bf16_llama, steps=2, lr=1e-8)
    res = train_in_memory(recipe, progress=False)
    write_outputs(res, tmp_path / "delta.safetensors")
    log = json.loads((tmp_path / "delta.train.json").read_text())["shipped"]
    assert log["delta_elements"] > 0
    assert log["erased_by_rounding"] == log["delta_elements"]
    err = capsys.readouterr().err
    assert (f"{log['erased_by_rounding']} of {log['delta_elements']} changed delta elements "
            "are too small to survive rounding to the checkpoint's bfloat16") in err


def test_rounding_report_counts_exactly(bf16_llama):
    from headsurgeon.model.safetensors_io import read_checkpoint_index, read_tensor

    name = "model.layers.0.self_attn.q_proj.weight"
    index = read_checkpoint_index(bf16_llama)
    row = read_tensor(index.shard_path(index[name]), name, index.headers[index[name]])[0]
    ulp = torch.finfo(torch.bfloat16).eps * row.float().abs()  # one unit in the last place
    value = torch.zeros(1, row.numel())
    value[0, :5] = (ulp[:5] * 0.2)      # below half an ulp: erased
    value[0, 5:8] = (ulp[5:8] * 4)       # several ulps: survives
    report = rounding_report(bf16_llama, [DeltaSlice(name, 0, 0, 1, "q", [], value)])
    assert report == {"stored_dtypes": ["bfloat16"], "delta_elements": 8,
                      "erased_by_rounding": 5, "warning": (
                          "5 of 8 changed delta elements are too small to survive rounding "
                          "to the checkpoint's bfloat16; the shipped model keeps the base "
                          "value there")}
    value[0, :5] = 0
    assert "warning" not in rounding_report(bf16_llama, [DeltaSlice(name, 0, 0, 1, "q", [],
                                                                    value)])


def test_full_sft_of_a_model_loaded_in_bfloat16_keeps_float32_master_weights(tmp_path):
    """model.dtype bfloat16 (fast on CPUs with AMX) with a float32 checkpoint: full SFT's
    AdamW steps are often smaller than a bfloat16 weight's rounding step; they are kept
    in float32 masters (not rounded away), ship in the float32 checkpoint, and the model
    returns to bfloat16 after training so it is evaluated as the base is."""
    fp32 = build_tiny("llama", tmp_path / "fp32")
    recipe = tiny_recipe(tmp_path, fp32, "dtype: bfloat16, device: cpu", steps=2, lr=1e-4,
                         extra_train="objective: full_sft\ndtype: bfloat16")
    res = train_in_memory(recipe, progress=False)
    assert {p.dtype for p in res.model.parameters()} == {torch.bfloat16}
    small = total = 0
    for s in res.trainable.delta_slices():
        base = res.trainable.base_copy[s.param].float()
        ulp = torch.exp2(torch.floor(torch.log2(base.abs().clamp_min(1e-30))) - 7)
        d = s.value
        assert d.dtype == torch.float32
        small += int(((d != 0) & (d.abs() < ulp / 4)).sum())
        total += int((d != 0).sum())
    # a bfloat16 weight moves by a rounding step or not at all; masters move by less
    assert total > 0 and small > total // 10, (small, total)
    delta = write_outputs(res, tmp_path / "delta.safetensors")
    apply_delta(fp32, delta, tmp_path / "model", progress=False)
    from transformers import AutoModelForCausalLM

    shipped = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(fp32, dtype=torch.float32)
    moved = sum(int((w != base.state_dict()[n]).sum()) for n, w in shipped.state_dict().items())
    assert moved >= total // 2
