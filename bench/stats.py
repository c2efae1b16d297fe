"""Summaries of measured durations: median and tail percentiles, in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated linearly between the
    two nearest ranks (numpy's default). ``values`` must not be empty."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Distribution:
    """A sample of durations (ms): its size, median, 95th and 99th percentiles, maximum.

    The statistics are None when the sample is empty.
    """

    n: int
    median: float | None
    p95: float | None
    p99: float | None
    max: float | None = None

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Distribution:
        """Summarize ``values_ms`` (durations in ms)."""
        if not values_ms:
            return cls(0, None, None, None)
        return cls(
            len(values_ms),
            percentile(values_ms, 50),
            percentile(values_ms, 95),
            percentile(values_ms, 99),
            max(values_ms),
        )


#: Percentiles kept to draw a distribution (its CDF) without keeping every sample.
CDF_POINTS = (*range(0, 100), 99.5, 99.9, 100)


def cdf(values_ms: Sequence[float]) -> list[tuple[float, float]]:
    """``(percentile, value)`` pairs of ``values_ms`` at :data:`CDF_POINTS`; [] if empty."""
    if not values_ms:
        return []
    ordered = sorted(values_ms)
    return [(q, percentile(ordered, q)) for q in CDF_POINTS]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None if either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def ms(value: float | None, digits: int = 1) -> str:
    """``value`` (ms) for a table or a summary line; ``-`` when missing."""
    return "-" if value is None else f"{value:.{digits}f}"
