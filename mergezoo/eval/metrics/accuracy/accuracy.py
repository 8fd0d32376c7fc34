"""Accuracy: the fraction of predictions equal to their references.

A copy of the metric that `evaluate.load("accuracy")` would fetch from the Hub, shipped in
mergezoo so that it loads offline, by path.

Example:
    >>> import evaluate                                                  # doctest: +SKIP
    >>> evaluate.load(".../accuracy/accuracy.py").compute(predictions=[0, 1], references=[0, 0])
    {'accuracy': 0.5}
"""

import datasets
import evaluate

_DESCRIPTION = "Accuracy = (number of correct predictions) / (number of predictions)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    normalize (bool): return the fraction (default) instead of the count of correct predictions.
    sample_weight (list of float): optional per-example weights.
Returns:
    accuracy (float): in [0, 1] when normalize is True.
"""


class Accuracy(evaluate.Metric):
    """Label accuracy."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        weights = sample_weight if sample_weight is not None else [1.0] * len(references)
        correct = sum(w for p, r, w in zip(predictions, references, weights) if p == r)
        total = sum(weights)
        if not normalize:
            return {"accuracy": float(correct)}
        return {"accuracy": float(correct / total) if total else 0.0}
