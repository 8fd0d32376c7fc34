"""`mergezoo demo`: the whole path on a built-in benchmark, offline.

Builds (or reuses) the digits-domains toy zoo, finds its experts by tag in the local zoo,
merges them with several methods, and scores every merge on the held-in and held-out cells,
beside the base and the multitask model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DEMO_METHODS = ["average", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties",
                "consensus", "model_stock", "multislerp"]
# Hyperparameters a user would start from (no tuning here; `mergezoo bench` tunes).
DEMO_PARAMS = {"task_arithmetic": {"lambda": 0.4}, "ties": {"density": 0.2, "lambda": 1.0},
               "dare_ties": {"density": 0.3, "lambda": 0.5, "normalize": True},
               "breadcrumbs_ties": {"lambda": 0.5, "normalize": True},
               "consensus": {"lambda": 0.4}}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="build a toy zoo, merge its experts with several methods and score them",
        description="The whole mergezoo path, offline: build (or reuse) the digits-domains "
        "benchmark's toy zoo, find its experts by tag, merge them with several methods, and "
        "score every merge on held-in and held-out cells beside the base and the multitask "
        "model.")
    p.add_argument("--size", default="tiny", choices=["tiny", "default"],
                   help="benchmark size (tiny: about a minute; default: a few minutes)")
    p.add_argument("--methods", default=",".join(DEMO_METHODS),
                   help=f"comma-separated methods (default: {','.join(DEMO_METHODS)})")
    p.add_argument("--out", help="keep the merged models here (default: a temporary folder)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.set_defaults(func=run)


def _row(name: str, scores: dict[str, float], bench, seconds: float | None = None) -> str:
    summary = bench.summarize(scores)
    secs = f"{seconds:8.2f}" if seconds is not None else f"{'-':>8}"
    return f"{name:18} {summary['held_in']:8.3f} {summary['held_out']:9.3f} {secs}"


def run(args: argparse.Namespace) -> int:
    from mergezoo.eval import get_benchmark
    from mergezoo.merge import merge_models
    from mergezoo.zoo.search import find_experts

    bench = get_benchmark("digits-domains", size=args.size)
    print(f"building (or reusing) the {bench.name} toy zoo, size {args.size} ...", file=sys.stderr)
    zoo = bench.build()
    experts = find_experts(tag=[f"mergezoo-bench:{bench.name}", "role:expert", "seed:0"],
                           zoo=zoo.root)
    base = zoo.model_path("base")
    print(f"found {len(experts)} experts tagged role:expert in {zoo.root}", file=sys.stderr)
    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mergezoo-demo-"))
    print(f"\n{'model':18} {'held-in':>8} {'held-out':>9} {'merge s':>8}   (test accuracy)")
    print(_row("base", bench.evaluate(base), bench))
    print(_row("multitask", bench.evaluate(zoo.model_path("multitask")), bench))
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        result = merge_models(method, experts, base=base, out_dir=out_root / method,
                              params=DEMO_PARAMS.get(method, {}), device=args.device,
                              overwrite=True, progress=False)
        print(_row(method, bench.evaluate(result.out_dir), bench, result.seconds), flush=True)
    print(f"\nmerged models in {out_root}", file=sys.stderr)
    return 0
