"""
Recording (issue 8, parts 3, 4 local, 7): the CDN module's recording interface writes what
the SS receives for live video into fragmented MP4 segments; the node's catalogue indexes
them, lists them with their gaps, enforces retention and repairs itself after a crash.

Media tests are real: ffmpeg publishes H.264/H.265 (1 s GOP) + AAC into an
``RTSPServerFactory`` on port 0, the recorder remuxes it (in process, as a reader of the
source, and with a child), PyAV reads every segment back. The in-process writer is also
driven with a task.Clock by hand-made RTP packets of a local file (``LiveWriterTests``).
"""

import errno
import io
import json
import os

from twisted.internet import defer, reactor, task, threads
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.test_rtsp_e2e import FFMPEG, SECRET, E2ETestBase, FFmpeg, with_timeout
from vss.cdn.tokens import TokenIssuer
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.recording import catalogue as catmod
from vss.recording.catalogue import Catalogue, CatalogueDB, Segment, scan_fmp4, segment_name
from vss.recording.child import record
from vss.recording.recorder import Recorder, _Child, _Recording
from vss.recording.segments import EXIT_DISK_FULL
from vss.rtsp import sdp as sdplib
from vss.rtsp.fanout import Source
from vss.testing.platform import wait_until

try:
    import av
except ImportError:  # pragma: no cover - av is a dependency
    av = None

DAY = 86400_000
T0 = 1_790_000_000_000  # ms, a fixed wall clock


def seg(start_ms, end_ms, device="cam1", stream="main", size=1000, keyframes=()):
    return Segment(device, 0, stream, start_ms, end_ms, size,
                   f"recordings/{device}/{stream}/{segment_name(start_ms)}.mp4", keyframes)


