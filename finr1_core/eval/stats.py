"""Binomial confidence intervals for accuracy cells."""
from __future__ import annotations

import math


def wilson_ci(k: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval for ``k`` successes out of ``n`` trials (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0/n or n/n.
    ``k`` may be fractional (a mean of k samples per row times n). ``n == 0`` gives (0, 1).
    """
    if n <= 0:
        return 0.0, 1.0
    if k < 0 or k > n:
        raise ValueError(f"k must be within [0, n]; got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi
