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
nothing of it is held back; what the kernel did not take goes to the transport, and the
frames after it wait in the reader's own backlog (whole frames, bounded by
``max_queue`` bytes) until Twisted reports the transport drained (the reader is its pull
producer, so ``resumeProducing`` means "drained"); then the backlog goes to the socket
the same way. When a frame would overflow the backlog, the reader drops frames up to the
next keyframe and counts the drop. A reader that stops reading costs the others nothing.
Over TLS the reader is a streaming producer of the TLS transport (paused while the
socket under it is full) and writes through it.

Live means live: a ``LagWatch`` keeps each live TCP reader within ``max_lag`` seconds
of the source. Every ``interval`` it looks at the readers that hold something back; for
each it measures how fast the viewer reads (the bytes its full socket took over the
last seconds) and what is still on the way to it (the kernel's unacknowledged bytes,
the transport's and the backlog); when reading that would take longer than
``max_lag``, the backlog is dropped and the reader resumes at the next keyframe that it
can take (what is on the way then reads within half of ``max_lag``), counting one
``lag_skips``. The kernel's share is bounded too: each live reader's send buffer is
sized to a quarter of ``max_lag`` at the source's bit rate (at most ``sndbuf``).
Playback readers are not watched (they follow the player's pace), nor the recording
children (their tokens carry ``record``: see ``vss.rtsp.server``).

A ``UDPReader`` sends each packet with ``sendto`` on the server's shared UDP port pair.
"""

import collections
import socket
import struct
import sys

from twisted.internet import task
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol

from vss.directsend import kernel_socket, plain_socket

log = Logger()

MAX_BATCH = 256 * 1024
DEFAULT_MAX_QUEUE = 2 * 1024 * 1024
DEFAULT_SNDBUF = 256 * 1024
DEFAULT_MAX_LAG = 2.0
#: bytes of the last GOP a streaming server keeps for the readers that start from it
#: (browser packagers, RTSP viewers asking ``start=gop``); a longer GOP is not kept
GOP_KEEP = 8 * 1024 * 1024
MIN_SNDBUF = 16 * 1024
RATE_WINDOW = 2.0  # seconds of samples a reader's read rate is measured over
MIN_RATE_WINDOW = 0.5  # a rate measured over less is not judged on

_H264_KEY = frozenset((5, 7))
_H265_KEY = frozenset((16, 17, 18, 19, 20, 21, 32))
_pack_head = struct.Struct("!BBH").pack

if sys.platform.startswith("linux"):
    import fcntl
    import termios

    _OUTQ = termios.TIOCOUTQ  # SIOCOUTQ on a TCP socket: bytes not yet acknowledged

    def unacked_bytes(sock):
        """The bytes a TCP socket's kernel buffer holds that the peer has not
        acknowledged (Linux ``SIOCOUTQ``), or None."""
        try:
            return struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            return None
else:  # pragma: no cover - the kernel's share is then taken as its whole buffer
    def unacked_bytes(sock):
        try:
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except (OSError, ValueError):
            return None


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
                 gop_cache=0, gop_keep=0):
        self.path = path
        # gop_cache: if > 0, keep the frames since the last keyframe (up to that many
        # bytes) and send them to a new reader at once, so it starts without waiting
        # for the next keyframe (at the cost of starting up to one GOP behind live). A
        # reader with ``deliver_at(wall, frame)`` (a recording) gets each one with the
        # clock time the source flushed it, not the time it joined.
        # gop_keep: the same kept (up to that many bytes) only for the readers that ask
        # for it (``starts_cached``: a browser packager, which then jumps to the newest
        # picture itself; or ``add_reader(reader, cached=True)``: an RTSP viewer whose
        # URL says ``start=gop``), the others still starting at the next keyframe.
        self.gop_cache = max(gop_cache, gop_keep)
        self.gop_all = gop_cache > 0
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
        self.lag_skips = 0  # live readers' skips to the next keyframe (gone readers)
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
        """Counters: bytes/packets in, frames (shared buffers) out, drops and lag skips
        of every reader so far (current and gone)."""
        drops = self.drops + sum(r.drops for r in self.readers)
        skips = self.lag_skips + sum(r.lag_skips for r in self.readers)
        return {"path": self.path, "readers": len(self.readers), "bytes": self.bytes,
                "packets": self.packets, "frames": self.frames, "drops": drops,
                "lag_skips": skips, "started": self.started,
                "no_readers_since": self.no_readers_since, "origin": self.origin}

    def byte_rate(self):
        """Bytes a second fed so far (None in the first second)."""
        elapsed = self.clock.seconds() - self.started
        return self.bytes / elapsed if elapsed >= 1.0 else None

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

    @property
    def cached_bytes(self):
        """Bytes of the GOP kept for joining readers (0: none kept yet)."""
        return self._gop_bytes if self._gop else 0

    def add_reader(self, reader, cached=False):
        """``reader`` gets the frames from now on; first the kept GOP if every reader
        does (``gop_cache``), or if it asks (``cached`` or its ``starts_cached``)."""
        reader.source = self
        reader.full = self.all_tracks <= reader.mask
        reader.needs_key = any(self.tracks[t].kind == "video"
                               for t in reader.mask if 0 <= t < len(self.tracks))
        if not reader.needs_key:
            reader.waiting_key = False  # audio only: any frame is a fine start
        self.readers.append(reader)
        self.no_readers_since = None
        if self._gop and (self.gop_all or cached or getattr(reader, "starts_cached", False)):
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
        self.lag_skips += reader.lag_skips
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
            self.lag_skips += reader.lag_skips
            self._count_gone(reader)
            reader.source_ended()
        for cb in self._ending:
            try:
                cb(self)
            except Exception:
                log.failure("source end callback failed", path=self.path)


class TCPReader:
    """A TCP-interleaved viewer of a source. ``transport`` is its connection;
    ``max_lag`` (seconds, set by a ``LagWatch``) bounds how far behind live it may
    fall, None for a playback (it follows the player's pace)."""

    viewer = True  # a player (counted in the media metrics), not a recorder
    transport_name = "tcp"
    # slots: one reader per viewer, and its attributes are read per frame
    __slots__ = ("transport", "mask", "max_queue", "max_lag", "queued", "waiting_key",
                 "dropping", "lag_skipping", "paused", "bytes", "frames", "drops",
                 "dropped_bytes", "key_waits", "direct_sends", "lag_skips", "read_rate",
                 "source", "full", "needs_key", "watch", "sock", "kernel", "sndbuf", "unacked",
                 "_backlog", "_backlog_bytes", "_in_transport", "_samples", "_on_end",
                 "_registered", "_sized", "_streaming")

    def __init__(self, transport, tracks, max_queue=DEFAULT_MAX_QUEUE, on_end=None,
                 sndbuf=DEFAULT_SNDBUF):
        self.source = None
        self.full = True
        self.needs_key = True
        self.watch = None  # the LagWatch keeping it live, if any
        self.unacked = unacked_bytes  # f(socket): its unacknowledged bytes
        self.transport = transport
        self.mask = frozenset(tracks)
        self.max_queue = max_queue
        self.max_lag = None
        self.queued = 0  # bytes held back: the backlog and what the transport holds
        self.waiting_key = True  # start at a keyframe
        self.dropping = False  # waiting for a keyframe after an overflow or a lag skip
        self.lag_skipping = False  # ... after a lag skip: resume when caught up
        self.paused = False  # streaming mode (TLS): the transport asked us to stop
        self.bytes = 0
        self.frames = 0
        self.drops = 0  # frames dropped
        self.dropped_bytes = 0
        self.key_waits = 0  # frames skipped before the first keyframe
        self.direct_sends = 0
        self.lag_skips = 0  # times it fell more than max_lag behind and skipped ahead
        self.read_rate = None  # bytes a second the viewer read while it held us back
        self._backlog = ()  # (bytes, is_control) not yet written: a deque once needed
        self._backlog_bytes = 0
        self._in_transport = 0  # bytes handed to the transport, not yet reported drained
        self._samples = None  # (time, bytes written) while held back
        self._on_end = on_end
        self._registered = False
        self.sndbuf = sndbuf  # the send buffer asked for (None: the kernel's own)
        self._sized = None  # the send buffer the LagWatch sized it to
        # Through TLS (whose transport lends the attributes of the TCP one under it:
        # never write there) the reader is a streaming producer: the TLS transport
        # pauses it while the socket under it is full. (As a pull producer it would be
        # polled in a busy loop.)
        self._streaming = isinstance(transport, TLSMemoryBIOProtocol)
        sock = self.sock = plain_socket(transport)  # direct sends (vss.directsend)
        self.kernel = kernel_socket(transport)  # its buffer's fill, its size
        if self.kernel is not None:
            try:
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if sndbuf:
                    self.kernel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            except OSError:
                pass

    def start(self, pending=True):
        """Register as the transport's producer. ``pending``: something was just
        written through the transport (the PLAY reply), so wait for the drain signal
        before writing straight to the socket."""
        if not self._registered:
            self._registered = True
            self.transport.registerProducer(self, self._streaming)
        if pending and not self._streaming:
            self._in_transport = max(self._in_transport, 1)
            self.queued = self._backlog_bytes + self._in_transport

    def stop(self):
        if self.watch is not None:
            self.watch.remove(self)
        if self._registered:
            self._registered = False
            try:
                self.transport.unregisterProducer()
            except Exception:
                pass

    # IPullProducer: Twisted calls this when its write buffer is empty. (Streaming
    # mode: the transport may take more.)
    def resumeProducing(self):
        self.paused = False
        self._in_transport = 0
        backlog = self._backlog
        sock = self.sock
        while backlog and not self.paused:
            buf, control = backlog.popleft()
            n = len(buf)
            self._backlog_bytes -= n
            if not control:
                self.bytes += n
                self.frames += 1
            if sock is None:
                self.transport.write(buf)  # streaming: may pause us at once
                continue
            try:
                sent = sock.send(buf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # the connection is going away; Twisted will notice
                backlog.clear()
                self._backlog_bytes = 0
                break
            if sent < n:
                self.transport.write(buf[sent:] if sent else buf)
                self._in_transport = n - sent
                break
        if not backlog:
            self._backlog = ()  # its memory back (most readers never need one again)
        self.queued = self._backlog_bytes + self._in_transport

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        pass

    def write(self, data):
        """Control bytes (RTSP replies) sent in order with the media."""
        if self._backlog or self.paused:
            self._hold(data, True)
        else:
            self.transport.write(data)
            if not self._streaming:
                self._in_transport += len(data) or 1
        self.queued = self._backlog_bytes + self._in_transport

    def deliver(self, frame):
        if not self.full:
            buf = frame.data_for(self.mask)
            if not buf:
                return
        else:
            buf = frame.data
        if self.waiting_key:
            if not frame.key or (self.lag_skipping and not self.caught_up()):
                if self.dropping:
                    self.drops += 1
                    self.dropped_bytes += len(buf)
                else:
                    self.key_waits += 1
                return
            self.waiting_key = self.dropping = self.lag_skipping = False
        n = len(buf)
        sock = self.sock
        if self.queued == 0 and sock is not None:
            try:
                sent = sock.send(buf)
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
            self.queued = self._in_transport = n - sent
            return
        if self.queued + n > self.max_queue:
            self.drops += 1
            self.dropped_bytes += n
            self.waiting_key = self.dropping = self.needs_key
            return
        if sock is None and not self.paused and not self._backlog:
            # No socket of ours: over TLS the transport pauses us when full; another
            # transport (tests) counts what it holds until it reports drained.
            self.transport.write(buf)
            if not self._streaming:
                self._in_transport += n
                self.queued += n
            self.bytes += n
            self.frames += 1
            return
        self._hold(buf, False)
        self.queued += n

    def _hold(self, buf, control):
        backlog = self._backlog
        if not backlog:
            backlog = self._backlog = collections.deque()  # an empty one is 760 bytes
        backlog.append((buf, control))
        self._backlog_bytes += len(buf)

    # -- live means live (driven by a LagWatch)

    def in_flight(self):
        """Bytes written for the viewer that it has not read yet, as far as this side
        sees: the kernel's unacknowledged bytes, the transport's and the backlog."""
        kernel = self.unacked(self.kernel) if self.kernel is not None else None
        return (kernel or 0) + self.queued

    def check_lag(self, now):
        """One look of the LagWatch: measure the read rate while the viewer holds us
        back and skip ahead when what is on its way would take more than ``max_lag``
        to read. True if it skipped."""
        if not (self.queued or self.paused):
            self._samples = None  # keeping up
            return False
        samples = self._samples
        if samples is None:
            self._samples = collections.deque([(now, self.bytes)])
            return False
        samples.append((now, self.bytes))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        t0, b0 = samples[0]
        if now - t0 < MIN_RATE_WINDOW:
            return False
        self.read_rate = rate = (self.bytes - b0) / (now - t0)
        if self.in_flight() <= rate * self.max_lag:
            return False
        self.skip_for_lag()
        return True

    def skip_for_lag(self):
        """Drop what waits in the backlog (control bytes stay) and wait for a keyframe
        the viewer can take in time."""
        kept = []
        for buf, control in self._backlog:
            if control:
                kept.append((buf, control))
            else:
                self.drops += 1
                self.dropped_bytes += len(buf)
        self._backlog = collections.deque(kept) if kept else ()
        self._backlog_bytes = sum(len(b) for b, _ in kept)
        self.queued = self._backlog_bytes + self._in_transport
        self._samples = None
        self.lag_skips += 1
        if self.needs_key:
            self.waiting_key = self.dropping = self.lag_skipping = True

    def caught_up(self):
        """After a lag skip: may the viewer take a keyframe now? Yes when what is still
        on its way reads within half of ``max_lag`` (or nothing is)."""
        if self.max_lag is None:
            return True
        in_flight = self.in_flight()
        rate = self.read_rate
        return in_flight == 0 or bool(rate) and in_flight <= rate * self.max_lag / 2

    def size_send_buffer(self, byte_rate):
        """Bound the kernel's share of the lag: a send buffer of a quarter of
        ``max_lag`` at ``byte_rate`` (Linux doubles what it is asked for), within
        ``MIN_SNDBUF`` and the configured size. Set only when it changes by a third."""
        if self.kernel is None or not byte_rate or self.max_lag is None:
            return
        ceiling = self.sndbuf or DEFAULT_SNDBUF
        size = max(MIN_SNDBUF, min(ceiling, int(byte_rate * self.max_lag / 8)))
        current = self._sized or ceiling
        if abs(size - current) * 3 < current:
            return
        try:
            self.kernel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError:
            return
        self._sized = size

    def stats(self):
        return {"bytes": self.bytes, "frames": self.frames, "drops": self.drops,
                "queued": self.queued, "direct_sends": self.direct_sends,
                "lag_skips": self.lag_skips}

    def source_ended(self):
        self.source = None
        if self._on_end is not None:
            self._on_end(self)


class LagWatch:
    """Keeps live TCP readers within ``max_lag`` seconds of live (see the module
    docstring). ``add(reader)`` when a live viewer starts; the reader leaves when it
    stops. Runs on ``clock`` only while it watches someone."""

    def __init__(self, clock, max_lag=DEFAULT_MAX_LAG, interval=None):
        self.clock = clock
        self.max_lag = max_lag
        self.interval = interval or min(0.25, max_lag / 8)
        self.readers = set()
        self.skips = 0  # skips of every watched reader, for the node's counters
        self._loop = None
        self._sized_at = None

    def add(self, reader):
        reader.max_lag = self.max_lag
        reader.watch = self
        self.readers.add(reader)
        if reader.source is not None:
            reader.size_send_buffer(reader.source.byte_rate())
        if self._loop is None:
            self._loop = task.LoopingCall(self.check)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def remove(self, reader):
        self.readers.discard(reader)
        reader.watch = None
        if not self.readers:
            self.stop()

    def stop(self):
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def check(self):
        now = self.clock.seconds()
        resize = self._sized_at is None or now - self._sized_at >= 1.0
        if resize:
            self._sized_at = now
        rates = {}
        for reader in list(self.readers):
            if reader.check_lag(now):
                self.skips += 1
            source = reader.source
            if resize and source is not None and reader.kernel is not None:
                rate = rates.get(source)
                if rate is None:
                    rate = rates[source] = source.byte_rate() or 0
                reader.size_send_buffer(rate)


class UDPReader:
    """A UDP unicast viewer: RTP to ``(host, rtp_port)``, RTCP to ``(host, rtcp_port)``
    from the server's shared port pair ``(rtp_udp, rtcp_udp)`` (Twisted UDP ports)."""

    viewer = True
    transport_name = "udp"
    source = None
    full = True
    needs_key = True
    lag_skips = 0  # a UDP viewer is never held back: the network drops for it

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
