"""
HLS with fragmented MP4 (RFC 8216, playlist version 7) for the browsers and players that
play HLS themselves (Safari, iOS and Android browsers, ffmpeg, VLC), beside the media
WebSocket (docs/protocol.md, "Browser media", "HLS"). No transcoding: the segments are
the very fragments of the stream's ``Packager`` (``vss.web.live``), put end to end.

- ``GET /hls<path>/index.m3u8?token=<t>``: ``<path>`` and ``<t>`` are those of a
  MediaUrl (``rtsp://host:port<path>?token=<t>``), checked by the SS's authorizer for
  ``play`` on that path as every stream is. The answer is a multivariant playlist naming
  one media playlist, ``stream.m3u8?session=<session>``: a session of 128 random bits bound
  to the path, which every later request of this viewer carries (the token is
  short-lived; a stream that plays goes on after, as over RTSP). A session ends
  ``IDLE`` seconds after its last request.
- ``GET /hls<path>/stream.m3u8?session=``: the media playlist, the last ``KEEP`` segments;
  ``init-<v>.mp4?session=``: the init segment (``v`` counts the parameter set changes, each
  one a discontinuity); ``<n>.m4s?session=``: segment ``n``, the fragments of one GOP (a
  keyframe up to the next one, at least ``MIN_SEGMENT`` seconds).
- A bad, expired or other path's token: 403; an unknown or ended session: 403; no
  stream within ``source_wait`` seconds, or no segment yet within ``SEGMENT_WAIT``:
  404; a segment no longer kept: 404; H.265: 415; not GET or HEAD: 405; more than
  ``MAX_SESSIONS`` sessions on the node: 503 with ``Retry-After``.

One ``HlsStream`` per path, shared by every HLS viewer of it: a reader of the packager
like a WebSocket viewer, keeping at most ``KEEP`` + 1 segments and the one being built
(at most ``MAX_SEGMENT_BYTES``: a longer GOP is dropped): memory bounded by the stream,
not by the viewers. It leaves the packager when its last session ends.
"""

import math
import os

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server

from vss.redact import redact
from vss.web.live import FRAGMENT, INIT, Unsupported

log = Logger()

PREFIX = "/hls"
KEEP = 6  # segments in the media playlist
MIN_SEGMENT = 1.0  # seconds: a shorter GOP goes on in the same segment
IDLE = 30.0  # seconds a session lives after its last request
SEGMENT_WAIT = 15.0  # seconds a playlist request waits for the first segment
SESSION_BYTES = 16
MAX_SEGMENT_BYTES = 32 * 1024 * 1024  # a GOP longer than that is dropped, not kept
MAX_SESSIONS = 10000  # HLS sessions of a node at once (more: 503)
_F_HEAD = 20  # the F message's header before moof + mdat
PLAYLIST = b"application/vnd.apple.mpegurl"


def ws_payload(frame):
    """The payload of one unmasked WebSocket message built by ``live.ws_frame``."""
    n = frame[1] & 0x7F
    return frame[2 if n < 126 else 4 if n == 126 else 10:]


class Segment:
    __slots__ = ("seq", "init", "duration", "data")

    def __init__(self, seq, init, duration, data):
        self.seq = seq
        self.init = init  # the version of the init segment it follows
        self.duration = duration  # seconds
        self.data = data


