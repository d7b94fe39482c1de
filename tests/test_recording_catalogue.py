"""
Recording settings from CMS to the home node, the recording catalogue across nodes
(RECORD_QUERY), HTTP export of a range as one MP4, and the periodic retention pass.

The end-to-end tests run CMS and two nodes in process (``Platform``) with a real
``vss-pu`` agent publishing H.264 to node-b; PyAV reads what is exported.
"""

import json
import os
import socket
import time
import urllib.request

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from vss.cms.store import hash_token
from vss.cms.store.tokens import iso_time
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.listing import gaps_of, merge, node_answer
from vss.protocols.messages import (
    Action,
    MsgType,
    Recordings,
    RecordingState,
    RecordMode,
    RecordQuery,
    RecordSegment,
    RecordSettings,
    Role,
    Stream,
    TimeRange,
)
from vss.recording.catalogue import Segment
from vss.recording.export import ExportTokens, check_target
from vss.recording.settings import RecordSettingsSync
from vss.recording.tasks import ChannelSettings
from vss.rgm.localcentral import MemoryCentral
from vss.testing.platform import start_platform, verifier, wait_until
from vss.testing.processes import child_env, run_tool

try:
    import av
except ImportError:  # pragma: no cover - av is a dependency
    av = None

ADMIN_TOKEN = "admin-token-for-the-recording-tests"
ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)
T0 = 1_700_000_000_000


def seg(start, end, node="n"):
    return RecordSegment(start=T0 + start, end=T0 + end, bytes=10, node_id=node)


class ListingTests(unittest.SynchronousTestCase):
    def test_merge_orders_segments_of_several_nodes_and_recomputes_the_gaps(self):
        a = Recordings(segments=[seg(0, 10_000, "a"), seg(40_000, 50_000, "a")], gaps=[],
                       missing=[], exports=[], truncated=False)
        b = Recordings(segments=[seg(10_000, 20_000, "b")], gaps=[], missing=[], exports=[],
                       truncated=False)
        out = merge(T0, T0 + 60_000, [a, b], missing=["c"])
        self.assertEqual([s.node_id for s in out.segments], ["a", "b", "a"])
        self.assertEqual(out.gaps, [TimeRange(start=T0 + 20_000, end=T0 + 40_000),
                                    TimeRange(start=T0 + 50_000, end=T0 + 60_000)])
        self.assertEqual(out.missing, ["c"])
        self.assertFalse(out.truncated)

    def test_small_holes_are_not_gaps_and_an_empty_range_is_one_gap(self):
        self.assertEqual(gaps_of([seg(0, 1000), seg(1200, 2000)], T0, T0 + 2000), [])
        self.assertEqual(gaps_of([], T0, T0 + 5000), [TimeRange(start=T0, end=T0 + 5000)])

    def test_a_node_answer_tags_its_segments_and_only_offers_an_export_when_it_has_some(self):
        s = Segment("cam", 0, "main", T0, T0 + 1000, 99, "recordings/cam/main/x.mp4")
        answer = node_answer({"segments": [s], "gaps": []}, "node-b", export="url")
        self.assertEqual(answer.segments, [RecordSegment(start=T0, end=T0 + 1000, bytes=99,
                                                         node_id="node-b")])
        self.assertEqual(answer.exports, ["url"])
        self.assertEqual(node_answer({"segments": [], "gaps": []}, "n", "url").exports, [])


