"""`text-styles`: sentence classification over (task x "language") cells (see `.benchmark`)."""

from mergezoo.eval.benchmarks.text_styles.benchmark import NAME, TextStyles

__all__ = ["NAME", "TextStyles"]
