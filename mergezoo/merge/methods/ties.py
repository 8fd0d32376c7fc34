"""TIES-Merging: trim, elect sign, disjoint merge (Yadav et al., 2023)."""

from __future__ import annotations

from typing import Literal

import torch

from mergezoo.merge.global_trim import magnitude_thresholds
from mergezoo.merge.kernels import AT_LEAST, KEEP_ALL, TOP_K_TIES, Combine
from mergezoo.merge.ops import (TopKCut, combine, float_of_bits, kept_count, rescale_l1,
                                trim_by_magnitude)
from mergezoo.merge.registry import Interval, MergeInputs, Needs, merge_method

DENSITY = Interval(0, 1, low_open=True)


def _prepare(stream, kwargs):
    """Whole-model trimming (the paper's code): one magnitude threshold per expert."""
    if kwargs.get("trim_scope") != "model":
        return None
    return magnitude_thresholds(stream, kwargs["density"])


def _per_tensor(view, hp: dict) -> list[TopKCut | None] | None:
    """Per-tensor trimming, when the engine merges slice by slice: each task vector's exact
    top-k cut, found in a first pass over its slices (computed on the fly, never whole)."""
    if hp["trim_scope"] == "model":
        return None
    return view.top_k_cuts([None if rho >= 1 else kept_count(view.n, rho)
                            for rho in hp["density"]])


def _fused(x: MergeInputs, *, weight: list[float], density: list[float], lambda_: float,
           normalize: bool, trim_scope: str, sign_rule: str, rescale: bool) -> Combine | None:
    """TIES as data for the fused kernels: each expert's cut, then elect and merge."""
    plan = Combine.disjoint(weight, sign_rule=sign_rule, normalize=normalize, lam=lambda_)
    if x.tensor_state is not None:  # per-tensor top-k cuts
        cuts = x.tensor_state
        return plan.trimmed([KEEP_ALL if c is None else TOP_K_TIES for c in cuts],
                            [0.0 if c is None else float_of_bits(c.threshold) for c in cuts],
                            [None if c is None else c.ties for c in cuts],
                            [None if c is None else c.equal for c in cuts])
    if x.state is not None:  # whole-model thresholds: keep |x| >= threshold
        return plan.trimmed([AT_LEAST] * len(x.state), list(x.state))
    return None


def _check(kwargs: dict) -> None:
    if kwargs["trim_scope"] == "model" and not all(isinstance(d, (int, float))
                                                   for d in kwargs["density"]):
        raise ValueError("trim_scope: model takes one density per model, not per-layer values "
                         "(use trim_scope: tensor for per-layer densities)")


@merge_method("ties", paper="https://arxiv.org/abs/2306.01708", needs=Needs(base=True),
              per_model=("weight", "density"), ranges={"weight": Interval(), "density": DENSITY},
              grid={"density": [0.1, 0.2, 0.3], "lambda": [0.8, 1.0, 1.2, 1.5, 2.0]},
              prepare=_prepare, check=_check, elementwise=True, per_tensor=_per_tensor,
              whole_if=lambda kwargs: kwargs["rescale"],
              fused=_fused, fused_saves=5.0, linear="lambda",
              helps={"density": "fraction of each task vector kept, by magnitude",
                     "trim_scope": "trim per tensor (mergekit) or over the whole model (the "
                                   "paper's code: int(density n) + 1 entries and ties)",
                     "sign_rule": "elect the sign by total mass (sum) or by count",
                     "rescale": "match each trimmed task vector's L1 norm to the untrimmed "
                                "one's, per tensor (mergekit's rescale)"})
def ties(x: MergeInputs, *, weight: list[float] = 1.0, density: list[float] = 1.0,
         lambda_: float = 1.0, normalize: bool = True,
         trim_scope: Literal["tensor", "model"] = "tensor",
         sign_rule: Literal["sum", "count"] = "sum", rescale: bool = False) -> torch.Tensor:
    """Keep each task vector's top-`density` entries by magnitude, elect a sign per entry by the
    weighted total mass, and average only the entries that agree with it, scaled by lambda.

    Same tensors as mergekit's `ties` for `trim_scope: tensor` (its only scope).
    """
    # With rescale (whole tensors only, see `whole_if`): each task vector's L1 norm first.
    before = [d.abs().sum() for d in x.deltas] if rescale else None
    if x.tensor_state is not None:  # a slice of the tensor: cut where the first pass found
        trimmed = [d if cut is None else cut.apply(d, x.slice_index)
                   for d, cut in zip(x.deltas, x.tensor_state)]
    else:
        thresholds = x.state or [None] * len(x.deltas)
        trimmed = [trim_by_magnitude(d, rho, thr, owned=x.owned)
                   for d, rho, thr in zip(x.deltas, density, thresholds)]
    if before is not None:
        trimmed = [rescale_l1(t if x.owned else t.clone(), b) for t, b in zip(trimmed, before)]
    return combine(trimmed, weight, sign_rule=sign_rule, normalize=normalize, lambda_=lambda_,
                   owned=x.owned)
