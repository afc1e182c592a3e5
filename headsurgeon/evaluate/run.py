"""``headsurgeon eval``: the same items for the base and every edited model -> metrics.json.

For each model: the challenge protocol in ``eval.modes`` (:mod:`headsurgeon.evaluate.challenge`),
general ability on ``data.general`` and, for every model but the base, next-token KL to
the base on neutral text (:mod:`headsurgeon.evaluate.general`). Deterministic: seeded item
selection, greedy decoding, forced-choice extraction.
"""
from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from headsurgeon.core import plugins
from headsurgeon.core.atomic import atomic_write_json
from headsurgeon.core.progress import progress_note
from headsurgeon.evaluate.base_reuse import model_identity, reusable_base, stored_beliefs
from headsurgeon.evaluate.challenge import (as_dict, examples, is_correct_first, mode_report,
                                            run_protocol, selectivity)
from headsurgeon.data.datasets import load_stage
from headsurgeon.core.errors import ValidationError
from headsurgeon.evaluate.general import (general_ability, general_minus_base, kl_divergence,
                                          load_general_sets, neutral_passages)
from headsurgeon.evaluate.lmeval_engine import add_paired_to_models, general_lmeval
from headsurgeon.evaluate.shortcuts import add_paired_differences, add_shortcut_checks
from headsurgeon.data.questions import Question, data_hash
from headsurgeon.core.recipe import Recipe, check_engines, plugin_params

METRICS_FORMAT = "headsurgeon.metrics/1"

__all__ = ["evaluate", "evaluate_model", "kl_divergence", "load_eval_items", "make_judge",
           "model_sources"]


def load_eval_items(recipe: Recipe) -> list[Question]:
    """``data.eval``, seeded-shuffled, the items eval reads: the first ``eval.n_items``, or
    with ``eval.scope: known`` the first ``eval.pool`` (see :func:`known_scope`)."""
    if not recipe.data.eval:
        raise recipe.error("data.eval", "no evaluation questions (add a data.eval source)")
    try:
        items = load_stage(recipe.data.eval, "eval", seed=recipe.data.seed,
                           balance=recipe.data.balance_letters)
    except ValidationError as exc:
        if exc.file:
            raise
        raise recipe.error("data.eval", exc.detail) from None
    return items[: recipe.eval.n_candidates(len(items))]


def known_scope(recipe: Recipe, pool: Sequence[Question], known: set, beliefs: dict
                ) -> tuple[list[Question], set]:
    """``eval.scope: known``: the pool's known items in their seeded order, at most
    ``eval.n_items``, and their ids; ``beliefs`` (the pool's summary) records the counts."""
    items = [q for q in pool if q.id in known][: recipe.eval.n_items]
    beliefs["scope"] = {"pool": len(pool), "known_in_pool": len(known),
                        "evaluated": len(items)}
    progress_note(f"[eval] scope known: {len(items)} evaluated, of the {len(known)} known "
                  f"items (eval.known) among the {len(pool)} read")
    if not items:
        raise recipe.error("eval.scope", (
            f"the base knows none of the {len(pool)} data.eval items read (eval.known by "
            f"{recipe.eval.known.by}): nothing to evaluate"))
    return items, {q.id for q in items}


def make_judge(recipe: Recipe):
    ref = recipe.eval.judge
    return plugins.get("judges", ref.name)(plugin_params(ref, "judges"))


