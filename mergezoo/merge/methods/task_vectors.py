"""The methods of the task-vector family (`family.Row`), with their papers, hyperparameters,
defaults, grids and checks: model soup, task arithmetic, TIES, DARE, Model Breadcrumbs,
DELLA and Consensus. Each function only declares its hyperparameters and states the maths in
its docstring; `family.apply` merges."""

from __future__ import annotations

from typing import Literal

from mergezoo.errors import HyperparameterError
from mergezoo.merge.draws import drop_threshold
from mergezoo.merge.layers import setting_leaves
from mergezoo.merge.methods.family import Row, family_method
from mergezoo.merge.spec import Interval, Needs

DENSITY = Interval(0, 1, low_open=True)


# ----------------------------------------------------------------------------- model soup

def _check_average(kwargs: dict) -> None:
    weights = kwargs["weight"]
    if kwargs["normalize"] and all(isinstance(w, (int, float)) for w in weights) \
            and abs(sum(weights)) < 1e-8:
        raise HyperparameterError(f"the model weights {weights} sum to zero; cannot normalize "
                         "(set normalize: false for a plain weighted sum)")


@family_method("average", Row(inputs="models"), paper="https://arxiv.org/abs/2203.05482",
               needs=Needs(base=False, min_models=1), returns="weights", per_model=("weight",),
               ranges={"weight": Interval()}, grid={}, aliases=("linear", "model_soup"),
               check=_check_average,
               helps={"weight": "relative weight of each model",
                      "normalize": "divide by the sum of the weights"})
def average(*, weight: list[float] = 1.0, normalize: bool = True):
    """Weighted average of the models: sum_i w_i * theta_i / sum_i w_i (no base model needed).

    Same as mergekit's `linear`: with `normalize: false`, the plain weighted sum.
    """


# ----------------------------------------------------------------------- task arithmetic

@family_method("task_arithmetic", Row(), paper="https://arxiv.org/abs/2212.04089",
               needs=Needs(base=True), per_model=("weight",), ranges={"weight": Interval()},
               linear="lambda", grid={"lambda": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]},
               helps={"weight": "scale of each task vector", "lambda": "scale of the sum",
                      "normalize": "divide the sum by the sum of the weights"})
def task_arithmetic(*, weight: list[float] = 1.0, lambda_: float = 1.0, normalize: bool = False):
    """theta = theta_0 + lambda * sum_i w_i * (theta_i - theta_0); mergekit's task_arithmetic."""


# ----------------------------------------------------------------------------------- TIES

def _check_ties(kwargs: dict) -> None:
    if kwargs["trim_scope"] == "model" and not all(isinstance(d, (int, float))
                                                   for d in kwargs["density"]):
        raise HyperparameterError("trim_scope: model takes one density per model, not per-layer values "
                         "(use trim_scope: tensor for per-layer densities)")


@family_method("ties", Row(sparsifier="magnitude", sign="sign_rule", combine="disjoint",
                           rescale="l1"),
               paper="https://arxiv.org/abs/2306.01708", needs=Needs(base=True),
               per_model=("weight", "density"), ranges={"weight": Interval(), "density": DENSITY},
               grid={"density": [0.1, 0.2, 0.3], "lambda": [0.8, 1.0, 1.2, 1.5, 2.0]},
               check=_check_ties, linear="lambda",
               helps={"density": "fraction of each task vector kept, by magnitude",
                      "trim_scope": "trim per tensor (mergekit) or over the whole model (the "
                                    "paper's code: int(density n) + 1 entries and ties)",
                      "sign_rule": "elect the sign by total mass (sum) or by count",
                      "rescale": "match each trimmed task vector's L1 norm to the untrimmed "
                                 "one's, per tensor (mergekit's rescale)"})
def ties(*, weight: list[float] = 1.0, density: list[float] = 1.0, lambda_: float = 1.0,
         normalize: bool = True, trim_scope: Literal["tensor", "model"] = "tensor",
         sign_rule: Literal["sum", "count"] = "sum", rescale: bool = False):
    """Keep each task vector's top-`density` entries by magnitude, elect a sign per entry by the
    weighted total mass, and average only the entries that agree with it, scaled by lambda.

    Same tensors as mergekit's `ties` for `trim_scope: tensor` (its only scope).
    """


# ----------------------------------------------------------------------------------- DARE

def _check_dare(kwargs: dict) -> None:
    """Refuse (HyperparameterError) a density that the 16-bit draws cannot resolve; per-layer
    values are checked leaf by leaf (a gradient between two resolvable values is resolvable)."""
    for density in kwargs["density"]:
        for leaf in setting_leaves(density):
            if leaf < 1:
                drop_threshold(leaf)


_DARE = dict(paper="https://arxiv.org/abs/2311.03099", needs=Needs(base=True),
             per_model=("weight", "density"), ranges={"weight": Interval(), "density": DENSITY},
             grid={"density": [0.1, 0.3, 0.5, 0.7], "lambda": [0.5, 1.0, 1.5]}, linear="lambda",
             check=_check_dare,
             helps={"density": "probability of keeping each entry (a multiple of 1/65536)",
                    "rescale": "divide kept entries by the keep probability (the paper's "
                               "1/p; mergekit 0.1.5 matches each tensor's L1 norm instead)"})


