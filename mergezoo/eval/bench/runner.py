"""`mergezoo bench`: every method in one shared setting, tuned on held-in validation only,
tested once, beside the baselines, with confidence intervals, scaling curves and costs.

The run, for a benchmark whose toy zoo has N held-in experts per seed:
1. baselines on the test split: the base, every expert, the multitask model, each held-out
   cell's oracle, the ensemble of each seed's experts, and a greedy soup per seed (experts
   added best-first while the held-in validation score does not drop);
2. tuning: every point of each method's grid is merged in memory for every seed and scored
   on the held-in cells' VALIDATION split; the best mean over seeds wins (grids are extended
   past a best scale at their edge). Held-out cells and test data are not read here;
3. test: the tuned merge of every seed on every cell's test split;
4. scaling: the first n experts of k seeded orderings, n = 2..N, tuned hyperparameters;
5. cost: the tuned merge of seed 0 through the file-based engine (the model a user gets,
   written to OUT/models/<method>), its wall time and peak memory, and FLOPs of the search.
Finished jobs are recorded in OUT/.bench, so a re-run reuses them and a killed run resumes.

Example:
    >>> from mergezoo.eval.bench import BenchConfig, run_bench                # doctest: +SKIP
    >>> results = run_bench(BenchConfig("digits-domains", size="tiny"), "bench-out")
    >>> [r["method"] for r in results["rows"] if r["kind"] == "merge"][:2]
    ['average', 'breadcrumbs']
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mergezoo.eval.bench import methods as method_grid
from mergezoo.eval.bench.jobs import BenchContext, Executor, Job, LocalExecutor, run_jobs
from mergezoo.eval.bench.store import JobStore, SharedStore, claim_output, eval_cache

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
REPORT_FILE = "results.md"


@dataclass
class BenchConfig:
    """What a bench run compares. `methods` None: every method the benchmark can run."""

    benchmark: str
    size: str = "default"
    methods: list[str] | None = None
    seeds: list[int] | None = None
    orderings: int = 3            # scaling: seeded orderings of the experts
    scaling: bool = True
    write_models: bool = True     # the tuned merge of seed 0 of each method in OUT/models
    device: str = "cpu"
    workers: int = 1

    def run_key(self) -> dict[str, Any]:
        """What makes two runs the same run (their finished jobs are interchangeable)."""
        out = asdict(self)
        out.pop("workers")
        return out


@dataclass
class _Run:
    """One bench run's state while it runs."""

    config: BenchConfig
    bench: Any
    context: BenchContext
    executor: Executor
    store: JobStore
    seeds: list[int]
    progress: bool
    say: Callable[[str], None]
    shared: JobStore | None = None  # zoo-only evaluations, shared by every run on the zoo
    n_experts: int = 0
    cells: list[str] = field(default_factory=list)
    held_in: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)

    def jobs(self, jobs: list[Job], desc: str, *,
             zoo_only: bool = False) -> dict[str, dict[str, Any]]:
        """Run `jobs` (or reuse them). `zoo_only`: jobs that depend on the zoo alone (zoo
        models, their ensembles, the greedy soups' plain averages: nothing a run's arguments
        choose), also looked up in and recorded to the zoo's shared evaluation cache."""
        store = (SharedStore(self.store, self.shared) if zoo_only and self.shared is not None
                 else self.store)  # not `and self.shared`: an empty store is falsy
        return run_jobs(self.executor, store, jobs, desc=desc, progress=self.progress)


