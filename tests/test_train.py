"""The train stage on tiny models: isolation, determinism, resume, policies, outputs."""
import json

import pytest
import torch

from headsurgeon.model.delta import merge_slice, read_delta
from headsurgeon.core.errors import CheckpointError
from headsurgeon.train.run import train, train_in_memory

from train_helpers import load, recipe_text, state_copy, write_questions


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores
    yield
    torch.set_num_threads(n)


@pytest.fixture
def make(tmp_path, tiny_dirs):
    data = write_questions(tmp_path / "train.jsonl", 24)

    def _make(arch="llama", name="r.yaml", **kw):
        kw.setdefault("out_dir", tmp_path / "run")
        path = tmp_path / name
        path.write_text(recipe_text(tiny_dirs[arch], data, **kw))
        return load(path)
    return _make


def effective(model, name):
    module, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module), attr)


def test_nothing_outside_the_slices_moves(make):
    """With lr 0.01 and weight decay 0.1, every element outside the declared slices stays
    bit-identical; the in-memory model equals base + delta merged by delta.merge_slice."""
    from headsurgeon.model.sources import load_model

    recipe = make()
    base_model, tok, _ = load_model(recipe.model.source)
    before = state_copy(base_model)
    res = train_in_memory(recipe, model=base_model, tokenizer=tok, progress=False)
    slices = res.trainable.delta_slices()
    assert {s.role for s in slices} == {"q", "o"}           # llama tiny is GQA: kv frozen
    by_param = {}
    for s in slices:
        by_param.setdefault(s.param, []).append(s)
        assert s.value.abs().max() > 0                       # the slices did train
    for name, base in before.items():
        now = effective(res.model, name).detach()
        merged = base.clone()
        for s in by_param.get(name, []):
            merged = merge_slice(merged, s)
        assert torch.equal(now, merged), name                # bit-identical incl. outside
        outside = torch.ones_like(base, dtype=torch.bool)
        for s in by_param.get(name, []):
            outside[s.index(base.dim())] = False
        assert torch.equal(now[outside], base[outside]), name
    # the optimiser only ever saw the deltas; the base tensors never required grad
    assert all(not p.requires_grad for n, p in res.model.named_parameters()
               if "original" in n)
    res.trainable.detach()
    for name, base in before.items():
        assert torch.equal(dict(res.model.state_dict())[name], base)


def test_same_seed_same_bytes_and_resume(make, tmp_path):
    recipe = make(extra_train="checkpoint_every: 2\ngrad_accum: 2")
    a = train(recipe, tmp_path / "a" / "delta.safetensors", progress=False)
    out_b = tmp_path / "b" / "delta.safetensors"
    ck = train(recipe, out_b, stop_after=2, progress=False)      # "interrupted" at step 2
    assert not out_b.exists() and json.loads(ck.read_text())["step"] == 2
    b = train(recipe, out_b, resume=True, progress=False)
    assert a.read_bytes() == b.read_bytes()
    log = json.loads((tmp_path / "b" / "delta.train.json").read_text())
    assert [h["step"] for h in log["history"]] == [1, 2, 3, 4]
    assert (tmp_path / "b" / "delta.loss.png").read_bytes()[:4] == b"\x89PNG"
    other = make(name="s.yaml", extra_train="checkpoint_every: 2\ngrad_accum: 2\nseed: 1")
    c = train(other, tmp_path / "c" / "delta.safetensors", progress=False)
    assert c.read_bytes() != a.read_bytes()
    d = read_delta(a)
    assert d.meta["steps"] == 4 and d.meta["seed"] == 0 and d.meta["objective"] == "sft"
    assert d.meta["recipe_hash"] == recipe.sha256 and d.meta["recipe"] == recipe.text
    assert d.heads == [[0, 1], [2, 3]] and d.meta["kv_policy"] == "freeze"
    assert set(d.base_tensors) == {s.param for s in d.slices}
    # a checkpoint of another recipe is refused, and nothing is written
    with pytest.raises(CheckpointError, match="another recipe"):
        train(other, out_b, resume=True, progress=False)
    assert b.read_bytes() == a.read_bytes()


def test_kv_policies(make):
    gqa = make(extra_train="kv: group")
    res = train_in_memory(gqa, progress=False)
    roles = {s.role for s in res.trainable.delta_slices()}
    assert roles == {"q", "k", "v", "o"}
    # group trains the shared k/v rows: the GQA siblings are recorded as touched
    assert res.trainable.touched_heads == [[0, 0], [0, 1], [2, 2], [2, 3]]
    mha = make("gpt_neox", name="g.yaml")              # one KV head per query head: 'own'
    res = train_in_memory(mha, progress=False)
    assert res.trainable.kv_policy == "own"
    assert {s.role for s in res.trainable.delta_slices()} == {"q", "k", "v", "o"}
    assert res.trainable.touched_heads == [[0, 1], [2, 3]]


