"""An applied model directory (safetensors + config + tokenizer) -> one GGUF file.

For llama.cpp / Ollama and transformers' GGUF loader. Tensors are streamed one at a time
from the safetensors (peak memory: one tensor), renamed with gguf's own HF -> GGUF name map,
and stored as F16 or Q8_0 (vectors — norms, biases — stay F32, as llama.cpp's converter keeps
them). Llama-family q/k rows are permuted into llama.cpp's rotary layout (the loaders undo
it); Qwen2 uses the HF layout as is. The file appears complete or not at all.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headsurgeon.core.errors import RuntimeFailure, ValidationError
from headsurgeon.apply.gguf_file import MARK_KEY, has_mark, write_verified
from headsurgeon.core.paths import check_replace, kind_of, make_parent

OUTTYPES = ("f16", "q8_0")
REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "rms_norm_eps", "max_position_embeddings")
Q8_BLOCK = 32  # values per Q8_0 block; rows of other lengths fall back to F16
# the key that marks a GGUF as headsurgeon's export: the only GGUF --force replaces
MARK = "headsurgeon.gguf/1"


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str    # general.architecture (llama.cpp's name)
    permute_qk: bool  # llama.cpp stores q/k rows interleaved for its rotary kernel


ARCHS = {"llama": ArchSpec("llama", True), "mistral": ArchSpec("llama", True),
         "qwen2": ArchSpec("qwen2", False)}


@dataclass(frozen=True)
class PlannedTensor:
    hf_name: str
    gguf_name: str
    shard: Path
    shape: tuple[int, ...]
    qtype: str  # "F32" | "F16" | "Q8_0"


def _config(model_dir: Path) -> dict:
    from headsurgeon.model.config import read_config

    if not model_dir.is_dir():
        raise ValidationError("not a model directory", file=str(model_dir))
    if not (model_dir / "config.json").is_file():
        raise ValidationError("not a model directory (no config.json)", file=str(model_dir))
    return read_config(model_dir / "config.json")


def arch_spec(cfg: dict, where: str) -> ArchSpec:
    model_type = cfg.get("model_type")
    if model_type not in ARCHS:
        raise ValidationError(f"{model_type!r} cannot be exported to GGUF yet; supported: "
                              f"{', '.join(ARCHS)}", file=where, field="model_type")
    for key in REQUIRED_KEYS:
        if not isinstance(cfg.get(key), (int, float)) or isinstance(cfg.get(key), bool):
            raise ValidationError("missing or not a number", file=where, field=key)
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValidationError(f"{cfg['hidden_act']!r}: only silu MLPs export to this "
                              "architecture", file=where, field="hidden_act")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise ValidationError(f"rope type {rope.get('rope_type', rope.get('type'))!r} is not "
                              "exported to GGUF yet (default rope only)", file=where,
                              field="rope_parameters")
    return ARCHS[model_type]


def _rope_theta(cfg: dict) -> float:
    params = cfg.get("rope_parameters") or {}
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def head_dim(cfg: dict) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def write_hparams(writer, cfg: dict, n_vocab: int) -> None:
    """The ``<arch>.*`` keys transformers' loader maps back onto the config."""
    writer.add_context_length(int(cfg["max_position_embeddings"]))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(int(cfg["num_attention_heads"]))
    writer.add_head_count_kv(int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]))
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_vocab_size(n_vocab)
    writer.add_rope_dimension_count(head_dim(cfg))
    if head_dim(cfg) * int(cfg["num_attention_heads"]) != int(cfg["hidden_size"]):
        writer.add_key_length(head_dim(cfg))
        writer.add_value_length(head_dim(cfg))


