"""Where every stage runs its model, and in which dtype: ONE policy for locate, train,
evaluate and the sweep.

:func:`resolve` turns the recipe's ``model.device`` / ``model.dtype`` / ``model.max_memory``
(and the CLI's ``--device``, which wins) into a :class:`Placement`:

- device ``auto`` (the default) is the first CUDA device when one is present, else Apple's
  ``mps``, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` ask for one explicitly,
  and asking for an accelerator that is not there is an error, not a silent CPU run;
- dtype ``auto`` is bfloat16 on CUDA (float16 where the GPU has no bfloat16) and float32
  elsewhere; scores, log-probabilities and losses are always computed in float32
  (``compute_dtype``), whatever the weights are stored in;
- a model whose weights do not fit the device's free memory (or any model when
  ``model.max_memory`` is set) is split by accelerate's device map over the GPUs, then the
  CPU, then disk (:func:`split_map`); inputs go to the device of the input embeddings.

Training keeps its one mechanism, accelerate's ``Accelerator``; it is told the same device.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from headsurgeon.core.errors import ValidationError

DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
FIT_MARGIN = 1.2  # weights x this must fit the free memory (activations, caches, workspace)


@dataclass(frozen=True)
class Accelerators:
    """What the machine has (a fake one in tests): CUDA devices and their free bytes."""

    n_cuda: int = 0
    mps: bool = False
    bf16: bool = True
    free: tuple = ()  # free bytes per CUDA device
    cpu_bf16: bool = True  # the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX)

    @classmethod
    def probe(cls) -> "Accelerators":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        free = tuple(torch.cuda.mem_get_info(i)[0] for i in range(n))
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        bf16 = bool(n and torch.cuda.is_bf16_supported())
        return cls(n, mps, bf16, free, _cpu_bf16())


def _cpu_bf16() -> bool:
    import torch

    probes = [getattr(torch.cpu, n, None) for n in
              ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(p() for p in probes if p is not None)
    except RuntimeError:  # pragma: no cover - a build without the probes
        return False


@dataclass(frozen=True)
class Placement:
    device: str                     # where inputs go: "cpu", "cuda:0", "mps"
    dtype: str                      # dtype the weights are loaded in
    device_map: Union[None, str, dict] = None  # None: the whole model on ``device``
    max_memory: Optional[dict] = None
    compute_dtype: str = "float32"  # scores, log-probs and losses
    notes: tuple = ()  # why it was split, printed when a stage resolves it

    @property
    def torch_device(self):
        import torch

        return torch.device(self.device)

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def load_kwargs(self) -> dict:
        """Keyword arguments of ``from_pretrained`` for this placement."""
        kw: dict = {"dtype": self.torch_dtype}
        if self.device_map is not None:
            kw["device_map"] = self.device_map
            if self.max_memory:
                kw["max_memory"] = self.max_memory
        elif self.device.startswith("cuda"):  # straight onto the GPU, no CPU copy first
            kw["device_map"] = {"": self.device}
        return kw

    def place(self, model):
        """Move a model loaded without a device map onto ``device``."""
        if self.device_map is None and not getattr(model, "hf_device_map", None):
            model.to(self.device)
        return model


def check_device(value: Optional[str], field_name: str = "model.device") -> Optional[str]:
    if value is None:
        return None
    value = str(value).strip().lower()
    if not DEVICE_RE.match(value):
        raise ValidationError(f"{value!r} is not a device ({DEVICE_HELP})", field=field_name)
    return value


def _pick_device(want: str, acc: Accelerators, where: str) -> str:
    if want == "auto":  # under accelerate launch, each process its own GPU
        rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        return f"cuda:{rank % acc.n_cuda}" if acc.n_cuda else ("mps" if acc.mps else "cpu")
    if want.startswith("cuda"):
        idx = int(want.partition(":")[2] or 0)
        if not acc.n_cuda:
            raise ValidationError(f"{want} asked for, but torch sees no CUDA device "
                                  f"(use auto or cpu)", field=where)
        if idx >= acc.n_cuda:
            raise ValidationError(f"{want} asked for, but there are {acc.n_cuda} CUDA "
                                  f"devices", field=where)
        return f"cuda:{idx}"
    if want == "mps" and not acc.mps:
        raise ValidationError("mps asked for, but torch sees no MPS device", field=where)
    return want


def _pick_dtype(want: str, device: str, acc: Accelerators) -> str:
    if want != "auto":
        return want
    if device.startswith("cuda"):
        return "bfloat16" if acc.bf16 else "float16"
    return "float32"


def resolve(section=None, cli_device: Optional[str] = None, *,
            weights_bytes: Optional[int] = None,
            accelerators: Optional[Accelerators] = None) -> Placement:
    """The placement of recipe section ``model`` (any object with ``device``, ``dtype``
    and ``max_memory``; None: all defaults). ``weights_bytes`` (the checkpoint's size in
    the load dtype) decides whether the model must be split over several devices."""
    want = check_device(cli_device, "--device") or check_device(
        getattr(section, "device", None) or "auto")
    where = "--device" if cli_device or getattr(section, "_device_from_cli", False) \
        else "model.device"
    acc = accelerators if accelerators is not None else Accelerators.probe()
    device = _pick_device(want, acc, where)
    dtype = _pick_dtype(getattr(section, "dtype", None) or "auto", device, acc)
    max_memory = getattr(section, "max_memory", None) or None
    if max_memory:
        caps = {_mem_key(k): v for k, v in dict(max_memory).items()}
        if not device.startswith("cuda"):  # GPU caps mean nothing on a machine without one
            caps = {k: v for k, v in caps.items() if not isinstance(k, int)}
        return Placement(device, dtype, "auto", caps, notes=("model.max_memory set",))
    if device.startswith("cuda") and weights_bytes:
        idx = int(device.partition(":")[2])
        free = acc.free[idx] if idx < len(acc.free) else None
        if free is not None and weights_bytes * FIT_MARGIN > free:
            gpus = range(acc.n_cuda) if want == "auto" else [idx]
            cap = {i: int(acc.free[i] / FIT_MARGIN) for i in gpus if i < len(acc.free)}
            why = (f"{weights_bytes / 1e9:.1f} GB of weights do not fit the "
                   f"{free / 1e9:.1f} GB free on {device}: split by accelerate")
            return Placement(device, dtype, "auto", {**cap, "cpu": _cpu_bytes()},
                             notes=(why,))
    slow = _slow_cpu_dtype(device, dtype, acc)
    return Placement(device, dtype, notes=(slow,) if slow else ())


def _slow_cpu_dtype(device: str, dtype: str, acc: Accelerators) -> str:
    """Half precision on a CPU: ~3x faster than float32 with bfloat16 matrix units (AMX,
    measured on Qwen2.5-0.5B), several times slower without them."""
    if device != "cpu" or dtype == "float32" or (dtype == "bfloat16" and acc.cpu_bf16):
        return ""
    if dtype == "float16":
        return "float16 on a CPU runs slower than float32 or bfloat16 (model.dtype)"
    return ("bfloat16 on a CPU without bfloat16 matrix instructions (AVX512-BF16, AMX) "
            "runs slower than float32 (model.dtype: float32 is faster here)")


def placement_for(section, model_dir: Union[str, Path, None], *,
                  accelerators: Optional[Accelerators] = None) -> Placement:
    """:func:`resolve` for the checkpoint in ``model_dir`` (its size decides a split)."""
    acc = accelerators if accelerators is not None else Accelerators.probe()
    first = resolve(section, accelerators=acc)
    if first.device_map is not None or not first.device.startswith("cuda") or not model_dir:
        return first
    return resolve(section, weights_bytes=weights_bytes(model_dir, first.dtype),
                   accelerators=acc)


def _cpu_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available * 0.8)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return 64 << 30


def weights_bytes(model_dir: Union[str, Path], dtype: str) -> int:
    """Bytes the checkpoint's tensors take in ``dtype`` (read from headers only)."""
    from headsurgeon.model.safetensors_io import read_checkpoint_index

    index = read_checkpoint_index(model_dir)
    width = {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype, 4)
    total = 0
    for name in index:
        n = 1
        for d in index.info(name).shape:
            n *= int(d)
        total += n * width
    return total


