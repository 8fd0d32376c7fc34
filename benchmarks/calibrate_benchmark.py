#!/usr/bin/env python
"""Calibrate a benchmark against the paper's regime (issue 14; a script, not a timed test).

Builds (or reuses) the benchmark's toy zoo, then for every expert seed tunes three data-free
merges of that seed's held-in experts on HELD-IN VALIDATION data only and reports them on test:

- average: no hyperparameter;
- task_arithmetic: lambda over a grid;
- ties: density x lambda over a grid.

A grid whose best lambda is its largest is extended (x1.5 steps) until the best point is inside
it, so the reported optimum is never the grid's edge. Held-out cells are scored once, with the
chosen hyperparameters, and never used for a choice.

Normalised held-in = mean over held-in cells of (merge - base) / (own expert - base), with the
same seed's expert; normalised held-out = the same with the cell's oracle. A cell whose gap
(mean over seeds, test) is below the benchmark's `min_normalising_gap` is left out of the
normalised mean (and named), since its ratio is noise over a near-zero denominator.

Every merge goes through the public engine (`mergezoo.merge.merge_models`) into a temporary
folder, and is scored by loading its state dict into one resident model
(`Benchmark.with_weights`), so this works for any registered benchmark whose `load_model`
result takes a merged state dict.

Usage:
    python benchmarks/calibrate_benchmark.py digits-domains                 # default size
    python benchmarks/calibrate_benchmark.py text-styles --size tiny --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# run from a checkout: import this checkout's mergezoo, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TA_GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]
TIES_DENSITIES = [0.1, 0.2, 0.3]
TIES_LAMBDAS = [0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0]
# two-sided 95% t quantiles by degrees of freedom (n seeds - 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def load_weights(folder: Path) -> dict[str, Any]:
    """Every safetensors tensor of a model folder (sharded or not)."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    if not out:
        raise SystemExit(f"{folder}: no safetensors weights")
    return out


