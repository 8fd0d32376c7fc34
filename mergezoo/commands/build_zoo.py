"""`mergezoo build-zoo BENCHMARK`: build (or reuse) a benchmark's toy zoo, print sanity numbers.

Example:
    $ mergezoo build-zoo digits-domains --size tiny --json
    {"benchmark": "digits-domains", "size": "tiny", "zoo": "...", "cells": [{"cell": ...}]}
"""

from __future__ import annotations

import argparse
import json

from mergezoo.errors import BenchmarkError
from mergezoo.eval.spec import SIZES

COLUMNS = ("base", "own_expert", "best_expert", "multitask", "oracle", "experts_average")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-zoo", help="build a benchmark's toy zoo (cached) and print its sanity numbers",
        description="Build, deterministically, a built-in benchmark's local zoo: data, pretrained "
        "base, experts (3 seeds) on held-in cells, multitask model, an oracle per held-out cell. "
        "Reuses the cached zoo when the definition is unchanged. Prints the test score of the "
        "base, the cell's own expert (mean over seeds), the best expert, the multitask model, "
        "the oracle and a plain average of the experts on every cell.")
    p.add_argument("benchmark", help="a built-in benchmark (see `mergezoo benchmarks`)")
    p.add_argument("--size", choices=SIZES, default="default",
                   help="tiny: under a minute, for tests; default: a few minutes (default)")
    p.add_argument("--out", metavar="DIR", help="build into DIR instead of the cache folder")
    p.add_argument("--force", action="store_true", help="rebuild even if a zoo is there")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes for the independent trainings (default: "
                   "$MERGEZOO_BUILD_WORKERS, else min(2, cores)); the zoo is the same for any N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f"±{std:.3f}" if std is not None else "")


def run(args: argparse.Namespace) -> int:
    from mergezoo.eval import build_zoo, get_benchmark
    from mergezoo.eval.sanity import compute_sanity

    bench = get_benchmark(args.benchmark, size=args.size)
    if args.workers is not None and args.workers < 1:
        raise BenchmarkError(f"--workers must be at least 1, got {args.workers}")
    zoo = build_zoo(bench, out=args.out, force=args.force, workers=args.workers, progress=True)
    sanity = zoo.sanity or compute_sanity(bench, zoo.manifest["models"], zoo.root)
    info = zoo.build_info
    if args.json:
        print(json.dumps({
            "benchmark": bench.name, "size": bench.size, "zoo": str(zoo.root),
            "definition_hash": zoo.definition_hash, "split": sanity["split"],
            "expert_seeds": sanity["expert_seeds"], "build_seconds": info.get("total_seconds"),
            "cells": sanity["cells"], "summary": sanity["summary"]}, indent=1))
        return 0
    print(f"{bench.name} (size {bench.size}): zoo {zoo.root}")
    print(f"built in {info.get('total_seconds', '?')} s; {len(zoo.models())} models; "
          f"scores: {bench.spec.metric} on the {sanity['split']} split; experts: mean±std over "
          f"seeds {sanity['expert_seeds']}")
    width = max(len(c["cell"]) for c in sanity["cells"])
    header = f"{'cell':<{width}}  held   " + "  ".join(f"{c:>15}" for c in COLUMNS)
    print(header)
    for row in sanity["cells"]:
        vals = [_fmt(row["base"]), _fmt(row["own_expert"], row["own_expert_std"]),
                _fmt(row["best_expert"]), _fmt(row["multitask"]), _fmt(row["oracle"]),
                _fmt(row["experts_average"])]
        print(f"{row['cell']:<{width}}  {'in ' if row['held_in'] else 'out'}    "
              + "  ".join(f"{v:>15}" for v in vals))
    for group, values in sanity["summary"].items():
        print(f"{'mean ' + group:<{width}}         "
              + "  ".join(f"{_fmt(values[c]):>15}" for c in COLUMNS))
    return 0
