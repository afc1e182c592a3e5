"""The contract every registered objective must pass (peft style: one test, all plugins).

An objective declares what trains (``trainable``) and what is minimised (``loss``).
Whatever it does, after training:
- its Params validate strictly (unknown keys refused) and defaults are valid;
- the loss is a finite scalar and the run is reproducible byte for byte;
- the delta round-trips through write_delta/read_delta, and base + delta (merged by the
  shared rule) reproduces the trained model's logits;
- nothing outside the delta's declared slices moved: the base tensors are untouched and
  every element outside the slices of the effective weights is bit-identical.
"""
import math

import pydantic
import pytest
import torch

from headsurgeon.core import plugins
from headsurgeon.model.delta import base_tensor_hashes, merge_slice, read_delta, write_delta
from headsurgeon.model.sources import load_model
from headsurgeon.train.run import delta_meta, train_in_memory

from train_helpers import load, recipe_text, state_copy, write_questions

OBJECTIVES = sorted(plugins.registry("objectives"))


def test_builtins_are_registered():
    assert {"sft", "sft_kl", "sft_anchor", "lora_heads", "consistency", "full_sft", "lora",
            "random_heads"} <= set(OBJECTIVES)


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_dirs):
    tmp = tmp_path_factory.mktemp("contract")
    return tmp, write_questions(tmp / "train.jsonl", 16), tiny_dirs["llama"]


def _run(name, setting, tag):
    tmp, data, model_dir = setting
    path = tmp / f"{name}-{tag}.yaml"
    path.write_text(recipe_text(model_dir, data, extra_train=f"objective: {name}", steps=3))
    recipe = load(path)
    model, tok, _ = load_model(str(model_dir))
    before = state_copy(model)
    res = train_in_memory(recipe, model=model, tokenizer=tok, progress=False)
    return recipe, res, before


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_contract(name, setting, tmp_path):
    torch.set_num_threads(1)
    cls = plugins.get("objectives", name)
    assert cls.name == name and isinstance(getattr(cls, "needs_heads"), bool)
    cls.Params()                                              # defaults are valid
    with pytest.raises(pydantic.ValidationError):
        cls.Params(no_such_parameter=1)

    recipe, res, before = _run(name, setting, "a")
    hist = res.log["history"]
    assert len(hist) == 3 and all(math.isfinite(h["loss"]) for h in hist)
    assert res.log["trainable_parameters"] > 0

    # the trained model, for comparison
    ids = torch.tensor([[5, 60, 61, 62, 63, 64, 65, 10]])
    with torch.no_grad():
        trained_logits = res.model(input_ids=ids).logits

    slices = res.trainable.delta_slices()
    assert slices and all(s.value.dtype == torch.float32 for s in slices)
    base = base_tensor_hashes(res.plan.resolved.path, {s.param for s in slices})
    out = write_delta(tmp_path / "d.safetensors", slices, base_tensors=base,
                      meta=delta_meta(res))
    delta = read_delta(out)
    assert delta.meta["objective"] == name
    assert [s.key for s in delta.slices] == sorted(s.key for s in slices)

    # base + delta reproduces the trained model; nothing outside the slices moved
    merged = {k: v.clone() for k, v in before.items()}
    covered = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in before.items()}
    for s in delta.slices:
        merged[s.param] = merge_slice(merged[s.param], s)
        covered[s.param][s.index(merged[s.param].dim())] = True
    fresh, _, _ = load_model(res.plan.resolved)
    fresh.load_state_dict(merged, strict=False)
    with torch.no_grad():
        merged_logits = fresh(input_ids=ids).logits
    exact = name in ("sft", "sft_kl", "sft_anchor", "lora_heads", "consistency",
                     "random_heads")
    if exact:  # the in-memory model IS base + delta under the shared merge rule
        assert torch.equal(merged_logits, trained_logits)
    else:      # whole-tensor deltas: float rounding of (trained - base) + base
        assert torch.allclose(merged_logits, trained_logits, atol=1e-4)
    for k, v in before.items():
        assert torch.equal(merged[k][~covered[k]], v[~covered[k]]), k
    detached = res.trainable.detach()
    state = detached.state_dict()
    for k, v in before.items():  # detaching gives the untouched base back
        key = k if k in state else next(n for n in state if n.endswith(k))
        assert torch.equal(state[key], v), k

    # reproducible: same recipe and seed, same delta bytes
    _, res2, _ = _run(name, setting, "b")
    out2 = write_delta(tmp_path / "d2.safetensors", res2.trainable.delta_slices(),
                       base_tensors=base, meta=delta_meta(res))
    assert out2.read_bytes() == out.read_bytes()
