"""The report's size line: the shipped checkpoint next to the same edit as a LoRA adapter.

The adapter's size is what ``headsurgeon export RUN --lora OUT`` writes, computed from the
delta's slices and the model's config alone (nothing is exported or read but headers)."""
from __future__ import annotations

from pathlib import Path

from headsurgeon.core.errors import HeadsurgeonError
from headsurgeon.report.tables import Block


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} bytes"


def size_blocks(run_dir: Path) -> list[Block]:
    """One paragraph when the run shipped a model and kept its delta; none otherwise."""
    from headsurgeon.model.lora_factors import plan_lora, planned_adapter_bytes
    from headsurgeon.model.config import read_config
    from headsurgeon.model.delta import read_delta
    from headsurgeon.model.safetensors_io import read_checkpoint_index

    model_dir, delta_path = run_dir / "model", run_dir / "delta.safetensors"
    if not ((model_dir / "config.json").is_file() and delta_path.is_file()):
        return []
    try:
        index = read_checkpoint_index(model_dir)
        full = sum(index.shard_path(s).stat().st_size for s in index.shards)
    except (HeadsurgeonError, OSError):
        return []
    text = f"The shipped checkpoint (`model/`) is {_mb(full)}."
    try:
        plan = plan_lora(read_delta(delta_path, load_values=False),
                         read_config(model_dir / "config.json"), list(index))
        ranks = "/".join(map(str, sorted(set(plan.ranks.values()))))
        text += (f" The same edit as an exact LoRA adapter (`headsurgeon export RUN_DIR "
                 f"--lora OUT`) is {_mb(planned_adapter_bytes(plan))} "
                 f"({len(plan.modules)} modules, rank {ranks}).")
    except (HeadsurgeonError, OSError) as exc:
        text += f" It has no LoRA form: {exc.detail if isinstance(exc, HeadsurgeonError) else exc}."
    return [Block("h2", "Size"), Block("p", text)]
