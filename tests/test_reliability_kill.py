"""SIGKILL during train and locate, and byte determinism across processes.

train: killed at seeded random moments again and again, each run resuming the last
(``train --resume``); the delta finally written is byte-identical to an uninterrupted
run's, and no kill ever leaves a partial delta or a checkpoint JSON naming a missing or
different tensor file. locate: a kill never leaves a partial ``heads.json`` and a rerun
writes the same bytes. A second server with another hash seed (a fresh interpreter)
produces the same ``heads.json`` and delta.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest

from kill_harness import ForkServer, Pause

RECIPE = """name: k
model: {{source: {model}}}
data:
  locate: [{{name: builtin, set: arithmetic, split: locate, n: 8}}]
  train: [{{name: builtin, set: arithmetic, split: train, n: 16}}]
locate: {{n_probes: 8, top_k: 2, k_max: 3, knockout_random_sets: 3, batch_size: 4}}
train: {{steps: 12, batch_size: 4, n_examples: 16, lr: 1e-3, checkpoint_every: 1}}
"""
N_TRAIN_KILLS, N_LOCATE_KILLS = 5, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from headsurgeon.model.tiny import build_tiny

    root = tmp_path_factory.mktemp("kills")
    model = build_tiny("llama", root / "tiny")
    server = ForkServer({"PYTHONHASHSEED": "1", "HEADSURGEON_CACHE": str(root / "cache")})
    ref = root / "ref"
    ref.mkdir()
    (ref / "r.yaml").write_text(RECIPE.format(model=model))
    times = {}
    for cmd in ("locate", "train"):
        code, times[cmd] = server.run([cmd, "r.yaml"], ref, ref / f"{cmd}.log")
        assert code == 0, (ref / f"{cmd}.log").read_text()[-2000:]
    yield {"root": root, "model": model, "server": server, "ref": ref / "runs" / "k",
           "times": times}
    server.close()


def _workdir(setup, name: str, with_heads: bool) -> Path:
    d = setup["root"] / name
    d.mkdir()
    (d / "r.yaml").write_text(RECIPE.format(model=setup["model"]))
    if with_heads:
        (d / "runs" / "k").mkdir(parents=True)
        shutil.copy(setup["ref"] / "heads.json", d / "runs" / "k" / "heads.json")
    return d


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _moments(duration: float, n: int, seed: int) -> list[float]:
    """Stratified over [0.1, 1.1] x the calibrated duration, shuffled (seeded)."""
    rng = random.Random(seed)
    out = [duration * (0.1 + (i + rng.random()) / n) for i in range(n)]
    rng.shuffle(out)
    return out


def _step(ck: Path) -> int:
    try:
        return json.loads(ck.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_train_sigkill_then_resume_gives_the_same_delta(setup):
    """Kill points: two at barriers right after a checkpoint was written (deterministic:
    each next run resumes from exactly that step), then one while the model loads, then
    after a seeded random step plus a random part of a step, so kills also land inside
    steps and between the tensor and JSON writes of a checkpoint."""
    d = _workdir(setup, "train-kills", with_heads=True)
    run, ref = d / "runs" / "k", setup["ref"] / "delta.safetensors"
    ck, server = run / "delta.ckpt.json", setup["server"]
    # first two deterministic kills, each right after a checkpoint was written (a barrier
    # in the child, no timing): the next run resumes mid-run from exactly that step
    for i, (calls, step) in enumerate([(3, 3), (2, 5)]):
        pause = Pause("headsurgeon.train.checkpoint:Checkpoints.save", d / "barrier.sock",
                      calls=calls)
        code, _ = server.run(["train", "r.yaml", "--resume"], d, d / f"barrier{i}.log",
                             kill_at=pause)
        assert code is None and not (run / "delta.safetensors").exists()
        assert _step(ck) == step, (d / f"barrier{i}.log").read_text()[-2000:]
    rng = random.Random(8)
    targets = sorted(rng.sample(range(1, 12), N_TRAIN_KILLS - 1))
    plan = [(lambda: True, rng.uniform(0, 0.3))] + [
        (lambda t=t: _step(ck) >= t, rng.uniform(0, 0.08)) for t in targets]
    for i, (when, then) in enumerate(plan):
        code, _ = server.run(["train", "r.yaml", "--resume"], d, d / f"kill{i}.log",
                             kill_when=when, then=then)
        delta = run / "delta.safetensors"
        assert code in (0, None), (d / f"kill{i}.log").read_text()[-2000:]
        if delta.exists():  # the kill came after its rename (or never): complete, the same
            assert _sha(delta) == _sha(ref)
            delta.unlink()  # the next run must resume and write it again
        else:
            assert code is None
        if ck.exists():  # the JSON always names a complete tensor file of its step
            meta = json.loads(ck.read_text())
            assert _sha(run / meta["tensors_file"]) == meta["tensors_sha256"]
        for p in run.iterdir():  # leftovers are hidden temporaries, never real names
            assert p.name.startswith(".") or p.name in (
                "heads.json", "delta.ckpt.json", "delta.train.json", "delta.loss.png",
                "cache",  # the run's caches (the frozen prefix's states, written through)
            ) or p.name.startswith("delta.ckpt-"), p
    code, _ = server.run(["train", "r.yaml", "--resume"], d, d / "final.log")
    assert code == 0, (d / "final.log").read_text()[-2000:]
    assert _sha(run / "delta.safetensors") == _sha(ref)


def test_checkpoint_survives_a_crash_between_its_two_writes(tmp_path, monkeypatch):
    """The moment a random kill rarely hits: tensors renamed into place, JSON not yet.
    The JSON still names the previous step's complete file, so resume works."""
    import torch

    from headsurgeon.train import checkpoint as tc

    ck = tc.Checkpoints(tmp_path / "delta.safetensors")
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    meta = {"recipe_hash": "r", "train_hash": "t", "objective": "sft", "heads": [[0, 1]]}
    ck.save(1, [("w", p)], opt, meta)
    with torch.no_grad():
        p.add_(1)
    real = tc.atomic_write_json
    monkeypatch.setattr(tc, "atomic_write_json",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ck.save(2, [("w", p)], opt, meta)
    monkeypatch.setattr(tc, "atomic_write_json", real)
    state = ck.load(recipe_hash="r", train_hash="t", objective="sft", heads=[[0, 1]])
    assert state.step == 1 and torch.equal(state.tensors["param/w"], torch.ones(3))
    ck.save(3, [("w", p)], opt, meta)  # the orphaned step-2 file is removed
    assert sorted(f.name for f in tmp_path.glob("*.ckpt-*")) == ["delta.ckpt-0000003.safetensors"]


def test_locate_sigkill_leaves_no_partial_heads_json(setup):
    d = _workdir(setup, "locate-kills", with_heads=False)
    heads, ref = d / "runs" / "k" / "heads.json", setup["ref"] / "heads.json"
    server = setup["server"]
    # a deterministic kill first: right after the first figure was written, heads.json not
    pause = Pause("headsurgeon.locate.run:atomic_write_bytes", d / "barrier.sock")
    code, _ = server.run(["locate", "r.yaml"], d, d / "barrier.log", kill_at=pause)
    assert code is None and not heads.exists()
    assert (d / "runs" / "k" / "heads_heatmap.png").is_file()
    for i, at in enumerate(_moments(setup["times"]["locate"], N_LOCATE_KILLS, seed=9)):
        code, _ = server.run(["locate", "r.yaml"], d, d / f"kill{i}.log", kill_after=at)
        if heads.exists():  # only ever complete
            assert heads.read_bytes() == ref.read_bytes()
            assert code in (0, None)
            heads.unlink()
        else:
            assert code is None
    code, _ = server.run(["locate", "r.yaml"], d, d / "final.log")
    assert code == 0 and heads.read_bytes() == ref.read_bytes()


def test_fresh_process_gives_identical_heads_and_delta(setup):
    """Same recipe and seeds, another interpreter with another hash seed."""
    other = ForkServer({"PYTHONHASHSEED": "4242",
                        "HEADSURGEON_CACHE": str(setup["root"] / "cache2")})
    try:
        d = _workdir(setup, "fresh", with_heads=False)
        for cmd in ("locate", "train"):
            code, _ = other.run([cmd, "r.yaml"], d, d / f"{cmd}.log")
            assert code == 0, (d / f"{cmd}.log").read_text()[-2000:]
    finally:
        other.close()
    for name in ("heads.json", "delta.safetensors"):
        assert _sha(d / "runs" / "k" / name) == _sha(setup["ref"] / name), name
