"""SPT vs full SFT vs peft LoRA: step time, trainable parameters, optimiser state.

All run the train stage's own objective plugins on the SAME batches (challenge
dialogues from the shared data), steps interleaved round-robin so background load hits
them alike. A ratio is read per batch -- the SPT step over the full-SFT step on the SAME
batch, taken one right after the other -- and the median of those paired ratios counts
(CPU seconds of this process; the wall-clock ratio and the ratio of median step times
printed beside it): batches differ in padded length and a shared machine's load drifts
over minutes, which a ratio of two medians taken over different minutes mixes in. SPT is timed
twice, side by side: with the frozen-prefix cache (``train.prefix_cache: auto``, the
default; train/prefix_cache.py) and without it. The cached SPT step is the step of a
dialogue seen before (every training dialogue after its first use); the one-time cost
of computing the prefix is printed apart, per dialogue. Last line:

    BENCH train spt_over_sft_step=X spt_over_sft_step_nocache=X trainable_share=X optimizer_share=X

    python bench/train.py [--model smollm2-135m-instruct] [--heads heads.json | --random] [--k 12]

Heads: by default the top K of an attribution screen on 16 challenge probes (seconds),
because SPT trains located heads and where they sit matters: backward stops at the
lowest trainable layer. ``--random`` times K random heads (seeded) as well, for contrast.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from headsurgeon.core import plugins
from headsurgeon.train.dialogues import build_dialogues, build_pools, tokenize_all
from headsurgeon.model.heads import HeadMap
from headsurgeon.model.sources import load_model
from headsurgeon.train.objectives import ObjectiveContext, right_pad, safe_pad_id
from headsurgeon.train.run import adamw
from headsurgeon.data.questions import read_jsonl
from headsurgeon.core.recipe import Templates
from headsurgeon.model.safetensors_io import read_checkpoint_index

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def located_heads(source: str, k: int, data: Path) -> list:
    """Top ``k`` heads of the attribution locator on 16 ARC-Easy challenge probes."""
    from headsurgeon.locate.backend import TorchEngine
    from headsurgeon.locate.job import LocateJob
    from headsurgeon.locate.probes import build_probes
    from headsurgeon.data.questions import require_mc, shuffled
    from headsurgeon_plugins.locators.attribution import Attribution
    from headsurgeon_plugins.metrics.letter_gap import LetterGap

    model, tok, _ = load_model(source)
    hm = HeadMap.from_model(model)
    qs = shuffled(require_mc(read_jsonl(data / "arc" / "arc_easy_validation.jsonl"), "data"),
                  0)[:16]
    eng = TorchEngine(model, hm)
    p = build_probes(LetterGap(), tok, Templates(), qs, eng, counterfactual="counterfactual",
                     positions=1)
    job = LocateJob(eng, p, hm, 1, 8, eng.reference(p.ref, p.metric, 1, p.spans),
                    progress=False)
    ranking = Attribution().score(job).ranking[:k]
    eng.close()
    return [list(h[:2]) for h in ranking]


def batches(tok, model, n_batches: int, batch_size: int, data: Path):
    qs = read_jsonl(data / "opentriviaqa" / "opentriviaqa_kids_general.jsonl",
                    limit=n_batches * batch_size)
    ins, rev = build_pools(qs, "prefilled")
    ds = build_dialogues(ins, rev, Templates(), n=n_batches * batch_size, revise_ratio=0.5,
                         seed=0)
    pairs = tokenize_all(tok, ds)
    pad = safe_pad_id(tok, model)
    return [right_pad(pairs[i:i + batch_size], pad)
            for i in range(0, len(pairs), batch_size)]


class Runner:
    def __init__(self, name: str, source: str, heads: list, seed: int = 0, label: str = "",
                 cache: bool = False):
        self.name = label or name
        model, tok, rm = load_model(source, attn_implementation="sdpa")
        hm = HeadMap.from_model(model)
        self.obj = plugins.get("objectives", name)()
        self.params = self.obj.Params()
        self.ctx = ObjectiveContext(model, tok, hm, heads, hm.resolve_kv("auto"), seed,
                                    set(read_checkpoint_index(rm.path)))
        self.trainable = self.obj.trainable(self.ctx, self.params)
        self.trainable.model.train()
        self.cache = None
        if cache:  # as run_training installs it
            from headsurgeon.train.prefix_cache import prefix_cache_for

            self.cache = prefix_cache_for(self.trainable, hm).install()
            if not self.cache.enabled:
                raise SystemExit(f"{self.name}: no prefix cache ({self.cache.reason})")
        self.opt = adamw(self.trainable.parameters(), lr=1e-5, betas=(0.9, 0.95),
                         weight_decay=0.1)  # the train stage's optimizer (fused where it can)
        self.times: list[float] = []
        self.walls: list[float] = []

    def step(self, batch) -> float:
        """One optimiser step; records this process's CPU seconds (all its threads: robust
        to other jobs on a shared machine, as in bench/locate.py) and wall seconds."""
        t0, w0 = time.process_time(), time.perf_counter()
        loss, _ = self.obj.loss(self.ctx, self.trainable.model, self.trainable, batch,
                                self.params)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        dt = time.process_time() - t0
        self.times.append(dt)
        self.walls.append(time.perf_counter() - w0)
        return dt

    def fill(self, batches) -> tuple[float, int]:
        """Compute the prefix of every batch's rows once (CPU seconds, rows)."""
        t0, rows = time.process_time(), 0
        with torch.no_grad():
            for b in batches:
                rows += self.cache.fill(input_ids=b.input_ids, attention_mask=b.attention_mask)
        return time.process_time() - t0, rows

    def optimizer_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for st in self.opt.state.values()
                   for v in st.values() if torch.is_tensor(v))


