"""
Playback of recordings end to end: a real ``vss-pu`` publishes (H.264, GOP 2 s at 25
fps), the node records it in 4-second segments, a CU asks for playback from a time in the
middle of a segment and PyAV, as the player, decodes from the rtsp:// URL it got.

Where the player is in the footage is found by identity, not by clock: the same H.264
bytes decode to the same pixels, so each frame of the recorded files is hashed with its
wall-clock time (segment start + its time in the file) and the player's frames are looked
up in that table.
"""

import datetime
import hashlib
import os

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import Action, MediaOpen, MsgType, Purpose, Role
from vss.recording.playback import parse_range
from vss.testing.platform import start_platform, verifier, wait_until
from vss.testing.rawrtsp import RawRTSP

try:
    import av
except ImportError:  # pragma: no cover - av is a dependency
    av = None

GOP_MS = 2000
FRAME_MS = 40


def frame_key(frame):
    return hashlib.sha1(bytes(frame.planes[0])).hexdigest()


def index_segments(paths_and_starts):
    """Blocking: {hash of a decoded frame: wall-clock ms} over the recorded files."""
    table = {}
    for path, start_ms in paths_and_starts:
        with av.open(path) as c:
            for frame in c.decode(video=0):
                table.setdefault(frame_key(frame), start_ms + int(frame.time * 1000))
    return table


def keyframe_walls(paths_and_starts):
    """Blocking: the wall-clock ms of every keyframe of the recorded files (as in
    ``index_segments``)."""
    walls = []
    for path, start_ms in paths_and_starts:
        with av.open(path) as c:
            walls.extend(start_ms + int(frame.time * 1000) for frame in c.decode(video=0)
                         if frame.key_frame)
    return walls


def play(url, count=5, seek_s=None):
    """Blocking: keys of the first ``count`` frames; with ``seek_s``, then a seek (PAUSE
    and PLAY with Range npt) and the keys and times of ``count`` frames after it."""
    before, after = [], []
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=20) as c:
        for frame in c.decode(video=0):
            before.append(frame_key(frame))
            if len(before) >= count:
                break
        if seek_s is not None:
            c.seek(int(seek_s * 1_000_000))
            for frame in c.decode(video=0):
                after.append((frame_key(frame), frame.time))
                if len(after) >= count:
                    break
    return before, after


def play_to_end(url):
    """Blocking: (key, time) of every frame until the server ends the stream."""
    out = []
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=20) as c:
        for frame in c.decode(video=0):
            out.append((frame_key(frame), frame.time))
    return out


def write_gop_footage(data_dir, device, start_ms, segments=2, seconds=4):
    """Blocking: ``segments`` fMP4 files of ``seconds`` s, 320x240 25 fps H.264 with a
    keyframe every 2 s exactly, written as the recorder writes them; their Segments."""
    from fractions import Fraction

    from vss.recording.catalogue import Segment, scan_fmp4, segment_name

    src = av.open("testsrc2=size=320x240:rate=25", format="lavfi")
    frames = src.decode(video=0)
    out_dir = os.path.join(data_dir, "recordings", device, "main")
    os.makedirs(out_dir, exist_ok=True)
    made = []
    for i in range(segments):
        seg_start = start_ms + i * seconds * 1000
        rel = os.path.join("recordings", device, "main", segment_name(seg_start) + ".mp4")
        with av.open(os.path.join(data_dir, rel), "w", format="mp4", options={
                "movflags": "frag_keyframe+empty_moov+default_base_moof"}) as out:
            st = out.add_stream("libx264", rate=25)
            st.width, st.height, st.pix_fmt = 320, 240, "yuv420p"
            st.codec_context.time_base = Fraction(1, 25)
            st.options = {"preset": "ultrafast", "g": "50", "sc_threshold": "0", "bf": "0"}
            for n in range(seconds * 25):
                frame = next(frames).reformat(format="yuv420p")
                frame.pict_type = av.video.frame.PictureType.NONE
                frame.pts, frame.time_base = n, Fraction(1, 25)
                for packet in st.encode(frame):
                    out.mux(packet)
            for packet in st.encode(None):
                out.mux(packet)
        with open(os.path.join(data_dir, rel), "rb") as f:
            info = scan_fmp4(f)
        made.append(Segment(device, 0, "main", seg_start, seg_start + seconds * 1000,
                            info["size"], rel, info["fragments"]))
    src.close()
    return made


