"""Calibrate `digits-diffusion`: is it in the paper's regime?

Builds (or reuses) the benchmark's zoo, then for every expert seed merges that seed's held-in
experts (PEFT LoRA adapters of the base; the merge engine merges them as full deltas) with task
arithmetic and TIES over a grid, picks each method's point on the held-in VALIDATION prompts,
and reports it on the TEST prompts of every cell. Held-out numbers are recorded, never used to
choose anything.

Normalised held-in = mean over held-in cells of (merge - base) / (own expert - base), the own
expert of the same seed; normalised held-out = mean over held-out cells of
(merge - base) / (oracle - base). Means +- std over seeds and 95% confidence intervals
(Student t, n - 1 degrees of freedom) over seeds.

Usage:
    python benchmarks/calibrate_diffusion.py --size default --json calib.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: two-sided 95% Student t quantiles by degrees of freedom
#: a held-in cell whose own expert beats the base by less than this is flagged
MIN_GAP = 0.05
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def _mean_ci(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    half = T95.get(len(values) - 1, 1.96) * std / len(values) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": round(mean, 4), "std": round(std, 4), "ci95": round(half, 4)}


def _merged_state(method: str, experts: list[Path], base: Path, params: dict[str, Any],
                  tmp: Path) -> dict[str, Any]:
    # merged to disk by the engine (0.3 M parameters: milliseconds), read back as a state dict
    """The merge engine's merge of `experts` (adapters of `base`), as a full UNet state dict."""
    from safetensors.torch import load_file

    from mergezoo.merge import merge_models

    out = tmp / f"{method}-{len(list(tmp.iterdir()))}"
    merged = merge_models(method, [str(e) for e in experts], base=base, out_dir=out,
                          params=params, progress=False)
    state = {}
    for name in merged.files:
        state.update(load_file(str(out / name)))
    return state


def _load(bench: Any, path: Path) -> Any:
    from mergezoo.eval.training import quiet_loading

    with quiet_loading():
        return bench.load_model(path)


