"""The running batch's KV cache: one preallocated slot per row, [slots, kv heads, capacity, head dim] per
layer. A forward writes only its new tokens into its rows' slots, at each row's own positions, and attention
reads a view of the slots (a copy only when the rows' slots are not side by side). Admitting or finishing
a request copies no other row's cache; the engine keeps decoding rows in slots 0..n-1 by moving one row at
a time. The length grows by doubling up to the endpoint's token limit (a copy of the cache, a few times in
the endpoint's life, never per request).

It stands in for transformers' Cache: the model calls `update(keys, values, layer_idx)` in each attention
layer; the engine passes the attention mask itself (4D), so transformers never asks the cache for sizes.
"""

from __future__ import annotations

from typing import Any

INITIAL_CAPACITY = 512


class SlotCache:
    def __init__(self, slots: int, limit: int, device, capacity: int = INITIAL_CAPACITY):
        self.slots, self.limit, self.device = slots, limit, device
        self.capacity = min(capacity, limit)
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self._read: Any = None  # a slice of slots, or an index tensor
        self._write_slots: Any = None
        self._write_pos: Any = None
        self._width = 0

    def bind(self, slots: list[int], starts: list[int], width: int) -> int:
        """Aim the next forward at these slots: row i writes `width` new tokens from position starts[i];
        attention reads positions [0, max(starts) + width). Returns that read length."""
        import torch

        length = max(starts) + width
        self.reserve(length)
        if slots == list(range(slots[0], slots[0] + len(slots))):
            self._read = slice(slots[0], slots[0] + len(slots))
        else:
            self._read = torch.tensor(slots, device=self.device)
        self._write_slots = torch.tensor(slots, device=self.device)[:, None]
        self._write_pos = torch.tensor(starts, device=self.device)[:, None] + torch.arange(width, device=self.device)
        self._width = length
        return length

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Called by each attention layer: store the new keys/values, return everything the rows attend to."""
        import torch

        if layer_idx == len(self.keys):  # first forward: the shapes come from the model itself
            shape = (self.slots, key_states.shape[1], self.capacity, key_states.shape[3])
            self.keys.append(torch.zeros(shape, dtype=key_states.dtype, device=self.device))
            self.values.append(torch.zeros(shape, dtype=value_states.dtype, device=self.device))
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self._write_slots, :, self._write_pos] = key_states.transpose(1, 2)
        values[self._write_slots, :, self._write_pos] = value_states.transpose(1, 2)
        return keys[self._read, :, :self._width], values[self._read, :, :self._width]

    def reserve(self, length: int) -> None:
        if length <= self.capacity:
            return
        if length > self.limit:
            raise ValueError(f"the batch needs {length} cached tokens, over the endpoint's limit of {self.limit}")
        import torch

        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        capacity = min(capacity, self.limit)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = torch.zeros((*old.shape[:2], capacity, old.shape[3]), dtype=old.dtype, device=old.device)
                new[:, :, :self.capacity] = old
                store[i] = new
        self.capacity = capacity

    def move(self, source: int, target: int, length: int) -> None:
        """One row's cached tokens to another slot."""
        for store in (self.keys, self.values):
            for layer in store:
                layer[target, :, :length] = layer[source, :, :length]

    def swap(self, a: int, a_length: int, b: int, b_length: int) -> None:
        for store in (self.keys, self.values):
            for layer in store:
                held = layer[a, :, :a_length].clone()
                layer[a, :, :b_length] = layer[b, :, :b_length]
                layer[b, :, :a_length] = held

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
