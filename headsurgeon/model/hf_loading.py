"""Every load of weights through transformers' ``from_pretrained`` goes through here.

transformers initialises a weight the checkpoint lacks at random (and drops one the model
lacks) with at most a logged report; a stage would then run, and exit 0, on a model that
is not the one on disk. :func:`from_pretrained` asks for the loading info and refuses
instead. :func:`converting` is what a one-time conversion prints: one line, once, not
transformers' progress bars.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path

from headsurgeon.core.errors import CheckpointError

_KINDS = (  # loading-info key, what it means
    ("missing_keys", "is missing from the weights, and loading would initialise it at random"),
    ("mismatched_keys", "has a shape the model config.json describes does not have"),
    ("unexpected_keys", "is not part of the model config.json describes"),
)


def _key(item) -> str:
    return str(item[0] if isinstance(item, (tuple, list)) else item)


def from_pretrained(cls, where, *, source=None, allow_unexpected: bool = False, **kwargs):
    """``cls.from_pretrained(where, **kwargs)``, refusing a load that initialised or
    dropped any weight (``allow_unexpected``: tensors the model does not use may be
    dropped, e.g. a GGUF's extras; nothing is random either way). ``source`` names the
    file in the error (default ``where``)."""
    model, info = cls.from_pretrained(where, output_loading_info=True, **kwargs)
    for kind, what in _KINDS:
        if kind == "unexpected_keys" and allow_unexpected:
            continue
        keys = sorted(_key(k) for k in (info or {}).get(kind) or ())
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise CheckpointError(f"tensor {keys[0]}{more} {what}",
                                  file=str(source if source is not None else where))
    contiguous_head_input(model)
    return model


def contiguous_head_input(model) -> None:
    """The LM head gets its input contiguous. Training reads logits at a few positions
    (``logits_to_keep``), a strided slice of the hidden states that requires grad; torch's
    matmul then does not fold it into one matrix product but expands the head's weight
    over the batch and copies it (4 x 151,936 x 896 on Qwen2.5: 55% of an SPT step's
    time). A contiguous input folds; for an input already contiguous this is a no-op."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(),
                                                              *args[1:]))


@contextlib.contextmanager
def converting(what: str, target: Path):
    """Say once that a model is being prepared, and silence transformers' progress bars
    (a GGUF conversion printed dozens of them) while it is."""
    from transformers.utils import logging as tf_logging

    from headsurgeon.core.progress import progress_note

    progress_note(f"preparing model: converting {what} into {target} (once; later runs "
                  "reuse it)")

    was_enabled = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    gguf_utils = old_tqdm = None
    with contextlib.suppress(Exception):  # the GGUF reader calls tqdm.auto directly
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        old_tqdm = gguf_utils.tqdm
        gguf_utils.tqdm = functools.partial(old_tqdm, disable=True)
    try:
        yield
    finally:
        if old_tqdm is not None:
            gguf_utils.tqdm = old_tqdm
        if was_enabled:
            with warnings.catch_warnings():  # the Hub's bars may be off by its own variable
                warnings.simplefilter("ignore")
                tf_logging.enable_progress_bar()
