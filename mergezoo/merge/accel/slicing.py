"""Slice-by-slice merging of one tensor, for element-wise methods on CPU.

Converting whole bf16 tensors to float32 and running a method's chain of element-wise
operations over them streams several times the model's size through memory: on CPU that
traffic, not the arithmetic, bounds a merge. When a method is element-wise (see
`MergeMethod.elementwise`), the engine instead keeps the inputs in their own dtype and runs the
method on one cache-sized slice at a time: each slice is converted, merged, checked and cast
into the output while it is still in cache.

Example:
    >>> base = torch.zeros(6, dtype=torch.bfloat16)
    >>> view = SlicedTensor("w", [base, base + 1, base + 3], has_base=True)
    >>> view.delta(1, slice(0, 3))
    tensor([3., 3., 3.])
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Executor
from typing import Any, Callable, Iterable, TypeVar

import torch

from mergezoo.merge import statistics
from mergezoo.merge.accel import kernels, plans
from mergezoo.merge.methods.family import configure
from mergezoo.merge.ops import CHUNK, chunks
from mergezoo.merge.spec import MergeInputs, MergeMethod
from mergezoo.merge.topk import TopKCut, magnitude_bits


T = TypeVar("T")


class SlicedTensor:
    """One tensor of every input (the base first, when the method uses it), kept in the
    inputs' dtypes and read in the compute dtype one slice of the flattened tensor at a time.
    `parts` are the slices a merge visits, in order. `pool` (the engine's compute threads, if
    several) runs slices, and a statistics pass's task vectors, side by side."""

    def __init__(self, key: str, inputs: list[torch.Tensor], *, has_base: bool,
                 dtype: torch.dtype = torch.float32, pool: Executor | None = None,
                 fused: bool = True, shape: tuple[int, ...] | None = None) -> None:
        self.key = key
        # The tensor's shape (for statistics per row), when the inputs come flattened.
        self.shape = tuple(inputs[0].shape) if shape is None else tuple(shape)
        self.flat = [t.reshape(-1) for t in inputs]
        self.n = self.flat[0].numel()
        if any(t.numel() != self.n for t in self.flat):  # slices index every input alike
            raise ValueError(f"tensor '{key}': the inputs hold {[t.numel() for t in self.flat]} "
                             "entries, not one size")
        self.has_base = has_base
        self.dtype = dtype
        self.parts = chunks(self.n, torch.device("cpu"))
        self.pool = pool
        # The inputs as numpy arrays for the fused kernels, when they can read them all.
        arrays = [kernels.as_array(t) for t in self.flat] \
            if fused and dtype == torch.float32 \
            and len({t.dtype for t in self.flat}) == 1 else [None]
        self.arrays = None if any(a is None for a in arrays) else arrays

    def map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        """[fn(item) for item in items], on the engine's compute threads when it has several;
        `fn` must not use `read` (its buffers are shared)."""
        if self.pool is None:
            return [fn(item) for item in items]
        return list(self.pool.map(fn, items))

    @property
    def n_models(self) -> int:
        return len(self.flat) - int(self.has_base)

    def read(self, part: slice, buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every input's entries in `part`, in the compute dtype, in `buffers` (one per input,
        see `new_scratch`) that the caller may change in place until the next `read` into
        them."""
        size = part.stop - part.start
        return [buf[:size].copy_(flat[part]) for buf, flat in zip(buffers, self.flat)]

    def delta(self, i: int, part: slice) -> torch.Tensor:
        """Model `i`'s task vector over `part` (any slice, strided too), as a new tensor."""
        if not self.has_base:
            raise ValueError(f"{self.key}: task vectors need the base model")
        model = self.flat[1 + i][part].to(self.dtype, copy=True)
        return model.sub_(self.flat[0][part])

    def magnitude_bits(self, i: int) -> Callable[[slice], torch.Tensor]:
        """part -> model `i`'s task-vector magnitudes over `part` as float32 bits (see
        `topk.magnitude_bits`), by a fused kernel where it reads the inputs."""
        if self.arrays is None or not self.has_base:
            return lambda part: magnitude_bits(self.delta(i, part))
        base, model = self.arrays[0], self.arrays[1 + i]
        return lambda part: torch.from_numpy(kernels.magnitudes(base, model, part))

    def top_k_cuts(self, ks: list[int | None],
                   of: list[int] | None = None) -> list[TopKCut | None]:
        """Cut i keeps the `ks[i]` largest magnitudes of model `of[i]`'s task vector (model i
        by default; no cut where ks[i] is None), found in a first pass over the slices; where
        the kernels read the inputs, one fused pass per slice brackets every cut at once (see
        `kernels.band_scan`), reading the base once."""
        of = list(range(len(ks))) if of is None else of
        wanted = [i for i, k in enumerate(ks) if k is not None]
        if not wanted:
            return [None] * len(ks)
        bits = [self.magnitude_bits(of[i]) for i in wanted]
        if self.arrays is None or not self.has_base:
            cuts = self.map(lambda w: TopKCut.find(bits[w], self.n, ks[wanted[w]], self.parts),
                            range(len(wanted)))
        else:
            base, models = self.arrays[0], [self.arrays[1 + of[i]] for i in wanted]

            def scan_all(part: slice, lows: list[int], highs: list[int]) -> list:
                return kernels.band_scan(base[part], [m[part] for m in models], lows, highs)
            cuts = TopKCut.find_each(bits, self.n, [ks[i] for i in wanted], self.parts,
                                     scan_all, run=self.map, select=kernels.kth_smallest)
        found = dict(zip(wanted, cuts))
        return [found.get(i) for i in range(len(ks))]


