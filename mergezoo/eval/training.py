"""Helpers shared by the built-in benchmarks' trainers: determinism, recipes, and a runner
that spreads independent jobs (trainings, evaluations) over worker processes.

Example:
    >>> with deterministic(seed=3) as gen:                                 # doctest: +SKIP
    ...     order = torch.randperm(100, generator=gen)
    >>> TrainRecipe(lr=1e-3, epochs=5, batch_size=32, seed=0).to_dict()["lr"]
    0.001
    >>> with JobRunner(workers=2) as jobs:                                 # doctest: +SKIP
    ...     jobs.map(train_one, [job_a, job_b, job_c])   # results in job order
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: environment variable that sets the default number of build worker processes
WORKERS_ENV = "MERGEZOO_BUILD_WORKERS"


@dataclass(frozen=True)
class ZooFit:
    """One fine-tune of a toy zoo's base: its training schedule (`kind`: "expert" or
    "multitask"), the role it is saved as, the cells it trains on, its seed, and its cell
    (None for the multitask model)."""

    kind: str
    role: str
    cells: tuple[str, ...]
    seed: int
    cell: str | None


def zoo_fits(held_in: list[str], held_out: list[str], seeds: list[int]) -> list[ZooFit]:
    """Every fine-tune of a toy zoo, in manifest order: the experts (seed by seed, cell by
    cell), the multitask model, one oracle per held-out cell.

    Example:
        >>> [f.role for f in zoo_fits(["a", "b"], ["c"], [0])]
        ['expert', 'expert', 'multitask', 'oracle']
    """
    return ([ZooFit("expert", "expert", (c,), seed, c) for seed in seeds for c in held_in]
            + [ZooFit("multitask", "multitask", tuple(held_in), 0, None)]
            + [ZooFit("expert", "oracle", (c,), 0, c) for c in held_out])


@dataclass(frozen=True)
class TrainRecipe:
    """How a zoo model was trained; written verbatim into its model card."""

    lr: float
    epochs: int
    batch_size: int
    seed: int = 0
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    frozen: tuple[str, ...] = ()          # parameter-name prefixes kept frozen
    trained_on: tuple[str, ...] = ()      # cell names
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["frozen"] = list(self.frozen)
        out["trained_on"] = list(self.trained_on)
        extra = out.pop("extra")
        out.update(extra)
        return out


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """The merge engine's `mergezoo.merge.accel.threads.torch_threads`, imported when used: importing
    this module must stay cheap (torch and the merge package take seconds)."""
    from mergezoo.merge.accel.threads import torch_threads as scoped

    with scoped(threads):
        yield


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' and datasets' progress bars (a zoo build loads and saves dozens of
    small models and datasets); restore them after."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_was = hf_logging.is_progress_bar_enabled()
    ds_was = datasets.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hf_was:
            hf_logging.enable_progress_bar()
        if ds_was:
            datasets.enable_progress_bars()


@contextmanager
def deterministic(seed: int, threads: int = 1) -> Iterator[Any]:
    """Seed python, numpy and torch, use deterministic torch kernels on `threads` threads, and
    yield a seeded `torch.Generator`; restore the thread count and determinism flag after."""
    import numpy as np
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def default_workers() -> int:
    """Worker processes for a zoo build: ``$MERGEZOO_BUILD_WORKERS`` if set, else
    min(2, the cores this process may use)."""
    if os.environ.get(WORKERS_ENV):
        return max(1, int(os.environ[WORKERS_ENV]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


_RESIDENT: dict[Hashable, Any] = {}


def resident(key: Hashable, make: Callable[[], T]) -> T:
    """A per-process cache for what the jobs of one build share (a benchmark with its data, a
    base model): the first job in a process stores ``make()``, later jobs get the stored one.
    Cleared when a `JobRunner` closes."""
    if key not in _RESIDENT:
        _RESIDENT[key] = make()
    return _RESIDENT[key]


#: imported once by the fork server, so a worker starts in milliseconds rather than seconds:
#: the built-in benchmarks' model modules (diffusers and transformers import their model
#: classes lazily, several seconds' worth)
_PRELOAD = ["torch", "datasets", "peft", "safetensors", "mergezoo.eval",
            "mergezoo.eval.benchmarks.digits_diffusion.lora",
            "mergezoo.eval.benchmarks.text_styles.model", "transformers.models.bert.modeling_bert",
            "transformers.models.vit.modeling_vit"]


def _worker_context() -> Any:
    """``forkserver`` where there is one (workers fork from a clean server that only imported
    the heavy modules, once per parent process), else ``spawn``; never a plain fork of a parent
    whose torch may already run threads."""
    import multiprocessing

    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:
        return multiprocessing.get_context("spawn")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _init_worker(environ: dict[str, str], log_level: int) -> None:
    """Set up a worker process: the parent's environment as it is now (a fork server keeps the
    one it started with; MERGEZOO_CACHE may have changed since), one torch thread (the jobs
    are tiny, and results must not depend on the machine's core count), no progress bars, and
    the parent's log level (INFO and below: job timings on stderr)."""
    import logging

    if log_level <= logging.INFO:
        logging.basicConfig(level=log_level,
                            format="%(asctime)s %(processName)s %(name)s %(message)s")
    os.environ.clear()
    os.environ.update(environ)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


class JobRunner:
    """Runs independent jobs ``fn(item)`` and returns their results in item order.

    With one worker the jobs run here, one after the other; with more they run in that many
    worker processes, started once (see `_worker_context`) and reused for every `map` until
    `close`. Every job runs on one torch thread either way, and a job must seed itself from its
    own item, so results are the same for any worker count and any scheduling. ``fn`` and the
    items must pickle (``fn`` a module-level function).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self._pool: Any = None

    def start(self) -> JobRunner:
        """Start the worker processes now, in the background (they take seconds to import
        torch and friends), so they are ready when the first jobs come."""
        if self.workers > 1 and self._pool is None:
            import logging
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=_worker_context(), initializer=_init_worker,
                initargs=(dict(os.environ), logging.getLogger().getEffectiveLevel()))
            for _ in range(self.workers):
                self._pool.submit(os.getpid)  # the executor starts a process per submission
        return self

    def submit(self, fn: Callable[[T], R], item: T) -> Future[R]:
        """Start ``fn(item)`` in a worker and return its future; with one worker it runs here,
        now, and the future is already done."""
        if self.workers > 1:
            return self.start()._pool.submit(fn, item)
        done: Future[R] = Future()
        with torch_threads(1):
            done.set_result(fn(item))
        return done

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(item) for item in items]``, run in the workers."""
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            with torch_threads(1):
                return [fn(item) for item in items]
        futures = [self.start()._pool.submit(fn, item) for item in items]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop the workers (if any) and forget what this process kept for the jobs."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        _RESIDENT.clear()

    def __enter__(self) -> JobRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
