"""Frozen-prefix training (headsurgeon/train/prefix_cache.py): the delta trained with the
prefix cache equals the delta trained without it, on every registered tiny architecture,
with the objectives that need the base's outputs, through the disk path, and on
SmolLM2; a stale or corrupted entry is never used, and the cache is really read (a
forged entry changes the delta, so the equality tests can fail)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from headsurgeon.model.tiny import TINY_ARCHS, build_tiny
from headsurgeon.train.run import train_in_memory

from train_helpers import one_thread, tiny_recipe  # noqa: F401 - one torch thread


@pytest.fixture(autouse=True)
def _own_cwd(tmp_path, monkeypatch):
    """Recipes without output_dir write under ./runs: each test gets its own, so a cache
    left by an earlier run cannot change the counts asserted here."""
    monkeypatch.chdir(tmp_path)

HEADS = "[[1, 1], [2, 3]]"  # lowest trained layer 1 of 3: layer 0 is the cached prefix


def _deltas(result) -> dict:
    return {s.key: s.value for s in result.trainable.delta_slices()}


def _rel(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    num = max(float((a[k] - b[k]).abs().max()) for k in a)
    den = max(float(a[k].abs().max()) for k in a)
    assert den > 0  # training moved the slices: an all-zero delta proves nothing
    return num / den


def _train(tmp: Path, model_dir: Path, tag: str, extra: str = "", heads: str = HEADS,
           steps: int = 4):
    """Train (12 dialogues, 4 steps x 4: dialogues repeat) from ``tmp/tag/r.yaml``; its
    run directory is ``tmp/tag/run`` (runs with the same tag share it)."""
    d = tmp / tag
    d.mkdir(parents=True, exist_ok=True)
    recipe = tiny_recipe(d, model_dir, heads=heads, extra_train=extra, steps=steps)
    return train_in_memory(recipe, progress=False)


def _no_dropout_copy(src: Path, dst: Path) -> Path:
    """``src`` with every dropout rate in its config set to 0."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for k, v in cfg.items():
        if ("pdrop" in k or "dropout" in k) and isinstance(v, float):
            cfg[k] = 0.0
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_architecture_same_delta(arch, tiny_dirs, tmp_path):
    model_dir = tiny_dirs[arch]
    if arch == "gpt2":  # GPT-2 trains with dropout: see test_dropout_turns_the_cache_off
        model_dir = _no_dropout_copy(model_dir, tmp_path / "gpt2-nodrop")
    off = _train(tmp_path, model_dir, "off", "prefix_cache: off")
    on = _train(tmp_path, model_dir, "on")
    info = on.log["prefix_cache"]
    assert off.log["prefix_cache"] == {"used": False, "reason": "train.prefix_cache is off"}
    assert info["used"] and info["layer"] == 1
    assert info["rows_computed"] == 12 and info["rows_reused"] == 4  # 16 rows, 12 dialogues
    assert info["forwards_full"] == 0 and info["forwards_from_cache"] == 4
    assert _rel(_deltas(off), _deltas(on)) <= 1e-6


def test_dropout_turns_the_cache_off(tiny_dirs, tmp_path):
    res = _train(tmp_path, tiny_dirs["gpt2"], "drop")
    assert res.log["prefix_cache"]["used"] is False
    assert "dropout" in res.log["prefix_cache"]["reason"]


@pytest.mark.parametrize("objective", ["sft_anchor", "consistency", "sft_kl", "lora_heads"])
def test_objectives_with_base_outputs_same_delta(objective, tiny_dirs, tmp_path):
    model_dir = tiny_dirs["llama"]
    extra = f"objective: {objective}"
    off = _train(tmp_path, model_dir, "off", extra + "\nprefix_cache: off")
    on = _train(tmp_path, model_dir, "on", extra)
    info = on.log["prefix_cache"]
    assert info["used"] and info["layer"] == 1 and info["rows_reused"] > 0
    assert info["forwards_full"] == 0  # the student, anchor and teacher passes all cached
    assert _rel(_deltas(off), _deltas(on)) <= 1e-6


def test_decided_from_trainable_parameters(tiny_dirs, tmp_path):
    """Not from the objective's name: full SFT and peft LoRA train layer 0 or outside the
    layers (no cache); random heads use their own lowest layer."""
    model_dir = tiny_dirs["llama"]
    for name in ("full_sft", "lora"):
        res = _train(tmp_path, model_dir, name, f"objective: {name}", steps=2)
        assert res.log["prefix_cache"]["used"] is False, name
    res = _train(tmp_path, model_dir, "high", heads="[[2, 0], [2, 3]]")
    assert res.log["prefix_cache"]["layer"] == 2
    seed = _random_heads_seed(model_dir)  # seeded random heads all above layer 0
    rnd = _train(tmp_path, model_dir, "rnd", f"objective: {{name: random_heads, seed: {seed}}}")
    info = rnd.log["prefix_cache"]
    assert info["used"] and info["layer"] == min(h[0] for h in rnd.trainable.heads) >= 1
    off = _train(tmp_path, model_dir, "rnd-off", f"objective: {{name: random_heads, seed: "
                 f"{seed}}}\nprefix_cache: off")
    assert _rel(_deltas(off), _deltas(rnd)) <= 1e-6