class FastCodecTests(unittest.SynchronousTestCase):
    """The Recordings body without construct: the same bytes and objects both ways."""

    def frame(self, data):
        from vss.protocols import codec

        return codec.FrameDecoder().feed(codec.encode_frame(
            MsgType.RECORD_QUERY, data, 1, codec.FLAG_RESPONSE))[0]

    def test_same_bytes_and_objects_as_construct(self):
        import random

        from vss.protocols import codec
        from vss.protocols.listing import decode_recordings, encode_recordings
        from vss.protocols.messages import ExportUrl

        rnd = random.Random(7)
        for n in (0, 1, 5, 3000):
            body = Recordings(
                segments=[seg(i * 1000, i * 1000 + rnd.randrange(1, 999), f"n{rnd.randrange(3)}")
                          for i in range(n)],
                gaps=[TimeRange(start=rnd.randrange(2**40), end=rnd.randrange(2**40))
                      for _ in range(rnd.randrange(4))],
                missing=["node-é", "b"][: rnd.randrange(3)],
                exports=[ExportUrl(node_id="n1", url="http://h/e?token=a.b", expires=5)],
                truncated=bool(n % 2))
            data = encode_recordings(body)
            self.assertEqual(data, codec.encode_body(body))
            self.assertEqual(decode_recordings(self.frame(data)), body)

    def test_extensions_and_bad_bodies_go_through_construct(self):
        from vss.protocols import codec
        from vss.protocols.listing import decode_recordings, encode_recordings

        body = Recordings(segments=[seg(0, 1)], gaps=[], missing=[], exports=[],
                          truncated=False, ext=((9, b"x"),))
        data = encode_recordings(body)
        self.assertEqual(data, codec.encode_body(body))
        self.assertEqual(decode_recordings(self.frame(data)), body)
        with self.assertRaises(VssError) as e:
            decode_recordings(self.frame(data[:-3]))
        self.assertEqual(e.exception.code, ResultCode.TRUNCATED_BODY)
        with self.assertRaises(VssError):
            decode_recordings(self.frame(encode_recordings(Recordings(
                segments=[], gaps=[], missing=[], exports=[], truncated=False)) + b"\x00"))


    def random_answer(self, rnd, n, names):
        from vss.protocols.messages import ExportUrl

        t, segments = rnd.randrange(2**40), []
        for _ in range(n):
            t += rnd.choice((0, 0, 1, 300, 2000))
            segments.append(RecordSegment(start=t, end=t + rnd.randrange(0, 3000),
                                          bytes=rnd.randrange(2**63), node_id=rnd.choice(names)))
            t += rnd.randrange(0, 3000)
        return Recordings(
            segments=sorted(segments, key=lambda s: s.start),
            gaps=[TimeRange(start=rnd.randrange(2**40), end=rnd.randrange(2**40))
                  for _ in range(rnd.randrange(3))],
            missing=["node-\u00e9", "b"][:rnd.randrange(3)],
            exports=[ExportUrl(node_id=rnd.choice(names), url="http://h/e?token=a", expires=5)
                     ][:rnd.randrange(2)], truncated=rnd.random() < 0.2)

    def test_parsed_tuples_are_the_construct_objects(self):
        """Names of mixed lengths (a node's segments and a DVR's, say) are each read at
        their own offset: one odd record in a run, runs of every length."""
        import random

        from vss.protocols import codec
        from vss.protocols.listing import decode_recordings, encode_parts, parse_answer, parts_of

        rnd = random.Random(11)
        for n in (0, 1, 2, 70, 300, 5000):
            for names in (["node-1"], ["node-1", "node-22"], ["a", "dvr:cam-\u00e9", "node-1"]):
                body = self.random_answer(rnd, n, names)
                data = codec.encode_body(body)
                parts = parse_answer(self.frame(data))
                self.assertEqual(parts, parts_of(body))
                self.assertEqual(encode_parts(parts), data)
                self.assertEqual(decode_recordings(self.frame(data)), body)
        one_odd = Recordings(segments=[seg(i, i + 1, "n1") for i in range(200)], gaps=[],
                             missing=[], exports=[], truncated=False)
        one_odd.segments[150] = seg(150, 151, "node-x")
        data = codec.encode_body(one_odd)
        self.assertEqual(decode_recordings(self.frame(data)), one_odd)

    def test_merged_tuples_equal_merge_of_the_objects(self):
        import random

        from vss.protocols.listing import MAX_SEGMENTS, encode_parts, merge_parts, parts_of

        rnd = random.Random(5)
        for case in range(30):
            answers = [self.random_answer(rnd, rnd.choice((0, 3, 40, 400)), [f"node-{i}"])
                       for i in range(rnd.randrange(1, 4))]
            if case == 0:  # equal start and end on two nodes: the node id decides
                answers = [Recordings(segments=[seg(0, 5, name)], gaps=[], missing=[],
                                      exports=[], truncated=False) for name in ("z", "b", "k")]
            lo = min((s.start for a in answers for s in a.segments), default=T0) - 1000
            hi = max((s.end for a in answers for s in a.segments), default=T0) + 1000
            missing = ["n9", "n3", "n9"][:rnd.randrange(4)]
            expected = merge(lo, hi, answers, missing)
            got = merge_parts(lo, hi, [parts_of(a) for a in answers], missing)
            self.assertEqual(encode_parts(got), codec_bytes(expected))
        many = Recordings(segments=[seg(i * 10, i * 10 + 5, "n") for i in range(MAX_SEGMENTS + 5)],
                          gaps=[], missing=[], exports=[], truncated=False)
        got = merge_parts(T0, T0 + 10**9, [parts_of(many)])
        self.assertTrue(got.truncated)
        self.assertEqual(encode_parts(got), codec_bytes(merge(T0, T0 + 10**9, [many])))

    def test_segments_being_written_cross_every_path_of_the_listing(self):
        """The OPEN_TAG extension: packed by a node, parsed and merged by CMS, decoded
        by the CU, the same as construct gives; an entry naming no listed segment is
        dropped."""
        from vss.protocols import codec
        from vss.protocols.listing import (
            OPEN_TAG,
            decode_recordings,
            encode_node_answer,
            encode_open,
            encode_parts,
            merge_parts,
            open_segments,
            parse_answer,
        )

        rows = [(T0, T0 + 1000, 10), (T0 + 1000, T0 + 1500, 5)]
        a = encode_node_answer(rows, [], "node-a", None, [T0 + 1000, T0 + 99])
        b = encode_node_answer([(T0 + 200, T0 + 900, 7)], [], "node-b", None, [])
        body = decode_recordings(self.frame(a))
        self.assertEqual(open_segments(body), {(T0 + 1000, "node-a")})
        self.assertEqual(a, codec.encode_body(body))
        self.assertEqual(body.ext, ((OPEN_TAG, encode_open([(T0 + 1000, "node-a")])),))
        merged = merge_parts(T0, T0 + 2000, [parse_answer(self.frame(a)),
                                             parse_answer(self.frame(b))])
        self.assertEqual(merged.open, ((T0 + 1000, "node-a"),))
        out = decode_recordings(self.frame(encode_parts(merged)))
        self.assertEqual(open_segments(out), {(T0 + 1000, "node-a")})
        self.assertEqual(out, merge(T0, T0 + 2000, [body, decode_recordings(self.frame(b))]))
        self.assertEqual([(g.start, g.end) for g in out.gaps], [(T0 + 1500, T0 + 2000)])

    def test_a_node_answer_packed_from_rows_equals_the_constructed_one(self):
        from vss.protocols.listing import MAX_SEGMENTS, encode_node_answer
        from vss.protocols.messages import ExportUrl

        export = ExportUrl(node_id="node-b", url="http://h/export?token=t", expires=9)
        rows = [(T0 + i * 1000, T0 + i * 1000 + 990, 100 + i) for i in range(500)]
        gaps = [(T0 - 5000, T0)]
        for rs, ex in ((rows, export), (rows, None), ([], export),
                       (rows * (MAX_SEGMENTS // 500 + 1), export)):
            listing = {"segments": [Segment("cam", 0, "main", s, e, b, f"p{s}") for s, e, b in rs],
                       "gaps": gaps}
            self.assertEqual(encode_node_answer(rs, gaps, "node-b", ex),
                             codec_bytes(node_answer(listing, "node-b", ex)))


class SpansTests(unittest.SynchronousTestCase):
    """``CatalogueDB.spans`` (a listing on the wire) reads the covering index alone and
    gives what ``list`` gives."""

    def test_spans_are_the_listed_segments_and_gaps(self):
        import random

        from vss.recording.catalogue import CatalogueDB

        db = CatalogueDB(self.mktemp())
        self.addCleanup(db.close)
        rnd, t, segs = random.Random(3), T0, []
        for i in range(400):
            t += rnd.choice((0, 100, 700, 60_000))
            segs.append(Segment("cam", 0, "main", t, t + 5000, rnd.randrange(10**9), f"p{i}"))
            t += 5000
        segs.append(Segment("cam", 0, "sub", T0, T0 + 5000, 1, "sub"))
        db.add_many(segs)
        for _ in range(50):
            a = T0 + rnd.randrange(-10_000, t - T0)
            b = a + rnd.randrange(1, 4 * 3_600_000)
            listing = db.list("cam", "main", a, b)
            rows, gaps = db.spans("cam", "main", a, b)
            self.assertEqual(rows, [(s.start_ms, s.end_ms, s.bytes) for s in listing["segments"]])
            self.assertEqual(gaps, listing["gaps"])
        plan = " ".join(r[-1] for r in db.db.execute(
            "EXPLAIN QUERY PLAN SELECT start_ms, end_ms, bytes FROM segments "
            f"WHERE {catalogue_range()}", ("cam", "main", T0, T0 + 1)))
        self.assertIn("COVERING INDEX segments_by_stream", plan)

    def test_an_older_catalogue_gets_the_covering_index(self):
        import sqlite3

        from vss.recording.catalogue import DB_NAME, CatalogueDB

        path = self.mktemp()
        os.makedirs(path)
        old = sqlite3.connect(os.path.join(path, DB_NAME))
        old.executescript("CREATE TABLE segments (id INTEGER PRIMARY KEY, device TEXT, "
                          "channel INTEGER, stream TEXT, start_ms INTEGER, end_ms INTEGER, "
                          "bytes INTEGER, path TEXT UNIQUE); CREATE INDEX segments_by_stream "
                          "ON segments (device, stream, start_ms);")
        old.close()
        db = CatalogueDB(path)
        self.addCleanup(db.close)
        self.assertEqual([r[2] for r in db.db.execute("PRAGMA index_info(segments_by_stream)")],
                         ["device", "stream", "start_ms", "end_ms", "bytes"])


def catalogue_range():
    from vss.recording.catalogue import _RANGE

    return _RANGE


def codec_bytes(body):
    from vss.protocols import codec

    return codec.encode_body(body)


class ExportTokenTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.tokens = ExportTokens(b"s" * 32, self.clock, ttl=60)

    def test_a_token_carries_device_stream_and_range_until_it_expires(self):
        token, expires = self.tokens.issue("cam", 0, "main", T0, T0 + 5000)
        self.assertEqual(expires, 1060_000)
        grant = self.tokens.verify(token)
        self.assertEqual((grant["device"], grant["stream"], grant["from_ms"], grant["to_ms"]),
                         ("cam", "main", T0, T0 + 5000))
        self.clock.advance(61)
        with self.assertRaises(ValueError):
            self.tokens.verify(token)

    def test_forged_foreign_and_tampered_tokens_are_refused(self):
        token, _ = self.tokens.issue("cam", 0, "main", T0, T0 + 5000)
        other = ExportTokens(b"t" * 32, self.clock)
        for bad in ("", "abc", token[:-3] + "AAA", other.issue("cam", 0, "main", 0, 1)[0],
                    token.replace(".", "")):
            with self.assertRaises(ValueError):
                self.tokens.verify(bad)

    def test_a_token_is_good_for_one_download(self):
        token, _ = self.tokens.issue("cam", 0, "main", T0, T0 + 5000)
        grant = self.tokens.verify(token)
        self.tokens.verify(token)  # checking does not spend it
        self.tokens.spend(grant)
        with self.assertRaises(ValueError) as e:
            self.tokens.verify(token)
        self.assertEqual(str(e.exception), "token already used")
        other, _ = self.tokens.issue("cam", 0, "main", T0, T0 + 5000)
        self.assertEqual(self.tokens.verify(other)["to_ms"], T0 + 5000)
        # the spent ids are forgotten once their tokens expired
        self.clock.advance(61)
        fresh = self.tokens.verify(self.tokens.issue("cam", 0, "main", 0, 1)[0])
        self.tokens.spend(fresh)
        self.assertEqual(list(self.tokens.spent), [fresh["id"]])

    def test_a_token_of_before_a_restart_is_refused(self):
        token, _ = self.tokens.issue("cam", 0, "main", T0, T0 + 5000)
        restarted = ExportTokens(b"s" * 32, self.clock, ttl=60)  # same secret, new process
        with self.assertRaises(ValueError) as e:
            restarted.verify(token)
        self.assertEqual(str(e.exception), "bad signature")

    def test_a_path_is_never_a_token_field(self):
        for device in ("../etc", "a/b", "a|b", ""):
            with self.assertRaises(ValueError):
                self.tokens.issue(device, 0, "main", 0, 1)

    def test_traversal_targets_are_refused(self):
        for target in (b"/export/../x", b"/export?token=..%2f..", b"/%2e%2e/etc/passwd",
                       b"/export?token=a%5cb", b"//etc/passwd", b"/export?token=a\\b",
                       b"/export?token=%00", b"/export?token=a%2Fb"):
            self.assertIsNotNone(check_target(target), target)
        self.assertIsNone(check_target(b"/export?token=abc.def"))




class FakeManager:
    def __init__(self):
        self.settings = {}
        self.applied = []

    def apply_settings(self, body):
        self.applied.append((body.device_id, body.channel, body.mode))
        self.settings[(body.device_id, body.channel)] = ChannelSettings.from_record(body)
        return defer.succeed(None)


class FakeStore:
    def __init__(self, *records):
        self.records = {r.device_id: r for r in records}

    def devices(self):
        return list(self.records.values())

    def get_device(self, device_id):
        return self.records.get(device_id)


class Rec:
    def __init__(self, device_id, home, version=1, channels=1):
        self.device_id, self.home_node, self.version, self.channels = \
            device_id, home, version, channels


def settings(device_id, mode, channel=0, days=7, quota=0):
    return RecordSettings(device_id=device_id, channel=channel, mode=int(mode),
                          stream=int(Stream.MAIN), segment_seconds=60, retention_days=days,
                          quota_mb=quota, pre_event_seconds=5, post_event_seconds=10,
                          schedule=[])


class RecordSettingsSyncTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.central, self.manager = MemoryCentral(), FakeManager()
        self.store = FakeStore(Rec("cam", "node-b", channels=2), Rec("far", "node-a"))
        self.sync = RecordSettingsSync("node-b", self.store, self.central, self.manager)

    def test_at_start_only_devices_homed_here_are_fetched_and_applied(self):
        self.central.set_record_settings(settings("cam", RecordMode.CONTINUOUS, 1))
        self.central.set_record_settings(settings("far", RecordMode.CONTINUOUS))
        self.sync.refresh_all()
        self.assertEqual(self.central.asked_settings, [("cam", 0), ("cam", 1)])
        self.assertEqual(self.manager.applied, [("cam", 1, RecordMode.CONTINUOUS)])

    def test_a_new_version_refetches_and_equal_settings_are_not_applied_again(self):
        self.central.set_record_settings(settings("cam", RecordMode.CONTINUOUS))
        old, new = Rec("cam", "node-b", 1, 2), Rec("cam", "node-b", 2, 2)
        self.sync.device_changed("cam", old, new)
        self.sync.device_changed("cam", new, Rec("cam", "node-b", 3, 2))
        self.assertEqual(self.manager.applied, [("cam", 0, RecordMode.CONTINUOUS)])
        self.central.set_record_settings(settings("cam", RecordMode.OFF))
        self.sync.device_changed("cam", new, Rec("cam", "node-b", 4, 2))
        self.assertEqual(self.manager.applied[-1], ("cam", 0, RecordMode.OFF))

    def test_a_device_that_moves_away_stops_what_its_settings_started(self):
        self.central.set_record_settings(settings("cam", RecordMode.CONTINUOUS))
        self.sync.refresh("cam")
        self.sync.device_changed("cam", Rec("cam", "node-b"), Rec("cam", "node-a", 2))
        self.assertEqual(self.manager.applied[-1], ("cam", 0, RecordMode.OFF))
        self.assertEqual(self.sync.held, {})

    def test_retention_is_per_channel_with_the_node_default_and_the_quota_the_sum(self):
        from vss.recording.catalogue import Retention

        self.assertEqual(self.sync.retention(), (Retention(7, {}), None))
        self.sync.held = {("a", 0): settings("a", 1, days=3, quota=10),
                          ("b", 0): settings("b", 1, days=9, quota=20)}
        self.assertEqual(self.sync.retention(),
                         (Retention(7, {("a", 0): 3, ("b", 0): 9}), 30 * 1024 * 1024))
        self.sync.held[("c", 0)] = settings("c", 1, days=0, quota=0)
        self.assertEqual(self.sync.retention(),
                         (Retention(7, {("a", 0): 3, ("b", 0): 9, ("c", 0): 0}), None))
        self.sync.quota_bytes, self.sync.default_days = 5000, None
        self.assertEqual(self.sync.retention()[1], 5000)
        del self.sync.held[("c", 0)]
        self.assertEqual(self.sync.retention(),
                         (Retention(None, {("a", 0): 3, ("b", 0): 9}), 5000))


class RetentionTests(unittest.SynchronousTestCase):
    def test_every_interval_enforce_runs_with_the_held_settings_and_the_paths_in_use(self):
        from vss.recording.archive import RetentionService

        calls = []

        class Recorder:
            def enforce(self, days, quota, in_use):
                calls.append((days, quota, set(in_use)))
                return defer.succeed(["x"])

        class Held:
            def retention(self):
                return 7, None

        clock = task.Clock()
        svc = RetentionService(Recorder(), Held(), clock, interval=60,
                               in_use=[lambda: {"a.mp4"}, lambda: ["b.mp4"]])
        svc.startService()
        self.assertEqual(calls, [])
        clock.advance(60)
        clock.advance(60)
        self.assertEqual(calls, [(7, None, {"a.mp4", "b.mp4"})] * 2)
        self.assertEqual((svc.passes, svc.deleted), (2, 2))
        svc.stopService()
        clock.advance(600)
        self.assertEqual(len(calls), 2)


    def test_a_failing_in_use_hook_deletes_nothing(self):
        from vss.recording.archive import RetentionService

        calls = []

        class Recorder:
            def enforce(self, *a):
                calls.append(a)
                return defer.succeed([])

        class Held:
            def retention(self):
                return 1, None

        def broken():
            raise RuntimeError("boom")

        svc = RetentionService(Recorder(), Held(), task.Clock(), in_use=[broken])
        self.assertEqual(self.successResultOf(svc.run_once()), [])
        self.assertEqual(calls, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_segments_of_a_stream_being_played_back_are_in_use(self):
        from vss.recording.archive import playback_in_use

        asked = []

        class Catalogue:
            def list(self, device, stream, frm, to):
                asked.append((device, stream, frm))
                segs = [Segment(device, 0, stream, t, t + 1000, 1, f"{device}/{stream}/{t}")
                        for t in (0, 5_000_000, 9_000_000) if t + 1000 > frm]
                return defer.succeed({"segments": segs, "gaps": []})

        class Pb:
            device, stream, origin_ms = "cam", "main", 9_000_000

            def where(self):
                return 9_000_500

        class Cdn:
            class playback:  # noqa: N801 - stands for the CDN module's PlaybackService
                playbacks = {"/live/cam/pb": Pb()}

        paths = self.successResultOf(playback_in_use(Cdn(), Catalogue(), margin_ms=5_000_000))
        self.assertEqual(asked, [("cam", "main", 4_000_000)])
        self.assertEqual(paths, {"cam/main/5000000", "cam/main/9000000"})
        self.assertEqual(self.successResultOf(playback_in_use(object(), Catalogue())), set())


def raw_http(port, target):
    """Blocking: the status code of ``GET target`` sent as is (no client normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + target + b" HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def download(url, path):
    with urllib.request.urlopen(url, timeout=60) as r, open(path, "wb") as f:  # noqa: S310
        while True:
            chunk = r.read(65536)
            if not chunk:
                break
            f.write(chunk)
    return os.path.getsize(path)


def probe(path):
    with av.open(path) as c:
        v = c.streams.video[0]
        frames = [f for f in c.decode(v)]
        return (float(frames[-1].time - frames[0].time), len(frames), frames[0].key_frame)


class CatalogueAcrossNodesTests(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        self.work = self.p.workdir
        self.store, self.cms = self.p.cms.store, self.p.cms.cms
        yield self.store.add_admin_token("root", hash_token(ADMIN_TOKEN))
        for changes in [
            (yield self.store.upsert_device("cam-b", "Gate B", 1, 1, "node-b",
                                            verifier("cam-b-s"))),
            (yield self.store.upsert_device("cam-x", "Other", 1, 1, "node-b",
                                            verifier("cam-x-s"))),
            (yield self.store.upsert_user("alice", verifier("alice-pw"), [])),
            (yield self.store.upsert_user("bob", verifier("bob-pw"), [])),
            (yield self.store.set_grant("user:alice", "cam-b", ALL)),
            (yield self.store.set_grant("user:bob", "cam-x", ALL)),
            # stored before the nodes start: node-b applies it when it starts
            (yield self.store.set_record_settings("cam-x", 0, {
                "mode": "schedule", "stream": "main", "segment_seconds": 60,
                "retention_days": 3, "quota_mb": 0, "pre_event_seconds": 5,
                "post_event_seconds": 10,
                "schedule": [{"day": "mon", "start": "00:00", "end": "00:01"}]})),
        ]:
            self.cms.publish(changes)
        self.node_a = yield self.p.start_node("node-a")
        self.node_b = yield self.p.start_node("node-b")
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s")

    @defer.inlineCallbacks
    def set_mode(self, mode, segment=2):
        """An operator's change through the admin API (MMS: store, then S501)."""
        port = self.p.cms.listeners()["admin"]
        data = json.dumps({"mode": mode, "stream": "main", "segment_seconds": segment,
                           "retention_days": 7}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/devices/cam-b/record-settings/0", data=data,
            method="PUT", headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                   "Content-Type": "application/json"})

        def put():
            with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
                return r.status, json.load(r)

        status, view = yield threads.deferToThread(put)
        self.assertEqual((status, view["mode"]), (200, mode))

    def query(self, cu, device, frm, to):
        return cu.request(MsgType.RECORD_QUERY, RecordQuery(
            device_id=device, channel=0, stream=Stream.MAIN, from_time=frm, to_time=to),
            timeout=30)

    @defer.inlineCallbacks
    def test_settings_recording_listing_export_and_a_missing_node(self):
        b = self.node_b
        # At start node-b applied the settings of its own device cam-x.
        yield wait_until(reactor, lambda: ("cam-x", 0) in b.recordings.settings,
                         what="stored settings applied at start")
        self.assertEqual(b.recordings.settings[("cam-x", 0)].mode, RecordMode.SCHEDULE)
        self.assertNotIn(("cam-x", 0), self.node_a.recordings.settings)

        # An admin change to continuous: the home node records, no restart.
        start_ms = int(time.time() * 1000)
        yield self.set_mode("continuous")
        key = ("cam-b", 0, Stream.MAIN)
        yield wait_until(reactor, lambda: key in b.recordings.stacks and
                         b.recordings.stacks[key].state == RecordingState.RUNNING,
                         what="continuous recording to start")
        self.assertEqual(sorted(b.recordings.stacks[key].reasons), ["continuous"])
        self.assertEqual(self.node_a.recordings.stacks, {})
        yield wait_until(reactor, lambda: b.recorder.counters["segments"] >= 3, timeout=60,
                         what="three closed segments")
        # while it records, the segment being written is listed, on another node too, up
        # to the time of the answer and marked as being recorded: not a gap
        from vss.protocols.listing import open_segments

        cu = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        now = int(time.time() * 1000)
        live = (yield self.query(cu, "cam-b", now - 60_000, now + 5000)).body
        opens = open_segments(live)
        self.assertEqual(len(opens), 1, live)
        start, node = next(iter(opens))
        self.assertEqual(node, "node-b")
        [current] = [s for s in live.segments if s.start == start]
        self.assertEqual((current.node_id, current is live.segments[-1]), ("node-b", True))
        recorded = (live.segments[0].start, current.end)
        self.assertEqual([g for g in live.gaps if g.end > recorded[0] and g.start < recorded[1]],
                         [])
        # mode off stops it
        yield self.set_mode("off")
        yield wait_until(reactor, lambda: key not in b.recordings.stacks and
                         not b.recorder.recordings, timeout=30, what="the recording to stop")
        end_ms = int(time.time() * 1000)
        held = yield b.recorder.catalogue.list("cam-b", "main", 0, 2**62)
        self.assertGreaterEqual(len(held["segments"]), 3)

        # A CU on node-a lists node-b's segments, with the gaps around them.
        cu = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        frm = start_ms - 60_000
        t = time.monotonic()
        listing = (yield self.query(cu, "cam-b", frm, end_ms + 60_000)).body
        self.assertLess(time.monotonic() - t, 5.0)
        self.assertEqual(listing.missing, [])
        self.assertEqual(len(listing.segments), len(held["segments"]))
        self.assertEqual({s.node_id for s in listing.segments}, {"node-b"})
        self.assertEqual([s.start for s in listing.segments],
                         [s.start_ms for s in held["segments"]])
        self.assertEqual(listing.gaps[0].start, frm)
        self.assertEqual(listing.gaps[0].end, listing.segments[0].start)
        self.assertEqual(listing.gaps[-1].end, end_ms + 60_000)
        self.assertEqual([e.node_id for e in listing.exports], ["node-b"])

        # Export the middle of the recording as one MP4 from node-b.
        first, last = listing.segments[0], listing.segments[-1]
        ex_from, ex_to = first.start + 1000, last.end - 500
        exp = (yield self.query(cu, "cam-b", ex_from, ex_to)).body.exports[0]
        url = exp.url
        self.assertIn(f":{self.p.port('node-b', 'http')}/export?token=", url)
        out = os.path.join(self.work, "export.mp4")
        size = yield threads.deferToThread(download, url, out)
        self.assertGreater(size, 10_000)
        duration, frames, key_first = yield threads.deferToThread(probe, out)
        self.assertTrue(key_first)
        wanted = (ex_to - ex_from) / 1000
        self.assertLess(abs(duration - wanted), 1.5, (duration, wanted))
        self.assertGreater(frames, 25)
        # the download is in the central audit log: alice (who asked on node-a), the
        # range, node-b (which served it)
        for _ in range(300):
            exports, _ = yield self.p.cms.store.list_audit(kinds=["export"])
            if exports:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([(e.actor, e.target, e.node_id, e.source) for e in exports],
                         [("user:alice", "device:cam-b", "node-b", "127.0.0.1")])
        self.assertEqual((exports[0].detail["from"], exports[0].detail["to"]),
                         (iso_time(ex_from), iso_time(ex_to)))
        self.assertEqual(b.exporter.in_use(), set())
        stale = os.path.join(b.settings.data_dir, "exports", "tmpold.mp4")
        with open(stale, "wb") as f:
            f.write(b"x")
        os.utime(stale, (time.time() - 7200, time.time() - 7200))
        self.assertEqual(b.exporter.sweep(), 1)
        self.assertEqual(os.listdir(os.path.join(b.settings.data_dir, "exports")), [])

        # The same through vssctl: a table with the gaps, then an export to a file.
        env = child_env(VSS_PASSWORD="alice-pw")
        node = f"tcp:127.0.0.1:{self.p.port('node-a', 'cu')}"
        text, err, code = yield run_tool("vssctl", [
            "--node", node, "--user", "alice", "recordings", "cam-b", "--from", str(frm),
            "--to", str(end_ms + 60_000)], env=env)
        self.assertEqual(code, 0, err)
        self.assertIn("-- gap ", text)
        self.assertEqual(text.count("node-b"), len(listing.segments))
        self.assertIn(f"{len(listing.segments)} segment(s)", text)
        clip = os.path.join(self.work, "clip.mp4")
        text, err, code = yield run_tool("vssctl", [
            "--node", node, "--user", "alice", "export", "cam-b", "--from", str(ex_from),
            "--to", str(ex_to), "-o", clip], env=env)
        self.assertEqual(code, 0, err)
        self.assertIn("from node-b", text)
        duration2, _, _ = yield threads.deferToThread(probe, clip)
        self.assertLess(abs(duration2 - wanted), 1.5)

        # Traversal and forged requests are refused; nothing names a file.
        port = self.p.port("node-b", "http")
        token = url.split("token=", 1)[1].encode()
        for target, code in [
            (b"/export/../catalogue.sqlite3", 400), (b"/%2e%2e/node.secret", 400),
            (b"/export?token=" + token + b"&path=/etc/passwd", 400),
            (b"/export?token=" + token + b"&token=" + token, 400),
            (b"/export?token=..%2f..%2fnode.secret", 400), (b"//etc/passwd", 400),
            (b"/export?token=" + token[:-4] + b"AAAA", 403), (b"/export?token=", 403),
            (b"/recordings/cam-b/main", 404),
        ]:
            got = yield threads.deferToThread(raw_http, port, target)
            self.assertEqual(got, code, target)
        # a token of node-b is worthless on node-a
        got = yield threads.deferToThread(raw_http, self.p.port("node-a", "http"),
                                          b"/export?token=" + token)
        self.assertEqual(got, 403)

        # Grants: bob may not list cam-b.
        bob = yield self.p.login("node-a", Role.CU, "bob", "bob-pw")
        with self.assertRaises(VssError) as e:
            yield self.query(bob, "cam-b", frm, end_ms)
        self.assertEqual(e.exception.code, ResultCode.FORBIDDEN)

        # node-b is up but its catalogue does not answer: missing after the 2 s fan-out
        # timeout, the listing does not hang.
        real = b.central.local_recordings
        b.central.local_recordings = lambda body: defer.Deferred()
        t = time.monotonic()
        listing = (yield self.query(cu, "cam-b", frm, end_ms)).body
        self.assertLess(time.monotonic() - t, 4.0)
        self.assertEqual(listing.missing, ["node-b"])
        self.assertEqual(listing.segments, [])
        b.central.local_recordings = real

        # node-b stops: the listing still answers, quickly, naming it missing.
        yield self.p.stop_node("node-b")
        yield wait_until(reactor, lambda: "node-b" not in self.cms.sessions,
                         what="CMS to see node-b down")
        t = time.monotonic()
        listing = (yield self.query(cu, "cam-b", frm, end_ms)).body
        self.assertLess(time.monotonic() - t, 3.0)
        self.assertEqual(listing.missing, ["node-b"])
        self.assertEqual(listing.segments, [])
        self.assertEqual(listing.gaps, [TimeRange(start=frm, end=end_ms)])
