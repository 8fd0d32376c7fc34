"""The bench's unit of work and the executors that run it.

A `Job` is one independent evaluation: merge a configuration (or load a zoo model, or build
the experts' ensemble) and score it on some cells of one split. It carries everything that
defines it, so it can run in any process that can open the benchmark's zoo: `LocalExecutor`
runs jobs here, `ProcessExecutor` in worker processes, and a distributed executor only has
to implement `Executor.map`. A process keeps what several jobs share (the loaded template
model, each seed's task vectors) in its `BenchContext`.

Example:
    >>> job = Job("merge", seed=0, split="validation", cells=("group0-inverted",),
    ...           method="ties", params=(("density", 0.2), ("lambda", 1.0)), experts=(0, 1, 2))
    >>> job.key
    'merge|ties|density=0.2,lambda=1.0|seed=0|experts=0,1,2|validation|group0-inverted'
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

from mergezoo.errors import BenchmarkError


@dataclass(frozen=True)
class Job:
    """One evaluation. kind: "merge" (`method` with `params` over `experts`, indices into the
    seed's experts in held-in cell order), "model" (the zoo model folder named `model`) or
    "ensemble" (the seed's `experts`, outputs averaged)."""

    kind: str
    seed: int | None
    split: str
    cells: tuple[str, ...]
    method: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    experts: tuple[int, ...] = ()
    model: str | None = None

    @property
    def key(self) -> str:
        what = {"merge": f"{self.method}|" + ",".join(f"{k}={v!r}" for k, v in self.params),
                "model": str(self.model), "ensemble": "ensemble"}[self.kind]
        return "|".join([self.kind, what, f"seed={self.seed}",
                         "experts=" + ",".join(map(str, self.experts)), self.split,
                         ",".join(self.cells)])


class BenchContext:
    """What the jobs of one benchmark share inside one process: the zoo, the template model
    that merged weights are loaded into, and each seed's task vectors (computed once)."""

    def __init__(self, benchmark: Any, zoo_root: str | Path, device: str = "cpu") -> None:
        from mergezoo.eval.zoo_cache import BenchmarkZoo

        self.benchmark = benchmark
        self.zoo = BenchmarkZoo(zoo_root)
        self.device = device
        self._template: Any = None
        self._task_vectors: dict[int, Any] = {}

    def experts(self, seed: int) -> list[Path]:
        """The seed's expert folders, in held-in cell order."""
        out = []
        for cell in self.benchmark.held_in_cells:
            found = self.zoo.models("expert", cell.name, seed)
            if not found:
                raise BenchmarkError(f"zoo {self.zoo.root.name} has no expert for cell "
                                     f"{cell.name!r} with seed {seed}")
            out.append(found[0].path)
        return out

    def task_vectors(self, seed: int) -> Any:
        if seed not in self._task_vectors:
            from mergezoo.merge import TaskVectors

            experts = self.experts(seed)
            self._task_vectors[seed] = TaskVectors.from_folders(
                self.zoo.model_path("base"), experts, labels=[p.name for p in experts],
                device=self.device)
        return self._task_vectors[seed]

    def template(self) -> Any:
        """The base model, loaded once; merged weights replace its weights for each job."""
        if self._template is None:
            self._template = self.benchmark.load_model(self.zoo.model_path("base"))
        return self._template

    def zoo_model(self, name: str) -> Any:
        """A zoo model ready to score: a full model's single weights file is loaded into the
        template (`with_weights`, much faster than `from_pretrained` for a tiny model); an
        adapter, or anything else, through the benchmark's `load_model`."""
        from mergezoo.merge.sources import find_weight_files

        folder = self.zoo.root / name
        if (folder / "adapter_config.json").exists():
            return self.benchmark.load_model(folder)
        _, files, pickled = find_weight_files(folder)
        if len(files) != 1 or pickled:
            return self.benchmark.load_model(folder)
        from safetensors.torch import load_file

        return self.benchmark.with_weights(self.template(), load_file(str(files[0])))

    def merged_model(self, job: Job) -> Any:
        """The merged model of a "merge" job, in memory (the template with merged weights)."""
        tv = self.task_vectors(job.seed).select(list(job.experts))
        weights = tv.merge(job.method, dict(job.params))
        return self.benchmark.with_weights(self.template(), weights)

    def run(self, job: Job) -> dict[str, Any]:
        """Run one job: {"scores": {cell: score}, "seconds": wall time}."""
        from mergezoo.eval.training import quiet_loading, torch_threads

        bench = self.benchmark
        start = time.perf_counter()
        with torch_threads(bench.eval_threads), quiet_loading():
            if job.kind == "merge":
                model = self.merged_model(job)
            elif job.kind == "model":
                model = self.zoo_model(job.model)
            elif job.kind == "ensemble":
                experts = self.experts(job.seed)
                model = bench.ensemble([bench.load_model(experts[i]) for i in job.experts])
            else:
                raise BenchmarkError(f"unknown job kind {job.kind!r}")
            scores = bench.score_cells(model, job.split, job.cells)
        return {"scores": scores, "seconds": time.perf_counter() - start}


class Executor(Protocol):
    """Runs jobs and yields (job, result) pairs as they finish, in any order."""

    def map(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any]]]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Runs every job in this process, one after the other."""

    def __init__(self, context: BenchContext) -> None:
        self.context = context

    def map(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any]]]:
        for job in jobs:
            yield job, self.context.run(job)

    def close(self) -> None:
        pass


def _run_in_worker(item: tuple[Any, str, str, Job]) -> dict[str, Any]:
    """A job in a worker process: the process's own BenchContext, made on its first job."""
    from mergezoo.eval.training import resident

    benchmark, zoo_root, device, job = item
    context = resident(("bench-context", benchmark.name, benchmark.size, zoo_root, device),
                       lambda: BenchContext(benchmark, zoo_root, device))
    return context.run(job)


class ProcessExecutor:
    """Runs jobs in `workers` worker processes (`mergezoo.eval.training.JobRunner`), each
    with its own BenchContext; results are the same as `LocalExecutor`'s."""

    def __init__(self, context: BenchContext, workers: int) -> None:
        from mergezoo.eval.training import JobRunner

        self.context = context
        # started now: the workers import torch and friends while this process goes on
        self.runner = JobRunner(workers).start()

    def map(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any]]]:
        ctx = self.context
        futures = [(job, self.runner.submit(_run_in_worker, (ctx.benchmark, str(ctx.zoo.root),
                                                               ctx.device, job)))
                   for job in jobs]
        for job, future in futures:
            yield job, future.result()

    def close(self) -> None:
        self.runner.close()


def run_jobs(executor: Executor, store: Any, jobs: Iterable[Job], *, desc: str,
             progress: bool = True) -> dict[str, dict[str, Any]]:
    """Results of `jobs` by key: from `store` where a previous run finished them, else run by
    `executor` and recorded in `store` as each one finishes."""
    from tqdm.auto import tqdm

    jobs = list(dict.fromkeys(jobs))  # unique, in order
    todo = [j for j in jobs if j.key not in store]
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="eval",
              disable=not progress, leave=False) as bar:
        for job, result in executor.map(todo):
            store.put(job.key, result)
            bar.update(1)
    return {j.key: store.get(j.key) for j in jobs}
