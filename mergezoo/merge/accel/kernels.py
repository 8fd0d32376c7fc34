"""Fused CPU kernels for element-wise merges, compiled from LLVM IR.

The eager path (`ops.combine` and friends) runs a method as a chain of torch operations, each
one a pass over the slice: on a 2-core CPU, TIES over 8 experts costs about twenty passes per
task vector. These kernels run the whole chain -- decode the inputs' bf16 or float32, task
vector, trim or random drop, sign election, disjoint or weighted sum, LiNeS scale, base, finite
check, encode the output -- in one pass, 16 entries at a time in vector registers, with every
expert's values of those entries in registers too (`kernel_code` generates each kernel for its
number of experts and the method's steps; `jit` compiles it once and caches the machine code).
ctypes releases the GIL while they run, so the engine's compute threads run them side by side.

They compute exactly what the eager functions compute, operation for operation in float32
(fused multiply-adds where torch's `add_(x, alpha=w)` uses them), so a merge gives the same
bytes with or without them; tests hold the two paths equal.

Loading llvmlite and the cached kernels takes a few tens of milliseconds per process (a kernel
not yet in the cache compiles in a fraction of a second). The merge's kernel mode
(`MergeOptions.kernels`) sets the policy: `auto` (the default) uses the kernels when a method's declared saving
(`plans.SAVES`, seconds per billion parameter-models, by configuration) times the merge's size
exceeds that load time; `fused` always uses them; `eager` never does.

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

import ctypes
import functools
import hashlib
import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mergezoo.errors import MergezooError
from mergezoo.merge.accel import jit, kernel_code
from mergezoo.merge.accel.kernel_code import (AT_LEAST, HARDSHRINK, KEEP_ALL, NO_SIGN,
                                              SIGN_COUNT, SIGN_SUM, TOP_K_TIES)
from mergezoo.merge.draws import drop_threshold, keep_probability
from mergezoo.merge.ops import CHUNK, check_sign_rule, divisor_floor, linear_divisor

logger = logging.getLogger(__name__)



@functools.cache
def _code():
    """The IR generator, or None where llvmlite cannot load (merges then run the eager torch
    functions)."""
    try:
        jit._machine()
    except (ImportError, OSError, RuntimeError):  # pragma: no cover - broken installs only
        logger.warning("fused merge kernels unavailable; merging with torch", exc_info=True)
        return None
    return kernel_code


@functools.cache
def _source_key() -> str:
    """Changes whenever the kernels' generator changes: part of their cache key."""
    digest = hashlib.sha256()
    for name in ("ir.py", "kernel_code.py"):
        digest.update(Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()


def _kernel(name: str, build, restype, argtypes: list):
    """The compiled kernel `name`, whose IR `build(kernel_code)` writes (see `jit.function`)."""
    code = _code()
    return jit.function(name, lambda: build(code), restype, argtypes, source_key=_source_key())




def available() -> bool:
    """Whether the fused kernels can run here (llvmlite loads)."""
    return _code() is not None


LOAD_SECONDS = 0.1  # importing llvmlite and loading cached kernels, once per process


def worth_it(saves: float, entries: int, mode: str = "auto") -> bool:
    """Whether a merge should use the kernels in kernel `mode` (auto, fused or eager): `saves`
    is the method's saving in seconds per 1e9 entries (parameters x models), `entries` the
    merge's size. `load` then says whether they run for its dtypes."""
    if mode == "eager":
        return False
    return mode == "fused" or (saves * entries / 1e9 > LOAD_SECONDS and available())


# What the kernels read and write: float32, and bfloat16 as its uint16 bit patterns.
_ARRAY_DTYPES = {torch.bfloat16: np.uint16, torch.float32: np.float32}


def as_array(t: torch.Tensor) -> np.ndarray | None:
    """A contiguous CPU tensor as the numpy array the kernels read or write (no copy), or None
    for a tensor they cannot take."""
    if t.device.type != "cpu" or not t.is_contiguous() or t.dtype not in _ARRAY_DTYPES:
        return None
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


_loaded: dict[tuple, bool] = {}
_loading = threading.Lock()


def load(in_dtypes: set[torch.dtype], out_dtypes: set[torch.dtype], n_models: int,
         has_base: bool) -> bool:
    """Load (or, the first time, compile) the kernels for these input and output dtypes and
    this many models, once per process. Returns whether they run here (False: a dtype they do
    not read, or llvmlite is missing or fails, and merges use the torch functions).

    Example:
        >>> load({torch.bfloat16}, {torch.bfloat16}, n_models=2, has_base=True)  # doctest: +SKIP
        True
    """
    keys = [(i, o, n_models, has_base) for i in in_dtypes for o in out_dtypes
            if i in _ARRAY_DTYPES and o in _ARRAY_DTYPES]
    with _loading:
        for key in keys:
            if key not in _loaded:
                _loaded[key] = _load(key)
    return bool(keys) and all(_loaded[k] for k in keys)


def _load(key: tuple) -> bool:
    """One tiny merge of the given types, so that the kernels are compiled or loaded."""
    in_dtype, out_dtype, n_models, has_base = key
    if _code() is None:
        return False
    try:
        tiny = np.zeros(16, _ARRAY_DTYPES[in_dtype])
        merge_slice(Combine.linear([1.0] * n_models, add_base=has_base),
                    tiny if has_base else None, [tiny] * n_models,
                    np.zeros(16, _ARRAY_DTYPES[out_dtype]), offset=0)
        if has_base:
            band_scan(tiny, [tiny] * n_models, [0] * n_models, [1] * n_models)
            magnitudes(tiny, tiny, slice(0, 16, 2))
    except MergezooError:  # the user's setting (an unsafe MERGEZOO_KERNEL_CACHE): say so
        raise
    except Exception:  # noqa: BLE001 - kernels that cannot load leave merges to torch
        logger.warning("fused merge kernels unavailable; merging with torch", exc_info=True)
        return False
    return True


@dataclass(frozen=True)
class Combine:
    """What to do to one tensor's task vectors (or models): the method, as data.

    Per expert: `weight`; `trim` (per slice, or one row for all slices) one of KEEP_ALL,
    HARDSHRINK (|x| > thr keeps x, else +0), TOP_K_TIES (x times [|x| > thr, or |x| == thr for
    the slice's first `ties[slice]` such entries]), AT_LEAST (x times [|x| >= thr]);
    `drop_below` >= 0 turns on DARE's random drop (keep where the entry's lane is below it,
    lanes from `drop_key`), then divide by `rescale` when it is > 0. Then `sign` election,
    `normalize` (linear: divide by `total`; with a sign rule: by the agreeing weights,
    floored as `divisor_floor` says), times `lam` and `scale`, plus the base when `add_base`.
    Build one with `linear` or `disjoint`, then `trimmed` / `without_outliers` / `dropped`.
    """

    weight: np.ndarray
    trim: np.ndarray  # [slices or 1, experts]
    thr: np.ndarray
    ties: np.ndarray  # [slices or 1, experts], as `trim`: tied entries kept (TOP_K_TIES)
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
    # Breadcrumbs' outlier cut, as `trim`/`thr`/`ties` (KEEP_ALL here: no outliers): the
    # entries this cut would keep are dropped. None: no outlier cut.
    top_trim: np.ndarray | None = None
    top_thr: np.ndarray | None = None
    top_ties: np.ndarray | None = None
    mask_zero: bool = False  # trims multiply by a 0/1 mask (never hardshrink's +0)
    # A kernel and its settings per (trim rows, dtypes, base), made once (see `_settings`).
    _prepared: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def linear(cls, weights: list[float], *, normalize: bool = False, lam: float = 1.0,
               add_base: bool = True) -> "Combine":
        """sum_i w_i x_i (x: task vectors, or models with add_base=False), divided by the sum
        of the weights with `normalize` (as `ops.combine` with no sign rule)."""
        n = len(weights)
        return cls(weight=np.asarray(weights, np.float32), trim=np.zeros((1, n), np.int64),
                   thr=np.zeros(n, np.float32), ties=np.zeros((1, n), np.int64),
                   drop_below=np.full(n, -1, np.int64), drop_key=np.zeros(n, np.int64),
                   rescale=np.zeros(n, np.float32), normalize=normalize,
                   total=linear_divisor(weights, normalize), lam=lam, add_base=add_base)

    @classmethod
    def disjoint(cls, weights: list[float], *, sign_rule: str, normalize: bool,
                 lam: float = 1.0) -> "Combine":
        """TIES's elect-and-merge (as `ops.combine` with `sign_rule`)."""
        check_sign_rule(sign_rule, optional=False)
        return replace(cls.linear(weights, lam=lam), normalize=normalize, total=1.0,
                       sign=SIGN_SUM if sign_rule == "sum" else SIGN_COUNT,
                       divisor_floor=divisor_floor(weights))

    def trimmed(self, rules: list[int], thresholds: list[float],
                ties: list[list[int] | None] | None = None,
                equal: list[list[int] | None] | None = None) -> "Combine":
        """With a trim rule and threshold per expert. A TOP_K_TIES expert's `ties[i]` and
        `equal[i]` say, per slice, how many of the entries equal to the threshold it keeps,
        of how many: a slice that keeps none of them trims as HARDSHRINK, one that keeps all
        as AT_LEAST; one that keeps some keeps those before the index where its kept ones end
        (`merge_slice` finds it)."""
        trim, table = _rule_table(rules, ties, equal)
        return replace(self, trim=trim, thr=np.asarray(thresholds, np.float32), ties=table)

    def without_outliers(self, rules: list[int], thresholds: list[float],
                         ties: list[list[int] | None] | None = None,
                         equal: list[list[int] | None] | None = None) -> "Combine":
        """Also drop, per expert, the entries a second cut keeps (rules as `trimmed`;
        KEEP_ALL: no outlier cut for that expert), with trims that only multiply by a mask
        (Breadcrumbs: the top k of the trim, less the top `k_top` of this cut)."""
        trim, table = _rule_table(rules, ties, equal)
        return replace(self, top_trim=trim, top_thr=np.asarray(thresholds, np.float32),
                       top_ties=table, mask_zero=True)

    def dropped(self, densities: list[float], keys: list[int], rescale: bool) -> "Combine":
        """With DARE's random drop (an expert with density >= 1 keeps everything)."""
        keep = [d < 1 for d in densities]
        return replace(self, drop_below=np.asarray(
            [drop_threshold(d) if k else -1 for d, k in zip(densities, keep)], np.int64),
            drop_key=np.asarray(keys, np.int64),
            rescale=np.asarray([keep_probability(d) if k and rescale else 0
                                for d, k in zip(densities, keep)], np.float32))


def _rule_table(rules: list[int], ties: list[list[int] | None] | None,
                equal: list[list[int] | None] | None) -> tuple[np.ndarray, np.ndarray]:
    """Trim rules and kept tied counts, per slice ([slices or 1, experts]), see `trimmed`."""
    n_slices = max((len(t) for t in ties or [] if t), default=1)
    table = np.zeros((n_slices, len(rules)), np.int64)
    trim = np.tile(np.asarray(rules, np.int64), (n_slices, 1))
    for i, per_slice in enumerate(ties or []):
        if per_slice:
            kept, of = np.asarray(per_slice), np.asarray(equal[i])
            table[:, i] = kept
            trim[:, i] = np.where(kept <= 0, HARDSHRINK,
                                  np.where(kept >= of, AT_LEAST, TOP_K_TIES))
    return trim, table


def merge_slice(plan: Combine, base: np.ndarray | None, experts: list[np.ndarray],
                out: np.ndarray, *, offset: int, slice_index: int = 0) -> bool:
    """Merge one slice: `base` and `experts` (1-D, float32 or bfloat16 viewed as uint16, all
    of one dtype) into `out` (float32 or bf16-as-uint16). `offset` is the slice's first
    entry's index in the flat tensor (the random drop's counter), `slice_index` its index in
    the engine's slicing (TOP_K_TIES's ties). Returns False when an input or the result holds
    NaN or Inf (rarely also when a sum of finite values overflowed: the engine checks again)."""
    n = out.shape[0]
    inputs = ([base] if base is not None else []) + list(experts)
    # The kernel reads n entries of every array, of the width its dtype says: anything else
    # would read or write past an array's end.
    _check_arrays("merge_slice", inputs + [out], n)
    if len({a.dtype for a in inputs}) != 1:
        raise ValueError("merge_slice: the inputs must be of one dtype")
    if not (len(plan.weight) == len(experts) == plan.trim.shape[1] == plan.ties.shape[1]
            == len(plan.drop_below) == len(plan.rescale)):
        raise ValueError(f"merge_slice: a plan for {len(plan.weight)} experts, given "
                         f"{len(experts)}")
    row = slice_index if plan.trim.shape[0] > 1 else 0  # `trim` and `ties` share their rows
    top = plan.top_trim
    top_row = slice_index if top is not None and top.shape[0] > 1 else 0
    add_base = plan.add_base and base is not None
    fn, floats, ints = _settings(plan, row, top_row, experts[0].dtype == np.uint16,
                                 out.dtype == np.uint16, add_base)
    ni = len(_code().EXPERT_INTS)  # (keep_above, tie_end, ..., top_above, top_tie_end)
    for rules, ties, r, at in [(plan.trim, plan.ties, row, 0), (top, plan.top_ties, top_row, 4)]:
        if rules is not None and (rules[r] == TOP_K_TIES).any():
            # The slice keeps some of its tied entries, the first ones: where they end.
            ints = ints.copy()
            for i in np.flatnonzero(rules[r] == TOP_K_TIES):
                ints[ni * i + at + 1] = _after_tie(base, experts[i], int(ints[ni * i + at]),
                                                   int(ties[r, i]))
    bad = fn(out.ctypes.data, (base if add_base else experts[0]).ctypes.data,
             *[e.ctypes.data for e in experts], floats.ctypes.data, ints.ctypes.data, n, offset)
    return not bad


def _check_arrays(kernel: str, arrays: list[np.ndarray], n: int,
                  dtypes: tuple = (np.float32, np.uint16)) -> None:
    """Raise ValueError unless every array is 1-D, C-contiguous, of `n` entries and of one of
    `dtypes`: the kernels trust what they are given (a shorter array would be read past its
    end, a segfault or worse), and this check is cheap next to their pass."""
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.shape[0] != n \
                or not a.flags.c_contiguous or a.dtype not in dtypes:
            what = (f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__)
            raise ValueError(f"{kernel}: expected contiguous 1-D arrays of {n} entries of "
                             f"{' or '.join(np.dtype(d).name for d in dtypes)}, got {what}")


def _after_tie(base: np.ndarray, expert: np.ndarray, bits: int, count: int) -> int:
    """The index just after the `count`-th entry (count >= 1) of expert - base whose magnitude
    has the float32 bits `bits`."""
    _check_arrays("tied_counts", [base, expert], base.shape[0], (base.dtype,))
    bf16 = base.dtype == np.uint16
    fn = _kernel(f"mz_tied_counts_{'b' if bf16 else 'f'}", lambda code: code.tied_counts_ir(bf16),
                 None, [ctypes.c_void_p] * 3 + [ctypes.c_int32, ctypes.c_int64])
    per_block = np.zeros(-(-base.shape[0] // 16), np.int32)
    fn(base.ctypes.data, expert.ctypes.data, per_block.ctypes.data, bits, base.shape[0])
    reached = np.cumsum(per_block)
    if not 1 <= count <= (int(reached[-1]) if reached.size else 0):
        raise ValueError(f"tied_counts: {count} tied entries asked for, "
                         f"{int(reached[-1]) if reached.size else 0} found")
    block = int(np.searchsorted(reached, count))  # the 16 entries that hold the count-th
    count -= int(reached[block - 1]) if block else 0
    first = 16 * block
    tied = np.flatnonzero(magnitudes(base, expert, slice(first, first + 16)) == bits)
    return first + int(tied[count - 1]) + 1


def _keep_above(rule: int, threshold: float) -> int:
    """A trim rule as the magnitude bits above which an entry is kept (see `Combine`)."""
    t = np.float32(threshold)
    bits = int(np.abs(t).view(np.int32)) if t >= 0 else -1  # (-0: 0; NaN: keeps none)
    if np.isnan(t):
        bits = 0x7FFFFFFF
    return {KEEP_ALL: -1, HARDSHRINK: bits, TOP_K_TIES: bits,
            AT_LEAST: bits - 1 if bits >= 0 else -1}[int(rule)]


def _settings(plan: Combine, row: int, top_row: int, bf16_in: bool, bf16_out: bool,
              add_base: bool) -> tuple:
    """The kernel for one trim row (and outlier row) of `plan`, and its float and integer
    settings (the layout of `kernel_code.merge_ir`), made once per plan."""
    key = (row, top_row, bf16_in, bf16_out, add_base)
    if key in plan._prepared:
        return plan._prepared[key]
    code = _code()
    rules, n = plan.trim[row], len(plan.weight)
    g, nf, ni = len(code.GLOBAL_FLOATS), len(code.EXPERT_FLOATS), len(code.EXPERT_INTS)
    floats = np.zeros(g + nf * n, np.float32)
    floats[:g] = plan.lam, plan.scale, plan.total, plan.divisor_floor
    ints = np.zeros(ni * n, np.int64)
    normalize = plan.normalize if plan.sign != NO_SIGN else plan.total != 1.0
    tops = plan.top_trim[top_row] if plan.top_trim is not None else None
    for i in range(n):
        w = np.float32(plan.weight[i])
        # Trim: keep |x| > keep_above (as bits), and with ties the tied ones before tie_end;
        # then drop those above top_above (and its tied ones before top_tie_end).
        no_top = tops is None or tops[i] == KEEP_ALL
        dropping = plan.drop_below[i] >= 0
        ints[ni * i:ni * (i + 1)] = (
            _keep_above(rules[i], plan.thr[i]), 0, plan.drop_below[i] if dropping else 1 << 16,
            plan.drop_key[i] & 0xFFFFFFFF,
            0x7FFFFFFF if no_top else _keep_above(tops[i], plan.top_thr[i]), 0)
        hardshrink = rules[i] == HARDSHRINK and not plan.mask_zero
        floats[g + nf * i:g + nf * (i + 1)] = (
            w, abs(w), -1.0 if w < 0 else 1.0, w if plan.normalize else 0.0,
            0.0 if hardshrink else -0.0,  # hardshrink makes -0 +0
            plan.rescale[i] if plan.rescale[i] > 0 else 1.0)
    outliers = tops is not None and bool((tops != KEEP_ALL).any())
    spec = code.MergeSpec(
        n_models=n, bf16_in=bf16_in, bf16_out=bf16_out, add_base=add_base,
        trim=bool((rules != KEEP_ALL).any()) or outliers,
        ties=bool((rules == TOP_K_TIES).any()), outliers=outliers,
        top_ties=outliers and bool((tops == TOP_K_TIES).any()),
        drop=bool((plan.drop_below >= 0).any()), rescale=bool((plan.rescale > 0).any()),
        sign=plan.sign, normalize=bool(normalize),
        floor=plan.sign != NO_SIGN and plan.divisor_floor > 0)
    fn = _kernel(spec.name, lambda code: code.merge_ir(spec), ctypes.c_int32,
                 [ctypes.c_void_p] * (n + 4) + [ctypes.c_int64] * 2)
    plan._prepared[key] = (fn, floats, ints)
    return plan._prepared[key]


_scan_scratch = threading.local()  # band_scan's gather buffer, one per compute thread


def band_scan(base: np.ndarray, experts: list[np.ndarray], low: list[int],
              high: list[int]) -> list[tuple[int, np.ndarray]]:
    """For each task vector experts[i] - base: how many magnitudes (as float32 bits) are
    above `high[i]`, and the bits of those within [low[i], high[i]], in order (`topk.TopKCut`'s
    bracket pass), in one pass that reads the base once."""
    n, size = len(experts), base.shape[0]
    _check_arrays("band_scan", [base, *experts], size, (base.dtype,) if base.dtype in
                  (np.float32, np.uint16) else (np.float32, np.uint16))
    if size >= 2**31 or len(low) != n or len(high) != n:
        raise ValueError("band_scan: the base and the experts must be 1-D arrays of one "
                         "shape and dtype, under 2**31 entries, with a bracket per expert")
    # The gather writes up to 16 past its count. The buffer is the thread's, reused: a fresh
    # one per call costs more in page zeroing (the kernel zeroes whole 2 MB huge pages) than
    # copying out the few percent of entries gathered.
    bands = getattr(_scan_scratch, "bands", None)
    if bands is None or bands.shape[0] < n or bands.shape[1] < size + 16:
        bands = _scan_scratch.bands = np.empty((n, max(size, CHUNK) + 16), np.int32)
    bf16 = base.dtype == np.uint16
    fn = _kernel(f"mz_band_scan{n}_{'b' if bf16 else 'f'}", lambda code: code.band_scan_ir(n, bf16),
                 None, [ctypes.c_void_p] * (n + 4) + [ctypes.c_int64, ctypes.c_void_p,
                                                      ctypes.c_int64])
    found = np.empty(2 * n, np.int64)
    lows, highs = np.asarray(low, np.int64), np.asarray(high, np.int64)
    fn(base.ctypes.data, *[e.ctypes.data for e in experts], lows.ctypes.data,
       highs.ctypes.data, bands.ctypes.data, bands.shape[1], found.ctypes.data, size)
    return [(int(found[i]), bands[i, :found[n + i]].copy()) for i in range(n)]


def magnitudes(base: np.ndarray, expert: np.ndarray, part: slice) -> np.ndarray:
    """Magnitude bits (int32) of (expert - base)[part], any step."""
    _check_arrays("magnitudes", [base, expert], base.shape[0], (base.dtype,) if base.dtype in
                  (np.float32, np.uint16) else (np.float32, np.uint16))
    start, stop, step = part.indices(base.shape[0])
    out = np.empty(len(range(start, stop, step)), np.int32)
    bf16 = base.dtype == np.uint16
    fn = _kernel(f"mz_magnitudes_{'b' if bf16 else 'f'}", lambda code: code.magnitudes_ir(bf16),
                 None, [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3)
    fn(base.ctypes.data, expert.ctypes.data, out.ctypes.data, start, step, out.shape[0])
    return out


def _histogram(values: np.ndarray, low: int, shift: int, binmask: int, selshift: int,
               select: int, bins: int) -> np.ndarray:
    """See `kernel_code.histogram_ir`: the four interleaved histograms, summed."""
    fn = _kernel("mz_histogram", lambda code: code.histogram_ir(), None,
                 [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32,
                  ctypes.c_uint32, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                  ctypes.c_void_p])
    _check_arrays("histogram", [values], values.shape[0], (np.int32,))
    hist = np.zeros(4 * bins, np.int64)  # (`low` is an int32 value: it fits c_int32)
    fn(values.ctypes.data, values.shape[0], low, shift, binmask, selshift, select, bins,
       hist.ctypes.data)
    return hist.reshape(4, bins).sum(axis=0)


def kth_smallest(values: np.ndarray | torch.Tensor, ranks: list[int], low: int | None = None,
                 high: int | None = None) -> list[int]:
    """The `ranks`-th smallest (1-based) of a 1-D int32 array whose values lie in [low, high]
    (found when not given), exactly, by radix selection: a histogram of 11 bits of each value's
    offset from `low` at a time, from the top, over the values that share the digits found so
    far. Several times faster than numpy's introselect on magnitude bits with many equal
    values (1.5 against 6-9 ms for 750,000 of them here)."""
    if isinstance(values, torch.Tensor):
        values = values.numpy()
    values = np.ascontiguousarray(values, np.int32)
    low = int(values.min()) if low is None else low
    high = int(values.max()) if high is None else high
    found = []
    for rank in ranks:
        prefix, position = 0, (high - low).bit_length()
        while position > 0:  # the digits above `position` are `prefix`
            width = min(11, position)
            shift = position - width
            counts = np.cumsum(_histogram(values, low, shift, (1 << width) - 1, position, prefix,
                                          1 << width))
            digit = int(np.searchsorted(counts, rank))  # the first bin reaching the rank
            rank -= int(counts[digit - 1]) if digit else 0
            prefix, position = (prefix << width) | digit, shift
        found.append(low + prefix)
    return found
