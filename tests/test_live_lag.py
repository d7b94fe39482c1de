"""
Live means live: a live TCP viewer is kept within ``max_lag`` seconds of the source
(``vss.rtsp.fanout.LagWatch``). Without sockets: a fake kernel socket with a send
buffer that a simulated viewer empties at its own pace, Twisted's write buffer
simulated by a StringTransport that is pumped into it, and a ``task.Clock``.
"""

import socket
import struct

from twisted.internet import defer, protocol, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from tests.test_rtsp_e2e import E2ETestBase, av
from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
from vss.rtsp import fanout
from vss.rtsp.parser import Interleaved, MessageParser
from vss.rtsp.server import RTSPServerFactory, is_live

FPS = 25
GOP = 25  # one keyframe a second
FRAME = 4000  # bytes of RTP payload a picture: 100 kB/s


def picture(index, key):
    """One picture as one RTP packet; its timestamp says when it was made (90 kHz)."""
    head = struct.pack("!BBHII", 0x80, 96 | 0x80, index & 0xFFFF, index * 3600, 1234)
    return head + bytes([0x65 if key else 0x41]) + b"\x00" * FRAME


class FakeSocket:
    """The kernel side of a TCP connection: a send buffer of ``capacity`` bytes that
    the viewer empties with ``read``."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.pending = bytearray()
        self.options = []

    def send(self, data):
        room = self.capacity - len(self.pending)
        if room <= 0:
            raise BlockingIOError()
        self.pending += data[:room]
        return min(room, len(data))

    def setsockopt(self, level, option, value):
        self.options.append((level, option, value))

    def read(self, n):
        out = bytes(self.pending[:n])
        del self.pending[:n]
        return out


class FakeTCPTransport(StringTransport):
    """A TCP transport whose write buffer is the StringTransport's, written into the
    fake socket by ``pump`` (Twisted's ``doWrite``): when it is empty, the producer is
    told to resume, as Twisted does for a pull producer."""

    def __init__(self, sock, port):
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", port),
                         hostAddress=IPv4Address("TCP", "127.0.0.1", 554))
        self.socket = sock

    def startTLS(self, *a):  # a plain TCP transport has it
        raise NotImplementedError

    def pump(self):
        data = self.value()
        if data:
            try:
                sent = self.socket.send(data)
            except BlockingIOError:
                sent = 0
            self.clear()
            self.io.write(data[sent:])
        if not self.value() and self.producer is not None and not self.streaming:
            self.producer.resumeProducing()


class Viewer:
    """A viewer reading ``rate`` bytes a second (None: all there is) from its socket,
    noting how old each picture is when it reads it."""

    def __init__(self, clock, rate, capacity=32 * 1024, port=40000):
        self.clock = clock
        self.rate = rate
        self.sock = FakeSocket(capacity)
        self.transport = FakeTCPTransport(self.sock, port)
        self.parser = MessageParser("response")
        self.lags = []  # (time read, seconds behind live)
        self.indexes = []
        self._credit = 0.0

    def tick(self, dt, started):
        self.transport.pump()
        if self.rate is None:
            data = self.sock.read(len(self.sock.pending))
        else:
            self._credit += self.rate * dt
            data = self.sock.read(int(self._credit))
            self._credit -= len(data)
        now = self.clock.seconds()
        for item in self.parser.feed(data):
            if isinstance(item, Interleaved) and item.channel == 0:
                index = struct.unpack("!I", item.data[4:8])[0] // 3600
                self.indexes.append(index)
                self.lags.append((now, now - (started + index / FPS)))
        self.transport.pump()


class LagWatchTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.source = fanout.Source("/live/cam1/main", "", [fanout.Track(0, "video", "H264")],
                                    self.clock)

    def tearDown(self):
        self.source.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def viewer(self, rate, watch, port, cached=False):
        v = Viewer(self.clock, rate, port=port)
        reader = fanout.TCPReader(v.transport, [0], max_queue=2 * 1024 * 1024)
        reader.unacked = lambda sock: len(sock.pending)
        reader.start(pending=False)
        self.source.add_reader(reader, cached=cached)
        if watch is not None:
            watch.add(reader)
        v.reader = reader
        return v

    def run_stream(self, seconds, viewers, first=0, started=None):
        """Feed ``seconds`` of pictures from number ``first``; ``started``: when picture
        0 was made (default now)."""
        if started is None:
            started = self.clock.seconds()
        dt = 1.0 / FPS
        for index in range(first, first + int(seconds * FPS)):
            self.source.feed(0, False, picture(index, index % GOP == 0))
            self.clock.advance(dt / 2)
            for v in viewers:
                v.tick(dt / 2, started)
            self.clock.advance(dt / 2)
            for v in viewers:
                v.tick(dt / 2, started)
        return started

    def test_a_viewer_at_half_the_rate_stays_within_the_bound_plus_one_gop(self):
        watch = fanout.LagWatch(self.clock, max_lag=2.0)
        slow = self.viewer(FRAME * FPS / 2, watch, 40001)
        fast = self.viewer(None, watch, 40002)
        self.run_stream(40, [slow, fast])
        worst = max(lag for _, lag in slow.lags)
        self.assertLessEqual(worst, 2.0 + GOP / FPS, slow.reader.stats())
        # it does not only stay live at the start: it reads until the end
        self.assertGreater(slow.lags[-1][0], self.clock.seconds() - 3)
        self.assertGreaterEqual(slow.reader.lag_skips, 5)
        self.assertEqual(watch.skips, slow.reader.lag_skips)
        self.assertEqual(self.source.stats()["lag_skips"], slow.reader.lag_skips)
        # each skip resumes at a keyframe
        for before, after in zip(slow.indexes, slow.indexes[1:], strict=False):
            if after != before + 1:
                self.assertEqual(after % GOP, 0, (before, after))
        # the fast viewer is untouched: every picture, in order, no skip
        self.assertEqual(fast.indexes, list(range(40 * FPS)))
        self.assertEqual((fast.reader.lag_skips, fast.reader.drops), (0, 0))
        watch.remove(slow.reader)
        watch.remove(fast.reader)

    def joined_a_gop_behind(self, rate, watch):
        """A viewer that joins from the kept GOP (``start=gop``) just before the next
        keyframe: its first picture is almost a GOP old."""
        self.source.close()
        self.source = fanout.Source("/live/cam1/main", "", [fanout.Track(0, "video", "H264")],
                                    self.clock, gop_keep=fanout.GOP_KEEP)
        started = self.run_stream(2 - 1 / FPS, [])  # pictures 0-48: the GOP of 25-48 kept
        v = self.viewer(rate, watch, 40001, cached=True)
        self.run_stream(20, [v], first=2 * FPS - 1, started=started)
        return v

    def test_a_viewer_starting_a_gop_behind_catches_up(self):
        watch = fanout.LagWatch(self.clock, max_lag=2.0)
        v = self.joined_a_gop_behind(FRAME * FPS * 1.5, watch)
        self.assertEqual(v.indexes[0], GOP)  # the kept keyframe first
        self.assertGreater(v.lags[0][1], (GOP - 2) / FPS)  # almost a GOP old
        self.assertEqual(v.indexes, list(range(GOP, 2 * FPS - 1 + 20 * FPS)))
        self.assertEqual((v.reader.lag_skips, v.reader.drops), (0, 0))
        # live within a few seconds (it reads 1.5 times the stream's rate), then stays
        late = [lag for t, lag in v.lags if t > v.lags[0][0] + 5]
        self.assertLess(max(late), 0.2)
        watch.remove(v.reader)

    def test_a_slow_viewer_starting_a_gop_behind_is_bounded(self):
        watch = fanout.LagWatch(self.clock, max_lag=2.0)
        v = self.joined_a_gop_behind(FRAME * FPS / 2, watch)
        self.assertEqual(v.indexes[0], GOP)
        self.assertLessEqual(max(lag for _, lag in v.lags), 2.0 + GOP / FPS,
                             v.reader.stats())
        self.assertGreaterEqual(v.reader.lag_skips, 2)
        watch.remove(v.reader)

    def test_without_the_watch_the_same_viewer_falls_ever_further_behind(self):
        slow = self.viewer(FRAME * FPS / 2, None, 40001)
        self.run_stream(40, [slow])
        self.assertGreater(max(lag for _, lag in slow.lags), 10)
        self.assertEqual(slow.reader.lag_skips, 0)

    def test_a_viewer_that_keeps_up_is_never_judged(self):
        watch = fanout.LagWatch(self.clock, max_lag=2.0)
        fast = self.viewer(FRAME * FPS * 1.5, watch, 40001)
        self.run_stream(10, [fast])
        self.assertEqual(fast.indexes, list(range(10 * FPS)))
        self.assertLess(max(lag for _, lag in fast.lags), 0.2)
        self.assertEqual(fast.reader.lag_skips, 0)
        watch.remove(fast.reader)

    def test_the_watch_stops_when_its_last_reader_leaves(self):
        watch = fanout.LagWatch(self.clock, max_lag=2.0)
        v = self.viewer(None, watch, 40001)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(v.reader.max_lag, 2.0)
        v.reader.stop()
        self.assertEqual(watch.readers, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_send_buffer_is_sized_to_the_stream(self):
        watch = fanout.LagWatch(self.clock, max_lag=2.0)
        v = self.viewer(None, watch, 40001)
        self.run_stream(3, [v])
        self.clock.advance(watch.interval)
        # 100 kB/s for 2 s: a quarter of that (Linux doubles what it is asked for)
        sizes = [value for level, option, value in v.sock.options
                 if (level, option) == (socket.SOL_SOCKET, socket.SO_SNDBUF)]
        self.assertEqual(sizes[0], fanout.DEFAULT_SNDBUF)
        self.assertLess(abs(sizes[-1] - FRAME * FPS * 2 / 8), FRAME * FPS * 0.1, sizes)
        v.reader.stop()

    def test_control_bytes_survive_a_skip(self):
        watch = fanout.LagWatch(self.clock, max_lag=2.0)
        v = self.viewer(0, watch, 40001)  # reads nothing
        for index in range(10):
            self.source.feed(0, False, picture(index, index == 0))
        v.reader.write(b"RTSP/1.0 200 OK\r\nCSeq: 9\r\n\r\n")
        self.source.feed(0, False, picture(10, False))
        self.assertTrue(v.reader._backlog)
        v.reader.skip_for_lag()
        self.assertEqual([control for _, control in v.reader._backlog], [True])
        self.assertTrue(v.reader.waiting_key)
        v.sock.read(len(v.sock.pending))
        v.transport.pump()
        v.transport.pump()
        self.assertIn(b"CSeq: 9", bytes(v.sock.pending))
        v.reader.stop()


class ServerWatchTests(unittest.TestCase):
    """The SS watches its live TCP viewers, not playbacks nor recordings."""

    def test_live_paths_are_watched_and_playbacks_are_not(self):
        self.assertTrue(is_live("/live/cam1/main"))
        self.assertTrue(is_live("/live/cam1/sub"))
        self.assertFalse(is_live("/live/cam1/pb-0123abcd"))
        self.assertFalse(is_live("/live/cam1/pb-dvr-0123abcd"))

    def test_factory_adds_live_viewers_to_its_watch(self):
        from tests.test_rtsp_server import SDP, idr

        clock = Clock()
        issuer = TokenIssuer(b"0123456789abcdef-secret", clock=clock)
        factory = RTSPServerFactory(TokenAuthorizer(issuer), reactor=object(), clock=clock,
                                    max_lag=1.5)
        readers = {}
        conns = []
        for path, methods in (("/live/cam1/main", ("play",)), ("/live/cam1/pb-00ff", ("play",)),
                              ("/live/cam2/main", ("play", "record"))):
            source = factory.attach_source(path, SDP)
            source.feed(0, False, idr(1, 10))
            conn = factory.buildProtocol(None)
            conns.append(conn)
            conn.makeConnection(StringTransport(
                peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)))
            token = issuer.issue(path, methods)
            url = f"rtsp://127.0.0.1:554{path}?token={token}"
            conn.dataReceived(
                f"SETUP {url.replace('?', '/trackID=0?')} RTSP/1.0\r\nCSeq: 1\r\n"
                "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n".encode())
            sid = conn.transport.value().split(b"Session: ")[1].split(b";")[0].decode()
            conn.dataReceived(f"PLAY {url} RTSP/1.0\r\nCSeq: 2\r\nSession: {sid}\r\n\r\n"
                              .encode())
            self.assertIn(b"CSeq: 2", conn.transport.value())
            readers[path] = source.readers[0]
        live = readers["/live/cam1/main"]
        playback = readers["/live/cam1/pb-00ff"]
        recording = readers["/live/cam2/main"]  # a recording child's token
        self.assertEqual(factory.lag_watch.readers, {live})
        self.assertEqual((live.max_lag, playback.max_lag, recording.max_lag), (1.5, None, None))
        factory.close_all()
        for conn in conns:
            conn.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_watch_when_switched_off(self):
        factory = RTSPServerFactory(None, reactor=object(), clock=Clock(), max_lag=0)
        self.assertIsNone(factory.max_lag)


class NodeOptionTests(unittest.TestCase):
    def options(self, *extra):
        from vss.tap.node import Options

        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write("x" * 40)
        o = Options()
        o.parseOptions(["--node-id", "n1", "--cms", "tcp:127.0.0.1:1", "--cluster-secret-file",
                        secret, "--data-dir", self.mktemp(), *extra])
        return o.settings

    def test_the_bound_reaches_the_streaming_server(self):
        from vss.node import NodeService

        self.assertEqual(self.options().live_max_lag, 2.0)
        node = NodeService(self.options("--live-max-lag", "0.5"), reactor)  # not started
        self.assertEqual(node.rtsp.max_lag, 0.5)
        self.assertIsNone(NodeService(self.options("--live-max-lag", "0"), reactor).rtsp.max_lag)

    def test_bad_values_are_named(self):
        from vss.config import ConfigError

        for bad in ("-1", "soon", "7200"):
            with self.assertRaises(ConfigError) as e:
                self.options("--live-max-lag", bad)
            self.assertIn("--live-max-lag", str(e.exception))


# -- with real sockets, a real publisher and real players


class PacedViewer(protocol.Protocol):
    """A raw RTSP/TCP viewer that reads at most ``rate`` bytes a second (None: as fast
    as it can): between reads it stops reading its socket (a small SO_RCVBUF), so the
    server sees a viewer on a slow link. It notes when each video picture (RTP
    timestamp) arrives; ``reference`` (another viewer's arrivals) gives its lag."""

    def __init__(self, url, rate=None, reference=None):
        self.url = url
        self.rate = rate
        self.reference = reference
        self.arrivals = {}  # RTP timestamp -> first arrival
        self.lags = []
        self.timestamps = []
        self.parser = MessageParser("response")
        self.playing = defer.Deferred()
        self._credit = 0.0
        self._pacer = None
        self._state = "setup"

    def connectionMade(self):
        setup = self.url.replace("?", "/trackID=0?")
        self.transport.write(f"SETUP {setup} RTSP/1.0\r\nCSeq: 1\r\n"
                             "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n".encode())
        if self.rate is not None:
            self._pacer = task.LoopingCall(self._refill)
            self._pacer.start(0.02, now=False)

    def _refill(self):
        self._credit = min(self._credit + self.rate * 0.02, self.rate * 0.1)
        if self._credit > 0:
            self.transport.resumeProducing()

    def dataReceived(self, data):
        now = reactor.seconds()
        if self.rate is not None:
            self._credit -= len(data)
            if self._credit <= 0:
                self.transport.pauseProducing()
        for item in self.parser.feed(data):
            if isinstance(item, Interleaved):
                if item.channel != 0 or len(item.data) < 12:
                    continue
                ts = struct.unpack("!I", item.data[4:8])[0]
                if ts not in self.arrivals:
                    self.arrivals[ts] = now
                    self.timestamps.append(ts)
                    if self.reference is not None and ts in self.reference.arrivals:
                        self.lags.append(now - self.reference.arrivals[ts])
            elif self._state == "setup":
                sid = item.headers["Session"].split(";")[0]
                self.transport.write(f"PLAY {self.url} RTSP/1.0\r\nCSeq: 2\r\n"
                                     f"Session: {sid}\r\n\r\n".encode())
                self._state = "play"
            elif self._state == "play":
                self._state = "playing"
                self.playing.callback(self)

    def connectionLost(self, reason):
        if self._pacer is not None and self._pacer.running:
            self._pacer.stop()


def connect_viewer(port, viewer, rcvbuf=None):
    """Connect ``viewer`` to the SS on 127.0.0.1:``port``, with a receive buffer of
    ``rcvbuf`` bytes set before the connection (as a phone's small window)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    factory = protocol.Factory.forProtocol(lambda: viewer)
    reactor.adoptStreamConnection(sock.fileno(), socket.AF_INET, factory)
    sock.close()  # the reactor holds its own descriptor
    return viewer.playing


def watch_frames(url, seconds):
    """Blocking (a thread): demux and decode ``seconds`` of video with PyAV; the
    pictures' timestamps and how many decoded."""
    import time as clock

    pts = []
    decoded = 0
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=15) as c:
        end = None
        for packet in c.demux(video=0):
            if packet.pts is None:
                continue
            pts.append(packet.pts)
            decoded += len(packet.decode())
            now = clock.monotonic()
            end = end or now + seconds
            if now >= end:
                break
    return pts, decoded


class LiveLagEndToEndTests(E2ETestBase):
    timeout = 120

    @defer.inlineCallbacks
    def test_a_reader_at_half_the_rate_stays_live_and_others_get_every_frame(self):
        """ffmpeg publishes 1 Mb/s at 25 fps with a keyframe a second; a raw viewer
        reads at half that rate through an 8 KiB window. Its lag (behind a viewer
        reading at full speed) never exceeds the bound plus one GOP, it skips, and a
        PyAV viewer watching meanwhile gets every picture."""
        bitrate = 1_000_000
        source = yield self.publish(self.factory, audio=False, extra=[
            "-b:v", str(bitrate), "-minrate", str(bitrate), "-maxrate", str(bitrate),
            "-bufsize", str(bitrate // 2), "-x264-params", "nal-hrd=cbr"])
        url = self.url(self.factory)
        fast = PacedViewer(url)
        yield connect_viewer(self.factory.port, fast)
        slow = PacedViewer(url, rate=bitrate / 8 / 2, reference=fast)
        yield connect_viewer(self.factory.port, slow, rcvbuf=8192)
        self.clients += [fast, slow]
        pts, decoded = yield threads.deferToThread(watch_frames, url, 16)
        max_lag = fanout.DEFAULT_MAX_LAG
        self.assertEqual(self.factory.max_lag, max_lag)
        gop = 1.0
        slow_reader = [r for r in source.readers if r.lag_skips][0] \
            if any(r.lag_skips for r in source.readers) else None
        self.assertGreater(len(slow.lags), 100)
        worst = max(slow.lags)
        # the watch looks every interval: a reader found past the bound waits for the
        # next keyframe (at most a GOP) to be live again
        bound = max_lag + self.factory.lag_watch.interval + gop
        self.assertLessEqual(worst, bound, f"worst lag {worst:.2f} s")
        # not only at the start: it kept reading live pictures to the end
        self.assertGreater(len(slow.lags), len(fast.timestamps) / 3)
        self.assertIsNotNone(slow_reader, [r.stats() for r in source.readers])
        self.assertGreater(self.factory.lag_watch.skips, 0)
        # the count the node's /metrics exports
        from vss.ops.collectors import streaming_server_families

        [family] = [f for f in streaming_server_families(self.factory)
                    if f.name == "vss_media_lag_skips"]
        self.assertEqual(family.samples[0].value, self.factory.lag_skips)
        # the other viewers: every picture, no skip
        steps = {b - a for a, b in zip(pts, pts[1:], strict=False)}
        self.assertEqual(steps, {3600}, "PyAV missed pictures")
        self.assertGreater(len(pts), 16 * 25 * 0.9)
        self.assertGreater(decoded, len(pts) * 0.9)
        fast_steps = {(b - a) & 0xFFFFFFFF for a, b in
                      zip(fast.timestamps, fast.timestamps[1:], strict=False)}
        self.assertEqual(fast_steps, {3600})
        self.assertEqual(sum(r.lag_skips for r in source.readers if r is not slow_reader), 0)
