"""Straightforward reference implementations of the merge methods, written independently of
mergezoo.merge.ops: plain Python loops over flattened tensors, in float64, following
mergekit's semantics for the methods mergekit has (generalized task arithmetic, linear,
slerp, model_stock, magnitude / magnitude_outliers sparsification)."""

from __future__ import annotations

import itertools
import math

import torch


def flat(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().double().reshape(-1)]


def unflat(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(like.shape)


def sign(v: float) -> int:
    return 1 if v > 0 else (-1 if v < 0 else 0)


# --- sparsification (returns the set of kept indices) -----------------------------------------

def keep_all(values: list[float]) -> set[int]:
    return set(range(len(values)))


def keep_magnitude(values: list[float], density: float) -> set[int]:
    """mergekit `magnitude`: keep the int(density * n) entries of largest |value|."""
    if density >= 1:
        return keep_all(values)
    k = int(density * len(values))
    order = sorted(range(len(values)), key=lambda i: -abs(values[i]))
    return set(order[:k])


def keep_outliers(values: list[float], density: float, gamma: float) -> set[int]:
    """mergekit `magnitude_outliers`: drop the int(gamma * n) largest, then the smallest so that
    int(density * n) remain (fewer outliers dropped when there are not enough entries)."""
    if density >= 1:
        return keep_all(values)
    n = len(values)
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = n - target - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    ascending = sorted(range(n), key=lambda i: abs(values[i]))
    return set(ascending[n_bot:n - n_top])


# --- combination -------------------------------------------------------------------------------

def gta_entry(wd: list[float], weights: list[float], *, sign_rule: str | None,
              normalize: bool, lambda_: float) -> float:
    """One entry of mergekit's generalized task arithmetic, given the weighted deltas."""
    if sign_rule is None:
        mixed = sum(wd)
        divisor = sum(weights)
        if abs(divisor) < 1e-8:
            divisor = 1.0
    else:
        if sign_rule == "sum":
            elected = 1 if sum(wd) >= 0 else -1
        else:
            elected = 1 if sum(sign(v) for v in wd) >= 0 else -1
        agree = [i for i, v in enumerate(wd) if sign(v) == elected]
        mixed = sum(wd[i] for i in agree)
        divisor = sum(weights[i] for i in agree)
        if divisor == 0:
            divisor = 1.0
    if normalize:
        mixed = mixed / divisor
    return mixed * lambda_


def ref_gta(base: torch.Tensor, models: list[torch.Tensor], weights: list[float], *,
            sign_rule: str | None, normalize: bool, lambda_: float = 1.0,
            kept: list[set[int]] | None = None, scale: list[float] | None = None) -> torch.Tensor:
    """base + lambda * combine(sparsified weighted task vectors).

    `kept[i]` is the set of indices expert i keeps (all when None); `scale[i]` multiplies the
    kept entries (DARE's 1/density rescale)."""
    b = flat(base)
    deltas = [[m - bv for m, bv in zip(flat(model), b)] for model in models]
    n = len(models)
    kept = kept or [set(range(len(b))) for _ in range(n)]
    scale = scale or [1.0] * n
    out = []
    for j, bv in enumerate(b):
        wd = [weights[i] * (deltas[i][j] * scale[i] if j in kept[i] else 0.0) for i in range(n)]
        out.append(bv + gta_entry(wd, weights, sign_rule=sign_rule, normalize=normalize,
                                  lambda_=lambda_))
    return unflat(out, base)


def ref_linear(models: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    vals = [flat(m) for m in models]
    total = sum(weights)
    out = []
    for j in range(len(vals[0])):
        s = sum(w * v[j] for w, v in zip(weights, vals))
        out.append(s / total if normalize else s)
    return unflat(out, models[0])


# --- spherical ---------------------------------------------------------------------------------

def ref_slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, threshold: float = 0.9995,
              eps: float = 1e-8) -> torch.Tensor:
    """mergekit's slerp: on the flattened tensors, lerp when |cos| > threshold."""
    a, b = flat(v0), flat(v1)
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    ua = [x / na for x in a] if na > eps else a
    ub = [x / nb for x in b] if nb > eps else b
    dot = sum(x * y for x, y in zip(ua, ub))
    if abs(dot) > threshold:
        return unflat([(1 - t) * x + t * y for x, y in zip(a, b)], v0)
    theta = math.acos(dot)
    s0 = math.sin((1 - t) * theta) / math.sin(theta)
    s1 = math.sin(t * theta) / math.sin(theta)
    return unflat([s0 * x + s1 * y for x, y in zip(a, b)], v0)


# --- model stock, consensus -------------------------------------------------------------------

def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def ref_model_stock(base: torch.Tensor, models: list[torch.Tensor]) -> torch.Tensor:
    b = flat(base)
    deltas = [[m - bv for m, bv in zip(flat(model), b)] for model in models]
    cosines = [cosine(x, y) for x, y in itertools.combinations(deltas, 2)]
    cos = sum(cosines) / len(cosines)
    n = len(models)
    t = n * cos / (1 + (n - 1) * cos)
    vals = [flat(m) for m in models]
    out = [t * sum(v[j] for v in vals) / n + (1 - t) * b[j] for j in range(len(b))]
    return unflat(out, base)


def ref_model_stock_rows(base: torch.Tensor, models: list[torch.Tensor]) -> torch.Tensor:
    """filter_wise: one ratio per output row of a 2-D tensor."""
    rows = [ref_model_stock(base[r], [m[r] for m in models]) for r in range(base.shape[0])]
    return torch.stack(rows)


def ref_consensus(base: torch.Tensor, models: list[torch.Tensor], weights: list[float], *,
                  k: int, mask_lambda: float, lambda_: float) -> torch.Tensor:
    """The TALL-masks code (generate_task_masks, construct_consensus_mask), entry by entry:
    mask_t = |theta_0 - theta_t| > |theta_MTL - theta_t| * lambda (strict), with theta_MTL =
    theta_0 + tau_MTL; kept where at least k masks are set."""
    b = flat(base)
    fts = [flat(model) for model in models]
    deltas = [[m - bv for m, bv in zip(ft, b)] for ft in fts]
    out = []
    for j, bv in enumerate(b):
        mtl = sum(w * d[j] for w, d in zip(weights, deltas))
        multi = bv + mtl
        votes = sum(1 for ft in fts if abs(bv - ft[j]) > abs(multi - ft[j]) * mask_lambda)
        out.append(bv + (lambda_ * mtl if votes >= k else 0.0))
    return unflat(out, base)


# --- per-layer settings and LiNeS --------------------------------------------------------------

def mergekit_t(key: str, n_layers: int) -> float:
    """Where mergekit (plan.py) evaluates a gradient for tensor `key` of a model with
    `n_layers` numbered layers (`model.layers.<i>.`): idx / (n_layers - 1) inside the layers
    (1 for a single layer, plan_slice), t = 0 for the weights before and after them
    (plan_module's pre_weights and post_weights: embeddings, final norm, head)."""
    parts = key.split(".")
    for a, b in zip(parts, parts[1:]):
        if a == "layers" and b.isdigit():
            return int(b) / (n_layers - 1) if n_layers > 1 else 1.0
    return 0.0


def mergekit_gradient(values: list[float], t: float) -> float:
    """mergekit's evaluate_setting for a list of numbers."""
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def lines_scalings(keys: list[str], alpha: float, beta: float, num_blocks: int) -> dict:
    """The LiNeS code's LiNeS_scaling: the first block i with ".i." in the key scales it by
    alpha + beta * i / (num_blocks - 1); a key in no block by alpha."""
    out = {}
    for k in keys:
        out[k] = alpha
        for i in range(num_blocks):
            if f".{i}." in k:
                out[k] = alpha + beta * (i / (num_blocks - 1))
                break
    return out


# --- multislerp, karcher (mergekit) ------------------------------------------------------------

def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def ref_multislerp(models: list[torch.Tensor], weights: list[float], base=None, *,
                   normalize_weights: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """mergekit's multislerp: unit vectors (of task vectors with a base) projected onto the
    tangent space at their normalised weighted mean, averaged, mapped back by exp, times the
    weighted mean norm."""
    vecs = [flat(m) for m in models]
    if base is not None:
        vecs = [[x - b for x, b in zip(v, flat(base))] for v in vecs]
    w = [x / sum(weights) for x in weights] if normalize_weights else list(weights)
    norms = [_norm(v) for v in vecs]
    units = [[x / (n + eps) for x in v] for v, n in zip(vecs, norms)]
    mean = [sum(wi * u[j] for wi, u in zip(w, units)) for j in range(len(vecs[0]))]
    mn = _norm(mean)
    mean = [x / mn for x in mean]
    tangent = [0.0] * len(mean)
    for wi, u in zip(w, units):
        dot = sum(a * b for a, b in zip(u, mean))
        tangent = [t + wi * (a - dot * m) for t, a, m in zip(tangent, u, mean)]
    tn = _norm(tangent) + eps
    res = [m * math.cos(tn) + t * math.sin(tn) / tn for m, t in zip(mean, tangent)]
    avg = sum(n * wi for n, wi in zip(norms, w))
    res = [r * avg for r in res]
    if base is not None:
        res = [r + b for r, b in zip(res, flat(base))]
    return unflat(res, models[0])


def ref_karcher(models: list[torch.Tensor], alphas: list[float], max_iter: int = 10,
                tol: float = 1e-5) -> torch.Tensor:
    """mergekit's karcher_merge_tensors, loop for loop."""
    vecs = [flat(m) for m in models]
    norms = [_norm(v) for v in vecs]
    units = [[x / n for x in v] if n > 0 else [0.0] * len(v) for v, n in zip(vecs, norms)]
    valid = [i for i, n in enumerate(norms) if n > tol]
    a_sum = sum(alphas[i] for i in valid)
    a = [alphas[i] / a_sum for i in valid]
    us = [units[i] for i in valid]
    u = [sum(ai * ui[j] for ai, ui in zip(a, us)) for j in range(len(vecs[0]))]
    nu = _norm(u)
    u = list(us[0]) if nu < tol else [x / nu for x in u]
    for _ in range(max_iter):
        T = [0.0] * len(u)
        for ai, ui in zip(a, us):
            dot = max(-1.0, min(1.0, sum(x * y for x, y in zip(u, ui))))
            theta = math.acos(dot)
            if theta < tol:
                continue
            f = ai * theta / math.sin(theta)
            T = [t + f * (x - dot * y) for t, x, y in zip(T, ui, u)]
        nt = _norm(T)
        if nt < tol:
            break
        u = [math.cos(nt) * x + math.sin(nt) * t / nt for x, t in zip(u, T)]
        nu = _norm(u)
        if nu > tol:
            u = [x / nu for x in u]
    s = sum(al * n for al, n in zip(alphas, norms))
    return unflat([s * x for x in u], models[0])
