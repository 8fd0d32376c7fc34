"""Model soup: the weighted average of the models (Wortsman et al., 2022)."""

from __future__ import annotations

import torch

from mergezoo.merge.ops import stack_weights
from mergezoo.merge.registry import Interval, MergeInputs, Needs, merge_method


@merge_method("average", paper="https://arxiv.org/abs/2203.05482",
              needs=Needs(base=False, min_models=1), returns="weights", per_model=("weight",),
              ranges={"weight": Interval()}, grid={}, aliases=("linear", "model_soup"),
              helps={"weight": "relative weight of each model",
                     "normalize": "divide by the sum of the weights"})
def average(x: MergeInputs, *, weight: list[float] = 1.0, normalize: bool = True) -> torch.Tensor:
    """Weighted average of the models: sum_i w_i * theta_i / sum_i w_i (no base model needed).

    Same as mergekit's `linear`: with `normalize: false`, the plain weighted sum.
    """
    stacked = torch.stack(x.models)
    merged = (stacked * stack_weights(weight, stacked)).sum(dim=0)
    if normalize:
        total = sum(weight)
        if abs(total) < 1e-8:
            raise ValueError("the model weights sum to zero; cannot normalize")
        merged = merged / total
    return merged
