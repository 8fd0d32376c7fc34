"""The task-vector family: one configurable method, of which task arithmetic, TIES, DARE,
Model Breadcrumbs, DELLA, Consensus (and the plain weighted average) are rows.

As in mergekit's generalized task arithmetic, a method of the family is a `Row`: which
sparsifier each task vector goes through, which sign rule elects a sign per entry, which
combine merges them, and which rescale follows the sparsifier. `configure(row, hp)` binds a
row to one tensor's hyperparameters (a `FamilyConfig`); `apply(config, x)` composes the torch
functions of `mergezoo.merge.ops` (THE definitions) from it. The accelerator compiles a
`FamilyConfig` into its fused plan (`accel.plans`), never a method by name.

A statistic a configuration needs over the whole tensor (each task vector's top-k, for the
magnitude and outlier sparsifiers) or the whole model (TIES's `trim_scope: model` threshold)
is declared by `FamilyConfig.statistics` / `model_statistics` and computed by the engine;
`apply` finds it in `x.stats` (or, given whole tensors without statistics, computes it).

Example:
    >>> row = Row(sparsifier="magnitude", sign="sign_rule", combine="disjoint", rescale="l1")
    >>> c = configure(row, {"weight": [1.0, 1.0], "density": [0.5, 0.5], "lambda_": 1.0,
    ...                     "normalize": True, "trim_scope": "tensor", "sign_rule": "sum",
    ...                     "rescale": False})
    >>> c.sign, c.statistics(10)["keep0"]
    ('sum', TopK(model=0, k=5))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from mergezoo.merge.spec import MergeInputs, ModelThreshold, TopK, merge_method

if TYPE_CHECKING:
    import torch

Sparsifier = Literal["none", "magnitude", "random", "outliers", "rank"]
SPARSIFIERS = ("none", "magnitude", "random", "outliers", "rank")
COMBINES = ("sum", "disjoint", "consensus")


@dataclass(frozen=True)
class Row:
    """A method of the family, as configuration.

    - `sparsifier`: none; magnitude (keep the top `density` by magnitude, per tensor or over
      the whole model by `trim_scope`); random (DARE: keep each entry with probability
      `density`); outliers (Breadcrumbs: drop the top `gamma` and keep the next `density`);
      rank (DELLA: keep probability growing with magnitude rank, `density` +/- `epsilon`).
    - `sign`: None, "sum", "count", or "sign_rule": the hyperparameter of that name decides.
    - `combine`: sum (weighted sum, divided by the total weight with `normalize`); disjoint
      (only entries agreeing with the elected sign, divided by their weights with
      `normalize`); consensus (TALL masks: the weighted sum where at least `k` tasks agree).
    - `rescale`: None; "keep_probability" (divide survivors by the probability used: DARE,
      DELLA) or "l1" (match each task vector's L1 norm: mergekit's TIES rescale), both when
      the `rescale` hyperparameter is true.
    - `inputs`: "deltas" (task vectors) or "models" (the weights themselves, no base: the
      weighted average, whose weights must not sum to zero when normalized).
    """

    sparsifier: Sparsifier = "none"
    sign: str | None = None
    combine: Literal["sum", "disjoint", "consensus"] = "sum"
    rescale: Literal[None, "keep_probability", "l1"] = None
    inputs: Literal["deltas", "models"] = "deltas"

    def __post_init__(self) -> None:
        if self.sparsifier not in SPARSIFIERS or self.combine not in COMBINES or \
                self.sign not in (None, "sum", "count", "sign_rule"):
            raise ValueError(f"not a row of the task-vector family: {self}")

    @property
    def random(self) -> bool:
        return self.sparsifier in ("random", "rank")

    @property
    def elementwise(self) -> bool:
        """Whether every configuration of the row merges position by position (given its
        statistics); DELLA's ranks are per row of a tensor."""
        return self.sparsifier != "rank"

    def whole_if(self, kwargs: dict[str, Any]) -> bool:
        """An L1 rescale needs each task vector's whole norm."""
        return self.rescale == "l1" and bool(kwargs.get("rescale"))


@dataclass(frozen=True)
class FamilyConfig:
    """A row bound to the hyperparameters of one tensor (per-model values as tuples)."""

    sparsifier: Sparsifier
    sign: str | None  # None, "sum" or "count"
    combine: str
    weight: tuple[float, ...]
    normalize: bool = False
    lambda_: float = 1.0
    density: tuple[float, ...] = ()
    gamma: tuple[float, ...] = ()
    epsilon: tuple[float, ...] = ()
    rescale: str | None = None  # the row's rescale when the hyperparameter turns it on
    trim_scope: str = "tensor"
    k: int = 0
    mask_lambda: float = 0.0
    inputs: str = "deltas"

    def statistics(self, n: int) -> dict[str, TopK | None]:
        """What each tensor of `n` entries needs over the whole of it: per model i,
        "keep{i}" (the top-k that the magnitude or outlier sparsifier keeps; None: all) and,
        for outliers, "outliers{i}" (the top n_top dropped; None: none)."""
        from mergezoo.merge.ops import kept_count, outlier_counts

        out: dict[str, TopK | None] = {}
        if self.sparsifier == "magnitude" and self.trim_scope == "tensor":
            for i, rho in enumerate(self.density):
                out[f"keep{i}"] = None if rho >= 1 else TopK(i, kept_count(n, rho))
        elif self.sparsifier == "outliers":
            for i, (rho, gamma) in enumerate(zip(self.density, self.gamma)):
                n_keep, n_top = outlier_counts(n, rho, gamma)
                whole = rho >= 1 or n_top + n_keep >= n
                out[f"keep{i}"] = None if whole else TopK(i, 0 if n_keep == 0 else n_top + n_keep)
                out[f"outliers{i}"] = TopK(i, n_top) if rho < 1 and n_keep and n_top else None
        return out

    def model_statistics(self) -> dict[str, ModelThreshold]:
        """What the whole model must give first: per model i, "threshold{i}" for TIES's
        whole-model trim (the paper's code)."""
        if self.sparsifier != "magnitude" or self.trim_scope != "model":
            return {}
        return {f"threshold{i}": ModelThreshold(i, rho) for i, rho in enumerate(self.density)}


