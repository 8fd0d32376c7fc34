"""The numba code behind `mergezoo.merge.kernels` (import that module, not this one).

Written for the loop vectorizer: each loop runs over one block of a slice with no branches
that depend on the data (a kept-or-dropped value is a product with a 0/1 factor: LLVM may
compile `x if cond else 0` to a real branch), reads the inputs in their own dtype and
converts each value in registers (`_load`), so the inputs are streamed once per pass and the
block's float32 state (votes, sums, trimmed task vectors) stays in L1/L2. Fused multiply-adds
appear exactly where torch's `add_(x, alpha=w)` uses them, so results match the eager
functions bit for bit.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from mergezoo.merge.kernels import (AT_LEAST, HARDSHRINK, NO_SIGN, SIGN_SUM, TOP_K_TIES)
from mergezoo.merge.ops import GOLDEN

BLOCK = 2048  # entries per block: N task-vector blocks of 8 KB stay in L2
EXPONENT = 0x7F800000

_jit = njit(nogil=True, cache=True, error_model="numpy")


@intrinsic
def _f32(typingctx, bits):
    """The float32 whose bit pattern is the uint32 `bits`."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def _bits(typingctx, value):
    """The bit pattern (uint32) of the float32 `value`."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@njit(fastmath={"contract"}, cache=True)
def _fma(a, b, c):
    # a * b + c with one rounding, as torch's add_(b, alpha=a) computes on CPU.
    return a * b + c


def _load(src, k):
    """src[k] as float32; src holds float32, or bf16 bit patterns as uint16."""


def _store(out, k, value):
    """out[k] = value in out's dtype (bf16: round to nearest even, as torch casts)."""


def _store_limit(out):
    """The smallest float32 magnitude bits that `_store` makes NaN or Inf in out's dtype."""


@overload(_load, inline="always")
def _load_impl(src, k):
    if src.dtype == types.uint16:
        return lambda src, k: _f32(np.uint32(src[k]) << np.uint32(16))
    return lambda src, k: np.float32(src[k])


@overload(_store, inline="always")
def _store_impl(out, k, value):
    if out.dtype == types.uint16:
        def to_bf16(out, k, value):
            u = _bits(value)
            rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) \
                >> np.uint32(16)
            # NaN would need a select that slows the loop; a NaN result fails the merge anyway.
            out[k] = np.uint16(rounded)
        return to_bf16

    def to_f32(out, k, value):
        out[k] = value
    return to_f32


@overload(_store_limit, inline="always")
def _store_limit_impl(out):
    if out.dtype == types.uint16:
        return lambda out: np.uint32(0x7F7F8000)  # rounds up to bf16 Inf
    return lambda out: np.uint32(EXPONENT)


@njit(inline="always")
def _flag(value, limit):
    """Bit 31 set when |value| >= limit as float32 bits (limit EXPONENT: NaN or Inf).
    OR-ed into a per-entry array, not a scalar: the loop vectorizer handles that well."""
    return (_bits(value) & np.uint32(0x7FFFFFFF)) + (np.uint32(0x80000000) - limit)


@njit(inline="always")
def _lane(key, index):
    """The random drop's 16-bit lane of entry `index` (Wellons' lowbias32, as `ops.keep_lanes`)."""
    x = np.uint32((np.uint64(key) + np.uint64(index) * np.uint64(GOLDEN)) & np.uint64(0xFFFFFFFF))
    x ^= x >> np.uint32(16)
    x = np.uint32((np.uint64(x) * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF))
    x ^= x >> np.uint32(15)
    x = np.uint32((np.uint64(x) * np.uint64(0x846CA68B)) & np.uint64(0xFFFFFFFF))
    x ^= x >> np.uint32(16)
    return np.int64(x >> np.uint32(16))


