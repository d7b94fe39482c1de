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
``encode_recordings``/``decode_recordings`` carry the ``Recordings`` body without
construct (the same bytes). No Twisted here, but for ``check_response`` of the link
module (which imports no reactor).
"""

import struct

from vss.cdn.catalogue import MIN_GAP_MS
from vss.errors import VssError
from vss.protocols import codec
from vss.protocols.link import check_response
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


# -- the Recordings body without construct ---------------------------------------------
#
# A 30-day listing holds about 8,640 segments; construct takes about 80 ms to encode and
# 110 ms to decode such a body, and a listing crosses three links (node -> CMS -> node ->
# CU). These two functions give the same bytes and objects as the construct definition in
# vss/protocols/messages.py (tests/test_recording_catalogue.py checks both ways); a body
# with extensions, or anything they doubt, goes through construct.

_QQQ = struct.Struct(">QQQ")
_QQ = struct.Struct(">QQ")
_Q = struct.Struct(">Q")
_H = struct.Struct(">H")


def _str(text, cache=None):
    if cache is not None:
        out = cache.get(text)
        if out is not None:
            return out
    raw = text.encode("utf-8")
    out = _H.pack(len(raw)) + raw
    if cache is not None:
        cache[text] = out
    return out


def encode_recordings(body):
    """The body bytes of a ``Recordings``."""
    if body.ext:
        return codec.encode_body(body)
    names = {}
    pack3, pack2 = _QQQ.pack, _QQ.pack
    parts = [_H.pack(len(body.segments))]
    parts += [pack3(s.start, s.end, s.bytes) + _str(s.node_id, names) for s in body.segments]
    parts.append(_H.pack(len(body.gaps)))
    parts += [pack2(g.start, g.end) for g in body.gaps]
    parts.append(_H.pack(len(body.missing)))
    parts += [_str(m) for m in body.missing]
    parts.append(_H.pack(len(body.exports)))
    parts += [_str(e.node_id) + _str(e.url) + _Q.pack(e.expires) for e in body.exports]
    parts.append(b"\x01\x00\x00" if body.truncated else b"\x00\x00\x00")
    data = b"".join(parts)
    if len(body.segments) > 0xFFFF or len(body.gaps) > 0xFFFF:
        return codec.encode_body(body)
    return data


def _fast_decode(data):
    p = 0
    unpack3, unpack2, unpack_h = _QQQ.unpack_from, _QQ.unpack_from, _H.unpack_from
    names = {}

    def text(p):
        n = unpack_h(data, p)[0]
        q = p + 2 + n
        if q > len(data):
            raise ValueError("short")
        raw = data[p + 2:q]
        value = names.get(raw)
        if value is None:
            value = names[raw] = raw.decode("utf-8")
        return value, q

    count = unpack_h(data, p)[0]
    p += 2
    segments = []
    for _ in range(count):
        start, end, size = unpack3(data, p)
        node, p = text(p + 24)
        segments.append(RecordSegment(start, end, size, node))
    count = unpack_h(data, p)[0]
    p += 2
    gaps = []
    for _ in range(count):
        gaps.append(TimeRange(*unpack2(data, p)))
        p += 16
    count = unpack_h(data, p)[0]
    p += 2
    missing = []
    for _ in range(count):
        m, p = text(p)
        missing.append(m)
    count = unpack_h(data, p)[0]
    p += 2
    exports = []
    for _ in range(count):
        node, p = text(p)
        url, p = text(p)
        exports.append(ExportUrl(node, url, _Q.unpack_from(data, p)[0]))
        p += 8
    flag = data[p:p + 1]
    if flag not in (b"\x00", b"\x01") or data[p + 1:] != b"\x00\x00":
        raise ValueError("not a plain body")
    return Recordings(segments=segments, gaps=gaps, missing=missing, exports=exports,
                      truncated=flag == b"\x01")


def decode_recordings(frame):
    """The ``Recordings`` of a RECORD_QUERY response frame (raise ``VssError`` for an
    error response or a body construct refuses)."""
    check_response(frame)
    try:
        return _fast_decode(frame.body)
    except (ValueError, struct.error, UnicodeDecodeError, IndexError):
        pass
    msg = codec.decode_body(frame)
    if isinstance(msg, codec.ProtocolError):
        raise VssError(msg.code, msg.message)
    return msg.body


def export_url(base, token, expires_ms, node_id):
    return ExportUrl(node_id=node_id, url=f"{base}/export?token={token}", expires=expires_ms)
