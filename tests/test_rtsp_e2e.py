"""End to end with real clients on 127.0.0.1: ffmpeg publishes, PyAV plays, our client
pulls. The server runs in the trial reactor; ffmpeg is a child process and PyAV runs in
a thread, so the reactor is never blocked."""

import os

from twisted.internet import defer, protocol, reactor, threads
from twisted.trial import unittest

from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
from vss.rtsp.client import RTSPError, pull_into
from vss.rtsp.server import RTSPServerFactory, RTSPServerService
from vss.testing.platform import wait_until

try:
    import av
    import imageio_ffmpeg

    FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
except Exception:  # pragma: no cover - the suite's environment has both
    av = FFMPEG = None

SECRET = b"e2e-test-secret-0123456789"


class FFmpeg(protocol.ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()
        self.stderr = b""
        self.running = True

    def errReceived(self, data):
        self.stderr = (self.stderr + data)[-4000:]

    def processEnded(self, reason):
        self.running = False
        self.ended.callback(reason.value.exitCode)


def decode(url, transport, count, timeout=15):
    """Blocking (run in a thread): decode ``count`` video frames, return their sizes."""
    sizes = []
    with av.open(url, options={"rtsp_transport": transport}, timeout=timeout) as c:
        for frame in c.decode(video=0):
            sizes.append((frame.width, frame.height))
            if len(sizes) >= count:
                break
    return sizes


def decode_av(url, video_frames, audio_frames, timeout=15):
    """Blocking (run in a thread): decode until enough frames of each kind; returns
    (video codec, audio codec, video frames, audio frames)."""
    counts = {"video": 0, "audio": 0}
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=timeout) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        for packet in c.demux(v, a):
            for _ in packet.decode():
                counts[packet.stream.type] += 1
            if counts["video"] >= video_frames and counts["audio"] >= audio_frames:
                break
        return v.codec_context.name, a.codec_context.name, counts["video"], counts["audio"]


def with_timeout(d, seconds, what):
    call = reactor.callLater(seconds, lambda: d.called or d.errback(
        defer.TimeoutError(f"{what} did not happen in {seconds} s")))
    return d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])


class RawClient(protocol.Protocol):
    """A hand-driven RTSP client: sends bytes, keeps what arrives, may stop reading."""

    def __init__(self):
        self.received = b""
        self.lost = defer.Deferred()
        self.waiters = []

    def dataReceived(self, data):
        self.received += data
        for marker, d in list(self.waiters):
            if marker in self.received:
                self.waiters.remove((marker, d))
                d.callback(self.received)

    def wait_for(self, marker):
        if marker in self.received:
            return defer.succeed(self.received)
        d = defer.Deferred()
        self.waiters.append((marker, d))
        return with_timeout(d, 15, f"reply {marker!r}")

    def connectionLost(self, reason):
        self.lost.callback(None)


class E2ETestBase(unittest.TestCase):
    timeout = 60

    def setUp(self):
        if FFMPEG is None:
            raise unittest.SkipTest("PyAV and imageio-ffmpeg are needed")
        self.issuer = TokenIssuer(SECRET)
        self.factory = self.make_server()
        self.procs = []
        self.clients = []

    def make_server(self, **kw):
        factory = RTSPServerFactory(TokenAuthorizer(self.issuer), reactor=reactor, **kw)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        factory.listen_udp("127.0.0.1")
        factory.port = port.getHost().port

        def stop():
            factory.close_all()
            return defer.gatherResults([defer.maybeDeferred(port.stopListening),
                                        factory.stop_udp()])

        self.addCleanup(stop)
        return factory

    @defer.inlineCallbacks
    def tearDown(self):
        for c in self.clients:
            c.transport.loseConnection()
        for p in self.procs:
            if p.running:
                p.transport.signalProcess("KILL")
            yield p.ended

    def url(self, factory, path="/live/cam1/main", methods=("play",), ttl=None,
            token=None):
        if token is None:
            token = self.issuer.issue(path, methods, ttl=ttl)
        return f"rtsp://127.0.0.1:{factory.port}{path}?token={token}"

    def publish(self, factory, path="/live/cam1/main", extra=(), audio=True, userinfo="",
                transport="tcp", video_codec="libx264", audio_codec="pcm_mulaw"):
        """Start ffmpeg publishing a test pattern; fires when the source exists."""
        added = defer.Deferred()

        class Watch:
            def source_added(self, source):
                if source.path == path and not added.called:
                    added.callback(source)

        watcher = Watch()
        factory.addObserver(watcher)
        args = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re",
                "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"]
        if audio:
            args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000",
                     "-c:a", audio_codec]
        args += ["-c:v", video_codec, "-preset", "ultrafast", "-tune", "zerolatency",
                 "-g", "25", *extra, "-t", "50", "-f", "rtsp", "-rtsp_transport", transport,
                 self.url(factory, path, ("publish",)).replace("//", "//" + userinfo)]
        proc = FFmpeg()
        self.procs.append(proc)
        reactor.spawnProcess(proc, FFMPEG, args, env=dict(os.environ))
        proc.ended.addCallback(lambda code: added.called or added.errback(
            RuntimeError(f"ffmpeg exited {code}: {proc.stderr.decode(errors='replace')}")))
        added.addBoth(lambda r: (factory.removeObserver(watcher), r)[1])
        return with_timeout(added, 20, "ffmpeg publishing")

    def raw_client(self, factory):
        d = protocol.ClientCreator(reactor, RawClient).connectTCP("127.0.0.1", factory.port)

        def keep(c):
            self.clients.append(c)
            return c

        return d.addCallback(keep)


