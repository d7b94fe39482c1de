"""
The cyclic garbage collector's settings for the daemons and the PU agent.

A node or an agent holds tens of thousands of long-lived objects per thousand links
(protocols, sessions, timers, Deferreds). With CPython's default thresholds (700, 10,
10) a young collection runs every 700 allocations and an older one every 7,000, and
each older one walks those objects again: when 10,000 PUs log in at once (a node's
death, docs/consistency.md "Re-homing") the collector was a third to a half of the PU
agent's CPU time (bench/failover.py --nodes: 15.6-17.1 CPU seconds with the defaults,
7.1-9.1 s with these). So: young collections every ``THRESHOLDS[0]`` allocations, and
what was loaded at start (modules, classes, the parsed configuration) frozen out of
every collection (``gc.freeze``). Nothing here disables the collector.

``VSS_GC_THRESHOLD`` (three integers, ``700,10,10`` being CPython's) replaces the
thresholds, for comparisons (docs/performance.md) and for an operator who must.
"""

import gc
import os

THRESHOLDS = (50_000, 50, 100)


def thresholds(environ=None):
    """The thresholds to use: ``VSS_GC_THRESHOLD`` if set and valid, else THRESHOLDS."""
    text = (os.environ if environ is None else environ).get("VSS_GC_THRESHOLD", "")
    if text:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) == 3 and all(v >= 0 for v in values) and values[0] > 0:
            return values
        raise ValueError(f"VSS_GC_THRESHOLD must be three integers (the first above 0), "
                         f"as 700,10,10; got {text!r}")
    return THRESHOLDS


def tune_gc(environ=None):
    """Set the thresholds and freeze what exists now (call once, after start-up's
    imports and before the links come). Returns the thresholds set."""
    values = thresholds(environ)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*values)
    return values
