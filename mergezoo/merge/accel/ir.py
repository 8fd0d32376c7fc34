"""A small toolkit for writing LLVM IR kernels as text (see `kernel_code`, `jit`).

`Emitter` writes straight-line SSA code with fresh names; `vector_loop` wraps a body into a
kernel that runs it 16 entries at a time in vector registers (<16 x float>; LLVM splits the
vectors where the CPU's registers are narrower), then one at a time for the rest, carrying
accumulators from one loop to the next; `scalar_loop` is the plain one-at-a-time loop.

Example:
    >>> def body(e, w, idx, settings, acc):
    ...     x = e.load(w, False, "%src", idx)
    ...     return {"sum": e(f"fadd {vec(w, 'float')} {acc['sum']}, {x}")}
    >>> text = vector_loop("mz_sum", "float", ["ptr %src", "i64 %n"], lambda e: {},
    ...                    {"sum": Acc("<16 x float>", "zeroinitializer", "float", ...)},
    ...                    body, lambda e, final: final["sum"])        # doctest: +SKIP
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

W = 16  # lanes per vector step


def vec(w: int, elem: str) -> str:
    return elem if w == 1 else f"<{w} x {elem}>"


def suffix(w: int, elem: str) -> str:
    short = {"float": "f32", "i1": "i1", "i16": "i16", "i32": "i32"}[elem]
    return short if w == 1 else f"v{w}{short}"


def f32(x: float) -> str:
    """A float32 constant as LLVM writes it: the hex of the (exact) double."""
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", x))[0]


class Emitter:
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

    def i32(self, w: int, value: int) -> str:
        """An i32 constant (or vector of it), `value` taken mod 2**32."""
        value &= 0xFFFFFFFF
        return self.const(w, "i32", str(value - (1 << 32) if value >= 1 << 31 else value))

    def popcount(self, w: int, flags: str, to: str) -> str:
        """How many of the w lanes of the i1 `flags` are set, as integer type `to`."""
        if w == 1:
            return self(f"zext i1 {flags} to {to}")
        mask = self(f"bitcast <{w} x i1> {flags} to i{w}")
        return self(f"zext i{w} {self.call(f'i{w}', f'llvm.ctpop.i{w}', [(f'i{w}', mask)])} "
                    f"to {to}")

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
        v = self(f"load {vec(w, elem)}, ptr {p}, align {2 if bf16 else 4}")
        if not bf16:
            return v
        wide = self(f"zext {vec(w, 'i16')} {v} to {vec(w, 'i32')}")
        shifted = self(f"shl {vec(w, 'i32')} {wide}, {self.const(w, 'i32', '16')}")
        return self(f"bitcast {vec(w, 'i32')} {shifted} to {vec(w, 'float')}")

    def magnitude(self, w: int, x: str) -> str:
        """|x| as float32 bits (int32): ordered like the magnitudes, NaN above Inf."""
        bits = self(f"bitcast {vec(w, 'float')} {x} to {vec(w, 'i32')}")
        return self(f"and {vec(w, 'i32')} {bits}, {self.const(w, 'i32', '2147483647')}")

    def fma(self, w: int, a: str, b: str, c: str) -> str:
        t = vec(w, "float")
        return self.call(t, f"llvm.fma.{suffix(w, 'float')}", [(t, a), (t, b), (t, c)])

    def as_float(self, w: int, flag: str) -> str:
        return self(f"uitofp {vec(w, 'i1')} {flag} to {vec(w, 'float')}")


@dataclass(frozen=True)
class Acc:
    """A loop-carried value: its type and start in the vector loop and in the scalar loop
    (which starts from the vector loop's result, reduced by `reduce`)."""

    vtype: str
    vinit: str
    stype: str
    reduce: Callable[[Emitter, str], str] | None = None


def vector_loop(name: str, ret: str, args: list[str], entry: Callable[[Emitter], dict],
                accs: dict[str, Acc], body: Callable[[Emitter, int, str, dict, dict], dict],
                exit_: Callable[[Emitter, dict], str]) -> str:
    """A kernel over entries 0..n-1 (`%n`): `entry` loads the settings, `body(e, w, idx,
    settings, accs)` handles entries idx..idx+w-1 and returns the new accumulators, `exit_`
    returns the value to return."""
    e = Emitter()
    e.lines.append("entry:")
    settings = {1: entry(e)}
    settings[W] = {k: (e.splat(W, t, v) if t else v) for k, (t, v) in settings[1].items()}
    settings[1] = {k: v for k, (t, v) in settings[1].items()}
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
    result = exit_(e, final)
    e.lines.append(f"  ret {ret} {result}" if ret != "void" else "  ret void")
    return _define(e, name, ret, args)


def _define(e: Emitter, name: str, ret: str, args: list[str]) -> str:
    head = f"define {ret} @{name}({', '.join(args)}) {{"
    return "\n".join(sorted(e.decls) + ["", head] + e.lines + ["}", ""])


def scalar_loop(name: str, args: list[str], body: Callable[[Emitter], None]) -> str:
    """void name(args): `body(e)` (which may use %j) for %j in 0 .. %n - 1."""
    e = Emitter()
    e.lines += ["entry:", "  %any = icmp sgt i64 %n, 0", "  br i1 %any, label %loop, label %done",
                "loop:", "  %j = phi i64 [ 0, %entry ], [ %j.next, %loop ]"]
    body(e)
    e.lines += ["  %j.next = add i64 %j, 1", "  %more = icmp slt i64 %j.next, %n",
                "  br i1 %more, label %loop, label %done", "done:", "  ret void"]
    return _define(e, name, "void", args)


def or_reduce(e: Emitter, v: str) -> str:
    return e.call("i1", f"llvm.vector.reduce.or.v{W}i1", [(f"<{W} x i1>", v)])


def add_reduce(e: Emitter, v: str) -> str:
    return e.call("i32", f"llvm.vector.reduce.add.v{W}i32", [(f"<{W} x i32>", v)])