def configure(row: Row, hp: dict[str, Any]) -> FamilyConfig:
    """The row with the hyperparameters `hp` (function argument names, as `resolve` returns
    them and per-layer values evaluated for one tensor, or not yet for model statistics)."""
    sign = hp["sign_rule"] if row.sign == "sign_rule" else row.sign
    return FamilyConfig(
        sparsifier=row.sparsifier, sign=sign, combine=row.combine,
        weight=tuple(hp["weight"]), normalize=bool(hp.get("normalize", False)),
        lambda_=hp.get("lambda_", 1.0), density=tuple(hp.get("density", ())),
        gamma=tuple(hp.get("gamma", ())), epsilon=tuple(hp.get("epsilon", ())),
        rescale=row.rescale if hp.get("rescale") else None,
        trim_scope=hp.get("trim_scope", "tensor"), k=hp.get("k", 0),
        mask_lambda=hp.get("mask_lambda", 0.0), inputs=row.inputs)


def check_total(config: FamilyConfig) -> None:
    """A weighted average of the models cannot be normalized by weights that sum to zero."""
    if config.inputs == "models" and config.normalize and abs(sum(config.weight)) < 1e-8:
        raise ValueError("the model weights sum to zero; cannot normalize")


def apply(c: FamilyConfig, x: MergeInputs) -> "torch.Tensor":
    """The configuration's merge of `x`, composed from `mergezoo.merge.ops`."""
    from mergezoo.merge import ops

    check_total(c)
    vectors = x.deltas if c.inputs == "deltas" else x.models
    if c.combine == "consensus":
        return ops.consensus(vectors, list(c.weight), k=c.k, mask_lambda=c.mask_lambda,
                             lambda_=c.lambda_)
    stats = x.stats
    sparse = []
    for i, v in enumerate(vectors):
        before = v.abs().sum() if c.rescale == "l1" else None
        if c.sparsifier == "magnitude":
            if c.trim_scope == "model":
                threshold = None if stats is None else stats[f"threshold{i}"]
                if threshold is None:
                    raise ValueError("trim_scope: model needs the whole-model threshold, "
                                     "which the engine computes")
                v = ops.trim_by_magnitude(v, c.density[i], threshold, owned=x.owned)
            elif stats is not None:
                selection = stats[f"keep{i}"]
                v = v if selection is None else \
                    ops.trim_by_magnitude(v, c.density[i], selection=selection, owned=x.owned)
            else:
                v = ops.trim_by_magnitude(v, c.density[i], owned=x.owned)
        elif c.sparsifier == "outliers":
            v = ops.drop_outliers_and_small(
                v, c.density[i], c.gamma[i],
                selections=None if stats is None else (stats[f"keep{i}"], stats[f"outliers{i}"]))
        elif c.sparsifier == "random":
            v = ops.random_drop(v, c.density[i], x.seeds[i], c.rescale == "keep_probability",
                                offset=x.offset, owned=x.owned)
        elif c.sparsifier == "rank":
            v = ops.rank_drop(v, c.density[i], c.epsilon[i], x.seeds[i],
                              c.rescale == "keep_probability")
        if before is not None:
            v = ops.rescale_l1(v if x.owned or v is not vectors[i] else v.clone(), before)
        sparse.append(v)
    owned = x.owned or c.sparsifier in ("outliers", "rank")  # those made new tensors
    return ops.combine(sparse, list(c.weight), sign_rule=c.sign if c.combine == "disjoint" else None,
                       normalize=c.normalize, lambda_=c.lambda_, owned=owned)


def family_method(name: str, row: Row, **registration: Any) -> Callable:
    """Register a method of the family. The decorated function declares only the method's
    hyperparameters (its keyword-only parameters, with their defaults and types) and its
    docstring; its merge is `apply(configure(row, hp), x)`.

    Example (registers a method: not run here):
        >>> @family_method("my_ta", Row(), paper="https://example.org",  # doctest: +SKIP
        ...                needs=Needs(base=True), per_model=("weight",), grid={})
        ... def my_ta(*, weight: list[float] = 1.0, lambda_: float = 1.0):
        ...     '''theta_0 + lambda * sum_i w_i tau_i.'''
    """
    def register(declaration: Callable) -> Callable:
        @functools.wraps(declaration)
        def merge(x: MergeInputs, **hp: Any) -> "torch.Tensor":
            return apply(configure(row, hp), x)

        merge_method(
            name, family=row, random=row.random, elementwise=row.elementwise,
            whole_if=row.whole_if if row.rescale == "l1" else None,
            statistics=lambda hp, shape: configure(row, hp).statistics(_numel(shape)),
            model_statistics=lambda kwargs: configure(row, kwargs).model_statistics(),
            **registration)(merge)
        return merge
    return register


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
