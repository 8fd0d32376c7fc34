"""Exact top-k selection by magnitude, ties broken by position, over a flat tensor that need
not exist in memory at once: the statistic TIES and Breadcrumbs trim with.

A `TopKCut` is found from the magnitudes' float32 bit patterns (which order like the
magnitudes) of any parts of the tensor, and applied part by part in any order. `Selection`
is what a method is given: a cut restricted to the part of the tensor it merges.

Example:
    >>> flat = torch.tensor([0.5, -2.0, 0.5, 1.0])
    >>> cut = TopKCut.find(lambda part: magnitude_bits(flat[part]), 4, k=2)
    >>> Selection(cut).apply(flat.clone())
    tensor([ 0., -2.,  0.,  1.])
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

BUCKETS = 1 << 16
SIGN_BIT = -(1 << 31)  # int32 with only the sign bit set
SMALL = 1 << 18  # below this many entries, selection beats two 65,536-bucket histograms


def bucket_of_kth(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """Given a histogram over ordered buckets, the bucket holding the k-th largest value and
    that value's rank (1-based, from the top) inside the bucket."""
    from_top = hist.flip(0).cumsum(0)
    idx = int(torch.searchsorted(from_top, torch.tensor(k, dtype=from_top.dtype)))
    bucket = hist.numel() - 1 - idx
    return bucket, k - int(from_top[idx] - hist[bucket])


def magnitude_bits(values: torch.Tensor) -> torch.Tensor:
    """|values| as float32 bit patterns (int32), which order exactly like the magnitudes."""
    return values.abs().to(torch.float32).reshape(-1).view(torch.int32)


def float_of_bits(bits: int) -> float:
    """The float32 whose bit pattern is `bits` (the inverse of `magnitude_bits`)."""
    return struct.unpack("<f", struct.pack("<i", bits))[0]


Magnitudes = Callable[[slice], torch.Tensor]  # a slice of a flat tensor -> its magnitude bits
# (part, low, high) -> (how many magnitude bits in part are > high, those in [low, high])
BandScan = Callable[[slice, int, int], "tuple[int, torch.Tensor]"]
# (part, lows, highs) -> BandScan's answer for every task vector of a tensor, in one pass
BandScanAll = Callable[[slice, list[int], list[int]], "list[tuple[int, np.ndarray]]"]


def band_of(bits_of: Magnitudes) -> BandScan:
    """The bracket pass's scan of one part, in torch operations."""
    def scan(part: slice, low: int, high: int) -> tuple[int, torch.Tensor]:
        b = bits_of(part)
        # Comparisons that produce booleans are slow on CPU; in-place integer arithmetic is
        # not. b > high is clamp(b - high, 0, 1); low <= b <= high is an unsigned
        # b - low <= high - low, a signed comparison once the sign bits are flipped (bits are
        # >= 0: no overflow).
        above = int((b - high).clamp_(0, 1).sum())
        band = (b - low).bitwise_xor_(SIGN_BIT).le_((high - low) ^ SIGN_BIT)
        return above, b[band.bool()]
    return scan


def kth_smallest(values: torch.Tensor, ranks: list[int]) -> list[int]:
    """The `ranks`-th smallest (1-based) of a flat integer tensor. On CPU numpy's introselect,
    many times faster than torch.kthvalue (8 ms against 0.5 ms for 600,000 entries here);
    `kernels.kth_smallest` is faster still on magnitudes with many equal values."""
    if values.device.type == "cpu":
        picked = np.partition(values.numpy(), [r - 1 for r in ranks])
        return [int(picked[r - 1]) for r in ranks]
    return [int(torch.kthvalue(values, r).values) for r in ranks]


SAMPLE = 32768  # entries in the strided sample that brackets a top-k cut


