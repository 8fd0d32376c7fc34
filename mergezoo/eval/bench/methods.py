"""Which merge methods a bench compares, and their hyperparameter grids.

Example:
    >>> [m.name for m in bench_methods(None, n_experts=5)][:3]                # doctest: +SKIP
    ['average', 'breadcrumbs', 'breadcrumbs_ties']
    >>> grid_points(get_method("ties"))[:2]                                 # doctest: +SKIP
    [(('density', 0.1), ('lambda', 0.8)), (('density', 0.1), ('lambda', 1.0))]
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

from mergezoo.errors import BenchmarkError

Point = tuple[tuple[str, Any], ...]

#: hyperparameters that scale the merged task vector: when the best value sits at the edge of
#: the grid, the grid is extended past it (the best point must be inside the grid)
SCALE_KEYS = ("lambda",)
MAX_EXTENSIONS = 4


def why_not(method: Any, n_experts: int) -> str | None:
    """Why `method` cannot run in a bench of `n_experts` data-free experts (None: it can)."""
    needs = method.needs
    if needs.data is not None or needs.statistics is not None:
        return (f"needs {needs.data + ' data' if needs.data else ''}"
                f"{' and ' if needs.data and needs.statistics else ''}"
                f"{needs.statistics + ' statistics' if needs.statistics else ''}, which the "
                "bench does not compute")
    if needs.max_models is not None and n_experts > needs.max_models:
        return f"merges at most {needs.max_models} models; the benchmark has {n_experts} experts"
    if n_experts < needs.min_models:
        return f"needs at least {needs.min_models} models; the benchmark has {n_experts} experts"
    return None


def bench_methods(names: Sequence[str] | None, n_experts: int) -> list[Any]:
    """The methods to compare: `names` (checked: unknown or inapplicable names are refused
    with the reason), or every registered method that can run on `n_experts` data-free."""
    from mergezoo.merge import get_method, list_methods

    if not names:
        return [m for m in list_methods() if why_not(m, n_experts) is None]
    methods, problems = [], []
    for name in names:
        method = get_method(name)  # UnknownMethodError lists the valid names
        reason = why_not(method, n_experts)
        if reason:
            problems.append(f"{name}: {reason}")
        elif method.name not in [m.name for m in methods]:
            methods.append(method)
    if problems:
        raise BenchmarkError("cannot bench these methods:\n  " + "\n  ".join(problems))
    return methods


def grid_points(method: Any) -> list[Point]:
    """Every point of the method's declared search grid (the defaults when it has none)."""
    keys = sorted(method.grid)
    return [tuple(zip(keys, values)) for values in
            itertools.product(*(method.grid[k] for k in keys))] or [()]


def extension(method: Any, points: list[Point], best: Point) -> list[Point]:
    """Grid points one step past `best` along each scale hyperparameter where `best` sits at
    the edge of the values tried so far (empty when it is inside)."""
    out: list[Point] = []
    best_d = dict(best)
    for key in SCALE_KEYS:
        if key not in best_d:
            continue
        tried = sorted({dict(p)[key] for p in points if dict(p).get(key) is not None})
        if len(tried) < 2:
            continue
        step = tried[-1] - tried[-2]
        low_step = tried[1] - tried[0]
        hp = method.hyperparameters.get(key)
        for value, edge in ((tried[-1] + step, tried[-1]), (tried[0] - low_step, tried[0])):
            if best_d[key] != edge or value <= 0:
                continue
            if hp is not None and hp.interval is not None and value not in hp.interval:
                continue
            value = round(value, 6)
            out.append(tuple((k, value if k == key else v) for k, v in best))
    return out
