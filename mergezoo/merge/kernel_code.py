"""The fused kernels as LLVM IR text, which `mergezoo.merge.jit` compiles (use `kernels`).

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

import struct
from dataclasses import dataclass
from typing import Callable

from mergezoo.merge.ops import GOLDEN

W = 16  # lanes per vector step
EXPONENT = 0x7F800000  # float32 magnitude bits from which a value is Inf or NaN
BF16_LIMIT = 0x7F7F8000  # float32 magnitude bits that round to bf16 Inf
NO_SIGN, SIGN_SUM, SIGN_COUNT = 0, 1, 2


def _vec(w: int, elem: str) -> str:
    return elem if w == 1 else f"<{w} x {elem}>"


def _suffix(w: int, elem: str) -> str:
    short = {"float": "f32", "i1": "i1", "i16": "i16", "i32": "i32"}[elem]
    return short if w == 1 else f"v{w}{short}"


def _f(x: float) -> str:
    """A float32 constant as LLVM writes it: the hex of the (exact) double."""
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", x))[0]


class _Emitter:
    """Straight-line SSA code with fresh names, and the intrinsics it calls."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.decls: set[str] = set()
        self.count = 0

    def __call__(self, text: str) -> str:
        name = f"%v{self.count}"
        self.count += 1
        self.lines.append(f"  {name} = {text}")
        return name

    def const(self, w: int, elem: str, text: str) -> str:
        return text if w == 1 else "<" + ", ".join([f"{elem} {text}"] * w) + ">"

    def lanes(self, w: int, elem: str) -> str:
        """<0, 1, ..., w-1>."""
        return "0" if w == 1 else "<" + ", ".join(f"{elem} {i}" for i in range(w)) + ">"

    def splat(self, w: int, elem: str, scalar: str) -> str:
        if w == 1:
            return scalar
        one = self(f"insertelement <{w} x {elem}> poison, {elem} {scalar}, i64 0")
        return self(f"shufflevector <{w} x {elem}> {one}, <{w} x {elem}> poison, "
                    f"<{w} x i32> zeroinitializer")

    def call(self, ret: str, name: str, args: list[tuple[str, str]]) -> str:
        self.decls.add(f"declare {ret} @{name}({', '.join(t for t, _ in args)})")
        text = f"call {ret} @{name}({', '.join(f'{t} {v}' for t, v in args)})"
        if ret == "void":
            self.lines.append(f"  {text}")
            return ""
        return self(text)

    def param(self, array: str, elem: str, index: int) -> str:
        p = self(f"getelementptr {elem}, ptr {array}, i64 {index}")
        return self(f"load {elem}, ptr {p}, align {4 if elem == 'float' else 8}")

    def load(self, w: int, bf16: bool, ptr: str, idx: str) -> str:
        """w inputs from entry idx on, as float32."""
        elem = "i16" if bf16 else "float"
        p = self(f"getelementptr {elem}, ptr {ptr}, i64 {idx}")
        v = self(f"load {_vec(w, elem)}, ptr {p}, align {2 if bf16 else 4}")
        if not bf16:
            return v
        wide = self(f"zext {_vec(w, 'i16')} {v} to {_vec(w, 'i32')}")
        shifted = self(f"shl {_vec(w, 'i32')} {wide}, {self.const(w, 'i32', '16')}")
        return self(f"bitcast {_vec(w, 'i32')} {shifted} to {_vec(w, 'float')}")

    def magnitude(self, w: int, x: str) -> str:
        """|x| as float32 bits (int32): ordered like the magnitudes, NaN above Inf."""
        bits = self(f"bitcast {_vec(w, 'float')} {x} to {_vec(w, 'i32')}")
        return self(f"and {_vec(w, 'i32')} {bits}, {self.const(w, 'i32', '2147483647')}")

    def fma(self, w: int, a: str, b: str, c: str) -> str:
        t = _vec(w, "float")
        return self.call(t, f"llvm.fma.{_suffix(w, 'float')}", [(t, a), (t, b), (t, c)])

    def as_float(self, w: int, flag: str) -> str:
        return self(f"uitofp {_vec(w, 'i1')} {flag} to {_vec(w, 'float')}")


@dataclass(frozen=True)
class _Acc:
    """A loop-carried value: its type and start in the vector loop and in the scalar loop
    (which starts from the vector loop's result, reduced by `reduce`)."""

    vtype: str
    vinit: str
    stype: str
    reduce: Callable[[_Emitter, str], str] | None = None