def plan_tensors(model_dir: Path, cfg: dict, spec: ArchSpec, outtype: str
                 ) -> list[PlannedTensor]:
    """Every weight of the checkpoint with its GGUF name and storage type; names gguf's
    map does not know are an error (nothing would load them)."""
    import gguf

    from headsurgeon.model.safetensors_io import read_checkpoint_index

    index = read_checkpoint_index(model_dir)
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == spec.gguf_arch)
    names = gguf.get_tensor_name_map(arch, int(cfg["num_hidden_layers"]))
    tied = cfg.get("tie_word_embeddings", False)
    planned = []
    for hf_name in index:
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        base, _, suffix = hf_name.rpartition(".")
        gguf_base = names.get_name(base) if suffix in ("weight", "bias") else None
        if gguf_base is None:
            raise ValidationError(f"tensor {hf_name!r} has no GGUF name for architecture "
                                  f"{spec.gguf_arch}", file=str(model_dir))
        info = index.info(hf_name)
        qtype = "F32" if len(info.shape) < 2 else "F16"
        if qtype == "F16" and outtype == "q8_0" and info.shape[-1] % Q8_BLOCK == 0:
            qtype = "Q8_0"
        planned.append(PlannedTensor(hf_name, f"{gguf_base}.{suffix}",
                                     index.shard_path(index[hf_name]), tuple(info.shape), qtype))
    if not any(t.gguf_name == "token_embd.weight" for t in planned):
        raise ValidationError("no token embedding (model.embed_tokens.weight)",
                              file=str(model_dir))
    return planned


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half layout -> llama.cpp's interleaved pairs, per head (rows of q/k)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _stored_array(t: PlannedTensor, cfg: dict, spec: ArchSpec, header) -> np.ndarray:
    """The tensor as it goes into the file: float32 read, permuted, cast or quantised."""
    from gguf import GGMLQuantizationType, quants

    from headsurgeon.model.safetensors_io import read_tensor

    w = read_tensor(t.shard, t.hf_name, header).float().numpy()
    if spec.permute_qk and t.gguf_name.split(".")[-2] in ("attn_q", "attn_k"):
        heads = cfg["num_attention_heads"] if ".attn_q." in t.gguf_name else \
            cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
        w = _permute_rows(w, int(heads))
    if t.qtype == "F32":
        return np.ascontiguousarray(w, dtype=np.float32)
    if t.qtype == "F16":
        out = w.astype(np.float16)
        if not np.isfinite(out).all():
            raise ValidationError(f"tensor {t.hf_name!r} overflows float16", file=str(t.shard))
        return out
    return quants.quantize(w, GGMLQuantizationType.Q8_0)


def _add_tensor_infos(writer, planned: list[PlannedTensor]) -> None:
    from gguf import GGMLQuantizationType, quants

    for t in planned:
        if t.qtype == "Q8_0":
            shape = quants.quant_shape_to_byte_shape(t.shape, GGMLQuantizationType.Q8_0)
            writer.add_tensor_info(t.gguf_name, shape, np.dtype(np.uint8), int(np.prod(shape)),
                                   raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            dtype = np.dtype(np.float32 if t.qtype == "F32" else np.float16)
            writer.add_tensor_info(t.gguf_name, t.shape, dtype,
                                   int(np.prod(t.shape)) * dtype.itemsize)


def _model_name(model_dir: Path) -> str:
    """``general.name``: the run's name for ``runs/NAME/model``. Never exactly "mistral":
    transformers' loader reads that name as a request for its (unloadable) mistral map."""
    path = model_dir.absolute()
    name = path.parent.name if path.name == "model" and path.parent.name else path.name
    return name if name.lower() != "mistral" else f"{name}-model"


def _write_gguf(path: Path, model_dir: Path, cfg: dict, spec: ArchSpec, outtype: str,
                planned: list[PlannedTensor], vocab) -> int:
    """Write the file; returns the size the writer meant it to have (numpy writes tensor
    data through C stdio, whose lost tail on a full disk raises nothing)."""
    import gguf

    from headsurgeon.apply.gguf_meta import write_general
    from headsurgeon.model.safetensors_io import read_header

    writer = gguf.GGUFWriter(path, spec.gguf_arch)
    try:
        write_general(writer, model_dir, _model_name(model_dir),
                      sum(int(np.prod(t.shape)) for t in planned))
        writer.add_string(MARK_KEY, MARK)
        write_hparams(writer, cfg, len(vocab.tokens))
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16"
                             else gguf.LlamaFileType.MOSTLY_Q8_0)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab.write(writer)
        _add_tensor_infos(writer, planned)
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        headers: dict[Path, object] = {}
        for t in planned:
            header = headers.setdefault(t.shard, read_header(t.shard))
            writer.write_tensor_data(_stored_array(t, cfg, spec, header))
        writer.flush()
        meant = sum(fout.tell() for fout in writer.fout or [])
        for fout in writer.fout or []:
            os.fsync(fout.fileno())
    finally:
        writer.close()
    return meant


