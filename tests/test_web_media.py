"""
Browser media without a browser: a WebSocket client (``vss.testing.wsmedia``) on real
TCP against a node running in this process, with a real ``vss-pu`` (a DVS of two
channels) publishing H.264: the stream of channel 1 plays in a browser's media path as
channel 0's does, a live viewer that stops reading is kept within ``--live-max-lag``
like an RTSP viewer (it skips to a keyframe, its queue stays bounded), a new viewer
starts at once from the SS's last GOP, and the HLS playlist of a stream (fMP4
segments) is played by a real HLS client (PyAV/ffmpeg) over HTTP, authorised like
every stream.
"""

import urllib.error
import urllib.request
from urllib.parse import urlsplit

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from vss.protocols.messages import Action, MediaOpen, MsgType, Purpose, Role
from vss.rtsp.fanout import DEFAULT_MAX_QUEUE
from vss.testing.platform import start_platform, verifier, wait_until
from vss.testing.wsmedia import Fragment, Init, connect_media

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)
MAX_LAG = 1.0


def open_live(device_id, channel=0):
    return MediaOpen(device_id=device_id, channel=channel, stream=0, purpose=Purpose.LIVE,
                     start_time=0, transport=0)


class WebMediaBase(unittest.TestCase):
    """A node with a DVS of two channels, alice granted it, logged in."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("dvs", "Gate", 2, 2, "node-a", verifier("dvs-s")))
        yield change(store.upsert_user("alice", verifier("alice-pw"), []))
        yield change(store.set_grant("user:alice", "dvs", ALL))
        self.node = yield self.p.start_node("node-a", live_max_lag=MAX_LAG)
        yield self.p.start_pu("node-a", "dvs", "dvs-s", extra=("--kind", "dvs", "--channels", "2"))
        self.cu = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            if c.transport is not None:
                c.transport.abortConnection()

    @defer.inlineCallbacks
    def media(self, channel=0, rcvbuf=None):
        url = (yield self.cu.request(MsgType.MEDIA_OPEN, open_live("dvs", channel),
                                     timeout=30)).body.url
        self.url = url
        u = urlsplit(url)
        token = u.query.partition("token=")[2]
        client = yield connect_media(reactor, self.p.port("node-a", "http"), u.path, token,
                                     rcvbuf=rcvbuf)
        self.clients.append(client)
        return u.path, client


class WebMediaTests(WebMediaBase):

    @defer.inlineCallbacks
    def test_channel_one_of_a_dvs_plays(self):
        path, client = yield self.media(channel=1)
        self.assertEqual(path, "/live/dvs/ch1-main")
        yield client.wait_for(reactor, lambda c: len(c.fragments()) >= 10,
                              what="ten pictures of channel 1")
        self.assertEqual(client.controls()[0],
                         {"type": "ready", "path": "/live/dvs/ch1-main", "playback": False})
        self.assertIsInstance(client.messages[1], Init)
        self.assertTrue(client.messages[1].codec.startswith("avc1."))
        frags = client.fragments()
        self.assertTrue(frags[0].key, "a viewer starts at a keyframe")
        steps = {b.dts - a.dts for a, b in zip(frags, frags[1:], strict=False)}
        self.assertEqual(steps, {3600}, "25 pictures a second, in order")
        # and over RTSP (the path of channel 1 was refused before: 404)
        sizes = yield threads.deferToThread(decode_rtsp, self.url, 5)
        self.assertEqual(sizes, [(640, 360)] * 5)
        # live video plays at its own pace: no speed but 1
        client.send_json({"op": "play", "speed": 2})
        client.send_json({"op": "play", "speed": "fast"})
        client.send_json({"op": "play", "speed": 1})
        yield client.wait_for(reactor, lambda c: len(c.controls()) >= 4, what="the answers")
        answers = [(m["type"], m.get("status")) for m in client.controls()[1:]]
        self.assertEqual(answers, [("refused", 456), ("refused", 400), ("playing", None)])

    @defer.inlineCallbacks
    def test_a_new_viewer_starts_from_the_ss_gop(self):
        """The first browser viewer of a stream that flows already (its packager gone)
        starts with the SS's last GOP: its first picture is a keyframe dated before it
        connected, not the next one."""
        _, first = yield self.media()
        yield first.wait_for(reactor, lambda c: len(c.fragments()) >= 60, timeout=30,
                             what="a second GOP")
        self.node.web.media.linger = 0.1
        first.close()
        yield first.closed
        packagers = self.node.web.media.packagers
        yield wait_until(reactor, lambda: not packagers, timeout=20,
                         what="the packager to close after its linger")
        self.assertIn("/live/dvs/main", self.node.rtsp.sources, "the stream flows on")
        _, second = yield self.media()
        connected = reactor.seconds() * 1000
        yield second.wait_for(reactor, lambda c: len(c.fragments()) >= 2)
        head = second.fragments()[0]
        self.assertTrue(head.key)
        self.assertLess(head.ingest, connected - 40,
                        "the first picture is the cached keyframe, not a new one")

    @defer.inlineCallbacks
    def test_a_viewer_that_stops_reading_skips_ahead_bounded(self):
        _, client = yield self.media(rcvbuf=16384)
        yield client.wait_for(reactor, lambda c: len(c.fragments()) >= 25)
        (viewer,) = [p.viewer for p in self.node.web.media.viewers]
        reader = viewer.reader
        self.assertIs(reader.watch, self.node.rtsp.lag_watch)
        skips0 = self.node.rtsp.lag_skips
        client.pause()
        seen = []

        def sample():
            seen.append(reader.queued)

        probe = task.LoopingCall(sample)
        probe.start(0.05)
        try:
            yield wait_until(reactor, lambda: reader.lag_skips >= 2, timeout=30,
                             what="two skips to a keyframe")
        finally:
            probe.stop()
        self.assertGreaterEqual(self.node.rtsp.lag_skips - skips0, 2)
        self.assertLessEqual(max(seen), DEFAULT_MAX_QUEUE, "the queue is bounded")
        self.assertGreater(reader.drops, 0)
        before = len(client.fragments())
        client.resume()
        yield client.wait_for(reactor, lambda c: len(c.fragments()) >= before + 60, timeout=30,
                              what="pictures again after the reader resumed")
        frags = client.fragments()
        gaps = [(a, b) for a, b in zip(frags, frags[1:], strict=False) if b.dts - a.dts != 3600]
        self.assertTrue(gaps, "pictures were skipped")
        for _, after in gaps:
            self.assertTrue(after.key, "after a skip the viewer starts again at a keyframe")
        # live again: what it gets now reached the SS within the bound
        tail = frags[-1]
        self.assertLess(reactor.seconds() * 1000 - tail.ingest, 2 * MAX_LAG * 1000 + 1000)
        self.assertIsInstance(frags[0], Fragment)


def get(url):
    """Blocking: (status, content type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - loopback http
            return r.status, r.headers.get("content-type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read()


def decode_rtsp(url, count):
    """Blocking: the sizes of ``count`` frames PyAV decodes from an rtsp:// URL."""
    import av

    out = []
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=20) as c:
        for frame in c.decode(video=0):
            out.append((frame.width, frame.height))
            if len(out) >= count:
                break
    return out


def decode_hls(url, count):
    """Blocking: the (width, height, pts seconds) of ``count`` frames PyAV decodes from
    the HLS playlist at ``url``."""
    import av

    out = []
    with av.open(url, timeout=30) as c:
        for frame in c.decode(video=0):
            out.append((frame.width, frame.height, frame.time))
            if len(out) >= count:
                break
    return out


class HlsTests(WebMediaBase):
    """HLS with fragmented MP4 (``vss.web.hls``)."""

    @defer.inlineCallbacks
    def test_a_real_hls_client_plays_the_playlist(self):
        url = (yield self.cu.request(MsgType.MEDIA_OPEN, open_live("dvs", 1),
                                     timeout=30)).body.url
        u = urlsplit(url)
        token = u.query.partition("token=")[2]
        base = f"http://127.0.0.1:{self.p.port('node-a', 'http')}/hls{u.path}"
        index = f"{base}/index.m3u8?token={token}"
        status, kind, body = yield threads.deferToThread(get, index)
        self.assertEqual((status, kind), (200, "application/vnd.apple.mpegurl"))
        lines = body.decode().splitlines()
        self.assertEqual(lines[0], "#EXTM3U")
        self.assertTrue(lines[3].startswith("#EXT-X-STREAM-INF:BANDWIDTH="), lines)
        self.assertIn('CODECS="avc1.', lines[3])
        media = lines[4]
        self.assertRegex(media, r"^stream\.m3u8\?session=[0-9a-f]{32}$")
        status, kind, body = yield threads.deferToThread(get, f"{base}/{media}")
        playlist = body.decode().splitlines()
        self.assertEqual(status, 200)
        self.assertIn("#EXT-X-VERSION:7", playlist)
        self.assertTrue(any(ln.startswith('#EXT-X-MAP:URI="init-0.mp4?session=')
                            for ln in playlist), playlist)
        segment = [ln for ln in playlist if ".m4s?" in ln][0]
        status, kind, data = yield threads.deferToThread(get, f"{base}/{segment}")
        self.assertEqual((status, kind), (200, "video/iso.segment"))
        self.assertEqual(data[4:8], b"moof")

        frames = yield threads.deferToThread(decode_hls, index, 30)
        self.assertEqual(len(frames), 30)
        self.assertEqual(frames[0][:2], (640, 360))
        times = [t for _, _, t in frames if t is not None]
        self.assertAlmostEqual(times[-1] - times[0], 29 / 25, delta=0.05)
        hls = self.node.web.hls
        self.assertGreaterEqual(hls.counters["segments"], 2)
        # every viewer of the stream shares one packager
        self.assertEqual(list(self.node.web.media.packagers), ["/live/dvs/ch1-main"])

    @defer.inlineCallbacks
    def test_every_request_is_authorised(self):
        url = (yield self.cu.request(MsgType.MEDIA_OPEN, open_live("dvs"), timeout=30)).body.url
        u = urlsplit(url)
        token = u.query.partition("token=")[2]
        http = f"http://127.0.0.1:{self.p.port('node-a', 'http')}"
        base = f"{http}/hls{u.path}"
        other = f"{http}/hls/live/dvs/ch1-main"
        for bad in (f"{base}/index.m3u8", f"{base}/index.m3u8?token={token[:-4]}AAAA",
                    f"{other}/index.m3u8?token={token}",  # another path's token
                    f"{base}/stream.m3u8?session={'0' * 32}", f"{base}/0.m4s",
                    f"{base}/init-0.mp4?token={token}"):  # a token is not a session
            status, _, body = yield threads.deferToThread(get, bad)
            self.assertEqual(status, 403, (bad, body))
        status, _, body = yield threads.deferToThread(get, f"{base}/index.m3u8?token={token}")
        self.assertEqual(status, 200)
        media = body.decode().splitlines()[-1]
        # a session is bound to its path
        status, _, _ = yield threads.deferToThread(get, f"{other}/{media}")
        self.assertEqual(status, 403)
        status, _, _ = yield threads.deferToThread(get, f"{base}/999999.m4s?{media.split('?')[1]}")
        self.assertEqual(status, 404)
        hls = self.node.web.hls
        # a node holds a bounded number of sessions
        hls.max_sessions = len(hls.sessions)
        status, _, _ = yield threads.deferToThread(get, f"{base}/index.m3u8?token={token}")
        self.assertEqual(status, 503)
        hls.max_sessions = 10
        # a session ends when no request came for a while, and its stream with it
        for session in hls.sessions.values():
            session.seen -= hls.idle + 1
        hls._reap()
        self.assertEqual((hls.sessions, hls.streams), ({}, {}))
        status, _, _ = yield threads.deferToThread(get, f"{base}/{media}")
        self.assertEqual(status, 403)
