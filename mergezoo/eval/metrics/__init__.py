"""`evaluate` metric modules shipped inside mergezoo, loaded by path so they work offline.

`evaluate.load("accuracy")` fetches the metric script from the Hub; here each metric is a
folder `mergezoo/eval/metrics/<name>/<name>.py` holding an `evaluate.Metric`.

Example:
    >>> compute_metric("accuracy", predictions=[0, 1, 1], references=[0, 1, 0])  # doctest: +SKIP
    0.6666666666666666
    >>> sorted(available_metrics())
    ['accuracy', 'judge_scores']
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from mergezoo.errors import BenchmarkError

METRICS_DIR = Path(__file__).resolve().parent
# The key of each metric's result that is its single score.
PRIMARY_KEY = {"accuracy": "accuracy", "judge_scores": "judge_score"}


def available_metrics() -> list[str]:
    """Names of the metric modules shipped in the package."""
    return [p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file()]


def metric_path(name: str) -> Path:
    """The script of a shipped metric, or `name` itself when it is a path to a script."""
    candidate = Path(name).expanduser()
    if candidate.suffix == ".py" and candidate.is_file():
        return candidate
    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise BenchmarkError(f"unknown metric {name!r}: not a path to a metric script, and not "
                             f"one of the shipped metrics {sorted(available_metrics())}")
    return path


@lru_cache(maxsize=None)
def load_metric(name: str) -> Any:
    """`evaluate.load` of a shipped metric (or metric script path), by path, offline."""
    import evaluate

    return evaluate.load(str(metric_path(name)))


def compute_metric(name: str, *, key: str | None = None, **inputs: Any) -> float:
    """Compute a metric and return its primary score (or `key` of its result) as a float."""
    result = load_metric(name).compute(**inputs)
    key = key or PRIMARY_KEY.get(name) or Path(name).stem
    if key not in result:
        key = next(iter(result))
    return float(result[key])
