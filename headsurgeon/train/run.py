"""The ``train`` stage: supervised pinpoint tuning of the selected heads' slices.

Everything a user can get wrong (heads, kv policy, data, resume) is checked before the
model loads or anything is written. Training runs under accelerate's ``Accelerator``
(device, mixed precision, gradient accumulation; ``accelerate launch -m headsurgeon
train`` for several processes). The batch of every (step, micro-batch) is a pure
function of the seed, so a resumed run ends with the same delta bytes as an
uninterrupted one. Outputs beside the delta: ``<stem>.train.json`` (log) and
``<stem>.loss.png``; checkpoints ``<stem>.ckpt.{safetensors,json}``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch

from headsurgeon.core import plugins
from headsurgeon.core.errors import ValidationError
from headsurgeon.train.objectives import ObjectiveContext, safe_pad_id
from headsurgeon.core.recipe import Recipe, plugin_params
from headsurgeon.train.checkpoint import Checkpoints, CheckpointState
from headsurgeon.train.loop import (batch_indices, install_prefix_cache, lr_at,  # noqa: F401
                                    train_steps)


def _in_recipe(recipe: Recipe, exc: ValidationError, field: Optional[str] = None):
    """Re-anchor an error raised without a file to the recipe's line."""
    if exc.file:
        return exc
    return recipe.error(field or exc.field or "data", exc.detail)


@dataclass
class Plan:
    """A validated training run, before any model is loaded."""

    recipe: Recipe
    resolved: object
    hm: object
    objective: object
    params: object
    heads: list
    kv: str
    questions: list
    neutral: list = field(default_factory=list)
    placement: object = None       # headsurgeon.model.placement.Placement
    ckpt_names: dict = field(default_factory=dict)  # model parameter -> checkpoint tensor
    neutral_info: dict = field(default_factory=dict)  # how neutral text was split from eval's


def plan_training(recipe: Recipe, heads: Optional[list] = None) -> Plan:
    from headsurgeon.model.heads_file import head_map, selected_heads
    from headsurgeon.data.datasets import load_stage
    from headsurgeon.model.sources import resolve_model
    from headsurgeon.data.neutral import regulariser_passages
    from headsurgeon.data.questions import check_disjoint

    from headsurgeon.core.recipe import _validate_plugin_ref

    t = recipe.train
    _validate_plugin_ref(t.objective, "objectives", ("train", "objective"), recipe)
    objective = plugins.get("objectives", t.objective.name)
    params = plugin_params(t.objective, "objectives")
    try:
        resolved = resolve_model(recipe.model.source, allow_pickle=recipe.model.allow_pickle)
    except ValidationError as exc:
        raise recipe.error("model.source", exc.detail) from None
    hm = head_map(recipe)
    try:
        kv = hm.resolve_kv(t.kv)
    except ValidationError as exc:
        raise recipe.error("train.kv", exc.detail) from None
    chosen: list = []
    if heads is not None:
        chosen = [tuple(int(x) for x in h) for h in heads]
        if not chosen:
            raise recipe.error("heads", "no heads selected")
        for h in chosen:
            try:
                hm.check_head(*h)
            except ValidationError as exc:
                raise recipe.error("heads", exc.detail) from None
        if len(set(chosen)) != len(chosen):
            raise recipe.error("heads", "a head is listed twice")
    elif getattr(objective, "needs_heads", True):
        chosen = selected_heads(recipe, hm)
    from headsurgeon.model.placement import recipe_placement

    placement = recipe_placement(recipe, resolved.path)
    if t.dtype == "float16" and not placement.device.startswith("cuda"):
        raise recipe.error("train.dtype", "float16 mixed precision needs a GPU; use bfloat16")
    try:
        questions = load_stage(recipe.data.train, "train", seed=recipe.data.seed, mc_only=True,
                               balance=recipe.data.balance_letters)
        evaluated: list = []
        for other in ("eval", "locate"):
            refs = getattr(recipe.data, other)
            if refs:
                loaded = load_stage(refs, other, seed=recipe.data.seed,
                                    balance=recipe.data.balance_letters)
                check_disjoint({"train": questions, other: loaded})
                evaluated = (loaded[: recipe.eval.n_candidates(len(loaded))]
                             if other == "eval" else evaluated)
        # never regularise on the passages eval measures KL on (data/neutral.py)
        neutral, neutral_info = regulariser_passages(recipe, evaluated)
    except ValidationError as exc:
        raise _in_recipe(recipe, exc, "data.train") from None
    return Plan(recipe, resolved, hm, objective, params, sorted(chosen), kv, questions, neutral,
                placement, neutral_info=neutral_info)


