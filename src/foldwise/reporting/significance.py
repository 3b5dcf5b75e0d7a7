"""Significance: the one level both choices use, and McNemar's exact test of two classifiers.

McNemar's test compares two classifiers on the same images: a two-sided binomial test on the images
exactly one of them gets right (evaluate: the single model against the fold ensemble). The CV
folds' corrected paired t-test lives with the other CV statistics, in ``cvstats``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ALPHA = 0.05  # below this p-value a difference counts: crossval's reason, evaluate's ensemble: auto


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value of ``b`` images only the first classifier gets right and
    ``c`` only the second does: 2 x P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1.
    Exact integer sums, so any test-set size is fine."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def compare_paired(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test of two classifiers' predictions on the same images: ``only_first`` and
    ``only_second`` right, and the p-value (two-sided)."""
    right_a, right_b = first == labels, second == labels
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    return {"only_first": b, "only_second": c, "p_value": float(f"{mcnemar_p(b, c):.6g}")}
