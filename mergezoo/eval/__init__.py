"""Compositional benchmarks: definitions, registry, toy-zoo building and evaluation.

Example:
    >>> from mergezoo.eval import get_benchmark                 # doctest: +SKIP
    >>> bench = get_benchmark("digits-domains", size="tiny")
    >>> zoo = build_zoo(bench)                     # cached under ~/.cache/mergezoo/zoos/
    >>> bench.evaluate(zoo.model_path("multitask"), split="test")
    {'group0-plain': 0.95, ...}
"""

from mergezoo.eval.benchmark import Benchmark
from mergezoo.eval.zoo_cache import BenchmarkZoo, ZooModel, build_zoo, cache_root, default_zoo_dir
from mergezoo.eval.registry import (get_benchmark, list_benchmarks, register_benchmark,
                                    shipped_definitions)
from mergezoo.eval.spec import ID_COLUMN, LABEL_COLUMN, SIZES, SPLITS, BenchmarkSpec, Cell, grid_cells
from mergezoo.eval.zoo_writer import ZooWriter

__all__ = ["Benchmark", "BenchmarkSpec", "Cell", "grid_cells", "BenchmarkZoo", "ZooModel", "ZooWriter",
           "build_zoo", "cache_root", "default_zoo_dir", "get_benchmark", "list_benchmarks",
           "register_benchmark", "shipped_definitions", "ID_COLUMN", "LABEL_COLUMN", "SIZES",
           "SPLITS"]