def _function(name: str, ret: str, args: list[str], entry: Callable[[_Emitter], dict],
              accs: dict[str, _Acc], inits: Callable[[_Emitter], dict[str, str]],
              body: Callable[[_Emitter, int, str, dict, dict], dict],
              exit_: Callable[[_Emitter, dict, dict], str]) -> str:
    """A kernel over entries 0..n-1 (`%n`): `entry` loads the settings, `body(e, w, idx,
    settings, accs)` handles entries idx..idx+w-1 and returns the new accumulators, `exit_`
    returns the value to return."""
    e = _Emitter()
    e.lines.append("entry:")
    settings = {1: entry(e)}
    settings[W] = {k: (e.splat(W, t, v) if t else v) for k, (t, v) in settings[1].items()}
    settings[1] = {k: v for k, (t, v) in settings[1].items()}
    start = inits(e)
    e.lines += ["  %vend = and i64 %n, -16", "  %any_v = icmp ugt i64 %vend, 0",
                "  br i1 %any_v, label %vloop, label %vdone", "vloop:",
                "  %vi = phi i64 [ 0, %entry ], [ %vi.next, %vloop ]"]
    phis = len(e.lines)
    cur = {k: f"%{k}.v" for k in accs}
    new = body(e, W, "%vi", settings[W], cur)
    e.lines[phis:phis] = [f"  %{k}.v = phi {a.vtype} [ {a.vinit}, %entry ], "
                          f"[ {new[k]}, %vloop ]" for k, a in accs.items()]
    e.lines += ["  %vi.next = add i64 %vi, 16", "  %more_v = icmp ult i64 %vi.next, %vend",
                "  br i1 %more_v, label %vloop, label %vdone", "vdone:"]
    e.lines += [f"  %{k}.vd = phi {a.vtype} [ {a.vinit}, %entry ], [ {new[k]}, %vloop ]"
                for k, a in accs.items()]
    reduced = {k: (a.reduce(e, f"%{k}.vd") if a.reduce else f"%{k}.vd")
               for k, a in accs.items()}
    e.lines += ["  br label %vexit", "vexit:", "  %any_t = icmp ult i64 %vend, %n",
                "  br i1 %any_t, label %tloop, label %done", "tloop:",
                "  %ti = phi i64 [ %vend, %vexit ], [ %ti.next, %tloop ]"]
    phis = len(e.lines)
    cur = {k: f"%{k}.t" for k in accs}
    tail = body(e, 1, "%ti", settings[1], cur)
    e.lines[phis:phis] = [f"  %{k}.t = phi {a.stype} [ {reduced[k]}, %vexit ], "
                          f"[ {tail[k]}, %tloop ]" for k, a in accs.items()]
    e.lines += ["  %ti.next = add i64 %ti, 1", "  %more_t = icmp ult i64 %ti.next, %n",
                "  br i1 %more_t, label %tloop, label %done", "done:"]
    final = {}
    for k, a in accs.items():
        final[k] = f"%{k}.f"
        e.lines.append(f"  %{k}.f = phi {a.stype} [ {reduced[k]}, %vexit ], "
                       f"[ {tail[k]}, %tloop ]")
    result = exit_(e, final, start)
    e.lines.append(f"  ret {ret} {result}" if ret != "void" else "  ret void")
    head = f"define {ret} @{name}({', '.join(args)}) {{"
    return "\n".join(sorted(e.decls) + ["", head] + e.lines + ["}", ""])


def _or_reduce(e: _Emitter, v: str) -> str:
    return e.call("i1", f"llvm.vector.reduce.or.v{W}i1", [(f"<{W} x i1>", v)])


def _add_reduce(e: _Emitter, v: str) -> str:
    return e.call("i32", f"llvm.vector.reduce.add.v{W}i32", [(f"<{W} x i32>", v)])


@dataclass(frozen=True)
class MergeSpec:
    """What a merge kernel does (see `kernels.Combine`): `trim` by a magnitude threshold per
    expert (`ties`: and the tied entries before a position), `drop` (DARE's random drop,
    `rescale` after it), the `sign` rule, `normalize` (linear: divide by the total weight; with
    a sign rule: by the agreeing weights, `floor`-clamped or not), `add_base`."""

    n_models: int
    bf16_in: bool
    bf16_out: bool
    add_base: bool
    trim: bool
    ties: bool
    drop: bool
    rescale: bool
    sign: int
    normalize: bool
    floor: bool

    @property
    def name(self) -> str:
        flags = "".join(c for c, on in zip("atTdrnf", (
            self.add_base, self.trim, self.ties, self.drop, self.rescale, self.normalize,
            self.floor)) if on)
        return (f"mz_merge{self.n_models}_{'b' if self.bf16_in else 'f'}"
                f"{'b' if self.bf16_out else 'f'}_s{self.sign}_{flags}")


