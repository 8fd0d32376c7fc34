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
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def _mean_ci(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    half = T95.get(len(values) - 1, 1.96) * std / len(values) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": round(mean, 4), "std": round(std, 4), "ci95": round(half, 4)}


def _merged_state(method: str, experts: list[Path], base: Path, params: dict[str, Any],
                  tmp: Path) -> dict[str, Any]:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="default")
    parser.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: the cache)")
    parser.add_argument("--ta-grid", default="0.3,0.5,0.7,0.9,1.1,1.3,1.6,2.0")
    parser.add_argument("--ties-lambda", default="0.6,1.0,1.4,1.8,2.2,2.6,3.0")
    parser.add_argument("--ties-density", default="0.2,0.5")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)

    import torch

    from mergezoo.eval import get_benchmark
    from mergezoo.eval.training import quiet_loading

    torch.set_num_threads(args.threads)
    bench = get_benchmark("digits-diffusion", size=args.size)
    started = time.perf_counter()
    zoo = bench.build(out=args.zoo)
    build_s = time.perf_counter() - started
    held_in = [c.name for c in bench.held_in_cells]
    held_out = [c.name for c in bench.held_out_cells]
    seeds = sorted({m.seed for m in zoo.models("expert")})
    base_dir = zoo.model_path("base")
    with quiet_loading():
        model = bench.load_model(base_dir)
    base_state = {k: v.clone() for k, v in bench.module(model).state_dict().items()}

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    base_test = bench.score_cells(model, "test")
    timings["eval_all_cells_test_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    base_val = bench.score_cells(model, "validation", held_in)
    timings["eval_held_in_validation_s"] = round(time.perf_counter() - t0, 2)
    n_images = sum(len(bench.dataset(c, "test")) for c in bench.cells)
    n_images *= bench.spec.params["samples_per_prompt"]

    def load(path: Path) -> Any:
        with quiet_loading():
            return bench.load_model(path)

    experts = {(s, c): load(zoo.model_path("expert", c, seed=s)) for s in seeds for c in held_in}
    own = {(s, c): bench.score_cells(experts[s, c], "test", [c])[c] for s in seeds for c in held_in}
    oracle = {c: bench.score_cells(load(zoo.model_path("oracle", c)), "test", [c])[c]
              for c in held_out}
    multitask = bench.score_cells(load(zoo.model_path("multitask")), "test")

    def normalised(scores: dict[str, float], seed: int) -> dict[str, float]:
        hi = statistics.fmean((scores[c] - base_test[c]) / (own[seed, c] - base_test[c])
                              for c in held_in)
        ho = statistics.fmean((scores[c] - base_test[c]) / (oracle[c] - base_test[c])
                              for c in held_out)
        return {"held_in": hi, "held_out": ho}

    def summary(scores: dict[str, float]) -> dict[str, float]:
        return {"held_in": statistics.fmean(scores[c] for c in held_in),
                "held_out": statistics.fmean(scores[c] for c in held_out)}

    def rows(scores: dict[str, float], seed: int) -> dict[str, float]:
        norm = normalised(scores, seed)
        return {**summary(scores), "norm_held_in": norm["held_in"],
                "norm_held_out": norm["held_out"]}

    grids = {
        "task_arithmetic": [{"lambda": float(x)} for x in args.ta_grid.split(",")],
        "ties": [{"density": float(d), "lambda": float(x)}
                 for d in args.ties_density.split(",") for x in args.ties_lambda.split(",")],
    }
    per_seed: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="calib-diffusion-") as tmp_name:
        tmp = Path(tmp_name)
        for seed in seeds:
            dirs = [zoo.model_path("expert", c, seed=seed) for c in held_in]
            # baselines of this seed: its experts' average and their ensemble
            avg = bench.with_weights(model, _merged_state("average", dirs, base_dir, {}, tmp))
            avg_scores = bench.score_cells(avg, "test")
            ens_scores = bench.score_cells(bench.ensemble([experts[seed, c] for c in held_in]),
                                           "test")
            for name, scores in (("experts_average", avg_scores), ("ensemble", ens_scores)):
                per_seed.setdefault(name, []).append(
                    {"seed": seed, "params": {}, "test": scores, **rows(scores, seed)})
            for method, grid in grids.items():
                tried = []
                for params in grid:
                    state = _merged_state(method, dirs, base_dir, params, tmp)
                    val = bench.score_cells(bench.with_weights(model, state), "validation",
                                            held_in)
                    tried.append((statistics.fmean(val.values()), params, state))
                best_val, best, state = max(tried, key=lambda t: t[0])
                scores = bench.score_cells(bench.with_weights(model, state), "test")
                per_seed.setdefault(method, []).append({
                    "seed": seed, "params": best, "validation_held_in": round(best_val, 4),
                    "grid": [{"params": p, "validation_held_in": round(v, 4)}
                             for v, p, _ in tried],
                    "test": scores, **rows(scores, seed)})
                print(f"seed {seed} {method}: {best} val {best_val:.3f} "
                      f"test held-in {summary(scores)['held_in']:.3f}", file=sys.stderr)
            bench.with_weights(model, base_state)

    def _agg(runs: list[dict[str, Any]]) -> dict[str, Any]:
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
        "methods": {m: {**_agg(runs), "chosen": [r["params"] for r in runs], "runs": runs}
                    for m, runs in per_seed.items()},
    }
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
