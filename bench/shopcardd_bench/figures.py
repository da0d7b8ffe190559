"""Figures the benches print: one way to read a percentile, so every table means the same by p99."""

from __future__ import annotations

from collections.abc import Iterable


def percentile(values: Iterable[float], fraction: float) -> float:
    """The value ``fraction`` (0.99 for p99) of the way up ``values`` (sorted here), nearest rank
    below; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
