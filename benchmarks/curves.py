"""Reading convergence curves: forward KLD against a cost (energy evaluations, MD steps or wall seconds), one helper
per question the benchmark scripts ask, shared so that every table reads a curve the same way.

A curve is two sequences of equal length, ``costs`` (increasing) and ``klds`` (> 0); between two points a KLD
falls as a power of the cost, so values are interpolated linearly in (log cost, log KLD).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence


def kld_at(costs: Sequence[float], klds: Sequence[float], cost: float) -> Optional[float]:
    """The KLD at ``cost``, log-log interpolated between the points around it; None outside the curve."""
    if not len(costs) or cost < costs[0] or cost > costs[-1]:
        return None
    for (c0, k0), (c1, k1) in zip(zip(costs, klds), zip(costs[1:], klds[1:])):
        if c0 <= cost <= c1:
            if c1 == c0:
                return float(k1)
            u = (math.log(cost) - math.log(c0)) / (math.log(c1) - math.log(c0))
            return math.exp(math.log(k0) + u * (math.log(k1) - math.log(k0)))
    return float(klds[-1])  # a one-point curve at exactly that cost


def first_reach(costs: Sequence[float], klds: Sequence[float], target: float) -> Optional[float]:
    """The cost at which the KLD first falls to ``target``, log-log interpolated between the last point above it
    and the first at or below it (the first point's cost if that is already there); None if it never does."""
    for k, kld in enumerate(klds):
        if kld <= target:
            if k == 0:
                return float(costs[0])
            u = (math.log(target) - math.log(klds[k - 1])) / (math.log(kld) - math.log(klds[k - 1]))
            return math.exp(math.log(costs[k - 1]) + u * (math.log(costs[k]) - math.log(costs[k - 1])))
    return None


def stays_below(costs: Sequence[float], klds: Sequence[float], target: float) -> Optional[float]:
    """The cost of the first point from which every later point is at or below ``target`` (a curve that dips below
    and comes back up counts from its last crossing); None if its last point is above."""
    above = [k for k, kld in enumerate(klds) if kld > target]
    if not len(klds) or (above and above[-1] == len(klds) - 1):
        return None
    return float(costs[above[-1] + 1 if above else 0])
