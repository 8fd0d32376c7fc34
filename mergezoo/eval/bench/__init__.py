"""`mergezoo bench`: compare merging methods in one shared setting (Tam et al., 2024).

Example:
    >>> from mergezoo.eval.bench import BenchConfig, run_bench               # doctest: +SKIP
    >>> results = run_bench(BenchConfig("digits-domains", size="tiny", methods=["ties"]), "out")
    >>> next(r for r in results["rows"] if r["method"] == "ties")["held_in_normalised"]
    0.71
"""

from mergezoo.eval.bench.jobs import (BenchContext, Executor, Job, LocalExecutor,
                                      ProcessExecutor)
from mergezoo.eval.bench.runner import REPORT_FILE, RESULTS_FILE, BenchConfig, run_bench

__all__ = ["BenchConfig", "BenchContext", "Executor", "Job", "LocalExecutor", "ProcessExecutor",
           "REPORT_FILE", "RESULTS_FILE", "run_bench"]