def new_scratch(n_inputs: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """One slice-sized buffer per input, reused for every slice of every tensor."""
    return [torch.empty(CHUNK, dtype=dtype) for _ in range(n_inputs)]


def merge_sliced(spec: MergeMethod, hp: dict[str, Any], view: SlicedTensor, out: torch.Tensor,
                 *, seeds: list[int] | None = None, model_stats: dict[str, Any] | None = None,
                 scale: float = 1.0, scratch: list[list[torch.Tensor]] | None = None) -> bool:
    """Merge `view` into `out` (the output's shape and dtype) slice by slice with the
    element-wise method `spec`; a task-vector method's result is scaled by `scale` (LiNeS) and
    added to the base. Returns False when the merged values hold NaN or Inf.

    The statistics the method declares are computed first, over the whole tensor (a first
    pass over its slices), with the whole-model ones given in `model_stats`. Where the method
    is of the task-vector family and the kernels read the inputs and the output's dtype, its
    configuration is compiled (`plans.compile_config`) and each slice is one kernel call; else
    the method's torch function runs on slices read into `scratch` (buffer sets, see
    `new_scratch`; one is made when None). With the view's `pool`, workers merge every W-th
    slice side by side; slices are independent (statistics are per tensor, and random draws
    are by entry index), so the result is the same either way."""
    stats = statistics.for_tensor(spec, hp, view, model_stats)
    flat_out = out.view(-1)
    plan = _fused_plan(spec, hp, view, seeds, stats, scale)
    out_array = kernels.as_array(flat_out) if plan is not None else None
    if out_array is None:
        plan = None
    scratch = scratch or [new_scratch(len(view.flat), view.dtype)]

    def fused_every(first: int, step: int, _buffers: Any) -> bool:
        finite = True
        base = view.arrays[0] if view.has_base else None
        experts = view.arrays[1:] if view.has_base else view.arrays
        for j in range(first, len(view.parts), step):
            part = view.parts[j]
            finite &= kernels.merge_slice(
                plan, None if base is None else base[part], [e[part] for e in experts],
                out_array[part], offset=part.start, slice_index=j)
        return finite

    def merge_every(first: int, step: int, buffers: list[torch.Tensor]) -> bool:
        total = torch.zeros((), dtype=torch.float64)
        for j in range(first, len(view.parts), step):
            part = view.parts[j]
            inputs = view.read(part, buffers)
            base = inputs[0] if view.has_base else None
            x = MergeInputs(key=view.key, base=base,
                            models=inputs[1:] if view.has_base else inputs, seeds=seeds,
                            offset=part.start, shape=view.shape,
                            stats=statistics.bind(stats, j), owned=True)
            merged = spec.fn(x, **hp)
            if spec.returns == "delta":
                merged = (merged.mul_(scale) if scale != 1.0 else merged).add_(base)
            # NaN or Inf anywhere poisons the running sum: one cheap reduction per slice.
            total += merged.sum()
            flat_out[part].copy_(merged.reshape(-1))
        return bool(torch.isfinite(total))

    run = fused_every if plan is not None else merge_every
    workers = min(len(scratch), len(view.parts)) if view.pool is not None else 1
    if workers < 2:
        return run(0, 1, scratch[0])
    done = [view.pool.submit(run, w, workers, scratch[w]) for w in range(workers)]
    return all([f.result() for f in done])


def _fused_plan(spec: MergeMethod, hp: dict[str, Any], view: SlicedTensor,
                seeds: list[int] | None, stats: dict[str, Any] | None,
                scale: float) -> "kernels.Combine | None":
    """The method's configuration as a fused kernel's plan for this tensor, or None to run
    its torch function."""
    if spec.family is None or view.arrays is None:
        return None
    plan = plans.compile_config(configure(spec.family, hp), stats, seeds)
    if plan is not None and spec.returns == "delta":
        plan = dataclasses.replace(plan, scale=scale)
    return plan
