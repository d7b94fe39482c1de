"""
Video for browsers: one ``Packager`` per stream of the SS, read by any number of
``WebViewer`` (a browser's media WebSocket).

A ``Packager`` is a reader of the SS's ``fanout.Source``, like an RTSP viewer or the
recorder: it gets the very ``Frame`` batches every viewer gets, depacketizes the H.264
track (``vss.recording.rtpmux``) and packages each picture ONCE as a fragmented MP4 fragment
(``vss.web.fmp4``), wrapped ONCE in a media message and ONCE in a WebSocket frame; every
browser viewer then gets those same bytes, one send per viewer per picture, as an RTSP
viewer gets its interleaved RTP (docs/protocol.md, "Browser media"):

- ``I`` message: ``b"I"``, u8 length n, the codec string (``avc1.PPCCLL``, n ASCII
  bytes), then the init segment (``ftyp`` + ``moov``). Sent first, and again when the
  parameter sets change (the picture size changed).
- ``F`` message: ``b"F"``, u8 flags (bit 0: a keyframe), two zero bytes, u64 ingest time
  (ms since the epoch: when the picture reached the SS), u64 decode time (90 kHz, the
  ``tfdt`` of the fragment), then ``moof`` + ``mdat`` of the picture.

A viewer joins at once: the packager keeps the messages since the last keyframe (at
most ``GOP_BYTES``) and sends them to a new viewer first, so its video starts without
waiting for the next keyframe (the page then jumps to the newest picture). A new
packager starts the same way: the SS keeps each stream's pictures since its last
keyframe for it (``gop_keep``), each dated when the SS got it.

Slow viewers are bounded like RTSP viewers: each ``WebViewer`` writes through a
``fanout.TCPReader`` (one ``send`` straight to the socket while nothing is held back, a
bounded queue, dropping up to the next keyframe when it overflows). Everything the page
is sent on that connection, control messages too, goes through that reader, in order.
"""

import struct

from autobahn.websocket.protocol import PreparedMessage
from twisted.logger import Logger

from vss.recording import rtpmux
from vss.rtsp.fanout import GOP_KEEP, Frame, TCPReader
from vss.web import fmp4

log = Logger()

GOP_BYTES = GOP_KEEP  # messages kept since the last keyframe, for joining viewers
MAX_STEP = 90000  # a frame duration estimate above 1 s is not one
_FRAGMENT_HEAD = struct.Struct(">cBHQQ")
INIT, FRAGMENT = b"I", b"F"


class Unsupported(ValueError):
    """The stream's video cannot be packaged for a browser (not H.264)."""


def ws_frame(payload, binary=True):
    """The bytes of one unmasked WebSocket message (a server's): built once, sent to
    every viewer."""
    return PreparedMessage(payload, binary, False, True).payloadHybi


def init_message(sps, pps):
    codec = fmp4.codec_string(sps).encode("ascii")
    return INIT + bytes((len(codec),)) + codec + fmp4.init_segment(sps, pps)