def sample_part(n: int) -> slice:
    """The strided part of a flat tensor of `n` entries that brackets its top-k cut."""
    return slice(0, n, max(1, n // SAMPLE))


def bracket(sample: torch.Tensor, n: int, k: int) -> tuple[int, int]:
    """Magnitude bits (low, high) that very likely hold the k-th largest of `n` entries,
    judged from a strided sample of their magnitude bits: its values ranked a margin of four
    standard deviations of a sample rank above and below the cut's expected rank."""
    m = sample.numel()
    rank = k / n * m
    margin = int(4 * (rank * (1 - k / n)) ** 0.5) + 16
    high, low = kth_smallest(sample, [m - max(0, int(rank) - margin),
                                      m - min(m - 1, int(rank) + margin)])
    return low, high


def kth_in_range(values: torch.Tensor, ranks: list[int], low: int, high: int) -> list[int]:
    """`kth_smallest` of integers within [low, high]: by a histogram when the range is small
    against their number (bf16 task vectors' magnitudes near a cut: a few dozen distinct
    values), else by selection."""
    if high - low >= max(BUCKETS, values.numel()):
        return kth_smallest(values, ranks)
    counts = np.cumsum(np.bincount(values.numpy() - np.int32(low), minlength=high - low + 1))
    return [low + int(np.searchsorted(counts, r)) for r in ranks]


def resolve_band(above: int, bands: list, k: int, low: int, high: int,
                 select: Callable = kth_in_range) -> tuple[int, list[int], list[int]] | None:
    """The exact top-k cut from a bracket pass: `above` entries are above `high`, `bands[j]`
    holds part j's magnitude bits within [low, high], in order. Returns the threshold, how
    many entries equal to it each part keeps (the first ones, in part order) and how many it
    has, or None when the bracket missed the cut. `select(values, ranks, low, high)` finds
    the threshold among the band's values (`kth_in_range`, or a fused kernel's)."""
    bands = [b.cpu().numpy() if isinstance(b, torch.Tensor) else b for b in bands]
    candidates = np.concatenate(bands) if len(bands) > 1 else bands[0]
    need = k - above
    if not 0 < need <= candidates.size:
        return None
    threshold, = select(torch.from_numpy(candidates), [candidates.size - need + 1], low, high)
    ties = need - int(np.count_nonzero(candidates > threshold))
    # The tied entries that belong to the top k are the first `ties` of them, in part order.
    equal = [int(np.count_nonzero(b == threshold)) for b in bands]
    kept = []
    for count in equal:
        kept.append(min(ties, count))
        ties -= kept[-1]
    return threshold, kept, equal


def _radix_threshold(bits_of: Magnitudes, k: int, parts: list[slice],
                     device: torch.device) -> tuple[int, list[int], list[int]]:
    """Exact fallback of `TopKCut.find`: radix selection with two 65,536-bucket histograms."""
    high = torch.zeros(BUCKETS, dtype=torch.int64, device=device)
    for part in parts:
        high += torch.bincount(bits_of(part) >> 16, minlength=BUCKETS)
    bucket, rank = bucket_of_kth(high, k)
    low = torch.zeros_like(high)
    for part in parts:
        b = bits_of(part)
        low += torch.bincount(b[(b >> 16) == bucket] & 0xFFFF, minlength=BUCKETS)
    low_bits, _ = bucket_of_kth(low, rank)
    threshold = (bucket << 16) | low_bits
    ties = k - int(high[bucket + 1:].sum()) - int(low[low_bits + 1:].sum())
    equal = [int(torch.count_nonzero(bits_of(part) == threshold)) for part in parts]
    allowed = []
    for count in equal:  # the tied entries that belong to the top k come first
        allowed.append(min(ties, count))
        ties -= allowed[-1]
    return threshold, allowed, equal


class TopKCut:
    """The `k` largest magnitudes of a flat tensor of `n` entries (ties broken by position), as
    a cut applied part by part, in any order: in part `j`, entries above `threshold` (float32
    bits of a magnitude) are kept, and of the `equal[j]` entries equal to it, the first
    `ties[j]`.

    `bits_of(part)` gives the magnitude bits of any slice of the tensor, strided ones too, so
    the tensor itself need not exist in memory: the engine computes task-vector slices on the
    fly from the inputs.

    Finding a cut takes a strided sample that brackets the threshold, one pass that counts the
    entries above the bracket and gathers those inside it (a few percent of them), and an exact
    histogram or selection among those (`resolve_band`); radix selection when the bracket
    misses.

    Example:
        >>> flat = torch.tensor([0.5, -2.0, 0.5, 1.0])
        >>> cut = TopKCut.find(lambda part: magnitude_bits(flat[part]), 4, k=2)
        >>> cut.apply(flat.clone(), 0)
        tensor([ 0., -2.,  0.,  1.])
    """

    def __init__(self, threshold: int, ties: list[int], equal: list[int]) -> None:
        self.threshold = threshold
        self.ties = ties
        self.equal = equal

    @classmethod
    def find(cls, bits_of: Magnitudes, n: int, k: int, parts: list[slice] | None = None,
             device: torch.device | str = "cpu", select: Callable = kth_smallest) -> "TopKCut":
        """The cut, with the bracket pass in torch operations (see `band_of`); `select(values,
        ranks)` is the plain selection of a small tensor (`kernels.kth_smallest` is faster)."""
        parts = parts or [slice(0, n)]
        if n <= SMALL:  # a plain selection beats histograms and sampling here
            bits = bits_of(slice(0, n))
            threshold, = select(bits, [bits.numel() - k + 1])
            return cls(threshold, [k - int(torch.count_nonzero(bits > threshold))],
                       [int(torch.count_nonzero(bits == threshold))])
        scan = band_of(bits_of)
        return cls.find_each([bits_of], n, [k], parts,
                             lambda part, lows, highs: [scan(part, lows[0], highs[0])],
                             device=device)[0]

    @classmethod
    def find_each(cls, bits_of: list[Magnitudes], n: int, ks: list[int], parts: list[slice],
                  scan_all: BandScanAll, run: Callable = map,
                  device: torch.device | str = "cpu",
                  select: Callable = kth_in_range) -> "list[TopKCut]":
        """`find` for the task vectors of one tensor (model i: `bits_of[i]`, `ks[i]`) at once:
        `scan_all` does every bracket pass in one pass per part (the fused kernel reads the
        base once for all of them). `run(fn, items)` maps over parts and models (a thread
        pool's map); `select` finds a rank in a band (see `resolve_band`)."""
        if n <= SMALL:  # `select` also takes (values, ranks) alone, except kth_in_range
            small = kth_smallest if select is kth_in_range else select
            return [cls.find(b, n, k, parts, select=small) for b, k in zip(bits_of, ks)]
        brackets = list(run(lambda i: bracket(bits_of[i](sample_part(n)), n, ks[i]),
                            range(len(ks))))
        lows, highs = [b[0] for b in brackets], [b[1] for b in brackets]
        scanned = list(run(lambda part: scan_all(part, lows, highs), parts))

        def cut(i: int) -> TopKCut:
            found = resolve_band(sum(s[i][0] for s in scanned), [s[i][1] for s in scanned],
                                 ks[i], lows[i], highs[i], select)
            return cls(*(found or _radix_threshold(bits_of[i], ks[i], parts,
                                                    torch.device(device))))
        return list(run(cut, range(len(ks))))

    def keep(self, piece: torch.Tensor, j: int) -> torch.Tensor:
        """Boolean mask of the entries of part `j` (given as `piece`) that are in the top k."""
        b = magnitude_bits(piece)
        if 0 < self.equal[j] <= self.ties[j]:  # every tied entry is kept
            return (b >= self.threshold).view(piece.shape)
        keep = b > self.threshold
        if self.ties[j] > 0:
            keep[torch.nonzero(b == self.threshold).squeeze(1)[:self.ties[j]]] = True
        return keep.view(piece.shape)

    def apply(self, piece: torch.Tensor, j: int) -> torch.Tensor:
        """Part `j` with the entries that are not in the top k zeroed (maybe in place)."""
        if self.ties[j] > 0:
            return piece.mul_(self.keep(piece, j))
        # |x| > threshold is exactly hardshrink's rule, in one fast operation.
        return torch.nn.functional.hardshrink(piece, float_of_bits(self.threshold))




@dataclass(frozen=True)
class Selection:
    """The entries of one part (`part`, in the cut's parts) of a tensor that its top-k cut
    keeps; `cut` None keeps `everything` or nothing (a top-0)."""

    cut: TopKCut | None
    part: int = 0
    everything: bool = False

    def keep(self, piece: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the entries of `piece` (this part) that are kept."""
        if self.cut is None:
            return torch.full(piece.shape, self.everything, dtype=torch.bool,
                              device=piece.device)
        return self.cut.keep(piece, self.part)

    def apply(self, piece: torch.Tensor) -> torch.Tensor:
        """`piece` with the entries that are not kept zeroed (maybe in place)."""
        if self.cut is None:
            return piece if self.everything else piece.mul_(0)
        return self.cut.apply(piece, self.part)
