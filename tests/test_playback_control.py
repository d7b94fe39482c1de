"""
A playback's PLAY/PAUSE controller (``vss.recording.playback.Playback``) with a task.Clock and
fake children: bad or out-of-footage seeks are refused (457) and leave the playback as
it was; closing leaves no child, no spare and no timer behind.
"""

import json

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from vss.recording.playback import KILL_AFTER, Playback
from vss.rtsp.server import ControlError

T = 1_700_000_000_000


class ProcessDone(Exception):
    exitCode = 0


class FakeTransport:
    def __init__(self, child, reactor):
        self.child = child
        self.reactor = reactor
        self.pid = 1000 + len(reactor.spawned)
        self.signals = []
        self.written = []
        self.obeys = True  # exits on TERM

    def write(self, data):
        self.written.append(json.loads(data))

    def signalProcess(self, sig):  # noqa: N802 - Twisted's name
        self.signals.append(sig)
        if self.obeys or sig == "KILL":
            self.reactor.callLater(0.1, self.child.processEnded, Failure(ProcessDone()))
            self.obeys = False  # once


class FakeReactor(Clock):
    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, proto, executable, args, env):  # noqa: N802 - Twisted's name
        proto.transport = FakeTransport(proto, self)
        self.spawned.append(proto)
        proto.makeConnection = None
        return proto.transport


class FakeService:
    def __init__(self, reactor, footage):
        self.reactor = reactor
        self.footage = footage  # [(start, end)] ms
        self.issuer = type("I", (), {"issue": lambda self, *a, **k: "tok"})()
        self.env = {}
        self.cdn = type("C", (), {"media_base": "rtsp://127.0.0.1:1"})()
        self.python = "python"
        self.data_dir = "/nonexistent"
        self.children = set()
        self.spare = True
        self.rtsp = type("R", (), {"sessions": {}})()
        self.closed = []

    def footage_at(self, device, stream, at):
        for start, end in self.footage:
            if at < end:
                return max(start, at - at % 1000)  # keyframes each second
        return None

    def keyframe_at(self, device, stream, at):
        found = self.footage_at(device, stream, at)
        return at if found is None else found

    def _closed(self, pb):
        self.closed.append(pb)


class PlaybackControlTests(unittest.TestCase):
    def setUp(self):
        self.reactor = FakeReactor()
        self.svc = FakeService(self.reactor, [(T, T + 60_000)])
        self.pb = Playback(self.svc, "cam1", "main", T)
        self.pb.start(T, False)
        self.first = self.pb.child

    def sent(self, child):
        return child.transport.written

    def test_a_malformed_range_is_refused_and_the_playback_is_still_held(self):
        for bad in ("npt=abc-", "smpte=0:10-", "npt=1e999-", "clock=2023-"):
            with self.assertRaises(ControlError) as e:
                self.pb.play(None, bad)
            self.assertEqual(e.exception.status, 457)
        self.assertEqual(self.pb.state, "held")
        self.assertIs(self.pb.child, self.first)
        self.assertEqual(self.sent(self.first), [{"start": T, "go": False, "speed": 1.0}])
        self.assertEqual(self.pb.play(None, "npt=0-"), "npt=0.000-")
        self.assertEqual(self.sent(self.first)[-1], {"go": True, "speed": 1.0})
        self.assertEqual(self.pb.state, "playing")

    def test_a_seek_past_the_footage_is_refused_and_the_child_goes_on(self):
        self.pb.play(None, None)
        self.reactor.advance(1)  # the spare is started
        spare = self.pb.spare
        self.assertIsNotNone(spare)
        with self.assertRaises(ControlError) as e:
            self.pb.play(None, "npt=120-")  # the footage is 60 s long
        self.assertEqual(e.exception.status, 457)
        self.assertIs(self.pb.child, self.first)
        self.assertEqual(self.first.transport.signals, [])
        self.assertEqual(self.pb.seeks, 0)
        # a seek inside it takes the spare, from the keyframe before the time asked
        self.assertEqual(self.pb.play(None, "npt=30.5-"), "npt=30.000-")
        self.assertIs(self.pb.child, spare)
        self.assertEqual(self.first.transport.signals, ["TERM"])
        self.assertEqual(self.sent(spare), [{"start": T + 30_500, "go": True, "speed": 1.0}])

    def test_scale_sets_the_speed_of_the_child_and_of_the_next_ones(self):
        for bad in ("0", "-1", "9", "abc", "nan", "inf", "0.1"):
            with self.assertRaises(ControlError) as e:
                self.pb.play(None, None, bad)
            self.assertEqual(e.exception.status, 456)
        self.assertEqual(self.pb.state, "held")
        self.assertEqual(self.pb.speed, 1.0)
        self.pb.play(None, None, "2")  # the first PLAY: it goes, at 2x
        self.assertEqual(self.sent(self.first)[-1], {"go": True, "speed": 2.0})
        self.pb.play(None, None, "0.5")  # while it plays: the child changes its pace
        self.assertEqual(self.sent(self.first)[-1], {"speed": 0.5})
        self.assertIs(self.pb.child, self.first)
        self.reactor.advance(1)
        self.pb.play(None, "npt=10-", "4")  # a seek at 4x: the new child starts so
        self.assertEqual(self.sent(self.pb.child), [{"start": T + 10_000, "go": True,
                                                     "speed": 4.0}])
        self.pb.pause(None)
        self.pb.play(None, None)  # a resume keeps the speed
        self.assertEqual(self.sent(self.pb.child)[-1]["speed"], 4.0)

    def test_close_leaves_no_child_and_no_timer(self):
        self.pb.play(None, None)  # arms the spare's start
        self.first.transport.obeys = False  # ignores TERM: killed after KILL_AFTER
        self.pb.close()
        self.assertEqual(self.svc.closed, [self.pb])
        # nothing but the KILL of the child that ignores TERM is left to run
        self.assertEqual([c.func.__name__ for c in self.reactor.getDelayedCalls()],
                         ["stop"])
        self.reactor.advance(KILL_AFTER + 1)
        self.assertEqual(self.first.transport.signals, ["TERM", "KILL"])
        self.reactor.advance(1)
        self.assertTrue(all(c.ended for c in self.reactor.spawned))
        self.assertIsNone(self.pb.spare)
        self.assertEqual(self.svc.children, set())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        with self.assertRaises(ControlError):
            self.pb.play(None, None)  # ended

    def test_a_child_that_writes_garbage_is_not_a_crash(self):
        from vss.recording.playback import MAX_LINE

        child = self.first
        child.outReceived(b"y" * (MAX_LINE + 10))
        self.assertLessEqual(len(child.buffer), MAX_LINE)
        child.outReceived(b"\n[1]\n{\"event\": \"key\"}\n"
                          b"{\"event\": \"key\", \"out_ms\": \"x\", \"at\": 1}\n")
        self.assertEqual(child.keys, [])
        child.outReceived(b'{"event": "key", "out_ms": 0, "at": %d}\n' % T)
        self.assertEqual(child.keys, [(0, T)])
        self.flushLoggedErrors()
