"""
Which streaming server gets a stream: the one policy of the node's CDN module (its own
workers, from their reports each second) and of MDP (every SS of every node, from the
nodes' heartbeats). Sans-IO: loads are plain dicts with ``streams``, ``viewers``,
``bandwidth_kbps`` and ``cpu_permille`` (per mille of one core).

The SS with the most room is the one with the least CPU in steps of 10 % (a process near
a full core cannot fan out more, whatever it carries), then the fewest viewers, then the
fewest streams, then the least bandwidth. Ties go to the first named, so the choice is
stable between reports.
"""

CPU_STEP = 100  # per mille: loads within one step count as equal


def room_key(load, pending=0):
    """Sort key: smaller has more room. ``pending``: viewers sent there since the load
    was reported."""
    return (int(load.get("cpu_permille", 0)) // CPU_STEP,
            int(load.get("viewers", 0)) + pending,
            int(load.get("streams", 0)),
            int(load.get("bandwidth_kbps", 0)))


def most_room(candidates, pending=None):
    """The name with the most room among ``candidates`` ({name: load}), or None."""
    if not candidates:
        return None
    pending = pending or {}
    return min(sorted(candidates), key=lambda n: room_key(candidates[n], pending.get(n, 0)))


def over_limit(viewers, kbps, max_viewers, max_kbps):
    """A stream's viewers or bandwidth on one SS reached the per-SS limit (0: none)."""
    return bool((max_viewers and viewers >= max_viewers) or (max_kbps and kbps >= max_kbps))