class HlsStream:
    """The HLS segments of one stream: a viewer of its ``Packager`` (see the module
    docstring)."""

    def __init__(self, path, packager, on_end=None):
        self.path = path
        self.packager = packager
        self.on_end = on_end
        self.inits = {}  # version -> init segment bytes
        self.codec = None
        self.version = 0
        self.segments = []  # the last KEEP + 1 complete ones
        self.seq = 0  # the number of the segment being built
        self.building = []  # its fragments (moof + mdat)
        self.building_bytes = 0
        self.max_segment_bytes = MAX_SEGMENT_BYTES
        self.dropped = 0  # segments too big to keep
        self.start_dts = None
        self.last_dts = None
        self.ended = False
        self.waiting = []  # Deferreds of playlist requests waiting for a segment
        packager.add_viewer(self)

    # -- the packager's viewer interface

    def send(self, message, key):
        payload = ws_payload(message)
        kind = payload[:1]
        if kind == INIT:
            n = payload[1]
            codec, init = payload[2:2 + n].decode("ascii"), payload[2 + n:]
            if self.inits.get(self.version) == init:
                return  # the same again
            if self.inits:  # new parameter sets (a new picture size): a discontinuity
                self._close_segment(None)
                self.version += 1
            self.inits[self.version] = init
            oldest = min((seg.init for seg in self.segments), default=self.version)
            self.inits = {v: i for v, i in self.inits.items() if v >= oldest}
            self.codec = codec
            return
        if kind != FRAGMENT or self.version not in self.inits:
            return
        dts = int.from_bytes(payload[12:20], "big")
        if key and self.building and (dts - self.start_dts) / 90000 >= MIN_SEGMENT:
            self._close_segment(dts)
        if not self.building:
            if not key:
                return  # a segment starts at a keyframe
            self.start_dts = dts
        body = payload[_F_HEAD:]
        if self.building_bytes + len(body) > self.max_segment_bytes:
            self.building, self.building_bytes = [], 0  # bounded: wait for a keyframe
            self.dropped += 1
            return
        self.building.append(body)
        self.building_bytes += len(body)
        self.last_dts = dts

    def source_ended(self):
        self.packager = None
        self.close()

    def _close_segment(self, next_dts):
        if not self.building:
            return
        end = next_dts if next_dts is not None else self.last_dts + 3600
        seg = Segment(self.seq, self.version, max(end - self.start_dts, 1) / 90000,
                      b"".join(self.building))
        self.seq += 1
        self.building, self.building_bytes = [], 0
        self.segments.append(seg)
        del self.segments[:-(KEEP + 1)]
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(self)

    # -- what viewers ask

    def ready(self, clock, timeout):
        """A Deferred firing with this stream once it has a segment (or None after
        ``timeout`` seconds, or when it ends)."""
        if self.segments:
            return defer.succeed(self)
        if self.ended:
            return defer.succeed(None)
        d = defer.Deferred()
        self.waiting.append(d)
        call = clock.callLater(timeout, lambda: d.called or (self._forget(d), d.callback(None)))
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    def _forget(self, d):
        if d in self.waiting:
            self.waiting.remove(d)

    def media_playlist(self, query):
        """The media playlist (bytes); ``query``: what every URI of it carries."""
        segs = self.segments[-KEEP:]
        target = max(1, math.ceil(max((s.duration for s in segs), default=1)))
        first_init = segs[0].init if segs else self.version
        lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{target}",
                 f"#EXT-X-MEDIA-SEQUENCE:{segs[0].seq if segs else self.seq}",
                 f"#EXT-X-DISCONTINUITY-SEQUENCE:{first_init}",
                 "#EXT-X-INDEPENDENT-SEGMENTS"]
        init = None
        for seg in segs:
            if seg.init != init:
                if init is not None:
                    lines.append("#EXT-X-DISCONTINUITY")
                lines.append(f'#EXT-X-MAP:URI="init-{seg.init}.mp4?{query}"')
                init = seg.init
            lines.append(f"#EXTINF:{seg.duration:.3f},")
            lines.append(f"{seg.seq}.m4s?{query}")
        return ("\n".join(lines) + "\n").encode("ascii")

    def multivariant(self, query):
        """The multivariant playlist naming the media playlist."""
        seg = self.segments[-1] if self.segments else None
        rate = int(len(seg.data) * 8 / seg.duration) if seg else 1_000_000
        return ("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n"
                f'#EXT-X-STREAM-INF:BANDWIDTH={max(rate, 1)},CODECS="{self.codec}"\n'
                f"stream.m3u8?{query}\n").encode("ascii")

    def segment(self, seq):
        for seg in self.segments:
            if seg.seq == seq:
                return seg.data
        return None

    def close(self):
        if self.ended:
            return
        self.ended = True
        packager, self.packager = self.packager, None
        if packager is not None:
            packager.remove_viewer(self)
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)
        if self.on_end is not None:
            self.on_end(self, packager)


class Session:
    __slots__ = ("id", "path", "seen")

    def __init__(self, session_id, path, seen):
        self.id = session_id
        self.path = path
        self.seen = seen


