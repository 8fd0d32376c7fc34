"""Spherical interpolation: SLERP between two models (Shoemake, 1985; as popularised by
mergekit), and two many-model forms as mergekit has them: `multislerp` (one tangent-space step)
and `karcher` (the iterated spherical mean, Buss & Fillmore, 2001)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergezoo.errors import HyperparameterError, IncompatibleModelsError
from mergezoo.merge.spec import Interval, MergeInputs, Needs, merge_method

if TYPE_CHECKING:  # imported where the maths runs: listing the methods needs no torch
    import torch


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
def slerp(x: MergeInputs, *, t: float = 0.5) -> "torch.Tensor":
    """Interpolate along the great circle between the two flattened tensors:
    sin((1-t) theta) / sin(theta) * v0 + sin(t theta) / sin(theta) * v1, with theta their angle;
    linear interpolation when they are nearly colinear (|cos theta| > 0.9995), as mergekit."""
    from mergezoo.merge.ops import slerp_pair

    v0, v1 = _pair(x)
    return slerp_pair(t, v0, v1)


def karcher_mean(vectors: torch.Tensor, alphas: list[float], *, max_iter: int = 10,
                 tol: float = 1e-5) -> "torch.Tensor":
    """mergekit's `karcher_merge_tensors` on the rows of `vectors`: the weighted Riemannian
    mean of their directions (rows of norm <= tol take no part), by at most `max_iter`
    exponential-map steps from the normalised weighted mean of the unit rows, times
    sum_i alpha_i |v_i| (over every row). `vectors` is consumed: its rows are normalised in
    place."""
    import torch

    norms = vectors.float().norm(dim=1)
    valid = [i for i in range(vectors.shape[0]) if float(norms[i]) > tol]
    if not valid:
        return torch.zeros_like(vectors[0])
    # In place: `vectors` is the caller's own stack, and one [N, n] copy less is N tensors less
    # of peak memory.
    units = vectors if len(valid) == vectors.shape[0] else vectors[valid]
    units.div_(norms[valid, None].to(vectors.dtype))
    total = sum(alphas[i] for i in valid)
    a = torch.tensor([alphas[i] / total for i in valid], dtype=vectors.dtype,
                     device=vectors.device)
    u = (a[:, None] * units).sum(0)
    length = float(u.float().norm())
    u = units[0].clone() if length < tol else u / length
    for _ in range(max_iter):
        dots = (units @ u).clamp(-1.0, 1.0)
        theta = torch.arccos(dots)
        moving = theta >= tol  # mergekit skips the points the mean already sits on
        factor = torch.where(moving, a * theta / torch.sin(theta), torch.zeros_like(theta))
        # sum_i f_i (unit_i - dot_i u), written as f @ units - (f . dots) u: two passes over
        # the units per step and no [N, n] temporaries (mergekit builds them).
        step = factor @ units - (factor @ dots) * u
        step_norm = step.float().norm()
        if float(step_norm) < tol:
            break
        u = torch.cos(step_norm) * u + torch.sin(step_norm) * (step / step_norm)
        u_norm = u.float().norm()
        if float(u_norm) > tol:
            u = u / u_norm
    scale = sum(alpha * float(n) for alpha, n in zip(alphas, norms))
    return scale * u


def _check_weights(kwargs: dict) -> None:
    weights = kwargs["weight"]
    if kwargs.get("normalize_weights", True) and \
            all(isinstance(w, (int, float)) for w in weights) and sum(weights) == 0:
        raise HyperparameterError(f"the model weights {weights} must not sum to zero")


@merge_method("multislerp", paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
              needs=Needs(base="optional", min_models=1), returns="weights",
              per_model=("weight",), ranges={"weight": Interval()}, grid={},
              aliases=("multi_slerp",), check=_check_weights,
              helps={"weight": "relative weight of each model on the sphere",
                     "normalize_weights": "divide the weights by their sum"})
def multislerp(x: MergeInputs, *, weight: list[float] = 1.0,
               normalize_weights: bool = True) -> "torch.Tensor":
    """mergekit's `multislerp`: barycentric interpolation on the hypersphere in one step.
    The unit vectors of the models (of their task vectors, when a base is given) are projected
    onto the tangent space at their normalised weighted mean, averaged there with the weights,
    mapped back by the exponential map, scaled by the weighted mean norm, plus the base."""
    import torch

    if len(x.models) == 1:  # nothing to interpolate (mergekit returns the model)
        return x.models[0]
    eps = 1e-8
    vectors = x.deltas if x.base is not None else x.models
    flat = torch.stack([v.reshape(-1) for v in vectors])
    w = torch.tensor(weight, dtype=flat.dtype, device=flat.device)
    if normalize_weights:
        w = w / w.sum()
    norms = flat.norm(dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = mean.norm()
    if mean_norm < eps:
        # mergekit mixes two models linearly here and refuses more; where every vector is
        # zero (a tensor no expert changed) there is nothing to interpolate: mix linearly too.
        if flat.shape[0] != 2 and bool((norms > eps).any()):
            raise IncompatibleModelsError(
                f"tensor '{x.key}': the weighted sum of the unit vectors is zero (antipodal "
                "models with balancing weights); use different weights")
        merged = flat[0] * w[0] + flat[1] * w[1]  # mergekit falls back to a linear mix
    else:
        mean = mean / mean_norm
        dots = (units * mean).sum(-1, keepdim=True)
        tangent = ((units - dots * mean) * w.view(-1, 1)).sum(0)
        tangent_norm = tangent.norm() + eps
        merged = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
        merged = merged * (norms.squeeze(-1) * w).sum()
    merged = merged.view_as(vectors[0])
    return merged + x.base if x.base is not None else merged


def _check_karcher(kwargs: dict) -> None:
    weights = kwargs["weight"]
    if all(isinstance(w, (int, float)) for w in weights) and sum(weights) <= 0:
        raise HyperparameterError(f"the model weights {weights} must sum to more than zero")


@merge_method("karcher", paper="https://en.wikipedia.org/wiki/Karcher_mean",
              needs=Needs(base="optional", min_models=1), returns="weights",
              per_model=("weight",), ranges={"weight": Interval(0, float("inf")),
                                             "max_iter": Interval(1, 10_000),
                                             "tol": Interval(0, 1)},
              grid={}, check=_check_karcher,
              helps={"weight": "relative weight of each model (the base, if given, has 1)",
                     "max_iter": "most exponential-map steps", "tol": "convergence tolerance"})
def karcher(x: MergeInputs, *, weight: list[float] = 1.0, max_iter: int = 10,
            tol: float = 1e-5) -> "torch.Tensor":
    """mergekit's `karcher`: the Riemannian (Karcher) mean of the models' directions on the
    sphere, scaled by their weighted mean norm. As in mergekit the base, when given, is one more
    model (of weight 1), and the weights default to equal."""
    import torch

    models = ([x.base] if x.base is not None else []) + list(x.models)
    if len(models) == 1:
        return models[0]
    weights = ([1.0] if x.base is not None else []) + list(weight)
    total = sum(weights)
    flat = torch.stack([m.reshape(-1) for m in models])
    return karcher_mean(flat, [w / total for w in weights], max_iter=max_iter,
                        tol=tol).view_as(models[0])