# The float settings of a merge kernel, then per expert; the integer ones per expert.
GLOBAL_FLOATS = ("lam", "scale", "total", "floor")
EXPERT_FLOATS = ("weight", "abs_weight", "flip", "count", "zero", "rescale")
EXPERT_INTS = ("keep_above", "tie_end", "drop_below", "drop_key")


def merge_ir(spec: MergeSpec) -> str:
    """i32 merge(out, base, expert_0 .. expert_{n-1}, floats, ints, n, offset): 1 when an
    input or the result holds NaN or Inf (or a sum overflowed: the caller checks again)."""
    nm = spec.n_models
    args = ["ptr noalias %out", "ptr noalias %base"] + [f"ptr noalias %e{i}" for i in range(nm)]
    args += ["ptr noalias %fp", "ptr noalias %ip", "i64 %n", "i64 %offset"]

    def entry(e: _Emitter) -> dict:
        s = {}
        for k, name in enumerate(GLOBAL_FLOATS):
            s[name] = ("float", e.param("%fp", "float", k))
        for i in range(nm):
            for k, name in enumerate(EXPERT_FLOATS):
                s[f"{name}{i}"] = ("float", e.param("%fp", "float",
                                                    len(GLOBAL_FLOATS) + 6 * i + k))
            for k, name in enumerate(EXPERT_INTS):
                v = e.param("%ip", "i64", 4 * i + k)
                s[f"{name}{i}"] = ("i64", v) if name == "tie_end" else \
                    ("i32", e(f"trunc i64 {v} to i32"))
        return s

    def body(e: _Emitter, w: int, idx: str, s: dict, acc: dict) -> dict:
        F, I, B = _vec(w, "float"), _vec(w, "i32"), _vec(w, "i1")
        b = e.load(w, spec.bf16_in, "%base", idx) if spec.add_base else None
        if spec.ties:
            position = e(f"add {_vec(w, 'i64')} {e.splat(w, 'i64', idx)}, {e.lanes(w, 'i64')}")
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
                m, cut = e.magnitude(w, y), s[f"keep_above{i}"]
                keep = e(f"icmp sgt {I} {m}, {cut}")
                if spec.ties:  # the tied entries before the slice's tie_end are kept too
                    tied = e(f"icmp eq {I} {m}, {cut}")
                    early = e(f"icmp slt {_vec(w, 'i64')} {position}, {s[f'tie_end{i}']}")
                    keep = e(f"or {B} {keep}, {e(f'and {B} {tied}, {early}')}")
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

    accs = {"bad": _Acc(f"<{W} x i1>", "zeroinitializer", "i1", _or_reduce)}
    return _function(spec.name, "i32", args, entry, accs, lambda e: {}, body,
                     lambda e, final, start: e(f"zext i1 {final['bad']} to i32"))


def _lane(e: _Emitter, w: int, counter: str, key: str) -> str:
    """DARE's 16-bit lane of each entry (`ops.keep_lanes`): Wellons' lowbias32 of
    entry * GOLDEN + key, all mod 2**32."""
    I = _vec(w, "i32")

    def c(value: int) -> str:
        return e.const(w, "i32", str(value if value < 2**31 else value - 2**32))

    x = e(f"mul {I} {counter}, {c(GOLDEN)}")
    x = e(f"add {I} {x}, {key}")
    x = e(f"xor {I} {x}, {e(f'lshr {I} {x}, {c(16)}')}")
    x = e(f"mul {I} {x}, {c(0x7FEB352D)}")
    x = e(f"xor {I} {x}, {e(f'lshr {I} {x}, {c(15)}')}")
    x = e(f"mul {I} {x}, {c(0x846CA68B)}")
    x = e(f"xor {I} {x}, {e(f'lshr {I} {x}, {c(16)}')}")
    return e(f"lshr {I} {x}, {c(16)}")