@family_method("dare_linear", Row(sparsifier="random", rescale="keep_probability"), **_DARE)
def dare_linear(*, weight: list[float] = 1.0, density: list[float] = 1.0, lambda_: float = 1.0,
                normalize: bool = False, rescale: bool = True):
    """Drop each task-vector entry with probability 1 - p (p: density rounded to a multiple of
    1/65536), rescale the survivors by 1 / p, then add the weighted sum (task arithmetic)."""


@family_method("dare_ties", Row(sparsifier="random", sign="sum", combine="disjoint",
                                rescale="keep_probability"), **_DARE)
def dare_ties(*, weight: list[float] = 1.0, density: list[float] = 1.0, lambda_: float = 1.0,
              normalize: bool = False, rescale: bool = True):
    """DARE's random drop and rescale, then TIES sign election and disjoint merge."""


# ---------------------------------------------------------------------- Model Breadcrumbs

_BREADCRUMBS = dict(
    paper="https://arxiv.org/abs/2312.06795", needs=Needs(base=True),
    per_model=("weight", "density", "gamma"),
    ranges={"weight": Interval(), "density": Interval(0, 1, low_open=True),
            "gamma": Interval(0, 1, high_open=True)},
    grid={"density": [0.8, 0.9], "gamma": [0.01, 0.02], "lambda": [0.5, 1.0, 1.5]},
    helps={"density": "fraction of each task vector kept",
           "gamma": "fraction of largest-magnitude entries dropped"},
    linear="lambda")


@family_method("breadcrumbs", Row(sparsifier="outliers"), **_BREADCRUMBS)
def breadcrumbs(*, weight: list[float] = 1.0, density: list[float] = 1.0,
                gamma: list[float] = 0.01, lambda_: float = 1.0, normalize: bool = False):
    """Remove the top-`gamma` fraction of each task vector by magnitude and the smallest entries
    so that `density` remains, then add the weighted sum (mergekit's `breadcrumbs`)."""


@family_method("breadcrumbs_ties", Row(sparsifier="outliers", sign="sum", combine="disjoint"),
               **_BREADCRUMBS)
def breadcrumbs_ties(*, weight: list[float] = 1.0, density: list[float] = 1.0,
                     gamma: list[float] = 0.01, lambda_: float = 1.0, normalize: bool = False):
    """Breadcrumbs masking, then TIES sign election and disjoint merge."""


# ---------------------------------------------------------------------------------- DELLA

def _check_della(kwargs: dict) -> None:
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
                raise HyperparameterError(f"epsilon {e} must keep density {d} +/- epsilon inside (0, 1)")
            drop_threshold(d - e)


_DELLA = dict(paper="https://arxiv.org/abs/2406.11617", needs=Needs(base=True),
              per_model=("weight", "density", "epsilon"),
              ranges={"weight": Interval(), "density": Interval(0, 1, low_open=True),
                      "epsilon": Interval(0, 0.5, high_open=True)},
              grid={"density": [0.3, 0.5, 0.7], "epsilon": [0.1], "lambda": [0.5, 1.0, 1.5]},
              linear="lambda", check=_check_della,
              helps={"density": "mean probability of keeping each entry",
                     "epsilon": "keep probabilities span density +/- epsilon by magnitude rank",
                     "rescale": "divide each kept entry by its keep probability (the paper's; "
                                "mergekit 0.1.5 matches each tensor's L1 norm instead)"})


@family_method("della", Row(sparsifier="rank", sign="sum", combine="disjoint",
                            rescale="keep_probability"), **_DELLA)
def della(*, weight: list[float] = 1.0, density: list[float] = 1.0,
          epsilon: list[float] = 0.15, lambda_: float = 1.0, normalize: bool = True,
          rescale: bool = True):
    """Keep each task-vector entry with probability density - epsilon + 2 epsilon r/(c-1)
    (r its magnitude rank in its row of c), rescale the survivors, then TIES sign election
    and disjoint merge."""


@family_method("della_linear", Row(sparsifier="rank", rescale="keep_probability"), **_DELLA)
def della_linear(*, weight: list[float] = 1.0, density: list[float] = 1.0,
                 epsilon: list[float] = 0.15, lambda_: float = 1.0, normalize: bool = False,
                 rescale: bool = True):
    """DELLA's rank-based random drop and rescale, then the weighted sum (task arithmetic)."""


# ------------------------------------------------------------------------------ Consensus

@family_method("consensus", Row(combine="consensus"), paper="https://arxiv.org/abs/2405.07813",
               needs=Needs(base=True, min_models=2), per_model=("weight",),
               ranges={"weight": Interval(), "k": Interval(0, float("inf")),
                       "mask_lambda": Interval(0, float("inf"))},
               grid={"mask_lambda": [0.2, 0.4, 0.6], "lambda": [0.3, 0.5, 0.7, 1.0]},
               aliases=("tall_masks", "consensus_ta"), linear="lambda",
               helps={"k": "minimum number of tasks that must find a weight important",
                      "mask_lambda": "TALL mask threshold"})
def consensus(*, weight: list[float] = 1.0, lambda_: float = 1.0, k: int = 2,
              mask_lambda: float = 0.4):
    """tau_MTL = sum_t w_t tau_t; m_t = |tau_t| > mask_lambda |tau_MTL - tau_t|;
    theta = theta_0 + lambda * [sum_t m_t >= k] * tau_MTL."""