def sycophancy(model, tokenizer, recipe: Recipe, items: Sequence[Question], t, *, judge,
               base_known: Optional[set], known_items: Optional[set], progress: bool,
               timings: dict) -> tuple[dict, set, dict]:
    """The challenge protocol in templates ``t``: (the ``sycophancy`` entry, the items
    answered right unprompted, the item records)."""
    ev, stats = recipe.eval, {}
    own, records = run_protocol(model, tokenizer, items, t, modes=ev.modes, judge=judge,
                                extract=ev.extract, max_new_tokens=ev.max_new_tokens,
                                batch_size=ev.batch_size, seed=recipe.data.seed,
                                progress=progress, timings=timings, stats=stats)
    known = {q.id for q, f in zip(items, own) if is_correct_first(q, f)}
    n_mc = sum(q.is_mc for q in items)
    syc: dict = {"n_items": len(items), "n_known": len(known),
                 "accuracy_before": round(len(known) / len(items), 6) if items else None,
                 "first_answer": "generate",
                 "first_no_match": round(stats["first_no_match"] / n_mc, 6) if n_mc else None,
                 "judge": recipe.eval.judge.name, "extraction": ev.extract[0],
                 "extractions": list(ev.extract), "modes": {}, "examples": {}}
    for mode, res in records.items():
        syc["modes"][mode] = mode_report(res, mode, known, base_known)
        syc["examples"][mode] = examples(items, res)
        if mode == "own":
            syc["accuracy_after"] = round(sum(r.final_correct for r in res) / len(res), 6)
    syc["honesty"] = _honesty(syc["modes"])
    sel_known = known_items if known_items is not None else (
        base_known if base_known is not None else known)  # the base's known items
    syc["selectivity"] = selectivity(records, sel_known, recipe.eval.known.by)
    add_shortcut_checks(syc, items, own, records, own_known=known,
                        report_known=base_known if base_known is not None else known,
                        sel_known=sel_known, seed=recipe.data.seed)
    return syc, known, records


def evaluate_model(model, tokenizer, recipe: Recipe, items: Sequence[Question], *,
                   general: Optional[dict] = None, judge=None,
                   base_known: Optional[set] = None, progress: bool = True,
                   keep_items: bool = False, known_items: Optional[set] = None,
                   base_known_by_template: Optional[dict] = None) -> dict:
    """Metrics of one in-memory model: ``sycophancy`` (per mode: all / known / base_known
    items), ``templates`` (the same in every ``eval.templates`` rendering, with the base's
    known items of that rendering), ``general`` (per set) and ``timings``; ``keep_items``
    adds every item record."""
    ev, t = recipe.eval, recipe.templates
    judge = judge or make_judge(recipe)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict = {}
    syc, known, records = sycophancy(model, tokenizer, recipe, items, t, judge=judge,
                                     base_known=base_known, known_items=known_items,
                                     progress=progress, timings=timings)
    out = {"sycophancy": syc, "known_ids": sorted(known)}
    if keep_items:
        out["items"] = {m: [as_dict(r) for r in res] for m, res in records.items()}
    timings["sycophancy_s"] = time.perf_counter() - t_start
    if ev.templates:
        t0 = time.perf_counter()
        out["templates"] = {}
        for v in ev.templates:
            bk = (base_known_by_template or {}).get(v.name)
            v_syc, v_known, _ = sycophancy(model, tokenizer, recipe, items, v, judge=judge,
                                           base_known=bk, known_items=known_items,
                                           progress=progress, timings={})
            v_syc.pop("examples", None)
            out["templates"][v.name] = {"sycophancy": v_syc, "known_ids": sorted(v_known)}
        timings["templates_s"] = time.perf_counter() - t0
    if general:
        t0 = time.perf_counter()
        out["general"] = general_ability(model, tokenizer, general, t,
                                         batch_size=ev.batch_size,
                                         max_new_tokens=ev.max_new_tokens, progress=progress)
        timings["general_s"] = time.perf_counter() - t0
    if general and ev.general_engine == "lmeval":
        t0 = time.perf_counter()
        out["general_lmeval"] = general_lmeval(model, tokenizer, general,
                                               recipe.run_dir() / "lmeval",
                                               batch_size=ev.batch_size)
        timings["general_lmeval_s"] = time.perf_counter() - t0
    timings["cpu_s"] = time.process_time() - cpu_start
    out["timings"] = {k: round(v, 2) for k, v in timings.items()}
    out["timings"]["threads"] = torch.get_num_threads()
    return out


def _honesty(modes: dict) -> dict:
    """On known items: keeps a right answer (correct mode) and accepts a correction of a
    wrong one (wrong mode). Both must be high; stubbornness shows as low correction."""
    def get(mode, key):
        return modes.get(mode, {}).get("known", {}).get(key)
    return {"keeps_right": get("correct", "truthfulness"),
            "keeps_right_confidence": get("correct", "confidence"),
            "accepts_correction": get("wrong", "correction"),
            "kept_wrong": get("wrong", "kept_wrong")}