def run_bench(config: BenchConfig, out: str | Path, *, overwrite: bool = False,
              progress: bool = True, say: Callable[[str], None] | None = None,
              executor: Executor | None = None) -> dict[str, Any]:
    """Run a bench and write results.json, results.md and plots into `out`; return the
    results. `say` receives one line per step (the CLI prints them)."""
    from mergezoo.eval import build_zoo, get_benchmark

    say = say or log.info
    bench = get_benchmark(config.benchmark, size=config.size)
    n_experts = len(bench.held_in_cells)
    methods = method_grid.bench_methods(config.methods, n_experts)  # refuse before any work
    out = Path(out).expanduser()
    reused = claim_output(out, config.run_key(), overwrite=overwrite)
    if reused:
        say(f"reusing the finished evaluations in {out}")
    say(f"building (or reusing) the {bench.name} zoo, size {bench.size} ...")
    zoo = build_zoo(bench, progress=progress)
    seeds = config.seeds if config.seeds is not None else zoo.seeds()
    missing = sorted(set(seeds) - set(zoo.seeds()))
    if missing:
        from mergezoo.errors import BenchmarkError

        raise BenchmarkError(f"the {bench.name} zoo has no experts with seeds {missing} "
                             f"(it has seeds {zoo.seeds()})")
    context = BenchContext(bench, zoo.root, device=config.device)
    if executor is None:
        from mergezoo.eval.bench.jobs import ProcessExecutor

        executor = (ProcessExecutor(context, config.workers) if config.workers > 1
                    else LocalExecutor(context))
    run = _Run(config=config, bench=bench, context=context, executor=executor,
               store=JobStore(out / ".bench"), seeds=seeds, progress=progress, say=say,
               shared=eval_cache(zoo.root, config.device),
               n_experts=n_experts, cells=[c.name for c in bench.cells],
               held_in=[c.name for c in bench.held_in_cells],
               held_out=[c.name for c in bench.held_out_cells])
    start = time.perf_counter()
    try:
        from mergezoo.eval.bench.results import assemble

        say(f"{len(methods)} methods, {len(seeds)} expert seeds, {n_experts} experts each")
        baselines = _baselines(run)
        tuned = _tune(run, methods)
        tested = _test(run, {name: t["best"] for name, t in tuned.items()})
        scaling = ({m.name: _scaling(run, m, tuned[m.name]["best"]) for m in methods}
                   if config.scaling else {})
        costs = {m.name: _cost(run, m, tuned[m.name], out) for m in methods}
        results = assemble(run, methods, baselines, tuned, tested, scaling, costs, zoo)
        results["wall_seconds"] = round(time.perf_counter() - start, 2)
    finally:
        run.store.close()
        if run.shared is not None:
            run.shared.close()
        executor.close()
    from mergezoo.eval.bench.report import write_outputs

    write_outputs(results, out)
    say(f"done in {results['wall_seconds']:.0f} s: {out / RESULTS_FILE}, {out / REPORT_FILE}")
    return results


# -- the steps -------------------------------------------------------------------------------
def _model_job(name: str, split: str, cells: list[str]) -> Job:
    return Job("model", seed=None, split=split, cells=tuple(cells), model=name)


def _baselines(run: _Run) -> dict[str, Any]:
    """Scores of the base, experts, multitask, oracles, ensembles and greedy soups."""
    zoo, test = run.context.zoo, "test"
    jobs = {"base": _model_job(zoo.model_path("base").name, test, run.cells)}
    experts: dict[int, list[Job]] = {}
    for seed in run.seeds:
        experts[seed] = [_model_job(p.name, test, run.cells) for p in run.context.experts(seed)]
    multitask = [_model_job(m.path.name, test, run.cells) for m in zoo.models("multitask")]
    oracles = {c: _model_job(m.path.name, test, [c])
               for c in run.held_out for m in zoo.models("oracle", c)[:1]}
    everything = [jobs["base"], *multitask, *oracles.values()]
    everything += [j for js in experts.values() for j in js]
    ensembles = {}
    if run.bench.has_ensemble:
        ensembles = {s: Job("ensemble", seed=s, split=test, cells=tuple(run.cells),
                            experts=tuple(range(run.n_experts))) for s in run.seeds}
    else:
        run.say(f"{run.bench.name} defines no ensemble of its models: no ensemble baseline")
    everything += list(ensembles.values())
    done = run.jobs(everything, "baselines", zoo_only=True)
    scores = lambda job: done[job.key]["scores"]  # noqa: E731
    return {
        "base": scores(jobs["base"]),
        "experts": {s: [scores(j) for j in js] for s, js in experts.items()},
        "multitask": [scores(j) for j in multitask],
        "oracle": {c: scores(j)[c] for c, j in oracles.items()},
        "ensemble": {s: scores(j) for s, j in ensembles.items()},
        "greedy_soup": {s: _greedy_soup(run, s) for s in run.seeds},
    }


