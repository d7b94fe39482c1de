"""
A DVR's own footage: a real ``vss-pu --kind dvr`` logged in to a node of an in-process
Platform; its recordings are listed through the node (RECORD_QUERY to the PU, merged with
the platform's and marked ``dvr:<device>``), and played back (the PU publishes from the
asked time onto a path of the node's SS; PyAV decodes frames).
"""

import time
from io import StringIO

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    MediaOpen,
    MediaStart,
    MsgType,
    PuKind,
    Purpose,
    RecordQuery,
    Role,
    Stream,
)
from vss.pu import dvr
from vss.pu.device import SimulatedPU
from vss.testing.platform import start_platform, verifier, wait_until

try:
    import av
except ImportError:  # pragma: no cover - av is a dependency
    av = None

HOUR = 3600_000
NOW = 1_700_000_000_000 // dvr.SEGMENT_MS * dvr.SEGMENT_MS + 123_456


class _Msg:
    def __init__(self, body):
        self.body = body


class _Frame:
    def __init__(self, type):
        self.type = type


def query(device, from_ms, to_ms, channel=0):
    return RecordQuery(device_id=device, channel=channel, stream=Stream.MAIN,
                       from_time=from_ms, to_time=to_ms)


class FootageTests(unittest.SynchronousTestCase):
    def test_footage_has_regular_gaps_and_ends_now_and_days_ago(self):
        segs = dvr.segments(NOW - 2 * HOUR, NOW, NOW, days=7)
        starts = [s[0] for s in segs]
        self.assertEqual(starts, sorted(starts))
        self.assertEqual(segs[-1][1], NOW)  # the one being recorded
        holes = [(a[1], b[0]) for a, b in zip(segs, segs[1:], strict=False) if a[1] != b[0]]
        self.assertTrue(holes)
        self.assertTrue(all(b - a == dvr.SEGMENT_MS for a, b in holes), holes)
        self.assertEqual(dvr.segments(NOW - 9 * 86400_000, NOW - 8 * 86400_000, NOW), [])
        self.assertEqual(dvr.segments(NOW - 2 * HOUR, NOW, NOW), segs)  # deterministic
        gap_start = holes[0][0]
        self.assertEqual(dvr.footage_from(gap_start + 5, NOW), holes[0][1])
        self.assertEqual(dvr.footage_from(segs[0][0] + 7, NOW), segs[0][0] + 7)
        self.assertIsNone(dvr.footage_from(NOW + 1, NOW))

    def test_a_simulated_dvr_answers_record_query_and_others_do_not(self):
        clock = task.Clock()
        clock.advance(NOW / 1000)
        pu = SimulatedPU("dvr1", PuKind.DVR, 2, clock=clock)
        pu.dvr_days = 1
        out = pu(_Frame(MsgType.RECORD_QUERY), _Msg(query("dvr1", NOW - 3 * HOUR, NOW)))
        self.assertEqual({s.node_id for s in out.segments}, {"dvr1"})
        self.assertTrue(out.gaps)
        self.assertEqual(out.segments[-1].end, NOW)
        ch1 = pu(_Frame(MsgType.RECORD_QUERY), _Msg(query("dvr1", NOW - 3 * HOUR, NOW, 1)))
        self.assertNotEqual(out.gaps, ch1.gaps)  # each channel its own pattern
        old = pu(_Frame(MsgType.RECORD_QUERY), _Msg(query("dvr1", NOW - 3 * 86400_000,
                                                           NOW - 2 * 86400_000)))
        self.assertEqual(old.segments, [])
        ipc = SimulatedPU("cam1", PuKind.IPC, 1, clock=clock)
        with self.assertRaises(VssError) as e:
            ipc(_Frame(MsgType.RECORD_QUERY), _Msg(query("cam1", NOW - HOUR, NOW)))
        self.assertEqual(e.exception.code, ResultCode.NOT_SUPPORTED)
        pu.media = object()  # never reached: no footage at that time
        start = MediaStart(device_id="dvr1", channel=0, stream=0, publish_url="rtsp://x/y",
                           start_time=NOW - 3 * 86400_000)
        with self.assertRaises(VssError) as e:
            pu(_Frame(MsgType.MEDIA_START), _Msg(start))
        self.assertEqual(e.exception.code, ResultCode.NOT_FOUND)


def open_playback(device, at_ms):
    return MediaOpen(device_id=device, channel=0, stream=Stream.MAIN, purpose=Purpose.PLAYBACK,
                     start_time=at_ms, transport=0)


def decode(url, count):
    """Blocking: (width, height) of the first ``count`` decoded frames."""
    out = []
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=20) as c:
        for frame in c.decode(video=0):
            out.append((frame.width, frame.height))
            if len(out) >= count:
                break
    return out


