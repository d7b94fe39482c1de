"""
The hot path of the streaming server: one source, many readers.

A ``Source`` receives RTP/RTCP packets (from a publishing RTSP connection, from the RTSP
client pulling a camera, or from code) with ``feed(track, rtcp, data)``. Packets are
batched into a ``Frame`` and joined ONCE into one interleaved buffer whose channel numbers
are the ones the server hands out in every SETUP reply (``2*track`` for RTP,
``2*track+1`` for RTCP), so every TCP reader sends the very same bytes. A batch is one
video picture: it is flushed after a video packet with the marker bit, before a packet
with a new video timestamp, before the first packet of a keyframe and when it grows past
``MAX_BATCH``; audio and RTCP ride along with the video. Sources without video flush at
``end_of_input()`` (the end of each publisher ``dataReceived``); code may call
``flush()`` at any time.

A ``TCPReader`` writes each frame with one ``socket.send`` straight to its socket while
its Twisted write buffer is empty; what the kernel did not take goes to the transport,
and is counted in a bounded queue (``max_queue``) until Twisted reports the buffer
drained (the reader is registered as a pull producer, so ``resumeProducing`` means
"drained"). When a frame would overflow the queue, the reader drops frames up to the
next keyframe and counts the drop. A reader that stops reading costs the others nothing.

A ``UDPReader`` sends each packet with ``sendto`` on the server's shared UDP port pair.
"""

import socket
import struct

from twisted.logger import Logger

log = Logger()

MAX_BATCH = 256 * 1024
DEFAULT_MAX_QUEUE = 2 * 1024 * 1024
DEFAULT_SNDBUF = 256 * 1024

_H264_KEY = frozenset((5, 7))
_H265_KEY = frozenset((16, 17, 18, 19, 20, 21, 32))
_pack_head = struct.Struct("!BBH").pack


def rtp_payload_offset(data):
    """Offset of the payload of an RTP packet, or -1 if it is too short."""
    n = len(data)
    if n < 12:
        return -1
    b0 = data[0]
    off = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if n < off + 4:
            return -1
        off += 4 + 4 * ((data[off + 2] << 8) | data[off + 3])
    return off if off < n else -1


def h264_is_key(data):
    """True if this RTP packet starts an H.264 IDR picture or carries an SPS."""
    off = rtp_payload_offset(data)
    if off < 0:
        return False
    t = data[off] & 0x1F
    if t in _H264_KEY:
        return True
    if t == 24 and len(data) > off + 3:  # STAP-A: first NAL
        return (data[off + 3] & 0x1F) in _H264_KEY
    if t == 28 and len(data) > off + 1:  # FU-A: start fragment
        fu = data[off + 1]
        return bool(fu & 0x80) and (fu & 0x1F) in _H264_KEY
    return False


def h265_is_key(data):
    """True if this RTP packet starts an H.265 IRAP picture or carries a VPS."""
    off = rtp_payload_offset(data)
    if off < 0 or len(data) < off + 2:
        return False
    t = (data[off] >> 1) & 0x3F
    if t in _H265_KEY:
        return True
    if t == 48 and len(data) > off + 4:  # aggregation packet: first NAL
        return ((data[off + 4] >> 1) & 0x3F) in _H265_KEY
    if t == 49 and len(data) > off + 2:  # fragmentation unit: start fragment
        fu = data[off + 2]
        return bool(fu & 0x80) and (fu & 0x3F) in _H265_KEY
    return False


KEY_DETECTORS = {"H264": h264_is_key, "H265": h265_is_key, "HEVC": h265_is_key}


class Track:
    """One media of a source: kind ('video'/'audio'/...), encoding ('H264', 'PCMU'...)."""

    __slots__ = ("index", "kind", "encoding", "is_key", "last_key_ts")

    def __init__(self, index, kind, encoding):
        self.index = index
        self.kind = kind
        self.encoding = encoding.upper()
        self.is_key = KEY_DETECTORS.get(self.encoding) if kind == "video" else None
        self.last_key_ts = None


