"""Every model type the architecture registry names is proven, on a tiny random model built
from transformers' own config class: a supported type keeps its heads separable (a head's
q rows move only that head, its k/v rows only its KV group, its W_O columns only its own
contribution), a refused type is refused with a one-line reason -- and the reason holds
(bypassing the refusal, heads are NOT separable, or the tensors are not where the
family's are). A registry entry this file cannot build fails here."""
import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoConfig, AutoModelForCausalLM

from headsurgeon.cli import cli
from headsurgeon.core.errors import ValidationError
from headsurgeon.core.plugins import get_architectures
from headsurgeon.model.heads import HeadMap
from headsurgeon.model.tiny import tiny_tokenizer

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, vocab_size=260, max_position_embeddings=256,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)
VISION_SIZES = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, image_size=28, patch_size=14)
GPT2_SIZES = dict(n_embd=32, n_layer=3, n_head=4, vocab_size=260, n_positions=256)
EXTRA = {"cohere": {"use_qk_norm": True}}  # exercise the optional per-head q/k norms
IDS = torch.tensor([[5, 17, 99, 3, 42, 7, 200, 31, 8, 64]])
LAYER = 1


def _registry():
    specs = get_architectures().values()
    supported = {t: s for s in specs for t in s.model_types}
    refused = {t: (s, why) for s in specs for t, why in s.refused}
    return supported, refused


SUPPORTED, REFUSED = _registry()


def tiny_model(model_type: str):
    """A 3-layer, 4-head (2 KV heads where the type has GQA) random model of any type
    transformers knows, with random biases; no download."""
    base = AutoConfig.for_model(model_type)
    if getattr(base, "text_config", None) is not None:  # multimodal wrapper
        vision = getattr(base, "vision_config", None)
        small = {k: v for k, v in VISION_SIZES.items() if hasattr(vision, k)}
        cfg = AutoConfig.for_model(model_type, text_config=SIZES,
                                   **({"vision_config": small} if vision is not None else {}))
    elif hasattr(base, "n_embd"):
        cfg = AutoConfig.for_model(model_type, **GPT2_SIZES)
    else:
        sizes = {k: v for k, v in SIZES.items() if hasattr(base, k) or k == "head_dim"}
        cfg = AutoConfig.for_model(model_type, **sizes, **EXTRA.get(model_type, {}))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("norm.weight"):
                p.normal_(0.5 if name.endswith("norm.weight") else 0.0, 0.3)
    return model


def o_input(model, hm, layer=LAYER):
    """The o_proj input of ``layer`` split per head: ``[T, n_heads, head_dim]``."""
    seen = {}
    hook = model.get_submodule(hm.o_module(layer)).register_forward_pre_hook(
        lambda m, args: seen.__setitem__("x", args[0].detach().clone()))
    with torch.no_grad():
        model(IDS)
    hook.remove()
    return hm.split_heads(seen["x"])[0]


def moved_heads(model, hm, slices) -> torch.Tensor:
    """Per head, max |change| of its output after perturbing ``slices`` (restored after)."""
    params = dict(model.named_parameters())
    before = o_input(model, hm)
    saved = {s.param: params[s.param].detach().clone() for s in slices}
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for s in slices:
            p = params[s.param]
            p[s.index(p)] += torch.randn(p[s.index(p)].shape, generator=gen)
    after = o_input(model, hm)
    with torch.no_grad():
        for name, v in saved.items():
            params[name].copy_(v)
    return (after - before).abs().amax(dim=(0, 2))


@pytest.fixture(scope="module", params=sorted(SUPPORTED))
def supported(request):
    torch.set_num_threads(1)
    model = tiny_model(request.param)
    return request.param, model, HeadMap.from_model(model)


def test_the_registry_names_types(supported):
    model_type, model, hm = supported
    assert model.config.model_type == model_type or \
        model.config.get_text_config().model_type == model_type
    assert hm.arch is SUPPORTED[model_type]
    assert (hm.n_layers, hm.n_heads) == (3, 4)


@pytest.mark.parametrize("head", [0, 2])
def test_q_rows_move_only_their_head(supported, head):
    model_type, model, hm = supported
    diff = moved_heads(model, hm, hm.q_slices(LAYER, head))
    assert diff[head] > 1e-4, (model_type, diff)
    others = [h for h in range(hm.n_heads) if h != head]
    assert diff[others].max().item() == 0.0, (model_type, diff)


def test_kv_rows_move_only_their_group(supported):
    model_type, model, hm = supported
    head = hm.n_heads - 1
    diff = moved_heads(model, hm, hm.kv_slices(LAYER, head))
    group = hm.siblings(head)
    assert all(diff[h] > 1e-5 for h in group), (model_type, diff)
    assert all(diff[h] == 0 for h in range(hm.n_heads) if h not in group), (model_type, diff)


def test_o_columns_carry_only_their_head(supported):
    """Each head's W_O columns are its write to the residual stream: contributions sum to
    the o_proj output, and perturbing head 1's columns changes head 1's contribution only."""
    model_type, model, hm = supported
    o_mod = model.get_submodule(hm.o_module(LAYER))
    got = {}
    hook = o_mod.register_forward_hook(lambda m, a, o: got.update(x=a[0].detach(), y=o.detach()))
    with torch.no_grad():
        model(IDS)
    hook.remove()
    weight = o_mod.weight.detach().clone()
    contrib = hm.head_contributions(got["x"], weight)
    bias = o_mod.bias.detach() if getattr(o_mod, "bias", None) is not None else 0
    assert (contrib.sum(-2) + bias - got["y"]).abs().max().item() <= 1e-5, model_type
    (s,) = [s for s in hm.o_slices(LAYER, 1) if s.param.endswith("weight")]
    weight[s.index(weight)] += 1.0
    diff = (hm.head_contributions(got["x"], weight) - contrib).abs().amax(dim=(0, 1, 3))
    assert diff[1] > 1e-4 and diff[[0, 2, 3]].max().item() == 0.0, (model_type, diff)


