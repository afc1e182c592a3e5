"""Contract test of the one definition of a head, on a tiny random model per architecture."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from headsurgeon.core.errors import ValidationError
from headsurgeon.model.heads import HeadMap
from headsurgeon.model.tiny import TINY_ARCHS


def _o_inputs(model, hm, ids):
    """The o_proj input (concatenated head outputs) of every layer."""
    seen = {}
    hooks = [model.get_submodule(hm.o_module(l)).register_forward_pre_hook(
        lambda m, args, l=l: seen.__setitem__(l, args[0].detach().clone()))
        for l in range(hm.n_layers)]
    out = {}
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    out.update(seen)
    return out


@pytest.fixture(scope="module", params=TINY_ARCHS)
def loaded(request, tiny_dirs):
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[request.param]).eval()
    return request.param, model, HeadMap.from_model(model)


IDS = torch.tensor([[5, 17, 99, 3, 42, 7, 200, 31, 8, 64]])


def test_contributions_sum_to_o_proj_output(loaded):
    arch, model, hm = loaded
    for layer in range(hm.n_layers):
        o_mod = model.get_submodule(hm.o_module(layer))
        captured = {}
        h = o_mod.register_forward_hook(
            lambda m, a, o: captured.update(x=a[0].detach(), y=o.detach()))
        with torch.no_grad():
            model(IDS)
        h.remove()
        contrib = hm.head_contributions(captured["x"], o_mod.weight)
        assert contrib.shape[-2] == hm.n_heads
        total = contrib.sum(-2) + (o_mod.bias if getattr(o_mod, "bias", None) is not None else 0)
        assert (total - captured["y"]).abs().max().item() <= 1e-5, arch


@pytest.mark.parametrize("layer,head", [(1, 0), (2, 3)])
def test_q_slice_moves_only_its_head(loaded, layer, head):
    arch, model, hm = loaded
    before = _o_inputs(model, hm, IDS)[layer]
    params = dict(model.named_parameters())
    saved = {}
    with torch.no_grad():
        for s in hm.q_slices(layer, head):
            p = params[s.param]
            saved[s.param] = p.detach().clone()
            p[s.index(p)] += torch.randn_like(p[s.index(p)])
    after = _o_inputs(model, hm, IDS)[layer]
    with torch.no_grad():
        for name, v in saved.items():
            params[name].copy_(v)
    diff = (hm.split_heads(after) - hm.split_heads(before)).abs().amax(dim=(0, 1, 3))
    assert diff[head] > 1e-4, (arch, "perturbing the q slice did not move the head")
    others = [i for i in range(hm.n_heads) if i != head]
    assert diff[others].max().item() == 0.0, (arch, diff)


def test_kv_slice_moves_only_its_group(loaded):
    arch, model, hm = loaded
    layer, head = 1, hm.n_heads - 1
    before = _o_inputs(model, hm, IDS)[layer]
    params = dict(model.named_parameters())
    saved = {}
    with torch.no_grad():
        for s in hm.kv_slices(layer, head):
            p = params[s.param]
            saved[s.param] = p.detach().clone()
            p[s.index(p)] += torch.randn_like(p[s.index(p)])
    after = _o_inputs(model, hm, IDS)[layer]
    with torch.no_grad():
        for name, v in saved.items():
            params[name].copy_(v)
    diff = (hm.split_heads(after) - hm.split_heads(before)).abs().amax(dim=(0, 1, 3))
    group = set(hm.siblings(head))
    assert all(diff[i] > 1e-5 for i in group), (arch, diff)
    assert all(diff[i] == 0 for i in range(hm.n_heads) if i not in group), (arch, diff)


def test_slices_partition_and_owners(loaded):
    arch, model, hm = loaded
    params = dict(model.named_parameters())
    # every head's q slice and o slice are disjoint and together cover the tensors
    for role_slices in (hm.q_slices, hm.o_slices):
        covered = {}
        for head in range(hm.n_heads):
            for s in role_slices(0, head):
                if s.param.endswith("weight"):
                    covered.setdefault((s.param, s.axis), []).append((s.start, s.stop))
        for (param, axis), ranges in covered.items():
            ranges.sort()
            assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:])), (arch, param)
            assert ranges[-1][1] <= params[param].shape[axis]
    s = hm.o_slices(2, 1)[0]
    assert hm.owners(s.param, s.axis, s.start) == [(2, 1, "o")]


def test_gqa_policies():
    cfg = dict(model_type="llama", num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, hidden_size=576)
    hm = HeadMap.from_config(cfg)
    assert (hm.head_dim, hm.group_size, hm.kv_head(5)) == (64, 3, 1)
    assert hm.resolve_kv("auto") == "freeze"
    with pytest.raises(ValidationError, match="kv policy 'own'"):
        hm.slices(0, 0, kv="own")
    roles = sorted({s.role for s in hm.slices(0, 4, kv="group")})
    assert roles == ["k", "o", "q", "v"]
    weights = [s for s in hm.slices_for([(0, 3), (0, 4)], kv="group") if s.param.endswith("weight")]
    assert len(weights) == 6  # 2 q + 2 o + the shared k and v rows once
    with pytest.raises(ValidationError, match="outside the model"):
        hm.slices(30, 0)


def test_gemma_head_dim_differs_from_hidden_over_heads():
    cfg = dict(model_type="gemma3_text", num_hidden_layers=18, num_attention_heads=4,
               num_key_value_heads=1, hidden_size=640, head_dim=256)
    hm = HeadMap.from_config(cfg)
    assert hm.head_dim == 256 and hm.o_slices(0, 3)[0].start == 768


def test_unsupported_architecture_says_how_to_add():
    with pytest.raises(ValidationError, match="add an architecture"):
        HeadMap.from_config(dict(model_type="mamba", num_hidden_layers=2,
                                 num_attention_heads=2, hidden_size=8))


def test_unknown_model_type_inferred_from_weight_names(tiny_dirs):
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    cfg = model.config.to_dict() | {"model_type": "my_llama_fork"}
    hm = HeadMap.from_config(cfg, param_names=[n for n, _ in model.named_parameters()])
    assert hm.arch.name == "llama"
