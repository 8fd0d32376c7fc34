"""One set of experts the Space serves: merge them in memory and run the merge beside them.

A `Playground` holds a base, its experts (folders: full fine-tunes or PEFT LoRA adapters), the
benchmark that made them (for loading, running and scoring the models) and, once asked, the
experts' task vectors (`mergezoo.merge.TaskVectors.from_folders`, computed once). A merge is
named by a `MergeSpec` (experts, method, hyperparameters, seed); the merged models of the last
few specs are kept loaded, so classifying or generating after a merge costs no merge, and moving
a slider costs one in-memory merge plus loading its weights into a model already in memory.

Example:
    >>> pg = Playground.from_zoo(build_zoo(get_benchmark("digits-domains", size="tiny")))  # doctest: +SKIP
    >>> spec = MergeSpec(pg.expert_labels[:2], "ties", {"density": 0.2, "lambda": 1.0})
    >>> pg.merge(spec).seconds
    0.05
    >>> pg.classify(spec, image)      # [("merge", {"0": 0.9, ...}), ("base", {...}), ...]
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mergezoo.errors import SpaceInputError
from mergezoo.spaces.handlers import (IMAGE_GENERATION, TEXT_CLASSIFICATION, Handler,
                                      handler_for)

if TYPE_CHECKING:
    from mergezoo.eval.benchmark import Benchmark
    from mergezoo.eval.zoo_cache import BenchmarkZoo
    from mergezoo.merge.memory import TaskVectors

log = logging.getLogger(__name__)

#: merged models kept loaded per playground (a slider move needs one more; older ones are reused)
KEEP_MERGED = 3
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Expert:
    """One expert of a playground: how the page names it, and its folder."""

    label: str
    path: Path
    cell: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class MergeSpec:
    """A merge: which experts (by label, in order), the method, its hyperparameters (recipe
    names) and the seed of random methods (DARE)."""

    experts: tuple[str, ...]
    method: str
    params: tuple[tuple[str, Any], ...] = ()
    seed: int = 0

    def __init__(self, experts: list[str] | tuple[str, ...], method: str,
                 params: dict[str, Any] | tuple | None = None, seed: int = 0) -> None:
        items = params.items() if isinstance(params, dict) else (params or ())
        object.__setattr__(self, "experts", tuple(experts))
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "params", tuple(sorted(items)))
        object.__setattr__(self, "seed", int(seed))

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"experts": list(self.experts), "method": self.method,
                "params": self.param_dict, "seed": self.seed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MergeSpec":
        return cls(data["experts"], data["method"], data.get("params") or {}, data.get("seed", 0))

    def describe(self) -> str:
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in self.params)
        return f"{self.method}({params}) of {len(self.experts)} experts"


@dataclass
class MergeOutcome:
    """What a merge took: seconds for the in-memory merge and for loading its weights."""

    spec: MergeSpec
    merge_seconds: float
    load_seconds: float
    task_vector_seconds: float = 0.0  # > 0 only for the first merge of a playground

    @property
    def seconds(self) -> float:
        return self.merge_seconds + self.load_seconds


@dataclass
class Playground:
    """A base, its experts and their benchmark; see the module docstring."""

    name: str
    bench: Benchmark
    base: Path
    experts: list[Expert]
    zoo: BenchmarkZoo | None = None
    results_dir: Path | None = None
    _tv: TaskVectors | None = field(default=None, repr=False)
    _models: dict[str, Any] = field(default_factory=dict, repr=False)
    _merged: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _spare: Any = field(default=None, repr=False)  # a loaded base for the next merge
    _examples: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.experts:
            raise SpaceInputError(f"{self.name}: no experts to merge")
        labels = [e.label for e in self.experts]
        if len(set(labels)) != len(labels):
            raise SpaceInputError(f"{self.name}: two experts share a label: {labels}")
        self.handler: Handler = handler_for(self.bench)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_zoo(cls, zoo: BenchmarkZoo, bench: Benchmark | None = None, *,
                 seeds: list[int] | None = None, results_dir: Path | None = None,
                 name: str | None = None) -> "Playground":
        """A built benchmark zoo's base and experts (the first seed's by default: every seed
        of a large zoo would hold many task vectors in memory)."""
        from mergezoo.eval import get_benchmark

        bench = bench or get_benchmark(zoo.benchmark, size=zoo.manifest.get("size") or "default")
        seeds = seeds if seeds is not None else zoo.seeds("expert")[:1]
        experts = [Expert(f"{m.cell} (seed {m.seed})", m.path, m.cell, m.seed)
                   for s in seeds for m in zoo.models("expert", seed=s)]
        size = zoo.manifest.get("size")
        return cls(name or f"{zoo.benchmark}" + (f" ({size})" if size else ""), bench,
                   zoo.model_path("base"), experts, zoo=zoo, results_dir=results_dir)

    # -- what the page shows -----------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.handler.kind

    @property
    def expert_labels(self) -> list[str]:
        return [e.label for e in self.experts]

    @property
    def default_experts(self) -> list[str]:
        return self.expert_labels

    def methods(self) -> list[str]:
        """The data-free methods (a Space holds no statistics or training data to merge with)."""
        from mergezoo.merge import list_methods

        return [m.name for m in list_methods()
                if m.needs.statistics is None and m.needs.data is None]

    def examples(self, per_cell: int = 1, split: str = "test") -> list[tuple[str, Any]]:
        """(cell, input) pairs from the benchmark's data: images or texts, `per_cell` per cell."""
        if self.kind == IMAGE_GENERATION:
            return []
        key = (per_cell, split)
        if key not in self._examples:
            column = "text" if self.kind == TEXT_CLASSIFICATION else "image"
            out = []
            for cell in self.bench.cells:
                ds = self._dataset(cell.name, split)
                for row in ds.select(range(min(per_cell, len(ds)))):
                    out.append((cell.name, row[column]))
            self._examples[key] = out
        return list(self._examples[key])

    def _dataset(self, cell: str, split: str) -> Any:
        if self.zoo is not None:
            return self.zoo.dataset(cell, split)
        return self.bench.dataset(cell, split)

    # -- models ------------------------------------------------------------------------------
    def expert(self, label: str) -> Expert:
        for e in self.experts:
            if e.label == label:
                return e
        raise SpaceInputError(f"{self.name}: no expert {label!r}; experts: {self.expert_labels}")

    def model(self, which: str) -> Any:
        """The loaded base ("base") or expert (by label), loaded once."""
        with self._lock:
            if which not in self._models:
                path = self.base if which == "base" else self.expert(which).path
                if which != "base" and self.zoo is None and (path / "adapter_config.json").is_file():
                    # a LoRA adapter from the Hub cache: its base is no sibling folder to load
                    # it onto, so the expert is the base plus its exact task vector
                    tv, _ = self.task_vectors()
                    model = self.handler.load(self.base)
                    only = tv.select([self.expert_labels.index(which)])
                    self._models[which] = self.handler.with_weights(
                        model, only.merge("task_arithmetic", {"lambda": 1.0}))
                else:
                    self._models[which] = self.handler.load(path)
            return self._models[which]

    def warm(self) -> None:
        """Load the base and every expert and compute the task vectors now, so the page's
        first merge costs what every later one does."""
        self.task_vectors()
        for name in ["base", *self.expert_labels]:
            self.model(name)
        with self._lock:
            if not self._merged:
                self._spare = self.handler.load(self.base)

    def task_vectors(self, progress: Progress | None = None) -> tuple[TaskVectors, float]:
        """Every expert's task vector, computed on first use; returns (vectors, seconds spent
        computing them now)."""
        from mergezoo.merge import TaskVectors

        with self._lock:
            if self._tv is not None:
                return self._tv, 0.0
            if progress:
                progress(0.1, f"computing the task vectors of {len(self.experts)} experts")
            started = time.perf_counter()
            self._tv = TaskVectors.from_folders(self.base, [e.path for e in self.experts],
                                                labels=self.expert_labels)
            return self._tv, time.perf_counter() - started

    def merge(self, spec: MergeSpec, progress: Progress | None = None) -> MergeOutcome:
        """Merge in memory and load the result into a model (kept for `classify`/`generate`)."""
        if not spec.experts:
            raise SpaceInputError("pick at least one expert to merge")
        if spec.method not in self.methods():
            raise SpaceInputError(f"method {spec.method!r} is not one of {self.methods()}")
        index = {label: i for i, label in enumerate(self.expert_labels)}
        unknown = [label for label in spec.experts if label not in index]
        if unknown:
            raise SpaceInputError(f"{self.name}: unknown experts {unknown}")
        with self._lock:
            tv, tv_seconds = self.task_vectors(progress)
            if progress:
                progress(0.6, f"merging: {spec.describe()}")
            started = time.perf_counter()
            state = tv.select([index[label] for label in spec.experts]).merge(
                spec.method, spec.param_dict, seed=spec.seed)
            merged_at = time.perf_counter()
            model = self._merged.pop(spec, None)
            if model is None:
                model = self._spare_model()
            self.handler.with_weights(model, state)
            self._merged[spec] = model
            loaded_at = time.perf_counter()
        outcome = MergeOutcome(spec, merged_at - started, loaded_at - merged_at, tv_seconds)
        log.info("%s: %s merged in %.3f s, loaded in %.3f s", self.name, spec.describe(),
                 outcome.merge_seconds, outcome.load_seconds)
        return outcome

    def _spare_model(self) -> Any:
        """A model to load merged weights into: the oldest kept merge's when enough are kept,
        else a fresh copy of the base."""
        if len(self._merged) >= KEEP_MERGED:
            return self._merged.popitem(last=False)[1]
        if self._spare is not None:
            spare, self._spare = self._spare, None
            return spare
        return self.handler.load(self.base)

    def merged_model(self, spec: MergeSpec) -> Any:
        """The model of a merge, merged again if it is no longer kept."""
        with self._lock:
            if spec not in self._merged:
                self.merge(spec)
            self._merged.move_to_end(spec)
            return self._merged[spec]

    def lineup(self, spec: MergeSpec | None, experts: list[str] | None = None) -> list[tuple[str, Any]]:
        """(name, model) of the merge (if any), the base and each expert, in that order."""
        names = list(experts if experts is not None else (spec.experts if spec else []))
        out = [("merge", self.merged_model(spec))] if spec is not None else []
        out.append(("base", self.model("base")))
        out += [(label, self.model(label)) for label in names]
        return out

    # -- running -----------------------------------------------------------------------------
    def classify(self, spec: MergeSpec | None, value: Any, task: str | None = None,
                 experts: list[str] | None = None) -> list[tuple[str, dict[str, float]]]:
        """Label probabilities of the merge, the base and each expert for one image or text."""
        if self.kind == IMAGE_GENERATION:
            raise SpaceInputError(f"{self.name} holds generators; use the Generator tab")
        with self._lock:
            if self.kind == TEXT_CLASSIFICATION:
                return [(name, self.handler.probabilities(m, value, task or self.handler.tasks[0]))
                        for name, m in self.lineup(spec, experts)]
            return [(name, self.handler.probabilities(m, value))
                    for name, m in self.lineup(spec, experts)]

    def generate(self, spec: MergeSpec | None, digit: int, style: str, seed: int, n: int,
                 experts: list[str] | None = None) -> list[tuple[str, list[Any]]]:
        """Images of the merge, the base and each expert for the same digit, style and seed."""
        if self.kind != IMAGE_GENERATION:
            raise SpaceInputError(f"{self.name} holds classifiers; use the Classifier tab")
        with self._lock:
            return [(name, self.handler.generate(m, digit, style, seed, n))
                    for name, m in self.lineup(spec, experts)]

    def evaluate(self, spec: MergeSpec, split: str = "test",
                 progress: Progress | None = None) -> dict[str, Any]:
        """The merge's score on every cell of the benchmark's `split`
        (`Benchmark.score_cells`, the benchmark's own data and metric), with the held-in /
        held-out means (`Benchmark.summarize`)."""
        from mergezoo.eval.training import torch_threads

        with self._lock, torch_threads(self.bench.eval_threads):
            model = self.merged_model(spec)
            if progress:
                progress(0.1, f"scoring {len(self.bench.cells)} cells ({split} split)")
            per_cell = {k: float(v) for k, v in self.bench.score_cells(model, split).items()}
        return {"per_cell": per_cell, **self.bench.summarize(per_cell),
                "held_in_cells": [c.name for c in self.bench.held_in_cells]}

    def save_merge(self, spec: MergeSpec, out_dir: str | Path, *, overwrite: bool = False,
                   finalize: Callable[[Path], None] | None = None) -> Path:
        """Write the merge as a model folder with the engine (the same method, hyperparameters
        and seed as in memory, plus the recipe and provenance a card is made from);
        `finalize(folder)` runs before the folder is moved into place (e.g. `write_card`)."""
        from mergezoo.merge import merge_models

        experts = [str(self.expert(label).path) for label in spec.experts]
        merge_models(spec.method, experts, base=str(self.base), out_dir=str(out_dir),
                     params=spec.param_dict, seed=spec.seed, overwrite=overwrite,
                     progress=False, finalize=finalize, relative_to=self.base.parent)
        return Path(out_dir)

    def results(self) -> dict[str, Any] | None:
        """The loaded bench run's results.json, if this playground came from one."""
        if self.results_dir is None:
            return None
        return json.loads((self.results_dir / "results.json").read_text())
