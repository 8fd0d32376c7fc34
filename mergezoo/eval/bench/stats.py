"""Statistics of a bench run: means with confidence intervals over expert seeds, normalised
scores, and the rank correlation between held-in and held-out scores.

Example:
    >>> mean_ci([0.80, 0.82, 0.84])
    (0.82, (0.7703..., 0.8696...))
    >>> normalised({"a": 0.9}, base={"a": 0.5}, reference={"a": 0.9}, cells=["a"], min_gap=0.05)
    (1.0, [])
"""

from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence

def mean_ci(values: Sequence[float], confidence: float = 0.95
            ) -> tuple[float | None, tuple[float, float] | None]:
    """Mean and two-sided Student-t confidence interval of `values` (None with fewer than two)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return mean, None
    from scipy.stats import t

    half = t.ppf(0.5 + confidence / 2, len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
    return mean, (float(mean - half), float(mean + half))


def spread(values: Sequence[float]) -> float | None:
    """Sample standard deviation (None with fewer than two values)."""
    vals = [float(v) for v in values if v is not None]
    return statistics.stdev(vals) if len(vals) > 1 else None


def normalised(scores: Mapping[str, float], base: Mapping[str, float],
               reference: Mapping[str, float], cells: Sequence[str],
               min_gap: float) -> tuple[float | None, list[str]]:
    """Mean over `cells` of (score - base) / (reference - base), and the cells left out because
    their gap (reference - base) is below `min_gap` or unknown. 1.0 means "as good as the
    reference" (the own expert held-in, the oracle held-out), 0.0 "no better than the base"."""
    ratios, excluded = [], []
    for cell in cells:
        ref = reference.get(cell)
        if ref is None or cell not in scores or ref - base[cell] < min_gap:
            excluded.append(cell)
            continue
        ratios.append((scores[cell] - base[cell]) / (ref - base[cell]))
    return (statistics.fmean(ratios) if ratios else None), excluded


def ratio_of_means(score: float | None, base: float | None, reference: float | None,
                   min_gap: float) -> float | None:
    """(score - base) / (reference - base) on averages (used against the multitask model)."""
    if score is None or base is None or reference is None or reference - base < min_gap:
        return None
    return (score - base) / (reference - base)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> tuple[float | None, float | None]:
    """Spearman's rank correlation and its two-sided p-value (None with fewer than 3 points or
    a constant side)."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None, None
    from scipy.stats import spearmanr

    res = spearmanr(xs, ys)
    return float(res.statistic), float(res.pvalue)
