"""
Playback of footage another node holds, relayed into this node's SS as live video is.

``media_open(cdn, body)`` serves every MEDIA_OPEN with ``purpose=PLAYBACK`` (the CDN
module checked the CU's VIEW grant on this node):

1. a DVR logged in here, at a time this node's catalogue has nothing for: the DVR
   publishes its own footage (``vss.recording.dvr``);
2. this node's catalogue holds footage at ``start_time``: this node's playback
   (``vss.recording.playback``);
3. otherwise the catalogue across nodes is asked (CMS's RECORD_QUERY, as
   ``NodeArchive.query`` does, from ``start_time`` for ``WINDOW_MS``). The first segment
   that ends after ``start_time`` names who holds the footage: this node (footage later
   than asked) is played here; ``dvr:<device>`` is the DVR's own footage, asked of the
   DVR's home node; any other node is asked for it. No footage anywhere is NOT_FOUND;
   nothing found while some node did not answer is HOME_NODE_DOWN naming it.
4. the holding node gets the MEDIA_OPEN routed to it (ROUTE_REQUEST, node to node):
   the device's home node through ``central.route``; any other node straight over a
   node link (``central.peers``), since CMS routes by device and the holder need not be
   home to any device (the device moved away and its old footage stayed; a node kept as
   an archive). Its address is the one kept in ``central.node_endpoints``, else asked of
   CMS by node id (``central.lookup_node``, NODE_LOOKUP), and asked again once when a
   kept address no longer answers (the node restarted elsewhere). It answers with
   ``serve_routed``: its own playback or its DVR's, never relayed further.
5. this node's SS pulls the origin's URL (``pull_into`` with ``play=False``: set up,
   not playing) onto a path of its own, ``/live/<device>/pb-<id>`` (``pb-dvr-<id>`` for
   a DVR), and the CU gets a URL of that path with its own play token.

``RelayedPlayback`` is the SS's controller of such a path: the viewer's PLAY (with its
``Range``, npt or clock, passed on as it came: the origin's npt counts from the same
time) and PAUSE are sent on the pull's RTSP session to the origin playback, whose PLAY
starts, seeks or resumes its child there; the viewer's reply carries the origin's
``Range``. The reader is attached when the origin answered, before the origin's first
packet after it is read (they come on the same connection, after the answer). The
origin's first PLAY comes only with the viewer's, so the viewer starts at the keyframe
at or before the asked time, as on the origin's node. A DVR's footage is pulled playing
at once (the DVR publishes from the asked time; it has no seek).

The relay ends like a playback of this node: through the CDN module's idle stop (no
reader for ``linger`` seconds and no RTSP session left, e.g. a paused viewer), which
tears the pull down (the origin then stops its playback the same way), or when the
origin ends the stream (the footage ended), which closes this node's source.
"""

import os
from datetime import UTC, datetime

from twisted.internet import defer
from twisted.logger import Logger

from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.listing import decode_recordings
from vss.protocols.messages import MsgType, RecordQuery
from vss.recording import dvr
from vss.recording.segments import stream_name
from vss.rtsp.client import RTSPError, pull_into
from vss.rtsp.server import ControlError

log = Logger()

WINDOW_MS = 86400_000  # footage is looked for up to a day after the asked time
QUERY_TIMEOUT = 5.0  # CMS waits FANOUT_TIMEOUT (2 s) for each node's answer
CONTROL_TIMEOUT = 15.0  # seconds a PLAY or PAUSE forwarded to the origin may take
PREFIX = "pb-"  # the public path of a relayed playback, as a local one
LINK_DOWN = (ResultCode.CENTRAL_UNAVAILABLE, ResultCode.SESSION_CLOSED, ResultCode.TIMEOUT)
UNREACHABLE = (ResultCode.HOME_NODE_DOWN, ResultCode.TIMEOUT, ResultCode.SESSION_CLOSED,
               ResultCode.CENTRAL_UNAVAILABLE)


def _stream(body):
    return stream_name(body.channel, body.stream)