def _disjoint(e: _Emitter, w: int, spec: MergeSpec, s: dict, ys: list[str],
              checks: list[str]) -> str:
    """`ops.combine` with a sign rule: elect a sign per entry, then the (weighted) mean of
    the entries that agree with it. Appends to `checks` what flags a non-finite input."""
    F, B = _vec(w, "float"), _vec(w, "i1")
    zero, one = e.const(w, "float", _f(0.0)), e.const(w, "float", _f(1.0))
    minus = e.const(w, "float", _f(-1.0))

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
        checks.append(e(f"icmp uge {_vec(w, 'i32')} {e.magnitude(w, votes)}, {big}"))
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


def _store(e: _Emitter, w: int, bf16: bool, v: str, idx: str) -> None:
    """out[idx:idx+w] = v in the output's dtype (bf16: round to nearest even, as torch
    casts; a NaN would need a select that slows the loop, and fails the merge anyway)."""
    elem = "i16" if bf16 else "float"
    if bf16:
        I = _vec(w, "i32")

        def c(value: int) -> str:
            return e.const(w, "i32", str(value))
        u = e(f"bitcast {_vec(w, 'float')} {v} to {I}")
        odd = e(f"and {I} {e(f'lshr {I} {u}, {c(16)}')}, {c(1)}")
        r = e(f"add {I} {e(f'add {I} {u}, {c(0x7FFF)}')}, {odd}")
        v = e(f"trunc {I} {e(f'lshr {I} {r}, {c(16)}')} to {_vec(w, 'i16')}")
    p = e(f"getelementptr {elem}, ptr %out, i64 {idx}")
    e.lines.append(f"  store {_vec(w, elem)} {v}, ptr {p}, align {2 if bf16 else 4}")


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

    def entry(e: _Emitter) -> dict:
        s = {}
        for i in range(n_models):
            low = e(f"trunc i64 {e.param('%lo', 'i64', i)} to i32")
            high = e(f"trunc i64 {e.param('%hi', 'i64', i)} to i32")
            s[f"low{i}"], s[f"high{i}"] = ("i32", low), ("i32", high)
            s[f"width{i}"] = ("i32", e(f"sub i32 {high}, {low}"))
            row = e(f"mul i64 %stride, {i}")
            s[f"band{i}"] = ("", e(f"getelementptr i32, ptr %bands, i64 {row}"))
        return s

    def body(e: _Emitter, w: int, idx: str, s: dict, acc: dict) -> dict:
        F, I, B = _vec(w, "float"), _vec(w, "i32"), _vec(w, "i1")
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
                found = e(f"zext i1 {inside} to i64")
            else:
                e.call("void", f"llvm.masked.compressstore.v{w}i32",
                       [(I, m), ("ptr", slot), (B, inside)])
                mask = e(f"bitcast {B} {inside} to i{w}")
                found = e(f"zext i{w} {e.call(f'i{w}', f'llvm.ctpop.i{w}', [(f'i{w}', mask)])} "
                          "to i64")
            new[f"count{i}"] = e(f"add i64 {count}, {found}")
        return new

    accs = {}
    for i in range(n_models):
        accs[f"above{i}"] = _Acc(f"<{W} x i32>", "zeroinitializer", "i32", _add_reduce)
        accs[f"count{i}"] = _Acc("i64", "0", "i64")

    def exit_(e: _Emitter, final: dict, start: dict) -> str:
        for i in range(n_models):
            for k, value in ((i, e(f"zext i32 {final[f'above{i}']} to i64")),
                             (n_models + i, final[f"count{i}"])):
                slot = e(f"getelementptr i64, ptr %out, i64 {k}")
                e.lines.append(f"  store i64 {value}, ptr {slot}, align 8")
        return ""

    return _function(name, "void", args, entry, accs, lambda e: {}, body, exit_)


def magnitudes_ir(bf16: bool) -> str:
    """void magnitudes(base, expert, out, start, step, n): out[k] = magnitude bits of
    expert[start + k * step] - base[start + k * step], k < n (a strided sample)."""
    e = _Emitter()
    e.lines += ["entry:", "  %any = icmp sgt i64 %n, 0", "  br i1 %any, label %loop, label %done",
                "loop:", "  %k = phi i64 [ 0, %entry ], [ %k.next, %loop ]"]
    idx = e(f"add i64 %start, {e('mul i64 %k, %step')}")
    x = e(f"fsub float {e.load(1, bf16, '%expert', idx)}, {e.load(1, bf16, '%base', idx)}")
    slot = e("getelementptr i32, ptr %out, i64 %k")
    e.lines += [f"  store i32 {e.magnitude(1, x)}, ptr {slot}, align 4",
                "  %k.next = add i64 %k, 1", "  %more = icmp slt i64 %k.next, %n",
                "  br i1 %more, label %loop, label %done", "done:", "  ret void"]
    name = f"mz_magnitudes_{'b' if bf16 else 'f'}"
    head = (f"define void @{name}(ptr noalias %base, ptr noalias %expert, ptr noalias %out, "
            "i64 %start, i64 %step, i64 %n) {")
    return "\n".join(sorted(e.decls) + ["", head] + e.lines + ["}", ""])