def open_playback(device_id, start_ms):
    return MediaOpen(device_id=device_id, channel=0, stream=0, purpose=Purpose.PLAYBACK,
                     start_time=start_ms, transport=0)


class ParseRangeTests(unittest.TestCase):
    def test_npt_and_clock(self):
        origin = 1_700_000_000_000
        self.assertEqual(parse_range("npt=12.5-", origin), origin + 12_500)
        self.assertEqual(parse_range("npt=0.000-", origin), origin)
        self.assertEqual(parse_range("npt=00:01:02.5-", origin), origin + 62_500)
        self.assertEqual(parse_range("clock=20231114T221320Z-", origin), origin)
        self.assertEqual(parse_range("clock=20231114T221320.250Z-", origin), origin + 250)
        for none in (None, "", "npt=now-", "npt=-3-", "clock=-"):
            self.assertIsNone(parse_range(none, origin))

    def test_a_malformed_or_absurd_range_is_refused(self):
        origin = 1_700_000_000_000
        for bad in ("npt=x-", "smpte=1:00:00-", "clock=yesterday-", "npt", "npt=nan-",
                    "npt=inf-", "npt=1e400-", "npt=99999999999-", "npt=1:99:00-",
                    "npt=a:b:c-", "npt=1:2-", "clock=20231114T221320.x5Z-",
                    "clock=99991399T000000Z-", "bogus=1-"):
            with self.assertRaises(ValueError, msg=bad):
                parse_range(bad, origin)


def describe(url):
    """The SDP of a DESCRIBE of ``url`` (blocking)."""
    c = RawRTSP(url)
    try:
        status, _, body = c.request("DESCRIBE", url, [("Accept", "application/sdp")])
        assert status == 200, status
        return body.decode()
    finally:
        c.close()


class PlaybackCommandTests(unittest.TestCase):
    def test_vssctl_playback_options(self):
        from vss.cu import ctl

        opts = ctl.Options()
        opts.parseOptions(["--node", "tcp:h:1", "--user", "u", "playback", "cam1", "--at",
                           "2026-01-05T08:00:00Z", "--stream", "sub"])
        type, body = ctl.build_request(opts.subCommand, opts.subOptions)
        self.assertEqual(type, MsgType.MEDIA_OPEN)
        self.assertEqual((body.device_id, body.purpose, body.start_time, body.stream),
                         ("cam1", Purpose.PLAYBACK, 1767600000000, 1))
        opts = ctl.Options()
        opts.parseOptions(["--node", "tcp:h:1", "--user", "u", "playback", "cam1", "--at",
                           "-10m"])
        import time

        ago = time.time() * 1000 - opts.subOptions["at_ms"]
        self.assertLess(abs(ago - 600_000), 5000)
        from twisted.python import usage

        for bad in (["playback", "cam1"], ["playback", "cam1", "--at", "yesterday"]):
            with self.assertRaises(usage.UsageError):
                ctl.Options().parseOptions(["--node", "tcp:h:1", "--user", "u"] + bad)