class Frame:
    """One flushed batch: ``data`` (all tracks, interleaved), ``key`` (starts with a
    keyframe start, or carries no video), ``packets`` [(track, rtcp, payload)]."""

    __slots__ = ("data", "key", "packets", "_by_mask")

    def __init__(self, data, key, packets):
        self.data = data
        self.key = key
        self.packets = packets
        self._by_mask = None

    def data_for(self, mask):
        """The interleaved bytes of the tracks in ``mask`` (a frozenset), built once."""
        cache = self._by_mask
        if cache is None:
            cache = self._by_mask = {}
        buf = cache.get(mask)
        if buf is None:
            buf = cache[mask] = b"".join(
                _pack_head(0x24, 2 * t + r, len(p)) + p for t, r, p in self.packets if t in mask)
        return buf


class Source:
    """A live stream on one path. ``sdp`` is the publisher's SDP text."""

    #: seconds of a stream of known length (a playback): its SDP then says
    #: ``a=range:npt=0-<duration>`` and players show a seek bar; None for live video
    duration = None

    def __init__(self, path, sdp, tracks, clock, on_idle=None, origin="rtsp",
                 gop_cache=0):
        self.path = path
        # gop_cache: if > 0, keep the frames since the last keyframe (up to that many
        # bytes) and send them to a new reader at once, so it starts without waiting
        # for the next keyframe (at the cost of starting up to one GOP behind live). A
        # reader with ``deliver_at(wall, frame)`` (a recording) gets each one with the
        # clock time the source flushed it, not the time it joined.
        self.gop_cache = gop_cache
        self._gop = None
        self._gop_at = None
        self._gop_bytes = 0
        self.sdp = sdp
        self.tracks = tracks
        self.all_tracks = frozenset(t.index for t in tracks)
        self.clock = clock
        self.origin = origin
        self.started = clock.seconds()
        self.readers = []
        self.no_readers_since = self.started
        self.bytes = 0
        self.packets = 0
        self.frames = 0
        self.drops = 0
        #: bytes, frames, drops and key waits of the viewers (``reader.viewer``) that left
        self.viewers_gone = [0, 0, 0, 0]
        self.closed = False
        self._on_idle = on_idle
        self._batch = []
        self._batch_bytes = 0
        self._batch_key = False
        self._batch_ts = None
        self._video = any(t.kind == "video" for t in tracks)
        self._ending = []

    @property
    def reader_count(self):
        return len(self.readers)

    def stats(self):
        """Counters: bytes/packets in, frames (shared buffers) out, drops of every
        reader so far (current and gone)."""
        drops = self.drops + sum(r.drops for r in self.readers)
        return {"path": self.path, "readers": len(self.readers), "bytes": self.bytes,
                "packets": self.packets, "frames": self.frames, "drops": drops,
                "started": self.started, "no_readers_since": self.no_readers_since,
                "origin": self.origin}

    # -- input

    def feed(self, track, rtcp, data):
        """One RTP (``rtcp`` False) or RTCP packet of track index ``track``."""
        if self.closed or track >= len(self.tracks) or len(data) > 0xFFFF:
            return
        self.packets += 1
        self.bytes += len(data)
        end = False
        if not rtcp and self.tracks[track].kind == "video" and len(data) >= 12:
            tr = self.tracks[track]
            ts = data[4:8]
            if self._batch_ts is not None and ts != self._batch_ts:
                self.flush()  # a new picture whose predecessor had no marker bit
            if tr.is_key is not None and tr.is_key(data) and ts != tr.last_key_ts:
                tr.last_key_ts = ts
                if self._batch:
                    self.flush()
                self._batch_key = True
            self._batch_ts = ts
            end = data[1] & 0x80  # marker bit: last packet of the picture
        self._batch.append((track, rtcp, data))
        self._batch_bytes += len(data) + 4
        if end or self._batch_bytes >= MAX_BATCH:
            self.flush()

    def end_of_input(self):
        """The publisher's read is over (end of a ``dataReceived``). Sources with video
        flush per picture (marker bit), carrying audio and RTCP along; others flush
        here."""
        if not self._video:
            self.flush()

    def flush(self):
        """Send the pending batch to every reader."""
        batch = self._batch
        if not batch:
            return
        key = self._batch_key or not self._video
        self._batch = []
        self._batch_bytes = 0
        self._batch_key = False
        self._batch_ts = None
        data = b"".join([_pack_head(0x24, 2 * t + r, len(p)) + p for t, r, p in batch])
        frame = Frame(data, key, batch)
        self.frames += 1
        if self.gop_cache:
            self._remember(frame)
        for reader in self.readers:
            reader.deliver(frame)

    def _remember(self, frame):
        if frame.key:
            self._gop = [frame]
            self._gop_at = [self.clock.seconds()]
            self._gop_bytes = len(frame.data)
        elif self._gop is not None:
            self._gop_bytes += len(frame.data)
            if self._gop_bytes > self.gop_cache:
                self._gop = self._gop_at = None  # too big: again from the next keyframe
            else:
                self._gop.append(frame)
                self._gop_at.append(self.clock.seconds())

    # -- readers

    def add_reader(self, reader):
        reader.source = self
        reader.full = self.all_tracks <= reader.mask
        reader.needs_key = any(self.tracks[t].kind == "video"
                               for t in reader.mask if 0 <= t < len(self.tracks))
        if not reader.needs_key:
            reader.waiting_key = False  # audio only: any frame is a fine start
        self.readers.append(reader)
        self.no_readers_since = None
        if self._gop:
            at = getattr(reader, "deliver_at", None)
            for wall, frame in list(zip(self._gop_at, self._gop, strict=True)):
                if at is not None:
                    at(wall, frame)
                else:
                    reader.deliver(frame)

    def remove_reader(self, reader):
        try:
            self.readers.remove(reader)
        except ValueError:
            return
        self.drops += reader.drops
        self._count_gone(reader)
        if not self.readers and not self.closed:
            self.no_readers_since = self.clock.seconds()
            if self._on_idle is not None:
                self._on_idle(self)

    def _count_gone(self, reader):
        if getattr(reader, "viewer", False):
            gone = self.viewers_gone
            gone[0] += reader.bytes
            gone[1] += reader.frames
            gone[2] += reader.drops
            gone[3] += reader.key_waits

    def on_end(self, callback):
        """Call ``callback(source)`` when the source closes."""
        self._ending.append(callback)

    def close(self):
        if self.closed:
            return
        self.flush()
        self.closed = True
        readers, self.readers = self.readers, []
        for reader in readers:
            self.drops += reader.drops
            self._count_gone(reader)
            reader.source_ended()
        for cb in self._ending:
            try:
                cb(self)
            except Exception:
                log.failure("source end callback failed", path=self.path)