@defer.inlineCallbacks
def _local_covers(cdn, body):
    """True if this node's catalogue holds footage at ``start_time``."""
    if cdn.playback is None:
        return False
    start = int(body.start_time)
    listing = yield cdn.playback.catalogue.list(body.device_id, _stream(body), start,
                                                start + 1)
    return any(s.start_ms <= start < s.end_ms for s in listing["segments"])


@defer.inlineCallbacks
def _local(cdn, body):
    if (yield dvr.wants_playback(cdn, body)):  # footage only on the DVR
        return (yield dvr.open_playback(cdn, body))
    if cdn.playback is None:
        raise VssError(ResultCode.NOT_SUPPORTED, "playback is not available on this node")
    return (yield cdn.playback.open(body))


@defer.inlineCallbacks
def serve_routed(cdn, body):
    """A playback routed here by another node (the CU's grant was checked there): this
    node's own footage or its DVR's; a ``MediaUrl`` of this node's SS."""
    return (yield _local(cdn, body))


@defer.inlineCallbacks
def find_holder(cdn, body):
    """Who holds footage of ``body`` at or after ``start_time``: (node id or
    ``dvr:<device>``, missing node ids), (None, missing) if nobody does, or None when
    the catalogue across nodes cannot be asked (no CMS, or its link is down)."""
    ask = cdn.rgm.central.query_recordings
    start = int(body.start_time)
    query = RecordQuery(device_id=body.device_id, channel=body.channel, stream=body.stream,
                        from_time=start, to_time=start + WINDOW_MS)

    try:
        listing = decode_recordings((yield ask(query, QUERY_TIMEOUT)))
    except VssError as e:
        if e.code not in LINK_DOWN:
            raise
        log.info("playback of {device}: footage of other nodes unknown ({error})",
                 device=body.device_id, error=e.message)
        return None
    found = [s for s in listing.segments if s.end > start]
    if not found:
        return None, list(listing.missing)
    first = min(found, key=lambda s: s.start)
    at = max(start, first.start)
    me = cdn.rgm.node_id
    if any(s.node_id == me and s.start <= at < s.end for s in found):
        return me, list(listing.missing)  # this node holds it too: no relay
    return first.node_id, list(listing.missing)


@defer.inlineCallbacks
def media_open(cdn, body):
    """A CU's MEDIA_OPEN with ``purpose=PLAYBACK`` (its VIEW grant checked): a
    ``MediaUrl`` of this node's SS, the footage played here or relayed from where it
    is."""
    if (yield dvr.wants_playback(cdn, body)) or (yield _local_covers(cdn, body)):
        return (yield _local(cdn, body))
    holder = yield find_holder(cdn, body)
    if holder is None:  # other nodes cannot be asked: this node's footage, if any
        return (yield _local(cdn, body))
    node, missing = holder
    if node is None:
        try:
            return (yield _local(cdn, body))  # later footage of this node, if any
        except VssError as e:
            if e.code != ResultCode.NOT_FOUND or not missing:
                raise

            at = datetime.fromtimestamp(int(body.start_time) / 1000, UTC)
            raise VssError(ResultCode.HOME_NODE_DOWN,
                           f"no recording of {body.device_id} found at or after "
                           f"{at:%Y-%m-%d %H:%M:%S} UTC: node(s) {', '.join(missing)} "
                           "did not answer (down?)") from None
    if node == cdn.rgm.node_id:
        return (yield _local(cdn, body))
    record = cdn.store.get_device(body.device_id)
    if record is None:
        raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {body.device_id}")
    if node == dvr.mark(body.device_id):
        home = record.home_node or cdn.rgm.node_id
        if home == cdn.rgm.node_id:  # its home, but the DVR is not logged in
            raise VssError(ResultCode.DEVICE_OFFLINE, f"{body.device_id} is offline")
        url = yield route(cdn, home, record, body)
        return (yield relay_dvr(cdn, body, url, home))
    url = yield route(cdn, node, record, body)
    return (yield relay(cdn, body, url, node))


