"""The base model's evaluation, measured once and reused while nothing it depends on changed.

Every run of a recipe re-measures the same base model on the same items, templates and
protocol; on a 1.5B model on two cores that is most of ``eval`` (the belief readings of
the pool alone take minutes). ``metrics.json`` already keeps entries only when its
``config`` (items, modes, templates, judge, known rule...) is unchanged; this module adds
the other half of "unchanged": the base's files. An entry is reused only when the base
resolves to the same files with the same sizes and modification times (``identity``) —
a cheap check, as make's, not a hash of gigabytes — and carries the known set that
``eval.known``'s belief reading gave (``belief_known``), so a reuse needs no reading.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

WEIGHT_SUFFIXES = (".safetensors", ".json", ".model", ".txt", ".gguf")


def model_identity(path: Path) -> dict:
    """{file name: [size, mtime_ns]} of a model directory's weights, config and tokenizer
    files (or of one file); {} for a source with no local files (nothing is reused)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    else:
        return {}
    out = {}
    for p in files:
        st = p.stat()
        out[p.name] = [st.st_size, st.st_mtime_ns]
    return out


def reusable_base(results: dict, identity: dict, by_belief: bool) -> Optional[dict]:
    """The ``base`` entry of an earlier metrics.json (same config: the caller checked) when
    it was measured on exactly these files and, where known items come from beliefs, holds
    the known set they gave; else None (the base is measured again)."""
    old = results.get("base")
    if not isinstance(old, dict) or not identity or old.get("identity") != identity:
        return None
    if by_belief and not isinstance(old.get("belief_known"), list):
        return None
    return old


def stored_beliefs(entry: dict) -> tuple[set, dict]:
    """The known ids and belief summary an earlier base entry recorded."""
    beliefs = (entry.get("sycophancy", {}).get("selectivity", {}).get("beliefs") or {})
    beliefs = {k: v for k, v in beliefs.items() if k != "scope"}
    return set(entry["belief_known"]), beliefs
