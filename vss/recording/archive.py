"""
A node's archive: what it answers about its recordings, across nodes.

- ``NodeArchive.query`` (a CU's RECORD_QUERY, after its node checked the VIEW grant):
  the node asks CMS, which asks every node and merges (``vss.protocols.listing``); a node
  without CMS (``--static``), or whose CMS link is down, answers from its own catalogue
  (``missing`` then names ``cms``: other nodes were not asked).
- ``NodeArchive.local`` (CMS's RECORD_QUERY to this node): the node's own segments, with
  an export URL (``vss.recording.export``) when it holds some and serves HTTP, and for a DVR
  logged in here, the DVR's own segments, marked ``dvr:<device>`` (``vss.recording.dvr``).
- ``RetentionService``: every ``interval`` seconds, ``Recorder.enforce`` with the
  retention the node holds (``RecordSettingsSync.retention``: each channel's own days,
  the node's default for the others, one quota for the node), never deleting a segment
  that is being read (``in_use``: the segments the exports running here read, and every
  segment of a stream being played back from where its playback started or is now,
  ``playback_in_use``).
- ``wire(node)``: builds the above for a ``NodeService`` (called from ``vss.node``,
  which then opens the HTTP listener the export URLs name: ``node.http_listener``).
"""

from dataclasses import replace

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.listing import (
    FANOUT_TIMEOUT,
    encode_node_answer,
    encode_parts,
    export_url,
    gap_pairs,
    merge_parts,
    parse_body,
    parts_of,
)
from vss.protocols.messages import Stream
from vss.recording.dvr import device_recordings
from vss.recording.segments import stream_name

log = Logger()

DEFAULT_RETENTION_INTERVAL = 60.0
PLAYBACK_MARGIN_MS = 10 * 60_000
QUERY_TIMEOUT = FANOUT_TIMEOUT + 3.0  # the CU's node waits for CMS's merged answer
LINK_DOWN = (ResultCode.CENTRAL_UNAVAILABLE, ResultCode.SESSION_CLOSED, ResultCode.TIMEOUT)
#: the RecordQuery extension naming the user who asked (docs/protocol.md, section 4)
ASKED_BY = 0x0001


def asked_by(body):
    """The user a RecordQuery's ``ASKED_BY`` extension names, or '' (not a name: '')."""
    for tag, value in body.ext:
        if tag == ASKED_BY:
            try:
                name = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                return ""
            return name if name and len(name) <= 64 and "|" not in name else ""
    return ""


class NodeArchive:
    def __init__(self, node_id, catalogue, central, store, tokens=None, http_base=None,
                 open_segments=None, clock=None):
        self.node_id = node_id
        self.open_segments = open_segments  # f(device, stream name) -> [(start, bytes)]
        self.clock = clock
        self.catalogue = catalogue
        self.central = central
        self.store = store
        self.tokens = tokens
        self.http_base = http_base  # "http://host:port", or a callable giving it
        self.counters = {"queries": 0, "local": 0, "fallback": 0}
        self.pu_links = None  # the RGM's PU links: a DVR logged in here lists its own

    def check(self, body):
        """Refuse a query with bad arguments (VssError INVALID_ARGUMENT)."""
        if body.to_time <= body.from_time:
            raise VssError(ResultCode.INVALID_ARGUMENT, "to must be after from")
        if body.stream not in (Stream.MAIN, Stream.SUB):
            raise VssError(ResultCode.INVALID_ARGUMENT, f"unknown stream {body.stream}")
        record = self.store.get_device(body.device_id)
        if record is None:
            raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {body.device_id}")
        if record.channels and body.channel >= record.channels:
            raise VssError(ResultCode.INVALID_ARGUMENT, f"channel {body.channel} out of range "
                           f"(device has {record.channels})")

    @defer.inlineCallbacks
    def query(self, body, user=None):
        """A CU's query, across every node: the ``Recordings`` body's bytes (CMS's
        answer is passed on as it came). ``user``: who asks; the nodes holding footage
        put it in their export URLs, for the audit (extension ``ASKED_BY``)."""
        self.check(body)
        if user:
            body = replace(body, ext=tuple(e for e in body.ext if e[0] != ASKED_BY)
                           + ((ASKED_BY, user.encode("utf-8")),))
        self.counters["queries"] += 1
        try:
            return (yield self.central.query_recordings(body, QUERY_TIMEOUT)).body
        except VssError as e:
            if e.code not in LINK_DOWN:
                raise
            self.counters["fallback"] += 1
            log.info("recordings of {device} from this node only: {error}",
                     device=body.device_id, error=e.message)
        missing = ["cms"]
        answer = parse_body((yield self.local(body)))
        return encode_parts(merge_parts(body.from_time, body.to_time, [answer], missing))

    @defer.inlineCallbacks
    def local(self, body):
        """This node's own segments of the range: the ``Recordings`` body's bytes,
        packed from the catalogue's rows (``vss.protocols.listing.encode_node_answer``)."""
        self.counters["local"] += 1
        stream = stream_name(body.channel, body.stream)
        rows, gaps = yield self.catalogue.spans(body.device_id, stream, body.from_time,
                                                body.to_time)
        closed = bool(rows)  # what an export can give: the closed segments
        opens = self._open_rows(body, stream, rows)
        if opens:  # a recording in progress: listed up to now, not as a gap
            rows = sorted(list(rows) + opens)
            gaps = gap_pairs(rows, body.from_time, body.to_time)
        export = None
        base = self.http_base() if callable(self.http_base) else self.http_base
        if closed and base and self.tokens is not None:
            token, expires = self.tokens.issue(body.device_id, body.channel, stream,
                                               body.from_time, body.to_time,
                                               user=asked_by(body))
            export = export_url(base, token, expires, self.node_id)
        data = encode_node_answer(rows, gaps, self.node_id, export, [r[0] for r in opens])

        own = yield device_recordings(self.pu_links, self.store, body)
        if own is not None:  # a DVR's footage, marked as on the device (vss.recording.dvr)
            data = encode_parts(merge_parts(body.from_time, body.to_time,
                                            [parse_body(data), parts_of(own)]))
        return data

    def _open_rows(self, body, stream, rows):
        """(start, now, bytes so far) of the segments of the range being written, not
        in the catalogue yet."""
        if self.open_segments is None:
            return []
        now = int(self.clock.seconds() * 1000) if self.clock is not None else None
        closed = {r[0] for r in rows}
        out = []
        for start, size in self.open_segments(body.device_id, stream):
            end = max(start + 1, now or start + 1)
            if start not in closed and start < body.to_time and end > body.from_time:
                out.append((start, end, size))
        return out


