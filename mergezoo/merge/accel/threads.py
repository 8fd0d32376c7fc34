"""Scoped control of torch's intra-op thread count.

Example:
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on `threads` intra-op threads (None: leave as is), then restore the count.

    Small operations split over several threads wait for each other at every operation's end;
    when other processes hold the cores, each wait can cost a scheduler time slice, which makes
    a stream of cache-sized operations many times slower. One thread never waits."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
