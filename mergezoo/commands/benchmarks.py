"""`mergezoo benchmarks`: the built-in benchmarks (and shipped YAML definitions) with their
factors and cells; `--plan` shows what a YAML definition would fetch.

Example:
    $ mergezoo benchmarks
    $ mergezoo benchmarks digits-domains --yaml
    $ mergezoo benchmarks clip-vit-b32-eight-tasks --plan
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "benchmarks", help="list the compositional benchmarks, their factors and cells",
        description="List the built-in benchmarks and shipped YAML definitions: factors, cells, "
        "held-in cells. Give a name (or a YAML path) to show one.")
    p.add_argument("name", nargs="?", help="one benchmark, or a path to a YAML definition")
    p.add_argument("--size", choices=("tiny", "default"), default="default")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--yaml", action="store_true", help="print the definition as YAML")
    p.add_argument("--plan", action="store_true",
                   help="for a YAML definition: the datasets and experts it would fetch")
    p.set_defaults(func=run)


def _describe(bench) -> dict:
    return {"name": bench.name, "task": bench.spec.task, "metric": bench.spec.metric,
            "description": bench.spec.description, "factors": bench.factors,
            "cells": [{"cell": c.name, "held_in": c.held_in, **c.factors} for c in bench.cells],
            "held_in": [c.name for c in bench.held_in_cells],
            "kind": "built-in" if getattr(bench, "registered_name", None) else "yaml"}


def run(args: argparse.Namespace) -> int:
    from mergezoo.errors import BenchmarkError
    from mergezoo.eval import get_benchmark, list_benchmarks, shipped_definitions

    names = [args.name] if args.name else list_benchmarks() + list(shipped_definitions())
    benches = [get_benchmark(n, size=args.size) for n in names]
    if args.plan:
        if len(benches) != 1 or not hasattr(benches[0], "plan"):
            raise BenchmarkError("--plan needs one YAML-defined benchmark")
        plan = benches[0].plan()
        if args.json:
            from dataclasses import asdict
            print(json.dumps(asdict(plan), indent=1))
        else:
            print("\n".join(plan.describe()))
        return 0
    if args.yaml:
        print("\n---\n".join(b.to_yaml() for b in benches), end="")
        return 0
    if args.json:
        print(json.dumps([_describe(b) for b in benches], indent=1))
        return 0
    for b in benches:
        d = _describe(b)
        print(f"{b.name} ({d['kind']}, {b.spec.task}, metric {b.spec.metric}): "
              f"{len(b.cells)} cells, {len(b.held_in_cells)} held in")
        if b.spec.description:
            print(f"  {b.spec.description}")
        for factor, values in b.factors.items():
            print(f"  {factor}: {', '.join(values)}")
        print(f"  held-in cells: {', '.join(d['held_in'])}")
        held_out = [c.name for c in b.held_out_cells]
        print(f"  held-out cells: {', '.join(held_out)}")
    return 0
