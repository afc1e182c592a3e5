"""``headsurgeon export MODEL_OR_RUN --lora-gguf OUT.gguf``: the edit as a llama.cpp LoRA.

The layout is the one llama.cpp's own ``convert_lora_to_gguf.py`` writes and
``llama_adapter_lora_init`` reads: ``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha``, and per edited weight ``blk.N.attn_q.weight.lora_a`` (numpy
``[r, in]``) and ``.lora_b`` (``[out, r]``). llama.cpp scales each pair by
``alpha / r`` with ``r`` the pair's own rank and one ``alpha`` for the file, so every
pair is padded with zero factors to the largest rank ``R`` and ``alpha = R``: the scale is
1 everywhere and the padding adds exact zeros. Llama-family q/k rows are permuted into
llama.cpp's rotary layout (the permutation ``--gguf`` applies to the full weights), which
for ``W + B @ A`` means permuting the rows of ``B``. llama.cpp adapters carry no biases, so
an edit that changes bias entries (Qwen2's q/k/v biases) is refused.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from headsurgeon.apply.export_gguf import ARCHS, _permute_rows
from headsurgeon.model.lora_factors import module_factors
from headsurgeon.core.errors import RuntimeFailure, ValidationError
from headsurgeon.apply.gguf_file import MARK_KEY, has_mark, write_verified
from headsurgeon.core.paths import check_replace, kind_of

MARK = "headsurgeon.lora-gguf/1"  # what --force replaces


def _gguf_arch(edit) -> str:
    model_type = edit.plan.cfg.get("model_type")
    if model_type not in ARCHS:
        raise ValidationError(f"{model_type!r} cannot be exported as a llama.cpp LoRA yet; "
                              f"supported: {', '.join(ARCHS)}", field="--lora-gguf")
    return ARCHS[model_type].gguf_arch


def check_gguf_lora(edit, out: Path, force: bool) -> None:
    """Every reason the GGUF LoRA cannot be written, before anything is."""
    _gguf_arch(edit)
    moved = [m.bias for m in edit.plan.modules
             if m.bias_slices and any(bool(edit.values[s.key].any()) for s in m.bias_slices)]
    if moved:
        raise ValidationError(f"the edit changes bias entries ({moved[0]}); a llama.cpp LoRA "
                              "cannot carry bias changes: use --lora (peft) or --gguf (the "
                              "full model)", field="--lora-gguf")
    if kind_of(out) == "directory":
        raise ValidationError("output is a directory; give a .gguf file path", file=str(out))
    check_replace(out, force=force, ours=is_lora_gguf, what="a GGUF LoRA file")
    _tensor_names(edit)


def is_lora_gguf(path: Path) -> bool:
    """A GGUF LoRA this exporter wrote (what ``--force`` may replace): headsurgeon's key."""
    return has_mark(path, MARK)


def _tensor_names(edit) -> dict[str, str]:
    """``{module: GGUF weight name}`` through gguf's own HF -> GGUF name map."""
    import gguf

    arch_name = _gguf_arch(edit)
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    names = gguf.get_tensor_name_map(arch, int(edit.plan.cfg["num_hidden_layers"]))
    out = {}
    for m in edit.plan.modules:
        gguf_base = names.get_name(m.module)
        if gguf_base is None:
            raise ValidationError(f"{m.module} has no GGUF name for architecture {arch_name}",
                                  field="--lora-gguf")
        out[m.module] = f"{gguf_base}.weight"
    return out


def gguf_lora_arrays(edit) -> tuple[int, list[tuple[str, np.ndarray]]]:
    """``(rank R, [(name, float32 array)])`` in file order: each pair padded to ``R``,
    ``lora_b`` rows permuted for llama-family q/k."""
    cfg = edit.plan.cfg
    names = _tensor_names(edit)
    permute = ARCHS[cfg["model_type"]].permute_qk
    rank = max(m.rank for m in edit.plan.modules)
    out = []
    for m in edit.plan.modules:
        name = names[m.module]
        a, b, _ = module_factors(m, edit.values)
        a_pad = torch.zeros(rank, a.shape[1], dtype=torch.float32)
        b_pad = torch.zeros(b.shape[0], rank, dtype=torch.float32)
        a_pad[:a.shape[0]], b_pad[:, :b.shape[1]] = a, b
        b_np = b_pad.numpy()
        part = name.split(".")[-2]
        if permute and part in ("attn_q", "attn_k"):
            heads = cfg["num_attention_heads"] if part == "attn_q" else \
                cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
            b_np = _permute_rows(b_np, int(heads))
        out += [(f"{name}.lora_a", np.ascontiguousarray(a_pad.numpy())),
                (f"{name}.lora_b", np.ascontiguousarray(b_np, dtype=np.float32))]
    return rank, out


def _write(path: Path, edit, rank: int, arrays: list[tuple[str, np.ndarray]]) -> None:
    import gguf

    from headsurgeon.apply.export_gguf import _model_name

    writer = gguf.GGUFWriter(path, _gguf_arch(edit))
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
        writer.add_string(MARK_KEY, MARK)
        writer.add_name(f"{_model_name(Path(edit.base_model))} headsurgeon LoRA")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, arr in arrays:
            writer.add_tensor(name, arr)
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.flush()
        for fout in writer.fout or []:
            os.fsync(fout.fileno())
    finally:
        writer.close()


def _verify_written(path: Path, arrays: list[tuple[str, np.ndarray]], out: Path) -> None:
    """Read the file back before the rename: every tensor there, with its bytes."""
    try:
        from gguf import GGUFReader

        got = {t.name: t.data for t in GGUFReader(path).tensors}
    except Exception as exc:  # noqa: BLE001 - any parse failure: the file is not whole
        raise RuntimeFailure(f"cannot write: the file written does not read back "
                             f"({str(exc).splitlines()[0][:120]})", file=str(out)) from None
    if list(got) != [n for n, _ in arrays] or not all(
            np.array_equal(got[n], a) for n, a in arrays):
        raise RuntimeFailure("cannot write: the tensors read back differ from those written",
                             file=str(out))


def write_gguf_lora(edit, out: Path, *, force: bool = False) -> dict:
    """Write the GGUF LoRA under a temporary name beside ``out``, then rename it."""
    check_gguf_lora(edit, out, force)
    rank, arrays = gguf_lora_arrays(edit)
    write_verified(out, force=force, mark=MARK, what="a GGUF LoRA file",
                   write=lambda tmp: _write(tmp, edit, rank, arrays),
                   verify=lambda tmp: _verify_written(tmp, arrays, out))
    return {"path": str(out), "architecture": _gguf_arch(edit), "tensors": len(arrays),
            "rank": rank, "alpha": float(rank), "bytes": out.stat().st_size}
