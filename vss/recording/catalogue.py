"""
The recording catalogue of a node: one SQLite row per closed segment file.

Each node indexes the fragmented MP4 segments its streaming server wrote (see
``vss.recording.recorder``) in ``<data_dir>/catalogue.sqlite3`` (WAL journal): device, channel,
stream, ``start_ms``/``end_ms`` (UTC wall clock, milliseconds), bytes, the path relative to
the data directory and the keyframe offsets (JSON ``[[ms from start, byte offset of the
fragment that starts at that keyframe], ...]``). The offsets (about 4 kB for a 5-minute
segment with a 1 s GOP) live in a side table keyed by segment id, so the segment table
stays small and a long listing reads few pages.

- ``CatalogueDB`` is the plain, blocking SQLite + file-system side (no Twisted), used by
  the tests and the bench directly.
- ``Catalogue`` runs every ``CatalogueDB`` call on ONE worker thread of its own (one
  connection, calls in order), so the reactor thread never waits on the disk.

Listing (``list``) reads segments that overlap a time range and the gaps between them,
WITHOUT the keyframe offsets (a 30-day listing does not parse 8640 JSON arrays; a player
asks ``get(path)`` for the one segment it seeks into). It uses the index on
``(device, stream, start_ms, end_ms, bytes)`` both ways (``spans``, what a listing on the
wire needs, reads that index alone): the first segment is the last one that starts
at or before ``from_ms`` (segments of one stream never overlap), the others start inside
the range.

Retention (``enforce``) is per device: each (device, channel) keeps its segments for its
own days (``Retention``: the recording settings of the channel; the others the node's
default), then the node's quota deletes the oldest segments of the whole catalogue,
whatever their device, until the total fits; a segment in use is never deleted. It
deletes the file first and the row after it, so a crash in between leaves a row without
a file, which ``repair`` drops.

``repair`` (at start, before any recording runs) makes the catalogue equal the files:
a closed ``.mp4`` without a row is probed and added; a ``.part`` (the segment open when
the recorder was killed) is SALVAGED when it holds the header and at least one complete
fragment (moof + mdat): it is truncated after its last complete fragment, fsynced,
renamed to ``.mp4`` and catalogued, its start time read from its name (to the
millisecond) and its end that plus the duration of its frames; a ``.part`` without a
complete fragment is deleted; a row whose file is gone is dropped.
"""

import json
import os
import re
import sqlite3
import struct
from collections import namedtuple
from datetime import UTC, datetime
from operator import itemgetter

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from vss.private import private_file
from vss.protocols.listing import MIN_GAP_MS, gap_pairs

log = Logger()