def model_sources(recipe: Recipe, models: Optional[Sequence[str]] = None
                  ) -> list[tuple[str, str]]:
    """(name, source) pairs: the base first, then the run's model and baselines."""
    base = recipe.model.source
    run = recipe.run_dir()
    if models:
        out, seen = [], set()
        for src in models:
            src = str(src)
            p = Path(src)
            name = ("base" if src == base else "spt" if p.resolve() == (run / "model").resolve()
                    else p.parent.name if p.name == "model" and p.parent.name else p.name or src)
            while name in seen:
                name += "'"
            seen.add(name)
            out.append((name, src))
        return out
    out = [("base", base)]
    if (run / "model" / "config.json").is_file():
        out.append(("spt", str(run / "model")))
    bdir = run / "baselines"
    if bdir.is_dir():
        for d in sorted(bdir.iterdir()):
            if (d / "model" / "config.json").is_file():
                out.append((d.name, str(d / "model")))
    return out


def _resolve(recipe: Recipe, source: str, field: str):
    from headsurgeon.model.sources import resolve_model

    try:
        return resolve_model(source, allow_pickle=recipe.model.allow_pickle)
    except ValidationError as exc:
        if exc.file or exc.field != "model.source":
            raise
        raise recipe.error(field, exc.detail) from None


def _load(recipe: Recipe, source: str, field: str):
    from headsurgeon.model.sources import load_model

    from headsurgeon.model.placement import recipe_placement

    resolved = _resolve(recipe, source, field)
    return load_model(resolved, attn_implementation=None,
                      placement=recipe_placement(recipe, resolved.path))


def _config(recipe: Recipe, items, general) -> dict:
    ev = recipe.eval
    return {"items_hash": data_hash(items), "n_items": len(items), "modes": list(ev.modes),
            "judge": {"name": ev.judge.name, **ev.judge.params},
            "extract": list(ev.extract), "max_new_tokens": ev.max_new_tokens,
            "templates": recipe.templates.model_dump(),
            "general": {k: data_hash(v) for k, v in (general or {}).items()},
            "kl_passages": ev.kl_passages, "seed": recipe.data.seed,
            **({"scope": "known", "evaluated_at_most": ev.n_items}
               if ev.scope == "known" else {}),
            "known": ev.known.model_dump(),
            **({"held_out_templates": [v.model_dump() for v in ev.templates]}
               if ev.templates else {}),
            **({"general_engine": ev.general_engine} if ev.general_engine != "headsurgeon"
               else {})}


def belief_known(recipe: Recipe, model, tokenizer, items, progress: bool = False
                 ) -> tuple[Optional[set], dict]:
    """``eval.known`` read from the BASE model's unprompted beliefs, under every rotation
    of the options it asks for (model/letter_invariant.py): (known ids, summary);
    (None, {}) for ``first_answer`` (the base's own generated first answers decide)."""
    k = recipe.eval.known
    if k.by == "first_answer":
        return None, {}
    from headsurgeon.model.letter_invariant import (invariant_beliefs, invariant_known,
                                                    invariant_summary)

    readings = ("letter",) if k.by == "letter" else ("letter", "choice_text")
    beliefs = invariant_beliefs(model, tokenizer, items, recipe.templates, readings=readings,
                                permutations=k.permutations,
                                batch_size=recipe.eval.batch_size, progress=progress)
    share = k.permutation_share
    return (invariant_known(beliefs, k.by, k.margin, share),
            invariant_summary(beliefs, k.by, k.margin, share, k.permutations))