def split_map(model_dir: Union[str, Path], dtype: str, max_memory: dict) -> dict:
    """accelerate's device map for the model in ``model_dir`` under ``max_memory``
    (e.g. ``{0: "20GB", "cpu": "60GB"}``): decoder layers are never cut in two."""
    import torch
    from accelerate import infer_auto_device_map, init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(cfg)
    caps = {_mem_key(k): v for k, v in max_memory.items()}
    return infer_auto_device_map(meta, max_memory=caps, dtype=getattr(torch, dtype),
                                 no_split_module_classes=list(meta._no_split_modules or []))


def _mem_key(key):
    """accelerate names GPUs by index: ``cuda:1`` / ``"1"`` -> 1; cpu, mps, disk stay."""
    key = str(key)
    if key.startswith("cuda"):
        return int(key.partition(":")[2] or 0)
    return int(key) if key.isdigit() else key


def is_out_of_memory(exc: BaseException) -> bool:
    """A device (or CPU) allocation failure, as opposed to any other error."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(exc, torch.OutOfMemoryError) or should_reduce_batch_size(exc)


def fit_batches(order: list, batch_size: int, run) -> int:
    """``run(chunk)`` over ``order`` in chunks of at most ``batch_size``; a chunk that runs
    out of memory is retried at half the size, and later chunks keep the smaller size.
    Returns the size that fitted. ``run`` must leave no partial result behind when it
    fails (results are written per index, so a retried chunk overwrites them)."""
    import gc

    import torch

    i, size = 0, max(1, int(batch_size))
    while i < len(order):
        chunk = order[i:i + size]
        try:
            run(chunk)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
            if size == 1 or not is_out_of_memory(exc):
                raise
            size = max(1, size // 2)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        i += len(chunk)
    return size


def input_device(model):
    """Where a (possibly split) model wants its input ids: its input embeddings' device."""
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return next(model.parameters()).device


