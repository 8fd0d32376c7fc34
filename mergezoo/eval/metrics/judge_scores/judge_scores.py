"""Judge scores for generated images: how often a judge classifier, trained on real data,
recognises the requested digit and the requested style in a generated image.

Example:
    >>> import evaluate                                                  # doctest: +SKIP
    >>> evaluate.load(".../judge_scores/judge_scores.py").compute(
    ...     predictions=[3, 3], references=[3, 5],
    ...     style_predictions=[1, 0], style_references=[1, 1])
    {'digit_accuracy': 0.5, 'style_accuracy': 0.5, 'judge_score': 0.5}
"""

import datasets
import evaluate

_DESCRIPTION = ("digit_accuracy and style_accuracy of a judge classifier on generated images, and "
                "judge_score = the fraction of images where both are right.")
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): the judge's digit for each generated image.
    references (list of int): the digit each image was generated for.
    style_predictions (list of int): the judge's style for each image.
    style_references (list of int): the style each image was generated for.
Returns:
    digit_accuracy, style_accuracy, judge_score (both right), floats in [0, 1].
"""


class JudgeScores(evaluate.Metric):
    """Digit and style accuracy of a judge on generated images."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64"),
                                        "style_predictions": datasets.Value("int64"),
                                        "style_references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, style_predictions, style_references):
        n = len(references)
        if n == 0:
            return {"digit_accuracy": 0.0, "style_accuracy": 0.0, "judge_score": 0.0}
        digit = [p == r for p, r in zip(predictions, references)]
        style = [p == r for p, r in zip(style_predictions, style_references)]
        return {"digit_accuracy": sum(digit) / n, "style_accuracy": sum(style) / n,
                "judge_score": sum(d and s for d, s in zip(digit, style)) / n}
