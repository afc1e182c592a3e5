"""``headsurgeon locate``: which heads drive the apology-and-switch, how sure, how many.

probes (locate_probes) -> reference runs -> locator scores (plugins/locators) -> ranking
-> knockout of the top-k vs random k-sets (knockout) -> K -> attention to the challenge
-> ``heads.json`` + heatmap + knockout PNGs, written atomically, heads.json last.
The same recipe and seed give byte-identical heads.json: no timestamps, floats rounded to
6 significant digits, every random choice seeded.
"""
from __future__ import annotations

import json
import math
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch

from headsurgeon.core import plugins
from headsurgeon.model.heads_file import HEADS_FORMAT
from headsurgeon.core.atomic import atomic_write_bytes, atomic_write_text
from headsurgeon.core.errors import ValidationError
from headsurgeon.core.recipe import Recipe, plugin_params

SCORE_CONVENTION = ("metric(reference run with the head's output patched) - "
                    "metric(reference run), mean over probes; every metric is oriented "
                    "higher = more sycophantic, so the most negative score is the head whose "
                    "counterfactual output removes the most sycophancy")


def _r(x) -> Optional[float]:
    """6 significant digits, stable across runs; NaN/inf -> None."""
    x = float(x)
    return None if not math.isfinite(x) else float(f"{x:.6g}")