class PlaybackTests(unittest.TestCase):
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
        yield change(store.set_grant("user:alice", "cam-b", int(Action.VIEW | Action.RECORD)))
        yield change(store.set_grant("user:alice", "cam-x", int(Action.VIEW)))
        yield change(store.set_grant("user:bob", "cam-x", int(Action.VIEW)))
        self.node = yield self.p.start_node("node-b")
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s")

    @defer.inlineCallbacks
    def record(self, seconds, segment_seconds=4):
        """Record cam-b through the CDN module's recording interface; its segments."""
        from vss.cdn.service import CDNRecording

        rec = CDNRecording(self.node.cdn, self.node.recorder)
        yield rec.start("cam-b", 0, 0, segment_seconds)
        yield task.deferLater(reactor, seconds, lambda: None)
        yield rec.stop("cam-b", 0, 0)
        listing = yield self.node.recorder.catalogue.list("cam-b", "main", 0, 2**62)
        return listing["segments"]

    @defer.inlineCallbacks
    def test_playback_from_the_middle_of_a_segment_seeks_pauses_and_is_guarded(self):
        alice = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        bob = yield self.p.login("node-b", Role.CU, "bob", "bob-pw")
        # nothing recorded yet: NOT_FOUND; no view grant: FORBIDDEN
        with self.assertRaises(VssError) as e:
            yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-x", 1000), timeout=10)
        self.assertEqual(e.exception.code, ResultCode.NOT_FOUND)
        with self.assertRaises(VssError) as e:
            yield bob.request(MsgType.MEDIA_OPEN, open_playback("cam-b", 1000), timeout=10)
        self.assertEqual(e.exception.code, ResultCode.FORBIDDEN)

        segments = yield self.record(9.5)
        self.assertGreaterEqual(len(segments), 2, segments)
        data = self.node.settings.data_dir
        table = yield threads.deferToThread(
            index_segments, [(os.path.join(data, s.path), s.start_ms) for s in segments])
        first, last = segments[0], segments[-1]

        # a time in the middle of the first segment, between two frames
        asked = (first.start_ms + first.end_ms) // 2 // 40 * 40 + 20
        url = (yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-b", asked),
                                   timeout=20)).body.url
        self.assertRegex(url, r"^rtsp://127\.0\.0\.1:\d+/live/cam-b/pb-[0-9a-f]{16}\?token=")
        # the SDP gives the footage's length from the asked time: players show a seek bar
        sdp = yield threads.deferToThread(describe, url)
        self.assertIn(f"a=range:npt=0-{(last.end_ms - asked) / 1000:.3f}\r\n", sdp)
        # seek into the middle of the last segment: npt is relative to the asked time
        target = (last.start_ms + last.end_ms) // 2 // 40 * 40 + 20
        seek_s = (target - asked) / 1000
        before, after = yield threads.deferToThread(play, url, 5, seek_s)
        self.assertEqual(len(before), 5)
        self.assertIn(before[0], table, "the first frame played is not a recorded frame")
        shown = table[before[0]]
        self.assertLessEqual(shown, asked)
        self.assertGreater(shown, asked - GOP_MS - FRAME_MS)
        # frames follow each other as recorded
        self.assertEqual([table.get(k) for k in before],
                         [shown + FRAME_MS * i for i in range(5)])
        self.assertEqual(len(after), 5)
        self.assertIn(after[0][0], table)
        landed = table[after[0][0]]
        self.assertLessEqual(landed, target)
        self.assertGreater(landed, target - GOP_MS - FRAME_MS)
        # the player's clock follows the Range it asked: the frames it gets are
        # timed as recorded relative to that position
        self.assertLess(abs(after[1][1] - seek_s - (table[after[1][0]] - target) / 1000), 0.1)

        # vssctl playback prints a URL that plays from that time
        from io import StringIO

        from vss.cu import ctl

        opts = ctl.Options()
        when = datetime.datetime.fromtimestamp(asked / 1000, datetime.UTC)
        opts.parseOptions(["--node", f"tcp:127.0.0.1:{self.p.port('node-b', 'cu')}",
                           "--user", "alice", "playback", "cam-b", "--at",
                           when.isoformat().replace("+00:00", "Z")])
        out = StringIO()
        yield ctl.run_command(reactor, opts, "alice-pw", out)
        url3 = out.getvalue().strip()
        self.assertRegex(url3, r"^rtsp://127\.0\.0\.1:\d+/live/cam-b/pb-[0-9a-f]{16}\?token=")
        keys, _ = yield threads.deferToThread(play, url3, 1)
        self.assertLessEqual(table[keys[0]], asked)
        self.assertGreater(table[keys[0]], asked - GOP_MS - FRAME_MS)

        # across the last segment boundary to the end of the footage, with no gap
        near_end = segments[-2].end_ms - 600
        url4 = (yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-b", near_end),
                                    timeout=20)).body.url
        frames = yield threads.deferToThread(play_to_end, url4)
        walls = [table.get(k) for k, _ in frames]
        self.assertNotIn(None, walls)
        self.assertLessEqual(walls[0], near_end)
        self.assertGreater(walls[-1], segments[-1].start_ms + 200)
        self.assertTrue(all(abs(b - a - FRAME_MS) <= 2 for a, b in zip(walls[:-1], walls[1:], strict=True)),
                        [b - a for a, b in zip(walls[:-1], walls[1:], strict=True)])
        times = [t for _, t in frames]
        self.assertTrue(all(abs(b - a - 0.04) < 0.003 for a, b in zip(times[1:-1], times[2:], strict=True)),
                        times)
        last_frame = max(table.values())
        self.assertEqual(walls[-1], last_frame)

        # refused: no token, a token of another path, a forged token
        base, token = url.split("?token=")
        for bad in (base, base.replace("cam-b", "cam-x") + "?token=" + token,
                    base[:-4] + "0000?token=" + token, base + "?token=" + token[:-4] + "AAAA"):
            with self.assertRaises(Exception) as e:
                yield threads.deferToThread(play, bad, 1)
            self.assertTrue("401" in str(e.exception) or "404" in str(e.exception),
                            str(e.exception))
        # nothing at or after a time past the footage
        with self.assertRaises(VssError) as e:
            yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-b", last.end_ms + 5000),
                                timeout=10)
        self.assertEqual(e.exception.code, ResultCode.NOT_FOUND)

        # a raw client: PLAY with a clock Range, PAUSE, PLAY resumes where it paused
        url2 = (yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-b", first.start_ms),
                                    timeout=20)).body.url

        def raw(url):
            c = RawRTSP(url)
            try:
                c.start()
                # a Range that is malformed or past the footage is refused (457); the
                # playback is still there for the next PLAY
                refused = [c.request("PLAY", url, [("Range", r)])[0] for r in (
                    "npt=abc-", "smpte=0:00:01-", "npt=1e400-",
                    f"npt={(last.end_ms + 5000 - first.start_ms) / 1000:.3f}-")]
                at = datetime.datetime.fromtimestamp((first.start_ms + 4500) / 1000,
                                                     datetime.UTC)
                status, headers, _ = c.request(
                    "PLAY", url, [("Range", f"clock={at:%Y%m%dT%H%M%S}.{at.microsecond // 1000:03d}Z-")])
                played = c.packets(40)
                status2, _, _ = c.request("PAUSE", url)
                status3, headers3, _ = c.request("PLAY", url)
                resumed = c.packets(40)
                return (refused, status, headers, played, status2, status3, headers3,
                        resumed)
            finally:
                c.close()

        refused, status, headers, played, status2, status3, headers3, resumed = \
            yield threads.deferToThread(raw, url2)
        self.assertEqual(refused, [457, 457, 457, 457])
        self.assertEqual((status, status2, status3), (200, 200, 200))
        # the reply's Range is where the stream starts: the recorded keyframe at or
        # before the time asked, 4.5 s after the origin
        started = float(headers["range"][4:].rstrip("-"))
        self.assertLessEqual(started, 4.5)
        self.assertGreater(started, 4.5 - (GOP_MS + FRAME_MS) / 1000)
        keyframes = yield threads.deferToThread(
            keyframe_walls, [(os.path.join(data, s.path), s.start_ms) for s in segments])
        started_ms = first.start_ms + round(started * 1000)
        self.assertTrue(any(abs(started_ms - k) <= 1 for k in keyframes),
                        (started_ms, keyframes))
        # resumed from the keyframe at or before where it paused
        paused_at = float(headers3["range"][4:].rstrip("-"))
        self.assertGreaterEqual(paused_at, started)
        self.assertLess(paused_at, started + 5)
        # the resumed stream goes on in the same RTP timeline, forward
        self.assertGreater((resumed[0] - played[-1]) & 0xFFFFFFFF, 0)
        self.assertLess((resumed[0] - played[-1]) & 0xFFFFFFFF, 90000)

        # the playbacks end some seconds after their last reader left
        yield wait_until(reactor, lambda: not self.node.cdn.playback.playbacks,
                         timeout=self.node.cdn.linger + 10, what="the playbacks to end")
        self.assertFalse([p for p in self.node.rtsp.sources if "/pb-" in p])
        # a first PLAY starts the child prepared at MEDIA_OPEN; children were restarted
        # only for the PyAV seek, the clock Range and the resume
        self.assertEqual(self.node.cdn.playback.counters, {"opened": 4, "seeks": 3})

    @defer.inlineCallbacks
    def test_a_start_and_a_seek_inside_a_gop_begin_at_the_keyframe_before(self):
        data = self.node.settings.data_dir
        start = (int(reactor.seconds()) - 600) * 1000
        segments = yield threads.deferToThread(write_gop_footage, data, "cam-x", start)
        for seg in segments:
            self.assertEqual([k[0] for k in seg.keyframes], [0, 2000])
            yield self.node.recorder.catalogue.add(seg)
        table = yield threads.deferToThread(
            index_segments, [(os.path.join(data, s.path), s.start_ms) for s in segments])
        alice = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        asked = start + 3500  # 1.5 s into the second GOP of the first segment
        url = (yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-x", asked),
                                   timeout=20)).body.url
        target = segments[1].start_ms + 1200  # inside the first GOP of the second one
        before, after = yield threads.deferToThread(play, url, 5, (target - asked) / 1000)
        self.assertEqual([table.get(k) for k in before],
                         [start + 2000 + FRAME_MS * i for i in range(5)])
        self.assertEqual([table.get(k) for k, _ in after],
                         [segments[1].start_ms + FRAME_MS * i for i in range(5)])

    @defer.inlineCallbacks
    def test_a_segment_that_overlaps_the_next_ends_where_the_next_starts(self):
        """The second segment says it started 228 ms before the first ended (a salvaged
        segment named by an older version, to the second): the player sees the first
        up to that start, then the whole second, each picture once, in order."""
        data = self.node.settings.data_dir
        start = (int(reactor.seconds()) - 600) * 1000
        first, second = yield threads.deferToThread(write_gop_footage, data, "cam-x", start)
        second = second._replace(start_ms=second.start_ms - 228, end_ms=second.end_ms - 228)
        for seg in (first, second):
            yield self.node.recorder.catalogue.add(seg)
        table = yield threads.deferToThread(
            index_segments, [(os.path.join(data, s.path), s.start_ms)
                             for s in (first, second)])
        alice = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        url = (yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-x", start + 2000),
                                   timeout=20)).body.url
        frames = yield threads.deferToThread(play_to_end, url)
        self.assertEqual([table.get(k) for k, _ in frames],
                         [start + 2000 + FRAME_MS * i for i in range(45)]
                         + [second.start_ms + FRAME_MS * i for i in range(100)])
        times = [t for _, t in frames if t is not None]  # None before the first report
        self.assertGreater(len(times), 100)
        self.assertEqual(times, sorted(set(times)))
