"""Metric modules shipped in the package load by path, offline."""

import pytest

from mergezoo.errors import BenchmarkError
from mergezoo.eval.metrics import available_metrics, compute_metric, load_metric, metric_path


def test_shipped_metrics_are_listed():
    assert {"accuracy", "judge_scores"} <= set(available_metrics())


def test_accuracy_loads_by_path_and_computes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert compute_metric("accuracy", predictions=[0, 1, 1, 2], references=[0, 1, 0, 0]) == 0.5
    full = load_metric("accuracy").compute(predictions=[1, 1], references=[1, 0], normalize=False)
    assert full == {"accuracy": 1.0}


def test_judge_scores():
    result = load_metric("judge_scores").compute(
        predictions=[3, 3, 5, 1], references=[3, 5, 5, 1],
        style_predictions=[1, 0, 1, 1], style_references=[1, 1, 1, 0])
    assert result == {"digit_accuracy": 0.75, "style_accuracy": 0.5, "judge_score": 0.5}
    assert compute_metric("judge_scores", predictions=[1], references=[1], style_predictions=[0],
                          style_references=[0]) == 1.0


def test_unknown_metric_is_named():
    with pytest.raises(BenchmarkError, match="f1-macro"):
        metric_path("f1-macro")
