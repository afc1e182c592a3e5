"""Benchmark apply_delta on a synthetic multi-GB sharded checkpoint.

Prints merge throughput vs plain ``cp -r`` (and ``cp -r`` + fsync) of the same checkpoint,
from and to the same directory, runs interleaved, with the base warm in the page cache and
cold-ish (its pages dropped with fadvise); peak RSS of the apply process vs the largest
shard (over an interpreter that just imported headsurgeon.apply + torch); and peft
``merge_and_unload`` + ``save_pretrained`` on the same checkpoint. Last line:
``BENCH apply throughput_vs_cp=X peak_rss_over_shard=X`` (warm, best of the runs).

    python bench/apply.py                 # ~3 GB
    python bench/apply.py --size-gb 0.3   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from headsurgeon.model import safetensors_io as sio  # noqa: E402

from headsurgeon.model import safetensors_write as siw
from headsurgeon.model.delta import DeltaSlice, base_tensor_hashes, write_delta  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def geometry(size_gb: float) -> dict:
    """Llama-7B-like shapes at >= 2 GB, a scaled-down Llama below; layers fill the size."""
    if size_gb >= 2:
        g = dict(hidden=4096, inter=11008, heads=32, kv=8, vocab=32000)
    else:
        g = dict(hidden=1024, inter=2816, heads=16, kv=4, vocab=8192)
    d = g["hidden"] // g["heads"]
    per_layer = 2 * (2 * g["hidden"] ** 2 + 2 * g["kv"] * d * g["hidden"]
                     + 3 * g["hidden"] * g["inter"] + 2 * g["hidden"])
    fixed = 2 * (2 * g["vocab"] * g["hidden"] + g["hidden"])
    g["layers"] = max(1, round((size_gb * 1e9 - fixed) / per_layer + 0.49))
    return g


def config_of(g: dict) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "hidden_size": g["hidden"], "intermediate_size": g["inter"],
            "num_hidden_layers": g["layers"], "num_attention_heads": g["heads"],
            "num_key_value_heads": g["kv"], "vocab_size": g["vocab"],
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}


def layout(g: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, d = g["hidden"], g["hidden"] // g["heads"]
    out = [("model.embed_tokens.weight", (g["vocab"], h))]
    for i in range(g["layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (g["kv"] * d, h)),
                (p + "self_attn.v_proj.weight", (g["kv"] * d, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (g["inter"], h)),
                (p + "mlp.up_proj.weight", (g["inter"], h)),
                (p + "mlp.down_proj.weight", (h, g["inter"]))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (g["vocab"], h))]


def build_checkpoint(root: Path, g: dict, shard_bytes: int, dtype: torch.dtype) -> list[int]:
    """Write shards with the streaming writer; tensor data are windows of one random
    pool (generation speed is not what is measured). Returns the shard sizes."""
    root.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    pool = (torch.randn(48 << 20, generator=gen) * 0.02).to(dtype)
    groups, cur, size = [], [], 0
    for name, shape in layout(g):
        n = torch.Size(shape).numel() * 2
        if cur and size + n > shard_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    groups.append(cur)
    wmap, pos = {}, 0
    for i, group in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        entries = [(n, sio.dtype_tag(dtype), s) for n, s in group]
        with siw.SafetensorsWriter(root / fname, entries, {"format": "pt"}) as w:
            for name, shape in group:
                numel = torch.Size(shape).numel()
                parts, left = [], numel
                while left:
                    start = pos % pool.numel()
                    take = min(left, pool.numel() - start)
                    parts.append(pool[start:start + take])
                    left -= take
                    pos += take + 7919  # shift the window so tensors differ
                w.write(name, torch.cat(parts).reshape(shape))
        wmap.update({n: fname for n, _ in group})
    total = sum(torch.Size(s).numel() * 2 for _, s in layout(g))
    (root / sio.INDEX_FILE).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": wmap}, indent=2))
    (root / "config.json").write_text(json.dumps(config_of(g), indent=2))
    (root / "generation_config.json").write_text('{"bos_token_id": 1, "eos_token_id": 2}')
    (root / "tokenizer_config.json").write_text("{}")
    return [p.stat().st_size for p in sorted(root.glob("*.safetensors"))]


def build_delta(base: Path, path: Path, heads, config) -> Path:
    from headsurgeon.model.heads import HeadMap

    idx = sio.read_checkpoint_index(base)
    hm = HeadMap.from_config(config, param_names=list(idx))
    gen = torch.Generator().manual_seed(1)
    slices = []
    for ps in hm.slices_for(heads, kv="group"):
        shape = list(idx.info(ps.param).shape)
        shape[ps.axis] = ps.stop - ps.start
        slices.append(DeltaSlice(ps.param, ps.axis, ps.start, ps.stop, ps.role, [],
                                 torch.randn(*shape, generator=gen) * 0.01))
    write_delta(path, slices, base_tensors=base_tensor_hashes(base, [s.param for s in slices]),
                meta={"base_model": "synthetic/llama", "heads": [list(h) for h in heads],
                      "kv_policy": "group", "recipe": "bench: true\n"})
    return path


# Peak RSS is VmHWM of the child's own address space: ru_maxrss would be polluted by this
# (large) parent, whose high-water mark Linux carries over the child's fork + exec.
HWM = ("def hwm():\n    for line in open('/proc/self/status'):\n        if line.startswith("
       "'VmHWM:'):\n            return int(line.split()[1])\n")
APPLY = (HWM + "import json, sys, time\nfrom headsurgeon.apply.run import apply_delta\n"
         "t = time.perf_counter()\napply_delta(*sys.argv[1:4], progress=False)\n"
         "dt = time.perf_counter() - t\nprint(json.dumps({'seconds': dt, 'rss_kb': hwm()}))")
BASELINE = (HWM + "import json, torch, headsurgeon.apply.run\n"
            "print(json.dumps({'rss_kb': hwm()}))")


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_json(code: str, *args: str) -> dict:
    cpu = _child_cpu()
    out = subprocess.run([sys.executable, "-c", code, *args], env=ENV, check=True,
                         capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["cpu"] = _child_cpu() - cpu  # includes the interpreter start (~1-2 s of imports)
    return res


def time_cp(src: Path, dst: Path, fsync: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of cp) for ``cp -r src dst`` (+ fsync of each file)."""
    t, cpu = time.perf_counter(), _child_cpu()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    cpu = _child_cpu() - cpu
    if fsync:  # what apply guarantees on top: every file durable before the rename
        for p in dst.iterdir():
            fd = os.open(p, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    dt = time.perf_counter() - t
    shutil.rmtree(dst)
    return dt, cpu


def evict(*paths: Path) -> None:
    """Drop the page cache of our own (clean, fsynced) files: cold-ish reads for the next
    run without dropping anyone else's cache. Only as cold as the disk's host allows."""
    for root in paths:
        for p in [root] if root.is_file() else sorted(root.rglob("*")):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


PEFT = (HWM + "import json, sys, time, torch, peft\n"
        "from transformers import AutoModelForCausalLM\n"
        "t = time.perf_counter()\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)\n"
        "t_load = time.perf_counter() - t\n"
        "m = peft.get_peft_model(m, peft.LoraConfig(r=8, init_lora_weights=False,\n"
        "    target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj']))\n"
        "t = time.perf_counter()\nm = m.merge_and_unload()\n"
        "t_merge = time.perf_counter() - t\nt = time.perf_counter()\n"
        "m.save_pretrained(sys.argv[2])\nt_save = time.perf_counter() - t\n"
        "print(json.dumps({'load_s': t_load, 'merge_s': t_merge, 'save_s': t_save,\n"
        "                  'rss_kb': hwm()}))")


def bench_peft(base: Path, out: Path) -> dict:
    """peft on the same checkpoint: from_pretrained, LoRA r=8 on q/k/v/o of every layer,
    merge_and_unload, save_pretrained (which does not fsync)."""
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        return {"skipped": str(exc)}
    try:
        return run_json(PEFT, str(base), str(out))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=3.2)
    ap.add_argument("--shard-mb", type=int, default=None,
                    help="shard size (default 500, or size/6 below 2 GB)")
    ap.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of each (warm and cold-ish); best and median are reported")
    ap.add_argument("--dir", default=None, help="where to put temp files (default: $TMPDIR)")
    ap.add_argument("--no-peft", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hs-bench-apply-", dir=a.dir))
    try:
        g = geometry(a.size_gb)
        base = tmp / "base"
        t = time.perf_counter()
        shard_mb = a.shard_mb or (500 if a.size_gb >= 2 else max(8, int(a.size_gb * 1000 / 6)))
        sizes = build_checkpoint(base, g, shard_mb * 10**6, getattr(torch, a.dtype))
        total, largest = sum(sizes), max(sizes)
        heads = [(1 % g["layers"], 0), (1 % g["layers"], 5), (g["layers"] // 2, 7),
                 (g["layers"] - 1, 2)]
        delta = build_delta(base, tmp / "delta.safetensors", heads, config_of(g))
        print(f"checkpoint: {total / 1e9:.2f} GB, {len(sizes)} shards (largest "
              f"{largest / 1e6:.0f} MB), {g['layers']} layers x hidden {g['hidden']}, "
              f"{a.dtype}; delta: {len(heads)} heads, {delta.stat().st_size / 1e6:.1f} MB; "
              f"built in {time.perf_counter() - t:.1f}s; cp and apply read {base} and "
              f"write beside it", flush=True)

        times = {st: {"cp": [], "cp_sync": [], "apply": []} for st in ("warm", "cold")}
        rss, cpu = [], {"cp": [], "apply": []}

        def run_cp(state):
            dt, c = time_cp(base, tmp / "cp", fsync=False)
            times[state]["cp"].append(dt)
            cpu["cp"].append(c)

        def run_cp_sync(state):
            times[state]["cp_sync"].append(time_cp(base, tmp / "cp", fsync=True)[0])

        def run_apply(state):
            res = run_json(APPLY, str(base), str(delta), str(tmp / "out"))
            times[state]["apply"].append(res["seconds"])
            rss.append(res["rss_kb"] * 1024)
            cpu["apply"].append(res["cpu"])
            shutil.rmtree(tmp / "out")

        runs = [run_cp, run_apply, run_cp_sync]
        for i in range(a.repeat):  # interleaved and rotated: load changes hit all alike
            for state in ("warm", "cold"):
                for fn in runs[i % 3:] + runs[:i % 3]:
                    if state == "cold":
                        evict(base, delta)
                    fn(state)
        base_res = run_json(BASELINE)
        baseline = base_res["rss_kb"] * 1024
        peak = max(rss)
        over = (peak - baseline) / largest
        w, c = times["warm"], times["cold"]
        med = statistics.median

        print(f"{'':24s}{'warm: best':>11s}{'median':>8s}{'GB/s':>7s}"
              f"{'cold-ish: best':>16s}{'median':>8s}{'GB/s':>7s}   all runs (warm | cold-ish)")
        for label, key in (("cp -r", "cp"), ("cp -r + fsync each file", "cp_sync"),
                           ("headsurgeon apply", "apply")):
            print(f"{label:24s}{min(w[key]):11.2f}{med(w[key]):8.2f}"
                  f"{total / min(w[key]) / 1e9:7.2f}{min(c[key]):16.2f}{med(c[key]):8.2f}"
                  f"{total / min(c[key]) / 1e9:7.2f}   "
                  f"{' '.join(f'{x:.2f}' for x in w[key])} | "
                  f"{' '.join(f'{x:.2f}' for x in c[key])}")
        ratio = {(st, ref, how): f(times[st][ref]) / f(times[st]["apply"])
                 for st in ("warm", "cold") for ref in ("cp", "cp_sync")
                 for how, f in (("best", min), ("median", med))}
        for ref, label in (("cp", "cp -r"), ("cp_sync", "cp -r + fsync")):
            print(f"throughput apply / {label}: " + "; ".join(
                f"{st} {ratio[st, ref, 'best']:.2f} best, {ratio[st, ref, 'median']:.2f} median"
                for st in ("warm", "cold")) + ("   (cp -r leaves the data in the page cache, "
                                               "apply makes it durable)" if ref == "cp" else ""))
        cpu_apply = min(cpu["apply"]) - base_res["cpu"]
        print(f"CPU seconds: cp {min(cpu['cp']):.2f}, apply {cpu_apply:.2f} "
              f"(interpreter start-up {base_res['cpu']:.2f} subtracted)")
        print(f"peak RSS apply {peak / 1e6:.0f} MB, interpreter+torch baseline "
              f"{baseline / 1e6:.0f} MB, largest shard {largest / 1e6:.0f} MB -> "
              f"(peak - baseline) / shard = {over:.3f}")
        if not a.no_peft:
            p = bench_peft(base, tmp / "peft")
            if "skipped" in p:
                print(f"peft: skipped ({p['skipped']})")
            else:
                print(f"peft on the same checkpoint (LoRA r=8 on q/k/v/o, every layer): "
                      f"from_pretrained {p['load_s']:.2f}s + merge_and_unload "
                      f"{p['merge_s']:.2f}s + save_pretrained {p['save_s']:.2f}s (no fsync) "
                      f"= {p['load_s'] + p['merge_s'] + p['save_s']:.2f}s, peak RSS "
                      f"{p['rss_kb'] * 1024 / 1e6:.0f} MB; headsurgeon apply "
                      f"{min(w['apply']):.2f}s (warm best), peak RSS {peak / 1e6:.0f} MB")
        print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on "
              f"{os.cpu_count()} cores (timings are noisy on a shared machine)")
        print(f"BENCH apply throughput_vs_cp={ratio['warm', 'cp', 'best']:.3f} "
              f"peak_rss_over_shard={over:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
