"""`mergezoo bench BENCHMARK`: compare merging methods on a compositional benchmark.

Example:
    $ mergezoo bench digits-domains --methods ties,task_arithmetic --out bench-out
    $ cat bench-out/results.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mergezoo.errors import BenchmarkError
from mergezoo.eval.spec import SIZES


def parse_list(text: str | None, what: str, cast=str) -> list | None:
    """A comma-separated option as a list (None when not given); a bad item names itself."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise BenchmarkError(f"--{what} is empty")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise BenchmarkError(f"--{what}: {text!r} is not a comma-separated list of "
                             f"{'integers' if cast is int else 'names'}") from None


def add_bench_options(p: argparse.ArgumentParser, *, default_out: str | None) -> None:
    """Options that `bench` and `demo` share."""
    p.add_argument("--methods", metavar="M1,M2",
                   help="comma-separated merge methods (default: every registered data-free "
                   "method the benchmark can run; see `mergezoo methods`)")
    p.add_argument("--size", choices=SIZES, default="default",
                   help="benchmark size: tiny (tests, about a minute) or default")
    p.add_argument("--out", metavar="DIR", default=default_out,
                   help="results folder: results.json, results.md, plots/, models/"
                   + (f" (default: {default_out})" if default_out else ""))
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it holds another run or other files (a folder of "
                   "the same run is reused: finished evaluations are kept)")
    p.add_argument("--no-scaling", action="store_true",
                   help="skip the scaling curves (merges of the first n experts)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes for the evaluations (default 1)")
    p.add_argument("--device", default="cpu", help="where merges run: cpu (default) or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="compare merging methods on a compositional benchmark",
        description="Build (or reuse) the benchmark's zoo; tune every method's hyperparameters "
        "on held-in VALIDATION data (held-out data is read only by the final test); score the "
        "tuned merges on every cell's test split beside the baselines (base, experts, closest "
        "expert, ensemble, multitask, oracles, greedy soup), with 95%% confidence intervals "
        "over expert seeds, normalised scores, scaling curves (first n experts of seeded "
        "orderings) and costs. Writes results.json, results.md, plots/ and the tuned merged "
        "models (models/<method>) into --out. Re-running with the same arguments reuses "
        "finished evaluations; an interrupted run resumes.")
    p.add_argument("benchmark", help="a benchmark (see `mergezoo benchmarks`)")
    p.add_argument("--seeds", metavar="0,1,2",
                   help="expert seeds to use (default: every seed in the zoo)")
    p.add_argument("--orderings", type=int, default=3, metavar="K",
                   help="seeded orderings of the experts for the scaling curves (default 3)")
    add_bench_options(p, default_out=None)
    p.set_defaults(func=run)


def config_from(args: argparse.Namespace, benchmark: str):
    from mergezoo.eval.bench import BenchConfig

    if args.workers < 1:
        raise BenchmarkError(f"--workers must be at least 1, got {args.workers}")
    orderings = getattr(args, "orderings", 3)
    if orderings < 1:
        raise BenchmarkError(f"--orderings must be at least 1, got {orderings}")
    return BenchConfig(benchmark=benchmark, size=args.size,
                       methods=parse_list(args.methods, "methods"),
                       seeds=parse_list(getattr(args, "seeds", None), "seeds", int),
                       orderings=orderings, scaling=not args.no_scaling, device=args.device,
                       workers=args.workers)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def write_cards(results: dict, out: Path) -> list[Path]:
    """A model card (with the run's results and plots) for every tuned merge the bench wrote
    to OUT/models/<method>, so each can be pushed as it is (`mergezoo push`)."""
    from mergezoo.model_cards import write_card

    written = []
    for row in results["rows"]:
        model_dir = (row.get("cost") or {}).get("model_dir") if row["kind"] == "merge" else None
        if model_dir:
            written.append(write_card(out / model_dir, out / "results.json"))
    return written


def run(args: argparse.Namespace) -> int:
    from mergezoo.eval.bench import run_bench

    config = config_from(args, args.benchmark)
    out = Path(args.out or f"bench-{args.benchmark}-{args.size}")
    results = run_bench(config, out, overwrite=args.overwrite, progress=not args.quiet, say=say)
    write_cards(results, out)
    print((out / "results.md").read_text())
    failed = [c["check"] for c in results["checks"] if not c["passed"]]
    if failed:
        say("note: this benchmark run misses the paper's regime on: " + "; ".join(failed))
    return 0
