"""Model Stock: move from the base towards the average of the experts by a ratio set by the
angle between their task vectors (Jang et al., 2024)."""

from __future__ import annotations

import itertools

import torch

from mergezoo.merge.registry import MergeInputs, Needs, merge_method


@merge_method("model_stock", paper="https://arxiv.org/abs/2403.19522",
              needs=Needs(base=True, min_models=2), returns="weights", grid={},
              helps={"filter_wise": "one ratio per output row instead of per tensor"})
def model_stock(x: MergeInputs, *, filter_wise: bool = False) -> torch.Tensor:
    """With cos theta the mean pairwise cosine of the task vectors and N experts,
    t = N cos / (1 + (N - 1) cos), and theta = t * mean(theta_i) + (1 - t) * theta_0."""
    deltas = x.deltas
    n = len(deltas)
    if filter_wise and deltas[0].dim() > 1:
        rows = [d.reshape(d.shape[0], -1) for d in deltas]
    else:
        rows = [d.reshape(1, -1) for d in deltas]
    cosines = [torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-8)
               for a, b in itertools.combinations(rows, 2)]
    cos = torch.stack(cosines).mean(dim=0).clamp(-1.0, 1.0)
    t = (n * cos) / (1 + (n - 1) * cos)
    t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
    if filter_wise and deltas[0].dim() > 1:
        t = t.view(-1, *([1] * (deltas[0].dim() - 1)))
    else:
        t = t.reshape(())
    # t * mean(theta_i) + (1 - t) * theta_0, written with task vectors only.
    mean_delta = torch.stack(deltas).mean(dim=0)
    return x.base + t * mean_delta
