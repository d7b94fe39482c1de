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

A segment still being written is listed too, up to the time of the answer (its
``bytes`` so far), so a recording in progress is not shown as a gap; the extension
``OPEN_TAG`` of the ``Recordings`` body names those segments (``open_segments``).

A listing holds at most ``MAX_SEGMENTS`` segments (the first ones in time; ``truncated``
is then set and the gaps cover only the listed part): the answer must fit in one frame.
``encode_recordings``/``decode_recordings`` carry the ``Recordings`` body without
construct (the same bytes). No Twisted here, but for ``check_response`` of the link
module (which imports no reactor).
"""

import struct
from collections import namedtuple
from itertools import accumulate, chain
from operator import itemgetter

from vss.protocols import codec
from vss.protocols.errors import VssError
from vss.protocols.link import check_response
from vss.protocols.messages import ExportUrl, Recordings, RecordSegment, TimeRange

MIN_GAP_MS = 500  # holes shorter than this between segments are not reported as gaps


def gap_pairs(spans, from_ms, to_ms, min_gap_ms=MIN_GAP_MS):
    """The parts of ``[from_ms, to_ms)`` that no span covers, as (start, end) pairs:
    ``spans`` are tuples (start, end, ...) sorted by start; holes shorter than
    ``min_gap_ms`` are ignored."""
    cursors = list(accumulate(map(itemgetter(1), spans), max, initial=from_ms))
    gaps = [(c, s) for c, s in zip(cursors, map(itemgetter(0), spans), strict=False)
            if s - c >= min_gap_ms]
    if to_ms - cursors[-1] >= min_gap_ms:
        gaps.append((cursors[-1], to_ms))
    return gaps


FANOUT_TIMEOUT = 2.0  # seconds CMS waits for each node's answer
MAX_SEGMENTS = 20000  # about 0.7 MB of segments: one frame holds at most 1 MiB
#: extension tag of ``Recordings``: the segments of the list still being written, as
#: u16 count, then per segment its ``start`` (u64) and ``node_id`` (str)
OPEN_TAG = 0x0001
MAX_OPEN = 1000  # the extension's value must fit its u16 length


def encode_open(opens):
    """The ``OPEN_TAG`` value for (start, node_id) pairs."""
    opens = sorted(set(opens))[:MAX_OPEN]
    return _H.pack(len(opens)) + b"".join(_Q.pack(start) + _str(node) for start, node in opens)


def decode_open(value):
    """The (start, node_id) pairs of an ``OPEN_TAG`` value (ValueError if malformed)."""
    count = _H.unpack_from(value, 0)[0]
    p, out = 2, []
    for _ in range(count):
        start = _Q.unpack_from(value, p)[0]
        n = _H.unpack_from(value, p + 8)[0]
        if p + 10 + n > len(value):
            raise ValueError("short")
        out.append((start, bytes(value[p + 10:p + 10 + n]).decode("utf-8")))
        p += 10 + n
    if p != len(value):
        raise ValueError("trailing bytes")
    return out


def open_segments(body):
    """The (start, node_id) pairs of the segments of a ``Recordings`` that were still
    being written when it was answered (its ``OPEN_TAG`` extension)."""
    for tag, value in body.ext:
        if tag == OPEN_TAG:
            try:
                return set(decode_open(value))
            except (ValueError, struct.error, UnicodeDecodeError):
                return set()
    return set()


def _open_ext(opens):
    return ((OPEN_TAG, encode_open(opens)),) if opens else ()


def node_answer(listing, node_id, export=None, opens=()):
    """A node's ``Recordings`` from its catalogue's ``list`` result. ``export``: an
    ``ExportUrl`` for this range (only sent when the node holds segments); ``opens``:
    the starts of the listed segments still being written."""
    segs = listing["segments"]
    truncated = len(segs) > MAX_SEGMENTS
    segs = segs[:MAX_SEGMENTS]
    return Recordings(
        segments=[RecordSegment(start=s.start_ms, end=s.end_ms, bytes=s.bytes, node_id=node_id)
                  for s in segs],
        gaps=[TimeRange(start=a, end=b) for a, b in listing["gaps"]],
        missing=[], exports=[export] if export is not None and segs else [],
        truncated=truncated, ext=_open_ext([(start, node_id) for start in opens]))


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
    listed = {(s.start, s.node_id) for s in segments}
    opens = [o for a in answers for o in open_segments(a) if o in listed]
    return Recordings(segments=segments, gaps=gaps_of(segments, from_ms, end),
                      missing=sorted(set(missing)), exports=exports, truncated=truncated,
                      ext=_open_ext(opens))


# -- the Recordings body without construct ---------------------------------------------
#
# A 30-day listing holds about 8,640 segments; construct takes about 80 ms to encode and
# 110 ms to decode such a body, and a listing crosses three links (node -> CMS -> node ->
# CU). The functions below give the same bytes and objects as the construct definition
# in vss/protocols/messages.py (tests/test_recording_catalogue.py checks both ways); a
# body with extensions, or anything they doubt, goes through construct.
#
# Between the node and CMS no record objects are built at all: a node packs its
# catalogue rows straight into the body (``encode_node_answer``), CMS parses each answer
# into plain tuples (``parse_answer``: segments as ``(start, end, bytes, name length,
# name bytes)``, the wire record's own fields, unpacked by ``struct.iter_unpack`` over
# runs of records of one name length), merges the tuples and packs them again
# (``merge_parts``). Only the CU's ``decode_recordings`` builds ``RecordSegment``s.

_QQQ = struct.Struct(">QQQ")
_QQ = struct.Struct(">QQ")
_Q = struct.Struct(">Q")
_H = struct.Struct(">H")
_SEGMENT = {}  # name length -> Struct of one segment record with a name that long
_by_name = itemgetter(0, 1, 4)
_length = itemgetter(3)


def _segment_struct(n):
    st = _SEGMENT.get(n)
    if st is None:
        st = _SEGMENT[n] = struct.Struct(f">QQQH{n}s")
    return st


Parts = namedtuple("Parts", "segments gaps missing exports truncated open", defaults=((),))
Parts.__doc__ = """A plain ``Recordings`` body as tuples: ``segments`` as (start, end,
bytes, name length, UTF-8 name) in wire order, ``gaps`` as (start, end), ``missing`` as
str, ``exports`` as ``ExportUrl``, ``open`` the (start, node id) of the segments still
being written (the ``OPEN_TAG`` extension)."""


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


def _tail(gaps, missing, exports, truncated, opens=()):
    """Everything after the segment records (gaps as (start, end) pairs)."""
    parts = [_H.pack(len(gaps))]
    parts += [_QQ.pack(a, b) for a, b in gaps]
    parts.append(_H.pack(len(missing)))
    parts += [_str(m) for m in missing]
    parts.append(_H.pack(len(exports)))
    parts += [_str(e.node_id) + _str(e.url) + _Q.pack(e.expires) for e in exports]
    parts.append(b"\x01" if truncated else b"\x00")
    if opens:
        value = encode_open(opens)
        parts.append(_H.pack(1) + _H.pack(OPEN_TAG) + _H.pack(len(value)) + value)
    else:
        parts.append(b"\x00\x00")
    return b"".join(parts)


def encode_recordings(body):
    """The body bytes of a ``Recordings``."""
    if any(tag != OPEN_TAG for tag, _ in body.ext) or len(body.ext) > 1 \
            or len(body.segments) > 0xFFFF or len(body.gaps) > 0xFFFF:
        return codec.encode_body(body)
    names = {}
    pack3 = _QQQ.pack
    segments = b"".join([pack3(s.start, s.end, s.bytes) + _str(s.node_id, names)
                         for s in body.segments])
    return b"".join((_H.pack(len(body.segments)), segments, _tail(
        [(g.start, g.end) for g in body.gaps], body.missing, body.exports, body.truncated,
        open_segments(body))))


def encode_parts(parts):
    """The body bytes of a ``Parts`` (the same as ``encode_recordings`` of its
    ``Recordings``)."""
    segs = parts.segments
    if len(segs) > 0xFFFF or len(parts.gaps) > 0xFFFF:
        return encode_recordings(recordings_of(parts))
    packs = {n: _segment_struct(n).pack for n in set(map(_length, segs))}
    records = b"".join([packs[t[3]](*t) for t in segs])
    return b"".join((_H.pack(len(segs)), records,
                     _tail(parts.gaps, parts.missing, parts.exports, parts.truncated,
                           parts.open)))


def encode_node_answer(rows, gaps, node_id, export=None, opens=()):
    """``encode_recordings(node_answer(...))`` straight from catalogue rows: ``rows``
    (start_ms, end_ms, bytes) in time order, ``gaps`` (start_ms, end_ms) pairs,
    ``opens`` the starts of the rows still being written."""
    truncated = len(rows) > MAX_SEGMENTS
    if truncated:
        rows = rows[:MAX_SEGMENTS]
    listed = {r[0] for r in rows}
    opens = [(start, node_id) for start in opens if start in listed]
    if len(gaps) > 0xFFFF:
        return encode_recordings(node_answer(
            {"segments": [_Row(*r) for r in rows], "gaps": gaps}, node_id, export,
            [start for start, _ in opens]))
    name = node_id.encode("utf-8")
    pack, n = _segment_struct(len(name)).pack, len(name)
    records = b"".join([pack(s, e, b, n, name) for s, e, b in rows])
    exports = [export] if export is not None and rows else []
    return b"".join((_H.pack(len(rows)), records, _tail(gaps, [], exports, truncated, opens)))


_Row = namedtuple("_Row", "start_ms end_ms bytes")


def _segments(data, p, count):
    """The segment records from ``p``: runs of records whose names have one length are
    unpacked at once (a run is only kept up to its first record of another length, so
    every record is read at its true offset)."""
    out = []
    view = memoryview(data)
    want = 64
    while len(out) < count:
        n = _H.unpack_from(data, p + 24)[0]
        st = _segment_struct(n)
        k = min(count - len(out), want, (len(data) - p) // st.size)
        if k <= 0:
            raise ValueError("short")
        run = list(st.iter_unpack(view[p:p + k * st.size]))
        lengths = list(map(_length, run))
        if lengths.count(n) == k:
            want *= 4
        else:
            k = next(i for i, x in enumerate(lengths) if x != n)
            run = run[:k]
            want = 8
        out += run
        p += k * st.size
    return out, p


def parse_body(data):
    """The ``Parts`` of a plain ``Recordings`` body (ValueError, struct.error or
    UnicodeDecodeError for anything else: then ask construct)."""
    unpack_h = _H.unpack_from

    def text(p):
        n = unpack_h(data, p)[0]
        q = p + 2 + n
        if q > len(data):
            raise ValueError("short")
        return data[p + 2:q].decode("utf-8"), q

    count = unpack_h(data, 0)[0]
    segments, p = _segments(data, 2, count)
    count = unpack_h(data, p)[0]
    p += 2
    if p + 16 * count > len(data):
        raise ValueError("short")
    gaps = list(_QQ.iter_unpack(memoryview(data)[p:p + 16 * count]))
    p += 16 * count
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
    if flag not in (b"\x00", b"\x01"):
        raise ValueError("not a plain body")
    opens = ()
    rest = data[p + 1:]
    if rest != b"\x00\x00":  # the one extension known here, else construct decodes it
        if len(rest) < 6 or rest[:4] != _H.pack(1) + _H.pack(OPEN_TAG) \
                or _H.unpack_from(rest, 4)[0] != len(rest) - 6:
            raise ValueError("not a plain body")
        opens = tuple(decode_open(rest[6:]))
    return Parts(segments, gaps, missing, exports, flag == b"\x01", opens)


def parts_of(body):
    """The ``Parts`` of a ``Recordings`` (its extensions are dropped)."""
    segments = []
    for s in body.segments:
        name = s.node_id.encode("utf-8")
        segments.append((s.start, s.end, s.bytes, len(name), name))
    return Parts(segments, [(g.start, g.end) for g in body.gaps], list(body.missing),
                 list(body.exports), bool(body.truncated), tuple(sorted(open_segments(body))))


def recordings_of(parts):
    """The ``Recordings`` of a ``Parts``."""
    segs = parts.segments
    names = {raw: raw.decode("utf-8") for raw in set(map(itemgetter(4), segs))}
    segments = list(map(RecordSegment, map(itemgetter(0), segs), map(itemgetter(1), segs),
                        map(itemgetter(2), segs), map(names.__getitem__,
                                                      map(itemgetter(4), segs))))
    return Recordings(segments=segments, gaps=[TimeRange(a, b) for a, b in parts.gaps],
                      missing=parts.missing, exports=parts.exports,
                      truncated=parts.truncated, ext=_open_ext(parts.open))


def _decode(frame):
    check_response(frame)
    msg = codec.decode_body(frame)
    if isinstance(msg, codec.ProtocolError):
        raise VssError(msg.code, msg.message)
    return msg.body


def parse_answer(frame):
    """The ``Parts`` of a RECORD_QUERY response frame (raise ``VssError`` for an error
    response or a body construct refuses). A body with extensions is decoded by
    construct and its extensions dropped (CMS merges only the fields it knows)."""
    check_response(frame)
    try:
        return parse_body(frame.body)
    except (ValueError, struct.error, UnicodeDecodeError, IndexError):
        pass
    return parts_of(_decode(frame))


def decode_recordings(frame):
    """The ``Recordings`` of a RECORD_QUERY response frame (raise ``VssError`` for an
    error response or a body construct refuses)."""
    check_response(frame)
    try:
        return recordings_of(parse_body(frame.body))
    except (ValueError, struct.error, UnicodeDecodeError, IndexError):
        pass
    return _decode(frame)


def merge_parts(from_ms, to_ms, answers, missing=()):
    """``merge`` on ``Parts``: the ``Parts`` of the merged answer."""
    # Stable, as ``merge``'s sort (UTF-8 bytes order as their code points do); each
    # answer is one sorted run, which the sort takes as it is.
    segments = sorted(chain.from_iterable(a.segments for a in answers), key=_by_name)
    truncated = any(a.truncated for a in answers) or len(segments) > MAX_SEGMENTS
    if len(segments) > MAX_SEGMENTS:
        segments = segments[:MAX_SEGMENTS]
    end = to_ms
    if truncated and segments:
        end = min(to_ms, max(map(itemgetter(1), segments)))
    exports = sorted((e for a in answers for e in a.exports), key=lambda e: e.node_id)
    opens = [o for a in answers for o in a.open]
    if opens:
        listed = {(t[0], t[4].decode("utf-8")) for t in segments}
        opens = tuple(sorted(o for o in set(opens) if o in listed))
    else:
        opens = ()
    return Parts(segments, gap_pairs(segments, from_ms, end), sorted(set(missing)),
                 exports, truncated, opens)


def export_url(base, token, expires_ms, node_id):
    return ExportUrl(node_id=node_id, url=f"{base}/export?token={token}", expires=expires_ms)
