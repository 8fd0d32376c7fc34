"""`digits-diffusion`: image generation over (digit group x style) cells (see `.benchmark`)."""

from mergezoo.eval.benchmarks.digits_diffusion.benchmark import NAME, DigitsDiffusion

__all__ = ["NAME", "DigitsDiffusion"]