class Scorer:
    """Scores state dicts on cells with one resident model (`with_weights`)."""

    def __init__(self, bench: Any, template: Path) -> None:
        from mergezoo.eval.training import quiet_loading

        self.bench = bench
        with quiet_loading():
            self.model = bench.load_model(template)
        self.evaluations = 0

    def __call__(self, state: dict[str, Any], split: str, cells: list[Any]) -> dict[str, float]:
        from mergezoo.eval.training import torch_threads

        self.evaluations += 1
        with torch_threads(self.bench.eval_threads):
            model = self.bench.with_weights(self.model, state)
            return {c.name: float(self.bench.score(model, self.bench.dataset(c, split), c))
                    for c in cells}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def ci95(xs: list[float]) -> float:
    """Half-width of the 95% t interval of the mean (0 for one value)."""
    if len(xs) < 2:
        return 0.0
    return T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def normalised(scores: dict[str, float], base: dict[str, float], top: dict[str, float],
               cells: list[str]) -> float | None:
    vals = [(scores[c] - base[c]) / (top[c] - base[c]) for c in cells]
    return mean(vals) if vals else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("benchmark")
    ap.add_argument("--size", default="default")
    ap.add_argument("--seeds", default=None, help="comma-separated expert seeds (default: all)")
    ap.add_argument("--methods", default="average,task_arithmetic,ties")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    from mergezoo.eval import build_zoo, get_benchmark
    from mergezoo.merge import merge_models

    bench = get_benchmark(args.benchmark, size=args.size)
    t0 = time.perf_counter()
    zoo = build_zoo(bench)
    build_s = time.perf_counter() - t0
    info = zoo.build_info or {}
    print(f"# {bench.name} --size {args.size}: zoo {zoo.root} "
          f"(this call {build_s:.1f} s; recorded build {info.get('total_seconds')} s)")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else zoo.seeds("expert")
    held_in, held_out = bench.held_in_cells, bench.held_out_cells
    hi_names = [c.name for c in held_in]
    base_dir = zoo.model_path("base")
    score = Scorer(bench, base_dir)

    # evaluation speed: one model on every cell (test), in memory, after a warm-up
    base_state = load_weights(base_dir)
    score(base_state, "test", bench.cells)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        base_test = score(dict(base_state), "test", bench.cells)
        times.append(time.perf_counter() - t)
    eval_s = min(times)
    base_val = score(base_state, "validation", held_in)

    own: dict[int, dict[str, float]] = {}
    for seed in seeds:
        own[seed] = {c.name: score(load_weights(zoo.model_path("expert", c.name, seed)), "test",
                                   [c])[c.name] for c in held_in}
    oracle = {c.name: score(load_weights(zoo.model_path("oracle", c.name, 0)), "test", [c])[c.name]
              for c in held_out if zoo.models("oracle", c.name)}
    min_gap = float(getattr(bench, "min_normalising_gap", 0.0))
    gaps = {c: mean([own[s][c] for s in seeds]) - base_test[c] for c in hi_names}
    hi_cells = [c for c in hi_names if gaps[c] >= min_gap]
    ho_cells = [c for c in oracle if oracle[c] - base_test[c] >= min_gap]
    n_test = {c.name: len(bench.dataset(c, "test")) for c in held_in}

    print(f"\nscoring one model on all {len(bench.cells)} cells (test, in memory): {eval_s:.3f} s")
    print(f"\nheld-in cells: base -> own expert (mean over seeds {seeds}), gap in test images")
    for c in hi_names:
        vals = [own[s][c] for s in seeds]
        note = "" if c in hi_cells else f"  (gap < {min_gap}: left out of normalised)"
        print(f"  {c:24s} {base_test[c]:.3f} -> {mean(vals):.3f} +- {statistics.pstdev(vals):.3f}"
              f"  gap {gaps[c] * n_test[c]:.0f} / {n_test[c]} images{note}")
    excluded_ho = sorted(set(oracle) - set(ho_cells))
    if excluded_ho:
        print(f"  held-out cells left out of normalised held-out (oracle gap < {min_gap}): "
              f"{excluded_ho}")

    def merge_and_load(method: str, seed: int, params: dict[str, Any], tmp: Path) -> dict:
        experts = [zoo.model_path("expert", c, seed) for c in hi_names]
        out = tmp / f"{method}-{seed}-{len(list(tmp.iterdir()))}"
        merge_models(method, experts, base=base_dir, out_dir=out, params=params, progress=False)
        return load_weights(out)

    def grid_for(method: str) -> list[dict[str, Any]]:
        if method == "average":
            return [{}]
        if method == "task_arithmetic":
            return [{"lambda": lam} for lam in TA_GRID]
        if method == "ties":
            return [{"density": d, "lambda": lam} for d in TIES_DENSITIES for lam in TIES_LAMBDAS]
        raise SystemExit(f"no grid for method {method!r}; methods: average, task_arithmetic, ties")

    def held_in_val(state: dict[str, Any]) -> float:
        return mean(list(score(state, "validation", held_in).values()))

    rows: dict[str, list[dict[str, Any]]] = {}
    experts_row = {"held_in": [mean([own[s][c] for c in hi_names]) for s in seeds]}
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory(prefix="mergezoo-calibrate-") as tmpdir:
        tmp = Path(tmpdir)
        for method in methods:
            grid = grid_for(method)
            for seed in seeds:
                t = time.perf_counter()
                tried: dict[str, float] = {}
                states: dict[str, dict] = {}
                for params in grid:
                    key = json.dumps(params, sort_keys=True)
                    states[key] = merge_and_load(method, seed, params, tmp)
                    tried[key] = held_in_val(states[key])
                # extend lambda past the best point while the best is the grid's largest
                while "lambda" in json.loads(max(tried, key=tried.get)):
                    best = json.loads(max(tried, key=tried.get))
                    top = max(json.loads(k)["lambda"] for k in tried
                              if {**json.loads(k), "lambda": 0} == {**best, "lambda": 0})
                    if best["lambda"] < top or top >= 20:
                        break
                    params = {**best, "lambda": round(top * 1.5, 3)}
                    key = json.dumps(params, sort_keys=True)
                    states[key] = merge_and_load(method, seed, params, tmp)
                    tried[key] = held_in_val(states[key])
                best_key = max(tried, key=tried.get)
                state = states[best_key]
                test = score(state, "test", bench.cells)
                hi_raw = mean([test[c] for c in hi_names])
                ho_raw = mean([test[c.name] for c in held_out]) if held_out else None
                row = {"seed": seed, "params": json.loads(best_key), "val_held_in": tried[best_key],
                       "held_in": hi_raw, "held_out": ho_raw,
                       "norm_held_in": normalised(test, base_test, own[seed], hi_cells),
                       "norm_held_out": normalised(test, base_test, oracle, ho_cells),
                       "grid_points": len(tried), "seconds": round(time.perf_counter() - t, 1),
                       "per_cell": test}
                rows.setdefault(method, []).append(row)
                print(f"  {method:16s} seed {seed}: {row['params']} val {tried[best_key]:.3f} "
                      f"held-in {hi_raw:.3f} (norm {row['norm_held_in']:.2f}) "
                      f"held-out {ho_raw if ho_raw is None else round(ho_raw, 3)} "
                      f"({len(tried)} points, {row['seconds']} s)", flush=True)

    def fmt(xs: list[float | None]) -> str:
        xs = [x for x in xs if x is not None]
        if not xs:
            return "-"
        return f"{mean(xs):.3f} +- {statistics.pstdev(xs):.3f} (CI95 +- {ci95(xs):.3f})"

    base_hi = mean([base_test[c] for c in hi_names])
    base_ho = mean([base_test[c.name] for c in held_out]) if held_out else None
    print(f"\n## {bench.name} --size {args.size}, seeds {seeds}: test accuracy, "
          "mean +- std over seeds (95% CI half-width)")
    print(f"base: held-in {base_hi:.3f}, held-out {base_ho if base_ho is None else round(base_ho, 3)}")
    print(f"own experts: held-in {fmt(experts_row['held_in'])}")
    if oracle:
        print(f"oracles: held-out {mean(list(oracle.values())):.3f}")
    print("\n| method | chosen (per seed) | held-in | norm. held-in | held-out | norm. held-out |")
    print("|---|---|---|---|---|---|")
    for method, rs in rows.items():
        chosen = "; ".join(", ".join(f"{k} {v}" for k, v in r["params"].items()) or "-" for r in rs)
        print(f"| {method} | {chosen} | {fmt([r['held_in'] for r in rs])} | "
              f"{fmt([r['norm_held_in'] for r in rs])} | {fmt([r['held_out'] for r in rs])} | "
              f"{fmt([r['norm_held_out'] for r in rs])} |")
    print(f"\n{score.evaluations} evaluations; normalised held-in over {hi_cells}")
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": bench.name, "size": args.size, "seeds": seeds, "eval_seconds": eval_s,
            "build_info": info, "base_test": base_test, "own_expert_test": own, "oracle_test": oracle,
            "min_normalising_gap": min_gap, "normalised_held_in_cells": hi_cells,
            "normalised_held_out_cells": ho_cells, "methods": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