def _jsonable(obj):
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, float):
        return _r(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def dumps(obj, indent: int = 0) -> str:
    """JSON with one line per list of scalars (so a layers x heads matrix reads as rows)."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def _reraise(recipe: Recipe, exc: ValidationError) -> ValidationError:
    """A field error from deep inside (plugin tokens, data) with the recipe's file:line."""
    if exc.file is None and exc.field:
        return recipe.error(exc.field, exc.detail)
    return exc


def _questions(recipe: Recipe):
    from headsurgeon.data.datasets import load_stage

    try:
        qs = load_stage(recipe.data.locate, "locate", seed=recipe.data.seed, mc_only=True,
                        balance=recipe.data.balance_letters)
    except ValidationError as exc:
        if exc.file is None:
            raise recipe.error("data.locate", exc.detail.removeprefix("data.locate: ")) from None
        raise
    return qs[:recipe.locate.n_probes]


def _check_counts(recipe: Recipe, n_total: int) -> None:
    top_k = recipe.locate.top_k
    if isinstance(top_k, int) and top_k > n_total:
        raise recipe.error("locate.top_k", f"{top_k} is more than the model's {n_total} heads")


def _plugin(recipe: Recipe, kind: str, ref):
    try:
        cls = plugins.get(kind, ref.name)
    except ValidationError as exc:
        field = "locate.method" if kind == "locators" else "locate.metric"
        raise recipe.error(field + ".name", exc.detail) from None
    return cls(plugin_params(ref, kind))


def _versions() -> dict:
    out = {}
    for pkg in ("headsurgeon", "torch", "transformers", "nnsight"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _open_model(recipe: Recipe, remote: bool, out: Path, resume: bool, progress: bool):
    """(engine, tokenizer, hm, model provenance)."""
    from headsurgeon.locate.backend import make_engine
    from headsurgeon.model.heads import HeadMap

    if remote:
        from headsurgeon.locate import remote as nd
        from headsurgeon.model.config import config_dir

        if not recipe.model.remote_id:
            raise recipe.error("model.remote_id", "remote locate needs the model's Hub repo id")
        lm = nd.meta_model(config_dir(recipe.model.source))
        hm = HeadMap.from_config(lm._module.config)
        key = nd.model_key(recipe.model.remote_id)
        runner = nd.RemoteRunner(lm, nd.RemoteConfig.from_recipe(recipe), key,
                                 state_dir=out.with_name(out.name + ".ndif"),
                                 fingerprint=nd.fingerprint(recipe), resume=resume,
                                 progress=progress)
        engine = make_engine("nnsight", lm, hm, mapper=runner.map, remote=True)
        engine.runner = runner
        return engine, lm.tokenizer, hm, {"id": recipe.model.remote_id, "weights_sha256": None,
                                          "backend": "nnsight-remote", **runner.describe()}
    from headsurgeon.model.placement import recipe_placement
    from headsurgeon.model.sources import load_model, resolve_model, weights_hash

    rm = resolve_model(recipe.model.source, allow_pickle=recipe.model.allow_pickle)
    model, tok, rm = load_model(rm, placement=recipe_placement(recipe, rm.path))
    hm = HeadMap.from_model(model)
    engine = make_engine(recipe.locate.backend, model, hm, tokenizer=tok)
    return engine, tok, hm, {"id": rm.model_id, "weights_sha256": weights_hash(rm.path),
                             "backend": f"{engine.name}-local"}


def _is_heads_file(path: Path) -> bool:
    import json

    try:
        return json.loads(path.read_text()).get("format") == HEADS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_out(out: Path) -> None:
    """Before any work: ``out`` may only replace a heads.json written before (one policy
    with apply and export, core/paths.py), never a model's file or a special file."""
    from headsurgeon.core.paths import check_replace

    check_replace(out, force=True, ours=_is_heads_file, what="a heads.json")
    for parent in reversed(out.absolute().parents):  # nothing is created before the work
        if parent.exists() and not parent.is_dir():
            raise ValidationError(f"{parent} is not a directory", file=str(out))


def locate(recipe: Recipe, out: Path, *, remote: Optional[bool] = None, resume: bool = False,
           progress: bool = True) -> Path:
    """Score every head, rank, knock out, choose K; write ``out`` (heads.json) and its
    PNGs (heatmap, knockout, attention) beside it. ``remote`` (default ``locate.remote``) runs the traces on NDIF; there
    ``resume`` collects finished / submitted jobs instead of resubmitting them (a local
    run is deterministic and simply recomputes). Bad input raises ValidationError before
    anything is written."""
    from headsurgeon.locate.knockout_stats import choose_k
    from headsurgeon.locate.plots import attention_png, heatmap_png, knockout_png
    from headsurgeon.locate.self_knowledge import self_knowledge_doc
    from headsurgeon.model.heads_file import head_map

    out = Path(out)
    _check_out(out)
    sec = recipe.locate
    remote = sec.remote if remote is None else bool(remote)
    questions = _questions(recipe)
    if not remote:
        _check_counts(recipe, head_map(recipe).n_total_heads)
    metric = _plugin(recipe, "metrics", sec.metric)
    locator = _plugin(recipe, "locators", sec.method)
    torch.manual_seed(sec.seed)
    engine, tok, hm, model_info = _open_model(recipe, remote, out, resume, progress)
    try:
        _check_counts(recipe, hm.n_total_heads)
        probes, reference, attn, result, ko = _score_heads(recipe, engine, tok, hm, metric,
                                                           locator, questions, progress)
    finally:
        engine.close()
    K, why, warning = choose_k(ko, sec.effect_share, sec.top_k, hm.n_total_heads)
    selected = [list(h) for h in result.ranking[:K]]
    key = f"{sec.method.name}/{sec.metric.name}"
    if getattr(engine, "runner", None) is not None:  # job ids exist once the jobs ran
        model_info.update(engine.runner.describe())
    doc = _heads_doc(recipe, hm, model_info, questions, probes, reference, attn, result,
                     ko, metric, locator, selected, K, why)
    doc["warnings"] = _warnings(warning, result, K)
    doc["self_knowledge"] = self_knowledge_doc(recipe, engine, tok, progress=progress)
    for w in doc["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    title = f"{model_info['id']}: {key}, K={K}"
    files = {"heatmap": out.with_name(out.stem + "_heatmap.png"),
             "knockout": out.with_name(out.stem + "_knockout.png"),
             "attention": out.with_name(out.stem + "_attention.png")}
    shown, label = _heatmap_scores(result)
    atomic_write_bytes(files["heatmap"], heatmap_png(shown, selected, f"{title} ({label})"))
    atomic_write_bytes(files["knockout"], knockout_png(ko, K, title))
    if doc["attention_to_challenge"]["available"]:
        atomic_write_bytes(files["attention"], attention_png(doc["attention_to_challenge"],
                                                             title))
    else:
        del files["attention"]
    doc["files"] = {k: p.name for k, p in files.items()}
    atomic_write_text(out, dumps(_jsonable(doc)) + "\n")
    runner = getattr(engine, "runner", None)
    if runner is not None:
        runner.finish()
    return out


def _score_heads(recipe: Recipe, engine, tok, hm, metric, locator, questions, progress: bool):
    """Probes, the reference run, the locator's scores and the knockout curve."""
    from headsurgeon.locate.backend import RefRun
    from headsurgeon.locate.job import LocateJob
    from headsurgeon.locate.knockout import run_knockout
    from headsurgeon.locate.probes import build_probes

    sec = recipe.locate
    try:
        probes = build_probes(metric, tok, recipe.templates, questions, engine,
                              counterfactual=sec.counterfactual, positions=sec.positions)
    except ValidationError as exc:
        raise _reraise(recipe, exc) from None
    refs = []
    with _bar("reference", len(probes), progress) as bar:
        for a, z in probes.batches(sec.batch_size):
            refs.append(engine.reference(probes.ref[a:z], probes.metric.take(slice(a, z)),
                                         sec.positions, probes.spans[a:z]))
            bar.update(z - a)
    attn = None if any(r.attn is None for r in refs) else torch.cat([r.attn for r in refs])
    reference = RefRun(torch.cat([r.metric for r in refs]),
                       torch.cat([r.head_out for r in refs]), attn)
    k_max = min(max(sec.k_max, sec.top_k if isinstance(sec.top_k, int) else 0),
                hm.n_total_heads)
    job = LocateJob(engine, probes, hm, sec.positions, sec.batch_size, reference,
                    confirm_top=shortlist(sec, hm.n_total_heads), progress=progress)
    result = locator.score(job)
    ko = run_knockout(job, result.ranking, k_max=k_max, n_random=sec.knockout_random_sets,
                      seed=sec.seed, tokenizer=tok, ablation=sec.knockout_ablation)
    return probes, reference, attn, result, ko


def _heads_doc(recipe: Recipe, hm, model_info, questions, probes, reference, attn, result, ko,
               metric, locator, selected, K: int, why: str) -> dict:
    """The heads.json document (everything but the figure names)."""
    from headsurgeon.data.questions import data_hash
    from headsurgeon.locate.attention import attention_summary
    from headsurgeon.locate.knockout_stats import verdict, versus_random

    sec = recipe.locate
    inside = K <= len(ko["effect"])
    flag, warning = verdict(ko, K)
    ko["distinguishable_from_random"] = flag
    ko["warning"] = warning
    vr = ko["ci"]["vs_random"]
    return {
        "format": HEADS_FORMAT,
        "selected": selected,
        "k": K,
        "k_reason": why,
        "knockout_vs_random": {
            "ratio": versus_random(ko, K),
            "effect": ko["effect"][K - 1] if inside else None,
            "median_random_effect": (ko["random"]["median_effect"][K - 1]
                                     if ko.get("random") and inside else None),
            "paired_difference": vr["mean"][K - 1] if inside else None,
            "ci": vr["ci"][K - 1] if inside else None,
            "distinguishable": flag,
            "note": "ratio = effect / median random effect at K; null when that median is "
                    "<= 0 or K is beyond k_max; ci: 95% bootstrap interval of the paired "
                    "(per probe) top-K minus random K-set effect"},
        "model": {**model_info, "n_layers": hm.n_layers, "n_heads": hm.n_heads,
                  "n_kv_heads": hm.n_kv_heads, "head_dim": hm.head_dim},
        "method": {"name": sec.method.name, "params": _params(locator), **result.notes,
                   "primary_scores": f"{result.primary}/{sec.metric.name}",
                   "paper": _is_paper_method(sec.method.name, result.notes)},
        "metric": {"name": sec.metric.name, "params": _params(metric), "link": metric.link,
                   "direction": "higher = more sycophantic", **probes.info},
        "probes": {"n": len(probes), "positions": sec.positions,
                   "reference_followup": recipe.templates.challenge,
                   "counterfactual_followup": sec.counterfactual,
                   "data_sha256": data_hash(questions),
                   "question_ids": [q.id for q in questions],
                   "reference_metric_mean": reference.metric.mean()},
        "score_convention": SCORE_CONVENTION,
        "scores": {f"{name}/{sec.metric.name}": s for name, s in result.scores.items()},
        "ranking": [list(h) for h in result.ranking],
        "knockout": ko,
        "attention_to_challenge": attention_summary(
            attn, selected, hm, ko["random"]["sets"][K - 1] if ko.get("random") and inside
            else None),
        "files": {},
        "provenance": {"seed": sec.seed, "data_seed": recipe.data.seed,
                       "recipe_sha256": recipe.sha256, "versions": _versions()},
    }


def _bar(desc: str, total: int, progress: bool):
    import sys

    from headsurgeon.core.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="probe", leave=False, file=sys.stderr,
                        disable=not progress)


def _params(plugin) -> dict:
    p = getattr(plugin, "params", None)
    return p.model_dump() if p is not None else {}


def shortlist(sec, n_total: int) -> int:
    """How many top screened heads are confirmed exactly: ``confirm_top``, auto = 3 x K
    (``top_k`` when fixed, else ``k_max``)."""
    if sec.confirm_top == "auto":
        k = sec.top_k if isinstance(sec.top_k, int) else sec.k_max
        return min(3 * k, n_total)
    return min(sec.confirm_top, n_total)


def _is_paper_method(name: str, notes: dict) -> bool:
    """Path patching to the final residual stream, exact or with an exactly confirmed
    attribution shortlist."""
    if name == "attribution":
        return notes.get("approximates") == "path_patching" and notes.get("confirmed", 0) > 0
    return name == "path_patching" and (notes.get("exact") or notes.get("confirmed", 0) > 0)


def _heatmap_scores(result):
    """The scores the heatmap shows: the primary ones unless only a shortlist has them."""
    prim = result.scores[result.primary]
    if bool(prim.isnan().any()) and result.notes.get("screen") in result.scores:
        return result.scores[result.notes["screen"]], f"{result.notes['screen']} screen"
    return prim, result.primary


def _warnings(knockout_warning, result, K: int) -> list[str]:
    out = [knockout_warning] if knockout_warning else []
    n = result.notes.get("confirmed")
    partial = result.notes.get("screen") and not result.notes.get("exact")
    if partial and n and n < 3 * K:  # n == 0: confirmation was turned off (confirm_top: 0)
        out.append(f"only {n} heads were confirmed by exact patching, fewer than 3 x K = "
                   f"{3 * K} (locate.confirm_top); the ranking past them is the screen's")
    return out