class RetentionService(service.Service):
    """The periodic retention pass of a node's recorder."""

    def __init__(self, recorder, settings, clock, interval=DEFAULT_RETENTION_INTERVAL,
                 in_use=()):
        self.recorder = recorder
        self.settings = settings  # .retention() -> (days or None, quota bytes or None)
        self.clock = clock
        self.interval = interval
        self.in_use = list(in_use)  # callables giving sets of relative segment paths
        self.housekeeping = []  # callables run before each pass (e.g. stale export files)
        self.loop = None
        self.passes = 0
        self.deleted = 0

    def startService(self):
        super().startService()
        self.loop = task.LoopingCall(self.run_once)
        self.loop.clock = self.clock
        self.loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("retention stopped", f))

    def stopService(self):
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        return super().stopService()

    @defer.inlineCallbacks
    def busy_paths(self):
        """The union of what the ``in_use`` hooks name (each a set, or a Deferred of
        one). A hook that fails stops the pass: nothing is deleted blind."""
        paths = set()
        for fn in self.in_use:
            paths |= set((yield defer.maybeDeferred(fn)))
        return paths

    @defer.inlineCallbacks
    def run_once(self):
        for fn in self.housekeeping:
            try:
                fn()
            except Exception:  # noqa: BLE001 - housekeeping never stops retention
                log.failure("housekeeping failed")
        days, quota = self.settings.retention()
        if not days and quota is None:
            return []
        try:
            busy = yield self.busy_paths()
            deleted = yield self.recorder.enforce(days, quota, busy)
        except Exception:  # noqa: BLE001 - the next pass tries again
            log.failure("retention pass failed")
            return []
        self.passes += 1
        self.deleted += len(deleted)
        return deleted


@defer.inlineCallbacks
def playback_in_use(cdn, catalogue, margin_ms=PLAYBACK_MARGIN_MS):
    """The segments the CDN module's playbacks may read: for each playback open, every
    segment of its (device, stream) that ends after where it started or where the viewer
    is now, whichever is earlier, less ``margin_ms`` (a short seek back stays playable).
    The playback does not say which file its child has open, so this keeps more than
    that one file."""
    paths = set()
    service = getattr(cdn, "playback", None)
    for pb in list(getattr(service, "playbacks", {}).values()):
        try:
            since = min(pb.origin_ms, pb.where()) - margin_ms
        except Exception:  # noqa: BLE001 - then keep the whole stream
            since = 0
        listing = yield catalogue.list(pb.device, pb.stream, max(0, since), 2**62)
        paths.update(s.path for s in listing["segments"])
    return paths