def _answer(status, inner, node):
    """The ``MediaUrl`` of a routed MEDIA_OPEN's answer, or its error as VssError."""
    if status:
        msg = codec.decode_body(codec.Frame(1, codec.FLAG_RESPONSE | codec.FLAG_ERROR,
                                            MsgType.MEDIA_OPEN, status, 0, inner))
        text = getattr(getattr(msg, "body", None), "message", None) or ""
        raise VssError(status, f"node {node}: {text}" if text else f"node {node}")
    return codec.decode_body(codec.Frame(1, codec.FLAG_RESPONSE, MsgType.MEDIA_OPEN, 0, 0,
                                         inner)).body


@defer.inlineCallbacks
def route(cdn, node, record, body):
    """MEDIA_OPEN(PLAYBACK) routed to ``node``; its ``MediaUrl``."""
    central = cdn.rgm.central
    inner = codec.encode_body(body)
    try:
        if node == record.home_node:
            status, data = yield central.route(body.device_id, MsgType.MEDIA_OPEN, inner)
        else:
            status, data = yield to_node(central, node, body.device_id, inner)
    except VssError as e:
        if e.code in UNREACHABLE:
            raise VssError(ResultCode.HOME_NODE_DOWN, f"node {node} holds the recording of "
                           f"{body.device_id} but cannot be reached: {e.message}") from None
        raise
    except Exception as e:  # noqa: BLE001 - a node link that could not be made
        raise VssError(ResultCode.HOME_NODE_DOWN, f"node {node} holds the recording of "
                       f"{body.device_id} but cannot be reached: {e}") from None
    return _answer(status, data, node)


@defer.inlineCallbacks
def to_node(central, node, device_id, inner):
    """A MEDIA_OPEN straight to ``node`` over a node link: (inner_status, inner_body).
    Its address is the one kept, else asked of CMS (NODE_LOOKUP); a kept address that
    does not answer is asked again, and tried once more if it changed."""
    peers = central.peers
    kept = central.node_endpoints.get(node)
    failed = None
    if kept and peers is not None:
        try:
            return (yield peers.route(node, kept, device_id, MsgType.MEDIA_OPEN, inner))
        except Exception as e:  # noqa: BLE001 - a node link that could not be made
            if isinstance(e, VssError) and e.code not in UNREACHABLE:
                raise
            failed = e
            log.info("node {node} did not answer at {endpoint} ({error}); asking CMS",
                     node=node, endpoint=kept, error=e)
    try:
        found = yield central.lookup_node(node)
    except VssError as e:
        if e.code != ResultCode.UNKNOWN_NODE:
            if failed is not None:  # CMS cannot say more: the node's own failure
                raise failed from None
            raise
        raise VssError(ResultCode.UNKNOWN_NODE, f"node {node} holds the recording of "
                       f"{device_id} but CMS does not know it") from None
    if not found.node_up:
        raise VssError(ResultCode.HOME_NODE_DOWN, f"node {node} is down")
    if not found.signalling or peers is None:
        raise VssError(ResultCode.UNKNOWN_NODE, f"node {node} holds the recording of "
                       f"{device_id} but no route to it is known here")
    if failed is not None and found.signalling == kept:
        raise failed
    return (yield peers.route(node, found.signalling, device_id, MsgType.MEDIA_OPEN, inner))


@defer.inlineCallbacks
def _pull(cdn, path, url, node, play):
    try:
        proto = yield pull_into(cdn.rtsp, path, url, reactor=cdn.reactor,
                                timeout=cdn.source_wait, play=play, tls=cdn.node_pull_tls(url))
    except Exception as e:  # noqa: BLE001 - the origin's SS refused or is gone
        log.warn("cannot pull the playback of node {node}: {error}", node=node, error=e)
        raise VssError(ResultCode.HOME_NODE_DOWN,
                       f"the playback on node {node} cannot be reached: {e}") from None
    return proto