def with_device(recipe, device: Optional[str]):
    """``recipe`` with ``model.device`` overridden by the CLI's ``--device`` (validated)."""
    if device is None:
        return recipe
    device = check_device(device, "--device")
    model = recipe.model.model_copy(update={"device": device})
    model._device_from_cli = True
    copy = recipe.model_copy(update={"model": model})
    copy._path, copy._text, copy._lines = recipe._path, recipe._text, recipe._lines
    return copy


def _anchored(recipe, exc: ValidationError) -> ValidationError:
    """A ``model.*`` error at the recipe's line (``--device`` errors stay the CLI's)."""
    if exc.field and exc.field.startswith("model.") and not exc.file:
        return recipe.error(exc.field, exc.detail)
    return exc


def check_recipe_device(recipe, *, accelerators: Optional[Accelerators] = None) -> str:
    """``validate``: the device every stage would run on exists on this machine
    (``cuda:7`` with fewer GPUs, ``mps`` off a Mac: one line, before any stage)."""
    try:
        return resolve(recipe.model, accelerators=accelerators).device
    except ValidationError as exc:
        raise _anchored(recipe, exc) from None


def recipe_placement(recipe, model_dir: Union[str, Path, None] = None, *,
                     accelerators: Optional[Accelerators] = None) -> Placement:
    """:func:`placement_for` with errors anchored to the recipe's line (``--device``
    errors stay the CLI's)."""
    try:
        placement = placement_for(recipe.model, model_dir, accelerators=accelerators)
    except ValidationError as exc:
        raise _anchored(recipe, exc) from None
    from headsurgeon.core.progress import progress_note

    for note in placement.notes:
        progress_note(f"placement: {note}")
    return placement
