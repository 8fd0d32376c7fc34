"""Benchmark results (results.json, written by `mergezoo bench`) as a card needs them.

Plain data in, plain data out: the rows of one method, the row that describes this very merge,
and the model-index entries (`huggingface_hub.EvalResult`) for its per-cell scores and its
held-in / held-out means. Every field but `rows` is optional (see DESIGN.md for the schema).

Example:
    >>> results = {"benchmark": "digits-domains", "metric": "accuracy",
    ...            "cells": [{"name": "a", "held_in": True}, {"name": "b", "held_in": False}],
    ...            "rows": [{"method": "ties", "kind": "merge", "n_models": 2, "held_in": 0.9,
    ...                      "held_out": 0.6, "per_cell": {"a": 0.9, "b": 0.6}}]}
    >>> row = pick_row(results, "ties", n_models=2, hyperparameters={})
    >>> [(r.dataset_config, r.metric_value) for r in eval_results(results, row, "m")]
    [('a', 0.9), ('b', 0.6), ('held-in', 0.9), ('held-out', 0.6)]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from mergezoo.errors import ModelCardError


def load_results(results: dict | str | Path | None) -> tuple[dict | None, Path | None]:
    """(results dict, folder its relative plot paths start from); (None, None) for None."""
    if results is None:
        return None, None
    if isinstance(results, dict):
        data, where = results, None
    else:
        path = Path(results).expanduser()
        if not path.is_file():
            raise ModelCardError(f"{path}: no such results file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ModelCardError(f"{path}: not valid JSON ({err})") from None
        where = path.parent
    if not isinstance(data, dict) or not isinstance(data.get("rows", []), list):
        raise ModelCardError(f"{results if where else 'results'}: not a mergezoo results file "
                             "(a JSON object with a list of `rows`)")
    for i, row in enumerate(data.get("rows", [])):
        if not isinstance(row, dict) or "method" not in row:
            raise ModelCardError(f"results row {i}: every row needs a `method`")
    return data, where


def _canonical(method: object) -> object:
    """A method's registered name (`linear` is `average`); other names as they are."""
    from mergezoo.errors import UnknownMethodError
    from mergezoo.merge.registry import get_method

    try:
        return get_method(str(method)).name
    except UnknownMethodError:
        return method


def method_rows(results: dict | None, method: str) -> list[dict]:
    """The merge rows of `method`, by name or alias (rows of kind "baseline" are never a
    merge's own)."""
    if not results:
        return []
    wanted = _canonical(method)
    return [r for r in results.get("rows", []) if r.get("kind", "merge") != "baseline"
            and (r.get("method") == method or _canonical(r.get("method")) == wanted)]


def baseline_rows(results: dict | None) -> list[dict]:
    return [r for r in (results or {}).get("rows", []) if r.get("kind") == "baseline"]


def _same(recorded: Any, wanted: Any) -> bool:
    """A row's hyperparameter against the merge's: a per-model list matches a value shared
    by every model."""
    if isinstance(recorded, list) and not isinstance(wanted, list):
        return bool(recorded) and all(_same(v, wanted) for v in recorded)
    if isinstance(recorded, (int, float)) and isinstance(wanted, (int, float)):
        return math.isclose(float(recorded), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    return recorded == wanted


def pick_row(results: dict | None, method: str, *, n_models: int,
             hyperparameters: dict[str, Any]) -> dict | None:
    """The row that describes this merge: same method, preferably the same number of models
    and the same hyperparameters; None when the results hold no row of the method."""
    rows = method_rows(results, method)
    if not rows:
        return None

    def score(row: dict) -> tuple[int, int]:
        hp = row.get("hyperparameters") or {}
        matches = all(k in hyperparameters and _same(hyperparameters[k], v) for k, v in hp.items())
        return (int(row.get("n_models") == n_models), int(matches))

    return max(rows, key=score)  # max keeps the first of equal rows


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def eval_results(results: dict | None, row: dict | None, model_name: str, *,
                 task_type: str | None = None) -> list[EvalResult]:
    """model-index entries: one per cell of the row's `per_cell` (held-in first, in the order
    of `cells`), then the held-in and held-out means. [] without a row."""
    if not results or not row:
        return []
    benchmark = str(results.get("benchmark") or "benchmark")
    metric = str(results.get("metric") or "score")
    task = task_type or "other"
    held = {c["name"]: bool(c.get("held_in")) for c in results.get("cells", [])
            if isinstance(c, dict) and "name" in c}
    per_cell = row.get("per_cell") or {}
    order = [c for c in held if c in per_cell] + sorted(c for c in per_cell if c not in held)
    order.sort(key=lambda c: 0 if held.get(c) else 1 if c in held else 2)
    out = []

    def add(config: str, label: str, value: float) -> None:
        out.append(EvalResult(task_type=task, dataset_type=f"mergezoo/{benchmark}",
                              dataset_name=f"{benchmark}: {label}", dataset_config=config,
                              dataset_split="test", metric_type=metric,
                              metric_name=f"{metric} ({label})", metric_value=value))

    for cell in order:
        value = _number(per_cell[cell])
        if value is None:
            continue
        split = "held-in" if held.get(cell) else "held-out" if cell in held else "cell"
        add(str(cell), f"{cell}, {split}", value)
    for key, label in (("held_in", "held-in"), ("held_out", "held-out")):
        value = _number(row.get(key))
        if value is not None:
            add(label, f"{label} mean", value)
    return out
