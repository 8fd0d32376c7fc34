"""Consensus merging with TALL masks (Wang et al., 2024): keep only the weights that at least
`k` tasks find important, then add the task-arithmetic sum."""

from __future__ import annotations

import torch

from mergezoo.merge.ops import chunks, stack_weights
from mergezoo.merge.registry import Interval, MergeInputs, Needs, merge_method


def tall_masks(deltas: torch.Tensor, multitask: torch.Tensor, mask_lambda: float) -> torch.Tensor:
    """TALL mask per task: the entries where |tau_t| > mask_lambda * |tau_MTL - tau_t|, strictly,
    as the official code (`generate_task_masks`); at mask_lambda 0 a task votes for exactly
    the entries its task vector changes."""
    return deltas.abs() > mask_lambda * (multitask.unsqueeze(0) - deltas).abs()


@merge_method("consensus", paper="https://arxiv.org/abs/2405.07813", needs=Needs(base=True, min_models=2),
              per_model=("weight",),
              ranges={"weight": Interval(), "k": Interval(0, float("inf")),
                      "mask_lambda": Interval(0, float("inf"))},
              grid={"mask_lambda": [0.2, 0.4, 0.6], "lambda": [0.3, 0.5, 0.7, 1.0]},
              aliases=("tall_masks", "consensus_ta"), elementwise=True, linear="lambda",
              helps={"k": "minimum number of tasks that must find a weight important",
                     "mask_lambda": "TALL mask threshold"})
def consensus(x: MergeInputs, *, weight: list[float] = 1.0, lambda_: float = 1.0, k: int = 2,
              mask_lambda: float = 0.4) -> torch.Tensor:
    """tau_MTL = sum_t w_t tau_t; m_t = |tau_t| > mask_lambda |tau_MTL - tau_t|;
    theta = theta_0 + lambda * [sum_t m_t >= k] * tau_MTL."""
    deltas = [d.reshape(-1) for d in x.deltas]
    merged = torch.empty(x.deltas[0].shape, dtype=deltas[0].dtype, device=deltas[0].device)
    out = merged.view(-1)
    for part in chunks(out.numel(), out.device):  # element-wise: slice by slice, in cache
        stacked = torch.stack([d[part] for d in deltas])
        multitask = (stacked * stack_weights(weight, stacked)).sum(dim=0)
        votes = tall_masks(stacked, multitask, mask_lambda).sum(dim=0)
        out[part] = lambda_ * multitask * (votes >= k)
    return merged