def histogram_ir() -> str:
    """void histogram(values, n, low, shift, binmask, selshift, select, bins, hist): for each
    int32 value v, with d = v - low (mod 2**32): hist[(j % 4) * bins + ((d >> shift) &
    binmask)] += 1 where (d >> selshift) == select (d as a 64-bit integer). Four interleaved
    histograms: equal values in a row do not wait on each other's increments."""
    e = _Emitter()
    e.lines += ["entry:", "  %any = icmp sgt i64 %n, 0", "  br i1 %any, label %loop, label %done",
                "loop:", "  %j = phi i64 [ 0, %entry ], [ %j.next, %loop ]"]
    v = e("load i32, ptr " + e("getelementptr i32, ptr %values, i64 %j") + ", align 4")
    d = e(f"sub i32 {v}, %low")
    shifted = e(f"lshr i32 {d}, %shift")
    bin_ = e(f"zext i32 {e(f'and i32 {shifted}, %binmask')} to i64")
    lane = e(f"mul i64 {e('and i64 %j, 3')}, %bins")
    wide = e(f"zext i32 {d} to i64")
    counts = e(f"icmp eq i64 {e(f'lshr i64 {wide}, %selshift')}, %select")
    slot = e(f"getelementptr i64, ptr %hist, i64 {e(f'add i64 {lane}, {bin_}')}")
    total = e(f"add i64 {e(f'load i64, ptr {slot}, align 8')}, {e(f'zext i1 {counts} to i64')}")
    e.lines += [f"  store i64 {total}, ptr {slot}, align 8", "  %j.next = add i64 %j, 1",
                "  %more = icmp slt i64 %j.next, %n", "  br i1 %more, label %loop, label %done",
                "done:", "  ret void"]
    head = ("define void @mz_histogram(ptr noalias %values, i64 %n, i32 %low, i32 %shift, "
            "i32 %binmask, i64 %selshift, i64 %select, i64 %bins, ptr noalias %hist) {")
    return "\n".join(["", head] + e.lines + ["}", ""])


def tied_counts_ir(bf16: bool) -> str:
    """void tied_counts(base, expert, out, bits, n): out[b] += how many of entries 16b ..
    16b+15 have the magnitude bits `bits` in expert - base (out: zeros, n/16 rounded up):
    where a slice's k-th tied entry lies, without a pass that stores every magnitude."""
    args = ["ptr noalias %base", "ptr noalias %expert", "ptr noalias %out", "i32 %bits",
            "i64 %n"]

    def body(e: _Emitter, w: int, idx: str, s: dict, acc: dict) -> dict:
        F, I = _vec(w, "float"), _vec(w, "i32")
        x = e(f"fsub {F} {e.load(w, bf16, '%expert', idx)}, {e.load(w, bf16, '%base', idx)}")
        tied = e(f"icmp eq {I} {e.magnitude(w, x)}, {e.splat(w, 'i32', '%bits')}")
        if w == 1:
            count = e(f"zext i1 {tied} to i32")
        else:
            mask = e(f"bitcast <{w} x i1> {tied} to i{w}")
            count = e(f"zext i{w} {e.call(f'i{w}', f'llvm.ctpop.i{w}', [(f'i{w}', mask)])} "
                      "to i32")
        slot = e(f"getelementptr i32, ptr %out, i64 {e(f'lshr i64 {idx}, 4')}")
        total = e(f"add i32 {e(f'load i32, ptr {slot}, align 4')}, {count}")
        e.lines.append(f"  store i32 {total}, ptr {slot}, align 4")
        return {}

    return _function(f"mz_tied_counts_{'b' if bf16 else 'f'}", "void", args, lambda e: {}, {},
                     lambda e: {}, body, lambda e, final, start: "")
