"""Model Stock: move from the base towards the average of the experts by a ratio set by the
angle between their task vectors (Jang et al., 2024; mergekit's `model_stock`).

Per tensor the method needs only the N(N-1)/2 dot products of the task vectors and their
norms (a Gram matrix), then the mean task vector: the engine computes the Gram matrix in a
first pass over the tensor's slices (`per_tensor`) and merges slice by slice, so memory stays
flat in N.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from mergezoo.merge.ops import chunks
from mergezoo.merge.registry import MergeInputs, Needs, merge_method

NORM_FLOOR = 1e-6  # mergekit's clamp of |a| |b| in the cosine


def _row_length(shape: tuple[int, ...], filter_wise: bool) -> int | None:
    """Entries per row when each output row gets its own ratio, else None (one per tensor)."""
    if not filter_wise or len(shape) < 2:
        return None
    return int(torch.Size(shape[1:]).numel())


def gram(delta_of: Callable[[int, slice], torch.Tensor], n_models: int, parts: list[slice],
         row: int | None, rows: int, run: Callable = map) -> torch.Tensor:
    """float64 [rows, N, N] dot products of the task vectors (per row of `row` entries, or
    one for the whole tensor), summed part by part in order: `delta_of(i, part)` gives model
    i's task vector over a part, `run` maps over parts (a thread pool's map)."""
    def part_gram(part: slice) -> tuple[int, torch.Tensor]:
        ds = torch.stack([delta_of(i, part).reshape(-1) for i in range(n_models)])
        if row is None:
            return 0, torch.mm(ds, ds.T).double()[None]
        first, last = part.start // row, (part.stop - 1) // row
        ids = torch.arange(part.start, part.stop, device=ds.device) // row - first
        local = torch.zeros(last - first + 1, n_models, n_models, dtype=torch.float64,
                            device=ds.device)
        for i in range(n_models):
            for j in range(i, n_models):
                local[:, i, j].index_add_(0, ids, (ds[i] * ds[j]).double())
                local[:, j, i] = local[:, i, j]
        return first, local

    total = None
    for first, local in run(part_gram, parts):
        if total is None:
            total = torch.zeros(rows, n_models, n_models, dtype=torch.float64,
                                device=local.device)
        total[first:first + local.shape[0]] += local
    return total


def ratio(g: torch.Tensor) -> torch.Tensor:
    """t = N cos / (1 + (N - 1) cos) per row of Gram matrices [rows, N, N], with cos the mean
    pairwise cosine, each dot / max(|a| |b|, 1e-6) clamped to [-1, 1] (as mergekit)."""
    n = g.shape[-1]
    norms = g.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    cosines = []
    for i in range(n):
        for j in range(i + 1, n):
            cos = g[:, i, j] / (norms[:, i] * norms[:, j]).clamp_min(NORM_FLOOR)
            cosines.append(cos.clamp(-1.0, 1.0))
    cos = torch.stack(cosines).mean(dim=0)
    t = (n * cos) / (1 + (n - 1) * cos)
    return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0).to(torch.float32)


def _per_tensor(view, hp: dict) -> tuple[torch.Tensor, int | None] | None:
    """The ratio of each row (or of the tensor), from a first pass over the slices."""
    if not hasattr(view, "parts"):  # whole tensors: the method computes it itself
        return None
    row = _row_length(view.shape, hp["filter_wise"])
    rows = 1 if row is None else view.n // row
    return ratio(gram(view.delta, view.n_models, view.parts, row, rows, run=view.map)), row


def _mean(deltas: Iterable[torch.Tensor], n: int) -> torch.Tensor:
    it = iter(deltas)
    mean = next(it)
    for d in it:
        mean.add_(d)
    return mean.div_(n)


@merge_method("model_stock", paper="https://arxiv.org/abs/2403.19522",
              needs=Needs(base=True, min_models=2), grid={}, elementwise=True,
              per_tensor=_per_tensor,
              helps={"filter_wise": "one ratio per output row instead of per tensor"})
def model_stock(x: MergeInputs, *, filter_wise: bool = False) -> torch.Tensor:
    """With cos theta the mean pairwise cosine of the task vectors and N experts,
    t = N cos / (1 + (N - 1) cos), and theta = theta_0 + t * mean_i(theta_i - theta_0)
    (mergekit's t * mean(theta_i) + (1 - t) * theta_0, written with task vectors)."""
    deltas = x.deltas
    n = len(deltas)
    if x.tensor_state is not None:  # a slice: the ratios come from the first pass
        t, row = x.tensor_state
        mean = _mean([d if x.owned else d.clone() for d in deltas], n)
        if row is None:
            return mean.mul_(t)
        ids = torch.arange(x.offset, x.offset + mean.numel(), device=mean.device) // row
        return mean.mul_(t.to(mean.device)[ids].view(mean.shape))
    shape = tuple(deltas[0].shape)
    row = _row_length(shape, filter_wise)
    flat = [d.reshape(-1) for d in deltas]
    numel = flat[0].numel()
    rows = 1 if row is None else numel // row
    t = ratio(gram(lambda i, part: flat[i][part], n, chunks(numel, flat[0].device), row, rows))
    mean = _mean([d if x.owned else d.clone() for d in flat], n)
    if row is None:
        return mean.mul_(t.to(mean.device)).view(shape)
    return mean.view(rows, row).mul_(t.to(mean.device).view(rows, 1)).view(shape)
