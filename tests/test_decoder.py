"""
``vss-decoder`` in isolation (vss.cu.decoder): the decoding loop counts frames and
errors (a fake container instead of FFmpeg), a decoder follows its wall state (MEDIA_OPEN
for a new tile, MEDIA_CLOSE for the one it replaced, nothing for an older state),
describes itself again on a new link with what it showed, and reports its tiles. The
real thing (RTSP, PyAV) runs in tests/test_walls_e2e.py.
"""

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from vss.cu import decoder as dec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    MediaUrl,
    MsgType,
    Stream,
    Tile,
    TileState,
    WallLayout,
    WallState,
)


class FakeFrame:
    pass


class FakePacket:
    def __init__(self, frames=1, error=None):
        self.frames = frames
        self.error = error

    def decode(self):
        if self.error:
            raise ValueError(self.error)
        return [FakeFrame() for _ in range(self.frames)]


class FakeContainer:
    def __init__(self, packets, video=True):
        self.packets = packets
        self.streams = type("S", (), {"video": ["v"] if video else []})()
        self.closed = False

    def demux(self, stream):
        yield from self.packets

    def close(self):
        self.closed = True


class Recorder:
    """Stands for the decoder: collects first frames."""

    def __init__(self):
        self.firsts = []

    def first_frame(self, player):
        self.firsts.append(player.tile)


def player(owner=None):
    return dec.Player(owner or Recorder(), 2, "cam1", 0, 0, 1, 0.0)


class DecodeTests(unittest.SynchronousTestCase):
    def test_frames_and_errors_are_counted(self):
        owner = Recorder()
        p = player(owner)
        box = FakeContainer([FakePacket(0), FakePacket(1), FakePacket(error="bad slice"),
                             FakePacket(2)])
        seen = {}

        def opener(url, options, timeout):
            seen.update(url=url, options=options)
            return box

        dec.decode("rtsp://h/live/cam1/main?token=t", p, opener=opener)
        self.assertEqual((p.frames, p.errors), (3, 2))  # a bad packet, then the stream ended
        self.assertEqual(p.last_error, "the stream ended")
        self.assertEqual(owner.firsts, [2])
        self.assertIsNotNone(p.first_frame)
        self.assertEqual(seen["options"]["rtsp_transport"], "tcp")
        self.assertTrue(box.closed)

    def test_a_stopped_player_ends_quietly(self):
        p = player()
        p.stop()
        dec.decode("rtsp://h/x", p, opener=lambda *a, **k: FakeContainer([FakePacket(1)]))
        self.assertEqual((p.frames, p.errors), (0, 0))

    def test_open_failure_and_no_video(self):
        p = player()

        def refuse(*a, **k):
            raise OSError("connection refused")

        dec.decode("rtsp://h/x", p, opener=refuse)
        self.assertEqual(p.errors, 1)
        self.assertIn("connection refused", p.last_error)
        p = player()
        dec.decode("rtsp://h/x", p, opener=lambda *a, **k: FakeContainer([], video=False))
        self.assertEqual(p.last_error, "the stream has no video")


def state(version, *tiles, node="node-b"):
    return WallState(
        wall_id="dec1", node_id=node, kind=5, layout=WallLayout.FOUR,
        tiles=[Tile(x=0, y=0, width=5000, height=5000)] * 4,
        assignments=[TileState(tile=t, device_id=d, channel=0, stream=Stream.MAIN, tour=[],
                               dwell=0, tour_index=0, since=0, frames=0, errors=0,
                               last_error="") for t, d in tiles],
        version=version)


class DecoderTests(unittest.TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.started = []
        self.d = dec.Decoder(self.reactor, "tcp:127.0.0.1:1", "dec1", "pw", 4,
                             decode_fn=lambda url, p: self.started.append((url, p.tile)))
        self.requests = []

        def request(type, body, timeout=None):
            d = defer.Deferred()
            self.requests.append((type, body, d))
            return d

        self.d.client.request = request
        self.d.client.link = object()  # logged in

    def answer(self, type, body):
        for t, b, d in self.requests:
            if t == type and not d.called:
                d.callback(_Msg(body))
                return b
        raise AssertionError(f"no {type!r} request waiting: {self.requests}")

    def join(self):
        for p in self.d.players.values():
            if p.thread is not None:
                p.thread.join(5)

    def test_follows_its_state(self):
        self.d.apply(state(2, (1, "cam1")))
        opened = self.answer(MsgType.MEDIA_OPEN, MediaUrl(url="rtsp://h/live/cam1/main?t=1",
                                                          session_id="s1", expires=0))
        self.assertEqual(opened.device_id, "cam1")
        self.join()
        # it asks the SS to start from the kept GOP (no wait for the next keyframe)
        self.assertEqual(self.started, [("rtsp://h/live/cam1/main?t=1&start=gop", 1)])
        # an older state (a late answer) changes nothing
        self.d.apply(state(1))
        self.assertEqual(list(self.d.players), [1])
        # tile 1 gets another camera: the old session is closed, the new one opened
        self.d.apply(state(3, (1, "cam2")))
        closes = [b for t, b, _ in self.requests if t == MsgType.MEDIA_CLOSE]
        self.assertEqual([c.session_id for c in closes], ["s1"])
        opened = self.answer(MsgType.MEDIA_OPEN, MediaUrl(url="rtsp://h/live/cam2/main?t=2",
                                                          session_id="s2", expires=0))
        self.assertEqual(opened.device_id, "cam2")
        # cleared
        self.d.apply(state(4))
        self.assertEqual(self.d.players, {})

    def test_describes_itself_again_on_a_new_link(self):
        self.d.apply(state(5, (0, "cam1"), (3, "cam2")))
        self.d.client.registered = object()
        self.d.tick()
        describe = [b for t, b, _ in self.requests if t == MsgType.WALL_DESCRIBE][-1]
        self.assertEqual((describe.wall_id, describe.layout), ("", 4))
        self.assertEqual([(a.tile, a.device_id) for a in describe.assignments],
                         [(0, "cam1"), (3, "cam2")])
        count = len(self.requests)
        self.d.tick()  # the same link: no describe again
        self.assertFalse(any(t == MsgType.WALL_DESCRIBE for t, _, _ in self.requests[count:]))

    def test_reports_its_tiles(self):
        self.d.apply(state(2, (1, "cam1")))
        self.d.players[1].frames = 40
        self.d.players[1].open_failed = False
        self.d.report()
        (report,) = [b for t, b, _ in self.requests if t == MsgType.WALL_REPORT]
        self.assertEqual([(r.tile, r.device_id, r.frames) for r in report.tiles],
                         [(1, "cam1", 40)])

    def test_a_failed_open_is_tried_again(self):
        self.d.apply(state(2, (1, "cam1")))
        _, _, d = self.requests[-1]
        d.errback(VssError(ResultCode.DEVICE_OFFLINE, "offline"))
        self.assertEqual(self.d.players[1].errors, 1)
        self.d.report()
        opens = [b for t, b, _ in self.requests if t == MsgType.MEDIA_OPEN]
        self.assertEqual(len(opens), 2)


class _Msg:
    def __init__(self, body):
        self.body = body
