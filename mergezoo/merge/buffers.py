"""Reusable tensor buffers for the engine's streaming loop.

On CPU, a fresh tensor of a few hundred MB is fresh memory: the kernel maps and zeroes it page
by page on first touch, which costs more than the arithmetic done on it. The engine streams
tensors one after the other with at most two in flight (one being read, one being merged), so
two sets of buffers, grown to the largest tensor seen, serve the whole merge.

Example:
    >>> ring = BufferRing(slots=2)
    >>> a = ring.take(0, 0, (2, 3), torch.float32)
    >>> b = ring.take(0, 0, (3, 2), torch.float32)   # the same memory, reshaped
    >>> a.data_ptr() == b.data_ptr()
    True
"""

from __future__ import annotations

import math

import torch


class BufferRing:
    """`depth` sets of `slots` flat buffers; `take(turn, slot, ...)` returns a view of the
    buffer of set `turn % depth`, grown when too small. The caller guarantees a set is not in
    use when its turn comes round again."""

    def __init__(self, slots: int, depth: int = 2, device: torch.device | str = "cpu"):
        self.depth = depth
        self.device = torch.device(device)
        self._buffers: list[list[torch.Tensor | None]] = [[None] * slots for _ in range(depth)]

    def take(self, turn: int, slot: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        row = self._buffers[turn % self.depth]
        buf = row[slot]
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = torch.empty(n, dtype=dtype, device=self.device)
            row[slot] = buf
        return buf[:n].view(shape)
