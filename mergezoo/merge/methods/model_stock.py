"""Model Stock: move from the base towards the average of the experts by a ratio set by the
angle between their task vectors (Jang et al., 2024; mergekit's `model_stock`).

Per tensor the method needs only the N(N-1)/2 dot products of the task vectors and their
norms (a Gram matrix, `spec.Gram`), then the mean task vector. It declares the Gram matrix as
a statistic: the engine computes it in a first pass over the tensor and merges it slice by
slice, so memory stays flat in N.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from mergezoo.merge.spec import Gram, MergeInputs, Needs, merge_method

if TYPE_CHECKING:
    import torch

NORM_FLOOR = 1e-6  # mergekit's clamp of |a| |b| in the cosine


def _row_length(shape: tuple[int, ...], filter_wise: bool) -> int | None:
    """Entries per row when each output row gets its own ratio, else None (one per tensor)."""
    if not filter_wise or len(shape) < 2:
        return None
    n = 1
    for d in shape[1:]:
        n *= d
    return n


def ratio(g: "torch.Tensor") -> "torch.Tensor":
    """t = N cos / (1 + (N - 1) cos) per row of Gram matrices [rows, N, N], with cos the mean
    pairwise cosine, each dot / max(|a| |b|, 1e-6) clamped to [-1, 1] (as mergekit)."""
    import torch

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


def _statistics(hp: dict, shape: tuple[int, ...]) -> dict[str, Gram]:
    return {"gram": Gram(_row_length(shape, hp["filter_wise"]))}


def _mean(deltas: Iterable["torch.Tensor"], n: int) -> "torch.Tensor":
    it = iter(deltas)
    mean = next(it)
    for d in it:
        mean.add_(d)
    return mean.div_(n)


@merge_method("model_stock", paper="https://arxiv.org/abs/2403.19522",
              needs=Needs(base=True, min_models=2), grid={}, elementwise=True,
              statistics=_statistics,
              helps={"filter_wise": "one ratio per output row instead of per tensor"})
def model_stock(x: MergeInputs, *, filter_wise: bool = False) -> "torch.Tensor":
    """With cos theta the mean pairwise cosine of the task vectors and N experts,
    t = N cos / (1 + (N - 1) cos), and theta = theta_0 + t * mean_i(theta_i - theta_0)
    (mergekit's t * mean(theta_i) + (1 - t) * theta_0, written with task vectors)."""
    import torch

    from mergezoo.merge.ops import chunks, gram

    deltas = x.deltas
    n = len(deltas)
    if x.stats is not None:  # the Gram matrix of the whole tensor, from the engine
        t = ratio(x.stats["gram"])
        row = _row_length(x.shape or tuple(deltas[0].shape), filter_wise)
        mean = _mean([d if x.owned else d.clone() for d in deltas], n)
        if row is None:
            return mean.mul_(t.to(mean.device))
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
