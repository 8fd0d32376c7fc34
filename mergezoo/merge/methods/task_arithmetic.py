"""Task arithmetic: add the weighted sum of task vectors to the base (Ilharco et al., 2023)."""

from __future__ import annotations

import torch

from mergezoo.merge.kernels import Combine
from mergezoo.merge.ops import combine
from mergezoo.merge.registry import Interval, MergeInputs, Needs, merge_method


def _fused(x: MergeInputs, *, weight: list[float], lambda_: float, normalize: bool) -> Combine:
    return Combine.linear(weight, normalize=normalize, lam=lambda_)


@merge_method("task_arithmetic", paper="https://arxiv.org/abs/2212.04089", needs=Needs(base=True),
              per_model=("weight",), ranges={"weight": Interval()}, elementwise=True,
              fused=_fused, fused_saves=1.0, linear="lambda",
              grid={"lambda": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]},
              helps={"weight": "scale of each task vector", "lambda": "scale of the sum",
                     "normalize": "divide the sum by the sum of the weights"})
def task_arithmetic(x: MergeInputs, *, weight: list[float] = 1.0, lambda_: float = 1.0,
                    normalize: bool = False) -> torch.Tensor:
    """theta = theta_0 + lambda * sum_i w_i * (theta_i - theta_0); mergekit's task_arithmetic."""
    return combine(x.deltas, weight, sign_rule=None, normalize=normalize, lambda_=lambda_)
