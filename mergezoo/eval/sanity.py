"""Sanity numbers of a toy zoo: how the base, each expert, the multitask model, the oracles and
a plain average of the experts score on every cell (test split).

Example:
    >>> numbers = compute_sanity(bench, writer.models, zoo_root)            # doctest: +SKIP
    >>> numbers["cells"][0]
    {'cell': 'group0-plain', 'held_in': False, 'base': 0.97, 'own_expert': None, ...}
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from mergezoo.errors import BenchmarkError

if TYPE_CHECKING:
    from mergezoo.eval.benchmark import Benchmark
    from mergezoo.eval.training import JobRunner

def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _evaluate_job(job: tuple[Benchmark, Path, str, list[str] | None]) -> dict[str, float]:
    """One model scored on `cells` (None: every cell); runs in a build worker."""
    benchmark, path, split, cells = job
    return benchmark.shared().evaluate(path, split, cells=cells)


def _average_job(job: tuple[Benchmark, list[Path], Path, Path, str]) -> dict[str, float]:
    """The merge engine's `average` of the experts `dirs` (adapters are applied to `base`)
    saved in `out`, scored on every cell. Runs in a build worker."""
    from mergezoo.merge import merge_models

    benchmark, dirs, base, out, split = job
    merged = merge_models("average", list(dirs), base=base, out_dir=out, progress=False)
    return benchmark.shared().evaluate(merged.out_dir, split)


def compute_sanity(benchmark: Benchmark, models: Sequence[Mapping[str, Any]], root: Path,
                   split: str = "test", jobs: JobRunner | None = None) -> dict[str, Any]:
    """Score the zoo's models (`models`: manifest entries, folders under `root`) on `split`.

    Per cell: base, own_expert (mean over seeds) and own_expert_std, experts (each held-in
    cell's expert, mean over seeds), best_expert (the best of those), multitask (mean over its
    seeds), oracle (held-out cells), experts_average (for each seed, a plain state-dict average
    of that seed's experts, scored on every cell; mean over seeds). Plus held-in / held-out means.
    The evaluations are independent: with `jobs` they run in its worker processes.
    """
    from mergezoo.eval.training import JobRunner

    def paths(role: str, cell: str | None = None) -> list[tuple[int | None, Path]]:
        return [(m["seed"], root / m["name"]) for m in models
                if m["role"] == role and (cell is None or m["cell"] == cell)]

    bases = paths("base")
    if not bases:
        raise BenchmarkError(f"{benchmark.name}: the zoo has no base model")
    seeds = sorted({s for s, _ in paths("expert") if s is not None})
    runner = jobs or JobRunner(1)
    with tempfile.TemporaryDirectory(prefix="mergezoo-avg-") as tmp:
        # one average of the experts per seed, each made and scored in a worker
        averaged = [[root / m["name"] for m in models
                     if m["role"] == "expert" and m["seed"] == seed] for seed in seeds]
        pending = [runner.submit(_average_job, (benchmark, dirs, bases[0][1],
                                                Path(tmp) / f"seed{seed}", split))
                   for seed, dirs in zip(seeds, averaged)]
        # every other evaluation, named so the results can be picked out again; the one-cell
        # oracle evaluations last, so the workers finish close together
        todo: list[tuple[str, Path, list[str] | None]] = [("base", bases[0][1], None)]
        todo += [("multitask", p, None) for _, p in paths("multitask")]
        for cell in benchmark.held_in_cells:
            todo += [(f"expert:{cell.name}", p, None) for _, p in paths("expert", cell.name)]
        for cell in benchmark.held_out_cells:
            todo += [(f"oracle:{cell.name}", p, [cell.name])
                     for _, p in paths("oracle", cell.name)[:1]]
        try:
            scores = runner.map(_evaluate_job, [(benchmark, p, split, c) for _, p, c in todo])
            averages = [f.result() for f in pending]
        finally:
            if jobs is None:
                runner.close()
    results: dict[str, list[dict[str, float]]] = {}
    for (what, _, _), score in zip(todo, scores):
        results.setdefault(what, []).append(score)
    base = results["base"][0]
    multitask_runs = results.get("multitask", [])
    # every expert (all seeds) on every cell: own expert, best expert, the full matrix
    by_expert = {c.name: results.get(f"expert:{c.name}", []) for c in benchmark.held_in_cells}
    own = {c: [run[c] for run in runs] for c, runs in by_expert.items()}
    oracle = {c.name: results[f"oracle:{c.name}"][0][c.name] for c in benchmark.held_out_cells
              if f"oracle:{c.name}" in results}
    rows = []
    for cell in benchmark.cells:
        runs = own.get(cell.name, [])
        expert_means = [_mean([r[cell.name] for r in rs]) for rs in by_expert.values() if rs]
        rows.append({
            "cell": cell.name, "held_in": cell.held_in, "base": round(base[cell.name], 4),
            "own_expert": _mean(runs),
            "own_expert_std": round(statistics.pstdev(runs), 4) if len(runs) > 1 else None,
            "experts": {e: _mean([r[cell.name] for r in rs]) for e, rs in by_expert.items() if rs},
            "best_expert": max(expert_means) if expert_means else None,
            "multitask": _mean([r[cell.name] for r in multitask_runs]),
            "oracle": round(oracle[cell.name], 4) if cell.name in oracle else None,
            "experts_average": _mean([a[cell.name] for a in averages]),
        })
    summary = {}
    for group, held in (("held_in", True), ("held_out", False)):
        sel = [r for r in rows if r["held_in"] is held]
        summary[group] = {k: _mean([r[k] for r in sel if r[k] is not None])
                          for k in ("base", "own_expert", "best_expert", "multitask", "oracle",
                                    "experts_average")}
    return {"benchmark": benchmark.name, "size": benchmark.size, "split": split,
            "expert_seeds": seeds, "cells": rows, "summary": summary}
