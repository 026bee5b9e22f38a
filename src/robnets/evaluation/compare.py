"""Paired comparisons of two models: on the same points (McNemar's exact test on per-example correctness) and
over the same seeds (the mean paired difference with a t interval). Both use what is shared between the two
measurements, so they resolve smaller differences than two separate accuracies with their own intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import RobnetsError


def mcnemar(a_correct: Sequence[bool] | np.ndarray, b_correct: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """McNemar's exact test of two models' correctness on the same points.

    Returns n, the points only A gets right (``only_a``) and only B (``only_b``), the accuracy difference A - B in
    points with a 95 % interval (normal approximation of the paired difference of proportions), and the exact
    two-sided p-value (binomial test on the discordant points; 1.0 when there are none)."""
    from scipy import stats

    a = np.asarray(a_correct, dtype=bool).reshape(-1)
    b = np.asarray(b_correct, dtype=bool).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise RobnetsError(f"McNemar needs two non-empty correctness vectors over the same points, got {a.size} "
                           f"and {b.size}")
    n = int(a.size)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_a + only_b
    p = float(stats.binomtest(only_a, discordant, 0.5).pvalue) if discordant else 1.0
    difference = (only_a - only_b) / n
    se = math.sqrt(max(discordant / n - difference ** 2, 0.0) / n)
    return {"n": n, "only_a": only_a, "only_b": only_b, "difference": 100 * difference,
            "difference_ci": [100 * (difference - 1.96 * se), 100 * (difference + 1.96 * se)], "p": p}


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """The mean of the paired differences a_i - b_i (one pair per seed, say) with its t interval."""
    from scipy import stats

    x = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(a) != len(b) or x.size < 2 or not np.isfinite(x).all():
        raise RobnetsError(f"a paired difference needs at least two finite pairs, got {len(a)} and {len(b)} values")
    n = int(x.size)
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    p = float(stats.ttest_1samp(x, 0.0).pvalue) if sd > 0 else (0.0 if mean else 1.0)
    return {"n": n, "differences": x.tolist(), "mean": mean, "sd": sd, "ci": [mean - half, mean + half],
            "confidence": confidence, "p": p}