def is_export(path: Path) -> bool:
    """A GGUF this exporter wrote (what ``--force`` may replace): a regular file with
    headsurgeon's key, never a model's own weights or someone else's GGUF."""
    return has_mark(path, MARK)


def verify_written(path: Path, meant: int, planned: list[PlannedTensor], out: Path) -> None:
    """What was written, checked before the rename: the size the writer meant, and the
    header and tensor table read back, naming every planned tensor in order."""
    size = path.stat().st_size
    if size != meant:
        raise RuntimeFailure(f"cannot write: {size} of {meant} bytes written (disk full?)",
                             file=str(out))
    try:
        from gguf import GGUFReader

        names = [t.name for t in GGUFReader(path).tensors]
    except Exception as exc:  # noqa: BLE001 - any parse failure: the file is not whole
        raise RuntimeFailure(f"cannot write: the file written does not read back "
                             f"({str(exc).splitlines()[0][:120]})", file=str(out)) from None
    if names != [t.gguf_name for t in planned]:
        raise RuntimeFailure("cannot write: the tensor table read back differs from the one "
                             "written", file=str(out))


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, *, outtype: str = "f16",
                force: bool = False) -> dict:
    """Write ``model_dir`` as a GGUF file ``out``; returns a summary (path, size, counts).

    Every input is checked before the first byte is written; the file is built under a
    temporary name beside ``out`` and renamed into place only when complete."""
    from headsurgeon.apply.gguf_vocab import read_vocab

    started = time.perf_counter()
    model_dir, out = Path(model_dir), Path(out)
    if outtype not in OUTTYPES:
        raise ValidationError(f"{outtype!r}: choose one of {', '.join(OUTTYPES)}",
                              field="outtype")
    cfg = _config(model_dir)
    spec = arch_spec(cfg, str(model_dir / "config.json"))
    if kind_of(out) == "directory":
        raise ValidationError("output is a directory; give a .gguf file path", file=str(out))
    check_replace(out, force=force, ours=is_export, what="a GGUF file")
    make_parent(out)
    planned = plan_tensors(model_dir, cfg, spec, outtype)
    n_vocab = next(t.shape[0] for t in planned if t.gguf_name == "token_embd.weight")
    vocab = read_vocab(model_dir, cfg, n_vocab)
    sizes = {}
    write_verified(out, force=force, mark=MARK, what="a GGUF file",
                   write=lambda tmp: sizes.setdefault("meant", _write_gguf(
                       tmp, model_dir, cfg, spec, outtype, planned, vocab)),
                   verify=lambda tmp: verify_written(tmp, sizes["meant"], planned, out))
    counts: dict[str, int] = {}
    for t in planned:
        counts[t.qtype] = counts.get(t.qtype, 0) + 1
    return {"path": str(out), "outtype": outtype, "architecture": spec.gguf_arch,
            "tensors": len(planned), "types": counts, "bytes": out.stat().st_size,
            "seconds": round(time.perf_counter() - started, 2)}