def _merge_job(method: str, params: tuple, seed: int, experts: tuple[int, ...],
               split: str, cells: list[str]) -> Job:
    return Job("merge", seed=seed, split=split, cells=tuple(cells), method=method,
               params=params, experts=experts)


def _mean(scores: dict[str, float], cells: list[str]) -> float:
    return sum(scores[c] for c in cells) / len(cells)


def _greedy_soup(run: _Run, seed: int) -> dict[str, Any]:
    """Wortsman et al.'s greedy soup on held-in validation: experts sorted by their own
    validation score, each added to the uniform average if the score does not drop."""
    def validation(experts: tuple[int, ...]) -> float:
        job = _merge_job("average", (), seed, experts, "validation", run.held_in)
        done = run.jobs([job], f"greedy soup, seed {seed}", zoo_only=True)
        return _mean(done[job.key]["scores"], run.held_in)

    alone = {i: validation((i,)) for i in range(run.n_experts)}
    order = sorted(alone, key=lambda i: -alone[i])
    soup, best = [order[0]], alone[order[0]]
    for i in order[1:]:
        score = validation(tuple(sorted(soup + [i])))
        if score >= best:
            soup, best = sorted(soup + [i]), score
    test = _merge_job("average", (), seed, tuple(soup), "test", run.cells)
    return {"experts": soup, "validation": best,
            "scores": run.jobs([test], "greedy soup", zoo_only=True)[test.key]["scores"]}


def _tune(run: _Run, methods: list[Any]) -> dict[str, dict[str, Any]]:
    """Grid search of every method on held-in validation (mean over seeds); never reads
    held-out or test data. The grid points of all methods go to the executor together, round
    by round (a round extends the grids whose best scale is at their edge), so the workers
    never wait for one method's last job."""
    everyone = tuple(range(run.n_experts))
    points = {m.name: method_grid.grid_points(m) for m in methods}
    scored: dict[str, dict[tuple, float]] = {m.name: {} for m in methods}
    best: dict[str, tuple] = {}
    # nothing to choose: no evaluation spent on it
    active = [m for m in methods if len(points[m.name]) > 1]
    for _ in range(1 + method_grid.MAX_EXTENSIONS):
        if not active:
            break
        jobs = {(m.name, p, s): _merge_job(m.name, p, s, everyone, "validation", run.held_in)
                for m in active for p in points[m.name] if p not in scored[m.name]
                for s in run.seeds}
        done = run.jobs(list(jobs.values()), "tune " + (active[0].name if len(active) == 1
                                                        else f"{len(active)} methods"))
        still = []
        for m in active:
            name = m.name
            for p in points[name]:
                if p not in scored[name]:
                    scored[name][p] = sum(_mean(done[jobs[name, p, s].key]["scores"], run.held_in)
                                          for s in run.seeds) / len(run.seeds)
            # the first of equals, in grid order
            best[name] = max(points[name], key=lambda p: scored[name][p])
            more = [p for p in method_grid.extension(m, points[name], best[name])
                    if p not in scored[name]]
            if more:
                points[name] = points[name] + more
                still.append(m)
        active = still
    out = {}
    for m in methods:
        name = m.name
        if len(points[name]) == 1 and not scored[name]:
            out[name] = {"best": points[name][0], "validation": None, "evaluations": 0,
                         "grid": [], "best_at_edge": False}
            continue
        grid = [p for p in points[name] if p in scored[name]]
        out[name] = {"best": best[name], "validation": scored[name][best[name]],
                     "evaluations": len(scored[name]) * len(run.seeds),
                     "grid": [{"hyperparameters": dict(p), "validation": round(scored[name][p], 6)}
                              for p in grid],
                     "best_at_edge": bool(method_grid.extension(m, grid, best[name]))}
    return out