class Packager:
    """Packages one source's H.264 for browsers (see the module docstring). The SS's
    reader interface: ``mask``, ``deliver``, ``deliver_at``, ``source_ended``."""

    full = False
    needs_key = True
    starts_cached = True  # the SS gives it the pictures since the last keyframe
    waiting_key = False  # the depacketizer waits for a keyframe itself
    drops = 0  # it never drops: each viewer has its own bound
    lag_skips = 0  # nor skips: its viewers are not in the SS's live lag bound

    def __init__(self, source, clock, on_empty=None):
        found = rtpmux.video_depacketizer(source.sdp or "")
        if found is None or found[1] != "h264":
            codec = "H.265" if found is not None else "this codec"
            raise Unsupported(f"{codec} video cannot be shown in a browser here: play the "
                              "stream's RTSP URL in a player")
        self.track, _, self.dep = found
        self.mask = frozenset((self.track,))
        self.path = source.path
        self.source = None
        self.clock = clock
        self.on_empty = on_empty  # f(packager): the last viewer left or the source ended
        self.viewers = []
        self.init = None  # the framed I message
        self.params = None
        self.gop = []  # framed F messages since the last keyframe
        self.gop_bytes = 0
        self.seq = 0
        self.base = None  # RTP timestamp (extended) of decode time 0
        self.last_dts = None
        self.step = 3600
        self.now = None  # the wall clock of a frame the SS got earlier (its GOP cache)
        self.pictures = 0
        self.bytes = 0
        self.errors = 0
        self.ended = False
        source.add_reader(self)

    # -- the SS's reader interface

    def deliver(self, frame):
        try:
            track = self.track
            for t, rtcp, data in frame.packets:
                if t == track and not rtcp:
                    for au in self.dep.push(data):
                        self._picture(au)
        except Exception:  # noqa: BLE001 - never out of the source's fan-out
            self.errors += 1
            log.failure("browser packager of {path}", path=self.path)

    def deliver_at(self, wall, frame):
        """A frame of the source's GOP cache: the SS got it at ``wall``."""
        self.now = wall
        try:
            self.deliver(frame)
        finally:
            self.now = None

    def source_ended(self):
        self.source = None
        self.close()

    # -- packaging

    def _picture(self, au):
        if au.key:
            params = (self.dep.params.get(fmp4.NAL_SPS), self.dep.params.get(fmp4.NAL_PPS))
            if params != self.params and params[0] and params[1]:
                try:
                    init = init_message(*params)
                except ValueError as e:
                    self.errors += 1
                    log.warn("browser packager of {path}: {error}", path=self.path, error=e)
                    return
                self.params = params
                self.init = ws_frame(init)
                self.gop, self.gop_bytes = [], 0
                for viewer in list(self.viewers):
                    viewer.send(self.init, True)
        if self.init is None:
            return  # no parameter sets yet
        if self.base is None:
            self.base = au.ts
        dts = au.ts - self.base
        last = self.last_dts
        if last is not None:
            d = dts - last
            if d <= 0 or d > MAX_STEP:  # a step back or a leap: go on smoothly
                self.base += d - self.step
                dts = last + self.step
            else:
                self.step = d
        self.last_dts = dts
        self.seq += 1
        wall = self.clock.seconds() if self.now is None else self.now
        body = fmp4.fragment(self.seq, dts, self.step, fmp4.avcc_sample(au.nals), au.key)
        message = ws_frame(_FRAGMENT_HEAD.pack(FRAGMENT, 1 if au.key else 0, 0,
                                               int(wall * 1000), dts) + body)
        self.pictures += 1
        self.bytes += len(message)
        if au.key:
            self.gop, self.gop_bytes = [message], len(message)
        elif self.gop and self.gop_bytes + len(message) <= GOP_BYTES:
            self.gop.append(message)
            self.gop_bytes += len(message)
        else:
            self.gop, self.gop_bytes = [], 0  # too long: joiners wait for a keyframe
        key = au.key
        for viewer in self.viewers:
            viewer.send(message, key)

    # -- viewers

    def add_viewer(self, viewer):
        """Start ``viewer`` at once: the init segment and the pictures since the last
        keyframe, then every new picture."""
        self.viewers.append(viewer)
        if self.init is not None:
            viewer.send(self.init, True)
            for i, message in enumerate(self.gop):
                viewer.send(message, i == 0)

    def remove_viewer(self, viewer):
        """The viewer left (its owner decides when a packager without viewers
        closes)."""
        if viewer in self.viewers:
            self.viewers.remove(viewer)

    def close(self):
        """Leave the source (the SS's idle rules then apply to it) and end every
        viewer."""
        if self.ended:
            return
        self.ended = True
        source, self.source = self.source, None
        if source is not None:
            source.remove_reader(self)
        viewers, self.viewers = self.viewers, []
        for viewer in viewers:
            viewer.source_ended()
        if self.on_empty is not None:
            self.on_empty(self)

    def stats(self):
        return {"path": self.path, "viewers": len(self.viewers), "pictures": self.pictures,
                "bytes": self.bytes, "errors": self.errors,
                "lost": self.dep.lost, "gop_messages": len(self.gop)}


class WebViewer:
    """One browser's media connection: the messages of a packager, bounded like an RTSP
    viewer (``fanout.TCPReader``: direct sends, a bounded queue, drops up to the next
    keyframe). ``transport`` is the WebSocket's connection; ``on_end`` is called when
    the packager ends."""

    def __init__(self, transport, on_end=None, max_queue=None):
        # the HTTP channel the WebSocket took the connection from was its producer
        try:
            transport.unregisterProducer()
        except Exception:  # noqa: BLE001,S110 - none was registered
            pass
        kwargs = {} if max_queue is None else {"max_queue": max_queue}
        self.reader = TCPReader(transport, (0,), **kwargs)
        self.reader.full = True  # every message is for it
        self.reader.start(pending=True)
        self.on_end = on_end
        self.packager = None

    def send(self, message, key):
        """A framed media message; ``key``: a viewer may start (again) here."""
        self.reader.deliver(Frame(message, key, ()))

    def write(self, framed):
        """A control message (framed), in order with the media, never dropped."""
        self.reader.write(framed)

    def source_ended(self):
        self.packager = None
        if self.on_end is not None:
            self.on_end(self)

    def stop(self):
        self.reader.stop()
        packager, self.packager = self.packager, None
        if packager is not None:
            packager.remove_viewer(self)

    def stats(self):
        return self.reader.stats()
