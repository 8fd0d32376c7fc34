"""Spherical interpolation: SLERP between two models (Shoemake, 1985; as popularised by
mergekit) and its many-model form, the weighted spherical (Karcher) mean (Buss & Fillmore, 2001)."""

from __future__ import annotations

import torch

from mergezoo.merge.ops import slerp_pair
from mergezoo.merge.registry import Interval, MergeInputs, Needs, merge_method


def _pair(x: MergeInputs) -> tuple[torch.Tensor, torch.Tensor]:
    if x.base is not None and len(x.models) == 1:
        return x.base, x.models[0]
    if x.base is None and len(x.models) == 2:
        return x.models[0], x.models[1]
    raise ValueError("slerp merges exactly two models: a base and one model, or two models")


@merge_method("slerp", paper="https://dl.acm.org/doi/10.1145/325165.325242",
              needs=Needs(base="optional", min_models=1, max_models=2), returns="weights",
              ranges={"t": Interval(0, 1)}, grid={"t": [0.1, 0.3, 0.5, 0.7, 0.9]},
              helps={"t": "0 gives the first model (the base, if given), 1 the second"})
def slerp(x: MergeInputs, *, t: float = 0.5) -> torch.Tensor:
    """Interpolate along the great circle between the two flattened tensors:
    sin((1-t) theta) / sin(theta) * v0 + sin(t theta) / sin(theta) * v1, with theta their angle;
    linear interpolation when they are nearly colinear (|cos theta| > 0.9995), as mergekit."""
    v0, v1 = _pair(x)
    return slerp_pair(t, v0, v1)


def spherical_mean(vectors: torch.Tensor, weights: torch.Tensor, *, iterations: int = 20,
                   tol: float = 1e-6, eps: float = 1e-8) -> torch.Tensor:
    """Weighted Karcher mean of the rows of `vectors` seen as directions, times the weighted mean
    of their norms. For two rows with weights (1 - t, t) and equal norms it equals slerp(t)."""
    norms = vectors.norm(dim=1, keepdim=True)
    units = vectors / norms.clamp_min(eps)
    mean = (weights[:, None] * units).sum(0)
    if mean.norm() < eps:  # opposite directions: no unique spherical mean
        return (weights[:, None] * vectors).sum(0)
    mean = mean / mean.norm()
    previous = float("inf")
    for _ in range(iterations):
        cos = (units @ mean).clamp(-1.0, 1.0)
        theta = torch.arccos(cos)
        scale = torch.where(theta > eps, theta / torch.sin(theta).clamp_min(eps), torch.ones_like(theta))
        tangent = (weights * scale)[:, None] * (units - cos[:, None] * mean)
        step = tangent.sum(0)
        length = step.norm()
        # Stop when converged, or when float32 rounding stops the steps from shrinking.
        if length < tol or length > 0.9 * previous:
            break
        previous = float(length)
        mean = torch.cos(length) * mean + torch.sin(length) * step / length
        mean = mean / mean.norm()
    return mean * (weights * norms.squeeze(1)).sum()


def _check_weights(kwargs: dict) -> None:
    weights = kwargs["weight"]
    if all(isinstance(w, (int, float)) for w in weights) and sum(weights) <= 0:
        raise ValueError(f"the model weights {weights} must not all be zero")


@merge_method("multislerp", paper="https://doi.org/10.1145/502122.502124",
              needs=Needs(base="optional", min_models=2), returns="weights", per_model=("weight",),
              ranges={"weight": Interval(0, float("inf"))}, grid={},
              aliases=("multi_slerp",), check=_check_weights,
              helps={"weight": "relative weight of each model on the sphere"})
def multislerp(x: MergeInputs, *, weight: list[float] = 1.0) -> torch.Tensor:
    """Weighted spherical mean of N models (of their task vectors when a base is given): the
    Karcher mean of the directions, scaled by the weighted mean norm, plus the base."""
    total = sum(weight)
    if total <= 0:
        raise ValueError("multislerp weights must not all be zero")
    vectors = x.deltas if x.base is not None else x.models
    w = torch.tensor([v / total for v in weight], dtype=vectors[0].dtype, device=vectors[0].device)
    flat = torch.stack([v.reshape(-1) for v in vectors])
    merged = spherical_mean(flat, w).view_as(vectors[0])
    return merged + x.base if x.base is not None else merged
