"""
The recording catalogue across nodes (RECORD_QUERY), as plain functions.

A CU asks its node for the recordings of a (device, channel, stream) between two UTC
times. The node asks CMS; CMS asks every node in the registry that is up (at most
``FANOUT_TIMEOUT`` seconds each, all at once) and merges:

- ``node_answer``: what ONE node holds, read from its own catalogue (``CatalogueDB.list``
  result): its segments, tagged with its node id, and an export URL when it holds some.
- ``merge``: the answers of every node that answered, into one time-ordered list of
  segments, the gaps of the whole range (holes shorter than ``MIN_GAP_MS`` ignored, as in
  one node's catalogue), the nodes that did not answer (down, timed out, or failed:
  ``missing``), and the export URLs.

A listing holds at most ``MAX_SEGMENTS`` segments (the first ones in time; ``truncated``
is then set and the gaps cover only the listed part): the answer must fit in one frame.
No Twisted here.
"""

from vss.cdn.catalogue import MIN_GAP_MS
from vss.protocols.messages import ExportUrl, Recordings, RecordSegment, TimeRange

FANOUT_TIMEOUT = 2.0  # seconds CMS waits for each node's answer
MAX_SEGMENTS = 20000  # about 0.7 MB of segments: one frame holds at most 1 MiB


def node_answer(listing, node_id, export=None):
    """A node's ``Recordings`` from its catalogue's ``list`` result. ``export``: an
    ``ExportUrl`` for this range (only sent when the node holds segments)."""
    segs = listing["segments"]
    truncated = len(segs) > MAX_SEGMENTS
    segs = segs[:MAX_SEGMENTS]
    return Recordings(
        segments=[RecordSegment(start=s.start_ms, end=s.end_ms, bytes=s.bytes, node_id=node_id)
                  for s in segs],
        gaps=[TimeRange(start=a, end=b) for a, b in listing["gaps"]],
        missing=[], exports=[export] if export is not None and segs else [],
        truncated=truncated)


def gaps_of(segments, from_ms, to_ms, min_gap_ms=MIN_GAP_MS):
    """The parts of ``[from_ms, to_ms)`` no segment covers (segments sorted by start)."""
    gaps = []
    cursor = from_ms
    for s in segments:
        if s.start - cursor >= min_gap_ms:
            gaps.append(TimeRange(start=cursor, end=s.start))
        cursor = max(cursor, s.end)
    if to_ms - cursor >= min_gap_ms:
        gaps.append(TimeRange(start=cursor, end=to_ms))
    return gaps


def merge(from_ms, to_ms, answers, missing=()):
    """One ``Recordings`` from the answers (``Recordings`` bodies) of several nodes."""
    segments = sorted((s for a in answers for s in a.segments),
                      key=lambda s: (s.start, s.end, s.node_id))
    truncated = any(a.truncated for a in answers) or len(segments) > MAX_SEGMENTS
    if len(segments) > MAX_SEGMENTS:
        segments = segments[:MAX_SEGMENTS]
    end = to_ms
    if truncated and segments:
        end = min(to_ms, max(s.end for s in segments))
    exports = sorted((e for a in answers for e in a.exports), key=lambda e: e.node_id)
    return Recordings(segments=segments, gaps=gaps_of(segments, from_ms, end),
                      missing=sorted(set(missing)), exports=exports, truncated=truncated)


def export_url(base, token, expires_ms, node_id):
    return ExportUrl(node_id=node_id, url=f"{base}/export?token={token}", expires=expires_ms)
