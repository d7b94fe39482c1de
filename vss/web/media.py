"""
A browser's media connection: ``/media/live/<device>/<stream>?token=...`` upgraded to a
WebSocket (subprotocol ``vss.media.v1``), the browser's counterpart of an RTSP play
session (docs/protocol.md, "Browser media").

- Authorised like RTSP: the token is the one of the ``rtsp://`` URL the CU got in its
  MEDIA_OPEN answer, checked by the SS's own ``IStreamAuthorizer`` for ``play`` on that
  very path (short-lived, bound to the path). A refused token, a stream that does not
  start within ``source_wait`` seconds or a codec a browser cannot be given is said in
  an ``error`` message, and the connection is closed (codes 4403, 4404, 4415).
- Then the viewer joins the stream's ``Packager`` (``vss.web.live``; one per stream,
  whatever the number of browsers), and gets its media messages. A live viewer is kept
  within ``--live-max-lag`` of the stream by the SS's ``LagWatch``, as an RTSP viewer
  over TCP is: one that reads too slowly skips to a keyframe it can take in time.
- A playback path (``/live/<device>/pb-<id>``) has a controller in the SS
  (``RTSPServerFactory.controllers``): the page's ``{"op": "play", "at": ms}`` and
  ``{"op": "pause"}`` are its PLAY (``Range: clock=...``) and PAUSE, exactly as an RTSP
  player's, and the answer is ``playing`` (``npt``: seconds from the playback's origin
  of the keyframe it starts at) or ``refused`` (``status`` 457: no footage there).
  ``"speed": x`` in a ``play`` is its ``Scale`` (0.25 to 8: the footage comes x times
  as fast, its timestamps the footage's own, and the page plays it at that rate; 456
  refuses another speed, and any speed but 1 of live video).

Control messages are JSON text messages, sent in order with the media through the
viewer's bounded writer. Messages from the page longer than ``MAX_CONTROL`` bytes, or
binary, or not JSON, close the connection (1003 / 1009).
"""

import json
from datetime import UTC, datetime
from urllib.parse import unquote

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.logger import Logger

from vss.recording.playback import format_scale
from vss.redact import redact
from vss.rtsp.server import ControlError, is_live
from vss.web.live import Packager, Unsupported, WebViewer, ws_frame

log = Logger()

SUBPROTOCOL = "vss.media.v1"
PREFIX = "/media"
SOURCE_WAIT = 10.0  # seconds a stream has to appear after the page connects
PACKAGER_LINGER = 10.0  # seconds a stream's packager stays after its last viewer
MAX_CONTROL = 4096
CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, CLOSE_UNSUPPORTED = 4403, 4404, 4415


def clock_range(ms):
    """``clock=YYYYMMDDTHHMMSS.fffZ-`` (RFC 2326 3.7) of a wall-clock time in ms."""
    t = datetime.fromtimestamp(ms / 1000, UTC)
    return f"clock={t.strftime('%Y%m%dT%H%M%S')}.{int(ms) % 1000:03d}Z-"


class MediaProtocol(WebSocketServerProtocol):
    """Thin: the handshake's path and token, then everything to the ``MediaService``."""

    path = None
    token = None
    viewer = None
    closed = False

    def onConnect(self, request):
        self.path = unquote(request.path[len(PREFIX):]) if request.path.startswith(PREFIX) \
            else request.path
        tokens = request.params.get("token") or [""]
        self.token = tokens[0]
        return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None

    def onOpen(self):
        self.factory.service.opened(self)

    def onMessage(self, payload, isBinary):
        if isBinary or len(payload) > MAX_CONTROL:
            self.sendClose(1003 if isBinary else 1009)
            return
        try:
            message = json.loads(payload.decode("utf-8"))
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError:
            self.sendClose(1003, "control messages are JSON objects")
            return
        self.factory.service.control(self, message)

    def onPing(self, payload):
        # the pong goes in order with the media, through the viewer's writer
        if self.viewer is not None:
            self.viewer.write(bytes((0x8A, len(payload))) + payload)
        else:
            super().onPing(payload)

    def onClose(self, wasClean, code, reason):
        self.closed = True
        self.factory.service.closed(self)

    def send_json(self, obj):
        data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        if self.viewer is not None:
            self.viewer.write(ws_frame(data, binary=False))
        else:
            self.sendMessage(data, isBinary=False)

    def fail(self, code, message, **extra):
        if self.closed:
            return
        self.send_json({"type": "error", "code": code, "message": message, **extra})
        self.sendClose(code, message[:100])