def _random_heads_seed(model_dir: Path) -> int:
    from headsurgeon.model.heads import HeadMap
    from headsurgeon_plugins.objectives.baselines import random_heads

    hm = HeadMap.from_config(json.loads((model_dir / "config.json").read_text()))
    return next(s for s in range(100)
                if min(h[0] for h in random_heads(hm, 2, s, [(1, 1), (2, 3)])) >= 1)


def _files(run: Path) -> list[Path]:
    return sorted((run / "cache" / "prefix").glob("*/*.safetensors"))


def test_disk_streaming_same_delta(tiny_dirs, tmp_path):
    model_dir = tiny_dirs["qwen2"]
    off = _train(tmp_path, model_dir, "off", "prefix_cache: off")
    disk = _train(tmp_path, model_dir, "disk", "prefix_cache_mb: 0")
    info = disk.log["prefix_cache"]
    assert info["memory_rows"] == 0 and info["disk_rows_written"] == 12
    assert info["disk_rows_read"] == 4 and info["disk_rows_rejected"] == 0
    assert len(_files(tmp_path / "disk" / "run")) == 12
    assert _rel(_deltas(off), _deltas(disk)) <= 1e-6
    # a budget for about half the rows: the rest streams from disk
    half = sum(f.stat().st_size for f in _files(tmp_path / "disk" / "run")) / 2 / 2 ** 20
    part = _train(tmp_path, model_dir, "part", f"prefix_cache_mb: {half:.4f}")
    info = part.log["prefix_cache"]
    # every row is written through beside the run; those past the budget are read back
    assert 0 < info["memory_rows"] < 12 and info["disk_rows_written"] == 12
    assert info["disk_rows_read"] > 0
    assert _rel(_deltas(off), _deltas(part)) <= 1e-6


def _rewrite(path: Path, change, keep_digest: bool) -> None:
    """Change the stored states of one entry; keep or refresh its header's digest."""
    from safetensors import safe_open
    from safetensors.torch import save

    from headsurgeon.train.prefix_store import tensor_digest

    with safe_open(str(path), framework="pt") as fh:
        meta, value = dict(fh.metadata()), fh.get_tensor("hidden")
    value = change(value)
    if not keep_digest:
        meta["digest"] = tensor_digest(value)
    path.write_bytes(save({"hidden": value}, metadata=meta))


def test_stale_or_corrupted_entries_are_not_used(tiny_dirs, tmp_path):
    model_dir = tiny_dirs["llama"]
    run = tmp_path / "shared" / "run"
    off = _deltas(_train(tmp_path, model_dir, "off", "prefix_cache: off"))
    first = _train(tmp_path, model_dir, "shared", "prefix_cache_mb: 0")
    assert _rel(off, _deltas(first)) <= 1e-6
    files = _files(run)
    assert len(files) == 12
    # a second run reads the entries back (none recomputed)
    again = _train(tmp_path, model_dir, "shared", "prefix_cache_mb: 0")
    assert again.log["prefix_cache"]["disk_rows_written"] == 0
    assert again.log["prefix_cache"]["disk_rows_read"] == 16
    # corrupted bytes (header unchanged): rejected, recomputed, same delta
    for f in files:
        _rewrite(f, lambda v: v + 1.0, keep_digest=True)
    fixed = _train(tmp_path, model_dir, "shared", "prefix_cache_mb: 0")
    assert fixed.log["prefix_cache"]["disk_rows_rejected"] == 12
    assert _rel(off, _deltas(fixed)) <= 1e-6
    # a forged entry (digest refreshed) IS read: the equality above can fail
    for f in files:
        _rewrite(f, lambda v: v * 3.0, keep_digest=False)
    forged = _train(tmp_path, model_dir, "shared", "prefix_cache_mb: 0")
    assert forged.log["prefix_cache"]["disk_rows_read"] == 16
    assert _rel(off, _deltas(forged)) > 1e-3


def test_other_weights_or_layer_get_their_own_entries(tiny_dirs, tmp_path):
    """Same model directory rewritten with other weights, same run directory: the key
    (the prefix's weights) changes, nothing stale is read."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_dirs["llama"], model_dir)
    run = tmp_path / "shared" / "run"
    old = _deltas(_train(tmp_path, model_dir, "shared", "prefix_cache_mb: 0"))
    build_tiny("llama", model_dir, seed=1)  # new weights at the same path
    off = _deltas(_train(tmp_path, model_dir, "off", "prefix_cache: off"))
    new = _train(tmp_path, model_dir, "shared", "prefix_cache_mb: 0")
    assert new.log["prefix_cache"]["disk_rows_written"] == 12  # nothing reused
    assert _rel(off, _deltas(new)) <= 1e-6
    assert _rel(off, old) > 1e-3  # reusing the old entries would have shown
    higher = _train(tmp_path, model_dir, "shared", "prefix_cache_mb: 0",
                    heads="[[2, 0], [2, 3]]")
    assert higher.log["prefix_cache"]["disk_rows_written"] == 12
    assert len({f.parent for f in _files(run)}) == 3  # one folder per key


def test_forward_rows_hit_and_miss(tiny_dirs):
    """The hooked forward gives the plain forward's logits for right- and left-padded
    batches mixing cached and new rows; a mutated in-memory entry changes them (used)."""
    from headsurgeon.model.heads import HeadMap
    from headsurgeon.model.sources import load_model
    from headsurgeon.train.prefix_cache import prefix_cache_for
    from headsurgeon.train.trainable import slice_trainable

    model, _, _ = load_model(str(tiny_dirs["qwen2"]))
    hm = HeadMap.from_model(model)
    tr = slice_trainable(model, hm, [(2, 1)], hm.resolve_kv("auto"))
    ids = torch.randint(0, 250, (3, 9), generator=torch.Generator().manual_seed(0))
    right = torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [1] * 7 + [0] * 2])
    left = right.flip(1)
    pos = (left.cumsum(-1) - 1).clamp(min=0)
    calls = [dict(input_ids=ids, attention_mask=right),
             dict(input_ids=ids[:2], attention_mask=right[:2]),
             dict(input_ids=ids, attention_mask=left, position_ids=pos)]
    with torch.no_grad():
        plain = [model(**kw).logits for kw in calls]
        cache = prefix_cache_for(tr, hm, training=False).install()
        try:
            cached = [model(**kw).logits for kw in calls]
            # rows are keyed by their tokens and positions, not by padding: the full row 0
            # is reused by the second and the left-padded call
            assert cache.stats["rows_reused"] == 3 and cache.stats["rows_computed"] == 5
            for kw, a, b in zip(calls, plain, cached):
                real = kw["attention_mask"].bool()
                assert torch.allclose(a[real], b[real], rtol=1e-6, atol=1e-6)
            next(iter(cache.store.memory.values())).mul_(2.0)
            assert any(not torch.allclose(p, model(**kw).logits) for kw, p in zip(calls, plain))
        finally:
            cache.remove()
        assert torch.equal(model(**calls[0]).logits, plain[0])  # removed: the plain model
    assert cache.layer == 2


def test_base_log_probs_once_per_row(tiny_dirs):
    from headsurgeon.model.heads import HeadMap
    from headsurgeon.model.sources import load_model
    from headsurgeon.train.objectives import BaseLogProbs, TrainBatch, forward_logits
    from headsurgeon.train.trainable import slice_trainable

    model, _, _ = load_model(str(tiny_dirs["llama"]))
    hm = HeadMap.from_model(model)
    tr = slice_trainable(model, hm, [(1, 0)], hm.resolve_kv("auto"))
    with torch.no_grad():
        tr.named[0][1].normal_()  # the edit moves the model: the teacher must be the base
        ids = torch.randint(0, 250, (2, 8), generator=torch.Generator().manual_seed(1))
        mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
        batch = TrainBatch(ids, mask, ids)
        with tr.base():
            want = torch.log_softmax(forward_logits(model, batch).float(), -1)
        teacher = BaseLogProbs()
        first = teacher.log_probs(model, tr, batch)
        assert teacher.exact and len(teacher.rows) == 2
        second = teacher.log_probs(model, tr, batch)  # from the kept rows
        real = mask.bool()
        assert torch.allclose(first[real], want[real], rtol=1e-6, atol=1e-6)
        assert torch.allclose(second[real], want[real], rtol=1e-6, atol=1e-6)
        next(iter(teacher.rows.values())).add_(1.0)
        assert not torch.allclose(teacher.log_probs(model, tr, batch)[real], want[real])


def test_smollm2_same_delta(tmp_path):
    """SmolLM2-135M (fp32) with heads in layers 20-29, as located: 3 steps x 2 of 4
    dialogues, with and without the cache, on the same loaded model."""
    from headsurgeon.model.sources import load_model

    from train_helpers import load, recipe_text, write_questions

    model, tok, _ = load_model("smollm2-135m-instruct", attn_implementation="sdpa")
    data = write_questions(tmp_path / "train.jsonl", 8)
    deltas, logs = [], []
    for mode in ("off", "auto"):
        text = recipe_text("smollm2-135m-instruct", data, heads="[[20, 1], [24, 3], [29, 7]]",
                           steps=3, lr=0.001, extra_train=f"prefix_cache: {mode}")
        text = text.replace("batch_size: 4", "batch_size: 2").replace("n_examples: 12",
                                                                      "n_examples: 4")
        (tmp_path / f"{mode}.yaml").write_text(text)
        res = train_in_memory(load(tmp_path / f"{mode}.yaml"), model=model, tokenizer=tok,
                              progress=False)
        deltas.append(_deltas(res))
        logs.append(res.log["prefix_cache"])
        res.trainable.detach()
    assert logs[1]["used"] and logs[1]["layer"] == 20 and logs[1]["rows_reused"] == 2
    assert _rel(deltas[0], deltas[1]) <= 1e-6
