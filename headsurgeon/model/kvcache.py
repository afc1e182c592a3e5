"""A KV cache that grows in place, for :class:`headsurgeon.model.kvrows.KVRows`.

transformers' ``DynamicLayer`` appends every new token with ``torch.cat``, which copies
the layer's whole cache: one greedy step over 48 rows of a ~150-token SmolLM2 dialogue
spends about a quarter of its time in those copies. :class:`InPlaceLayer` keeps keys and
values in buffers with spare room along the sequence axis (doubling when full) and writes
new tokens into them; ``keys`` / ``values`` are views of the filled part, so attention
reads the same values in the same shape as with ``DynamicLayer`` (the results are
bit-identical; tests check it).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

MIN_ROOM = 64  # sequence slots allocated at least


class InPlaceLayer(DynamicLayer):
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._kbuf = self._vbuf = None
        self.n_allocs = 0  # buffer (re)allocations: a handful per dialogue, not one a token

    def _adopt(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        """New buffers holding ``keys``/``values`` with room for ``room`` slots."""
        n = keys.shape[-2]
        self._kbuf = keys.new_empty(*keys.shape[:-2], room, keys.shape[-1])
        self._vbuf = values.new_empty(*values.shape[:-2], room, values.shape[-1])
        self._kbuf[..., :n, :].copy_(keys)
        self._vbuf[..., :n, :].copy_(values)
        self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]
        self.n_allocs += 1

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        fits = (self._kbuf is not None and end <= self._kbuf.shape[-2]
                and self._kbuf.shape[:-2] == key_states.shape[:-2])
        if not fits:
            keys = self.keys if start else key_states[..., :0, :]
            values = self.values if start else value_states[..., :0, :]
            self._adopt(keys, values, max(2 * end, MIN_ROOM))
        self._kbuf[..., start:end, :].copy_(key_states)
        self._vbuf[..., start:end, :].copy_(value_states)
        self.keys, self.values = self._kbuf[..., :end, :], self._vbuf[..., :end, :]
        return self.keys, self.values

    def _rebuffer(self) -> None:
        if self.is_initialized and self.keys is not None and self.keys.numel():
            self._adopt(self.keys, self.values, self._kbuf.shape[-2])

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._rebuffer()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._rebuffer()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._rebuffer()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)  # a view of the buffer: writes continue after it

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        super().reset()


class InPlaceCache(DynamicCache):
    """A ``DynamicCache`` of :class:`InPlaceLayer`: like the config-less ``DynamicCache()``
    KVRows used before, every layer keeps all its tokens (KVRows re-encodes short
    sliding-window models, see :func:`headsurgeon.model.kvrows.has_short_window`)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=InPlaceLayer)
