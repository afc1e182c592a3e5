"""The stages on an accelerator, at 7B geometry: locate, an SPT step vs a full SFT step,
and eval throughput, in bfloat16.

The model is Llama-architecture with a 7B model's layer geometry (hidden 4096, 32 heads,
8 KV heads, MLP 14336, vocabulary 32000) but only ``--layers`` layers, random weights
built on the device (nothing is downloaded). Timed, after one warm-up each:

- locate: attribution of every head over ``--probes`` probes, then exact path patching
  of a shortlist of ``--shortlist`` heads (the path_patching locator's two passes);
  reported per 1000 heads of the model;
- one SPT optimiser step (dense deltas on ``--heads`` heads' slices) and one full SFT
  step (every weight, AdamW), same batch;
- eval: greedy generation with the KV cache, ``--items`` prompts in batches.

Last line::

    BENCH gpu spt_over_sft_step=X locate_s_per_1k_heads=X eval_items_per_s=X peak_mem_gb=X

    python bench/gpu.py                  # the accelerator (placement auto), 7B geometry
    python bench/gpu.py --small          # tiny sizes; runs on the CPU in seconds (CI)
"""
from __future__ import annotations

import argparse
import random
import resource
import sys
import time

import torch


def build(args, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.small:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                          max_position_embeddings=1024)
    else:
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336,
                          num_hidden_layers=args.layers, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096)
    cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id = 256, 257, 258  # tiny tokenizer's
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(getattr(torch, args.dtype))
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int = 1) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def bench_locate(model, hm, args, device: str) -> float:
    from headsurgeon.locate.backend import MetricBatch, make_engine
    from headsurgeon.locate.job import one_hot_masks, path_freeze

    rng = random.Random(0)
    K, T = 4, args.seq
    seqs = [[rng.randrange(10, 250) for _ in range(T)] for _ in range(args.probes)]
    cfs = [s[:T - K] + [rng.randrange(10, 250) for _ in range(K)] for s in seqs]
    metric = MetricBatch(torch.tensor([[65, 66]] * args.probes),
                         torch.tensor([[1.0, -1.0]] * args.probes))
    eng = make_engine("torch", model, hm, rows_per_pass=args.shortlist)
    shortlist = hm.all_heads()[:: max(1, hm.n_total_heads // args.shortlist)][:args.shortlist]
    masks, freeze = one_hot_masks(hm, shortlist), path_freeze(hm, shortlist)

    def locate():
        _, scores = eng.attribution(seqs, cfs, metric, K, path=True)
        patched = eng.patch(seqs, metric, K, masks, cf_seqs=cfs, freeze=freeze)
        assert scores.shape == (args.probes, hm.n_layers, hm.n_heads)
        assert torch.isfinite(scores).all() and patched.shape == (args.probes, len(shortlist))

    try:
        seconds = timed(locate, device)
    finally:
        eng.close()
    return seconds * 1000 / hm.n_total_heads


def bench_eval(model, args, device: str) -> float:
    from headsurgeon.model.generation import generate
    from headsurgeon.model.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.padding_side = "left"
    rng = random.Random(1)
    words = ["river", "planet", "seven", "answer", "copper", "violin", "harbor", "logic"]
    prompts = [tok.apply_chat_template(
        [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(args.seq // 8))}],
        tokenize=False, add_generation_prompt=True) for _ in range(args.items)]

    def run():
        out = generate(model, tok, prompts, max_new_tokens=args.new_tokens,
                       batch_size=args.eval_batch, progress=False)
        assert len(out) == len(prompts)

    return args.items / timed(run, device)


def train_step_seconds(model, trainable, batch, device: str) -> float:
    from headsurgeon.train.objectives import lm_loss

    opt = torch.optim.AdamW(trainable.parameters(), lr=1e-5)
    model.train()

    def step():
        loss = lm_loss(trainable.model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert torch.isfinite(loss)

    try:
        return timed(step, device, repeat=3 if device.startswith("cuda") else 2)
    finally:
        model.eval()


def bench_train(model, hm, args, device: str) -> float:
    from headsurgeon.train.objectives import TrainBatch
    from headsurgeon.train.trainable import FullTrainable, slice_trainable

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(10, 250, (args.train_batch, args.seq), generator=g)
    labels = ids.clone()
    labels[:, : args.seq // 2] = -100  # loss on the reply half, like a dialogue
    batch = TrainBatch(ids, torch.ones_like(ids), labels).to(device)
    heads = hm.all_heads()[:: max(1, hm.n_total_heads // args.heads)][:args.heads]
    spt = slice_trainable(model, hm, heads, hm.resolve_kv("auto"))
    spt_s = train_step_seconds(model, spt, batch, device)
    spt.detach()
    full = FullTrainable(model)
    full_s = train_step_seconds(model, full, batch, device)
    full.detach()
    return spt_s / full_s


def peak_mem_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def main(argv=None) -> dict:
    from headsurgeon.model.heads import HeadMap
    from headsurgeon.model.placement import resolve

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny sizes (CPU, CI)")
    ap.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=None, help="tokens per probe / training row")
    ap.add_argument("--probes", type=int, default=None)
    ap.add_argument("--shortlist", type=int, default=None, help="heads path-patched exactly")
    ap.add_argument("--heads", type=int, default=None, help="heads SPT trains")
    ap.add_argument("--items", type=int, default=None, help="eval prompts")
    args = ap.parse_args(argv)
    small = args.small
    for name, big, tiny in (("seq", 256, 32), ("probes", 8, 2), ("shortlist", 32, 4),
                            ("heads", 16, 2), ("items", 64, 4)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if small else big)
    args.new_tokens, args.eval_batch = (4, 2) if small else (32, 32)
    args.train_batch = 2 if small else 8
    device = resolve(None, args.device).device
    model = build(args, device)
    if device.startswith("cuda"):  # the peak from here on: weights + what the stages add
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    hm = HeadMap.from_model(model)
    print(f"[gpu bench] {device} {args.dtype}: {hm.n_layers} layers x {hm.n_heads} heads "
          f"({hm.n_kv_heads} KV), hidden {hm.hidden}", file=sys.stderr)
    locate_s = bench_locate(model, hm, args, device)
    eval_ips = bench_eval(model, args, device)
    ratio = bench_train(model, hm, args, device)
    res = {"spt_over_sft_step": ratio, "locate_s_per_1k_heads": locate_s,
           "eval_items_per_s": eval_ips, "peak_mem_gb": peak_mem_gb(device)}
    print(f"[gpu bench] device={device} layers={hm.n_layers} probes={args.probes} "
          f"shortlist={args.shortlist} spt_heads={args.heads} items={args.items}",
          file=sys.stderr)
    print("BENCH gpu " + " ".join(f"{k}={v:.4g}" for k, v in res.items()))
    return res


if __name__ == "__main__":
    main()
