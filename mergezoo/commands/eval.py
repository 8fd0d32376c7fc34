"""`mergezoo eval MODEL --benchmark B`: score a model folder or Hub repo on a benchmark's cells.

Example:
    $ mergezoo eval bench-out/models/ties --benchmark digits-domains --json
"""

from __future__ import annotations

import argparse
import json

from mergezoo.eval.spec import SIZES, SPLITS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="score a model (folder or Hub repo ID) on a benchmark's cells",
        description="Check that MODEL fits the benchmark (architecture, tensor names and "
        "shapes, head size, vocabulary, adapter base: read from its config and safetensors "
        "headers before any weight is loaded), then score it on the benchmark's cells and "
        "print each cell and the held-in / held-out means.")
    p.add_argument("model", help="a local model folder, org/name or org/name@revision")
    p.add_argument("--benchmark", "-b", required=True, help="see `mergezoo benchmarks`")
    p.add_argument("--size", choices=SIZES, default="default", help="benchmark size")
    p.add_argument("--cells", metavar="C1,C2", help="only these cells (default: all)")
    p.add_argument("--split", choices=SPLITS, default="test", help="data split (default test)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept .bin/.pt checkpoints (loaded with weights_only=True)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergezoo.commands.bench import parse_list
    from mergezoo.eval import get_benchmark
    from mergezoo.eval.evaluation import evaluate_model

    bench = get_benchmark(args.benchmark, size=args.size)
    result = evaluate_model(args.model, bench, split=args.split,
                            cells=parse_list(args.cells, "cells"), allow_pickle=args.allow_pickle,
                            progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.model} on {bench.name} (size {bench.size}), {result['metric']} on the "
          f"{args.split} split")
    width = max(len(c) for c in result["scores"])
    for cell, score in result["scores"].items():
        held = "in " if bench.cell(cell).held_in else "out"
        print(f"  {cell:<{width}}  {held}  {score:.3f}")
    for key in ("held_in", "held_out"):
        if result[key] is not None:
            print(f"  {'mean ' + key.replace('_', '-'):<{width}}       {result[key]:.3f}")
    return 0
