"""
Live video end to end: a CU asks its node for a stream (MEDIA_OPEN); the node's CDN
module asks the PU agent (a real ``vss-pu`` process) to publish H.264 encoded by PyAV,
and PyAV, as the player, decodes frames from the rtsp:// URL it got. A CU on another
node gets the same camera through its own node, which pulls it once from the home node.
"""

import os

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from tests.test_ss_workers import first_frame_after
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import Action, MediaOpen, MsgType, Purpose, Role
from vss.rtsp import start_from_gop
from vss.testing.camera import start_ip_camera
from vss.testing.platform import start_platform, verifier, wait_until

try:
    import av
except ImportError:  # pragma: no cover - av is a dependency
    av = None

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)


def decode(url, count=10, transport="tcp"):
    """Blocking (run in a thread): decode ``count`` frames; their sizes."""
    sizes = []
    with av.open(url, options={"rtsp_transport": transport}, timeout=20) as c:
        for frame in c.decode(video=0):
            sizes.append((frame.width, frame.height))
            if len(sizes) >= count:
                break
    return sizes


def stream_facts(url, count=26):
    """Blocking: (width, height, frames per second) of ``count`` decoded frames, the rate
    from their presentation times."""
    times, size = [], None
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=20) as c:
        for frame in c.decode(video=0):
            size = (frame.width, frame.height)
            if frame.time is not None:
                times.append(frame.time)
            if len(times) >= count:
                break
    return size[0], size[1], (len(times) - 1) / (times[-1] - times[0])


def open_live(device_id, channel=0):
    return MediaOpen(device_id=device_id, channel=channel, stream=0, purpose=Purpose.LIVE,
                     start_time=0, transport=0)


class LiveVideoTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        self.work = self.p.workdir
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("cam-b", "Gate B", 1, 1, "node-b", verifier("cam-b-s")))
        yield change(store.upsert_device("cam-x", "Other", 1, 1, "node-b", verifier("cam-x-s")))
        yield change(store.upsert_user("alice", verifier("alice-pw"), []))
        yield change(store.upsert_user("bob", verifier("bob-pw"), []))
        yield change(store.set_grant("user:alice", "cam-b", ALL))
        yield change(store.set_grant("user:alice", "cam-x", ALL))
        yield change(store.set_grant("user:bob", "cam-x", int(Action.VIEW)))
        self.node_a = yield self.p.start_node("node-a")
        self.node_b = yield self.p.start_node("node-b")
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s")

    @defer.inlineCallbacks
    def test_live_video_on_the_home_node_and_through_another_node(self):
        cu_b = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        url_b = (yield cu_b.request(MsgType.MEDIA_OPEN, open_live("cam-b"), timeout=30)).body.url
        self.assertTrue(url_b.startswith("rtsp://127.0.0.1:"))
        self.assertIn("/live/cam-b/main?token=", url_b)
        sizes = yield threads.deferToThread(decode, url_b, 10)
        self.assertEqual(len(sizes), 10)
        self.assertEqual(sizes[0], (640, 360))
        # the camera's configuration tells what its stream really is
        from vss.protocols.messages import ConfigGet

        config = (yield cu_b.request(MsgType.CONFIG_GET, ConfigGet(
            device_id="cam-b", channel=0, keys=["video.resolution", "video.fps"]))).body
        items = {kv.key: kv.value for kv in config.items}
        width, height, fps = yield threads.deferToThread(stream_facts, url_b)
        self.assertEqual(items["video.resolution"], f"{width}x{height}")
        self.assertLessEqual(abs(float(items["video.fps"]) - fps), 0.5)

        # A CU on node-a: node-a pulls the stream from node-b once and serves it.
        cu_a = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        url_a = (yield cu_a.request(MsgType.MEDIA_OPEN, open_live("cam-b"), timeout=30)).body.url
        self.assertIn(f":{self.p.port('node-a', 'rtsp')}/live/cam-b/main", url_a)
        self.assertNotEqual(url_a.split("/live/")[0], url_b.split("/live/")[0])
        # node-a pulled it from the GOP node-b kept: its first viewer asking start=gop
        # decodes a picture at once, not at the camera's next keyframe (one every 2 s)
        wait = yield threads.deferToThread(first_frame_after, start_from_gop(url_a))
        self.assertLess(wait, 1.0)
        sizes = yield threads.deferToThread(decode, url_a, 10, "udp")
        self.assertEqual(len(sizes), 10)
        self.assertEqual(self.node_a.cdn.counters["node_pulls"], 1)
        self.assertEqual(self.node_b.cdn.counters["pu_publish"], 1)

    @defer.inlineCallbacks
    def test_tokens_are_bound_to_their_device_and_required(self):
        cu = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        url = (yield cu.request(MsgType.MEDIA_OPEN, open_live("cam-b"), timeout=30)).body.url
        base, token = url.split("?token=")
        for bad in (base, base.replace("cam-b", "cam-x") + "?token=" + token,
                    base + "?token=" + token[:-4] + "AAAA"):
            with self.assertRaises(Exception) as e:
                yield threads.deferToThread(decode, bad, 1)
            self.assertIn("401", str(e.exception))

    @defer.inlineCallbacks
    def test_grants_and_offline_devices_are_refused(self):
        bob = yield self.p.login("node-b", Role.CU, "bob", "bob-pw")
        with self.assertRaises(VssError) as e:
            yield bob.request(MsgType.MEDIA_OPEN, open_live("cam-b"))
        self.assertEqual(e.exception.code, ResultCode.FORBIDDEN)
        with self.assertRaises(VssError) as e:
            yield bob.request(MsgType.MEDIA_OPEN, open_live("cam-x"))
        self.assertEqual(e.exception.code, ResultCode.DEVICE_OFFLINE)

    @defer.inlineCallbacks
    def test_a_manual_recording_writes_playable_segments(self):
        from twisted.internet import task

        from vss.protocols.messages import RecordRequest

        cu = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        req = RecordRequest(device_id="cam-b", channel=0, stream=0)
        state = (yield cu.request(MsgType.RECORD_START, req, timeout=30)).body
        self.assertEqual(state.device_id, "cam-b")
        yield task.deferLater(reactor, 4.0, lambda: None)
        yield cu.request(MsgType.RECORD_STOP, req, timeout=30)
        listing = yield self.node_b.recorder.catalogue.list("cam-b", "main", 0, 2**62)
        segments = listing["segments"]
        self.assertGreaterEqual(len(segments), 1)
        path = os.path.join(self.node_b.settings.data_dir, segments[0].path)
        self.assertTrue(os.path.getsize(path) > 0)

        def frames(p):
            with av.open(p) as c:
                return sum(1 for _ in c.decode(video=0))

        count = yield threads.deferToThread(frames, path)
        self.assertGreater(count, 25)

    @defer.inlineCallbacks
    def test_mdp_sees_each_nodes_streaming_load(self):
        cu = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        url = (yield cu.request(MsgType.MEDIA_OPEN, open_live("cam-b"), timeout=30)).body.url
        self.assertTrue(url)
        mdp = self.p.cms.cms.mdp

        def streams():
            servers = mdp.servers.get("node-b", {})
            return max((load.get("streams", 0) for load in servers.values()), default=0)

        yield wait_until(reactor, lambda: streams() >= 1, timeout=15,
                         what="node-b's heartbeat to report its stream")
        self.assertEqual(mdp.pick("node-b"), f"rtsp://127.0.0.1:{self.p.port('node-b', 'rtsp')}")
        self.assertIsNone(mdp.pick("node-z"))


class RealCameraTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        # An "IP camera": an RTSP server asking for Digest credentials, fed with H.264.
        cam, self.camera = yield start_ip_camera(self, reactor, width=320, height=240)
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("ipc-1", "Lobby", 1, 1, "node-a",
                                         verifier("unused-secret"), source_url=cam))
        yield change(store.upsert_user("alice", verifier("alice-pw"), []))
        yield change(store.set_grant("user:alice", "ipc-1", ALL))
        self.node = yield self.p.start_node("node-a")

    @defer.inlineCallbacks
    def test_a_real_camera_is_pulled_with_digest_and_stopped_when_nobody_watches(self):
        self.node.cdn.linger = 0.5
        cu = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        url = (yield cu.request(MsgType.MEDIA_OPEN, open_live("ipc-1"), timeout=30)).body.url
        sizes = yield threads.deferToThread(decode, url, 5)
        self.assertEqual(sizes, [(320, 240)] * 5)
        self.assertEqual(self.node.cdn.counters["pulls"], 1)
        self.assertNotIn("cam-pass", url)
        # The player has gone: the pull is torn down shortly after.
        yield wait_until(reactor, lambda: "/live/ipc-1/main" not in self.node.rtsp.sources,
                         timeout=15, what="the idle camera pull to stop")
