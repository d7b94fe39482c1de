"""
A latency histogram as plain numbers, for hot paths: no lock, no call into a metrics
library (``vss.ops.metrics`` turns it into a Prometheus family at scrape time).
"""

from bisect import bisect_left

from prometheus_client.utils import floatToGoString

#: seconds; the relay's and the database's latencies
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                  2.5, 5.0, 10.0)


class Histogram:
    """A latency histogram as plain numbers. ``cells[i]`` for ``i < len(bounds)`` counts
    the values ``v`` with ``bounds[i-1] < v <= bounds[i]``, ``cells[len(bounds)]`` those
    above the last bound and ``cells[-1]`` is the sum of all. A hot path observes with
    ``cells[bisect_left(bounds, v)] += 1; cells[-1] += v`` (``observe`` does the same)."""

    __slots__ = ("bounds", "cells")

    def __init__(self, bounds=LATENCY_BOUNDS):
        self.bounds = tuple(bounds)
        self.cells = [0] * (len(self.bounds) + 1) + [0.0]

    def observe(self, value):
        cells = self.cells
        cells[bisect_left(self.bounds, value)] += 1
        cells[-1] += value

    @property
    def count(self):
        return sum(self.cells[:-1])

    def buckets(self):
        """Prometheus' cumulative buckets ``[(le, count), ..., ("+Inf", count)]``."""
        out, acc = [], 0
        cells = self.cells
        for i, bound in enumerate(self.bounds):
            acc += cells[i]
            out.append((floatToGoString(bound), acc))
        acc += cells[len(self.bounds)]
        out.append(("+Inf", acc))
        return out
