"""DELLA: drop task-vector entries at random with a keep probability that grows with their
magnitude rank (MagPrune), rescale, then merge with TIES sign election or linearly
(Deep et al., 2024; mergekit's `della` and `della_linear`)."""

from __future__ import annotations

import torch

from mergezoo.merge.layers import setting_leaves
from mergezoo.merge.ops import combine, drop_threshold, rank_drop
from mergezoo.merge.registry import Interval, MergeInputs, Needs, merge_method


def _check(kwargs: dict) -> None:
    """As mergekit: density +/- epsilon must lie in (0, 1) where a task vector is dropped;
    and the smallest keep probability must be one the 16-bit draws resolve."""
    for density, epsilon in zip(kwargs["density"], kwargs["epsilon"]):
        if isinstance(density, list) or isinstance(epsilon, list):
            pairs = [(d, e) for d in setting_leaves(density) for e in setting_leaves(epsilon)]
        else:
            pairs = [(density, epsilon)]
        for d, e in pairs:
            if d >= 1:
                continue
            if d + e >= 1 or d - e <= 0:
                raise ValueError(f"epsilon {e} must keep density {d} +/- epsilon inside (0, 1)")
            drop_threshold(d - e)


_DELLA = dict(paper="https://arxiv.org/abs/2406.11617", needs=Needs(base=True),
              per_model=("weight", "density", "epsilon"),
              ranges={"weight": Interval(), "density": Interval(0, 1, low_open=True),
                      "epsilon": Interval(0, 0.5, high_open=True)},
              grid={"density": [0.3, 0.5, 0.7], "epsilon": [0.1], "lambda": [0.5, 1.0, 1.5]},
              random=True, linear="lambda", check=_check,
              helps={"density": "mean probability of keeping each entry",
                     "epsilon": "keep probabilities span density +/- epsilon by magnitude rank",
                     "rescale": "divide each kept entry by its keep probability (the paper's; "
                                "mergekit 0.1.5 matches each tensor's L1 norm instead)"})


def _dropped(x: MergeInputs, density, epsilon, rescale) -> list[torch.Tensor]:
    return [rank_drop(d, rho, eps, key, rescale)
            for d, rho, eps, key in zip(x.deltas, density, epsilon, x.seeds)]


@merge_method("della", **_DELLA)
def della(x: MergeInputs, *, weight: list[float] = 1.0, density: list[float] = 1.0,
          epsilon: list[float] = 0.15, lambda_: float = 1.0, normalize: bool = True,
          rescale: bool = True) -> torch.Tensor:
    """Keep each task-vector entry with probability density - epsilon + 2 epsilon r/(c-1)
    (r its magnitude rank in its row of c), rescale the survivors, then TIES sign election
    and disjoint merge."""
    return combine(_dropped(x, density, epsilon, rescale), weight, sign_rule="sum",
                   normalize=normalize, lambda_=lambda_)


@merge_method("della_linear", **_DELLA)
def della_linear(x: MergeInputs, *, weight: list[float] = 1.0, density: list[float] = 1.0,
                 epsilon: list[float] = 0.15, lambda_: float = 1.0, normalize: bool = False,
                 rescale: bool = True) -> torch.Tensor:
    """DELLA's rank-based random drop and rescale, then the weighted sum (task arithmetic)."""
    return combine(_dropped(x, density, epsilon, rescale), weight, sign_rule=None,
                   normalize=normalize, lambda_=lambda_)
