"""Whole-model magnitude thresholds for TIES trimming over every tensor at once.

The paper's code trims each task vector to its top-k entries over the *whole model*. Holding a
whole task vector in memory defeats streaming, so the exact k-th largest magnitude is found by
radix selection in two streaming passes: the bit pattern of a non-negative float32 orders like
the float, so a histogram of the high 16 bits finds the bucket holding the threshold, and a
histogram of the low 16 bits inside that bucket finds it exactly.

Example:
    >>> thresholds = magnitude_thresholds(stream, densities=[0.2, 0.2])   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from mergezoo.merge.ops import BUCKETS, bucket_of_kth, kept_count, magnitude_bits
from mergezoo.merge.registry import MergeInputs


def magnitude_thresholds(stream: Callable[[], Iterable[MergeInputs]],
                         density: list[float]) -> list[float]:
    """Per expert, the magnitude of its k-th largest task-vector entry over the whole model,
    k = int(density * number of entries). `stream()` yields every mergeable tensor once."""
    n = len(density)
    high = [torch.zeros(BUCKETS, dtype=torch.int64) for _ in range(n)]
    total = 0
    for x in stream():
        total += x.models[0].numel()
        for i, d in enumerate(x.deltas):
            high[i] += torch.bincount(magnitude_bits(d) >> 16, minlength=BUCKETS).cpu()
    picks = [bucket_of_kth(h, kept_count(total, rho)) for h, rho in zip(high, density)]
    low = [torch.zeros(BUCKETS, dtype=torch.int64) for _ in range(n)]
    for x in stream():
        for i, d in enumerate(x.deltas):
            bits = magnitude_bits(d)
            inside = bits[(bits >> 16) == picks[i][0]] & 0xFFFF
            if inside.numel():
                low[i] += torch.bincount(inside, minlength=BUCKETS).cpu()
    thresholds = []
    for (bucket, rank), h in zip(picks, low):
        low_bits, _ = bucket_of_kth(h, rank)
        pattern = torch.tensor([(bucket << 16) | low_bits], dtype=torch.int64).to(torch.int32)
        thresholds.append(float(pattern.view(torch.float32)))
    return thresholds