CACHE_FIELDS = {"prefix_cache", "prefix_cache_mb"}


def train_hash(recipe: Recipe) -> str:
    """The effective train section (recipes copied with overrides keep their text)."""
    import hashlib
    import json

    # where the frozen prefix's states are kept changes no result (prefix_cache.py)
    dump = json.dumps(recipe.train.model_dump(mode="json", by_alias=True, exclude=CACHE_FIELDS),
                      sort_keys=True)
    return hashlib.sha256(dump.encode()).hexdigest()


@dataclass
class TrainResult:
    model: torch.nn.Module          # behaves as the tuned model (deltas applied)
    tokenizer: object
    trainable: object               # .delta_slices(), .base(), .detach()
    plan: Plan
    log: dict
    finished: bool = True


def _accelerator(t, placement):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mp = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[t.dtype]
    gpu = placement.device.startswith("cuda")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # a fresh state per run in one process
        AcceleratorState._reset_state(True)
        if gpu:  # accelerate trains on the current device
            torch.cuda.set_device(torch.device(placement.device))
    # cpu=True without CUDA: several launched processes then form a gloo (MULTI_CPU) group
    return Accelerator(mixed_precision=mp, gradient_accumulation_steps=t.grad_accum,
                       cpu=placement.device == "cpu")  # else the GPU (or mps) chosen


def build_training_data(plan: Plan, model, tokenizer, *, progress: bool = True):
    """The tokenized dialogues (and a summary of how they were drawn)."""
    from headsurgeon.train.dialogues import build_dialogues, build_pools, model_first_letters, tokenize_all

    t, recipe = plan.recipe.train, plan.recipe
    items = t.items
    letters = None
    if t.first_answer == "model" or items == "known":
        letters = model_first_letters(model, tokenizer, plan.questions, recipe.templates,
                                      progress=progress)
    insist, revise = build_pools(plan.questions, t.first_answer, model_letters=letters,
                                 items=items)
    knowledge = None
    if t.knowledge is not None:  # the base's beliefs decide what each dialogue teaches
        from headsurgeon.train.knowledge import knowledge_data, model_files_key
        insist, revise, knowledge = knowledge_data(
            model, tokenizer, plan.questions, recipe.templates, t.knowledge,
            progress=progress, cache_dir=recipe.run_dir() / "cache",
            model_key=model_files_key(plan.resolved.path))
    if not insist and not revise:
        raise recipe.error("data.train", "no usable training questions (the model answers "
                                         "none correctly, and train.items is 'known' or "
                                         "train.knowledge.unknown is 'drop')")
    dialogues = build_dialogues(insist, revise, recipe.templates, n=t.n_examples,
                                revise_ratio=t.revise_ratio, seed=t.seed,
                                final_turn=t.final_turn, loss_on=t.loss_on,
                                style=t.reply_style)
    info = {"questions": len(plan.questions), "insist_pool": len(insist),
            "revise_pool": len(revise), "dialogues": len(dialogues),
            "revise": sum(d.kind == "revise" for d in dialogues),
            "model_first_correct": (None if letters is None else
                                    sum(letters[q.id] == q.answer for q in plan.questions)),
            **({"knowledge": knowledge} if knowledge else {})}
    pairs = tokenize_all(tokenizer, dialogues)  # also checks every dialogue tokenizes
    limit = getattr(model.config, "n_positions", None)  # learned absolute positions
    longest = max(len(ids) for ids, _ in pairs)
    if limit and longest > limit:
        raise recipe.error("data.train", f"a training dialogue is {longest} tokens, more "
                                         f"than the model's {limit} positions")
    return dialogues, pairs, info


