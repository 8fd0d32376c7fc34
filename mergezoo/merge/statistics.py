"""The statistics a method declares (`spec.TopK`, `spec.ModelThreshold`, `spec.Gram`),
computed by the engine over a whole tensor or the whole model, for `MergeInputs.stats`.

Per-tensor statistics are computed from a *view* of one tensor's task vectors: the engine's
slice-by-slice `accel.slicing.SlicedTensor` (fused bracket passes where the kernels read the
inputs) or `WholeTensorView` over task vectors already in memory. A top-k's value is a
`topk.Selection`; `bind(values, part)` restricts every selection to one part of the tensor.

Example:
    >>> import torch
    >>> from mergezoo.merge.spec import TopK
    >>> view = WholeTensorView([torch.tensor([0.5, -2.0, 0.5, 1.0])])
    >>> sel = compute({"keep0": TopK(0, 2)}, view)["keep0"]
    >>> sel.apply(torch.tensor([0.5, -2.0, 0.5, 1.0]))
    tensor([ 0., -2.,  0.,  1.])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from mergezoo.merge.ops import chunks, gram
from mergezoo.merge.spec import Gram, MergeMethod, ModelStream, ModelThreshold, TopK
from mergezoo.merge.topk import Selection, TopKCut, magnitude_bits


class WholeTensorView:
    """One tensor's task vectors, whole and in memory (on any device), as the statistics read
    them: `delta(i, part)`, `top_k_cuts(ks, of)` (a cut over one part: the whole tensor)."""

    def __init__(self, deltas: list[torch.Tensor], shape: tuple[int, ...] | None = None) -> None:
        self.flat = [d.reshape(-1) for d in deltas]
        self.shape = tuple(deltas[0].shape) if shape is None else tuple(shape)
        self.n = self.flat[0].numel()
        self.n_models = len(deltas)
        self.parts = chunks(self.n, self.flat[0].device)  # the Gram matrix's summation order

    def map(self, fn: Callable, items: Any) -> list:
        return [fn(item) for item in items]

    def delta(self, i: int, part: slice) -> torch.Tensor:
        return self.flat[i][part]

    def top_k_cuts(self, ks: list[int | None], of: list[int] | None = None) -> list:
        of = list(range(len(ks))) if of is None else of
        return [None if k is None else self.top_k_cut(i, k) for k, i in zip(ks, of)]

    def top_k_cut(self, i: int, k: int) -> TopKCut:
        flat = self.flat[i]
        return TopKCut.find(lambda part: magnitude_bits(flat[part]), self.n, k,
                            device=flat.device)


def compute(declared: dict[str, Any], view: Any) -> dict[str, Any]:
    """The values of per-tensor statistics `declared` ({name: statistic or None}) over `view`:
    a TopK as a `Selection` over the view's parts (part 0), a Gram as its matrix."""
    values: dict[str, Any] = {name: None for name in declared}
    wanted = [(name, s) for name, s in declared.items() if isinstance(s, TopK)]
    for name, s in wanted:
        if s.k <= 0:
            values[name] = Selection(None, everything=False)
        elif s.k >= view.n:
            values[name] = Selection(None, everything=True)
    cut = [(name, s) for name, s in wanted if 0 < s.k < view.n]
    if cut:  # every top-k of the tensor in one pass where the view can
        found = view.top_k_cuts([s.k for _, s in cut], of=[s.model for _, s in cut])
        for (name, _), c in zip(cut, found):
            values[name] = Selection(c)
    for name, s in declared.items():
        if isinstance(s, Gram):
            rows = 1 if s.row is None else view.n // s.row
            values[name] = gram(view.delta, view.n_models, view.parts, s.row, rows, run=view.map)
    return values


def for_tensor(spec: MergeMethod, hp: dict[str, Any], view: Any,
               model_values: dict[str, Any] | None) -> dict[str, Any] | None:
    """Everything `spec` declared for one tensor (per tensor, over `view`, and the model's
    `model_values`), or None where it declared nothing."""
    declared = spec.statistics(hp, view.shape) if spec.statistics else {}
    if not declared and not model_values:
        return None
    return {**(model_values or {}), **compute(declared, view)}


def bind(values: dict[str, Any] | None, part: int) -> dict[str, Any] | None:
    """`values` with every selection restricted to part `part` of the tensor."""
    if values is None:
        return None
    return {name: dataclasses.replace(v, part=part)
            if isinstance(v, Selection) and v.cut is not None else v
            for name, v in values.items()}


def for_model(spec: MergeMethod, kwargs: dict[str, Any],
              stream: ModelStream) -> dict[str, Any] | None:
    """The whole-model statistics `spec` declared, from one or two passes over `stream`."""
    from mergezoo.merge.accel.global_trim import magnitude_thresholds

    declared = spec.model_statistics(kwargs) if spec.model_statistics else {}
    if not declared:
        return None
    if not all(isinstance(s, ModelThreshold) for s in declared.values()):
        raise TypeError(f"{spec.name}: unknown whole-model statistics {declared}")
    by_model = sorted(declared.items(), key=lambda item: item[1].model)
    thresholds = magnitude_thresholds(stream, [s.density for _, s in by_model])
    return {name: t for (name, _), t in zip(by_model, thresholds)}
