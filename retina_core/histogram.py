"""Cumulative histograms with explicit bucket bounds: :class:`Histogram` (mutable, one per series) and its
immutable snapshot :class:`HistogramValue`, which the Prometheus exposition renders as ``_bucket``/``_sum``/
``_count`` samples and the OTLP push as a histogram data point.

Bounds are upper bounds in the metric's unit (seconds for ``*_seconds`` metrics), strictly increasing; an
observation ``v`` lands in the first bucket whose bound is ``>= v`` (Prometheus' ``le``), or in the overflow
bucket (``+Inf``) past the last bound.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

__all__ = ["Histogram", "HistogramValue", "validate_bounds"]


@dataclass(frozen=True)
class HistogramValue:
    """The value of a histogram sample: explicit ``bounds``, per-bucket ``counts`` (``len(bounds) + 1``, not
    cumulative; the last one is the ``+Inf`` overflow bucket), ``sum``, ``count``."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int


def validate_bounds(bounds: tuple[float, ...], what: str) -> tuple[float, ...]:
    """``bounds`` as floats when non-empty, finite, positive and strictly increasing; ValueError naming ``what``
    otherwise."""
    try:
        out = tuple(float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: bucket bounds must be numbers, got {bounds!r}") from None
    if not out:
        raise ValueError(f"{what}: at least one bucket bound is needed")
    if any(not (0 < b < float("inf")) for b in out) or any(a >= b for a, b in zip(out, out[1:])):
        raise ValueError(f"{what}: bucket bounds must be positive, finite and strictly increasing, got {bounds!r}")
    return out


class Histogram:
    """One series' buckets. Not thread-safe: its owner serialises :meth:`observe` and :meth:`value`."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def value(self) -> HistogramValue:
        return HistogramValue(self.bounds, tuple(self.counts), self.sum, self.count)