def run_training(plan: Plan, *, model=None, tokenizer=None, ckpts: Optional[Checkpoints] = None,
                 resume_state: Optional[CheckpointState] = None, stop_after: Optional[int] = None,
                 progress: bool = True) -> TrainResult:
    from headsurgeon.model.checkpoint_names import model_name_map
    from headsurgeon.model.delta import stored_dtype
    from headsurgeon.model.sources import load_model
    from headsurgeon.model.safetensors_io import read_checkpoint_index

    recipe, t = plan.recipe, plan.recipe.train
    acc = _accelerator(t, plan.placement)
    if t.batch_size < acc.num_processes:
        raise recipe.error("train.batch_size", f"{t.batch_size} is fewer than the "
                                               f"{acc.num_processes} processes")
    if model is None:
        model, tokenizer, _ = load_model(plan.resolved, placement=plan.placement,
                                         attn_implementation="sdpa")  # eager is slower
    if not getattr(model, "hf_device_map", None):  # a split model stays where accelerate put it
        model.to(acc.device)
    torch.manual_seed(t.seed)
    dialogues, pairs, data_info = build_training_data(
        plan, model, tokenizer, progress=progress and acc.is_main_process)
    from headsurgeon.model.heads import HeadMap

    plan.hm = HeadMap.from_model(model)  # knows which bias tensors exist
    index = read_checkpoint_index(plan.resolved.path)
    plan.ckpt_names = model_name_map(model, index)  # check_weights refused none in common
    ctx = ObjectiveContext(model, tokenizer, plan.hm, [list(h) for h in plan.heads], plan.kv,
                           t.seed, set(plan.ckpt_names),
                           neutral_texts=lambda: plan.neutral, device=acc.device,
                           templates=recipe.templates, reuse_base=t.prefix_cache != "off")
    obj = plan.objective()
    trainable = obj.trainable(ctx, plan.params)
    # what trains is what ships: slices round to the checkpoint's stored dtype
    trainable.ship_as({n: stored_dtype(index.info(k).dtype) for n, k in plan.ckpt_names.items()})
    optimizer = adamw(trainable.parameters(), lr=t.lr, betas=tuple(t.betas),
                      weight_decay=t.weight_decay)
    start, history = 0, []
    if resume_state is not None:
        Checkpoints.restore(resume_state, trainable.named, optimizer)
        start, history = resume_state.step, list(resume_state.meta.get("history", []))
    cache = install_prefix_cache(recipe, plan.hm, trainable)
    fwd_model, optimizer = acc.prepare(trainable.model, optimizer)
    fwd_model.train()
    pad = safe_pad_id(tokenizer, model)
    end = t.steps if stop_after is None else min(t.steps, stop_after)
    ckpt_meta = {"recipe_hash": recipe.sha256, "train_hash": train_hash(recipe),
                 "objective": t.objective.name, "heads": [list(h) for h in plan.heads]}
    try:
        train_steps(range(start, end), history, t, obj, ctx, plan.params, fwd_model, trainable,
                    optimizer, acc, dialogues, pairs, pad, ckpts, ckpt_meta,
                    progress=progress and acc.is_main_process)
    finally:
        cache.remove()  # the model is plain again whatever happened
    trainable.finish()  # e.g. whole-tensor training: the weights become the shipped ones
    # drop accelerate's wrappers (DDP, the autocast forward): the caller gets a plain model
    acc.unwrap_model(fwd_model, keep_fp32_wrapper=False).eval()
    log = {"objective": t.objective.name, "heads": [list(h) for h in plan.heads],
           "touched_heads": trainable.touched_heads, "kv_policy": trainable.kv_policy,
           "trainable_parameters": trainable.n_trainable, "steps": t.steps, "seed": t.seed,
           "dtype": t.dtype, "num_processes": acc.num_processes, "data": data_info,
           "neutral_text": plan.neutral_info, "prefix_cache": cache.summary(),
           "history": history}
    return TrainResult(trainable.model, tokenizer, trainable, plan, log,
                       finished=end == t.steps)