def _seed_job(job: tuple[str, Path, int, dict[str, list[dict[str, float]]], int, bool]
              ) -> dict[str, Any]:
    """Everything of one expert seed (a worker process): its experts on their own cells, the
    average and (optionally) the ensemble of its experts, and each method tuned on held-in
    validation then scored on every cell's test prompts."""
    import torch

    from mergezoo.eval import build_zoo, get_benchmark

    size, zoo_root, seed, grids, threads, ensemble = job
    torch.set_num_threads(threads)
    bench = get_benchmark("digits-diffusion", size=size)
    zoo = build_zoo(bench, out=zoo_root)
    held_in = [c.name for c in bench.held_in_cells]
    base_dir = zoo.model_path("base")
    model = _load(bench, base_dir)
    dirs = [zoo.model_path("expert", c, seed=seed) for c in held_in]
    experts = [_load(bench, d) for d in dirs]
    own = {c: bench.score_cells(e, "test", [c])[c] for c, e in zip(held_in, experts)}
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="calib-diffusion-") as tmp_name:
        tmp = Path(tmp_name)
        avg = bench.with_weights(model, _merged_state("average", dirs, base_dir, {}, tmp))
        runs["experts_average"] = {"params": {}, "test": bench.score_cells(avg, "test")}
        if ensemble:
            runs["ensemble"] = {"params": {},
                                "test": bench.score_cells(bench.ensemble(experts), "test")}
        for method, grid in grids.items():
            tried = []
            for params in grid:
                state = _merged_state(method, dirs, base_dir, params, tmp)
                started = time.perf_counter()
                val = bench.score_cells(bench.with_weights(model, state), "validation", held_in)
                tried.append((statistics.fmean(val.values()), params, state,
                              time.perf_counter() - started))
            best_val, best, state, _ = max(tried, key=lambda t: t[0])
            started = time.perf_counter()
            scores = bench.score_cells(bench.with_weights(model, state), "test")
            runs[method] = {"params": best, "validation_held_in": round(best_val, 4),
                            "grid": [{"params": p, "validation_held_in": round(v, 4)}
                                     for v, p, _, _ in tried],
                            "validation_eval_s": round(statistics.fmean(t[3] for t in tried), 2),
                            "test_eval_s": round(time.perf_counter() - started, 2),
                            "test": scores}
    return {"seed": seed, "own": own, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="default")
    parser.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: the cache)")
    parser.add_argument("--ta-grid", default="0.4,0.7,1.0,1.3,1.6,2.0,2.5")
    parser.add_argument("--ties-lambda", default="1.0,1.5,2.0,2.5,3.0")
    parser.add_argument("--ties-density", default="0.2,0.5")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--workers", type=int, default=3, help="seeds scored in parallel")
    parser.add_argument("--ensemble", action="store_true", help="also score the ensemble")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)

    import multiprocessing

    import torch

    from mergezoo.eval import build_zoo, get_benchmark

    torch.set_num_threads(args.threads)
    bench = get_benchmark("digits-diffusion", size=args.size)
    started = time.perf_counter()
    zoo = build_zoo(bench, out=args.zoo)
    build_s = time.perf_counter() - started
    held_in = [c.name for c in bench.held_in_cells]
    held_out = [c.name for c in bench.held_out_cells]
    seeds = sorted({m.seed for m in zoo.models("expert")})
    grids = {
        "task_arithmetic": [{"lambda": float(x)} for x in args.ta_grid.split(",")],
        "ties": [{"density": float(d), "lambda": float(x)}
                 for d in args.ties_density.split(",") for x in args.ties_lambda.split(",")],
    }
    jobs = [(args.size, zoo.root, s, grids, args.threads, args.ensemble) for s in seeds]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(args.workers, len(seeds))) as pool:
        pending = pool.map_async(_seed_job, jobs)
        model = _load(bench, zoo.model_path("base"))
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        base_test = bench.score_cells(model, "test")
        timings["base_all_cells_test_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        base_val = bench.score_cells(model, "validation", held_in)
        timings["base_held_in_validation_s"] = round(time.perf_counter() - t0, 2)
        oracle = {c: bench.score_cells(_load(bench, zoo.model_path("oracle", c)), "test", [c])[c]
                  for c in held_out}
        multitask = bench.score_cells(_load(bench, zoo.model_path("multitask")), "test")
        per_seed = pending.get()
    n_images = sum(len(bench.dataset(c, "test")) for c in bench.cells)
    n_images *= bench.spec.params["samples_per_prompt"]
    own = {(r["seed"], c): v for r in per_seed for c, v in r["own"].items()}

    def summary(scores: dict[str, float]) -> dict[str, float]:
        return {"held_in": statistics.fmean(scores[c] for c in held_in),
                "held_out": statistics.fmean(scores[c] for c in held_out)}

    def ratio(gain: float, gap: float) -> float:
        return gain / gap if gap else float("nan")  # no gap: undefined, not infinite

    def rows(scores: dict[str, float], seed: int) -> dict[str, float]:
        return {**summary(scores),
                "norm_held_in": statistics.fmean(ratio(scores[c] - base_test[c],
                                                       own[seed, c] - base_test[c])
                                                 for c in held_in),
                "norm_held_out": statistics.fmean(ratio(scores[c] - base_test[c],
                                                        oracle[c] - base_test[c])
                                                  for c in held_out)}

    methods: dict[str, list[dict[str, Any]]] = {}
    for r in per_seed:
        for method, run in r["runs"].items():
            methods.setdefault(method, []).append({"seed": r["seed"], **run,
                                                   **rows(run["test"], r["seed"])})
    for key in ("validation_eval_s", "test_eval_s"):
        values = [run[key] for runs in methods.values() for run in runs if key in run]
        timings[f"merge_{key}"] = round(statistics.fmean(values), 2)

    def agg(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {key: _mean_ci([r[key] for r in runs])
                for key in ("held_in", "held_out", "norm_held_in", "norm_held_out")}

    result = {
        "benchmark": bench.name, "size": bench.size, "version": bench.spec.version,
        "seeds": seeds, "zoo": str(zoo.root), "zoo_ready_s": round(build_s, 1),
        "images_per_model_test": n_images, "timings": timings,
        "sample_steps": bench.spec.params["sample_steps"], "torch_threads": args.threads,
        "base": {**summary(base_test), "test": base_test, "validation_held_in": base_val},
        "own_expert": {"held_in": _mean_ci([statistics.fmean(own[s, c] for c in held_in)
                                            for s in seeds]),
                       "per_cell": {c: _mean_ci([own[s, c] for s in seeds]) for c in held_in}},
        "oracle": {"held_out": statistics.fmean(oracle.values()), "per_cell": oracle},
        "multitask": {**summary(multitask), "test": multitask},
        "gaps": {c: round(statistics.fmean(own[s, c] for s in seeds) - base_test[c], 4)
                 for c in held_in},
        "methods": {m: {**agg(runs), "chosen": [r["params"] for r in runs], "runs": runs}
                    for m, runs in methods.items()},
    }
    for cell, gap in result["gaps"].items():
        if gap < MIN_GAP:  # (merge - base) / gap would be sampling noise
            print(f"warning: {cell}: own expert - base = {gap:.3f} < {MIN_GAP}; its "
                  "normalised score is not meaningful", file=sys.stderr)
    _print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _print_table(result: dict[str, Any]) -> None:
    def fmt(x: dict[str, float]) -> str:
        return f"{x['mean']:.3f} +- {x['std']:.3f} (CI {x['ci95']:.3f})"

    base = result["base"]
    print(f"base: held-in {base['held_in']:.3f}, held-out {base['held_out']:.3f}")
    print(f"own expert held-in: {fmt(result['own_expert']['held_in'])}; "
          f"oracle held-out {result['oracle']['held_out']:.3f}; multitask held-in "
          f"{result['multitask']['held_in']:.3f}, held-out {result['multitask']['held_out']:.3f}")
    print("| method | held-in | held-out | normalised held-in | normalised held-out | chosen |")
    print("|---|---|---|---|---|---|")
    for method, agg in result["methods"].items():
        chosen = "; ".join(",".join(f"{k} {v}" for k, v in p.items()) or "-"
                           for p in agg["chosen"])
        print(f"| {method} | {fmt(agg['held_in'])} | {fmt(agg['held_out'])} | "
              f"{fmt(agg['norm_held_in'])} | {fmt(agg['norm_held_out'])} | {chosen} |")
    print(json.dumps({"timings": result["timings"], "images": result["images_per_model_test"],
                      "gaps": result["gaps"]}))


if __name__ == "__main__":
    sys.exit(main())