@_jit
def merge(base, experts, out, offset, weight, trim, thr, ties, drop_below, drop_key, rescale,
          sign, normalize, total, floor, lam, scale, add_base):
    """One slice of `kernels.Combine` (see there for the parameters). Returns 1 when an input
    or the result holds NaN or Inf, else 0."""
    n = out.shape[0]
    n_models = len(experts)
    b = np.zeros(BLOCK, np.float32)
    d = np.empty((n_models, BLOCK), np.float32)
    votes = np.empty(BLOCK, np.float32)
    mixed = np.empty(BLOCK, np.float32)
    div = np.empty(BLOCK, np.float32)
    flags = np.zeros(BLOCK, np.uint32)
    finite = np.uint32(EXPONENT)
    limit = _store_limit(out)
    for s in range(0, n, BLOCK):
        m = min(BLOCK, n - s)
        # Index block slices from 0: an index like s + j could be negative to numba, whose
        # wraparound check then keeps the loop from being vectorized.
        if add_base:
            base_block = base[s:s + m]
            for j in range(m):
                v = _load(base_block, j)
                b[j] = v
                flags[j] |= _flag(v, finite)
        i = 0
        for src in experts:
            di = d[i]
            block = src[s:s + m]
            for j in range(m):
                x = _load(block, j)
                flags[j] |= _flag(x, finite)
                di[j] = x - b[j] if add_base else x
            _sparsify(di, m, i, offset + s, trim, thr, ties, drop_below, drop_key, rescale,
                      block, b, add_base)
            i += 1
        if sign == NO_SIGN:
            w0 = weight[0]
            for j in range(m):
                mixed[j] = d[0, j] * w0
            for i in range(1, n_models):
                w = weight[i]
                di = d[i]
                for j in range(m):
                    mixed[j] = _fma(w, di[j], mixed[j])
            for j in range(m):
                mixed[j] = mixed[j] / total
        else:
            _disjoint(d, m, weight, sign, normalize, floor, votes, mixed, div)
        for j in range(m):
            v = mixed[j] * lam
            if add_base:
                v = v * scale + b[j]
            mixed[j] = v
            flags[j] |= _flag(v, limit)
        out_block = out[s:s + m]
        for j in range(m):
            _store(out_block, j, mixed[j])
    bad = np.uint32(0)
    for j in range(BLOCK):
        bad |= flags[j]
    return bad >> np.uint32(31)


@njit(inline="always")
def _sparsify(di, m, i, first, trim, thr, ties, drop_below, drop_key, rescale, block, b,
              add_base):
    """Trim, then randomly drop, task vector `i`'s block `di` (entries first..first+m)."""
    rule = trim[i]
    t = thr[i]
    if rule == HARDSHRINK:
        _keep_above(di, m, t)
    elif rule == TOP_K_TIES or rule == AT_LEAST:
        at_least = rule == AT_LEAST
        for j in range(m):
            x = di[j]
            keep = abs(x) >= t if at_least else abs(x) > t
            di[j] = x * np.float32(1 if keep else 0)
        if rule == TOP_K_TIES and ties[i] > 0:  # the slice's first entries equal to the cut
            for j in range(m):
                if ties[i] == 0:
                    break
                x = _load(block, j) - b[j] if add_base else _load(block, j)
                if abs(x) == t:
                    di[j] = x
                    ties[i] -= 1
    if drop_below[i] >= 0:
        key = drop_key[i]
        below = drop_below[i]
        for j in range(m):
            di[j] = di[j] * np.float32(1 if _lane(key, first + j) < below else 0)
        if rescale[i] > 0:
            r = rescale[i]
            for j in range(m):
                di[j] = di[j] / r


@njit(inline="always")
def _keep_above(di, m, t):
    """Hardshrink: x where |x| > t, else +0. A product, not a select: LLVM compiled the select
    to a branch that random data mispredicts (4x slower)."""
    for j in range(m):
        x = di[j]
        di[j] = x * np.float32(1 if abs(x) > t else 0) + np.float32(0)  # + 0: -0 becomes +0