DB_NAME = "catalogue.sqlite3"
RECORDINGS = "recordings"

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    channel INTEGER NOT NULL DEFAULT 0,
    stream TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    path TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS keyframes (
    segment_id INTEGER PRIMARY KEY,
    offsets TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_by_stream ON segments (device, stream, start_ms, end_ms,
                                                       bytes);
CREATE INDEX IF NOT EXISTS segments_by_start ON segments (start_ms);
"""

Segment = namedtuple("Segment", "device channel stream start_ms end_ms bytes path keyframes")
Segment.__new__.__defaults__ = ((),)
_COLS = "device, channel, stream, start_ms, end_ms, bytes, path"
# The segments of (?1 device, ?2 stream) overlapping [?3, ?4): the last one starting at or
# before ?3, and those starting inside.
_RANGE = ("device = ?1 AND stream = ?2 AND start_ms >= COALESCE((SELECT max(start_ms) "
          "FROM segments WHERE device = ?1 AND stream = ?2 AND start_ms <= ?3), ?3) "
          "AND start_ms < ?4 AND end_ms > ?3")


class Retention(namedtuple("Retention", "default_days days")):
    """How long a node keeps its segments: ``days`` maps (device, channel) to the days
    its segments are kept (0: no age limit, only the quota); the segments of any other
    (device, channel) are kept ``default_days`` (None or 0: no age limit)."""

    __slots__ = ()

    def days_for(self, device, channel):
        return self.days.get((device, channel), self.default_days)




def _segment(row):
    return Segment._make(row + ((),))


# <UTC start to the ms>[-N].mp4[.part]; names of before the milliseconds have no '.fff'
_SEGMENT_NAME = re.compile(r"(\d{8}T\d{6})(?:\.(\d{3}))?Z(?:-\d+)?\.mp4(?:\.part)?$")


def segment_name(start_ms):
    """``YYYYMMDDTHHMMSS.fffZ`` (UTC, to the millisecond) of a start time in ms: the
    start time a segment salvaged after a crash gets back from its name."""
    seconds, ms = divmod(int(start_ms), 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y%m%dT%H%M%S") + f".{ms:03d}Z"


def parse_segment_name(name):
    """Start time (ms) of a segment file name (``<UTC start>[-N].mp4``, the start with
    or without its milliseconds), or None."""
    m = _SEGMENT_NAME.match(name)
    if m is None:
        return None
    try:
        dt = datetime.strptime(m[1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(dt.timestamp()) * 1000 + int(m[2] or 0)


# -- fragmented MP4 structure (sans-IO over a file object) ---------------------------

def _boxes(f, start, end):
    """(type, offset, size, header) of the boxes in [start, end); stops at the first
    box that is cut short (its type is then yielded with size None)."""
    off = start
    while off + 8 <= end:
        f.seek(off)
        head = f.read(8)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head)
        hl = 8
        if size == 1:
            big = f.read(8)
            if len(big) < 8:
                return
            size = struct.unpack(">Q", big)[0]
            hl = 16
        elif size == 0:
            size = end - off
        if size < hl or off + size > end:
            yield kind, off, None, hl
            return
        yield kind, off, size, hl
        off += size


def _child(f, box, kind):
    _, off, size, hl = box
    for b in _boxes(f, off + hl, off + size):
        if b[0] == kind and b[2] is not None:
            return b
    return None


def _payload(f, box, n):
    _, off, size, hl = box
    f.seek(off + hl)
    return f.read(min(n, size - hl))


def scan_fmp4(f):
    """Structure of a fragmented MP4 file object: a dict with ``moov`` (complete header
    present), ``fragments`` ([[ms, byte offset]] of each complete moof of the video
    track, ms from the track's time zero), ``complete_end`` (the byte after the last
    complete moof+mdat pair, or after the moov) and ``size``."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    out = {"moov": False, "fragments": [], "complete_end": 0, "size": size}
    video_id, timescale = None, None
    pending = None  # (offset, ms) of a moof waiting for its mdat
    for box in list(_boxes(f, 0, size)):
        kind, off, bsize, _ = box
        if bsize is None:
            break
        if kind == b"moov":
            out["moov"] = True
            out["complete_end"] = off + bsize
            for trak in _boxes(f, off + box[3], off + bsize):
                if trak[0] != b"trak" or trak[2] is None:
                    continue
                tkhd, mdia = _child(f, trak, b"tkhd"), _child(f, trak, b"mdia")
                if tkhd is None or mdia is None:
                    continue
                hdlr, mdhd = _child(f, mdia, b"hdlr"), _child(f, mdia, b"mdhd")
                if hdlr is None or mdhd is None or _payload(f, hdlr, 12)[8:12] != b"vide":
                    continue
                th = _payload(f, tkhd, 24)
                track_id = struct.unpack(">I", th[20:24] if th[0] == 1 else th[12:16])[0]
                mh = _payload(f, mdhd, 24)
                ts = struct.unpack(">I", mh[20:24] if mh[0] == 1 else mh[12:16])[0]
                if video_id is None and ts:
                    video_id, timescale = track_id, ts
        elif kind == b"moof":
            pending = (off, _fragment_time(f, box, video_id, timescale))
        elif kind == b"mdat" and pending is not None:
            if out["moov"]:
                out["complete_end"] = off + bsize
                if pending[1] is not None:
                    out["fragments"].append([pending[1], pending[0]])
            pending = None
        elif kind not in (b"moof", b"mdat"):
            if out["moov"] and pending is None:
                out["complete_end"] = max(out["complete_end"], off + bsize)
    return out


def _fragment_time(f, moof, video_id, timescale):
    if video_id is None:
        return None
    _, off, size, hl = moof
    for traf in _boxes(f, off + hl, off + size):
        if traf[0] != b"traf" or traf[2] is None:
            continue
        tfhd, tfdt = _child(f, traf, b"tfhd"), _child(f, traf, b"tfdt")
        if tfhd is None or tfdt is None:
            continue
        if struct.unpack(">I", _payload(f, tfhd, 8)[4:8])[0] != video_id:
            continue
        p = _payload(f, tfdt, 12)
        base = struct.unpack(">Q", p[4:12])[0] if p[0] == 1 else struct.unpack(">I", p[4:8])[0]
        return base * 1000 // timescale
    return None


def probe(path):
    """(duration ms, video frames) of a segment file, read with PyAV (no decoding)."""
    import av

    with av.open(path) as c:
        v = c.streams.video[0]
        first = last = None
        frames = 0
        for p in c.demux(v):
            if p.pts is None:
                continue
            frames += 1
            t0 = p.pts * p.time_base
            t1 = (p.pts + (p.duration or 0)) * p.time_base
            first = t0 if first is None else min(first, t0)
            last = t1 if last is None else max(last, t1)
    if first is None:
        return 0, 0
    return int((last - first) * 1000), frames


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- the blocking catalogue ------------------------------------------------------------

class CatalogueDB:
    """The catalogue of ``data_dir`` (blocking; use from one thread)."""

    def __init__(self, data_dir, clock=None):
        self.data_dir = os.path.abspath(data_dir)
        self.clock = clock
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        private_file(os.path.join(self.data_dir, DB_NAME))  # with its -wal and -shm: 0600
        self.db = sqlite3.connect(os.path.join(self.data_dir, DB_NAME), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        if len(self.db.execute("PRAGMA index_info(segments_by_stream)").fetchall()) == 3:
            # A catalogue from before the index covered a listing's columns.
            self.db.execute("DROP INDEX segments_by_stream")
        self.db.executescript(SCHEMA)

    def close(self):
        self.db.close()

    def abspath(self, rel):
        return os.path.join(self.data_dir, rel)

    def add(self, seg):
        """Insert (or replace, by path) one segment."""
        self.add_many([seg])

    def add_many(self, segs):
        db = self.db
        with db:
            db.execute("BEGIN")
            for s in segs:
                offsets = s.keyframes if isinstance(s.keyframes, str) else \
                    json.dumps([list(k) for k in s.keyframes], separators=(",", ":"))
                self._remove(s.path)
                cur = db.execute(
                    f"INSERT INTO segments ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (s.device, int(s.channel), s.stream, int(s.start_ms), int(s.end_ms),
                     int(s.bytes), s.path))
                db.execute("INSERT INTO keyframes (segment_id, offsets) VALUES (?, ?)",
                           (cur.lastrowid, offsets))

    def _remove(self, path):
        row = self.db.execute("SELECT id FROM segments WHERE path = ?", (path,)).fetchone()
        if row is not None:
            self.db.execute("DELETE FROM keyframes WHERE segment_id = ?", row)
            self.db.execute("DELETE FROM segments WHERE id = ?", row)

    def get(self, path):
        """The segment at ``path`` with its keyframe offsets, or None."""
        row = self.db.execute(f"SELECT {_COLS}, offsets FROM segments LEFT JOIN keyframes "
                              "ON segment_id = id WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        return Segment(*row[:7], keyframes=[tuple(k) for k in json.loads(row[7] or "[]")])

    def list(self, device, stream, from_ms, to_ms, min_gap_ms=MIN_GAP_MS):
        """``{"segments": [Segment...], "gaps": [(start_ms, end_ms)...]}`` for the
        segments of (device, stream) that overlap [from_ms, to_ms), in time order, and
        the uncovered parts of that range (holes shorter than ``min_gap_ms`` ignored)."""
        rows = self.db.execute(f"SELECT {_COLS} FROM segments WHERE {_RANGE} ORDER BY start_ms",
                               (device, stream, from_ms, to_ms)).fetchall()
        segments = [_segment(r) for r in rows]
        return {"segments": segments,
                "gaps": gap_pairs([(s.start_ms, s.end_ms) for s in segments], from_ms, to_ms,
                                  min_gap_ms)}

    def spans(self, device, stream, from_ms, to_ms, min_gap_ms=MIN_GAP_MS):
        """``list`` for a listing on the wire: ``(rows, gaps)``, rows as (start_ms,
        end_ms, bytes) tuples, read from the covering index alone."""
        rows = self.db.execute(f"SELECT start_ms, end_ms, bytes FROM segments WHERE {_RANGE} "
                               "ORDER BY start_ms", (device, stream, from_ms, to_ms)).fetchall()
        return rows, gap_pairs(rows, from_ms, to_ms, min_gap_ms)

    def oldest(self, count=1):
        rows = self.db.execute(f"SELECT {_COLS} FROM segments ORDER BY start_ms LIMIT ?",
                               (count,)).fetchall()
        return [_segment(r) for r in rows]

    def remove(self, paths):
        with self.db:
            self.db.execute("BEGIN")
            for p in paths:
                self._remove(p)

    def total_bytes(self):
        return self.db.execute("SELECT COALESCE(sum(bytes), 0) FROM segments").fetchone()[0]

    def count(self):
        return self.db.execute("SELECT count(*) FROM segments").fetchone()[0]

    def paths(self):
        return {r[0] for r in self.db.execute("SELECT path FROM segments")}

    # -- retention

    def _delete(self, segs):
        for s in segs:
            try:
                os.unlink(self.abspath(s.path))
            except FileNotFoundError:
                pass
        self.remove([s.path for s in segs])

    def enforce(self, retention_days, quota_bytes, in_use=(), now_ms=None):
        """A retention pass. ``retention_days``: a ``Retention`` (days per (device,
        channel), a default for the others), or one number of days for every segment
        (None or 0: no age limit). First the segments that ended more than their days
        ago, then the oldest ones of the whole catalogue, whatever their device, until
        the total is within ``quota_bytes`` (None: no quota); never one whose path is in
        ``in_use``. Returns the deleted segments."""
        in_use = set(in_use)
        if now_ms is None:
            now_ms = int(self.clock.seconds() * 1000)
        policy = retention_days if isinstance(retention_days, Retention) else \
            Retention(retention_days, {})
        deleted = []
        expired = [s for s in self._expired(policy, now_ms) if s.path not in in_use]
        for i in range(0, len(expired), 1000):
            self._delete(expired[i:i + 1000])
        deleted.extend(expired)
        if quota_bytes is not None:
            excess = self.total_bytes() - quota_bytes
            offset = 0
            while excess > 0:
                rows = self.db.execute(f"SELECT {_COLS} FROM segments ORDER BY start_ms "
                                       "LIMIT 256 OFFSET ?", (offset,)).fetchall()
                if not rows:
                    break
                batch = []
                for s in map(_segment, rows):
                    if s.path in in_use:
                        offset += 1
                        continue
                    batch.append(s)
                    excess -= s.bytes
                    if excess <= 0:
                        break
                self._delete(batch)
                deleted.extend(batch)
        if deleted:
            log.info("retention deleted {n} segments ({bytes} bytes)", n=len(deleted),
                     bytes=sum(s.bytes for s in deleted))
        return deleted

    def _expired(self, policy, now_ms):
        """The segments older than their retention, oldest first."""
        def cutoff(days):
            return now_ms - int(days * 86400_000)

        out = []
        for (device, channel), days in policy.days.items():
            if days:
                out += self.db.execute(
                    f"SELECT {_COLS} FROM segments WHERE device = ? AND channel = ? AND "
                    "start_ms <= ?3 AND end_ms <= ?3", (device, channel, cutoff(days))).fetchall()
        if policy.default_days:
            limit = cutoff(policy.default_days)
            own = policy.days
            out += [r for r in self.db.execute(
                f"SELECT {_COLS} FROM segments WHERE start_ms <= ?1 AND end_ms <= ?1",
                (limit,)) if (r[0], r[1]) not in own]
        out.sort(key=itemgetter(3))
        return [_segment(r) for r in out]

    # -- crash repair

    def repair(self, skip=()):
        """Make the catalogue equal the files under ``recordings/`` (see the module
        docstring). ``skip``: relative paths being written now. Returns a dict of what
        was done: added, salvaged, discarded, dropped (lists of relative paths)."""
        skip = set(skip)
        root = self.abspath(RECORDINGS)
        report = {"added": [], "salvaged": [], "discarded": [], "dropped": []}
        known = self.paths()
        on_disk = set()
        for dirpath, _dirs, files in os.walk(root):
            for name in sorted(files):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.data_dir)
                if rel in skip:
                    continue
                if name.endswith(".mp4.part"):
                    final = self._salvage(full)
                    if final is None:
                        report["discarded"].append(rel)
                        continue
                    rel = os.path.relpath(final, self.data_dir)
                    report["salvaged"].append(rel)
                    full = final
                elif not name.endswith(".mp4"):
                    continue
                on_disk.add(rel)
                if rel not in known:
                    seg = self._describe(full, rel)
                    if seg is None:
                        report["discarded"].append(rel)
                        on_disk.discard(rel)
                        continue
                    self.add(seg)
                    if rel not in report["salvaged"]:
                        report["added"].append(rel)
        gone = sorted(known - on_disk)
        if gone:
            self.remove(gone)
            report["dropped"] = gone
        log.info("catalogue repair: {added} added, {salvaged} salvaged, {discarded} "
                 "discarded, {dropped} dropped", **{k: len(v) for k, v in report.items()})
        return report

    def _salvage(self, part):
        """The final path of a salvaged ``.part``, or None (deleted)."""
        try:
            with open(part, "r+b") as f:
                info = scan_fmp4(f)
                if not info["moov"] or not info["fragments"]:
                    raise ValueError("no complete fragment")
                f.truncate(info["complete_end"])
                f.flush()
                os.fsync(f.fileno())
        except (OSError, ValueError, struct.error) as e:
            log.info("discarding {path}: {why}", path=part, why=str(e))
            try:
                os.unlink(part)
            except FileNotFoundError:
                pass
            return None
        final = part[:-len(".part")]
        os.replace(part, final)
        fsync_dir(os.path.dirname(final))
        log.info("salvaged {path}: {n} complete fragments", path=final,
                 n=len(info["fragments"]))
        return final

    def _describe(self, full, rel):
        """A ``Segment`` for a closed file found on disk (path layout
        ``recordings/<device>/<stream>/<start>.mp4``), or None if it is unreadable."""
        parts = rel.split(os.sep)
        start_ms = parse_segment_name(parts[-1])
        if len(parts) != 4 or start_ms is None:
            return None
        device, stream = parts[1], parts[2]
        channel = 0
        if stream.startswith("ch") and "-" in stream:
            digits = stream[2:].split("-", 1)[0]
            channel = int(digits) if digits.isascii() and digits.isdigit() else 0
        try:
            duration, _frames = probe(full)
            with open(full, "rb") as f:
                info = scan_fmp4(f)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported
            log.warn("cannot read segment {path}: {error}", path=full, error=str(e))
            return None
        return Segment(device, channel, stream, start_ms, start_ms + duration, info["size"],
                       rel, info["fragments"])


# -- the catalogue, off the reactor thread ---------------------------------------------

class Catalogue:
    """``CatalogueDB`` on a worker thread of its own; every method returns a Deferred.
    ``open()`` before use, ``close()`` at the end."""

    def __init__(self, data_dir, clock=None, reactor=None):
        self.data_dir = data_dir
        self.clock = clock
        self._reactor = reactor
        self._pool = None
        self.db = None

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def _call(self, fn, *args, **kw):
        return threads.deferToThreadPool(self.reactor, self._pool, fn, *args, **kw)

    def open(self):
        self._pool = ThreadPool(1, 1, name="vss-catalogue")
        self._pool.start()

        def connect():
            self.db = CatalogueDB(self.data_dir, self.clock)
            return self

        return self._call(connect)

    def close(self):
        pool, self._pool = self._pool, None
        if pool is None:
            return defer.succeed(None)

        d = threads.deferToThreadPool(self.reactor, pool,
                                      lambda: self.db and self.db.close())
        d.addBoth(lambda r: (pool.stop(), r)[1])
        return d

    def __getattr__(self, name):
        if name in ("add", "add_many", "get", "list", "oldest", "remove", "total_bytes",
                    "count", "paths", "enforce", "repair", "spans"):
            return lambda *a, **kw: self._call(lambda: getattr(self.db, name)(*a, **kw))
        raise AttributeError(name)

