"""Checkpoint names that are not the model's: a real GPT-2 checkpoint stores
``h.0.attn.c_attn.weight`` (no ``transformer.`` prefix). Training maps names through the
checkpoint's own index, the delta and apply use the checkpoint's names, and a checkpoint
with no name in common with its config is refused before anything trains."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from headsurgeon.apply.run import apply_delta
from headsurgeon.core.errors import CheckpointError
from headsurgeon.model.checkpoint_names import name_map
from headsurgeon.model.consistency import check_weights
from headsurgeon.model.delta import read_delta
from headsurgeon.model.tiny import build_tiny
from headsurgeon.train.run import train, train_in_memory, write_outputs

from train_helpers import one_thread, tiny_recipe  # noqa: F401 - a fixture


def _renamed(src, dst, rename):
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    save_file({rename(k): v for k, v in state.items()}, dst / "model.safetensors",
              metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def hub_gpt2(tmp_path_factory):
    """A tiny GPT-2 saved the way the Hub's gpt2 checkpoints are: no ``transformer.``."""
    root = tmp_path_factory.mktemp("gpt2")
    built = build_tiny("gpt2", root / "built")
    out = _renamed(built, root / "hub", lambda k: k.removeprefix("transformer."))
    assert "h.0.attn.c_attn.weight" in load_file(out / "model.safetensors")
    return out




def test_name_map_strips_or_adds_the_base_prefix():
    stored = {"h.0.attn.c_attn.weight", "wte.weight", "lm_head.weight"}
    got = name_map(["transformer.h.0.attn.c_attn.weight", "transformer.wte.weight",
                    "lm_head.weight", "transformer.h.1.mlp.c_fc.weight"], stored, "transformer")
    assert got == {"transformer.h.0.attn.c_attn.weight": "h.0.attn.c_attn.weight",
                   "transformer.wte.weight": "wte.weight", "lm_head.weight": "lm_head.weight"}
    assert name_map(["h.0.x"], {"model.h.0.x"}, "model") == {"h.0.x": "model.h.0.x"}


def test_train_then_apply_on_a_hub_named_gpt2(hub_gpt2, tmp_path):
    from transformers import AutoModelForCausalLM

    check_weights(hub_gpt2)  # shapes are checked through the mapping, none skipped
    recipe = tiny_recipe(tmp_path, hub_gpt2)
    res = train_in_memory(recipe, progress=False)
    delta = write_outputs(res, tmp_path / "delta.safetensors")
    d = read_delta(delta)
    assert {s.param for s in d.slices} == {"h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight",
                                           "h.2.attn.c_attn.weight", "h.2.attn.c_proj.weight",
                                           "h.0.attn.c_attn.bias", "h.2.attn.c_attn.bias"}
    out = tmp_path / "model"
    apply_delta(hub_gpt2, delta, out, progress=False)
    stored = load_file(out / "model.safetensors")
    assert set(stored) == set(load_file(hub_gpt2 / "model.safetensors"))  # names kept
    shipped = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 80, 81, 82, 90, 91]])
    with torch.no_grad():
        assert torch.equal(shipped(input_ids=ids).logits, res.model.eval()(input_ids=ids).logits)
    base = load_file(hub_gpt2 / "model.safetensors")
    assert not torch.equal(stored["h.0.attn.c_attn.weight"], base["h.0.attn.c_attn.weight"])
    assert torch.equal(stored["h.1.attn.c_attn.weight"], base["h.1.attn.c_attn.weight"])


def test_full_sft_trains_every_stored_tensor_of_a_hub_named_gpt2(hub_gpt2, tmp_path):
    recipe = tiny_recipe(tmp_path, hub_gpt2, steps=1, heads=None,
                     extra_train="objective: full_sft")
    res = train_in_memory(recipe, progress=False)
    write_outputs(res, tmp_path / "delta.safetensors")
    d = read_delta(tmp_path / "delta.safetensors", load_values=False)
    assert set(d.params) == set(load_file(hub_gpt2 / "model.safetensors"))


def test_no_name_in_common_is_refused_before_training(hub_gpt2, tmp_path):
    alien = _renamed(hub_gpt2, tmp_path / "alien", lambda k: "encoder." + k.replace(".", "_"))
    with pytest.raises(CheckpointError, match="no tensor name in common") as exc:
        check_weights(alien)
    assert "\n" not in str(exc.value) and "model.safetensors" in str(exc.value)
    recipe = tiny_recipe(tmp_path, alien)
    out = tmp_path / "run" / "delta.safetensors"
    with pytest.raises(CheckpointError, match="no tensor name in common"):
        train(recipe, out, progress=False)
    run_dir = tmp_path / "run"
    assert not run_dir.exists() or not any(run_dir.iterdir())  # nothing written
