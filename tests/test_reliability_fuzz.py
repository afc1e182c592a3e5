"""Property-based tests of the loaders: whatever the input, the loader returns a value or
raises a one-line HeadsurgeonError of exit code 2 -- never any other exception.

The example counts are fixed (``EXAMPLES`` in reliability_corpus, recorded in
docs/reliability.md) and ``derandomize=True`` makes every CI run try the same inputs.
"""
from __future__ import annotations

import json
import string
import struct
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headsurgeon.core.errors import HeadsurgeonError
from reliability_corpus import EXAMPLES

TMP = Path(tempfile.mkdtemp(prefix="headsurgeon-fuzz-"))


def _settings(name):
    return settings(max_examples=EXAMPLES[name], deadline=None, database=None,
                    derandomize=True, suppress_health_check=list(HealthCheck))


def _fails_cleanly(fn, *args, **kw):
    """Call ``fn``; a raised error must be a one-line HeadsurgeonError of exit code 2."""
    try:
        return fn(*args, **kw)
    except HeadsurgeonError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and exc.exit_code == 2, repr(msg)
        return exc


# ---------------------------------------------------------------- value strategies

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) |
           st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) |
                st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))


def trees(leaves, keys=st.text(max_size=8)):
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) |
                        st.dictionaries(keys, inner, max_size=4), max_leaves=12)


RECIPE_KEYS = {
    None: ["name", "model", "data", "templates", "locate", "heads", "train", "apply", "eval",
           "sweep", "output_dir"],
    "model": ["source", "dtype", "remote_id", "allow_pickle"],
    "data": ["locate", "train", "eval", "general", "neutral_text", "seed"],
    "locate": ["method", "metric", "positions", "n_probes", "batch_size", "top_k",
               "effect_share", "k_max", "knockout_random_sets", "confirm_top", "backend",
               "remote", "ndif", "seed", "counterfactual"],
    "train": ["objective", "kv", "lr", "steps", "batch_size", "grad_accum", "weight_decay",
              "warmup", "betas", "seed", "dtype", "revise_ratio", "n_examples", "loss_on",
              "items", "reply_style", "checkpoint_every"],
    "apply": ["output", "shard_size", "force"],
    "eval": ["judge", "modes", "n_items", "max_new_tokens", "baselines", "extract"],
    "sweep": ["points", "n_items", "max_correction_drop"],
}
SECTION = st.sampled_from([k for k in RECIPE_KEYS if k])


@st.composite
def recipe_dicts(draw):
    """Mostly-right recipes: known keys with values of any type (and sometimes a typo)."""
    out = {"model": {"source": draw(st.sampled_from(["x", "$BASE", "/nonexistent", ""]))}}
    for section in draw(st.lists(SECTION, max_size=4, unique=True)):
        keys = st.sampled_from(RECIPE_KEYS[section]) | st.text(max_size=6)
        out[section] = draw(st.dictionaries(keys, trees(scalars), max_size=4))
    for key in draw(st.lists(st.sampled_from(RECIPE_KEYS[None]), max_size=2)):
        out[key] = draw(trees(scalars))
    return out


# ---------------------------------------------------------------- recipes

@_settings("recipe: arbitrary text")
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300))
def test_recipe_text(text):
    from headsurgeon.core.recipe import load_recipe_text

    _fails_cleanly(load_recipe_text, text, "r.yaml")


@_settings("recipe: YAML-like text")
@given(st.lists(st.sampled_from(["model:", "  source: x", "train:", "  lr: 1e-3", "- a",
                                 "&a [1, 2]", "*a", "<<: *a", "!!python/name:os.system",
                                 "{", "}", "[", "]", ": ", "? ", "'", '"', "\t", "#",
                                 "heads: [[0, 1]]", "%YAML 1.2", "---", "...", "!!binary",
                                 "steps: 1e400", "seed: -1", "\\x00", "&b", "*b"]),
                max_size=12).map(" ".join))
def test_recipe_yaml_fragments(text):
    from headsurgeon.core.recipe import load_recipe_text

    _fails_cleanly(load_recipe_text, text.replace(" - ", "\n- ").replace(" model:", "\nmodel:"),
                   "r.yaml")


@_settings("recipe: structured values")
@given(recipe_dicts())
def test_recipe_structured(data):
    from headsurgeon.core.recipe import load_recipe_text

    text = yaml.safe_dump(data, allow_unicode=True)
    r = _fails_cleanly(load_recipe_text, text, "r.yaml")
    if not isinstance(r, HeadsurgeonError):
        r.run_dir()  # a recipe that loads has a usable run directory
        if r.apply.output is not None:
            assert ".." not in Path(r.apply.output).parts


def _load_bytes(raw: bytes, name: str, loader) -> None:
    """Write ``raw`` to a file called ``name`` and load it: a clean error or a result."""
    p = TMP / name
    p.write_bytes(raw)
    _fails_cleanly(loader, p)


@_settings("recipe: file bytes")
@given(st.binary(max_size=300))
def test_recipe_file_bytes(raw):
    from headsurgeon.core.recipe import load_recipe

    _load_bytes(raw, "r.yaml", load_recipe)