@defer.inlineCallbacks
def dvr_platform(testcase, home, nodes):
    """A platform of ``nodes`` (started in that order) where alice may view ``dvr1``, a
    real ``vss-pu --kind dvr`` (two days of footage) logged in to ``home``; fires with
    the platform."""
    if av is None:
        raise unittest.SkipTest("PyAV is not installed")
    p = yield start_platform(testcase)
    store, change = p.cms.store, p.change
    yield change(store.upsert_device("dvr1", "Shop DVR", int(PuKind.DVR), 1, home,
                                     verifier("dvr1-s")))
    yield change(store.upsert_user("alice", verifier("alice-pw"), []))
    yield change(store.set_grant("user:alice", "dvr1", int(Action.VIEW)))
    for node_id in nodes:
        yield p.start_node(node_id)
    yield p.start_pu(home, "dvr1", "dvr1-s",
                     ["--kind", "dvr", "--channels", "1", "--dvr-days", "2"],
                     what="the DVR to log in")
    return p


class DvrTests(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield dvr_platform(self, "node-b", ["node-b"])
        self.node = self.p.nodes["node-b"]

    @defer.inlineCallbacks
    def test_a_dvr_lists_its_footage_with_gaps_and_plays_it_back(self):
        alice = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        now = int(time.time() * 1000)
        from vss.protocols import codec
        from vss.protocols.listing import decode_recordings

        frame = yield alice.link.request_raw(
            MsgType.RECORD_QUERY, codec.encode_body(query("dvr1", now - 3 * HOUR, now)), 10)
        listing = decode_recordings(frame)
        self.assertGreaterEqual(len(listing.segments), 10)
        self.assertEqual({s.node_id for s in listing.segments}, {"dvr:dvr1"})
        self.assertTrue(listing.gaps)
        # a missing segment is a whole one; a gap at either end of the range is cut by it
        inner = [g for g in listing.gaps if now - 3 * HOUR < g.start and g.end < now]
        self.assertTrue(inner, listing.gaps)  # one segment in nine: two in these 3 hours
        self.assertTrue(all(g.end - g.start >= dvr.SEGMENT_MS for g in inner), listing.gaps)
        self.assertEqual(listing.exports, [])
        # footage older than the DVR keeps is not listed
        frame = yield alice.link.request_raw(
            MsgType.RECORD_QUERY,
            codec.encode_body(query("dvr1", now - 5 * 86400_000, now - 4 * 86400_000)), 10)
        self.assertEqual(decode_recordings(frame).segments, [])

        # vssctl recordings shows the DVR's segments and its gaps
        from vss.cu import ctl

        opts = ctl.Options()
        opts.parseOptions(["--node", f"tcp:127.0.0.1:{self.p.port('node-b', 'cu')}",
                           "--user", "alice", "recordings", "dvr1", "--from", "-3h",
                           "--to", "now"])
        out = StringIO()
        yield ctl.run_command(reactor, opts, "alice-pw", out)
        text = out.getvalue()
        self.assertIn("dvr:dvr1", text)
        self.assertIn("-- gap", text)

        # play back from the middle of a segment an hour ago
        seg = next(s for s in listing.segments if s.start >= now - 2 * HOUR)
        url = (yield alice.request(MsgType.MEDIA_OPEN,
                                   open_playback("dvr1", (seg.start + seg.end) // 2),
                                   timeout=20)).body.url
        self.assertRegex(url, r"^rtsp://127\.0\.0\.1:\d+/live/dvr1/pb-dvr-[0-9a-f]{16}\?token=")
        frames = yield threads.deferToThread(decode, url, 10)
        self.assertEqual(frames, [(640, 360)] * 10)
        # a time before the footage: NOT_FOUND from the DVR
        with self.assertRaises(VssError) as e:
            yield alice.request(MsgType.MEDIA_OPEN, open_playback("dvr1", now - 4 * 86400_000),
                                timeout=20)
        self.assertEqual(e.exception.code, ResultCode.NOT_FOUND)
        # no viewer left: the source is closed and the DVR's publisher with it
        path = url.split("127.0.0.1:")[1].split("/", 1)[1].split("?")[0]
        self.node.cdn.linger = 0.5
        source = self.node.cdn.rtsp.sources.get("/" + path)
        if source is not None:
            self.node.cdn.source_idle(source)
        yield wait_until(reactor, lambda: "/" + path not in self.node.cdn.rtsp.sources,
                         timeout=10, what="the DVR playback to stop")
        yield wait_until(reactor, lambda: not any(
            s.path == "/" + path for s in self.node.cdn.rtsp.sessions.values()),
            timeout=10, what="the DVR's publisher to go")
