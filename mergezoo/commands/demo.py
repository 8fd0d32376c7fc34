"""`mergezoo demo`: the README's main job, offline on a built-in benchmark.

Builds (or reuses) the digits-domains toy zoo, benches the data-free merging methods on it
(hyperparameters tuned on held-in validation data, tested on held-in and held-out cells, beside
the base, the experts, the multitask model and the oracles) and prints the results table.

Example:
    $ mergezoo demo                       # writes ./mergezoo-demo
    $ mergezoo demo --methods ties,task_arithmetic --out /tmp/demo --overwrite
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mergezoo.commands.bench import add_bench_options, config_from, say, write_cards

DEMO_BENCHMARK = "digits-domains"
DEMO_OUT = "mergezoo-demo"
SHOWN_BASELINES = ("base", "experts", "multitask", "oracle", "ensemble", "greedy_soup")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="bench the merging methods on a built-in benchmark, offline",
        description=f"The whole mergezoo path, offline: build (or reuse) the {DEMO_BENCHMARK} "
        "toy zoo, tune every data-free merging method on held-in validation data, test the "
        "tuned merges on held-in and held-out cells beside the base, the experts, the "
        "multitask model and the oracles, and print the table. Same as `mergezoo bench "
        f"{DEMO_BENCHMARK} --no-scaling` with --out {DEMO_OUT}; pass --scaling for the "
        "scaling curves.")
    add_bench_options(p, default_out=DEMO_OUT)
    p.add_argument("--scaling", action="store_true", help="also measure the scaling curves")
    p.set_defaults(func=run)


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" ±{(ci[1] - ci[0]) / 2:.3f}" if ci else "")


def table(results: dict) -> str:
    """The demo's table: baselines first, then the merges, best held-in first."""
    rows = [r for r in results["rows"] if r["kind"] == "baseline"
            and r["method"] in SHOWN_BASELINES]
    rows += sorted((r for r in results["rows"] if r["kind"] == "merge"),
                   key=lambda r: -(r["held_in"] or 0))
    lines = [f"{'model':<18} {'held-in':>14} {'held-out':>14} {'norm. in':>9} {'norm. out':>9}"
             "  hyperparameters (tuned on held-in validation)"]
    for r in rows:
        if r["kind"] == "merge" and not any(x["kind"] == "merge" for x in rows[:rows.index(r)]):
            lines.append("-" * 78)
        hp = ", ".join(f"{k}={v}" for k, v in (r.get("hyperparameters") or {}).items())
        lines.append(f"{r['method']:<18} {_fmt(r['held_in'], r['held_in_ci']):>14} "
                     f"{_fmt(r['held_out'], r['held_out_ci']):>14} "
                     f"{_fmt(r['held_in_normalised']):>9} {_fmt(r['held_out_normalised']):>9}  {hp}")
    return "\n".join(lines)


LEGEND = """\
held-in: mean test {metric} on the {n_in} cells the experts were trained on; held-out: on the
{n_out} combinations none was trained on (± half the 95% CI over expert seeds {seeds}).
norm.: (score - base) / (reference - base) per cell, averaged; the reference is the cell's own
expert (held-in) or its oracle (held-out): 1 = as good as the reference, 0 = the base.
experts: each held-in cell by its own expert, each held-out cell by its closest expert;
multitask: one model trained on all held-in data; oracle: one model per held-out cell."""


def run(args: argparse.Namespace) -> int:
    from mergezoo.eval.bench import run_bench

    config = config_from(args, DEMO_BENCHMARK)
    config.scaling = args.scaling
    out = Path(args.out)
    results = run_bench(config, out, overwrite=args.overwrite, progress=not args.quiet, say=say)
    write_cards(results, out)
    cells = results["cells"]
    print(f"\n{results['benchmark']} (size {results['size']}): merging methods against the "
          "baselines\n")
    print(table(results))
    print("\n" + LEGEND.format(metric=results["metric"], n_in=sum(c["held_in"] for c in cells),
                               n_out=sum(not c["held_in"] for c in cells), seeds=results["seeds"]))
    for check in results["checks"]:
        print(f"{'ok  ' if check['passed'] else 'MISS'} {check['check']}: {check['value']}")
    print(f"\nfull table, the paper's findings and per-cell scores: {out / 'results.md'}")
    print(f"results.json: {out / 'results.json'}; plots: {out / 'plots'}; "
          f"merged models (tuned, seed 0, with model cards): {out / 'models'}")
    return 0
