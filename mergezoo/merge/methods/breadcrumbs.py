"""Model Breadcrumbs: drop the outliers and the smallest entries of each task vector
(Davari & Belilovsky, 2023), merged linearly or with TIES sign election."""

from __future__ import annotations

import torch

from mergezoo.merge.kernels import HARDSHRINK, KEEP_ALL, TOP_K_TIES, Combine
from mergezoo.merge.ops import TopKCut, combine, drop_outliers_and_small, float_of_bits
from mergezoo.merge.registry import Interval, MergeInputs, Needs, merge_method

_RANGES = {"weight": Interval(), "density": Interval(0, 1, low_open=True),
           "gamma": Interval(0, 1, high_open=True)}
_GRID = {"density": [0.8, 0.9], "gamma": [0.01, 0.02], "lambda": [0.5, 1.0, 1.5]}
_HELP = {"density": "fraction of each task vector kept",
         "gamma": "fraction of largest-magnitude entries dropped"}


def _per_tensor(view, hp: dict) -> list:
    """Per expert, over the whole tensor (when the engine merges slice by slice): None to keep
    the task vector whole (density 1), "none" to keep nothing, else (keep cut: its top
    n_top + n_keep, or None for all; outlier cut: its top n_top, or None), as
    `ops.drop_outliers_and_small` ranks them."""
    n, plans = view.n, []
    for rho, gamma in zip(hp["density"], hp["gamma"]):
        n_keep, n_top = int(rho * n), int(gamma * n)
        if n - n_keep - n_top < 0:
            n_top = n - n_keep
        plans.append(None if rho >= 1 else "none" if n_keep == 0 else
                     (None if n_top + n_keep >= n else n_top + n_keep, n_top or None))
    ks = [p if isinstance(p, tuple) else (None, None) for p in plans]
    m = len(ks)  # both cuts of every expert in one pass
    cuts = view.top_k_cuts([k for k, _ in ks] + [t for _, t in ks], of=[*range(m), *range(m)])
    return [p if not isinstance(p, tuple) else (keep, top)
            for p, keep, top in zip(plans, cuts[:m], cuts[m:])]


def _masked(x: MergeInputs, density, gamma) -> list[torch.Tensor]:
    if x.tensor_state is None:  # whole tensors
        return [drop_outliers_and_small(d, rho, g) for d, rho, g in zip(x.deltas, density, gamma)]
    out = []
    for d, cuts in zip(x.deltas, x.tensor_state):  # one slice, cut where the first pass found
        if cuts is None:
            out.append(d)
            continue
        if cuts == "none":
            keep = torch.zeros(d.shape, dtype=torch.bool, device=d.device)
        else:
            keep_cut, top_cut = cuts
            keep = keep_cut.keep(d, x.slice_index) if keep_cut else \
                torch.ones(d.shape, dtype=torch.bool, device=d.device)
            if top_cut:
                keep &= ~top_cut.keep(d, x.slice_index)
        out.append(d * keep)
    return out


def _fused(sign_rule: str | None):
    def fused(x: MergeInputs, *, weight: list[float], density: list[float], gamma: list[float],
              lambda_: float, normalize: bool) -> Combine | None:
        """Breadcrumbs as data for the fused kernels: each expert's two cuts."""
        if x.tensor_state is None:
            return None
        plan = Combine.linear(weight, normalize=normalize, lam=lambda_) if sign_rule is None \
            else Combine.disjoint(weight, sign_rule=sign_rule, normalize=normalize, lam=lambda_)
        keeps = [c[0] if isinstance(c, tuple) else None for c in x.tensor_state]
        tops = [c[1] if isinstance(c, tuple) else None for c in x.tensor_state]
        # "none" keeps nothing: a cut at NaN keeps no entry.
        plan = plan.trimmed(
            [TOP_K_TIES if k else HARDSHRINK if c == "none" else KEEP_ALL
             for k, c in zip(keeps, x.tensor_state)],
            [float_of_bits(k.threshold) if k else float("nan") for k in keeps],
            [k.ties if k else None for k in keeps], [k.equal if k else None for k in keeps])
        return plan.without_outliers(
            [TOP_K_TIES if t else KEEP_ALL for t in tops],
            [float_of_bits(t.threshold) if t else 0.0 for t in tops],
            [t.ties if t else None for t in tops], [t.equal if t else None for t in tops])
    return fused


_COMMON = dict(needs=Needs(base=True), per_model=("weight", "density", "gamma"),
               ranges=_RANGES, grid=_GRID, helps=_HELP, elementwise=True, per_tensor=_per_tensor,
               fused_saves=5.0, linear="lambda")


@merge_method("breadcrumbs", paper="https://arxiv.org/abs/2312.06795", fused=_fused(None),
              **_COMMON)
def breadcrumbs(x: MergeInputs, *, weight: list[float] = 1.0, density: list[float] = 1.0,
                gamma: list[float] = 0.01, lambda_: float = 1.0,
                normalize: bool = False) -> torch.Tensor:
    """Remove the top-`gamma` fraction of each task vector by magnitude and the smallest entries
    so that `density` remains, then add the weighted sum (mergekit's `breadcrumbs`)."""
    return combine(_masked(x, density, gamma), weight, sign_rule=None, normalize=normalize,
                   lambda_=lambda_, owned=True)


@merge_method("breadcrumbs_ties", paper="https://arxiv.org/abs/2312.06795",
              fused=_fused("sum"), **_COMMON)
def breadcrumbs_ties(x: MergeInputs, *, weight: list[float] = 1.0, density: list[float] = 1.0,
                     gamma: list[float] = 0.01, lambda_: float = 1.0,
                     normalize: bool = False) -> torch.Tensor:
    """Breadcrumbs masking, then TIES sign election and disjoint merge."""
    return combine(_masked(x, density, gamma), weight, sign_rule="sum", normalize=normalize,
                   lambda_=lambda_, owned=True)