class TCPReader:
    """A TCP-interleaved viewer of a source. ``transport`` is its connection."""

    viewer = True  # a player (counted in the media metrics), not a recorder
    transport_name = "tcp"
    source = None
    full = True
    needs_key = True

    def __init__(self, transport, tracks, max_queue=DEFAULT_MAX_QUEUE, on_end=None,
                 sndbuf=DEFAULT_SNDBUF):
        self.transport = transport
        self.mask = frozenset(tracks)
        self.max_queue = max_queue
        self.queued = 0
        self.waiting_key = True  # start at a keyframe
        self.dropping = False  # waiting for a keyframe after an overflow
        self.bytes = 0
        self.frames = 0
        self.drops = 0  # frames dropped
        self.dropped_bytes = 0
        self.key_waits = 0  # frames skipped before the first keyframe
        self.direct_sends = 0
        self._on_end = on_end
        self._registered = False
        sock = getattr(transport, "socket", None)
        if sock is not None and not hasattr(transport, "startTLS"):
            sock = None  # not a plain TCP transport we know
        if sock is not None and getattr(transport, "TLS", False):
            sock = None
        self.sock = sock
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if sndbuf:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            except OSError:
                pass

    def start(self, pending=True):
        """Register as the transport's pull producer. ``pending``: something was just
        written through the transport (the PLAY reply), so wait for the drain signal
        before writing straight to the socket."""
        if not self._registered:
            self._registered = True
            self.transport.registerProducer(self, False)
        if pending:
            self.queued = max(self.queued, 1)

    def stop(self):
        if self._registered:
            self._registered = False
            try:
                self.transport.unregisterProducer()
            except Exception:
                pass

    # IPullProducer: Twisted calls this when its write buffer is empty.
    def resumeProducing(self):
        self.queued = 0

    def stopProducing(self):
        pass

    def write(self, data):
        """Control bytes (RTSP replies) sent in order with the media."""
        self.transport.write(data)
        self.queued += len(data) or 1

    def deliver(self, frame):
        if not self.full:
            buf = frame.data_for(self.mask)
            if not buf:
                return
        else:
            buf = frame.data
        if self.waiting_key:
            if not frame.key:
                if self.dropping:
                    self.drops += 1
                    self.dropped_bytes += len(buf)
                else:
                    self.key_waits += 1
                return
            self.waiting_key = self.dropping = False
        n = len(buf)
        if self.queued == 0 and self.sock is not None:
            try:
                sent = self.sock.send(buf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return  # the connection is going away; Twisted will notice
            self.bytes += n
            self.frames += 1
            if sent == n:
                self.direct_sends += 1
                return
            self.transport.write(buf[sent:])
            self.queued = n - sent
            return
        if self.queued + n > self.max_queue:
            self.drops += 1
            self.dropped_bytes += n
            self.waiting_key = self.dropping = self.needs_key
            return
        self.transport.write(buf)
        self.queued += n
        self.bytes += n
        self.frames += 1

    def stats(self):
        return {"bytes": self.bytes, "frames": self.frames, "drops": self.drops,
                "queued": self.queued, "direct_sends": self.direct_sends}

    def source_ended(self):
        self.source = None
        if self._on_end is not None:
            self._on_end(self)


class UDPReader:
    """A UDP unicast viewer: RTP to ``(host, rtp_port)``, RTCP to ``(host, rtcp_port)``
    from the server's shared port pair ``(rtp_udp, rtcp_udp)`` (Twisted UDP ports)."""

    viewer = True
    transport_name = "udp"
    source = None
    full = True
    needs_key = True

    def __init__(self, rtp_udp, rtcp_udp, host, ports, on_end=None):
        self.rtp_udp = rtp_udp
        self.rtcp_udp = rtcp_udp
        self.host = host
        self.ports = dict(ports)  # track -> (rtp_port, rtcp_port)
        self.mask = frozenset(self.ports)
        self.waiting_key = True
        self.bytes = 0
        self.frames = 0
        self.drops = 0
        self.key_waits = 0
        self._on_end = on_end

    def deliver(self, frame):
        if self.waiting_key:
            if not frame.key:
                self.key_waits += 1
                return
            self.waiting_key = False
        host = self.host
        ports = self.ports
        for t, rtcp, payload in frame.packets:
            pp = ports.get(t)
            if pp is None:
                continue
            try:
                if rtcp:
                    self.rtcp_udp.write(payload, (host, pp[1]))
                else:
                    self.rtp_udp.write(payload, (host, pp[0]))
            except Exception:  # socket buffer full (EAGAIN), oversized datagram...
                self.drops += 1
                continue
            self.bytes += len(payload)
        self.frames += 1

    def stats(self):
        return {"bytes": self.bytes, "frames": self.frames, "drops": self.drops}

    def source_ended(self):
        self.source = None
        if self._on_end is not None:
            self._on_end(self)