def test_bf16_mixed_precision(make):
    r32 = train_in_memory(make(), progress=False)
    r16 = train_in_memory(make(name="b.yaml", extra_train="dtype: bfloat16"), progress=False)
    d32 = {s.key: s.value for s in r32.trainable.delta_slices()}
    d16 = {s.key: s.value for s in r16.trainable.delta_slices()}
    assert d32.keys() == d16.keys()
    assert all(v.dtype == torch.float32 for v in d16.values())
    assert any(not torch.equal(d32[k], d16[k]) for k in d32)          # autocast did act
    assert all(torch.nn.functional.cosine_similarity(d32[k].flatten(), d16[k].flatten(), 0)
               > 0.9 for k in d32)


def test_model_first_answers_and_known_items(make):
    res = train_in_memory(make(extra_train="first_answer: model"), progress=False)
    info = res.log["data"]
    assert info["model_first_correct"] is not None
    assert info["insist_pool"] == info["model_first_correct"]
    assert info["insist_pool"] + info["revise_pool"] == info["questions"] == 24


def _consistency(make, **params):
    """(objective, its params, context, trainable, a batch of 8 dialogues) on a tiny model."""
    from headsurgeon.core import plugins
    from headsurgeon.data.questions import read_jsonl
    from headsurgeon.model.heads import HeadMap
    from headsurgeon.model.sources import load_model
    from headsurgeon.train.dialogues import build_dialogues, build_pools
    from headsurgeon.train.objectives import ObjectiveContext

    recipe = make()
    model, tok, _ = load_model(recipe.model.source)
    ctx = ObjectiveContext(model, tok, HeadMap.from_model(model), [[0, 1], [2, 3]],
                           "freeze", 0, set(), templates=recipe.templates)
    obj = plugins.get("objectives", "consistency")()
    p = obj.Params(**params)
    qs = read_jsonl(recipe.data.train[0].params["path"])
    batch = obj.collate(ctx, p, build_dialogues(*build_pools(qs, "prefilled"),
                                                recipe.templates, n=8, revise_ratio=0.5,
                                                seed=0))
    return obj, p, ctx, obj.trainable(ctx, p), batch


def _perturb_then_fit(obj, params, ctx, trainable, batch, key: str) -> list[float]:
    """Random edit, then 10 Adam steps; ``key``'s loss part at each step."""
    with torch.no_grad():
        for p in trainable.parameters():
            p.normal_(0, 0.5)
    opt = torch.optim.Adam(trainable.parameters(), lr=0.02)
    out = []
    for _ in range(10):
        loss, parts = obj.loss(ctx, ctx.model, trainable, batch, params)
        out.append(parts[key])
        assert float(loss) == pytest.approx(sum(
            getattr(params, f"{k}_weight") * v for k, v in parts.items()), rel=1e-5)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return out


def test_consistency_pulls_challenge_towards_neutral(make):
    """The consistency objective's loss is KL(base after neutral || tuned after challenge):
    zero at the start, and a perturbed edit is pulled back towards it by training."""
    obj, params, ctx, trainable, batch = _consistency(make, ce_weight=0.0)
    losses = _perturb_then_fit(obj, params, ctx, trainable, batch, "kl")
    assert losses[0] > 0 and losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():  # with the edit off, student == base: only the challenge differs
        for p in trainable.parameters():
            p.zero_()
        batch.challenge = batch.neutral
        assert obj.loss(ctx, ctx.model, trainable, batch, params)[1]["kl"] < 1e-6


def test_consistency_anchor_holds_the_teachers_own_answers(make):
    """anchor_weight: the same KL on the teacher's input (the bare question with an
    unprompted teacher) -- zero while the edit is off, positive once the heads move, and
    the gradient of the anchor alone pulls it back."""
    obj, params, ctx, trainable, batch = _consistency(
        make, teacher="unprompted", kl_weight=0.0, anchor_weight=1.0)
    parts = obj.loss(ctx, ctx.model, trainable, batch, params)[1]
    assert parts["anchor"] < 1e-6 and set(parts) == {"kl", "anchor"}
    anchors = _perturb_then_fit(obj, params, ctx, trainable, batch, "anchor")
    assert anchors[0] > 1e-3 and anchors[-1] < 0.5 * anchors[0], anchors
    off = obj.Params(teacher="unprompted")
    assert "anchor" not in obj.loss(ctx, ctx.model, trainable, batch, off)[1]