class PublishPlayTests(E2ETestBase):
    @defer.inlineCallbacks
    def test_ffmpeg_publishes_pyav_plays_tcp_and_udp(self):
        source = yield self.publish(self.factory)
        self.assertEqual([t.encoding for t in source.tracks], ["H264", "PCMU"])
        url = self.url(self.factory)
        tcp, udp = yield defer.gatherResults([
            threads.deferToThread(decode, url, "tcp", 30),
            threads.deferToThread(decode, url, "udp", 30)])
        self.assertEqual(tcp, [(320, 240)] * 30)
        self.assertEqual(udp, [(320, 240)] * 30)
        self.assertGreater(source.packets, 30)
        self.assertEqual(source.drops, 0)

    @defer.inlineCallbacks
    def test_h265_and_aac_pass_through(self):
        source = yield self.publish(self.factory, video_codec="libx265", audio_codec="aac")
        self.assertEqual([t.encoding for t in source.tracks], ["H265", "MPEG4-GENERIC"])
        vcodec, acodec, nv, na = yield threads.deferToThread(
            decode_av, self.url(self.factory), 25, 10)
        self.assertEqual((vcodec, acodec), ("hevc", "aac"))
        self.assertGreaterEqual(nv, 25)
        self.assertGreaterEqual(na, 10)

    @defer.inlineCallbacks
    def test_ffmpeg_publishes_over_udp(self):
        source = yield self.publish(self.factory, transport="udp")
        self.assertEqual(len(source.tracks), 2)
        sizes = yield threads.deferToThread(decode, self.url(self.factory), "tcp", 25)
        self.assertEqual(sizes, [(320, 240)] * 25)
        [session] = [s for s in self.factory.sessions.values() if s.role == "publish"]
        self.assertEqual(sorted(session.udp_tracks), [0, 1])

    @defer.inlineCallbacks
    def test_bad_tokens_refused(self):
        yield self.publish(self.factory, audio=False)
        bad = [
            f"rtsp://127.0.0.1:{self.factory.port}/live/cam1/main",
            self.url(self.factory, ttl=-1),
            self.url(self.factory, token=self.issuer.issue("/live/cam2/main")),
            self.url(self.factory, token=TokenIssuer(b"x" * 20).issue("/live/cam1/main")),
        ]
        for url in bad:
            try:
                yield threads.deferToThread(decode, url, "tcp", 1, 10)
            except av.error.FFmpegError as e:
                self.assertIn("401", str(e) + repr(e) + str(getattr(e, "errno", "")),
                              msg=f"{url}: {e!r}")
            else:
                self.fail(f"{url} was played")
        self.assertEqual(self.factory.sources["/live/cam1/main"].reader_count, 0)
        self.assertEqual([s.role for s in self.factory.sessions.values()], ["publish"])

    @defer.inlineCallbacks
    def test_publish_refused_with_play_token(self):
        proc = FFmpeg()
        self.procs.append(proc)
        url = self.url(self.factory, methods=("play",))
        reactor.spawnProcess(proc, FFMPEG, [
            FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
            "testsrc=size=160x120:rate=25", "-t", "2", "-c:v", "libx264", "-preset",
            "ultrafast", "-f", "rtsp", "-rtsp_transport", "tcp", url], env=dict(os.environ))
        code = yield with_timeout(proc.ended, 20, "ffmpeg exit")
        self.assertNotEqual(code, 0)
        self.assertIn(b"401", proc.stderr)
        self.assertEqual(self.factory.sources, {})


