"""Compile a task-vector family configuration into a fused kernel's plan.

The accelerator knows the family's configurations (`methods.family.FamilyConfig`: which
sparsifier, sign rule, combine, rescale), never a method by name. `compile_config` turns one
configuration, with the statistics the engine computed for the tensor, into a
`kernels.Combine`, or None where the kernels do not run it (Consensus masks, DELLA's ranks):
the torch functions then merge. `worth_it` weighs what the kernels save for a row against
loading them.

Example:
    >>> from mergezoo.merge.methods.family import Row, configure
    >>> c = configure(Row(), {"weight": [1.0, 1.0], "lambda_": 0.5})
    >>> compile_config(c, None, None).lam
    0.5
"""

from __future__ import annotations

from typing import Any

from mergezoo.merge.accel import kernels
from mergezoo.merge.accel.kernels import AT_LEAST, HARDSHRINK, KEEP_ALL, TOP_K_TIES, Combine
from mergezoo.merge.methods.family import FamilyConfig, Row, check_total
from mergezoo.merge.topk import Selection, float_of_bits

# What the fused kernels save over the torch functions, in seconds per 1e9 parameters x
# models, by sparsifier (measured with benchmarks/merge_speed.py on 2 CPU cores): the torch
# draws of the random drop are a hash in int64 tensor operations, which the kernels compute
# in registers (2.9 s of 4.1 s, N=2, 202M); a trim is a chain of passes per task vector.
SAVES = {"none": 1.0, "magnitude": 5.0, "outliers": 5.0, "random": 8.0}
AVERAGE_SAVES = 0.5  # the weighted average of the models: one pass less (no base)


def saving(row: Row) -> float:
    """Seconds the kernels save per 1e9 parameters x models for this row (0: not fused)."""
    if row.combine == "consensus" or row.sparsifier not in SAVES:
        return 0.0
    return AVERAGE_SAVES if row.inputs == "models" else SAVES[row.sparsifier]


def worth_it(row: Any, entries: int, mode: str = "auto") -> bool:
    """Whether a merge of `entries` parameters x models by `row` should load the kernels, in
    kernel `mode` (`MergeOptions.kernels`)."""
    return row is not None and saving(row) > 0 and kernels.worth_it(saving(row), entries, mode)


def compile_config(c: FamilyConfig, stats: dict[str, Any] | None,
                   seeds: list[int] | None) -> Combine | None:
    """The fused plan of configuration `c` for one tensor, with its statistics (`stats`, as
    the engine computed them over the whole tensor: selections not bound to a part) and the
    random drop's keys; None where the kernels do not run it."""
    if c.combine == "consensus" or c.sparsifier == "rank" or c.rescale == "l1":
        return None
    weight = list(c.weight)
    if c.inputs == "models":
        check_total(c)
        return Combine.linear(weight, normalize=c.normalize, add_base=False)
    if c.combine == "disjoint":
        plan = Combine.disjoint(weight, sign_rule=c.sign, normalize=c.normalize, lam=c.lambda_)
    else:
        plan = Combine.linear(weight, normalize=c.normalize, lam=c.lambda_)
    n = len(weight)
    if c.sparsifier == "random":
        return plan.dropped(list(c.density), seeds, c.rescale == "keep_probability")
    if c.sparsifier == "magnitude" and c.trim_scope == "model":
        return plan.trimmed([AT_LEAST] * n, [stats[f"threshold{i}"] for i in range(n)])
    if c.sparsifier == "magnitude":
        return plan.trimmed(*_rules([stats[f"keep{i}"] for i in range(n)]))
    if c.sparsifier == "outliers":
        plan = plan.trimmed(*_rules([stats[f"keep{i}"] for i in range(n)]))
        return plan.without_outliers(*_rules([stats[f"outliers{i}"] for i in range(n)]))
    return plan


def _rules(selections: list[Selection | None]) -> tuple[list, list, list, list]:
    """Per expert, a selection as a trim rule: KEEP_ALL for none (or one that keeps
    everything), HARDSHRINK at NaN (keeps no entry) for a top-0, else TOP_K_TIES at the cut's
    threshold with its tied entries per slice."""
    rules, thresholds, ties, equal = [], [], [], []
    for s in selections:
        cut = s.cut if s is not None else None
        if cut is not None:
            rules.append(TOP_K_TIES)
            thresholds.append(float_of_bits(cut.threshold))
        elif s is not None and not s.everything:
            rules.append(HARDSHRINK)
            thresholds.append(float("nan"))
        else:
            rules.append(KEEP_ALL)
            thresholds.append(0.0)
        ties.append(None if cut is None else cut.ties)
        equal.append(None if cut is None else cut.equal)
    return rules, thresholds, ties, equal