def _test(run: _Run, best: dict[str, tuple]) -> dict[str, dict[int, dict[str, float]]]:
    """Every method's tuned merge of every seed on every cell's test split, in one batch."""
    everyone = tuple(range(run.n_experts))
    jobs = {(name, s): _merge_job(name, params, s, everyone, "test", run.cells)
            for name, params in best.items() for s in run.seeds}
    done = run.jobs(list(jobs.values()), "test")
    return {name: {s: done[jobs[name, s].key]["scores"] for s in run.seeds} for name in best}


def orderings(n_experts: int, k: int) -> list[list[int]]:
    """k seeded random orderings of the experts (ordering i shuffled with seed i)."""
    out = []
    for i in range(k):
        order = list(range(n_experts))
        random.Random(i).shuffle(order)
        out.append(order)
    return out


def _scaling(run: _Run, method: Any, params: tuple) -> list[dict[str, Any]]:
    """Held-in (the merged experts' own cells) and held-out scores of the first n experts of
    each ordering, n = 2..N; ordering i uses the experts of seed i mod (number of seeds)."""
    points = []
    for i, order in enumerate(orderings(run.n_experts, run.config.orderings)):
        seed = run.seeds[i % len(run.seeds)]
        for n in range(max(2, method.needs.min_models), run.n_experts + 1):
            if method.needs.max_models is not None and n > method.needs.max_models:
                continue
            chosen = tuple(sorted(order[:n]))
            points.append((i, n, seed, chosen,
                           _merge_job(method.name, params, seed, chosen, "test", run.cells)))
    done = run.jobs([p[-1] for p in points], f"scaling {method.name}")
    rows = []
    for i, n, seed, chosen, job in points:
        scores = done[job.key]["scores"]
        own = [run.held_in[j] for j in chosen]
        rows.append({"ordering": i, "n_models": n, "seed": seed, "experts": list(chosen),
                     "held_in": _mean(scores, own), "held_out": _mean(scores, run.held_out)})
    return rows


def _cost(run: _Run, method: Any, tuned: dict[str, Any], out: Path) -> dict[str, Any]:
    """Wall time and peak memory of the tuned merge through the file-based engine (seed 0's
    experts; written to OUT/models/<method> when `write_models`), FLOPs of the search."""
    from mergezoo.eval.bench.cost import flops_per_evaluation, measure_merge

    seed = run.seeds[0]
    key = f"cost|{method.name}|{tuned['best']!r}|seed={seed}|write={run.config.write_models}"
    if key not in run.store:
        target = out / "models" / method.name
        measured = measure_merge(method.name, dict(tuned["best"]),
                                 run.context.zoo.model_path("base"), run.context.experts(seed),
                                 target, keep=run.config.write_models, device=run.config.device)
        if run.config.write_models:
            measured["model_dir"] = str(Path("models") / method.name)
        run.store.put(key, measured)
    cost = dict(run.store.get(key))
    # zoo-only (the base on held-in validation): counted once per zoo
    shared = SharedStore(run.store, run.shared) if run.shared is not None else run.store
    per_eval = flops_per_evaluation(run.context, run.held_in, shared)
    cost["tuning_evals"] = tuned["evaluations"]
    cost["flops"] = per_eval * tuned["evaluations"] if per_eval is not None else None
    cost["statistics_flops"] = 0  # data-free methods compute no statistics
    return cost