@defer.inlineCallbacks
def relay(cdn, body, url, node):
    """Pull the origin playback at ``url`` (not playing yet) onto a public path of this
    SS steered by a ``RelayedPlayback``; the CU's ``MediaUrl``."""
    path = f"/live/{body.device_id}/{PREFIX}{os.urandom(8).hex()}"
    proto = yield _pull(cdn, path, url.url, node, play=False)
    source = cdn.rtsp.sources.get(path)
    if source is None or proto.finished.called:
        proto.teardown()
        raise VssError(ResultCode.HOME_NODE_DOWN, f"the playback on node {node} ended")
    rp = RelayedPlayback(cdn, path, node, proto)
    cdn.rtsp.controllers[path] = rp
    cdn.origins[path] = ("playback", rp)
    cdn.source_idle(source)  # stopped if no viewer comes
    cdn.counters["relayed_playbacks"] = cdn.counters.get("relayed_playbacks", 0) + 1
    log.info("playback {path} of {device} relayed from node {node}", path=path,
             device=body.device_id, node=node)
    return cdn.play_url(path)


@defer.inlineCallbacks
def relay_dvr(cdn, body, url, node):
    """Pull a DVR's playback from its home node (playing at once, as live video)."""
    path = f"/live/{body.device_id}/{dvr.PREFIX}{os.urandom(8).hex()}"
    proto = yield _pull(cdn, path, url.url, node, play=True)
    source = cdn.rtsp.sources.get(path)
    if source is None or proto.finished.called:
        proto.teardown()
        raise VssError(ResultCode.HOME_NODE_DOWN, f"the DVR playback on node {node} ended")
    cdn.origins[path] = ("pull", proto)
    cdn.source_idle(source)
    cdn.counters["relayed_dvr_playbacks"] = cdn.counters.get("relayed_dvr_playbacks", 0) + 1
    log.info("DVR playback {path} relayed from node {node}", path=path, node=node)
    return cdn.play_url(path)


class RelayedPlayback:
    """The SS's PLAY/PAUSE controller of a relayed playback's public path: forwards them
    on the pull's RTSP session to the origin playback (see the module docstring)."""

    def __init__(self, cdn, path, node, proto):
        self.cdn = cdn
        self.path = path
        self.node = node
        self.proto = proto
        self.plays = 0
        self.pauses = 0
        proto.finished.addBoth(self._finished)

    def _finished(self, _):
        self.proto = None
        if self.cdn.rtsp.controllers.get(self.path) is self:
            del self.cdn.rtsp.controllers[self.path]

    def _timed(self, d):
        return d.addTimeout(CONTROL_TIMEOUT, self.cdn.clock)

    def play(self, session, header, scale=None):
        """PLAY upstream with the viewer's ``Range`` (and ``Scale``); a Deferred of the
        origin's. The origin's refusal of the Range (4xx: malformed, no footage there)
        or of the Scale is the viewer's, its playback going on; other failures are
        answered 502."""
        if self.proto is None:
            return None
        self.plays += 1
        return self._timed(self.proto.play(header, scale)).addErrback(self._refused)

    @staticmethod
    def _refused(failure):
        status = getattr(failure.value, "status", None)
        if failure.check(RTSPError) and isinstance(status, int) and 400 <= status < 500 \
                and status not in (401, 403, 454):
            raise ControlError(status, failure.value.reason)
        return failure

    def pause(self, session):
        if self.proto is None or self._viewers_playing():
            return None
        self.pauses += 1
        return self._timed(self.proto.pause())

    def _viewers_playing(self):
        return any(s.path == self.path and s.state == "playing"
                   for s in self.cdn.rtsp.sessions.values())

    def may_stop(self):
        """The CDN module's idle stop: False while an RTSP session (a paused viewer)
        holds this playback."""
        return not any(s.path == self.path for s in self.cdn.rtsp.sessions.values())

    def close(self):
        proto, self.proto = self.proto, None
        if self.cdn.rtsp.controllers.get(self.path) is self:
            del self.cdn.rtsp.controllers[self.path]
        if proto is not None:
            proto.teardown()
