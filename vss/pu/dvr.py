"""
The footage a simulated DVR holds: the past ``days`` days (up to now) in 10-minute
segment files, with a deterministic pattern of gaps (one segment in nine missing, shifted
by the channel), so a listing shows gaps and a playback crosses them. Plain functions of
the time, the same in the agent (listing) and in its publishing child (the recorded clock
a playback shows skips the gaps as the footage does).
"""

SEGMENT_MS = 600_000
GAP_EVERY = 9  # one segment in nine was not recorded
BYTES_PER_SECOND = 1_000_000 // 8  # what a segment's size is listed as (1 Mb/s)
DEFAULT_DAYS = 7
PLAY_WITHIN_MS = 86400_000  # a playback starts at footage at most a day after the time asked


def _recorded(index, channel):
    return (index + channel) % GAP_EVERY != GAP_EVERY // 2


def window(now_ms, days):
    """[first, last) ms of the footage kept: from a segment boundary ``days`` ago to now."""
    first = (now_ms - days * 86400_000) // SEGMENT_MS * SEGMENT_MS
    return first, now_ms


def segments(from_ms, to_ms, now_ms, days=DEFAULT_DAYS, channel=0):
    """The (start, end, bytes) of the segments overlapping ``[from_ms, to_ms)``, by start;
    the last one (being recorded) ends at ``now_ms``."""
    first, last = window(now_ms, days)
    lo, hi = max(from_ms, first), min(to_ms, last)
    out = []
    index = lo // SEGMENT_MS
    while index * SEGMENT_MS < hi:
        start = index * SEGMENT_MS
        end = min(start + SEGMENT_MS, last)
        if end > start and _recorded(index, channel):
            out.append((start, end, (end - start) * BYTES_PER_SECOND // 1000))
        index += 1
    return out


def footage_from(at_ms, now_ms, days=DEFAULT_DAYS, channel=0, within=None):
    """The first recorded time at or after ``at_ms`` (``at_ms`` itself when recorded), or
    None when there is none before ``now_ms`` (or, with ``within``, before ``at_ms +
    within``)."""
    first, last = window(now_ms, days)
    if within is not None:
        last = min(last, at_ms + within)
    at = max(at_ms, first)
    while at < last:
        if _recorded(at // SEGMENT_MS, channel):
            return at
        at = (at // SEGMENT_MS + 1) * SEGMENT_MS
    return None
