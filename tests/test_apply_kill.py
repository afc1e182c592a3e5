"""SIGKILL apply at many moments: ``out`` is always absent or complete and verified, and
the base is never modified. Stale partials left by the kills are cleaned by later applies
when their owner is provably dead (their flock can be taken)."""
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from headsurgeon.model import safetensors_io as sio

from headsurgeon.model import safetensors_write as siw
from headsurgeon.model.delta import DeltaSlice, base_tensor_hashes, write_delta
from headsurgeon.model.heads import HeadMap
from headsurgeon.apply.inspect import inspect_checkpoint

HIDDEN, INTER, LAYERS, HEADS, KV, VOCAB = 512, 1408, 6, 8, 4, 1024
SHARD_BYTES = 8 << 20
N_FRESH, N_FORKED = 2, 20  # 22 kills: a few of fresh `python -c` processes, the rest forked

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
          "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
          "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": VOCAB,
          "torch_dtype": "bfloat16"}


def _layout():
    d = HIDDEN // HEADS
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (HIDDEN,)),
                (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
                (p + "self_attn.k_proj.weight", (KV * d, HIDDEN)),
                (p + "self_attn.v_proj.weight", (KV * d, HIDDEN)),
                (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
                (p + "post_attention_layernorm.weight", (HIDDEN,)),
                (p + "mlp.gate_proj.weight", (INTER, HIDDEN)),
                (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
                (p + "mlp.down_proj.weight", (HIDDEN, INTER))]
    return out + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def build_synthetic(root):
    """~45 MB bf16 Llama-like checkpoint in ~8 MB shards, written with our own writer."""
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    shards, cur, size = [], [], 0
    for name, shape in _layout():
        n = torch.Size(shape).numel() * 2
        if cur and size + n > SHARD_BYTES:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    shards.append(cur)
    wmap = {}
    for i, group in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        siw.save_tensors(root / fname, {n: (torch.randn(*s, generator=g) * 0.02)
                                        .to(torch.bfloat16) for n, s in group},
                         {"format": "pt"}, atomic=False)
        wmap.update({n: fname for n, _ in group})
    total = sum(torch.Size(s).numel() * 2 for _, s in _layout())
    (root / sio.INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total},
                                                   "weight_map": wmap}, indent=2))
    (root / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (root / "tokenizer_config.json").write_text("{}")
    return root


def make_delta(base, path):
    idx = sio.read_checkpoint_index(base)
    hm = HeadMap.from_config(CONFIG, param_names=list(idx))
    g = torch.Generator().manual_seed(1)
    slices = []
    for ps in hm.slices_for([(1, 3), (4, 0), (4, 1)], kv="group"):
        shape = list(idx.info(ps.param).shape)
        shape[ps.axis] = ps.stop - ps.start
        slices.append(DeltaSlice(ps.param, ps.axis, ps.start, ps.stop, ps.role, [],
                                 torch.randn(*shape, generator=g) * 0.01))
    write_delta(path, slices, base_tensors=base_tensor_hashes(base, [s.param for s in slices]),
                meta={"base_model": "synthetic/llama", "heads": [[1, 3], [4, 0], [4, 1]],
                      "recipe": "synthetic: true\n"})
    return path


SERVER = r"""
import os, sys
from headsurgeon.apply.run import apply_delta
base, delta, out = sys.argv[1:4]
print("ready", flush=True)
for line in sys.stdin:  # "go": fork an apply; the next line: reap it
    pid = os.fork()
    if pid == 0:
        try:
            apply_delta(base, delta, out, progress=False)
        except BaseException as exc:
            sys.stderr.write(f"apply failed: {exc!r}\n")
            os._exit(3)
        os._exit(0)
    print(pid, flush=True)
    sys.stdin.readline()  # the child stays unreaped (its pid ours) until the test says so
    print("exit", os.waitpid(pid, 0)[1], flush=True)
"""

FRESH = ("import sys; from headsurgeon.apply.run import apply_delta; print('ready', flush=True); "
         "apply_delta(*sys.argv[1:4], progress=False)")


def _readline(proc, timeout=60):
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    assert r, "subprocess hung"
    return proc.stdout.readline().strip()


def _base_hashes(base):
    return {p.name: sio.file_sha256(p) for p in sorted(base.iterdir())}


def test_sigkill_never_leaves_a_broken_output(tmp_path):
    base = build_synthetic(tmp_path / "base")
    delta = make_delta(base, tmp_path / "d.safetensors")
    out = tmp_path / "out"
    before = _base_hashes(base)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    args = [str(base), str(delta), str(out)]
    server = subprocess.Popen([sys.executable, "-c", SERVER, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert _readline(server) == "ready"

        def forked_run(kill_after):
            server.stdin.write("go\n")
            server.stdin.flush()
            pid, t0 = int(_readline(server)), time.monotonic()
            if kill_after is not None:
                time.sleep(kill_after)
                os.kill(pid, signal.SIGKILL)  # unreaped, so the pid cannot have been reused
            server.stdin.write("reap\n")
            server.stdin.flush()
            status = _readline(server).split()
            return time.monotonic() - t0, int(status[1])

        # calibration: uninterrupted runs give the reference output and the runtime
        durations = []
        for _ in range(2):
            shutil.rmtree(out, ignore_errors=True)
            d, status = forked_run(None)
            assert status == 0
            durations.append(d)
        duration = max(durations)
        ref = json.loads((out / "headsurgeon.json").read_text())
        assert inspect_checkpoint(out)["ok"]
        shutil.rmtree(out)

        rng = random.Random(1234)
        outcomes = []

        def check(killed_status):
            if out.exists():  # the kill came after the rename: must be complete and verified
                rep = inspect_checkpoint(out)
                assert rep["ok"], rep["problems"]
                man = json.loads((out / "headsurgeon.json").read_text())
                assert man == ref
                shutil.rmtree(out)
                outcomes.append("complete")
            else:
                assert killed_status != 0
                outcomes.append("absent")
            assert _base_hashes(base) == before
            for p in tmp_path.glob(".out.*"):  # leftovers are never taken for the output
                assert p.name.endswith((".partial", ".partial.lock")) or p.name == ".out.lock", p

        # kill moments: stratified over [0, 1.3 x calibrated runtime] so they spread over
        # the whole run, a few landing after it (later runs also remove the previous
        # kill's partial, so are slower)
        moments = [duration * 1.3 * (i + rng.random()) / N_FORKED for i in range(N_FORKED)]
        rng.shuffle(moments)
        for at in moments:
            _, status = forked_run(at)
            check(status)
        for _ in range(N_FRESH):
            proc = subprocess.Popen([sys.executable, "-c", FRESH, *args],
                                    stdout=subprocess.PIPE, text=True, env=env)
            assert _readline(proc) == "ready"
            time.sleep(rng.uniform(0, duration))
            proc.kill()
            check(proc.wait())
        # (how many kills land mid-apply depends on the machine's speed: the barrier
        # test below is the one that kills at fixed points)

        # a clean run afterwards removes every partial whose owner is provably dead
        _, status = forked_run(None)
        assert status == 0 and inspect_checkpoint(out)["ok"]
        left = sorted(tmp_path.glob(".out.*"))
        assert not [p for p in left if p.name.endswith(".lock")], left
        # partials left are only those of kills between mkdtemp and take_lock: no lock yet
    finally:
        server.stdin.close()
        server.wait(timeout=30)


def test_sigkill_at_fixed_points_of_an_apply(tmp_path):
    """Kills at barriers in the child (no timing): right after it locked the output,
    after it locked its partial, after its first and after its last shard. Each leaves no
    output; the next apply removes every leftover and writes an output that verifies."""
    import reliability_corpus as rc
    from kill_harness import ForkServer, Pause

    from headsurgeon.model.tiny import build_tiny

    base = build_tiny("llama", tmp_path / "base", max_shard_size="20KB")  # 10 shards
    delta = tmp_path / "d.safetensors"
    rc.make_delta(base, delta)
    out = tmp_path / "out"
    before = _base_hashes(base)
    n_shards = len(sio.read_checkpoint_index(base).shards)
    args = ["apply", "--base", str(base), "--delta", str(delta), "--out", "out"]
    points = [("lock_target", 1), ("take_lock", 1), ("_do_shard", 1), ("_do_shard", n_shards)]
    server = ForkServer()
    try:
        for i, (fn, calls) in enumerate(points):
            pause = Pause(f"headsurgeon.apply.run:{fn}", tmp_path / "barrier.sock",
                          calls=calls)
            code, _ = server.run(args, tmp_path, tmp_path / f"kill{i}.log", kill_at=pause)
            assert code is None and not out.exists(), (fn, calls)
            assert _base_hashes(base) == before
            left = sorted(p.name for p in tmp_path.glob(".out*"))
            assert all(n == ".out.lock" or n.endswith((".partial", ".partial.lock"))
                       for n in left), left
            if fn != "lock_target":  # a partial, and its lock that outlived the process
                assert [n for n in left if n.endswith(".partial.lock")] != [], left
            # each apply first removes the partial the kill before it left behind
            removed = (tmp_path / f"kill{i}.log").read_text().count("removed stale")
            assert removed == (1 if i >= 2 else 0), (i, removed)
        code, _ = server.run(args, tmp_path, tmp_path / "clean.log")
        log = (tmp_path / "clean.log").read_text()
        assert code == 0, log[-2000:]
        assert log.count("removed stale") == 1, log[-2000:]
    finally:
        server.close()
    assert inspect_checkpoint(out)["ok"]
    assert sorted(tmp_path.glob(".out*")) == []
