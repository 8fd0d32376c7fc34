"""Fused CPU kernels for element-wise merges, compiled with numba.

The eager path (`ops.combine` and friends) runs a method as a chain of torch operations, each
one a pass over the slice: on a 2-core CPU, TIES over 8 experts costs about twenty passes per
task vector. These kernels run the whole chain -- decode the inputs' bf16 or float32, task
vector, trim or random drop, sign election, disjoint or weighted sum, LiNeS scale, base, finite
check, encode the output -- in one pass over blocks that stay in the L1/L2 cache, and release
the GIL, so the engine's compute threads run them side by side.

They compute exactly what the eager functions compute, operation for operation in float32
(fused multiply-adds where torch's `add_(x, alpha=w)` uses them), so a merge gives the same
bytes with or without them; tests hold the two paths equal.

numba compiles each kernel once per input types (a few seconds) and caches the machine code on
disk, so later runs load it in a fraction of a second. Set `MERGEZOO_KERNELS=eager` to merge
without them.

Example:
    >>> plan = Combine.linear([1.0, 1.0], lam=0.5)
    >>> base = np.zeros(4, np.float32); a = np.ones(4, np.float32); b = 3 * a
    >>> out = np.empty(4, np.float32)
    >>> merge_slice(plan, base, [a, b], out, offset=0)
    True
    >>> out
    array([2., 2., 2., 2.], dtype=float32)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

try:  # numba is a dependency, but a merge must still work where it cannot load
    from numba import njit, types
    from numba.extending import overload
except ImportError:  # pragma: no cover - exercised only on broken installs
    njit = None

# Per-expert trim rules (see `Combine.trim`).
KEEP_ALL, HARDSHRINK, TOP_K_TIES, AT_LEAST = 0, 1, 2, 3
# Sign election rules.
NO_SIGN, SIGN_SUM, SIGN_COUNT = 0, 1, 2
BLOCK = 2048  # entries per block: N task-vector blocks of 8 KB stay in L2
EXPONENT = 0x7F800000
GOLDEN = 0x9E3779B9  # the random drop's counter stride (see `ops.keep_lanes`)


def enabled() -> bool:
    """Whether merges use the fused kernels (numba importable, not turned off by
    `MERGEZOO_KERNELS=eager`)."""
    return njit is not None and os.environ.get("MERGEZOO_KERNELS", "").lower() != "eager"


def supported(dtype_name: str) -> bool:
    """Whether the kernels read and write arrays of this torch dtype (by its short name)."""
    return dtype_name in ("bfloat16", "float32")


@dataclass(frozen=True)
class Combine:
    """What to do to one tensor's task vectors (or models): the method, as data.

    Per expert: `weight`; `trim` one of KEEP_ALL, HARDSHRINK (|x| > thr keeps x, else +0),
    TOP_K_TIES (x times [|x| > thr, or |x| == thr for the slice's first `ties[slice]` such
    entries]), AT_LEAST (x times [|x| >= thr]); `drop_below` >= 0 turns on DARE's random drop
    (keep where the entry's lane is below it, lanes from `drop_key`), then divide by `rescale`
    when it is > 0. Then `sign` election, `normalize` (linear: divide by `total`; with a sign
    rule: by the agreeing weights, floored as `divisor_floor` says), times `lam` and `scale`,
    plus the base when `add_base`. Build one with `linear` or `disjoint`, then `trimmed` /
    `dropped`.
    """

    weight: np.ndarray
    trim: np.ndarray
    thr: np.ndarray
    ties: np.ndarray  # [slices, experts]: tied entries kept per slice (TOP_K_TIES)
    drop_below: np.ndarray
    drop_key: np.ndarray
    rescale: np.ndarray
    sign: int = NO_SIGN
    normalize: bool = False
    total: float = 1.0  # linear normalization divisor (1: none)
    divisor_floor: float = 0.0  # > 0: clamp the TIES divisor to it; 0: a zero divisor becomes 1
    lam: float = 1.0
    scale: float = 1.0
    add_base: bool = True

    @classmethod
    def linear(cls, weights: list[float], *, normalize: bool = False, lam: float = 1.0,
               add_base: bool = True) -> "Combine":
        """sum_i w_i x_i (x: task vectors, or models with add_base=False), divided by the sum
        of the weights with `normalize` (as `ops.combine` with no sign rule)."""
        n = len(weights)
        total = sum(weights)
        return cls(weight=np.asarray(weights, np.float32), trim=np.zeros(n, np.int64),
                   thr=np.zeros(n, np.float32), ties=np.zeros((1, n), np.int64),
                   drop_below=np.full(n, -1, np.int64), drop_key=np.zeros(n, np.int64),
                   rescale=np.zeros(n, np.float32), normalize=normalize,
                   total=total if normalize and abs(total) >= 1e-8 else 1.0, lam=lam,
                   add_base=add_base)

    @classmethod
    def disjoint(cls, weights: list[float], *, sign_rule: str, normalize: bool,
                 lam: float = 1.0) -> "Combine":
        """TIES's elect-and-merge (as `ops.combine` with `sign_rule`)."""
        if sign_rule not in ("sum", "count"):
            raise ValueError(f"unknown sign election rule {sign_rule!r}")
        used = [w for w in weights if w != 0]
        floor = min(used) / 2 if used and min(used) > 0 else 0.0
        return replace(cls.linear(weights, lam=lam), normalize=normalize, total=1.0,
                       sign=SIGN_SUM if sign_rule == "sum" else SIGN_COUNT,
                       divisor_floor=floor)

    def trimmed(self, rules: list[int], thresholds: list[float],
                ties: list[list[int]] | None = None) -> "Combine":
        """With a trim rule and threshold per expert; `ties[i]`: TOP_K_TIES's per-slice ties."""
        n_slices = max((len(t) for t in ties or [] if t), default=1)
        table = np.zeros((n_slices, len(rules)), np.int64)
        for i, per_slice in enumerate(ties or []):
            if per_slice:
                table[:, i] = per_slice
        return replace(self, trim=np.asarray(rules, np.int64),
                       thr=np.asarray(thresholds, np.float32), ties=table)

    def dropped(self, densities: list[float], keys: list[int], rescale: bool) -> "Combine":
        """With DARE's random drop (an expert with density >= 1 keeps everything)."""
        from mergezoo.merge.ops import drop_threshold
        keep = [d < 1 for d in densities]
        return replace(self, drop_below=np.asarray(
            [drop_threshold(d) if k else -1 for d, k in zip(densities, keep)], np.int64),
            drop_key=np.asarray(keys, np.int64),
            rescale=np.asarray([d if k and rescale else 0 for d, k in zip(densities, keep)],
                               np.float32))


def merge_slice(plan: Combine, base: np.ndarray | None, experts: list[np.ndarray],
                out: np.ndarray, *, offset: int, slice_index: int = 0) -> bool:
    """Merge one slice: `base` and `experts` (1-D, float32 or bfloat16 viewed as uint16, all
    of one dtype) into `out` (float32 or bf16-as-uint16). `offset` is the slice's first
    entry's index in the flat tensor (the random drop's counter), `slice_index` its index in
    the engine's slicing (TOP_K_TIES's ties). Returns False when the result holds NaN or Inf
    (a non-finite input makes its entries NaN)."""
    ties = plan.ties[slice_index if plan.ties.shape[0] > 1 else 0]
    # A top-k cut with no tied entries to keep in this slice is hardshrink (as in ops.TopKCut).
    trim = np.where((plan.trim == TOP_K_TIES) & (ties <= 0), HARDSHRINK, plan.trim)
    bad = _merge(base if base is not None else experts[0], tuple(experts), out, offset,
                 plan.weight, trim, plan.thr, ties.copy(),
                 plan.drop_below, plan.drop_key, plan.rescale, plan.sign, plan.normalize,
                 np.float32(plan.total), np.float32(plan.divisor_floor), np.float32(plan.lam),
                 np.float32(plan.scale), plan.add_base and base is not None)
    return not bad


def band_scan(base: np.ndarray, expert: np.ndarray, low: int, high: int) -> tuple[int, np.ndarray]:
    """For the task vector expert - base: how many magnitudes (as float32 bits) are above
    `high`, and the bits of those within [low, high], in order (`ops.TopKCut`'s bracket pass)."""
    band = np.empty(base.shape[0], np.int32)
    above, n_band = _band_scan(base, expert, np.int64(low), np.int64(high), band)
    return int(above), band[:n_band]


if njit is not None:
    _jit = njit(nogil=True, cache=True, error_model="numpy")

    @njit(fastmath={"contract"}, cache=True)
    def _fma(a, b, c):
        # a * b + c with one rounding, as torch's add_(b, alpha=a) computes on CPU.
        return a * b + c

    def _decode(src, start, m, dst):
        """dst[:m] = float32(src[start:start+m]); src is float32, or bf16 bits as uint16."""

    def _encode(res, m, out, start):
        """out[start:start+m] = res[:m] in out's dtype (bf16: round to nearest even)."""

    @overload(_decode, inline="always")
    def _decode_impl(src, start, m, dst):
        if src.dtype == types.uint16:
            def from_bf16(src, start, m, dst):
                bits = dst.view(np.uint32)
                for j in range(m):
                    bits[j] = np.uint32(src[start + j]) << np.uint32(16)
            return from_bf16

        def from_f32(src, start, m, dst):
            for j in range(m):
                dst[j] = src[start + j]
        return from_f32

    @overload(_encode, inline="always")
    def _encode_impl(res, m, out, start):
        if out.dtype == types.uint16:
            def to_bf16(res, m, out, start):
                bits = res.view(np.uint32)
                for j in range(m):
                    u = bits[j]
                    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(EXPONENT):  # NaN
                        out[start + j] = np.uint16(0x7FC0)
                    else:
                        out[start + j] = np.uint16((u + np.uint32(0x7FFF)
                                                    + ((u >> np.uint32(16)) & np.uint32(1)))
                                                   >> np.uint32(16))
            return to_bf16

        def to_f32(res, m, out, start):
            for j in range(m):
                out[start + j] = res[j]
        return to_f32

    @_jit
    def _lane(key, index):
        """The random drop's 16-bit lane of entry `index` (see `ops.keep_lanes`)."""
        x = np.uint32((np.uint64(key) + np.uint64(index) * np.uint64(GOLDEN))
                      & np.uint64(0xFFFFFFFF))
        x ^= x >> np.uint32(16)
        x = np.uint32(np.uint64(x) * np.uint64(0x7FEB352D) & np.uint64(0xFFFFFFFF))
        x ^= x >> np.uint32(15)
        x = np.uint32(np.uint64(x) * np.uint64(0x846CA68B) & np.uint64(0xFFFFFFFF))
        x ^= x >> np.uint32(16)
        return np.int64(x >> np.uint32(16))

    @_jit
    def _merge(base, experts, out, offset, weight, trim, thr, ties, drop_below, drop_key,
               rescale, sign, normalize, total, floor, lam, scale, add_base):
        n = out.shape[0]
        n_models = len(experts)
        b = np.zeros(BLOCK, np.float32)
        bad_in = np.zeros(BLOCK, np.uint32)
        d = np.empty((n_models, BLOCK), np.float32)
        votes = np.empty(BLOCK, np.float32)
        mixed = np.empty(BLOCK, np.float32)
        div = np.empty(BLOCK, np.float32)
        bits = mixed.view(np.uint32)
        bad = 0
        for s in range(0, n, BLOCK):
            m = min(BLOCK, n - s)
            bad_in[:m] = 0
            if add_base:
                _decode(base, s, m, b)
                _flag(b, m, bad_in)
            i = 0
            for src in experts:  # task vectors (or models), trimmed or dropped
                di = d[i]
                _decode(src, s, m, di)
                _flag(di, m, bad_in)
                if add_base:
                    for j in range(m):
                        di[j] = di[j] - b[j]
                _sparsify(di, m, i, s + offset, trim, thr, ties, drop_below, drop_key, rescale)
                i += 1
            if sign == NO_SIGN:
                for j in range(m):
                    mixed[j] = d[0, j] * weight[0]
                for i in range(1, n_models):
                    w = weight[i]
                    for j in range(m):
                        mixed[j] = _fma(w, d[i, j], mixed[j])
                for j in range(m):
                    mixed[j] = mixed[j] / total
            else:
                _disjoint(d, m, weight, sign, normalize, floor, votes, mixed, div)
            for j in range(m):
                v = mixed[j] * lam
                if add_base:
                    v = v * scale + b[j]
                mixed[j] = v if bad_in[j] == 0 else np.float32(np.nan)
            for j in range(m):
                bad |= np.int64((bits[j] & np.uint32(EXPONENT)) == np.uint32(EXPONENT))
            _encode(mixed, m, out, s)
        return bad

    @_jit
    def _flag(x, m, bad_in):
        bits = x.view(np.uint32)
        for j in range(m):
            bad_in[j] |= np.uint32((bits[j] & np.uint32(EXPONENT)) == np.uint32(EXPONENT))

    @_jit
    def _sparsify(di, m, i, first, trim, thr, ties, drop_below, drop_key, rescale):
        """Trim, then randomly drop, task vector `i`'s block `di` (entries first..first+m)."""
        rule = trim[i]
        t = thr[i]
        if rule == HARDSHRINK:
            for j in range(m):
                x = di[j]
                di[j] = np.float32(0) if (x >= -t and x <= t) else x
        elif rule == TOP_K_TIES:
            for j in range(m):
                x = di[j]
                keep = abs(x) > t
                if not keep and abs(x) == t and ties[i] > 0:
                    ties[i] -= 1
                    keep = True
                di[j] = x * np.float32(1 if keep else 0)
        elif rule == AT_LEAST:
            for j in range(m):
                x = di[j]
                di[j] = x * np.float32(1 if abs(x) >= t else 0)
        if drop_below[i] >= 0:
            key = drop_key[i]
            below = drop_below[i]
            for j in range(m):
                keep = _lane(key, first + j) < below
                di[j] = di[j] * np.float32(1 if keep else 0)
            if rescale[i] > 0:
                r = rescale[i]
                for j in range(m):
                    di[j] = di[j] / r

    @_jit
    def _disjoint(d, m, weight, sign, normalize, floor, votes, mixed, div):
        """ops.combine with a sign rule: elect, then the (weighted) mean of the agreeing.
        (NaN needs no care here: entries with a non-finite input end up NaN anyway.)"""
        n_models = d.shape[0]
        votes[:m] = 0
        for i in range(n_models):
            w = weight[i]
            if sign == SIGN_SUM:
                for j in range(m):
                    votes[j] = _fma(w, d[i, j], votes[j])
            else:
                s = np.float32(-1 if w < 0 else 1)
                for j in range(m):
                    x = d[i, j]
                    votes[j] = votes[j] + np.float32(1 if x > 0 else (-1 if x < 0 else 0)) * s
        # The elected sign: copysign(1, votes); votes start at +0 and are never -0.
        for j in range(m):
            votes[j] = np.float32(-1 if votes[j] < 0 else 1)
        mixed[:m] = 0
        div[:m] = 0
        for i in range(n_models):
            w = weight[i]
            if w == 0:
                continue
            aw = abs(w)
            neg = np.float32(-1 if w < 0 else 1)
            for j in range(m):
                a = d[i, j] * votes[j] * neg
                a = a if a > 0 else np.float32(0)
                if normalize:
                    div[j] = _fma(w, np.float32(1 if a > 0 else 0), div[j])
                mixed[j] = _fma(aw, a, mixed[j])
        for j in range(m):
            v = mixed[j] * votes[j]
            if normalize:
                q = div[j]
                if floor > 0:
                    q = q if q >= floor else floor
                elif q == 0:
                    q = np.float32(1)
                v = v / q
            mixed[j] = v

    @_jit
    def _band_scan(base, expert, low, high, band):
        n = base.shape[0]
        b = np.empty(BLOCK, np.float32)
        e = np.empty(BLOCK, np.float32)
        above = 0
        count = 0
        for s in range(0, n, BLOCK):
            m = min(BLOCK, n - s)
            _decode(base, s, m, b)
            _decode(expert, s, m, e)
            for j in range(m):
                e[j] = abs(e[j] - b[j])
            bits = e.view(np.int32)
            for j in range(m):
                above += np.int64(bits[j] > high)
            for j in range(m):
                x = bits[j]
                if x >= low and x <= high:
                    band[count] = x
                    count += 1
        return above, count
