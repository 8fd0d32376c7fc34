"""DARE: drop and rescale task-vector entries at random (Yu et al., 2024), merged linearly or
with TIES sign election."""

from __future__ import annotations

import torch

from mergezoo.merge.kernels import Combine
from mergezoo.merge.layers import setting_leaves
from mergezoo.merge.ops import combine, drop_threshold, random_drop
from mergezoo.merge.registry import Interval, MergeInputs, Needs, merge_method

DENSITY = Interval(0, 1, low_open=True)


def _fused(sign_rule: str | None):
    def plan(x: MergeInputs, *, weight: list[float], density: list[float], lambda_: float,
             normalize: bool, rescale: bool) -> Combine:
        """DARE as data for the fused kernels: drop, rescale, then merge."""
        merge = Combine.linear(weight, normalize=normalize, lam=lambda_) if sign_rule is None \
            else Combine.disjoint(weight, sign_rule=sign_rule, normalize=normalize, lam=lambda_)
        return merge.dropped(density, x.seeds, rescale)
    return plan


def _check(kwargs: dict) -> None:
    """Refuse (ValueError, reported as a HyperparameterError) a density that the 16-bit draws
    cannot resolve; per-layer values are checked leaf by leaf (a gradient between two
    resolvable values is resolvable)."""
    for density in kwargs["density"]:
        for leaf in setting_leaves(density):
            if leaf < 1:
                drop_threshold(leaf)


# Both DARE variants share their registration: paper, needs, ranges, grid.
_DARE = dict(paper="https://arxiv.org/abs/2311.03099", needs=Needs(base=True),
             per_model=("weight", "density"), ranges={"weight": Interval(), "density": DENSITY},
             grid={"density": [0.1, 0.3, 0.5, 0.7], "lambda": [0.5, 1.0, 1.5]}, random=True, linear="lambda",
             elementwise=True, check=_check,
             helps={"density": "probability of keeping each entry (a multiple of 1/65536)",
                    "rescale": "divide kept entries by the keep probability (the paper's "
                               "1/p; mergekit 0.1.5 matches each tensor's L1 norm instead)"})


# The torch functions' draws are a hash computed in int64 tensor operations, which the fused
# kernels compute in registers: hence the large saving (measured: 2.9 s of 4.1 s, N=2, 202M).
@merge_method("dare_linear", fused=_fused(None), fused_saves=8.0, **_DARE)
def dare_linear(x: MergeInputs, *, weight: list[float] = 1.0, density: list[float] = 1.0,
                lambda_: float = 1.0, normalize: bool = False, rescale: bool = True) -> torch.Tensor:
    """Drop each task-vector entry with probability 1 - p (p: density rounded to a multiple of
    1/65536), rescale the survivors by 1 / p, then add the weighted sum (task arithmetic)."""
    dropped = [random_drop(d, rho, key, rescale, offset=x.offset, owned=x.owned)
               for d, rho, key in zip(x.deltas, density, x.seeds)]
    return combine(dropped, weight, sign_rule=None, normalize=normalize, lambda_=lambda_,
                   owned=x.owned)


@merge_method("dare_ties", fused=_fused("sum"), fused_saves=8.0, **_DARE)
def dare_ties(x: MergeInputs, *, weight: list[float] = 1.0, density: list[float] = 1.0,
              lambda_: float = 1.0, normalize: bool = False, rescale: bool = True) -> torch.Tensor:
    """DARE's random drop and rescale, then TIES sign election and disjoint merge."""
    dropped = [random_drop(d, rho, key, rescale, offset=x.offset, owned=x.owned)
               for d, rho, key in zip(x.deltas, density, x.seeds)]
    return combine(dropped, weight, sign_rule="sum", normalize=normalize, lambda_=lambda_,
                   owned=x.owned)
