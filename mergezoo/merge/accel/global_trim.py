"""Whole-model magnitude thresholds for TIES trimming over every tensor at once.

The paper's code trims each task vector to its top-k entries over the *whole model*. Holding a
whole task vector in memory defeats streaming, so the exact k-th largest magnitude is found in
two streaming passes. Where the engine merges slice by slice with the fused kernels, the first
pass samples every tensor's task vectors (a fixed stride over the whole model) to bracket the
threshold, and the second counts the entries above each bracket and gathers those inside it
(`kernels.band_scan`, a few tenths of a percent), among which a selection finds it. Elsewhere,
or when a bracket misses: radix selection, since the bit pattern of a non-negative float32
orders like the float: a histogram of the high 16 bits finds the bucket holding the
threshold, and a histogram of the low 16 bits inside that bucket finds it exactly.

Example:
    >>> thresholds = magnitude_thresholds(stream, densities=[0.2, 0.2])   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from mergezoo.merge.accel import kernels
from mergezoo.merge.spec import MergeInputs
from mergezoo.merge.topk import (BUCKETS, bracket, bucket_of_kth, float_of_bits,
                                 magnitude_bits, resolve_band)

SAMPLE = 1 << 20  # entries per expert in the whole-model sample that brackets a threshold


def paper_rank(entries: int, density: float) -> int:
    """Which largest magnitude the paper's code cuts at: it keeps every entry at least as
    large as the (n - int(density n))-th smallest, i.e. the (int(density n) + 1)-th largest
    (`topk_values_mask`), so int(density n) + 1 entries and the ties of the last (at most n)."""
    return min(entries, int(density * entries) + 1)


def magnitude_thresholds(stream: Callable[[], Iterable[MergeInputs]],
                         density: list[float]) -> list[float]:
    """Per expert, the magnitude of its k-th largest task-vector entry over the whole model,
    k = int(density * number of entries) + 1, as the paper's code (see `paper_rank`).
    `stream()` yields every mergeable tensor once (a `registry.ModelStream`: with `views`,
    the fused kernels' bracketed pass is tried first)."""
    if getattr(stream, "views", None) is not None:
        found = _bracketed(stream.views, stream.entries, density)
        if found is not None:
            return found
    n = len(density)
    high = [torch.zeros(BUCKETS, dtype=torch.int64) for _ in range(n)]
    total = 0
    for x in stream():
        # Counted from the task vectors: the in-memory merge passes those without the models.
        total += x.deltas[0].numel()
        for i, d in enumerate(x.deltas):
            high[i] += torch.bincount(magnitude_bits(d) >> 16, minlength=BUCKETS).cpu()
    picks = [bucket_of_kth(h, paper_rank(total, rho)) for h, rho in zip(high, density)]
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


def _bracketed(views: Callable[[], Iterable], entries: int,
               density: list[float]) -> list[float] | None:
    """`magnitude_thresholds` from a strided sample's bracket and one fused pass that counts
    above it and gathers within it; None where the kernels do not read the inputs or a
    bracket misses (the caller then runs the radix passes)."""
    ks = [paper_rank(entries, rho) for rho in density]
    if not all(0 < k < entries for k in ks):
        return None
    stride = max(1, entries // SAMPLE)
    samples: list[list[np.ndarray]] = [[] for _ in ks]
    for view in views():
        if view.arrays is None or not view.has_base:
            return None
        for i, sample in enumerate(samples):
            sample.append(view.magnitude_bits(i)(slice(0, view.n, stride)).numpy())
    brackets = [bracket(torch.from_numpy(np.concatenate(s)), entries, k)
                for s, k in zip(samples, ks)]
    lows, highs = [b[0] for b in brackets], [b[1] for b in brackets]
    above, bands = [0] * len(ks), [[] for _ in ks]
    for view in views():
        base, models = view.arrays[0], view.arrays[1:]
        scans = view.map(lambda part: kernels.band_scan(base[part], [m[part] for m in models],
                                                        lows, highs), view.parts)
        for scanned in scans:
            for i, (count, band) in enumerate(scanned):
                above[i] += count
                bands[i].append(band)
    found = [resolve_band(above[i], bands[i], k, lows[i], highs[i], kernels.kth_smallest)
             for i, k in enumerate(ks)]
    if any(f is None for f in found):
        return None
    return [float_of_bits(threshold) for threshold, _, _ in found]
