"""The training loop's steps: learning-rate schedule, seeded batches, one optimizer step.

The batch of every (step, micro-batch) is a pure function of the seed, so a resumed run
ends with the same delta bytes as an uninterrupted one. While the loop runs, the frozen
prefix below the lowest trained layer is computed once per sequence
(:mod:`headsurgeon.train.prefix_cache`).
"""
from __future__ import annotations

import math
import random
import sys
import time

from headsurgeon.train.objectives import right_pad


def lr_at(step: int, t) -> float:
    """Linear warmup then linear (power 1 polynomial) decay towards zero."""
    warm = math.ceil(t.warmup * t.steps)
    if step < warm:
        return t.lr * (step + 1) / warm
    return t.lr * (t.steps - step) / max(1, t.steps - warm)


def batch_indices(step: int, micro: int, t, n: int, seed: int) -> list[int]:
    """Dialogue indices of one micro-batch: seeded epochs walked in order."""
    first = (step * t.grad_accum + micro) * t.batch_size
    out = []
    for pos in range(first, first + t.batch_size):
        epoch, i = divmod(pos, n)
        perm = list(range(n))
        random.Random(f"{seed}:epoch:{epoch}").shuffle(perm)
        out.append(perm[i])
    return out


def install_prefix_cache(recipe, hm, trainable):
    """The run's frozen-prefix cache, installed (disabled, with its reason, where it
    would not be exact); spilled states go to the run directory's ``cache/prefix``."""
    from headsurgeon.train.prefix_cache import prefix_cache_for

    t = recipe.train
    return prefix_cache_for(trainable, hm, mode=t.prefix_cache, budget_mb=t.prefix_cache_mb,
                            disk_dir=recipe.run_dir() / "cache" / "prefix").install()


def train_steps(steps: range, history: list, t, obj, ctx, params, fwd_model, trainable,
                optimizer, acc, dialogues, pairs, pad, ckpts, ckpt_meta, *,
                progress: bool) -> None:
    """Run ``steps``, appending each step's row to ``history``; checkpoint as asked."""
    from headsurgeon.core.progress import progress_bar

    bar = progress_bar(steps, desc=f"train {t.objective.name}", file=sys.stderr,
                       disable=not progress, initial=steps.start, total=t.steps)
    for step in bar:
        history.append(one_step(step, t, obj, ctx, params, fwd_model, trainable,
                                optimizer, acc, dialogues, pairs, pad))
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
        done = step + 1
        if ckpts is not None and t.checkpoint_every and (done % t.checkpoint_every == 0
                                                          or done == steps.stop):
            acc.wait_for_everyone()
            if acc.is_main_process:
                ckpts.save(done, trainable.named, optimizer.optimizer
                           if hasattr(optimizer, "optimizer") else optimizer,
                           {**ckpt_meta, "history": history})
    bar.close()


def one_step(step: int, t, obj, ctx, params, fwd_model, trainable, optimizer, acc, dialogues,
             pairs, pad) -> dict:
    """One optimizer step (``grad_accum`` micro-batches); its row of the train history."""
    t0 = time.perf_counter()
    for g in optimizer.param_groups:
        g["lr"] = lr_at(step, t)
    logs: dict[str, float] = {}
    for micro in range(t.grad_accum):
        idx = batch_indices(step, micro, t, len(pairs), t.seed)
        with acc.split_between_processes(idx) as mine:
            if hasattr(obj, "collate"):  # objectives with inputs of their own
                batch = obj.collate(ctx, params, [dialogues[i] for i in mine])
            else:
                batch = right_pad([pairs[i] for i in mine], pad)
        batch.step, batch.micro = step, micro
        with acc.accumulate(fwd_model):
            loss, parts = obj.loss(ctx, fwd_model, trainable, batch.to(acc.device), params)
            acc.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        parts["loss"] = float(acc.reduce(loss.detach(), "mean"))
        for k, v in parts.items():
            logs[k] = logs.get(k, 0.0) + v / t.grad_accum
    return {"step": step + 1, "lr": lr_at(step, t), "seconds": round(time.perf_counter() - t0, 3),
            **{k: round(v, 6) for k, v in logs.items()}}