@njit(inline="always")
def _disjoint(d, m, weight, sign, normalize, floor, votes, mixed, div):
    """ops.combine with a sign rule: elect, then the (weighted) mean of the agreeing entries.
    (NaN needs no care: an input with NaN or Inf fails the merge anyway.)"""
    n_models = d.shape[0]
    votes[:m] = 0
    for i in range(n_models):
        w = weight[i]
        di = d[i]
        if sign == SIGN_SUM:
            for j in range(m):
                votes[j] = _fma(w, di[j], votes[j])
        else:
            s = np.float32(-1 if w < 0 else 1)
            for j in range(m):
                x = di[j]
                votes[j] = votes[j] + np.float32(1 if x > 0 else (-1 if x < 0 else 0)) * s
    # The elected sign, copysign(1, votes): votes start at +0 and are never -0.
    for j in range(m):
        votes[j] = np.float32(-1 if votes[j] < 0 else 1)
    mixed[:m] = 0
    div[:m] = 0
    for i in range(n_models):
        w = weight[i]
        if w == 0:
            continue
        aw = abs(w)
        flip = np.float32(-1 if w < 0 else 1)
        count = w if normalize else np.float32(0)  # (a zero weight adds nothing to div)
        di = d[i]
        for j in range(m):
            a = di[j] * votes[j] * flip
            agrees = np.float32(1 if a > 0 else 0)
            # a * agrees is a, or a zero that adds nothing (inputs are finite): no select,
            # which LLVM would make a mispredicted branch.
            mixed[j] = _fma(aw, a * agrees, mixed[j])
            div[j] = _fma(count, agrees, div[j])
    for j in range(m):
        v = mixed[j] * votes[j]
        if normalize:
            q = div[j]
            if floor > 0:
                q = q if q >= floor else floor
            else:
                q = q if q != 0 else np.float32(1)
            v = v / q
        mixed[j] = v


@_jit
def band_scan(base, experts, low, high, bands, counts, above):
    """For each task vector experts[i] - base, as magnitude bits: how many are > high[i]
    (into above[i]), and those within [low[i], high[i]] written to bands[i] in order (their
    number into counts[i]). One pass reads the base once for every expert. The gather, a
    scalar loop, visits only the 8-entry words of an in-band flag array that hold any (a few
    percent of the entries)."""
    n = base.shape[0]
    b = np.empty(BLOCK, np.float32)
    bits = np.empty(BLOCK, np.int32)
    inside = np.zeros(BLOCK, np.uint8)
    words = inside.view(np.uint64)
    counts[:] = 0
    above[:] = 0
    for s in range(0, n, BLOCK):
        m = min(BLOCK, n - s)
        b_block = base[s:s + m]
        for j in range(m):
            b[j] = _load(b_block, j)
        i = 0
        for expert in experts:
            e_block = expert[s:s + m]
            lo = np.int32(low[i])
            hi = np.int32(high[i])
            width = np.uint32(high[i] - low[i])
            # Two loops: the count in the same loop as the stores kept both from vectorizing.
            for j in range(m):
                mag = np.int32(_bits(abs(_load(e_block, j) - b[j])))
                bits[j] = mag
                inside[j] = np.uint8(1) if np.uint32(mag - lo) <= width else np.uint8(0)
            count_above = np.int32(0)
            for j in range(m):
                count_above += np.int32(1) if bits[j] > hi else np.int32(0)
            above[i] += count_above
            inside[m:] = 0
            band = bands[i]
            count = counts[i]
            for w in range(BLOCK // 8):
                if words[w] == 0:
                    continue
                for j in range(w * 8, w * 8 + 8):
                    band[count] = bits[j]
                    count += np.int64(inside[j])
            counts[i] = count
            i += 1


@_jit
def magnitude_sample(base, expert, start, stop, step, out):
    """out[:] = magnitude bits of (expert - base)[start:stop:step]."""
    k = 0
    for j in range(start, stop, step):
        out[k] = np.int32(_bits(abs(_load(expert, j) - _load(base, j))))
        k += 1
    return k