def evaluate(recipe: Recipe, *, models: Optional[Sequence[str]] = None,
             out: Optional[Path] = None, progress: bool = True) -> Path:
    """Evaluate every model (see :func:`model_sources`), write ``run_dir/metrics.json``.

    Entries of other models already in the file are kept when they were measured with the
    same configuration (items, templates, judge...)."""
    t_all = time.perf_counter()
    items = load_eval_items(recipe)
    general = load_general_sets(recipe)
    check_engines(recipe)  # lm-eval asked for but missing: stop before any model loads
    passages, passage_source = neutral_passages(recipe, items)
    from headsurgeon.data.neutral import regulariser_passages

    kl_split = regulariser_passages(recipe, items)[1]  # sft_kl never trains on these
    judge = make_judge(recipe)
    sources = model_sources(recipe, models)
    for name, src in sources:  # fail before any work when a model cannot be found
        _resolve(recipe, src, "models" if models else "model.source")
    config = _config(recipe, items, general)
    path = Path(out) if out else recipe.run_dir() / "metrics.json"
    results = _previous(path, config)
    by_belief = recipe.eval.known.by != "first_answer"
    identity = model_identity(_resolve(recipe, recipe.model.source, "model.source").path)
    reuse = reusable_base(results, identity, by_belief)
    base = base_tok = None
    need_base = any(src != recipe.model.source for _, src in sources) and passages
    if need_base or (reuse is None and (by_belief or any(
            src == recipe.model.source for _, src in sources))):
        base, base_tok, _ = _load(recipe, recipe.model.source, "model.source")
    known_all, beliefs = ((None, {}) if not by_belief else stored_beliefs(reuse)
                          if reuse is not None
                          else belief_known(recipe, base, base_tok, items, progress))
    known_items = known_all
    if recipe.eval.scope == "known":  # only the known items run; passages stay the pool's
        items, known_items = known_scope(recipe, items, known_all, beliefs)
    base_known, base_known_t = (_known_of(results["base"]) if "base" in results and (
        reuse is not None or sources[0][1] != recipe.model.source) else (None, None))
    for k, (name, src) in enumerate(sources):
        progress_note(f"[eval] {name}: {src}")
        is_base = src == recipe.model.source
        if is_base and reuse is not None:  # same config, same files: measured already
            progress_note(f"[eval] {name}: unchanged since metrics.json was written: reused")
            continue
        if is_base:
            model, tok, resolved = base, base_tok, None
        else:
            model, tok, resolved = _load(recipe, src, "models" if models else "eval")
        t0 = time.perf_counter()
        res = evaluate_model(model, tok, recipe, items, general=general, judge=judge,
                             base_known=None if is_base else base_known, progress=progress,
                             known_items=known_items,
                             base_known_by_template=None if is_base else base_known_t)
        if beliefs:
            res["sycophancy"]["selectivity"]["beliefs"] = beliefs
        if is_base:
            res["identity"] = identity
            if known_all is not None:
                res["belief_known"] = sorted(known_all)
            base_known, base_known_t = _known_of(res)
        if not is_base and base is not None and passages:
            t1 = time.perf_counter()
            res["kl"] = {"mean": kl_divergence(base, model, tok, passages,
                                               progress=progress),
                         "n_passages": len(passages), "source": passage_source,
                         "passages_sha256": kl_split["eval_kl_sha256"]}
            res["timings"]["kl_s"] = round(time.perf_counter() - t1, 2)
        res["timings"]["total_s"] = round(time.perf_counter() - t0, 2)
        res["source"] = src
        results[name] = res
        if not is_base:
            del model
            gc.collect()
        progress_note(f"[eval] {name}: {_headline(res)}")
    _paired(results, recipe)
    doc = {"format": METRICS_FORMAT, "recipe_sha256": recipe.sha256, "config": config,
           "models": results, "kl_split": kl_split,
           "wall_s": round(time.perf_counter() - t_all, 2)}
    atomic_write_json(path, doc)
    return path


def _paired(results: dict, recipe: Recipe) -> None:
    """Every edited model minus the base on the same draws: the challenge rates, MC general
    accuracy, lm-eval's per-item scores."""
    add_paired_differences(results, recipe.data.seed)
    general_minus_base(results, recipe.data.seed)
    add_paired_to_models(results, recipe.model.source)


def _previous(path: Path, config: dict) -> dict:
    """The models of an earlier metrics.json measured with the same configuration."""
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    if old.get("format") == METRICS_FORMAT and old.get("config") == config:
        return dict(old.get("models", {}))
    return {}


def _known_of(res: dict) -> tuple[set, dict[str, set]]:
    """A base entry's known items, in the recipe's template and in each held-out one."""
    return (set(res.get("known_ids", [])),
            {name: set(v.get("known_ids", [])) for name, v in (res.get("templates") or {}).items()})


def _headline(res: dict) -> str:
    modes = res["sycophancy"]["modes"]
    parts = [f"acc {res['sycophancy']['accuracy_before']}"]
    for m, rep in modes.items():
        s = rep["known"] if m == "own" else rep["all"]
        parts.append(f"{m}: conf {s['confidence']} truth {s['truthfulness']}")
    if "kl" in res:
        parts.append(f"KL {res['kl']['mean']:.4g}")
    return "; ".join(parts)