class IsolationTests(E2ETestBase):
    @defer.inlineCallbacks
    def test_stalled_reader_and_malformed_peer_do_not_hurt_others(self):
        # a small send buffer and queue, and big lossless frames, so the stalled reader
        # overflows within a second
        self.factory.sndbuf = 16 * 1024
        self.factory.max_queue = 128 * 1024
        source = yield self.publish(self.factory, extra=["-qp", "0"], audio=False)
        url = self.url(self.factory)
        stalled = yield self.raw_client(self.factory)
        stalled.transport.write(
            f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
        yield stalled.wait_for(b"a=control")
        setup_url = url.replace("main?", "main/trackID=0?")
        stalled.transport.write(
            f"SETUP {setup_url} RTSP/1.0\r\nCSeq: 2\r\n"
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n".encode())
        data = yield stalled.wait_for(b"CSeq: 2")
        sid = data.split(b"Session: ")[1].split(b";")[0].decode()
        stalled.transport.write(
            f"PLAY {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {sid}\r\n\r\n".encode())
        yield stalled.wait_for(b"CSeq: 3")
        stalled.transport.pauseProducing()  # stop reading from the socket

        bad = yield self.raw_client(self.factory)
        bad.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        yield with_timeout(bad.lost, 15, "malformed peer closed")
        self.assertIn(b"RTSP/1.0 400", bad.received)

        [stalled_reader] = source.readers
        sizes = yield threads.deferToThread(decode, url, "tcp", 75)
        self.assertEqual(sizes, [(320, 240)] * 75)
        self.assertGreater(stalled_reader.drops, 0, stalled_reader.stats())
        self.assertLessEqual(stalled_reader.queued, self.factory.max_queue)
        self.assertIn(stalled_reader, source.readers)
        stalled.transport.resumeProducing()


class CSeqTests(E2ETestBase):
    @defer.inlineCallbacks
    def test_requests_without_a_numeric_cseq_get_400_beside_a_playing_viewer(self):
        """RFC 2326 12.17: raw socket clients send requests with no CSeq and with
        ``CSeq: abc`` while a PyAV viewer plays; each is answered 400 Bad Request and the
        viewer decodes every frame it asked for."""
        yield self.publish(self.factory, audio=False)
        url = self.url(self.factory)
        viewing = threads.deferToThread(decode, url, "tcp", 100, 30)
        yield wait_until(reactor, lambda: any(s.state == "playing"
                                              for s in self.factory.sessions.values()
                                              if s.role == "play"),
                         timeout=20, what="the viewer to play")
        for i, cseq_line in enumerate(("", "CSeq: abc\r\n", "CSeq: 1\r\nCSeq: 2\r\n")):
            raw = yield self.raw_client(self.factory)
            raw.transport.write(f"DESCRIBE {url} RTSP/1.0\r\n{cseq_line}\r\n".encode())
            reply = yield raw.wait_for(b"\r\n\r\n")
            self.assertTrue(reply.startswith(b"RTSP/1.0 400 Bad Request\r\n"), reply)
            self.assertNotIn(b"CSeq", reply)
            # the link stays: a good request on it is served
            raw.transport.write(f"OPTIONS * RTSP/1.0\r\nCSeq: {i + 1}\r\n\r\n".encode())
            reply = yield raw.wait_for(f"CSeq: {i + 1}".encode())
            self.assertIn(b"RTSP/1.0 200 OK", reply)
        sizes = yield viewing
        self.assertEqual(sizes, [(320, 240)] * 100)


class PullClientTests(E2ETestBase):
    @defer.inlineCallbacks
    def test_pull_from_camera_with_digest(self):
        camera = self.make_server(users={"admin": "s3cret"}, realm="IP Camera")
        yield self.publish(camera, audio=False, userinfo="admin:s3cret@")
        cam_url = self.url(camera).replace("rtsp://", "rtsp://admin:s3cret@")

        wrong = cam_url.replace("s3cret", "nope")
        with self.assertRaises(RTSPError) as ctx:
            yield pull_into(self.factory, "/live/cam2/main", wrong, reactor=reactor)
        self.assertEqual(ctx.exception.status, 401)
        self.assertNotIn("/live/cam2/main", self.factory.sources)

        client = yield pull_into(self.factory, "/live/cam2/main", cam_url, reactor=reactor)
        self.assertIn("H264", client.sdp)
        sizes = yield threads.deferToThread(
            decode, self.url(self.factory, "/live/cam2/main"), "tcp", 25)
        self.assertEqual(sizes, [(320, 240)] * 25)
        self.assertGreater(client.packets, 25)
        client.teardown()
        yield client.finished
        self.assertNotIn("/live/cam2/main", self.factory.sources)


class ServiceTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_service_listens_and_stops(self):
        factory = RTSPServerFactory(TokenAuthorizer(TokenIssuer(SECRET)), reactor=reactor)
        svc = RTSPServerService("tcp:0:interface=127.0.0.1", factory, reactor=reactor,
                                udp_interface="127.0.0.1")
        yield svc.startService()
        port = svc.port.getHost().port
        self.assertGreater(port, 0)
        self.assertIsNotNone(factory.udp_ports)
        client = yield protocol.ClientCreator(reactor, RawClient).connectTCP("127.0.0.1", port)
        client.transport.write(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        data = yield client.wait_for(b"\r\n\r\n")
        self.assertTrue(data.startswith(b"RTSP/1.0 200 OK"))
        yield svc.stopService()
        yield client.lost
        self.assertIsNone(factory.udp_ports)
        self.assertIsNone(svc.port)