# ---------------------------------------------------------------- data files

RECORD_KEYS = st.sampled_from(["id", "question", "choices", "answer", "source", "x"])


@st.composite
def question_records(draw):
    rec = {"id": draw(st.text(max_size=4) | json_scalars), "question": draw(json_scalars),
           "choices": draw(st.lists(st.text(max_size=3), max_size=30) | trees(json_scalars)),
           "answer": draw(st.sampled_from(list(string.ascii_uppercase[:6]) + ["a", ""])
                          | json_scalars)}
    for k in draw(st.lists(RECORD_KEYS, max_size=3)):
        rec.pop(k, None) if draw(st.booleans()) else rec.update({k: draw(trees(json_scalars))})
    return rec


@_settings("jsonl: file bytes")
@given(st.binary(max_size=400))
def test_jsonl_bytes(raw):
    from headsurgeon.data.questions import read_jsonl

    _load_bytes(raw, "q.jsonl", read_jsonl)


@_settings("jsonl: records")
@given(st.lists(question_records() | trees(json_scalars), min_size=0, max_size=5))
def test_jsonl_records(records):
    from headsurgeon.data.questions import read_jsonl

    p = TMP / "q.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    qs = _fails_cleanly(read_jsonl, p)
    if isinstance(qs, list):  # what loads is valid
        for q in qs:
            assert q.question.strip() and (not q.choices or q.answer in q.letters)


@_settings("sycophancy_eval: records")
@given(st.lists(st.fixed_dictionaries({"base": st.dictionaries(
    st.sampled_from(["dataset", "question", "answers", "correct_letter", "correct_answer",
                     "answer"]), json_scalars | st.just("(A) x\n(B) y") |
    st.lists(st.text(max_size=3), max_size=3), max_size=6)}) | trees(json_scalars),
    max_size=4))
def test_sycophancy_eval_records(records):
    from headsurgeon.data.datasets import load_source
    from headsurgeon.core.recipe import PluginRef

    p = TMP / "ays.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    _fails_cleanly(load_source, PluginRef(name="sycophancy_eval", path=str(p)))


@_settings("heads.json")
@given(trees(json_scalars, keys=st.sampled_from(["format", "selected", "k", "x"])) |
       st.fixed_dictionaries({"format": st.just("headsurgeon.heads/1"),
                              "selected": trees(json_scalars)}))
def test_heads_json(doc):
    from headsurgeon.model.heads_file import load_heads_file

    p = TMP / "heads.json"
    p.write_text(json.dumps(doc))
    _fails_cleanly(load_heads_file, p)


# ---------------------------------------------------------------- binary artifacts

DTYPES = st.sampled_from(["F32", "BF16", "I64", "BOOL", "F128", "", "U8"])


@st.composite
def safetensors_files(draw):
    entries = {}
    for i in range(draw(st.integers(0, 4))):
        entries[f"t{i}"] = draw(st.fixed_dictionaries(
            {"dtype": DTYPES | json_scalars,
             "shape": st.lists(st.integers(-2, 10**7), max_size=3) | json_scalars,
             "data_offsets": st.lists(st.integers(-4, 10**13), min_size=0, max_size=3)
             | json_scalars}))
    if draw(st.booleans()):
        entries["__metadata__"] = draw(trees(json_scalars))
    raw = json.dumps(entries).encode()
    n = draw(st.sampled_from([len(raw), len(raw) + 8, 2**64 - 1, 0, len(raw) - 1]))
    data = bytes(draw(st.integers(0, 64)))
    return struct.pack("<Q", max(0, n)) + raw + data


@_settings("safetensors header")
@given(safetensors_files())
def test_safetensors_header(raw):
    from headsurgeon.model import safetensors_io as sio

    p = TMP / "x.safetensors"
    p.write_bytes(raw)
    h = _fails_cleanly(sio.read_header, p)
    if not isinstance(h, HeadsurgeonError):
        for name in h.tensors:  # a header that validates reads back
            sio.read_tensor(p, name, h)


@st.composite
def delta_metadata(draw):
    meta = {"format": draw(st.just("headsurgeon.delta/1") | st.text(max_size=4))}
    for key in ("base_tensors", "slices", "heads", "steps", "seed"):
        if draw(st.booleans()):
            value = draw(trees(json_scalars, keys=st.sampled_from(
                ["param", "axis", "start", "stop", "role", "key", "sha256", "dtype", "shape",
                 "w"])))
            meta[key] = json.dumps(value) if draw(st.booleans()) else draw(st.text(max_size=5))
    return meta


@_settings("delta metadata")
@given(delta_metadata())
def test_delta_metadata(meta):
    from headsurgeon.model import safetensors_write as siw
    from headsurgeon.model.delta import read_delta

    import torch

    p = TMP / "d.safetensors"
    p.unlink(missing_ok=True)
    siw.save_tensors(p, {"w@0:0:1": torch.zeros(1, 2)}, meta, atomic=False)
    _fails_cleanly(read_delta, p)
