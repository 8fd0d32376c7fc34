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

from concurrent.futures import Executor
from typing import Any, Callable, Iterable, TypeVar

import torch

from mergezoo.merge.ops import CHUNK, chunks
from mergezoo.merge.registry import MergeInputs, MergeMethod


T = TypeVar("T")


class SlicedTensor:
    """One tensor of every input (the base first, when the method uses it), kept in the
    inputs' dtypes and read in the compute dtype one slice of the flattened tensor at a time.
    `parts` are the slices a merge visits, in order. `pool` (the engine's compute threads, if
    several) runs slices, and a `per_tensor` pass's task vectors, side by side."""

    def __init__(self, key: str, inputs: list[torch.Tensor], *, has_base: bool,
                 dtype: torch.dtype = torch.float32, pool: Executor | None = None) -> None:
        self.key = key
        self.flat = [t.reshape(-1) for t in inputs]
        self.n = self.flat[0].numel()
        self.has_base = has_base
        self.dtype = dtype
        self.parts = chunks(self.n, torch.device("cpu"))
        self.pool = pool

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


def new_scratch(n_inputs: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """One slice-sized buffer per input, reused for every slice of every tensor."""
    return [torch.empty(CHUNK, dtype=dtype) for _ in range(n_inputs)]


Generators = Callable[[int], "list[torch.Generator] | None"]  # slice index -> one per model


def merge_sliced(spec: MergeMethod, hp: dict[str, Any], view: SlicedTensor, out: torch.Tensor,
                 *, generators: Generators | None = None, state: Any = None,
                 scale: float = 1.0, scratch: list[list[torch.Tensor]] | None = None) -> bool:
    """Merge `view` into `out` (the output's shape and dtype) slice by slice with the
    element-wise method `spec`; a task-vector method's result is scaled by `scale` (LiNeS) and
    added to the base. Returns False when the merged values hold NaN or Inf.

    `scratch` holds buffer sets (see `new_scratch`; one is made when None). With the view's
    `pool` and W sets, W workers merge every W-th slice side by side; slices are independent
    (the per-tensor state is per slice, and random methods draw from
    `generators(slice_index)`), so the result is the same either way."""
    scratch = scratch or [new_scratch(len(view.flat), view.dtype)]
    tensor_state = spec.per_tensor(view, hp) if spec.per_tensor else None
    flat_out = out.view(-1)

    def merge_every(first: int, step: int, buffers: list[torch.Tensor]) -> bool:
        total = torch.zeros((), dtype=torch.float64)
        for j in range(first, len(view.parts), step):
            part = view.parts[j]
            inputs = view.read(part, buffers)
            base = inputs[0] if view.has_base else None
            x = MergeInputs(key=view.key, base=base,
                            models=inputs[1:] if view.has_base else inputs,
                            generators=generators(j) if generators else None, state=state,
                            tensor_state=tensor_state, slice_index=j, owned=True)
            merged = spec.fn(x, **hp)
            if spec.returns == "delta":
                merged = (merged.mul_(scale) if scale != 1.0 else merged).add_(base)
            # NaN or Inf anywhere poisons the running sum: one cheap reduction per slice.
            total += merged.sum()
            flat_out[part].copy_(merged.reshape(-1))
        return bool(torch.isfinite(total))

    workers = min(len(scratch), len(view.parts)) if view.pool is not None else 1
    if workers < 2:
        return merge_every(0, 1, scratch[0])
    done = [view.pool.submit(merge_every, w, workers, scratch[w]) for w in range(workers)]
    return all([f.result() for f in done])