def touch(data_dir, s):
    full = os.path.join(data_dir, s.path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(b"\0" * s.bytes)


class CatalogueTests(unittest.TestCase):
    """The catalogue without media."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        self.clock = task.Clock()
        self.db = CatalogueDB(self.dir, self.clock)
        self.addCleanup(self.db.close)

    def test_sqlite_in_wal_with_the_listing_index(self):
        self.assertTrue(os.path.exists(os.path.join(self.dir, "catalogue.sqlite3")))
        self.assertEqual(self.db.db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        plan = " ".join(r[-1] for r in self.db.db.execute(
            "EXPLAIN QUERY PLAN SELECT path FROM segments WHERE device='a' AND stream='main' "
            "AND start_ms >= 1 AND start_ms < 2"))
        self.assertIn("segments_by_stream", plan)

    def test_list_shows_segments_and_gaps(self):
        self.db.add_many([seg(T0, T0 + 2000), seg(T0 + 2000, T0 + 4000),
                          seg(T0 + 10_000, T0 + 12_000), seg(T0, T0 + 5000, device="cam2"),
                          seg(T0 + 4000, T0 + 6000, stream="sub")])
        out = self.db.list("cam1", "main", T0 - 1000, T0 + 15_000)
        self.assertEqual([s.start_ms for s in out["segments"]], [T0, T0 + 2000, T0 + 10_000])
        self.assertEqual(out["gaps"], [(T0 - 1000, T0), (T0 + 4000, T0 + 10_000),
                                       (T0 + 12_000, T0 + 15_000)])
        # a range starting inside a segment includes it; no gap at its start
        out = self.db.list("cam1", "main", T0 + 3000, T0 + 11_000)
        self.assertEqual([s.start_ms for s in out["segments"]], [T0 + 2000, T0 + 10_000])
        self.assertEqual(out["gaps"], [(T0 + 4000, T0 + 10_000)])
        # a range inside a gap
        out = self.db.list("cam1", "main", T0 + 5000, T0 + 6000)
        self.assertEqual((out["segments"], out["gaps"]), ([], [(T0 + 5000, T0 + 6000)]))
        # holes below min_gap_ms are not gaps
        self.db.add(seg(T0 + 4100, T0 + 10_000))
        self.assertEqual(self.db.list("cam1", "main", T0, T0 + 12_000)["gaps"], [])

    def test_get_keeps_keyframe_offsets_list_leaves_them_out(self):
        s = seg(T0, T0 + 2000, keyframes=[(0, 800), (1000, 26000)])
        self.db.add(s)
        self.assertEqual(self.db.get(s.path).keyframes, [(0, 800), (1000, 26000)])
        self.assertEqual(self.db.list("cam1", "main", T0, T0 + 1)["segments"][0].keyframes, ())
        self.assertIsNone(self.db.get("recordings/nope.mp4"))
        self.db.add(s._replace(keyframes=[(0, 900)], end_ms=T0 + 1000))  # same path again
        self.assertEqual(self.db.get(s.path), s._replace(keyframes=[(0, 900)], end_ms=T0 + 1000))
        self.db.remove([s.path])
        self.assertEqual(self.db.db.execute("SELECT count(*) FROM keyframes").fetchone()[0], 0)

    def test_oldest_and_remove(self):
        a, b = seg(T0 + 5000, T0 + 6000), seg(T0, T0 + 1000, device="cam9")
        self.db.add_many([a, b])
        self.assertEqual(self.db.oldest(), [b])
        self.db.remove([b.path])
        self.assertEqual(self.db.oldest(2), [a])
        self.assertEqual(self.db.count(), 1)

    def test_retention_by_days_never_deletes_a_segment_in_use(self):
        self.clock.advance(T0 / 1000)
        old = [seg(T0 - 10 * DAY + i * 60_000, T0 - 10 * DAY + (i + 1) * 60_000)
               for i in range(3)]
        recent = seg(T0 - DAY, T0 - DAY + 60_000)
        for s in [*old, recent]:
            touch(self.dir, s)
        self.db.add_many([*old, recent])
        deleted = self.db.enforce(7, None, in_use={old[1].path})
        self.assertEqual({s.path for s in deleted}, {old[0].path, old[2].path})
        self.assertEqual(self.db.paths(), {old[1].path, recent.path})
        self.assertFalse(os.path.exists(os.path.join(self.dir, old[0].path)))
        self.assertTrue(os.path.exists(os.path.join(self.dir, old[1].path)))
        self.clock.advance(6 * DAY / 1000 + 60)  # recent ended 7 days ago
        self.assertEqual([s.path for s in self.db.enforce(7, None)],
                         [old[1].path, recent.path])
        self.assertEqual(self.db.count(), 0)

    def test_retention_by_quota_deletes_the_oldest_first(self):
        self.clock.advance(T0 / 1000)
        segs = [seg(T0 - (10 - i) * 60_000, T0 - (9 - i) * 60_000, size=100) for i in range(10)]
        for s in segs:
            touch(self.dir, s)
        self.db.add_many(segs)
        deleted = self.db.enforce(30, 650, in_use={segs[0].path})
        self.assertEqual([s.path for s in deleted], [s.path for s in segs[1:5]])
        self.assertEqual(self.db.total_bytes(), 600)
        self.assertEqual(self.db.enforce(30, 650), [])
        self.assertTrue(os.path.exists(os.path.join(self.dir, segs[0].path)))

    def test_repair_drops_rows_without_files_and_discards_an_empty_part(self):
        kept, gone = seg(T0, T0 + 1000), seg(T0 + 1000, T0 + 2000)
        self.db.add_many([kept, gone])
        touch(self.dir, kept)
        with open(os.path.join(self.dir, kept.path + ".txt"), "wb"):
            pass  # a stray file is ignored
        part = os.path.join(self.dir, gone.path + ".part")
        with open(part, "wb") as f:
            f.write(b"\0\0\0\x18ftypisom")  # a header cut short: nothing to salvage
        report = self.db.repair()
        self.assertEqual(report["dropped"], [gone.path])
        self.assertEqual(report["discarded"], [gone.path + ".part"])
        self.assertFalse(os.path.exists(part))
        self.assertEqual(self.db.paths(), {kept.path})

    def test_segment_names_are_utc_start_times_to_the_millisecond(self):
        self.assertEqual(segment_name(0), "19700101T000000.000Z")
        self.assertEqual(segment_name(1795613718228), "20261125T133518.228Z")
        for name, ms in [("20261125T133518.228Z.mp4", 1795613718228),
                         ("20261125T133518.228Z-2.mp4", 1795613718228),
                         ("20261125T133518.007Z.mp4.part", 1795613718007),
                         ("20261125T133518Z.mp4", 1795613718000),  # names of before the ms
                         ("20261125T133518Z-2.mp4", 1795613718000)]:
            self.assertEqual(catmod.parse_segment_name(name), ms, name)
        for bad in ("x.mp4", "20261125T133518.22Z.mp4", "20261399T000000Z.mp4",
                    "20261125T133518Z.txt", "20261125T133518.228.mp4"):
            self.assertIsNone(catmod.parse_segment_name(bad), bad)

    @defer.inlineCallbacks
    def test_the_catalogue_runs_off_the_reactor_thread(self):
        c = Catalogue(os.path.abspath(self.mktemp()), clock=self.clock, reactor=reactor)
        yield c.open()
        yield c.add(seg(T0, T0 + 1000))
        out = yield c.list("cam1", "main", T0, T0 + 1000)
        self.assertEqual(len(out["segments"]), 1)
        yield c.close()


def WALL():  # noqa: N802 - a fixed wall clock, on an even second
    return T0 / 1000


def make_input(path, seconds=5):
    """A local H.264 (1 s GOP) + AAC file for writer tests."""
    proc = FFmpeg()
    reactor.spawnProcess(proc, FFMPEG, [
        FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
        "testsrc=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=frequency=440",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac",
        "-t", str(seconds), path], env=dict(os.environ))
    return proc.ended


def read_segment(path):
    """Blocking: (duration s, video frames, video dts list, audio dts list) read by PyAV,
    decoding every video frame."""
    with av.open(path) as c:
        v = c.streams.video[0]
        vdts, adts, frames = [], [], 0
        for p in c.demux():
            if p.dts is None:
                continue
            (vdts if p.stream.type == "video" else adts).append(float(p.dts * p.time_base))
            if p.stream.type == "video":
                frames += len(p.decode())
        duration = vdts[-1] - vdts[0] + 1 / float(v.average_rate or 25)
        return duration, frames, vdts, adts


def disk_that_fills(limit):
    """An ``opener`` of segment files on a disk that fills up after ``limit`` bytes, all
    the files it opened counted together."""
    written = [0]

    class Full(io.RawIOBase):
        """A file on that disk."""

        def __init__(self, path):
            self.f = open(path, "wb", buffering=0)  # noqa: SIM115

        def writable(self):
            return True

        def write(self, b):
            if written[0] + len(b) > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written[0] += len(b)
            return self.f.write(b)

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()
            super().close()

    return Full


class WriterTests(unittest.TestCase):
    """The child's segment writer, in a thread, from a local file."""

    timeout = 60

    def setUp(self):
        if FFMPEG is None:
            raise unittest.SkipTest("PyAV and imageio-ffmpeg are needed")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.input = os.path.join(self.dir, "in.mkv")
        return make_input(self.input)

    @defer.inlineCallbacks
    def test_disk_full_stops_new_segments_and_keeps_closed_ones(self):
        events = []
        code = yield threads.deferToThread(record, self.input, self.dir, "recordings/c/main",
                                           2, events.append, opener=disk_that_fills(120_000),
                                           wall=WALL)
        self.assertEqual(code, EXIT_DISK_FULL)
        kinds = [e["event"] for e in events]
        self.assertEqual(kinds[-1], "disk_full")
        segs = [e for e in events if e["event"] == "segment"]
        self.assertGreaterEqual(len(segs), 1)
        files = sorted(os.listdir(os.path.join(self.dir, "recordings/c/main")))
        self.assertEqual(files, sorted(os.path.basename(e["path"]) for e in segs))
        for e in segs:
            duration, frames, _, _ = yield threads.deferToThread(
                read_segment, os.path.join(self.dir, e["path"]))
            self.assertEqual(frames, 50)

    def test_a_closed_segment_is_never_overwritten(self):
        # the same file recorded twice: the second run's segments have the same start
        # second as the first run's and must get new names
        first, second = [], []
        record(self.input, self.dir, "recordings/c/main", 2, first.append, wall=WALL)
        sizes = {e["path"]: e["bytes"] for e in first if e["event"] == "segment"}
        record(self.input, self.dir, "recordings/c/main", 2, second.append, wall=WALL)
        again = [e["path"] for e in second if e["event"] == "segment"]
        self.assertEqual(len(again), 3)
        self.assertFalse(set(again) & set(sizes))
        self.assertTrue(all(p.endswith("-1.mp4") for p in again))
        for p, size in sizes.items():
            self.assertEqual(os.path.getsize(os.path.join(self.dir, p)), size)

    def test_segments_are_aligned_on_utc_multiples_of_their_length(self):
        events = []
        record(self.input, self.dir, "recordings/c/main", 2, events.append,
               wall=lambda: WALL() + 1.0)  # the stream starts 1 s into a period
        segs = [e for e in events if e["event"] == "segment"]
        self.assertEqual([e["frames"] for e in segs], [25, 50, 50])
        # (the file's first packet is AAC priming 23 ms before the first keyframe)
        self.assertEqual([(e["start_ms"] % 2000) // 100 for e in segs], [10, 0, 0])

    def test_keyframe_offsets_point_at_fragments(self):
        events = []
        self.assertEqual(record(self.input, self.dir, "recordings/c/main", 2,
                                events.append, wall=WALL), 0)
        segs = [e for e in events if e["event"] == "segment"]
        self.assertEqual([e["frames"] for e in segs], [50, 50, 25])
        self.assertEqual([e["end_ms"] - e["start_ms"] for e in segs], [2000, 2000, 1000])
        self.assertEqual(segs[0]["end_ms"], segs[1]["start_ms"])
        for e in segs:
            self.assertEqual([k[0] for k in e["keyframes"]],
                             list(range(0, e["end_ms"] - e["start_ms"], 1000)))
            with open(os.path.join(self.dir, e["path"]), "rb") as f:
                for _ms, offset in e["keyframes"]:
                    f.seek(offset + 4)
                    self.assertEqual(f.read(4), b"moof")
        self.assertIn("aac", [a for e in events if e["event"] == "started"
                              for a in e["audio"]])


class RecorderAlarmTests(unittest.TestCase):
    def test_disk_full_raises_the_alarm_and_refuses_new_recordings(self):
        clock = task.Clock()
        rec = Recorder(None, None, self.mktemp(), clock, clock, "rtsp://127.0.0.1:1")
        r = _Recording("cam1", 0, "main", 2, "/live/cam1/main", 0)
        rec.recordings[("cam1", 0, "main")] = r
        with capturedLogs() as events:
            _Child(rec, r).outReceived(
                b'{"event":"disk_full","message":"[Errno 28] No space left on device"}\n')
        self.assertEqual(rec.status()["alarm"]["kind"], "disk_full")
        self.assertEqual(rec.status()["recordings"]["/live/cam1/main"]["state"], "disk_full")
        self.assertTrue(any(e["log_level"] == LogLevel.critical for e in events))
        f = self.failureResultOf(rec.start("cam2", 0, 0, 2), VssError)
        self.assertEqual(f.value.code, ResultCode.BUSY)
        rec.clear_alarm()
        self.assertIsNone(rec.status()["alarm"])


class FakeProcess:
    def __init__(self, proto, pid, argv, env):
        self.proto, self.pid, self.argv, self.env = proto, pid, argv, env
        self.signals = []

    def signalProcess(self, sig):
        self.signals.append(sig)

    def end(self, code):
        self.pid = None
        self.proto.processEnded(Failure(ProcessDone(0) if code == 0
                                        else ProcessTerminated(exitCode=code)))

    def say(self, event):
        self.proto.outReceived(json.dumps(event).encode() + b"\n")


class FakeReactor:
    def __init__(self):
        self.spawned = []

    def spawnProcess(self, proto, exe, argv, env):
        p = FakeProcess(proto, 1000 + len(self.spawned), argv, env)
        proto.makeConnection(p)
        self.spawned.append(p)
        return p


class FakeSS:
    def __init__(self, paths):
        self.paths = set(paths)

    def wait_for_source(self, path, timeout):
        return defer.succeed(object() if path in self.paths else None)


class RecorderControlTests(unittest.TestCase):
    """The parent side with fake children and a task.Clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.reactor = FakeReactor()
        self.issuer = TokenIssuer(SECRET, clock=self.clock)
        self.recorder = Recorder(FakeSS({"/live/cam1/main", "/live/cam2/main",
                                         "/live/cam3/ch1-sub"}), self.issuer,
                                 self.mktemp(), self.clock, self.reactor,
                                 "rtsp://127.0.0.1:7554", max_starting=2, restart_delay=5)

    def test_token_in_the_environment_and_at_most_max_starting_children_start(self):
        d1 = self.recorder.start("cam1", 0, 0, 2)
        d2 = self.recorder.start("cam2", 0, "main", 2)
        d3 = self.recorder.start("cam3", 1, 1, 2)
        self.assertEqual(len(self.reactor.spawned), 2)
        first = self.reactor.spawned[0]
        url = first.env["VSS_RECORD_URL"]
        self.assertTrue(url.startswith("rtsp://127.0.0.1:7554/live/cam1/main?token="))
        self.assertTrue(self.issuer.verify(url.split("token=")[1], "/live/cam1/main",
                                           "play")[0])
        self.assertNotIn(url.split("token=")[1], " ".join(first.argv))
        self.assertIn("recordings/cam1/main", first.argv)
        self.assertNoResult(d1)
        first.say({"event": "started", "video": "h264", "audio": []})
        self.assertEqual(self.successResultOf(d1)["state"], "recording")
        self.assertEqual(len(self.reactor.spawned), 3)  # its place went to cam3
        self.assertIn("recordings/cam3/ch1-sub", self.reactor.spawned[2].argv)
        self.reactor.spawned[1].end(1)  # cam2's child dies before it started
        self.assertEqual(self.failureResultOf(d2, VssError).value.code,
                         ResultCode.DEVICE_OFFLINE)
        self.assertNoResult(d3)
        self.assertEqual(sorted(self.recorder.status()["recordings"]),
                         ["/live/cam1/main", "/live/cam3/ch1-sub"])

    def test_a_child_that_ends_is_restarted_and_stop_ends_it(self):
        d = self.recorder.start("cam1", 0, 0, 2)
        child = self.reactor.spawned[0]
        child.say({"event": "started"})
        self.successResultOf(d)
        child.end(0)  # the source ended
        status = self.recorder.status()
        self.assertEqual(status["recordings"]["/live/cam1/main"]["state"], "waiting")
        self.clock.advance(5)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(self.recorder.status()["restarts"], 1)
        again = self.reactor.spawned[1]
        again.say({"event": "started"})
        stopped = self.recorder.stop("cam1", 0, 0)
        self.assertEqual(again.signals, ["TERM"])
        self.assertNoResult(stopped)
        again.end(0)
        self.assertEqual(self.successResultOf(stopped)["state"], "stopped")
        self.assertEqual(self.recorder.status()["recordings"], {})
        self.assertFalse(self.clock.getDelayedCalls())

    def test_a_child_that_ignores_term_is_killed(self):
        self.recorder.start("cam1", 0, 0, 2)
        child = self.reactor.spawned[0]
        child.say({"event": "started"})
        stopped = self.recorder.stop("cam1", 0, 0)
        self.clock.advance(self.recorder.stop_timeout)
        self.assertEqual(child.signals, ["TERM", "KILL"])
        child.end(9)
        self.assertEqual(self.successResultOf(stopped)["state"], "stopped")

    def test_a_child_that_writes_garbage_is_not_a_crash_nor_a_leak(self):
        from vss.recording.recorder import MAX_LINE

        d = self.recorder.start("cam1", 0, 0, 2)
        child = self.reactor.spawned[0]
        with capturedLogs() as events:
            child.proto.outReceived(b"x" * (MAX_LINE + 10))  # no line end, ever
            self.assertLessEqual(len(child.proto.buffer), MAX_LINE)
            child.proto.outReceived(b"\n[1, 2]\nnot json\n")
            child.say({"event": "segment", "path": "x.mp4"})  # fields missing
            child.say({"event": "started"})
        self.assertEqual(len([e for e in events if e["log_level"] == LogLevel.warn]), 4)
        self.assertEqual(self.successResultOf(d)["state"], "recording")
        self.assertEqual(self.recorder.status()["segments"], 0)

    def test_no_live_stream_fails_the_start(self):
        f = self.failureResultOf(self.recorder.start("cam9", 0, 0, 2), VssError)
        self.assertEqual(f.value.code, ResultCode.DEVICE_OFFLINE)
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(self.recorder.status()["failed"], 1)


class RecordingE2ETests(E2ETestBase):
    """A real publisher, the SS, the recorder child, PyAV reading every segment."""

    timeout = 60
    mode = "process"

    def setUp(self):
        super().setUp()
        self.data = os.path.abspath(self.mktemp())
        self.recorder = self.make_recorder()
        self.addCleanup(self.recorder.close)
        return self.recorder.open()

    def make_recorder(self, **kw):
        kw.setdefault("restart_delay", 60)
        return Recorder(self.factory, self.issuer, self.data, reactor, reactor,
                        f"rtsp://127.0.0.1:{self.factory.port}", mode=self.mode, **kw)

    def files(self):
        root = os.path.join(self.data, "recordings")
        return {os.path.relpath(os.path.join(d, n), self.data)
                for d, _, names in os.walk(root) for n in names}

    @defer.inlineCallbacks
    def test_six_seconds_in_two_second_segments(self):
        yield self.publish(self.factory, audio_codec="aac")
        info = yield with_timeout(self.recorder.start("cam1", 0, 0, 2), 20, "recording")
        self.assertEqual(info["state"], "recording")
        self.assertEqual(info["mode"], self.mode)
        source = self.factory.sources["/live/cam1/main"]
        self.assertEqual(source.reader_count, 1)
        yield wait_until(reactor, lambda: self.recorder.status()["segments"] >= 3,
                         timeout=20, what="three segments")
        final = yield self.recorder.stop("cam1", 0, 0)
        self.assertEqual(final["state"], "stopped")
        self.assertEqual(source.reader_count, 0)

        rows = yield self.recorder.catalogue.list("cam1", "main", 0, 2**62)
        segs = rows["segments"]
        self.assertEqual({s.path for s in segs}, self.files())
        self.assertGreaterEqual(len(segs), 4)
        for a, b in zip(segs, segs[1:], strict=False):
            self.assertEqual(a.end_ms, b.start_ms)  # back to back, no gap
        self.assertEqual(rows["gaps"], [(0, segs[0].start_ms), (segs[-1].end_ms, 2**62)])
        for i, s in enumerate(segs):
            self.assertTrue(s.path.startswith("recordings/cam1/main/"))
            self.assertEqual(os.path.basename(s.path), segment_name(s.start_ms) + ".mp4")
            duration, frames, vdts, adts = yield threads.deferToThread(
                read_segment, os.path.join(self.data, s.path))
            self.assertEqual(vdts, sorted(vdts))
            self.assertEqual(adts, sorted(adts))
            self.assertLess(vdts[0], 0.05)
            row = yield self.recorder.catalogue.get(s.path)
            self.assertEqual(row.bytes, os.path.getsize(os.path.join(self.data, s.path)))
            self.assertEqual(row.keyframes[0][0], 0)
            if 0 < i < len(segs) - 1:  # all but the first (from the start to the next
                # even UTC second) and the last (stopped) are 2 s
                # (+ up to 0.15 s once: FFmpeg's RTSP demuxer realigns audio and video
                # timestamps at the first RTCP sender report)
                self.assertTrue(1.99 <= duration <= 2.15, duration)
                self.assertEqual(frames, 50)
                self.assertGreater(len(adts), 10)  # the AAC track is kept
                # (trial's assertAlmostEqual has no delta: it compares to 7 places)
                self.assertLessEqual(abs((s.end_ms - s.start_ms) / 1000 - duration), 0.05)
                self.assertEqual(len(row.keyframes), 2)

    @defer.inlineCallbacks
    def test_kill_9_mid_segment_then_repair(self):
        yield self.publish(self.factory, audio=False)
        yield with_timeout(self.recorder.start("cam1", 0, 0, 2), 20, "recording")
        yield wait_until(reactor, lambda: self.recorder.status()["segments"] >= 1,
                         timeout=20, what="one closed segment")

        def part_has_a_fragment():
            parts = [p for p in self.files() if p.endswith(".part")]
            if not parts:
                return False
            with open(os.path.join(self.data, parts[0]), "rb") as f:
                return len(scan_fmp4(f)["fragments"]) >= 1
            return False

        yield wait_until(reactor, part_has_a_fragment, timeout=10, what="a fragment")
        [rec] = self.recorder.recordings.values()
        child = rec.child
        child.transport.signalProcess("KILL")
        code = yield child.ended
        self.assertNotEqual(code, 0)
        [part] = [p for p in self.files() if p.endswith(".part")]
        yield self.recorder.stop("cam1", 0, 0)
        yield self.recorder.close()

        # the node comes back: repair makes the catalogue equal the files
        again = Recorder(self.factory, self.issuer, self.data, reactor, reactor,
                         f"rtsp://127.0.0.1:{self.factory.port}")
        self.addCleanup(again.close)
        report = yield again.open()
        self.assertEqual(report["salvaged"], [part[:-len(".part")]])
        self.assertEqual(report["dropped"], [])
        paths = yield again.catalogue.paths()
        self.assertEqual(paths, self.files())
        self.assertFalse(any(p.endswith(".part") for p in paths))
        for p in sorted(paths):
            duration, frames, vdts, _ = yield threads.deferToThread(
                read_segment, os.path.join(self.data, p))
            self.assertGreaterEqual(frames, 25)
            self.assertEqual(vdts, sorted(vdts))
        # a closed file missing from the catalogue is probed and added back
        victim = sorted(paths)[0]
        yield again.catalogue.remove([victim])
        report = yield again.catalogue.repair()
        self.assertEqual(report["added"], [victim])
        row = yield again.catalogue.get(victim)
        self.assertGreater(row.end_ms - row.start_ms, 900)



class InProcessRecordingE2ETests(RecordingE2ETests):
    """The same, recorded in process: the recorder is a reader of the SS's source
    (``mode="auto"`` with H.264/H.265 video), no child, no loopback RTSP."""

    mode = "inprocess"

    def make_recorder(self, **kw):
        kw.setdefault("restart_delay", 60)
        return Recorder(self.factory, self.issuer, self.data, reactor, reactor,
                        f"rtsp://127.0.0.1:{self.factory.port}", **kw)

    def test_kill_9_mid_segment_then_repair(self):
        raise unittest.SkipTest("in process there is no child to kill")

    @defer.inlineCallbacks
    def record_and_read(self, video_codec="libx264", audio=True, segments=3):
        if audio:
            yield self.publish(self.factory, audio_codec="aac", video_codec=video_codec)
        else:
            yield self.publish(self.factory, audio=False, video_codec=video_codec)
        info = yield with_timeout(self.recorder.start("cam1", 0, 0, 2), 20, "recording")
        self.assertEqual((info["state"], info["mode"], info["pid"]),
                         ("recording", "inprocess", None))
        source = self.factory.sources["/live/cam1/main"]
        self.assertEqual(source.reader_count, 1)
        yield wait_until(reactor, lambda: self.recorder.status()["segments"] >= segments,
                         timeout=30, what=f"{segments} segments")
        live = self.recorder.status()["recordings"]["/live/cam1/main"]
        self.assertGreater(live["frames_received"], 25 * 2 * (segments - 1))
        final = yield self.recorder.stop("cam1", 0, 0)
        self.assertEqual(source.reader_count, 0)
        rows = yield self.recorder.catalogue.list("cam1", "main", 0, 2**62)
        segs = rows["segments"]
        self.assertEqual({s.path for s in segs}, self.files())
        out = []
        for s in segs:
            got = yield threads.deferToThread(read_segment, os.path.join(self.data, s.path))
            row = yield self.recorder.catalogue.get(s.path)
            out.append((s, row, *got))
        return final, out

    @defer.inlineCallbacks
    def test_h264_and_aac_in_process_exact_segments(self):
        final, out = yield self.record_and_read()
        self.assertEqual(final["frames_lost"], 0)
        # the publisher (FFmpeg) sends RTCP sender reports: audio is placed by them
        self.assertGreaterEqual(final["live"]["audio_by_reports"], len(out) - 1)
        self.assertEqual(final["frames"], sum(o[3] for o in out))
        for a, b in zip(out, out[1:], strict=False):
            self.assertEqual(a[0].end_ms, b[0].start_ms)
        for i, (s, row, duration, frames, vdts, adts) in enumerate(out):
            self.assertEqual(vdts, sorted(vdts))
            self.assertEqual(len(set(vdts)), len(vdts))
            self.assertEqual(adts, sorted(adts))
            self.assertEqual(vdts[0], 0)
            self.assertEqual(row.keyframes[0], (0, row.keyframes[0][1]))
            self.assertEqual(row.bytes, os.path.getsize(os.path.join(self.data, s.path)))
            if 0 < i < len(out) - 1:
                # cut at the first keyframe at or after each even UTC second: 2 s,
                # 50 frames, two fragments; the timestamps are the publisher's own
                self.assertLess(s.start_ms % 2000, 1000)  # a 1 s GOP
                self.assertLessEqual(abs(duration - 2.0), 0.001)
                self.assertEqual(frames, 50)
                self.assertEqual(s.end_ms - s.start_ms, 2000)
                self.assertEqual([k[0] for k in row.keyframes], [0, 1000])
                self.assertGreater(len(adts), 10)  # 8 kHz AAC: 128 ms a frame
                # the first audio frame starts less than a frame after the first
                # picture (the muxer writes the first sample at 0: read the second)
                self.assertTrue(-0.01 < adts[1] - 0.128 < 0.138, adts[:3])

    @defer.inlineCallbacks
    def test_h265_in_process(self):
        final, out = yield self.record_and_read(video_codec="libx265", audio=False)
        self.assertEqual(final["frames_lost"], 0)
        for s, _row, _duration, frames, vdts, adts in out[1:-1]:
            self.assertEqual(frames, 50)
            self.assertEqual(adts, [])
            self.assertEqual(vdts, sorted(vdts))
            self.assertEqual(s.end_ms - s.start_ms, 2000)
        with av.open(os.path.join(self.data, out[1][0].path)) as c:
            self.assertEqual(c.streams.video[0].codec_context.name, "hevc")

    @defer.inlineCallbacks
    def test_b_frames_hand_the_recording_over_to_a_child(self):
        yield self.publish(self.factory, audio=False, extra=("-bf", "2"))
        info = yield with_timeout(self.recorder.start("cam1", 0, 0, 2), 20, "recording")
        self.assertEqual(info["mode"], "inprocess")
        yield wait_until(reactor, lambda: self.recorder.status()["segments"] >= 2,
                         timeout=30, what="two segments")
        rec = self.recorder.status()["recordings"]["/live/cam1/main"]
        self.assertEqual(rec["mode"], "process")
        self.assertIsNotNone(rec["pid"])
        yield self.recorder.stop("cam1", 0, 0)
        rows = yield self.recorder.catalogue.list("cam1", "main", 0, 2**62)
        self.assertEqual({s.path for s in rows["segments"]}, self.files())
        for s in rows["segments"]:
            _, _, vdts, _ = yield threads.deferToThread(
                read_segment, os.path.join(self.data, s.path))
            self.assertGreater(len(vdts), 0)  # (decoding without a flush keeps the
            self.assertEqual(vdts, sorted(vdts))  # last B-frames in the decoder)

    @defer.inlineCallbacks
    def test_source_ended_closes_the_segment_and_the_recording_waits_for_it(self):
        self.recorder = self.make_recorder(restart_delay=0.5)
        self.addCleanup(self.recorder.close)
        yield self.recorder.open()
        yield self.publish(self.factory, audio=False)
        yield with_timeout(self.recorder.start("cam1", 0, 0, 2), 20, "recording")
        yield wait_until(reactor, lambda: self.recorder.status()["segments"] >= 1,
                         timeout=20, what="one segment")
        self.factory.sources["/live/cam1/main"].close()  # the publisher is gone
        rec = self.recorder.status()["recordings"]["/live/cam1/main"]
        self.assertEqual(rec["state"], "waiting")
        self.assertEqual(rec["error"], "the live stream ended")
        yield wait_until(reactor, lambda: not any(p.endswith(".part") for p in self.files())
                         and self.recorder.status()["segments"] >= 2, timeout=20,
                         what="the open segment closed")
        for p in self.procs:
            if p.running:
                p.transport.signalProcess("KILL")
        yield wait_until(reactor, lambda: not any(p.running for p in self.procs),
                         timeout=20, what="the publisher gone")
        # the source comes back: the recording goes on in new segments
        yield self.publish(self.factory, audio=False)
        yield wait_until(reactor, lambda: self.recorder.status()["segments"] >= 4,
                         timeout=30, what="recording again")
        status = self.recorder.status()
        self.assertGreaterEqual(status["restarts"], 1)
        self.assertEqual(status["recordings"]["/live/cam1/main"]["state"], "recording")
        yield self.recorder.stop("cam1", 0, 0)
        rows = yield self.recorder.catalogue.list("cam1", "main", 0, 2**62)
        self.assertEqual({s.path for s in rows["segments"]}, self.files())
        for s in rows["segments"]:
            _, frames, vdts, _ = yield threads.deferToThread(
                read_segment, os.path.join(self.data, s.path))
            self.assertGreater(frames, 0)
            self.assertEqual(vdts, sorted(vdts))

    @defer.inlineCallbacks
    def test_disk_full_raises_the_alarm_and_keeps_closed_segments(self):
        self.recorder = self.make_recorder(opener=disk_that_fills(300_000))
        self.addCleanup(self.recorder.close)
        yield self.recorder.open()
        yield self.publish(self.factory, audio=False)
        source = self.factory.sources["/live/cam1/main"]
        with capturedLogs() as events:
            yield with_timeout(self.recorder.start("cam1", 0, 0, 1), 20, "recording")
            yield wait_until(reactor, lambda: self.recorder.status()["alarm"] is not None,
                             timeout=30, what="the disk-full alarm")
        self.assertTrue(any(e["log_level"] == LogLevel.critical for e in events))
        status = self.recorder.status()
        self.assertEqual(status["alarm"]["kind"], "disk_full")
        self.assertEqual(status["recordings"]["/live/cam1/main"]["state"], "disk_full")
        yield wait_until(reactor, lambda: source.reader_count == 0, timeout=5,
                         what="the recorder leaving the source")
        f = yield self.assertFailure(self.recorder.start("cam2", 0, 0, 2), VssError)
        self.assertEqual(f.code, ResultCode.BUSY)
        yield self.recorder.stop("cam1", 0, 0)
        files = self.files()
        self.assertFalse(any(p.endswith(".part") for p in files))
        rows = yield self.recorder.catalogue.list("cam1", "main", 0, 2**62)
        self.assertEqual({s.path for s in rows["segments"]}, files)
        self.assertGreaterEqual(len(files), 1)
        for p in files:
            _, frames, _, _ = yield threads.deferToThread(read_segment,
                                                         os.path.join(self.data, p))
            self.assertGreater(frames, 0)


H264_SDP = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\n"
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
            "a=fmtp:96 packetization-mode=1\r\n")


def make_h264(path, seconds=5):
    """A local raw H.264 stream (Annex B, 25 fps, 1 s GOP, no B-frames)."""
    proc = FFmpeg()
    reactor.spawnProcess(proc, FFMPEG, [
        FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
        "testsrc=size=320x240:rate=25", "-c:v", "libx264", "-preset", "ultrafast",
        "-g", "25", "-bf", "0", "-t", str(seconds), "-f", "h264", path],
        env=dict(os.environ))
    return proc.ended


def rtp_pictures(path, mtu=1200):
    """Blocking: the RTP packets (RFC 6184 single NAL / FU-A) of each picture of an
    Annex B file, timestamps 3600 apart (25 fps): [[packet, ...], ...]."""
    import re
    import struct

    out, seq = [], 0
    with av.open(path) as c:
        for i, p in enumerate(c.demux(video=0)):
            if not p.size:
                continue
            nals = [n for n in re.split(b"\x00\x00\x00\x01|\x00\x00\x01", bytes(p)) if n]
            payloads = []
            for nal in nals:
                if len(nal) <= mtu:
                    payloads.append(nal)
                    continue
                body = nal[1:]
                parts = [body[k:k + mtu] for k in range(0, len(body), mtu)]
                for k, part in enumerate(parts):
                    fu = (nal[0] & 0x1F) | (0x80 if k == 0 else 0) | \
                        (0x40 if k == len(parts) - 1 else 0)
                    payloads.append(bytes(((nal[0] & 0xE0) | 28, fu)) + part)
            picture = []
            for k, payload in enumerate(payloads):
                marker = 0x80 if k == len(payloads) - 1 else 0
                picture.append(struct.pack("!BBHII", 0x80, marker | 96, seq & 0xFFFF,
                                           (1000 + i * 3600) & 0xFFFFFFFF, 7) + payload)
                seq += 1
            out.append(picture)
    return out


class LiveWriterBase(unittest.TestCase):
    """The in-process recording with a task.Clock: a fan-out ``Source`` fed hand-made
    RTP packets of a local file, 25 pictures per clock second."""

    gop_cache = 0
    sdp = H264_SDP

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        if FFMPEG is None:
            raise unittest.SkipTest("PyAV and imageio-ffmpeg are needed")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        path = os.path.join(self.dir, "in.h264")
        yield make_h264(path)
        self.pictures = yield threads.deferToThread(rtp_pictures, path)
        self.clock = task.Clock()
        self.clock.advance(T0 / 1000 + 1.0)  # the stream starts 1 s into a period
        self.sources = []
        outer = self

        class SS:
            def wait_for_source(self, path, timeout):
                if not outer.sources or outer.sources[-1].closed:
                    outer.sources.append(Source(path, outer.sdp, sdplib.tracks(outer.sdp),
                                                outer.clock, gop_cache=outer.gop_cache))
                return defer.succeed(outer.sources[-1])

        self.recorder = Recorder(SS(), None, self.dir, self.clock, reactor, "",
                                 in_thread=lambda f, *a: defer.maybeDeferred(f, *a),
                                 restart_delay=5)
        yield self.recorder.open()
        self.addCleanup(self.recorder.close)

    def play(self, pictures, skip=()):
        for picture in pictures:
            for packet in picture:
                if packet not in skip:
                    self.sources[-1].feed(0, False, packet)
            self.clock.advance(0.04)

    @defer.inlineCallbacks
    def segments(self):
        rows = yield self.recorder.catalogue.list("cam1", "main", 0, 2**62)
        out = []
        for s in rows["segments"]:
            got = yield threads.deferToThread(read_segment, os.path.join(self.dir, s.path))
            out.append((s, *got))
        return out


class LiveWriterTests(LiveWriterBase):
    @defer.inlineCallbacks
    def test_cut_at_the_first_keyframe_of_each_utc_period(self):
        info = yield self.recorder.start("cam1", 0, 0, 2)
        self.assertEqual((info["mode"], info["state"]), ("inprocess", "recording"))
        self.play(self.pictures)
        final = yield self.recorder.stop("cam1", 0, 0)
        self.assertEqual((final["frames"], final["frames_received"], final["frames_lost"]),
                         (125, 125, 0))
        out = yield self.segments()
        self.assertEqual([(s.start_ms - T0, s.end_ms - T0) for s, *_ in out],
                         [(1000, 2000), (2000, 4000), (4000, 6000)])
        self.assertEqual([f for _, _, f, _, _ in out], [25, 50, 50])
        for s, duration, _frames, vdts, _ in out:
            self.assertEqual(vdts[0], 0)
            self.assertEqual([round(t, 6) for t in vdts],
                             [round(k * 0.04, 6) for k in range(len(vdts))])
            self.assertLessEqual(abs(duration - (s.end_ms - s.start_ms) / 1000), 0.001)
            self.assertEqual(os.path.basename(s.path), segment_name(s.start_ms) + ".mp4")

    @defer.inlineCallbacks
    def test_a_lost_packet_drops_pictures_up_to_the_next_keyframe(self):
        yield self.recorder.start("cam1", 0, 0, 2)
        lost = self.pictures[30][0]  # a packet of the 6th picture of the second GOP
        self.play(self.pictures, skip={lost})
        status = self.recorder.status()["recordings"]["/live/cam1/main"]
        # pictures 31..49 are dropped (they reference 30), and 30 itself if it had
        # more packets than the lost one (a picture lost whole is never seen)
        self.assertEqual(status["frames_lost"], 20 if len(self.pictures[30]) > 1 else 19)
        self.assertEqual(status["live"]["gaps"], 1)
        final = yield self.recorder.stop("cam1", 0, 0)
        self.assertEqual(final["frames"], 105)
        out = yield self.segments()
        self.assertEqual([f for _, _, f, _, _ in out], [25, 30, 50])
        for _s, _duration, _frames, vdts, _ in out:
            self.assertEqual(vdts, sorted(vdts))

    @defer.inlineCallbacks
    def test_the_source_ends_then_comes_back(self):
        yield self.recorder.start("cam1", 0, 0, 2)
        self.play(self.pictures[:60])
        self.sources[-1].close()
        rec = self.recorder.status()["recordings"]["/live/cam1/main"]
        self.assertEqual((rec["state"], rec["segments"]), ("waiting", 2))
        self.assertEqual(self.recorder.status()["restarts"], 1)
        self.clock.advance(5)  # restart_delay: a new source is there
        self.assertEqual(len(self.sources), 2)
        self.assertEqual(self.sources[-1].reader_count, 1)
        self.play(self.pictures[75:])  # from a keyframe
        final = yield self.recorder.stop("cam1", 0, 0)
        self.assertEqual((final["frames"], final["frames_lost"]), (110, 0))
        out = yield self.segments()
        self.assertEqual([f for _, _, f, _, _ in out], [25, 35, 50])

    @defer.inlineCallbacks
    def test_disk_full_at_the_segment_sync_raises_the_alarm(self):
        yield self.recorder.start("cam1", 0, 0, 2)

        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.play(self.pictures[:30])  # the first segment is closed and kept
        self.patch(os, "fsync", full)
        with capturedLogs() as events:
            self.play(self.pictures[30:80])  # the second one cannot be synced
        self.assertTrue(any(e["log_level"] == LogLevel.critical for e in events))
        status = self.recorder.status()
        self.assertEqual(status["alarm"]["kind"], "disk_full")
        self.assertEqual(status["recordings"]["/live/cam1/main"]["state"], "disk_full")
        self.clock.advance(0)
        self.assertEqual(self.sources[-1].reader_count, 0)
        self.play(self.pictures[80:])  # nothing more is written
        yield self.recorder.stop("cam1", 0, 0)
        files = sorted(os.listdir(os.path.join(self.dir, "recordings/cam1/main")))
        self.assertEqual(files, [segment_name(T0 + 1000) + ".mp4"])

    @defer.inlineCallbacks
    def test_an_event_recording_starts_with_the_pre_event_buffer(self):
        yield self.recorder.prebuffer("cam1", 0, 0, 3)
        source = self.sources[-1]
        self.assertEqual(source.reader_count, 1)
        self.play(self.pictures[:110])  # the stream runs 4.4 s before the event
        event_ms = T0 + 5400
        info = yield self.recorder.start("cam1", 0, 0, 2)
        self.assertEqual(info["state"], "recording")
        self.play(self.pictures[110:])
        yield self.recorder.stop("cam1", 0, 0)
        self.assertEqual(source.reader_count, 1)  # the buffer goes on reading
        out = yield self.segments()
        # the first segment starts at the keyframe at or before event - 3 s
        start = out[0][0].start_ms
        self.assertTrue(event_ms - 4000 < start <= event_ms - 3000, start - event_ms)
        self.assertEqual([(s.start_ms - T0, s.end_ms - T0) for s, *_ in out],
                         [(2000, 4000), (4000, 6000)])
        self.assertEqual([f for _, _, f, _, _ in out], [50, 50])
        for _s, _duration, _frames, vdts, _ in out:
            self.assertEqual(vdts[0], 0)
            self.assertEqual(vdts, sorted(vdts))
        yield self.recorder.unprebuffer("cam1", 0, 0)
        self.assertEqual(source.reader_count, 0)

    @defer.inlineCallbacks
    def test_the_pre_event_buffer_is_bounded_and_follows_its_source(self):
        self.recorder.prebuffer_max_bytes = 1  # never more than the newest GOP
        asked = []
        yield self.recorder.prebuffer("cam1", 0, 0, 30, want=lambda: asked.append(1))
        self.assertEqual(len(asked), 1)
        pb = self.recorder.prebuffers[("cam1", 0, "main")]
        self.play(self.pictures[:60])
        self.assertEqual(len(pb.gops), 1)
        self.assertEqual(self.recorder.status()["prebuffers"]["/live/cam1/main"],
                         {"seconds": 30, "bytes": pb.bytes, "reading": True})
        self.assertEqual(pb.gops[0][0][1].key, True)
        self.sources[-1].close()  # the source ends: the buffer waits for it again
        self.assertEqual(len(pb.gops), 0)
        self.clock.advance(self.recorder.restart_delay)
        self.assertEqual(len(asked), 2)  # the source is asked for again
        self.assertEqual(len(self.sources), 2)
        self.assertEqual(self.sources[-1].reader_count, 1)
        yield self.recorder.unprebuffer("cam1", 0, 0)
        self.assertEqual(self.sources[-1].reader_count, 0)
        self.assertFalse(self.clock.getDelayedCalls())


class LiveWriterProbeTests(LiveWriterBase):
    """The codec probe (FFmpeg decodes a keyframe) runs through the recorder's thread
    runner, never in the reactor: what comes meanwhile is held and written after."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.calls = []

        def queued(fn, *args):
            d = defer.Deferred()
            self.calls.append((fn, args, d))
            return d

        self.recorder._thread = queued

    def pump(self):
        while self.calls:
            fn, args, d = self.calls.pop(0)
            try:
                result = fn(*args)
            except Exception:  # noqa: BLE001
                d.errback()
            else:
                d.callback(result)

    @defer.inlineCallbacks
    def test_the_probe_runs_in_the_thread_runner_and_nothing_is_lost(self):
        from vss.recording import live as recmod

        in_reactor = []
        real = recmod.probe_codec
        self.patch(recmod, "probe_codec", lambda *a: (in_reactor.append(a), real(*a))[1])
        yield self.recorder.start("cam1", 0, 0, 2)
        self.play(self.pictures[:10])
        self.assertEqual(in_reactor, [])  # not probed in the reactor thread
        self.assertEqual([fn for fn, _, _ in self.calls], [recmod.probe_codec])
        writer = self.recorder.recordings[("cam1", 0, "main")].live
        self.assertIsNone(writer.seg)  # nothing written before the probe answers
        self.assertEqual(len(writer.backlog), 10)
        self.pump()
        self.assertEqual(len(writer.backlog), 0)
        self.assertIsNotNone(writer.seg)
        self.play(self.pictures[10:])
        self.pump()  # the segment closes
        stopped = self.recorder.stop("cam1", 0, 0)
        self.pump()
        final = yield stopped
        self.assertEqual((final["frames"], final["frames_lost"]), (125, 0))
        self.assertEqual(writer.probes, 1)
        out = yield self.segments()
        self.assertEqual([f for _, _, f, _, _ in out], [25, 50, 50])
        self.assertEqual([(s.start_ms - T0, s.end_ms - T0) for s, *_ in out],
                         [(1000, 2000), (2000, 4000), (4000, 6000)])

    @defer.inlineCallbacks
    def test_a_probe_that_never_answers_holds_a_bounded_backlog(self):
        yield self.recorder.start("cam1", 0, 0, 2)
        writer = self.recorder.recordings[("cam1", 0, "main")].live
        writer.backlog_limit = 30_000  # bytes
        self.play(self.pictures[:60])
        self.assertLessEqual(writer.backlog_bytes, 30_000)
        self.assertEqual(writer.backlog_bytes, sum(n for _, _, n in writer.backlog))
        self.assertGreater(writer.backlog_dropped, 0)
        self.assertTrue(writer.backlog[0][1][1].key)  # it restarts at a keyframe
        self.pump()
        self.play(self.pictures[60:])
        stopped = self.recorder.stop("cam1", 0, 0)
        self.pump()
        final = yield stopped
        self.assertEqual(final["frames"] + final["frames_lost"], 125)
        self.assertEqual(final["frames_lost"], writer.backlog_dropped)

    @defer.inlineCallbacks
    def test_a_pre_event_buffer_larger_than_the_bound_is_held_whole(self):
        from vss.recording import live as recmod

        self.patch(recmod.LiveWriter, "MAX_BACKLOG_BYTES", 20_000)
        yield self.recorder.prebuffer("cam1", 0, 0, 3)
        self.play(self.pictures[:110])
        yield self.recorder.start("cam1", 0, 0, 2)
        writer = self.recorder.recordings[("cam1", 0, "main")].live
        self.assertGreater(writer.backlog_bytes, 20_000)  # replayed, the probe pending
        self.pump()
        self.play(self.pictures[110:])
        stopped = self.recorder.stop("cam1", 0, 0)
        self.pump()
        final = yield stopped
        self.assertEqual((final["frames"], final["frames_lost"]), (100, 0))
        yield self.recorder.unprebuffer("cam1", 0, 0)

    @defer.inlineCallbacks
    def test_a_failed_probe_is_an_error_not_a_crash(self):
        yield self.recorder.start("cam1", 0, 0, 2)
        writer = self.recorder.recordings[("cam1", 0, "main")].live
        self.play(self.pictures[:5])
        fn, args, d = self.calls.pop(0)
        with capturedLogs():
            d.errback(ValueError("garbage"))
        self.assertIsNone(writer.seg)
        self.assertEqual(writer.errors, 1)
        self.assertIn("garbage", self.recorder.status()["recordings"]["/live/cam1/main"]
                      ["error"])
        self.play(self.pictures[5:50])  # the same parameter sets: not probed again
        self.assertEqual(self.calls, [])
        yield self.recorder.stop("cam1", 0, 0)
        self.assertTrue(self.flushLoggedErrors(ValueError))


class GOPCacheTests(LiveWriterBase):
    """A source with a GOP cache sends a recording that joins the frames since the last
    keyframe at once: they are placed on the wall clock at which the SS got them."""

    gop_cache = 1 << 22

    @defer.inlineCallbacks
    def test_cached_frames_keep_the_time_the_ss_got_them(self):
        yield self.recorder.rtsp.wait_for_source("/live/cam1/main", 1)
        self.play(self.pictures[:40])  # keyframe 25 came at T0 + 2 s; now T0 + 2.6 s
        yield self.recorder.start("cam1", 0, 0, 2)
        self.play(self.pictures[40:])
        final = yield self.recorder.stop("cam1", 0, 0)
        self.assertEqual(final["frames"], 100)  # from the cached keyframe on
        out = yield self.segments()
        self.assertEqual([(s.start_ms - T0, s.end_ms - T0) for s, *_ in out],
                         [(2000, 4000), (4000, 6000)])
        self.assertEqual([f for _, _, f, _, _ in out], [50, 50])

    @defer.inlineCallbacks
    def test_the_pre_event_buffer_keeps_the_time_the_ss_got_them(self):
        yield self.recorder.rtsp.wait_for_source("/live/cam1/main", 1)
        self.play(self.pictures[:40])
        yield self.recorder.prebuffer("cam1", 0, 0, 30)
        pb = self.recorder.prebuffers[("cam1", 0, "main")]
        self.assertLess(abs(pb.gops[0][0][0] - (T0 / 1000 + 2.0)), 0.001)
        self.assertLess(abs(pb.gops[0][-1][0] - (T0 / 1000 + 2.56)), 0.001)
        yield self.recorder.unprebuffer("cam1", 0, 0)


H264_AAC_SDP = H264_SDP + (
    "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/8000/1\r\n"
    "a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
    "indexdeltalength=3; config=1588\r\n")


def sender_report(ntp, rtp_ts):
    import struct

    whole = int(ntp)
    frac = int((ntp - whole) * (1 << 32))
    return struct.pack("!BBHIIII", 0x80, 200, 6, 7, whole, frac, rtp_ts & 0xFFFFFFFF) \
        + bytes(8)


def aac_packet(seq, ts, payload):
    import struct

    return struct.pack("!BBHIIHH", 0x80, 0x80 | 97, seq, ts & 0xFFFFFFFF, 9, 16,
                       len(payload) << 3) + payload


class AudioSyncTests(LiveWriterBase):
    """Audio and video are aligned by the sender's reports (RTCP SR) when they come,
    not by when their first packets arrived: here the audio arrives 300 ms behind the
    video it was captured with."""

    sdp = H264_AAC_SDP
    SKEW = 0.3
    V0, A0 = 1000, 5000  # the tracks' RTP timestamps at the sender's time zero
    N0 = 3_900_000_000.0  # the sender's NTP time zero

    def play_av(self, reports):
        source = self.sources[-1]
        if reports:
            source.feed(0, True, sender_report(self.N0, self.V0))
            source.feed(1, True, sender_report(self.N0, self.A0))
        j = 0
        for k, picture in enumerate(self.pictures):
            now = k * 0.04  # the sender's time of picture k, and its arrival
            while j * 0.128 + self.SKEW <= now:  # audio frame j, captured at j * 128 ms
                source.feed(1, False, aac_packet(j, self.A0 + j * 1024, bytes(20)))
                j += 1
            for packet in picture:
                source.feed(0, False, packet)
            self.clock.advance(0.04)

    @defer.inlineCallbacks
    def record(self, reports):
        yield self.recorder.start("cam1", 0, 0, 2)
        self.play_av(reports)
        writer = self.recorder.recordings[("cam1", 0, "main")].live
        aligned = writer.sr_aligned
        yield self.recorder.stop("cam1", 0, 0)
        out = yield self.segments()
        # where each file's first audio frame is: the muxer writes the first sample of
        # a fragmented track at 0 (no edit list), so it is read from the second one
        return aligned, [adts[1] - 0.128 for *_, adts in out]

    @defer.inlineCallbacks
    def test_sender_reports_align_audio_with_the_video_it_was_captured_with(self):
        aligned, first_audio = yield self.record(reports=True)
        self.assertEqual(aligned, 3)  # every segment
        # segment 1 starts with picture 0 (sender time 0): audio frame 0 at 0; segment 2
        # with picture 25 (1 s): frame 8 (1.024 s) at 24 ms; segment 3 with picture 75
        # (3 s): frame 24 (3.072 s) at 72 ms
        self.assertEqual([round(t, 3) for t in first_audio], [0.0, 0.024, 0.072])

    @defer.inlineCallbacks
    def test_without_reports_the_arrival_skew_stays(self):
        aligned, first_audio = yield self.record(reports=False)
        self.assertEqual(aligned, 0)
        # audio frame 0 arrived with picture 8 (0.32 s): placed there, 320 ms late
        self.assertEqual(round(first_audio[0], 3), 0.32)