def test_bias_entries_belong_to_heads(supported):
    """A head's slices cover its own entries of q (and k/v) biases, none of another head's."""
    model_type, model, hm = supported
    params = dict(model.named_parameters())
    for s in hm.slices(LAYER, 1, kv="group"):
        if s.param.endswith(".bias"):
            assert s.param in params and s.stop - s.start == hm.head_dim, (model_type, s)
            assert {o[:2] for o in hm.owners(s.param, 0, s.start)} >= {(LAYER, 1)}


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_refused_types_are_refused_for_a_reason(model_type):
    """Refused by name in one line; and the reason is real: with the family's head map
    forced on, either the tensors are missing or one head's q rows move other heads."""
    spec, why = REFUSED[model_type]
    assert model_type not in SUPPORTED
    model = tiny_model(model_type)
    with pytest.raises(ValidationError) as err:
        HeadMap.from_model(model)
    assert f"model type {model_type!r} is not supported" in str(err.value)
    assert "\n" not in str(err.value)
    names = [n for n, _ in model.named_parameters()]
    forced = HeadMap.from_config(model.config, arch=spec, param_names=names)
    if not all(s.param in names for s in forced.slices(0, 0, kv="group")):
        return  # the tensors are not where the family keeps them (multimodal wrapper)
    diff = moved_heads(model, forced, forced.q_slices(LAYER, 2))
    assert (diff > 1e-6).all(), (model_type, "heads are separable after all", diff)


def test_unregistered_type_with_qk_norm_is_not_guessed():
    """Weight-name inference would take OLMo-2 for a llama; a q_norm blocks the guess."""
    model = tiny_model("olmo2")
    cfg = model.config.to_dict() | {"model_type": "my_olmo_fork"}
    with pytest.raises(ValidationError, match="'my_olmo_fork' is not registered.*q_norm"):
        HeadMap.from_config(cfg, param_names=[n for n, _ in model.named_parameters()])


def test_cli_validate_refuses_olmo2(tmp_path):
    model_dir = tmp_path / "olmo2"
    tiny_model("olmo2").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{source: {model_dir}}}\n")
    res = CliRunner().invoke(cli, ["validate", str(recipe)])
    assert res.exit_code == 2, res.output
    msg = res.stderr.strip()
    assert len(msg.splitlines()) == 1, msg
    assert "config.json" in msg and "'olmo2' is not supported" in msg and "every head" in msg
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "olmo2"


def test_qwen2_training_one_head_moves_only_its_bias_entries(tmp_path, tiny_dirs):
    """Train head [1, 2] of a tiny Qwen2 (4 heads, 2 KV heads, head_dim 8, q/k/v biases)
    under kv: group, write the delta and apply it: in the applied checkpoint, of every bias
    tensor only q_proj.bias[16:24] and the KV group's k/v_proj.bias[8:16] of layer 1
    differ from the base, and those did train; everything else is bit-identical (no
    whole-q_proj.bias unfreezing)."""
    from headsurgeon.apply.run import apply_delta
    from headsurgeon.model import safetensors_io as sio
    from headsurgeon.train.run import train

    from train_helpers import load, recipe_text, write_questions

    base = tiny_dirs["qwen2"]
    data = write_questions(tmp_path / "train.jsonl", 12)
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(recipe_text(base, data, heads="[[1, 2]]", extra_train="kv: group",
                                       out_dir=tmp_path / "run", steps=3, lr=0.05))
    delta = train(load(recipe_path), tmp_path / "run" / "delta.safetensors", progress=False)
    out = tmp_path / "applied"
    apply_delta(base, delta, out, progress=False)
    def tensors(root):
        idx = sio.read_checkpoint_index(root)
        return {n: t.clone() for shard in idx.shards
                for n, t in sio.iter_tensors(idx.shard_path(shard))}

    before, after = tensors(base), tensors(out)
    assert before.keys() == after.keys()
    att = "model.layers.1.self_attn"
    own_bias = {f"{att}.q_proj.bias": (16, 24), f"{att}.k_proj.bias": (8, 16),
                f"{att}.v_proj.bias": (8, 16)}
    # the head's weight slices: its q rows, its group's k/v rows, its o_proj input columns
    own = {f"{att}.q_proj.weight": (0, 16, 24), f"{att}.k_proj.weight": (0, 8, 16),
           f"{att}.v_proj.weight": (0, 8, 16), f"{att}.o_proj.weight": (1, 16, 24)}
    own |= {name: (0, *rows) for name, rows in own_bias.items()}
    assert sum(n.endswith(".bias") for n in before) == 9  # q/k/v biases of 3 layers
    for name, a in before.items():
        b = after[name]
        if name not in own:
            assert torch.equal(a, b), name
            continue
        axis, start, stop = own[name]
        inside = torch.zeros_like(a, dtype=torch.bool)
        inside[(slice(None),) * axis + (slice(start, stop),)] = True
        assert torch.equal(a[~inside], b[~inside]), name
        assert (a[inside] != b[inside]).any(), (name, "did not train")
