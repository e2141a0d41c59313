"""Confidence intervals over seeds and the verdicts built on them (pure functions on plain numbers).

* :func:`t_interval` — Student's t interval for a mean from independent repetitions (one value per seed). Paired
  comparisons (a regulariser against the plain model trained from the same seed) pass the per-seed differences.
* :func:`spearman_interval` — Spearman's ρ with a Fisher-z interval using Bonett & Wright's (2000) standard error
  ``√((1 + ρ²/2)/(n − 3))``, the recommended large-sample interval for a rank correlation.
* :func:`direction_verdict` — "reproduced" when the interval lies on the claimed side of a threshold, "not
  reproduced" when it lies on the other side, "inconclusive at this n" when it straddles it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["Interval", "Verdict", "direction_verdict", "spearman_interval", "t_interval"]


class Verdict(enum.StrEnum):
    """How a claim fared against the interval of its estimate."""

    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "not reproduced"
    INCONCLUSIVE = "inconclusive at this n"


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval; ``low``/``high`` are NaN when it is undefined (n < 2)."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float
    method: str

    @property
    def defined(self) -> bool:
        """Whether the interval has finite ends."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready values (undefined ends as None)."""
        def clean(v: float) -> float | None:
            return v if math.isfinite(v) else None
        return {"estimate": clean(self.estimate), "low": clean(self.low), "high": clean(self.high), "n": self.n,
                "confidence": self.confidence, "method": self.method}


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"Expected finite values but got {values!r}")
    return arr


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student's t interval for the mean of ``values``: mean ± t_{(1+c)/2, n−1} · s/√n.

    Example:
        >>> iv = t_interval([1.0, 2.0, 3.0])
        >>> round(iv.estimate, 6), round(iv.low, 4), round(iv.high, 4)
        (2.0, -0.4841, 4.4841)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"Expected a confidence in (0, 1) but got {confidence!r}")
    arr = _finite(values)
    n = len(arr)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence, "t")
    mean = float(arr.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, confidence, "t")
    half = float(_scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * float(arr.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence, "t")


def spearman_interval(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> Interval:
    """Spearman's ρ of ``(x, y)`` and its Fisher-z interval with Bonett & Wright's standard error.

    Undefined (NaN) for fewer than 4 pairs or a constant variable.

    Example:
        >>> iv = spearman_interval([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
        >>> round(iv.estimate, 4), round(iv.low, 3), round(iv.high, 3)
        (0.8286, -0.127, 0.986)
    """
    a, b = _finite(x), _finite(y)
    if len(a) != len(b):
        raise ValueError(f"Expected sequences of equal length but got {len(a)} and {len(b)}")
    n = len(a)
    if n < 4 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return Interval(math.nan, math.nan, math.nan, n, confidence, "spearman-fisher-z")
    rho = float(_scipy_stats.spearmanr(a, b).statistic)
    if abs(rho) >= 1:
        return Interval(rho, rho, rho, n, confidence, "spearman-fisher-z")
    se = math.sqrt((1 + rho * rho / 2) / (n - 3))
    z = math.atanh(rho)
    q = float(_scipy_stats.norm.ppf((1 + confidence) / 2))
    return Interval(rho, math.tanh(z - q * se), math.tanh(z + q * se), n, confidence, "spearman-fisher-z")


def direction_verdict(interval: Interval, threshold: float, claimed: str) -> Verdict:
    """Whether the interval lies on the ``claimed`` side (``"below"`` or ``"above"``) of ``threshold``.

    Example:
        >>> iv = Interval(-0.3, -0.5, -0.1, 3, 0.95, "t")
        >>> direction_verdict(iv, 0.0, "below").value, direction_verdict(iv, 0.0, "above").value
        ('reproduced', 'not reproduced')
    """
    if claimed not in ("below", "above"):
        raise ValueError(f"Expected claimed side 'below' or 'above' but got {claimed!r}")
    if not interval.defined:
        return Verdict.INCONCLUSIVE
    below, above = interval.high < threshold, interval.low > threshold
    if (below and claimed == "below") or (above and claimed == "above"):
        return Verdict.REPRODUCED
    if below or above:
        return Verdict.NOT_REPRODUCED
    return Verdict.INCONCLUSIVE
