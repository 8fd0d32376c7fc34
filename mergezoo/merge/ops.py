"""Small pure tensor functions that merge methods compose.

They work on one tensor (or a stack of one tensor from every expert) and never look at file
names, devices or recipes, so they are easy to test against written-out references.

Example:
    >>> d = torch.tensor([0.1, -3.0, 0.5, 2.0])
    >>> trim_by_magnitude(d, 0.5)
    tensor([ 0., -3.,  0.,  2.])
"""

from __future__ import annotations

import struct
from typing import Callable, Iterator

import numpy as np
import torch


def stack_weights(weights: list[float], like: torch.Tensor) -> torch.Tensor:
    """Weights as a [N, 1, 1, ...] tensor that broadcasts against a stack shaped like `like`."""
    w = torch.tensor(weights, dtype=like.dtype, device=like.device)
    return w.view(-1, *([1] * (like.dim() - 1)))


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


def kept_count(numel: int, density: float) -> int:
    """How many entries a trim to `density` keeps: int(density * n), as mergekit does, but >= 1."""
    return max(1, int(density * numel))


def trim_by_magnitude(delta: torch.Tensor, density: float, threshold: float | None = None,
                      *, owned: bool = False) -> torch.Tensor:
    """Keep the top-`density` fraction of `delta` by magnitude, zero the rest.

    With `threshold` (from a whole-model pass), keep every entry with |delta| >= threshold.
    With `owned`, `delta` is trimmed in place.
    """
    if threshold is not None:
        keep = delta.abs() >= threshold
    elif density >= 1:
        return delta
    elif delta.is_contiguous():
        return keep_top_k_(delta if owned else delta.clone(), kept_count(delta.numel(), density))
    else:
        keep = top_k_mask(delta, kept_count(delta.numel(), density))
    return delta.mul_(keep) if owned else delta * keep


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


def _top_k_slices(values: torch.Tensor, k: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """(slice, keep mask of that slice) over the flattened `values`, for the `k` largest
    magnitudes, ties broken by position."""
    flat = values.reshape(-1)
    parts = chunks(flat.numel(), flat.device)
    cut = TopKCut.find(lambda part: magnitude_bits(flat[part]), flat.numel(), k, parts, flat.device)
    for j, part in enumerate(parts):
        yield part, cut.keep(flat[part], j)


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly the `k` largest magnitudes of `values` (ties broken by position)."""
    n = values.numel()
    if k >= n or k <= 0:
        return torch.full(values.shape, k >= n, dtype=torch.bool, device=values.device)
    mask = torch.empty(n, dtype=torch.bool, device=values.device)
    for part, keep in _top_k_slices(values, k):
        mask[part] = keep
    return mask.view(values.shape)


def keep_top_k_(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the `k` largest magnitudes of a contiguous `delta`, in place, exactly as
    `top_k_mask` would, slice by slice: no full-size temporary."""
    if k >= delta.numel():
        return delta
    flat = delta.view(-1)
    for part, keep in _top_k_slices(delta, k):
        flat[part].mul_(keep)
    return delta


GOLDEN = 0x9E3779B9  # the counter's stride: consecutive entries hash far apart
MASK32 = 0xFFFFFFFF


def keep_lanes(key: int, offset: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """DARE's random numbers: for entries offset .. offset+n-1 of a tensor, a uniform 16-bit
    lane each (int64 in [0, 65536)), a counter-based hash of (key, entry index).

    Each entry's draw depends only on the key (one per seed, tensor and model) and its index,
    so any slicing of the tensor, on any number of threads, draws the same; the fused kernels
    (`kernels._lane`) compute the very same hash. The mixer is Wellons' lowbias32.
    """
    x = torch.arange(offset, offset + n, dtype=torch.int64, device=device)
    # 64-bit products wrap, but their low 32 bits, all that is kept, are exact.
    x = x.mul_(GOLDEN).add_(key).bitwise_and_(MASK32)
    x = x.bitwise_xor_(x >> 16).mul_(0x7FEB352D).bitwise_and_(MASK32)
    x = x.bitwise_xor_(x >> 15).mul_(0x846CA68B).bitwise_and_(MASK32)
    return x.bitwise_xor_(x >> 16) >> 16


LANES = 1 << 16  # the random drop's draws are uniform over this many values


def drop_threshold(density: float) -> int:
    """Keep an entry when its 16-bit lane is below this: the keep probability is `density`
    rounded to a multiple of 1/65536 (`keep_probability`). A density that rounds to 0
    (below 1/131072) cannot be drawn: ValueError, never a silent all-zero."""
    below = round(density * LANES)
    if below <= 0 and density > 0:
        raise ValueError(f"density {density!r} is below what the random drop resolves "
                         f"(1/{LANES * 2}); use at least {1 / LANES:g}")
    return below


def keep_probability(density: float) -> float:
    """The keep probability the random drop actually uses: drop_threshold / 65536 (exact in
    float32), which survivors are divided by when rescaled."""
    return drop_threshold(density) / LANES


def random_drop(delta: torch.Tensor, density: float, key: int, rescale: bool = True, *,
                offset: int = 0, owned: bool = False) -> torch.Tensor:
    """DARE: keep each entry with probability p = `keep_probability(density)` (density
    rounded to a multiple of 1/65536), and divide survivors by p, the probability actually
    used, so that the expected task vector is unchanged. The draws come from
    `keep_lanes(key, offset + i)` for flat entry i of `delta` (`offset`: where `delta` starts
    in its whole tensor). With `owned`, `delta` is changed in place.
    """
    if density >= 1:
        return delta
    below = drop_threshold(density)
    p = below / LANES
    kept = delta if owned and delta.is_contiguous() else delta.contiguous().clone()
    flat = kept.view(-1)
    for part in chunks(flat.numel(), flat.device):
        piece = flat[part]
        lanes = keep_lanes(key, offset + part.start, piece.numel(), piece.device)
        # keep = (lane < below), as 1.0 / 0.0 by arithmetic: the lanes are integers, so
        # clamp(below - lane, 0, 1) is 1 exactly when lane < below (comparisons are slow on CPU).
        piece.mul_(lanes.neg_().add_(below).clamp_(0, 1).to(piece.dtype))
        if rescale and below < LANES:
            piece.div_(p)
    return kept


def rescale_l1(masked: torch.Tensor, before: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """mergekit's `rescaled_masked_tensor` with the L1 norm: multiply the sparsified tensor
    (in place) by before / |masked|_1, where `before` is the L1 norm of the tensor before it
    was sparsified; unchanged when either norm is below `eps`."""
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked.mul_(before / after)


def rank_drop(delta: torch.Tensor, density: float, epsilon: float, key: int,
              rescale: bool = True) -> torch.Tensor:
    """DELLA's MagPrune (Deep et al., 2024), as mergekit's `della_magprune` ranks: per row
    (a 1-D tensor is one row; others are rows of their first dimension), an entry of
    magnitude rank r (0 the smallest, ties by position) among c is kept with probability
    p = density - epsilon + 2 epsilon r / (c - 1), rounded to a multiple of 1/65536 and drawn
    as DARE draws (`keep_lanes`); with `rescale`, survivors are divided by their p."""
    if density >= 1:
        return delta
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    c = rows.shape[1]
    order = rows.abs().argsort(dim=1, stable=True)
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(c, device=rows.device).expand_as(order))
    rank_norm = ranks.to(torch.float64) / (c - 1) if c > 1 else torch.zeros_like(rows, dtype=torch.float64)
    below = ((density - epsilon) + rank_norm * (2 * epsilon)).mul_(LANES).round_()
    lanes = keep_lanes(key, 0, rows.numel(), rows.device).view(rows.shape)
    keep = lanes < below
    kept = rows * keep
    if rescale:
        kept = torch.where(keep, kept / (below / LANES).to(kept.dtype), kept)
    return kept.view(delta.shape)


def drop_outliers_and_small(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest `gamma` fraction and the smallest entries by
    magnitude so that a `density` fraction is left (mergekit's `magnitude_outliers`)."""
    if density >= 1:
        return delta
    n = delta.numel()
    n_keep = int(density * n)
    n_top = int(gamma * n)
    if n - n_keep - n_top < 0:  # not enough entries: drop fewer outliers
        n_top = n - n_keep
    # Ranked by magnitude (ties by position), keep ranks n_top+1 .. n_top+n_keep.
    keep = top_k_mask(delta, n_top + n_keep)
    if n_top:
        keep &= ~top_k_mask(delta, n_top)
    return delta * keep


def _signed(delta: torch.Tensor, weight: float) -> torch.Tensor:
    """sign(weight * delta), without materialising weight * delta."""
    sign = delta.sign()
    return sign.neg_() if weight < 0 else sign


CHUNK = 1 << 18  # elements per slice in element-wise loops on CPU: 1 MB of float32


def chunks(n: int, device: torch.device) -> list[slice]:
    """Slices of a flat tensor of `n` entries. On CPU, element-wise chains run much faster
    slice by slice: the temporaries stay in cache and are recycled by the allocator instead of
    being fresh page-faulted memory each time. On GPUs one launch per operation is best."""
    if device.type != "cpu" or n <= CHUNK:
        return [slice(0, n)]
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


SIGN_RULES = ("sum", "count")


def check_sign_rule(sign_rule: str | None, *, optional: bool = True) -> None:
    """ValueError unless `sign_rule` is one of SIGN_RULES (or None, when `optional`)."""
    if not (sign_rule is None and optional) and sign_rule not in SIGN_RULES:
        raise ValueError(f"unknown sign election rule {sign_rule!r}")


def linear_divisor(weights: list[float], normalize: bool) -> float:
    """What a weighted sum is divided by: the sum of the weights with `normalize` (unless it
    is about zero), else 1."""
    total = sum(weights)
    return total if normalize and abs(total) >= 1e-8 else 1.0


def divisor_floor(weights: list[float]) -> float:
    """The disjoint merge's divisor (the weights of the agreeing entries) is clamped to this
    when it is > 0, so that where no entry agrees (`mixed` is 0) it is not 0: with positive
    weights a divisor is 0 or at least the smallest weight. 0.0: other weights, where a zero
    divisor is replaced by 1 instead."""
    used = [w for w in weights if w != 0]
    return min(used) / 2 if used and min(used) > 0 else 0.0


def combine(deltas: list[torch.Tensor], weights: list[float], *, sign_rule: str | None,
            normalize: bool, lambda_: float, owned: bool = False) -> torch.Tensor:
    """Weighted sum of (already sparsified) task vectors, as mergekit's generalized task
    arithmetic: with `sign_rule`, only entries whose weighted value agrees with the elected
    sign count; with `normalize`, divide by the sum of the weights of the entries that count.

    Accumulates expert by expert, slice by slice, instead of stacking: the same result with a
    fraction of the memory traffic, which is what bounds a merge on CPU. With `owned`, `deltas`
    are overwritten.
    """
    check_sign_rule(sign_rule)
    flat = [d.reshape(-1) for d in deltas]
    parts = chunks(flat[0].numel(), flat[0].device)
    if len(parts) == 1:  # one slice (a GPU, or the engine's slice-by-slice merge): no copy
        mixed = _combine_flat(flat, weights, sign_rule, normalize, owned).view(deltas[0].shape)
    else:
        mixed = torch.empty(deltas[0].shape, dtype=deltas[0].dtype, device=deltas[0].device)
        flat_out = mixed.view(-1)
        for part in parts:
            flat_out[part] = _combine_flat([f[part] for f in flat], weights, sign_rule,
                                           normalize, owned)
    return mixed.mul_(lambda_) if lambda_ != 1 else mixed


def _combine_flat(deltas: list[torch.Tensor], weights: list[float], sign_rule: str | None,
                  normalize: bool, owned: bool) -> torch.Tensor:
    if sign_rule is None:
        first = deltas[0]
        mixed = (first.mul_(weights[0]) if owned else first * weights[0]) if weights[0] != 1 \
            else (first if owned else first.clone())
        for d, w in zip(deltas[1:], weights[1:]):
            mixed.add_(d, alpha=w)
        total = linear_divisor(weights, normalize)
        return mixed.div_(total) if total != 1.0 else mixed
    votes = torch.zeros_like(deltas[0])
    for d, w in zip(deltas, weights):
        votes.add_(d if sign_rule == "sum" else _signed(d, w), alpha=w if sign_rule == "sum" else 1)
    # +1 where the votes are >= 0 (a tie goes to +1), else -1. copysign is one fast operation
    # where comparisons are slow on CPU; the votes start from +0.0 and so are never -0.0.
    majority = torch.ones_like(votes).copysign_(votes)
    mixed = torch.zeros_like(votes)
    divisor = torch.zeros_like(mixed) if normalize else None
    for d, w in zip(deltas, weights):
        if w == 0:
            continue
        # With s = sign(w), an entry agrees when s * d * majority > 0, and then contributes
        # w * d = |w| * majority * (s * d * majority): accumulate |w| * relu(s*d*majority)
        # and multiply by the majority sign once at the end. All in place.
        agreeing = d.mul_(majority) if owned else d * majority
        if w < 0:
            agreeing.neg_()
        agreeing.clamp_(min=0)  # keeps NaN, which must reach the engine's finite check
        if divisor is not None:
            divisor.add_(agreeing.sign(), alpha=w)  # sign: 1 where it agrees, else 0
        mixed.add_(agreeing, alpha=abs(w))
    mixed.mul_(majority)
    if divisor is not None:
        floor = divisor_floor(weights)
        if floor > 0:
            divisor.clamp_(min=floor)
        else:
            divisor.masked_fill_(divisor == 0, 1)
        mixed.div_(divisor)
    return mixed


def slerp_pair(t: float, v0: torch.Tensor, v1: torch.Tensor, *, dot_threshold: float = 0.9995,
               eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation between two tensors seen as flat vectors (mergekit's slerp):
    falls back to linear interpolation when they are nearly colinear."""
    u0 = v0 / n0 if (n0 := v0.norm()) > eps else v0
    u1 = v1 / n1 if (n1 := v1.norm()) > eps else v1
    dot = float((u0 * u1).sum())
    if abs(dot) > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta = torch.arccos(torch.tensor(dot, dtype=torch.float64))
    s0 = float(torch.sin(theta * (1 - t)) / torch.sin(theta))
    s1 = float(torch.sin(theta * t) / torch.sin(theta))
    return s0 * v0 + s1 * v1
