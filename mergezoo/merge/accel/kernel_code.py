"""The fused kernels as LLVM IR text, which `mergezoo.merge.accel.jit` compiles (use `kernels`).

Each kernel is generated for one specialization: the number of experts (their loop is
unrolled, so the per-expert values of an entry stay in registers), the input and output
dtypes, and the steps a merge takes (trim, random drop, sign rule, normalization), so the
code holds no branch on settings. The loop over entries runs 16 at a time in vector
registers (lanes of <16 x float>; LLVM splits them where the CPU's registers are narrower),
then one at a time for the rest; both loops are generated from the same body. A kept or
dropped value is a product with a 0/1 factor, and a choice is a `select`: no branch depends
on the data.

They compute exactly what the eager functions (`ops`) compute, operation for operation in
float32, with a fused multiply-add exactly where torch's `add_(x, alpha=w)` uses one, so a
merge gives the same bytes with or without them; tests hold the two paths equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from mergezoo.merge.accel.ir import (W, Acc, Emitter, add_reduce, f32, or_reduce, scalar_loop, vec,
                               vector_loop)
from mergezoo.merge.ops import GOLDEN

# Per-expert trim rules and sign election rules (see `kernels.Combine`).
KEEP_ALL, HARDSHRINK, TOP_K_TIES, AT_LEAST = 0, 1, 2, 3
NO_SIGN, SIGN_SUM, SIGN_COUNT = 0, 1, 2

EXPONENT = 0x7F800000  # float32 magnitude bits from which a value is Inf or NaN
BF16_LIMIT = 0x7F7F8000  # float32 magnitude bits that round to bf16 Inf


@dataclass(frozen=True)
class MergeSpec:
    """What a merge kernel does (see `kernels.Combine`): `trim` by a magnitude threshold per
    expert (`ties`: and the tied entries before a position; `outliers`: less those above a
    second threshold, `top_ties`: and its tied entries before a position), `drop` (DARE's
    random drop, `rescale` after it), the `sign` rule, `normalize` (linear: divide by the total
    weight; with a sign rule: by the agreeing weights, `floor`-clamped or not), `add_base`."""

    n_models: int
    bf16_in: bool
    bf16_out: bool
    add_base: bool
    trim: bool
    ties: bool
    outliers: bool
    top_ties: bool
    drop: bool
    rescale: bool
    sign: int
    normalize: bool
    floor: bool

    @property
    def name(self) -> str:
        flags = "".join(c for c, on in zip("atToOdrnf", (
            self.add_base, self.trim, self.ties, self.outliers, self.top_ties, self.drop,
            self.rescale, self.normalize, self.floor)) if on)
        return (f"mz_merge{self.n_models}_{'b' if self.bf16_in else 'f'}"
                f"{'b' if self.bf16_out else 'f'}_s{self.sign}_{flags}")


# The float settings of a merge kernel, then per expert; the integer ones per expert.
GLOBAL_FLOATS = ("lam", "scale", "total", "floor")
EXPERT_FLOATS = ("weight", "abs_weight", "flip", "count", "zero", "rescale")
EXPERT_INTS = ("keep_above", "tie_end", "drop_below", "drop_key", "top_above",
               "top_tie_end")


def merge_ir(spec: MergeSpec) -> str:
    """i32 merge(out, base, expert_0 .. expert_{n-1}, floats, ints, n, offset): 1 when an
    input or the result holds NaN or Inf (or a sum overflowed: the caller checks again)."""
    nm = spec.n_models
    args = ["ptr noalias %out", "ptr noalias %base"] + [f"ptr noalias %e{i}" for i in range(nm)]
    args += ["ptr noalias %fp", "ptr noalias %ip", "i64 %n", "i64 %offset"]

    def entry(e: Emitter) -> dict:
        s = {}
        for k, name in enumerate(GLOBAL_FLOATS):
            s[name] = ("float", e.param("%fp", "float", k))
        for i in range(nm):
            for k, name in enumerate(EXPERT_FLOATS):
                s[f"{name}{i}"] = ("float", e.param("%fp", "float",
                                                    len(GLOBAL_FLOATS) + 6 * i + k))
            for k, name in enumerate(EXPERT_INTS):
                v = e.param("%ip", "i64", len(EXPERT_INTS) * i + k)
                s[f"{name}{i}"] = ("i64", v) if name.endswith("tie_end") else \
                    ("i32", e(f"trunc i64 {v} to i32"))
        return s

    def body(e: Emitter, w: int, idx: str, s: dict, acc: dict) -> dict:
        F, I, B = vec(w, "float"), vec(w, "i32"), vec(w, "i1")
        b = e.load(w, spec.bf16_in, "%base", idx) if spec.add_base else None
        if spec.ties or spec.top_ties:
            position = e(f"add {vec(w, 'i64')} {e.splat(w, 'i64', idx)}, {e.lanes(w, 'i64')}")

        def above(m: str, cut: str, tie_end: str | None) -> str:
            # |x| > cut, or == cut before the slice's tie_end (the tied entries kept)
            keep = e(f"icmp sgt {I} {m}, {cut}")
            if tie_end is None:
                return keep
            tied = e(f"icmp eq {I} {m}, {cut}")
            early = e(f"icmp slt {vec(w, 'i64')} {position}, {tie_end}")
            return e(f"or {B} {keep}, {e(f'and {B} {tied}, {early}')}")

        if spec.drop:
            first = e(f"add i64 %offset, {idx}")
            first = e(f"trunc i64 {first} to i32")
            counter = e(f"add {I} {e.splat(w, 'i32', first)}, {e.lanes(w, 'i32')}")
        ys = []
        for i in range(nm):
            y = e.load(w, spec.bf16_in, f"%e{i}", idx)
            if spec.add_base:
                y = e(f"fsub {F} {y}, {b}")
            if spec.trim:
                m = e.magnitude(w, y)
                keep = above(m, s[f"keep_above{i}"], s[f"tie_end{i}"] if spec.ties else None)
                if spec.outliers:  # less the entries of the outlier cut
                    top = above(m, s[f"top_above{i}"],
                                s[f"top_tie_end{i}"] if spec.top_ties else None)
                    outside = e(f"xor {B} {top}, {e.const(w, 'i1', 'true')}")
                    keep = e(f"and {B} {keep}, {outside}")
                y = e(f"fmul {F} {y}, {e.as_float(w, keep)}")
                y = e(f"fadd {F} {y}, {s[f'zero{i}']}")  # +0 (hardshrink: -0 becomes +0), or -0
            if spec.drop:
                lane = _lane(e, w, counter, s[f"drop_key{i}"])
                kept = e(f"icmp ult {I} {lane}, {s[f'drop_below{i}']}")
                y = e(f"fmul {F} {y}, {e.as_float(w, kept)}")
                if spec.rescale:
                    y = e(f"fdiv {F} {y}, {s[f'rescale{i}']}")
            ys.append(y)
        checks = []
        if spec.sign == NO_SIGN:
            v = e(f"fmul {F} {ys[0]}, {s['weight0']}")
            for i in range(1, nm):
                v = e.fma(w, s[f"weight{i}"], ys[i], v)
            if spec.normalize:
                v = e(f"fdiv {F} {v}, {s['total']}")
        else:
            v = _disjoint(e, w, spec, s, ys, checks)
        v = e(f"fmul {F} {v}, {s['lam']}")
        if spec.add_base:
            v = e(f"fmul {F} {v}, {s['scale']}")
            v = e(f"fadd {F} {v}, {b}")
        limit = e.const(w, "i32", str(BF16_LIMIT if spec.bf16_out else EXPONENT))
        bad = e(f"icmp uge {I} {e.magnitude(w, v)}, {limit}")
        for c in checks:
            bad = e(f"or {B} {bad}, {c}")
        bad = e(f"or {B} {acc['bad']}, {bad}")
        _store(e, w, spec.bf16_out, v, idx)
        return {"bad": bad}

    accs = {"bad": Acc(f"<{W} x i1>", "zeroinitializer", "i1", or_reduce)}
    return vector_loop(spec.name, "i32", args, entry, accs, body,
                       lambda e, final: e(f"zext i1 {final['bad']} to i32"))


def _lane(e: Emitter, w: int, counter: str, key: str) -> str:
    """DARE's 16-bit lane of each entry (`ops.keep_lanes`): Wellons' lowbias32 of
    entry * GOLDEN + key, all mod 2**32."""
    I = vec(w, "i32")

    def c(value: int) -> str:
        return e.i32(w, value)

    x = e(f"mul {I} {counter}, {c(GOLDEN)}")
    x = e(f"add {I} {x}, {key}")
    x = e(f"xor {I} {x}, {e(f'lshr {I} {x}, {c(16)}')}")
    x = e(f"mul {I} {x}, {c(0x7FEB352D)}")
    x = e(f"xor {I} {x}, {e(f'lshr {I} {x}, {c(15)}')}")
    x = e(f"mul {I} {x}, {c(0x846CA68B)}")
    x = e(f"xor {I} {x}, {e(f'lshr {I} {x}, {c(16)}')}")
    return e(f"lshr {I} {x}, {c(16)}")


def _disjoint(e: Emitter, w: int, spec: MergeSpec, s: dict, ys: list[str],
              checks: list[str]) -> str:
    """`ops.combine` with a sign rule: elect a sign per entry, then the (weighted) mean of
    the entries that agree with it. Appends to `checks` what flags a non-finite input."""
    F, B = vec(w, "float"), vec(w, "i1")
    zero, one = e.const(w, "float", f32(0.0)), e.const(w, "float", f32(1.0))
    minus = e.const(w, "float", f32(-1.0))

    def select(cond: str, a: str, b: str) -> str:
        return e(f"select {B} {cond}, {F} {a}, {F} {b}")

    def fcmp(pred: str, a: str, b: str) -> str:
        return e(f"fcmp {pred} {F} {a}, {b}")

    def mul(a: str, b: str) -> str:
        return e(f"fmul {F} {a}, {b}")

    votes = zero
    if spec.sign == SIGN_SUM:
        for i, y in enumerate(ys):
            votes = e.fma(w, s[f"weight{i}"], y, votes)
        # NaN or Inf in any task vector reaches the votes (a zero weight too: 0 * Inf is NaN).
        big = e.const(w, "i32", str(EXPONENT))
        checks.append(e(f"icmp uge {vec(w, 'i32')} {e.magnitude(w, votes)}, {big}"))
    else:
        probe = zero
        for i, y in enumerate(ys):
            sign = select(fcmp("ogt", y, zero), one, select(fcmp("olt", y, zero), minus, zero))
            votes = e(f"fadd {F} {votes}, {mul(sign, s[f'flip{i}'])}")
            probe = e(f"fadd {F} {probe}, {mul(y, zero)}")  # NaN where y is not finite
        checks.append(fcmp("uno", probe, zero))
    # The elected sign: copysign(1, votes); the votes start at +0 and are never -0.
    elected = select(fcmp("olt", votes, zero), minus, one)
    mixed, div = zero, zero
    for i, y in enumerate(ys):
        a = mul(mul(y, elected), s[f"flip{i}"])
        agrees = e.as_float(w, fcmp("ogt", a, zero))
        # a * agrees is a, or a zero that adds nothing: no select. A zero weight adds +-0.
        mixed = e.fma(w, s[f"abs_weight{i}"], mul(a, agrees), mixed)
        if spec.normalize:
            div = e.fma(w, s[f"count{i}"], agrees, div)
    v = mul(mixed, elected)
    if spec.normalize:
        if spec.floor:
            q = select(fcmp("oge", div, s["floor"]), div, s["floor"])
        else:
            q = select(fcmp("une", div, zero), div, one)
        v = e(f"fdiv {F} {v}, {q}")
    return v


def _store(e: Emitter, w: int, bf16: bool, v: str, idx: str) -> None:
    """out[idx:idx+w] = v in the output's dtype (bf16: round to nearest even, as torch
    casts; a NaN would need a select that slows the loop, and fails the merge anyway)."""
    elem = "i16" if bf16 else "float"
    if bf16:
        I = vec(w, "i32")

        def c(value: int) -> str:
            return e.i32(w, value)
        u = e(f"bitcast {vec(w, 'float')} {v} to {I}")
        odd = e(f"and {I} {e(f'lshr {I} {u}, {c(16)}')}, {c(1)}")
        r = e(f"add {I} {e(f'add {I} {u}, {c(0x7FFF)}')}, {odd}")
        v = e(f"trunc {I} {e(f'lshr {I} {r}, {c(16)}')} to {vec(w, 'i16')}")
    p = e(f"getelementptr {elem}, ptr %out, i64 {idx}")
    e.lines.append(f"  store {vec(w, elem)} {v}, ptr {p}, align {2 if bf16 else 4}")


def band_scan_ir(n_models: int, bf16: bool) -> str:
    """void band_scan(base, expert_0 .. expert_{n-1}, lows, highs, bands, stride, out, n):
    for each task vector expert_i - base, as magnitude bits, out[i] = how many are above
    highs[i], out[n_models + i] = how many are within [lows[i], highs[i]], and those, in
    order, at bands + i * stride (int32; up to 16 slots past the count are written). One
    pass reads the base once for every expert; the vector loop gathers with a compress-store."""
    args = ["ptr noalias %base"] + [f"ptr noalias %e{i}" for i in range(n_models)]
    args += ["ptr noalias %lo", "ptr noalias %hi", "ptr noalias %bands", "i64 %stride",
             "ptr noalias %out", "i64 %n"]
    name = f"mz_band_scan{n_models}_{'b' if bf16 else 'f'}"

    def entry(e: Emitter) -> dict:
        s = {}
        for i in range(n_models):
            low = e(f"trunc i64 {e.param('%lo', 'i64', i)} to i32")
            high = e(f"trunc i64 {e.param('%hi', 'i64', i)} to i32")
            s[f"low{i}"], s[f"high{i}"] = ("i32", low), ("i32", high)
            s[f"width{i}"] = ("i32", e(f"sub i32 {high}, {low}"))
            row = e(f"mul i64 %stride, {i}")
            s[f"band{i}"] = ("", e(f"getelementptr i32, ptr %bands, i64 {row}"))
        return s

    def body(e: Emitter, w: int, idx: str, s: dict, acc: dict) -> dict:
        F, I, B = vec(w, "float"), vec(w, "i32"), vec(w, "i1")
        b = e.load(w, bf16, "%base", idx)
        new = {}
        for i in range(n_models):
            m = e.magnitude(w, e(f"fsub {F} {e.load(w, bf16, f'%e{i}', idx)}, {b}"))
            high, low, width = s[f"high{i}"], s[f"low{i}"], s[f"width{i}"]
            count = acc[f"count{i}"]
            above = e(f"zext {B} {e(f'icmp sgt {I} {m}, {high}')} to {I}")
            new[f"above{i}"] = e(f"add {I} {acc[f'above{i}']}, {above}")
            inside = e(f"icmp ule {I} {e(f'sub {I} {m}, {low}')}, {width}")
            slot = e(f"getelementptr i32, ptr {s[f'band{i}']}, i64 {count}")
            if w == 1:  # store always, count only the entries inside: no branch
                e.lines.append(f"  store i32 {m}, ptr {slot}, align 4")
            else:
                e.call("void", f"llvm.masked.compressstore.v{w}i32",
                       [(I, m), ("ptr", slot), (B, inside)])
            new[f"count{i}"] = e(f"add i64 {count}, {e.popcount(w, inside, 'i64')}")
        return new

    accs = {}
    for i in range(n_models):
        accs[f"above{i}"] = Acc(f"<{W} x i32>", "zeroinitializer", "i32", add_reduce)
        accs[f"count{i}"] = Acc("i64", "0", "i64")

    def exit_(e: Emitter, final: dict) -> str:
        for i in range(n_models):
            for k, value in ((i, e(f"zext i32 {final[f'above{i}']} to i64")),
                             (n_models + i, final[f"count{i}"])):
                slot = e(f"getelementptr i64, ptr %out, i64 {k}")
                e.lines.append(f"  store i64 {value}, ptr {slot}, align 8")
        return ""

    return vector_loop(name, "void", args, entry, accs, body, exit_)


def magnitudes_ir(bf16: bool) -> str:
    """void magnitudes(base, expert, out, start, step, n): out[j] = magnitude bits of
    expert[start + j * step] - base[start + j * step], j < n (a strided sample)."""
    def body(e: Emitter) -> None:
        idx = e(f"add i64 %start, {e('mul i64 %j, %step')}")
        x = e(f"fsub float {e.load(1, bf16, '%expert', idx)}, {e.load(1, bf16, '%base', idx)}")
        slot = e("getelementptr i32, ptr %out, i64 %j")
        e.lines.append(f"  store i32 {e.magnitude(1, x)}, ptr {slot}, align 4")

    return scalar_loop(f"mz_magnitudes_{'b' if bf16 else 'f'}",
                       ["ptr noalias %base", "ptr noalias %expert", "ptr noalias %out",
                        "i64 %start", "i64 %step", "i64 %n"], body)


def histogram_ir() -> str:
    """void histogram(values, n, low, shift, binmask, selshift, select, bins, hist): for each
    int32 value v (entry j), with d = v - low (mod 2**32): hist[(j % 4) * bins + ((d >> shift)
    & binmask)] += 1 where (d >> selshift) == select (d as a 64-bit integer); a bin past
    `bins` counts in bin 0 instead. Four interleaved histograms: equal values in a row do not
    wait on each other's increments."""
    def body(e: Emitter) -> None:
        v = e("load i32, ptr " + e("getelementptr i32, ptr %values, i64 %j") + ", align 4")
        d = e(f"sub i32 {v}, %low")
        shifted = e(f"lshr i32 {d}, %shift")
        bin_ = e(f"zext i32 {e(f'and i32 {shifted}, %binmask')} to i64")
        # A value outside the caller's range must not write outside the histogram.
        bin_ = e(f"select i1 {e(f'icmp ult i64 {bin_}, %bins')}, i64 {bin_}, i64 0")
        lane = e(f"mul i64 {e('and i64 %j, 3')}, %bins")
        wide = e(f"zext i32 {d} to i64")
        counts = e(f"icmp eq i64 {e(f'lshr i64 {wide}, %selshift')}, %select")
        slot = e(f"getelementptr i64, ptr %hist, i64 {e(f'add i64 {lane}, {bin_}')}")
        old = e(f"load i64, ptr {slot}, align 8")
        total = e(f"add i64 {old}, {e(f'zext i1 {counts} to i64')}")
        e.lines.append(f"  store i64 {total}, ptr {slot}, align 8")

    return scalar_loop("mz_histogram", ["ptr noalias %values", "i64 %n", "i32 %low", "i32 %shift",
                                        "i32 %binmask", "i64 %selshift", "i64 %select",
                                        "i64 %bins", "ptr noalias %hist"], body)


