"""Model soup: the weighted average of the models (Wortsman et al., 2022)."""

from __future__ import annotations

import torch

from mergezoo.merge.kernels import Combine
from mergezoo.merge.ops import combine
from mergezoo.merge.registry import Interval, MergeInputs, Needs, merge_method


def _fused(x: MergeInputs, *, weight: list[float], normalize: bool) -> Combine:
    _check_total(weight, normalize)
    return Combine.linear(weight, normalize=normalize, add_base=False)


def _check_total(weight: list[float], normalize: bool) -> None:
    if normalize and abs(sum(weight)) < 1e-8:
        raise ValueError("the model weights sum to zero; cannot normalize")


def _check(kwargs: dict) -> None:
    weights = kwargs["weight"]
    if kwargs["normalize"] and all(isinstance(w, (int, float)) for w in weights) \
            and abs(sum(weights)) < 1e-8:
        raise ValueError(f"the model weights {weights} sum to zero; cannot normalize "
                         "(set normalize: false for a plain weighted sum)")


@merge_method("average", paper="https://arxiv.org/abs/2203.05482",
              needs=Needs(base=False, min_models=1), returns="weights", per_model=("weight",),
              ranges={"weight": Interval()}, grid={}, aliases=("linear", "model_soup"),
              check=_check, elementwise=True, fused=_fused, fused_saves=0.5,
              helps={"weight": "relative weight of each model",
                     "normalize": "divide by the sum of the weights"})
def average(x: MergeInputs, *, weight: list[float] = 1.0, normalize: bool = True) -> torch.Tensor:
    """Weighted average of the models: sum_i w_i * theta_i / sum_i w_i (no base model needed).

    Same as mergekit's `linear`: with `normalize: false`, the plain weighted sum.
    """
    _check_total(weight, normalize)
    # The weighted sum of the models, as task arithmetic sums task vectors.
    return combine(x.models, weight, sign_rule=None, normalize=normalize, lambda_=1.0,
                   owned=x.owned)