def _by(runners, name: str) -> "Runner":
    return next(r for r in runners if r.name == name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--heads", help="heads.json from locate (its 'selected' heads)")
    ap.add_argument("--k", type=int, default=12, help="heads to train when --heads is not given")
    ap.add_argument("--random", action="store_true",
                    help="also time K random heads (seed 0) beside the located ones")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per method (+1 warmup)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.heads:
        heads = [list(h) for h in json.loads(Path(args.heads).read_text())["selected"]]
        where = args.heads
    else:
        heads = located_heads(args.model, args.k, args.data)
        where = f"top {args.k} of an attribution screen (16 probes)"
    layers = sorted({h[0] for h in heads})
    print(f"heads {heads} (layers {layers[0]}-{layers[-1]})", file=sys.stderr)
    runners = [Runner("sft", args.model, heads, cache=True),
               Runner("sft", args.model, heads, label="sft_nocache"),
               Runner("full_sft", args.model, heads), Runner("lora", args.model, heads)]
    if args.random:
        from headsurgeon.model.sources import resolve_model

        cfg = json.loads((resolve_model(args.model).path / "config.json").read_text())
        rnd = [list(h) for h in sorted(random.Random(0).sample(HeadMap.from_config(cfg)
                                                                 .all_heads(), len(heads)))]
        runners.append(Runner("sft", args.model, rnd, label="sft_random", cache=True))
    data = batches(runners[0].ctx.tokenizer, runners[0].ctx.model, args.steps + 1,
                   args.batch_size, args.data)
    print(f"model {args.model}; heads: {where}; batch {args.batch_size} dialogues x "
          f"{data[0].input_ids.shape[1]} tokens (padded); {args.steps} timed steps",
          file=sys.stderr)
    for r in runners:
        if r.cache is not None:
            cpu, rows = r.fill(data)
            print(f"{r.name}: prefix below layer {r.cache.layer} computed once for {rows} "
                  f"dialogues: {cpu / max(rows, 1):.3f} cpu s per dialogue", file=sys.stderr)
    for i, batch in enumerate(data):
        for r in runners:
            r.step(batch)
            if i == 0:
                r.times.clear()  # warmup
                r.walls.clear()
    med = {r.name: statistics.median(r.times) for r in runners}
    full = _by(runners, "full_sft")
    paired = {r.name: statistics.median(a / b for a, b in zip(r.times, full.times))
              for r in runners}
    wall = {r.name: statistics.median(r.walls) for r in runners}
    n = {r.name: r.trainable.n_trainable for r in runners}
    ob = {r.name: r.optimizer_bytes() for r in runners}
    print(f"{'method':<12} {'cpu s':>8} {'wall s':>8} {'trainable':>12} {'share':>8} "
          f"{'optim bytes':>12}")
    for r in runners:
        print(f"{r.name:<12} {med[r.name]:>8.3f} {wall[r.name]:>8.3f} {n[r.name]:>12,} "
              f"{n[r.name] / n['full_sft']:>8.4f} {ob[r.name]:>12,}")
    print(f"peft LoRA step / full SFT step: {paired['lora']:.3f} cpu (paired), "
          f"{wall['lora'] / wall['full_sft']:.3f} wall")
    for name, what in (("sft_nocache", "without"), ("sft", "with")):
        steps = " ".join(f"{a / b:.3f}" for a, b in zip(_by(runners, name).times, full.times))
        print(f"SPT step {what} the prefix cache / full SFT step: {paired[name]:.3f} cpu "
              f"(median of {args.steps} paired ratios: {steps}), ratio of medians "
              f"{med[name] / med['full_sft']:.3f} cpu, {wall[name] / wall['full_sft']:.3f} wall")
    print(f"BENCH train spt_over_sft_step={paired['sft']:.3f} "
          f"spt_over_sft_step_nocache={paired['sft_nocache']:.3f} "
          f"trainable_share={n['sft'] / n['full_sft']:.5f} "
          f"optimizer_share={ob['sft'] / ob['full_sft']:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