def tied_counts_ir(bf16: bool) -> str:
    """void tied_counts(base, expert, out, bits, n): out[b] += how many of entries 16b ..
    16b+15 have the magnitude bits `bits` in expert - base (out: zeros, n/16 rounded up):
    where a slice's k-th tied entry lies, without a pass that stores every magnitude."""
    args = ["ptr noalias %base", "ptr noalias %expert", "ptr noalias %out", "i32 %bits",
            "i64 %n"]

    def body(e: Emitter, w: int, idx: str, s: dict, acc: dict) -> dict:
        F, I = vec(w, "float"), vec(w, "i32")
        x = e(f"fsub {F} {e.load(w, bf16, '%expert', idx)}, {e.load(w, bf16, '%base', idx)}")
        tied = e(f"icmp eq {I} {e.magnitude(w, x)}, {e.splat(w, 'i32', '%bits')}")
        count = e.popcount(w, tied, "i32")
        slot = e(f"getelementptr i32, ptr %out, i64 {e(f'lshr i64 {idx}, 4')}")
        total = e(f"add i32 {e(f'load i32, ptr {slot}, align 4')}, {count}")
        e.lines.append(f"  store i32 {total}, ptr {slot}, align 4")
        return {}

    return vector_loop(f"mz_tied_counts_{'b' if bf16 else 'f'}", "void", args, lambda e: {},
                       {}, body, lambda e, final: "")