class MediaService:
    """The browsers' media side of the SS: its packagers and viewers."""

    def __init__(self, rtsp, clock, source_wait=SOURCE_WAIT, linger=PACKAGER_LINGER,
                 max_queue=None):
        self.rtsp = rtsp
        self.clock = clock
        self.source_wait = source_wait
        self.linger = linger
        self.max_queue = max_queue
        self.packagers = {}  # path -> Packager
        self.viewers = set()
        self._lingering = {}  # path -> delayed close of a packager without viewers
        self.counters = {"opened": 0, "refused": 0, "plays": 0, "pauses": 0}

    def factory(self):
        """The autobahn factory of the ``/media/`` WebSocket resource."""
        factory = WebSocketServerFactory()
        factory.protocol = MediaProtocol
        factory.service = self
        factory.setProtocolOptions(maxMessagePayloadSize=MAX_CONTROL,
                                   maxFramePayloadSize=MAX_CONTROL)
        return factory

    # -- opening

    def opened(self, proto):
        ok, info = self.rtsp.authorizer.check(proto.token, proto.path, "play")
        if not ok:
            self.counters["refused"] += 1
            log.info("browser media {path} refused: {reason}", path=redact(proto.path),
                     reason=info)
            proto.fail(CLOSE_FORBIDDEN, f"not allowed: {info}")
            return
        d = self.rtsp.wait_for_source(proto.path, self.source_wait)
        d.addCallback(self._attach, proto)
        d.addErrback(lambda f: (log.failure("browser media {path}", f, path=proto.path),
                                proto.fail(1011, "internal error")))

    def _attach(self, source, proto):
        if proto.closed:
            return
        if source is None:
            proto.fail(CLOSE_NOT_FOUND, "the stream did not start")
            return
        try:
            packager = self.packager(source)
        except Unsupported as e:
            proto.fail(CLOSE_UNSUPPORTED, str(e))
            return
        viewer = WebViewer(proto.transport, on_end=lambda v: self._ended(proto),
                           max_queue=self.max_queue)
        viewer.packager = packager
        proto.viewer = viewer
        self.viewers.add(proto)
        self.counters["opened"] += 1
        playback = proto.path in self.rtsp.controllers
        proto.send_json({"type": "ready", "path": proto.path, "playback": playback})
        packager.add_viewer(viewer)
        if self.rtsp.max_lag and is_live(proto.path):
            # live means live, as for an RTSP viewer: within --live-max-lag of the
            # stream, else it skips to a keyframe it can take in time (the stream's bit
            # rate sizes its send buffer)
            viewer.reader.source = packager.source
            self.rtsp.lag_watch.add(viewer.reader)

    def packager(self, source):
        """The ``Packager`` of ``source`` (made if none, its linger stopped): every
        browser viewer of a stream, WebSocket or HLS, shares it. Raises
        ``Unsupported`` for a codec a browser cannot be given."""
        packager = self.packagers.get(source.path)
        if packager is None or packager.ended:
            packager = Packager(source, self.clock, on_empty=self._packager_ended)
            self.packagers[source.path] = packager
        self._stop_lingering(source.path)
        return packager

    def left(self, packager):
        """A viewer left ``packager``: without viewers it lingers, then closes."""
        if packager is not None and not packager.viewers and not packager.ended:
            self._linger(packager)

    def _ended(self, proto):
        """The stream ended (the footage played to its end, the camera went away)."""
        proto.viewer = None
        proto.fail(CLOSE_NOT_FOUND, "the stream ended")

    # -- control

    def control(self, proto, message):
        op = message.get("op")
        controller = self.rtsp.controllers.get(proto.path)
        if proto.viewer is None:
            proto.send_json({"type": "refused", "op": op, "message": "not playing yet"})
            return
        if op == "play":
            speed = message.get("speed")
            if speed is not None and (isinstance(speed, bool)
                                      or not isinstance(speed, int | float)):
                proto.send_json({"type": "refused", "op": op, "status": 400,
                                 "message": "speed: a number"})
                return
            if controller is None:  # live: it plays already, at its own pace
                if speed is not None and speed != 1:
                    proto.send_json({"type": "refused", "op": op, "status": 456,
                                     "message": "live video plays at its own pace"})
                    return
                proto.send_json({"type": "playing", "npt": None})
                return
            at = message.get("at")
            if at is not None and not (isinstance(at, int) and 0 <= at < 1 << 53):
                proto.send_json({"type": "refused", "op": op, "status": 400,
                                 "message": "at: milliseconds since the epoch"})
                return
            self.counters["plays"] += 1
            header = clock_range(at) if at is not None else None
            args = (proto, header) if speed is None else (proto, header, format_scale(speed))
            d = defer.maybeDeferred(controller.play, *args)
            d.addCallbacks(lambda rng: self._played(proto, rng, at, speed),
                           lambda f: self._refused(proto, f, op))
        elif op == "pause":
            if controller is None:
                proto.send_json({"type": "refused", "op": op, "status": 455,
                                 "message": "live video cannot be paused"})
                return
            self.counters["pauses"] += 1
            d = defer.maybeDeferred(controller.pause, proto)
            d.addCallbacks(lambda _: proto.closed or proto.send_json({"type": "paused"}),
                           lambda f: self._refused(proto, f, op))
        else:
            proto.send_json({"type": "refused", "op": op, "status": 400,
                             "message": "unknown op"})

    def _played(self, proto, rng, at, speed=None):
        if proto.closed:
            return
        npt = None
        if isinstance(rng, str) and rng.startswith("npt="):
            try:
                npt = float(rng[4:].split("-", 1)[0])
            except ValueError:
                npt = None
        answer = {"type": "playing", "npt": npt, "at": at}
        if speed is not None:
            answer["speed"] = speed
        proto.send_json(answer)

    def _refused(self, proto, failure, op):
        if proto.closed:
            return
        if failure.check(ControlError):
            proto.send_json({"type": "refused", "op": op, "status": failure.value.status,
                             "message": failure.value.reason or "refused"})
            return
        log.failure("browser media {op} of {path}", failure, op=op, path=proto.path)
        proto.send_json({"type": "refused", "op": op, "status": 502,
                         "message": "the playback did not answer"})

    # -- closing

    def closed(self, proto):
        self.viewers.discard(proto)
        viewer, proto.viewer = proto.viewer, None
        if viewer is None:
            return
        packager = viewer.packager
        viewer.stop()
        self.left(packager)

    def _linger(self, packager):
        """Keep a packager without viewers a while: a browser that comes back (a page
        reload, a grid changing layout) starts at once from its cached pictures."""
        self._stop_lingering(packager.path)
        self._lingering[packager.path] = self.clock.callLater(self.linger,
                                                              self._close_idle, packager)

    def _stop_lingering(self, path):
        call = self._lingering.pop(path, None)
        if call is not None and call.active():
            call.cancel()

    def _close_idle(self, packager):
        self._lingering.pop(packager.path, None)
        if not packager.viewers:
            packager.close()

    def _packager_ended(self, packager):
        self._stop_lingering(packager.path)
        if self.packagers.get(packager.path) is packager:
            del self.packagers[packager.path]

    def stop(self):
        for call in self._lingering.values():
            if call.active():
                call.cancel()
        self._lingering.clear()
        for packager in list(self.packagers.values()):
            packager.close()

    def status(self):
        return {"packagers": {p: k.stats() for p, k in self.packagers.items()},
                "viewers": len(self.viewers), **self.counters}