class HlsService:
    """The node's HLS side: sessions, one ``HlsStream`` per path, and the HTTP answers
    of ``/hls/...``. ``media`` is the node's ``MediaService`` (its SS, its packagers)."""

    def __init__(self, media, clock, idle=IDLE, segment_wait=SEGMENT_WAIT):
        self.media = media
        self.rtsp = media.rtsp
        self.clock = clock
        self.idle = idle
        self.segment_wait = segment_wait
        self.max_sessions = MAX_SESSIONS
        self.sessions = {}  # id -> Session
        self.streams = {}  # path -> HlsStream
        self._reaper = None
        self.counters = {"sessions": 0, "refused": 0, "playlists": 0, "segments": 0}

    # -- HTTP

    def render(self, request):
        """``request`` for ``/hls<path>/<name>``: the answer, or NOT_DONE_YET."""
        request.notifyFinish().addErrback(lambda _: setattr(request, "vss_gone", True))
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-store")
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b"method not allowed\n"
        full = request.path.decode("latin-1")[len(PREFIX):]
        path, _, name = full.rpartition("/")
        args = request.args
        if name == "index.m3u8":
            token = (args.get(b"token") or [b""])[0].decode("latin-1")
            return self._open(request, path, token)
        sid = (args.get(b"session") or [b""])[0].decode("latin-1")
        session = self.sessions.get(sid)
        if session is None or session.path != path:
            return self._error(request, 403, "no such HLS session: open index.m3u8 again")
        session.seen = self.clock.seconds()
        stream = self.streams.get(path)
        if stream is None or stream.ended:
            self._end(session)
            return self._error(request, 404, "the stream ended")
        query = f"session={sid}"
        if name == "stream.m3u8":
            return self._later(request, stream, lambda s: self._playlist(
                request, s.media_playlist(query)))
        if name.startswith("init-") and name.endswith(".mp4"):
            version = name[5:-4]
            init = stream.inits.get(int(version)) if version.isdigit() else None
            if init is None:
                return self._error(request, 404, "no such init segment")
            request.setHeader(b"content-type", b"video/mp4")
            return init
        if name.endswith(".m4s") and name[:-4].isdigit():
            data = stream.segment(int(name[:-4]))
            if data is None:
                return self._error(request, 404, "no such segment (no longer kept?)")
            self.counters["segments"] += 1
            request.setHeader(b"content-type", b"video/iso.segment")
            return data
        return self._error(request, 404, "not found")

    def _open(self, request, path, token):
        ok, info = self.rtsp.authorizer.check(token, path, "play")
        if not ok:
            self.counters["refused"] += 1
            log.info("HLS {path} refused: {reason}", path=redact(path), reason=info)
            return self._error(request, 403, f"not allowed: {info}")
        if len(self.sessions) >= self.max_sessions:
            request.setHeader(b"retry-after", str(int(self.idle)).encode())
            return self._error(request, 503, "too many HLS sessions: try again later")
        d = self.rtsp.wait_for_source(path, self.media.source_wait)
        d.addCallback(self._opened, request, path)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _opened(self, source, request, path):
        if source is None:
            return self._finish(request, self._error(request, 404, "the stream did not start"))
        stream = self.streams.get(path)
        if stream is None or stream.ended:
            try:
                packager = self.media.packager(source)
            except Unsupported as e:
                return self._finish(request, self._error(request, 415, str(e)))
            stream = self.streams[path] = HlsStream(path, packager, on_end=self._stream_ended)
        session = Session(os.urandom(SESSION_BYTES).hex(), path, self.clock.seconds())
        self.sessions[session.id] = session
        self.counters["sessions"] += 1
        self._reap_later()
        query = f"session={session.id}"
        d = stream.ready(self.clock, self.segment_wait)
        d.addCallback(lambda s: self._finish(request, self._playlist(request, s.multivariant(
            query)) if s is not None else self._error(request, 404, "no video yet")))
        return d

    def _later(self, request, stream, answer):
        d = stream.ready(self.clock, self.segment_wait)
        d.addCallback(lambda s: self._finish(request, answer(s) if s is not None
                                             else self._error(request, 404, "no video yet")))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _playlist(self, request, body):
        self.counters["playlists"] += 1
        request.setHeader(b"content-type", PLAYLIST)
        return body

    @staticmethod
    def _error(request, code, message):
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return message.encode("utf-8") + b"\n"

    @staticmethod
    def _finish(request, body):
        if request.finished or getattr(request, "vss_gone", False):
            return
        request.setHeader(b"content-length", str(len(body)).encode())
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _failed(self, failure, request):
        log.failure("HLS {path}", failure, path=redact(request.path.decode("latin-1")))
        self._finish(request, self._error(request, 500, "internal error"))

    # -- sessions and streams

    def _reap_later(self):
        if self._reaper is None or not self._reaper.active():
            self._reaper = self.clock.callLater(self.idle / 3, self._reap)

    def _reap(self):
        """End the sessions idle for ``idle`` seconds (and the streams they leave)."""
        if self._reaper is not None and self._reaper.active():
            self._reaper.cancel()
        self._reaper = None
        limit = self.clock.seconds() - self.idle
        for session in [s for s in self.sessions.values() if s.seen < limit]:
            self._end(session)
        if self.sessions:
            self._reap_later()

    def _end(self, session):
        self.sessions.pop(session.id, None)
        if not any(s.path == session.path for s in self.sessions.values()):
            stream = self.streams.get(session.path)
            if stream is not None:
                stream.close()

    def _stream_ended(self, stream, packager):
        if self.streams.get(stream.path) is stream:
            del self.streams[stream.path]
        for session in [s for s in self.sessions.values() if s.path == stream.path]:
            self.sessions.pop(session.id, None)
        self.media.left(packager)

    def stop(self):
        if self._reaper is not None and self._reaper.active():
            self._reaper.cancel()
        self._reaper = None
        for stream in list(self.streams.values()):
            stream.close()
        self.sessions.clear()

    def status(self):
        return {"sessions": len(self.sessions), "streams": len(self.streams), **self.counters}
