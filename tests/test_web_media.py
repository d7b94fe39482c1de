"""
Browser media without a browser: a WebSocket client (``vss.testing.wsmedia``) on real
TCP against a node running in this process, with a real ``vss-pu`` (a DVS of two
channels) publishing H.264: the stream of channel 1 plays in a browser's media path as
channel 0's does, a live viewer that stops reading is kept within ``--live-max-lag``
like an RTSP viewer (it skips to a keyframe, its queue stays bounded), and a new
viewer starts at once from the SS's last GOP.
"""

from urllib.parse import urlsplit

from twisted.internet import defer, reactor, task
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


class WebMediaTests(unittest.TestCase):
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
        u = urlsplit(url)
        token = u.query.partition("token=")[2]
        client = yield connect_media(reactor, self.p.port("node-a", "http"), u.path, token,
                                     rcvbuf=rcvbuf)
        self.clients.append(client)
        return u.path, client

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
