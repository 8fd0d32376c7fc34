"""`mergezoo methods`: the merge methods, their hyperparameters and what each needs."""

from __future__ import annotations

import argparse
import json



def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "methods", help="list merge methods and their practical requirements",
        description="The table of merge methods: paper, hyperparameters with defaults and "
        "ranges, and what each needs (base model, statistics, data).")
    p.add_argument("name", nargs="?", help="show one method in detail")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _describe(m) -> dict:
    return {
        "name": m.name, "aliases": list(m.aliases), "paper": m.paper, "summary": m.summary,
        "output": "task vector" if m.returns == "delta" else "weights",
        "requires": m.needs.describe(), "random": m.random,
        "hyperparameters": {
            h.name: {"default": h.default, "per_model": h.per_model, "help": h.help,
                     "range": str(h.interval) if h.interval else None,
                     "choices": list(h.kind) if isinstance(h.kind, tuple) else None}
            for h in m.hyperparameters.values()},
        "grid": m.grid,
    }


def _hp_text(m) -> str:
    return ", ".join(f"{h.name}={h.default}" + ("*" if h.per_model else "")
                     for h in m.hyperparameters.values()) or "-"


def run(args: argparse.Namespace) -> int:
    from mergezoo.merge import list_methods

    methods = list_methods()
    if args.name:
        from mergezoo.merge import get_method

        methods = [get_method(args.name)]
    if args.json:
        print(json.dumps([_describe(m) for m in methods], indent=2))
        return 0
    if args.name:
        m = methods[0]
        d = _describe(m)
        print(f"{m.name}: {d['summary']}\n  paper: {m.paper}\n  output: {d['output']}")
        print(f"  needs: base model={m.needs.base}, statistics={m.needs.statistics or 'none'}, "
              f"data={m.needs.data or 'none'}")
        for name, h in d["hyperparameters"].items():
            extra = f" in {h['range']}" if h["range"] else ""
            extra += f" one of {h['choices']}" if h["choices"] else ""
            scope = " (per model)" if h["per_model"] else ""
            print(f"  {name} = {h['default']}{extra}{scope}  {h['help']}")
        print(f"  search grid: {m.grid or 'none'}")
        return 0
    rows = [("method", "base model", "statistics", "data", "hyperparameters (* per model)", "paper")]
    for m in methods:
        rows.append((m.name, {True: "yes", False: "no"}.get(m.needs.base, "optional"), m.needs.statistics or "-",
                     m.needs.data or "-", _hp_text(m), m.paper))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    print("\nLiNeS layer scaling (--lines ALPHA,BETA, https://arxiv.org/abs/2410.17146) applies to "
          "every method whose output is a task vector: "
          + ", ".join(m.name for m in methods if m.returns == "delta") + ".")
    return 0
