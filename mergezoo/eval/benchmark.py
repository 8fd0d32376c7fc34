"""The `Benchmark` object: a `BenchmarkSpec` plus how to make its data, train its toy zoo,
load a model and score it on a cell.

Adding a built-in benchmark means one module with one subclass, registered by name:

    >>> from mergezoo.eval import Benchmark, register_benchmark   # doctest: +SKIP
    >>> @register_benchmark("my-bench")                                      # doctest: +SKIP
    ... class MyBench(Benchmark):
    ...     def __init__(self, size="default"):
    ...         super().__init__(BenchmarkSpec(name="my-bench", factors=..., cells=..., size=size))
    ...     def make_data(self): ...        # cell -> DatasetDict(train/validation/test)
    ...     def train_zoo(self, writer, data): ...   # writer.save_model(...) for every model
    ...     def load_model(self, model_dir): ...
    ...     def predict(self, model, dataset, cell): ...  # -> list of predicted labels

Scoring any model folder (a merge, say) on every cell:

    >>> bench = get_benchmark("digits-domains", size="tiny")                # doctest: +SKIP
    >>> bench.evaluate("merged/", split="test")                             # doctest: +SKIP
    {'group0-plain': 0.93, 'group0-inverted': 0.88, ...}

Contract of the per-cell data (`make_data`): a `datasets.DatasetDict` with the splits
`train`, `validation` and `test`; every row has `source_id` (which source example it renders,
shared by every rendering of that example in every cell) and, for classification, `label`.
No `source_id` of any test or validation split may appear in any train split.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from mergezoo.errors import BenchmarkError
from mergezoo.eval.spec import ID_COLUMN, LABEL_COLUMN, SPLITS, BenchmarkSpec, Cell

if TYPE_CHECKING:  # imported lazily: datasets and torch are slow to import
    from datasets import Dataset, DatasetDict

    from mergezoo.eval.training import JobRunner
    from mergezoo.eval.zoo_writer import ZooWriter

log = logging.getLogger(__name__)


class Benchmark(ABC):
    """A compositional benchmark. Subclasses implement `make_data`, `train_zoo`, `load_model`
    and `predict` (or override `score` for metrics that are not label accuracy)."""

    #: torch threads used while scoring (None: torch's default); tiny models want 1.
    eval_threads: int | None = None
    #: provenance and license of the per-cell data, for the zoo's dataset card
    data_description: str = ""
    data_license: str | None = None
    #: a held-in (held-out) cell whose own-expert (oracle) score beats the base's by less than
    #: this (mean over seeds, test) is left out of normalised scores: (merge - base) / (expert -
    #: base) over a near-zero gap is noise, not a fraction of skill recovered
    min_normalising_gap: float = 0.05
    #: caches left out when the benchmark is pickled for a worker process (it rebuilds them)
    _transient: tuple[str, ...] = ("_data",)

    def __init__(self, spec: BenchmarkSpec) -> None:
        self.spec = spec
        self._data: dict[str, DatasetDict] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in self._transient:
            if key in state:
                state[key] = None
        return state

    def shared(self) -> Benchmark:
        """This process's copy of this benchmark for build jobs: the first one sent here (or
        this object, when the jobs run in this process), so its caches (data, ...) are built
        once per worker process rather than once per job."""
        from mergezoo.eval.training import resident

        key = ("benchmark", type(self).__qualname__, self.spec.definition_hash())
        return resident(key, lambda: self)

    # -- the definition ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def size(self) -> str | None:
        return self.spec.size

    @property
    def factors(self) -> dict[str, list[str]]:
        return self.spec.factors

    @property
    def cells(self) -> list[Cell]:
        return self.spec.cells

    @property
    def held_in_cells(self) -> list[Cell]:
        return self.spec.held_in_cells

    @property
    def held_out_cells(self) -> list[Cell]:
        return self.spec.held_out_cells

    def cell(self, name: str) -> Cell:
        return self.spec.cell(name)

    def to_yaml(self) -> str:
        return self.spec.to_yaml()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, size={self.size!r}, "
                f"cells={len(self.cells)}, held_in={len(self.held_in_cells)})")

    # -- data -------------------------------------------------------------------------------
    @abstractmethod
    def make_data(self) -> dict[str, DatasetDict]:
        """Every cell's data: cell name -> DatasetDict(train, validation, test). Deterministic."""

    def data(self) -> dict[str, DatasetDict]:
        """`make_data()`, computed once per object and checked against the data contract."""
        if self._data is None:
            data = self.make_data()
            missing = [c.name for c in self.cells if c.name not in data]
            if missing:
                raise BenchmarkError(f"{self.name}: make_data() gave no data for cells {missing}")
            for cell_name, dd in data.items():
                if set(dd) != set(SPLITS):
                    raise BenchmarkError(f"{self.name}: cell {cell_name!r} has splits "
                                         f"{sorted(dd)}, expected {list(SPLITS)}")
            check_disjoint(self.name, data)
            self._data = data
        return self._data

    def dataset(self, cell: str | Cell, split: str = "test") -> Dataset:
        """One cell's split as a `datasets.Dataset`."""
        if split not in SPLITS:
            raise BenchmarkError(f"split {split!r} is not one of {SPLITS}")
        name = cell.name if isinstance(cell, Cell) else self.cell(cell).name
        return self.data()[name][split]

    # -- the zoo (built by `zoo_cache.build_zoo(benchmark)`) ---------------------------------
    @property
    def has_zoo(self) -> bool:
        """Whether this benchmark builds its own toy zoo (`train_zoo`); a Hub definition
        names its experts instead."""
        return type(self).train_zoo is not Benchmark.train_zoo

    def train_zoo(self, writer: ZooWriter, data: dict[str, DatasetDict],
                  jobs: JobRunner | None = None) -> None:
        """Train and save (through `writer.save_model`) the base, the experts (>= 3 seeds per
        held-in cell), the multitask model and one oracle per held-out cell. Independent
        trainings may go through `jobs` (worker processes); the zoo must come out the same
        for any number of workers."""
        raise BenchmarkError(f"benchmark {self.name!r} has no toy zoo to build: its experts are "
                             "given by reference (see its `experts` field)")

    # -- scoring ----------------------------------------------------------------------------
    @abstractmethod
    def load_model(self, model_dir: str | Path) -> Any:
        """Load a model folder (an expert, a merge, ...) ready for `predict` / `score`."""

    def predict(self, model: Any, dataset: Dataset, cell: Cell) -> list[int]:
        """Predicted labels for every row of `dataset` (classification benchmarks)."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict() or score()")

    def score(self, model: Any, dataset: Dataset, cell: Cell) -> float:
        """The benchmark's metric of `model` on one cell's dataset, in [0, 1]."""
        from mergezoo.eval.metrics import compute_metric

        predictions = self.predict(model, dataset, cell)
        return compute_metric(self.spec.metric, predictions=predictions,
                              references=list(dataset[LABEL_COLUMN]))

    def evaluate(self, model_dir: str | Path, split: str = "test",
                 cells: Iterable[str] | None = None) -> dict[str, float]:
        """Score the model in `model_dir` on every cell's `split` (or only on `cells`).

        Returns {cell name: score}, in the benchmark's cell order. This is what the merge
        benchmark runner calls on each merged model: tune on `split="validation"` of held-in
        cells, report `split="test"`.

        Example:
            >>> scores = get_benchmark("digits-domains", size="tiny").evaluate(
            ...     zoo.model_path("expert", "group0-inverted", seed=0))      # doctest: +SKIP
        """
        path = Path(model_dir)
        if not path.exists():
            raise BenchmarkError(f"{model_dir}: no such model folder")
        from mergezoo.eval.training import quiet_loading, torch_threads

        with torch_threads(self.eval_threads), quiet_loading():
            model = self.load_model(path)
            return self.score_cells(model, split, cells)

    def score_cells(self, model: Any, split: str = "test",
                    cells: Iterable[str] | None = None) -> dict[str, float]:
        """A loaded model (from `load_model`, `with_weights` or `ensemble`) scored on every
        cell's `split` (or only on `cells`): {cell name: score} in the benchmark's cell order.
        `score` cell by cell here; a benchmark that can score many cells in one pass (one
        sampling loop for all of a generator's cells) overrides it.

        Example:
            >>> bench.score_cells(bench.with_weights(model, merged), "validation",
            ...                   cells=[c.name for c in bench.held_in_cells])  # doctest: +SKIP
        """
        wanted = [self.cell(c) for c in cells] if cells is not None else self.cells
        return {c.name: float(self.score(model, self.dataset(c, split), c)) for c in wanted}

    # -- models in memory: the bench's tuning sweeps and the Space merge state dicts ---------
    def module(self, model: Any) -> Any:
        """The `torch.nn.Module` inside a loaded model (what `load_model` returns) whose state
        dict a merge replaces; the model itself by default."""
        return model

    def with_weights(self, model: Any, state_dict: dict[str, Any]) -> Any:
        """`model` (from `load_model`) with its module's weights replaced by `state_dict`, a
        state dict as saved on disk (what a merge of the zoo's folders gives), ready for
        `score`. Every key must match. Loads in place and returns the model."""
        module = self.module(model)
        state_dict = checkpoint_to_module_keys(module, state_dict)
        missing, unexpected = module.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise BenchmarkError(f"{self.name}: the merged weights do not fit the model: "
                                 f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        return model

    @property
    def has_ensemble(self) -> bool:
        """Whether this benchmark defines `ensemble` (the bench's ensemble baseline)."""
        return type(self).ensemble is not Benchmark.ensemble

    def ensemble(self, models: Sequence[Any]) -> Any:
        """A model-like object that `score` accepts and whose outputs average the members'
        (class probabilities for a classifier, noise predictions for a generator): the
        "ensemble of the experts" baseline. Each benchmark defines what averaging means."""
        raise NotImplementedError(f"{type(self).__name__} defines no ensemble of its models")

    def summarize(self, scores: dict[str, float]) -> dict[str, float | None]:
        """Mean score over the held-in and the held-out cells present in `scores` (the
        `held_in` / `held_out` fields of a results.json row); None where no such cell was scored.

        Example:
            >>> bench.summarize(bench.evaluate("merged/"))                # doctest: +SKIP
            {'held_in': 0.91, 'held_out': 0.62}
        """
        unknown = set(scores) - {c.name for c in self.cells}
        if unknown:
            raise BenchmarkError(f"{self.name}: scores for unknown cells {sorted(unknown)}")
        out: dict[str, float | None] = {}
        for key, cells in (("held_in", self.held_in_cells), ("held_out", self.held_out_cells)):
            vals = [scores[c.name] for c in cells if c.name in scores]
            out[key] = sum(vals) / len(vals) if vals else None
        return out


def checkpoint_to_module_keys(module: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """`state_dict` with the names the module's parameters have in memory. transformers 5
    renames some checkpoint tensors when loading (e.g. ViT's `encoder.layer.N.attention.
    attention.query` becomes `layers.N.attention.q_proj`) and renames them back when saving;
    this finds that renaming with transformers' own `revert_weight_conversion`, applied to the
    module's state dict (renamed tensors keep their storage, so they are matched by it)."""
    own = module.state_dict()
    if set(state_dict) <= set(own):
        return state_dict
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # an older transformers renames nothing
        return state_dict
    by_storage = {(t.data_ptr(), tuple(t.shape)): k for k, t in own.items()}
    names = {saved: by_storage.get((t.data_ptr(), tuple(t.shape)))
             for saved, t in revert_weight_conversion(module, dict(own)).items()}
    return {names.get(k) or k: v for k, v in state_dict.items()}


def check_disjoint(benchmark: str, data: dict[str, DatasetDict]) -> None:
    """Raise BenchmarkError if any `source_id` of a validation or test split (of any cell) is
    in any cell's train split, or a cell's validation and test share one. Cells whose splits
    have no `source_id` column are not checked (their benchmark must guarantee it otherwise)."""
    def ids(cell: str, split: str) -> set[Any] | None:
        ds = data[cell][split]
        return set(ds[ID_COLUMN]) if ID_COLUMN in ds.column_names else None

    train: dict[Any, str] = {}
    for cell in data:
        for i in ids(cell, "train") or ():
            train.setdefault(i, cell)
    for cell in data:
        val, test = ids(cell, "validation"), ids(cell, "test")
        if val is None or test is None:
            log.info("%s: cell %s has no %s column; split disjointness not checked",
                     benchmark, cell, ID_COLUMN)
            continue
        if val & test:
            raise BenchmarkError(f"{benchmark}: cell {cell!r} has {len(val & test)} examples in "
                                 f"both validation and test (e.g. {ID_COLUMN} "
                                 f"{sorted(val & test, key=str)[0]!r})")
        for split, held in (("validation", val), ("test", test)):
            leaked = sorted((i for i in held if i in train), key=str)
            if leaked:
                raise BenchmarkError(f"{benchmark}: {len(leaked)} {split} examples of cell "
                                     f"{cell!r} are in the train split of cell "
                                     f"{train[leaked[0]]!r} (e.g. {ID_COLUMN} {leaked[0]!r})")