def adamw(params, **kw) -> torch.optim.AdamW:
    """AdamW, fused where torch has a fused kernel for every parameter (CPU and CUDA
    floating point): one pass over the weights per step instead of several, which is
    most of an optimizer step when every weight trains (full SFT: 0.6 -> 0.15 s a step on
    SmolLM2, two CPU cores). Deterministic like the unfused loop."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                 for p in params)
    return torch.optim.AdamW(params, fused=fused, **kw)


def train_in_memory(recipe: Recipe, *, heads: Optional[list] = None, model=None,
                    tokenizer=None, progress: bool = True) -> TrainResult:
    """Train without writing anything; the result's model is the tuned model. Pass an
    already loaded ``model``/``tokenizer`` (of ``recipe.model``) to skip loading; call
    ``result.trainable.detach()`` to get the untouched base back."""
    return run_training(plan_training(recipe, heads), model=model, tokenizer=tokenizer,
                        progress=progress)


def delta_meta(result: TrainResult) -> dict:
    plan, trainable = result.plan, result.trainable
    return {"base_model": str(plan.resolved.model_id), "heads": trainable.heads,
            "touched_heads": trainable.touched_heads, "kv_policy": trainable.kv_policy,
            "objective": plan.recipe.train.objective.name, "steps": plan.recipe.train.steps,
            "seed": plan.recipe.train.seed, "recipe_hash": plan.recipe.sha256,
            "recipe": plan.recipe.text}


def write_outputs(result: TrainResult, out: Path) -> Path:
    """The delta, its ``.train.json`` log and ``.loss.png``: written and checked together,
    renamed into place together (the delta last), or none of them."""
    import json

    from headsurgeon.core.atomic import atomic_files
    from headsurgeon.model.delta import base_tensor_hashes, rounding_report, write_delta

    names = result.plan.ckpt_names
    slices = [replace(s, param=names.get(s.param, s.param))  # the checkpoint's own names
              for s in result.trainable.delta_slices()]
    base = base_tensor_hashes(result.plan.resolved.path, {s.param for s in slices})
    rounding = rounding_report(result.plan.resolved.path, slices)
    if rounding.get("warning"):
        print(f"train: {rounding['warning']}", file=sys.stderr)
    log = json.dumps({**result.log, "shipped": rounding}, indent=2) + "\n"
    with atomic_files() as group:
        group.write_bytes(out.with_name(out.stem + ".train.json"), log.encode("utf-8"))
        group.write_bytes(out.with_name(out.stem + ".loss.png"),
                          loss_png(result.log["history"]))
        write_delta(group.temp(out), slices, base_tensors=base, meta=delta_meta(result),
                    atomic=False)
    return out


def plot_loss(history: list, path: Path) -> None:
    from headsurgeon.core.atomic import atomic_write_bytes

    atomic_write_bytes(path, loss_png(history))


def loss_png(history: list) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for key in ("loss", "ce", "kl"):
        if history and key in history[0]:
            ax.plot(steps, [h[key] for h in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _check_out(out: Path) -> None:
    """Before any work: ``out``'s folder can hold it, and ``out`` replaces at most an
    earlier delta (never a model's weights, a link or a device): core/paths.py's rule."""
    from headsurgeon.core.paths import check_replace, make_parent, refuse_special
    from headsurgeon.model.delta import is_delta

    check_replace(out, force=True, ours=is_delta, what="a delta")
    for suffix in (".train.json", ".loss.png"):
        refuse_special(out.with_name(out.stem + suffix))
    make_parent(out)


def train(recipe: Recipe, out: Path, *, heads: Optional[list] = None, resume: bool = False,
          stop_after: Optional[int] = None, progress: bool = True) -> Path:
    """Train and write the delta to ``out``. ``stop_after`` (tests) ends the run after
    that many steps with only a checkpoint written, as if interrupted."""
    out = Path(out)
    plan = plan_training(recipe, heads)
    ckpts = Checkpoints(out)
    state = None
    if resume:
        if ckpts.exists():
            state = ckpts.load(recipe_hash=recipe.sha256, train_hash=train_hash(recipe),
                               objective=recipe.train.objective.name,
                               heads=[list(h) for h in plan.heads])
        else:
            print(f"no checkpoint at {ckpts.json_path}; starting from step 0", file=sys.stderr)
    _check_out(out)  # the inputs are checked first; no training for an output refused later
    result = run_training(plan, ckpts=ckpts, resume_state=state, stop_after=stop_after,
                          progress=progress)
    if not result.finished:
        return ckpts.json_path
    from accelerate.state import PartialState

    if PartialState().is_main_process:
        write_outputs(result, out)
    PartialState().wait_for_everyone()
    return out
