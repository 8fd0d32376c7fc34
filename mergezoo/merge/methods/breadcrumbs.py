"""Model Breadcrumbs: drop the outliers and the smallest entries of each task vector
(Davari & Belilovsky, 2023), merged linearly or with TIES sign election."""

from __future__ import annotations

import torch

from mergezoo.merge.ops import combine, drop_outliers_and_small
from mergezoo.merge.registry import Interval, MergeInputs, Needs, merge_method

_RANGES = {"weight": Interval(), "density": Interval(0, 1, low_open=True),
           "gamma": Interval(0, 1, high_open=True)}
_GRID = {"density": [0.8, 0.9], "gamma": [0.01, 0.02], "lambda": [0.5, 1.0, 1.5]}
_HELP = {"density": "fraction of each task vector kept",
         "gamma": "fraction of largest-magnitude entries dropped"}


@merge_method("breadcrumbs", paper="https://arxiv.org/abs/2312.06795", needs=Needs(base=True),
              per_model=("weight", "density", "gamma"), ranges=_RANGES, grid=_GRID, helps=_HELP)
def breadcrumbs(x: MergeInputs, *, weight: list[float] = 1.0, density: list[float] = 0.9,
                gamma: list[float] = 0.01, lambda_: float = 1.0,
                normalize: bool = False) -> torch.Tensor:
    """Remove the top-`gamma` fraction of each task vector by magnitude and the smallest entries
    so that `density` remains, then add the weighted sum (mergekit's `breadcrumbs`)."""
    masked = [drop_outliers_and_small(d, rho, g) for d, rho, g in zip(x.deltas, density, gamma)]
    return combine(masked, weight, sign_rule=None, normalize=normalize, lambda_=lambda_, owned=True)


@merge_method("breadcrumbs_ties", paper="https://arxiv.org/abs/2312.06795", needs=Needs(base=True),
              per_model=("weight", "density", "gamma"), ranges=_RANGES, grid=_GRID, helps=_HELP)
def breadcrumbs_ties(x: MergeInputs, *, weight: list[float] = 1.0, density: list[float] = 0.9,
                     gamma: list[float] = 0.01, lambda_: float = 1.0,
                     normalize: bool = False) -> torch.Tensor:
    """Breadcrumbs masking, then TIES sign election and disjoint merge."""
    masked = [drop_outliers_and_small(d, rho, g) for d, rho, g in zip(x.deltas, density, gamma)]
    return combine(masked, weight, sign_rule="sum", normalize=normalize, lambda_=lambda_, owned=True)
