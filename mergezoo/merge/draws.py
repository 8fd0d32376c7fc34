"""The resolution of the random drop's draws (DARE, DELLA), without torch: a recipe's density
is checked against it before any tensor is read.

Example:
    >>> keep_probability(0.3) * LANES == drop_threshold(0.3)
    True
"""

from __future__ import annotations

from mergezoo.errors import HyperparameterError

LANES = 1 << 16  # the random drop's draws are uniform over this many values


def drop_threshold(density: float) -> int:
    """Keep an entry when its 16-bit lane is below this: the keep probability is `density`
    rounded to a multiple of 1/65536 (`keep_probability`). A density that rounds to 0
    (below 1/131072) cannot be drawn: HyperparameterError, never a silent all-zero."""
    below = round(density * LANES)
    if below <= 0 and density > 0:
        raise HyperparameterError(f"density {density!r} is below what the random drop resolves "
                                  f"(1/{LANES * 2}); use at least {1 / LANES:g}")
    return below


def keep_probability(density: float) -> float:
    """The keep probability the random drop actually uses: drop_threshold / 65536 (exact in
    float32), which survivors are divided by when rescaled."""
    return drop_threshold(density) / LANES
