"""Small pure tensor functions that merge methods compose.

They work on one tensor (or a stack of one tensor from every expert) and never look at file
names, devices or recipes, so they are easy to test against written-out references.

Example:
    >>> d = torch.tensor([0.1, -3.0, 0.5, 2.0])
    >>> trim_by_magnitude(d, 0.5)
    tensor([ 0., -3.,  0.,  2.])
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from mergezoo.merge.draws import LANES, drop_threshold
from mergezoo.merge.topk import Selection, TopKCut, magnitude_bits


def stack_weights(weights: list[float], like: torch.Tensor) -> torch.Tensor:
    """Weights as a [N, 1, 1, ...] tensor that broadcasts against a stack shaped like `like`."""
    w = torch.tensor(weights, dtype=like.dtype, device=like.device)
    return w.view(-1, *([1] * (like.dim() - 1)))


def kept_count(numel: int, density: float) -> int:
    """How many entries a trim to `density` keeps: int(density * n), as mergekit does, but >= 1."""
    return max(1, int(density * numel))


def trim_by_magnitude(delta: torch.Tensor, density: float, threshold: float | None = None,
                      *, selection: Selection | None = None, owned: bool = False) -> torch.Tensor:
    """Keep the top-`density` fraction of `delta` by magnitude (int(density n), at least 1,
    ties by position), zero the rest.

    With `threshold` (a whole-model statistic), keep every entry with |delta| >= threshold;
    with `selection` (the tensor's top-k, computed over the whole tensor), the entries it
    keeps. With `owned`, `delta` is trimmed in place.
    """
    if selection is not None:
        return selection.apply(delta if owned else delta.clone())
    if threshold is not None:
        keep = delta.abs() >= threshold
    elif density >= 1:
        return delta
    elif delta.is_contiguous():
        return keep_top_k_(delta if owned else delta.clone(), kept_count(delta.numel(), density))
    else:
        keep = top_k_mask(delta, kept_count(delta.numel(), density))
    return delta.mul_(keep) if owned else delta * keep


def _top_k_parts(values: torch.Tensor, k: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """(slice, keep mask of that slice) over the flattened `values`, for the `k` largest
    magnitudes, ties broken by position."""
    flat = values.reshape(-1)
    parts = chunks(flat.numel(), flat.device)
    cut = TopKCut.find(lambda part: magnitude_bits(flat[part]), flat.numel(), k, parts, flat.device)
    for j, part in enumerate(parts):
        yield part, cut.keep(flat[part], j)


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly the `k` largest magnitudes of `values` (ties broken by position)."""
    n = values.numel()
    if k >= n or k <= 0:
        return torch.full(values.shape, k >= n, dtype=torch.bool, device=values.device)
    mask = torch.empty(n, dtype=torch.bool, device=values.device)
    for part, keep in _top_k_parts(values, k):
        mask[part] = keep
    return mask.view(values.shape)


def keep_top_k_(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the `k` largest magnitudes of a contiguous `delta`, in place, exactly as
    `top_k_mask` would, slice by slice: no full-size temporary."""
    if k >= delta.numel():
        return delta
    flat = delta.view(-1)
    for part, keep in _top_k_parts(delta, k):
        flat[part].mul_(keep)
    return delta


GOLDEN = 0x9E3779B9  # the counter's stride: consecutive entries hash far apart
MASK32 = 0xFFFFFFFF


def keep_lanes(key: int, offset: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """DARE's random numbers: for entries offset .. offset+n-1 of a tensor, a uniform 16-bit
    lane each (int64 in [0, 65536)), a counter-based hash of (key, entry index).

    Each entry's draw depends only on the key (one per seed, tensor and model) and its index,
    so any slicing of the tensor, on any number of threads, draws the same; the fused kernels
    (`kernels._lane`) compute the very same hash. The mixer is Wellons' lowbias32.
    """
    x = torch.arange(offset, offset + n, dtype=torch.int64, device=device)
    # 64-bit products wrap, but their low 32 bits, all that is kept, are exact.
    x = x.mul_(GOLDEN).add_(key).bitwise_and_(MASK32)
    x = x.bitwise_xor_(x >> 16).mul_(0x7FEB352D).bitwise_and_(MASK32)
    x = x.bitwise_xor_(x >> 15).mul_(0x846CA68B).bitwise_and_(MASK32)
    return x.bitwise_xor_(x >> 16) >> 16




def random_drop(delta: torch.Tensor, density: float, key: int, rescale: bool = True, *,
                offset: int = 0, owned: bool = False) -> torch.Tensor:
    """DARE: keep each entry with probability p = `keep_probability(density)` (density
    rounded to a multiple of 1/65536), and divide survivors by p, the probability actually
    used, so that the expected task vector is unchanged. The draws come from
    `keep_lanes(key, offset + i)` for flat entry i of `delta` (`offset`: where `delta` starts
    in its whole tensor). With `owned`, `delta` is changed in place.
    """
    if density >= 1:
        return delta
    below = drop_threshold(density)
    p = below / LANES
    kept = delta if owned and delta.is_contiguous() else delta.contiguous().clone()
    flat = kept.view(-1)
    for part in chunks(flat.numel(), flat.device):
        piece = flat[part]
        lanes = keep_lanes(key, offset + part.start, piece.numel(), piece.device)
        # keep = (lane < below), as 1.0 / 0.0 by arithmetic: the lanes are integers, so
        # clamp(below - lane, 0, 1) is 1 exactly when lane < below (comparisons are slow on CPU).
        piece.mul_(lanes.neg_().add_(below).clamp_(0, 1).to(piece.dtype))
        if rescale and below < LANES:
            piece.div_(p)
    return kept


def rescale_l1(masked: torch.Tensor, before: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """mergekit's `rescaled_masked_tensor` with the L1 norm: multiply the sparsified tensor
    (in place) by before / |masked|_1, where `before` is the L1 norm of the tensor before it
    was sparsified; unchanged when either norm is below `eps`."""
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked.mul_(before / after)


def rank_drop(delta: torch.Tensor, density: float, epsilon: float, key: int,
              rescale: bool = True) -> torch.Tensor:
    """DELLA's MagPrune (Deep et al., 2024), as mergekit's `della_magprune` ranks: per row
    (a 1-D tensor is one row; others are rows of their first dimension), an entry of
    magnitude rank r (0 the smallest, ties by position) among c is kept with probability
    p = density - epsilon + 2 epsilon r / (c - 1), rounded to a multiple of 1/65536 and drawn
    as DARE draws (`keep_lanes`); with `rescale`, survivors are divided by their p."""
    if density >= 1:
        return delta
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    c = rows.shape[1]
    order = rows.abs().argsort(dim=1, stable=True)
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(c, device=rows.device).expand_as(order))
    rank_norm = ranks.to(torch.float64) / (c - 1) if c > 1 else torch.zeros_like(rows, dtype=torch.float64)
    below = ((density - epsilon) + rank_norm * (2 * epsilon)).mul_(LANES).round_()
    lanes = keep_lanes(key, 0, rows.numel(), rows.device).view(rows.shape)
    keep = lanes < below
    kept = rows * keep
    if rescale:
        kept = torch.where(keep, kept / (below / LANES).to(kept.dtype), kept)
    return kept.view(delta.shape)


def outlier_counts(n: int, density: float, gamma: float) -> tuple[int, int]:
    """Model Breadcrumbs' ranks (mergekit's `magnitude_outliers`): of `n` entries by magnitude,
    the `n_top` largest are outliers and the next `n_keep` are kept."""
    n_keep, n_top = int(density * n), int(gamma * n)
    if n - n_keep - n_top < 0:  # not enough entries: drop fewer outliers
        n_top = n - n_keep
    return n_keep, n_top


def drop_outliers_and_small(delta: torch.Tensor, density: float, gamma: float, *,
                            selections: tuple[Selection | None, Selection | None] | None = None
                            ) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest `gamma` fraction and the smallest entries by
    magnitude so that a `density` fraction is left (mergekit's `magnitude_outliers`): keep
    ranks n_top+1 .. n_top+n_keep (`outlier_counts`, ties by position). With `selections`
    (keep, outliers): the tensor's top n_top + n_keep and top n_top, computed over the whole
    tensor (None: no such cut), applied to this part of it."""
    if density >= 1:
        return delta
    if selections is not None:
        keep, outliers = selections
        mask = keep.keep(delta) if keep is not None else \
            torch.ones(delta.shape, dtype=torch.bool, device=delta.device)
        if outliers is not None:
            mask &= ~outliers.keep(delta)
        return delta * mask
    n_keep, n_top = outlier_counts(delta.numel(), density, gamma)
    mask = top_k_mask(delta, n_top + n_keep)
    if n_top:
        mask &= ~top_k_mask(delta, n_top)
    return delta * mask


def consensus(deltas: list[torch.Tensor], weights: list[float], *, k: int, mask_lambda: float,
              lambda_: float) -> torch.Tensor:
    """Consensus merging with TALL masks (Wang et al., 2024): tau_MTL = sum_t w_t tau_t,
    m_t = |tau_t| > mask_lambda |tau_MTL - tau_t| (strictly, as the official code's
    `generate_task_masks`), then lambda * [sum_t m_t >= k] * tau_MTL."""
    flat = [d.reshape(-1) for d in deltas]
    merged = torch.empty(deltas[0].shape, dtype=flat[0].dtype, device=flat[0].device)
    out = merged.view(-1)
    for part in chunks(out.numel(), out.device):  # element-wise: slice by slice, in cache
        stacked = torch.stack([d[part] for d in flat])
        multitask = (stacked * stack_weights(weights, stacked)).sum(dim=0)
        votes = tall_masks(stacked, multitask, mask_lambda).sum(dim=0)
        out[part] = lambda_ * multitask * (votes >= k)
    return merged


def tall_masks(deltas: torch.Tensor, multitask: torch.Tensor, mask_lambda: float) -> torch.Tensor:
    """TALL mask per task: the entries where |tau_t| > mask_lambda * |tau_MTL - tau_t|, strictly,
    as the official code (`generate_task_masks`); at mask_lambda 0 a task votes for exactly
    the entries its task vector changes."""
    return deltas.abs() > mask_lambda * (multitask.unsqueeze(0) - deltas).abs()


def gram(delta_of: Callable[[int, slice], torch.Tensor], n_models: int, parts: list[slice],
         row: int | None, rows: int, run: Callable = map) -> torch.Tensor:
    """float64 [rows, N, N] dot products of the task vectors (per row of `row` entries, or
    one for the whole tensor), summed part by part in order: `delta_of(i, part)` gives model
    i's task vector over a part, `run` maps over parts (a thread pool's map)."""
    def part_gram(part: slice) -> tuple[int, torch.Tensor]:
        ds = torch.stack([delta_of(i, part).reshape(-1) for i in range(n_models)])
        if row is None:
            return 0, torch.mm(ds, ds.T).double()[None]
        first, last = part.start // row, (part.stop - 1) // row
        ids = torch.arange(part.start, part.stop, device=ds.device) // row - first
        local = torch.zeros(last - first + 1, n_models, n_models, dtype=torch.float64,
                            device=ds.device)
        for i in range(n_models):
            for j in range(i, n_models):
                local[:, i, j].index_add_(0, ids, (ds[i] * ds[j]).double())
                local[:, j, i] = local[:, i, j]
        return first, local

    total = None
    for first, local in run(part_gram, parts):
        if total is None:
            total = torch.zeros(rows, n_models, n_models, dtype=torch.float64,
                                device=local.device)
        total[first:first + local.shape[0]] += local
    return total


def _signed(delta: torch.Tensor, weight: float) -> torch.Tensor:
    """sign(weight * delta), without materialising weight * delta."""
    sign = delta.sign()
    return sign.neg_() if weight < 0 else sign


CHUNK = 1 << 18  # elements per slice in element-wise loops on CPU: 1 MB of float32


def chunks(n: int, device: torch.device) -> list[slice]:
    """Slices of a flat tensor of `n` entries. On CPU, element-wise chains run much faster
    slice by slice: the temporaries stay in cache and are recycled by the allocator instead of
    being fresh page-faulted memory each time. On GPUs one launch per operation is best."""
    if device.type != "cpu" or n <= CHUNK:
        return [slice(0, n)]
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


SIGN_RULES = ("sum", "count")


def check_sign_rule(sign_rule: str | None, *, optional: bool = True) -> None:
    """ValueError unless `sign_rule` is one of SIGN_RULES (or None, when `optional`)."""
    if not (sign_rule is None and optional) and sign_rule not in SIGN_RULES:
        raise ValueError(f"unknown sign election rule {sign_rule!r}")


def linear_divisor(weights: list[float], normalize: bool) -> float:
    """What a weighted sum is divided by: the sum of the weights with `normalize` (unless it
    is about zero), else 1."""
    total = sum(weights)
    return total if normalize and abs(total) >= 1e-8 else 1.0


def divisor_floor(weights: list[float]) -> float:
    """The disjoint merge's divisor (the weights of the agreeing entries) is clamped to this
    when it is > 0, so that where no entry agrees (`mixed` is 0) it is not 0: with positive
    weights a divisor is 0 or at least the smallest weight. 0.0: other weights, where a zero
    divisor is replaced by 1 instead."""
    used = [w for w in weights if w != 0]
    return min(used) / 2 if used and min(used) > 0 else 0.0


def combine(deltas: list[torch.Tensor], weights: list[float], *, sign_rule: str | None,
            normalize: bool, lambda_: float, owned: bool = False) -> torch.Tensor:
    """Weighted sum of (already sparsified) task vectors, as mergekit's generalized task
    arithmetic: with `sign_rule`, only entries whose weighted value agrees with the elected
    sign count; with `normalize`, divide by the sum of the weights of the entries that count.

    Accumulates expert by expert, slice by slice, instead of stacking: the same result with a
    fraction of the memory traffic, which is what bounds a merge on CPU. With `owned`, `deltas`
    are overwritten.
    """
    check_sign_rule(sign_rule)
    flat = [d.reshape(-1) for d in deltas]
    parts = chunks(flat[0].numel(), flat[0].device)
    if len(parts) == 1:  # one slice (a GPU, or the engine's slice-by-slice merge): no copy
        mixed = _combine_flat(flat, weights, sign_rule, normalize, owned).view(deltas[0].shape)
    else:
        mixed = torch.empty(deltas[0].shape, dtype=deltas[0].dtype, device=deltas[0].device)
        flat_out = mixed.view(-1)
        for part in parts:
            flat_out[part] = _combine_flat([f[part] for f in flat], weights, sign_rule,
                                           normalize, owned)
    return mixed.mul_(lambda_) if lambda_ != 1 else mixed


def _combine_flat(deltas: list[torch.Tensor], weights: list[float], sign_rule: str | None,
                  normalize: bool, owned: bool) -> torch.Tensor:
    if sign_rule is None:
        first = deltas[0]
        mixed = (first.mul_(weights[0]) if owned else first * weights[0]) if weights[0] != 1 \
            else (first if owned else first.clone())
        for d, w in zip(deltas[1:], weights[1:]):
            mixed.add_(d, alpha=w)
        total = linear_divisor(weights, normalize)
        return mixed.div_(total) if total != 1.0 else mixed
    votes = torch.zeros_like(deltas[0])
    for d, w in zip(deltas, weights):
        votes.add_(d if sign_rule == "sum" else _signed(d, w), alpha=w if sign_rule == "sum" else 1)
    # +1 where the votes are >= 0 (a tie goes to +1), else -1. copysign is one fast operation
    # where comparisons are slow on CPU; the votes start from +0.0 and so are never -0.0.
    majority = torch.ones_like(votes).copysign_(votes)
    mixed = torch.zeros_like(votes)
    divisor = torch.zeros_like(mixed) if normalize else None
    for d, w in zip(deltas, weights):
        if w == 0:
            continue
        # With s = sign(w), an entry agrees when s * d * majority > 0, and then contributes
        # w * d = |w| * majority * (s * d * majority): accumulate |w| * relu(s*d*majority)
        # and multiply by the majority sign once at the end. All in place.
        agreeing = d.mul_(majority) if owned else d * majority
        if w < 0:
            agreeing.neg_()
        agreeing.clamp_(min=0)  # keeps NaN, which must reach the engine's finite check
        if divisor is not None:
            divisor.add_(agreeing.sign(), alpha=w)  # sign: 1 where it agrees, else 0
        mixed.add_(agreeing, alpha=abs(w))
    mixed.mul_(majority)
    if divisor is not None:
        floor = divisor_floor(weights)
        if floor > 0:
            divisor.clamp_(min=floor)
        else:
            divisor.masked_fill_(divisor == 0, 1)
        mixed.div_(divisor)
    return mixed


def slerp_pair(t: float, v0: torch.Tensor, v1: torch.Tensor, *, dot_threshold: float = 0.9995,
               eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation between two tensors seen as flat vectors (mergekit's slerp):
    falls back to linear interpolation when they are nearly colinear."""
    u0 = v0 / n0 if (n0 := v0.norm()) > eps else v0
    u1 = v1 / n1 if (n1 := v1.norm()) > eps else v1
    dot = float((u0 * u1).sum())
    if abs(dot) > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta = torch.arccos(torch.tensor(dot, dtype=torch.float64))
    s0 = float(torch.sin(theta * (1 - t)) / torch.sin(theta))
    s1 = float(torch.sin(theta * t) / torch.sin(theta))
    return s0 * v0 + s1 * v1
