"""
The RGM's recording task manager (vss/recording/tasks.py): split, stack and queue with a
task.Clock, persistence and resume after a restart, and the CU's RECORD_START /
RECORD_STOP / RECORD_STATUS over the in-memory node harness.
"""

import json
import os

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from vss.interfaces import IRecorder
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    MsgType,
    RecordingState,
    RecordMode,
    RecordRequest,
    RecordSettings,
    RecordStatus,
    ScheduleSlot,
    Stream,
)
from vss.recording.tasks import (
    Capacity,
    Queue,
    RecordingManager,
    Stack,
    UnsupportedRecorder,
    schedule_windows,
    split,
    split_schedule,
)
from vss.testing.harness import ALL, NodeHarness

MONDAY = 1_704_067_200  # 2024-01-01T00:00:00Z, a Monday
H = 3600
MAIN, SUB = Stream.MAIN, Stream.SUB
RUNNING, QUEUED, STOPPED = RecordingState.RUNNING, RecordingState.QUEUED, RecordingState.STOPPED


@implementer(IRecorder)
class FakeRecorder:
    """An IRecorder that remembers what it was asked; starts can be held or failed."""

    def __init__(self, hold=False, fail=None):
        self.calls = []
        self.running = set()
        self.hold = hold
        self.fail = fail
        self.held = []

    def start(self, device_id, channel, stream, segment_seconds):
        self.calls.append(("start", device_id, channel, stream, segment_seconds))
        if self.fail is not None:
            return defer.fail(VssError(self.fail, "no"))
        self.running.add((device_id, channel, stream))
        if self.hold:
            d = defer.Deferred()
            self.held.append(d)
            return d
        return defer.succeed(None)

    def stop(self, device_id, channel, stream):
        self.calls.append(("stop", device_id, channel, stream))
        self.running.discard((device_id, channel, stream))
        return defer.succeed(None)

    def starts(self):
        return [c[1:4] for c in self.calls if c[0] == "start"]

    def stops(self):
        return [c[1:4] for c in self.calls if c[0] == "stop"]


def fired(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def settings(device="cam1", channel=0, mode=RecordMode.SCHEDULE, stream=MAIN, segment=600,
             slots=(), post=10, pre=5):
    return RecordSettings(
        device_id=device, channel=channel, mode=mode, stream=stream, segment_seconds=segment,
        retention_days=7, quota_mb=0, pre_event_seconds=pre, post_event_seconds=post,
        schedule=[ScheduleSlot(day=d, start_minute=s, end_minute=e) for d, s, e in slots])


# ---------------------------------------------------------------------------
# split


class SplitTests(unittest.SynchronousTestCase):
    def test_segments_are_cut_on_the_configured_boundaries(self):
        start = MONDAY + 8 * H + 5 * 60  # 08:05
        self.assertEqual(split(start, start + 25 * 60, 600), [
            (start, MONDAY + 8 * H + 600),  # 08:05-08:10: up to the first boundary
            (MONDAY + 8 * H + 600, MONDAY + 8 * H + 1200),
            (MONDAY + 8 * H + 1200, MONDAY + 8 * H + 1800),  # 08:20-08:30
        ])

    def test_a_task_crossing_an_edge_is_cut_there(self):
        start = MONDAY
        edge = MONDAY + 250
        self.assertEqual(split(start, start + 600, 600, edges=[edge, MONDAY + 5000]),
                         [(start, edge), (edge, start + 600)])

    def test_a_long_manual_recording_becomes_many_segment_tasks(self):
        segments = split(MONDAY + 17, MONDAY + 17 + 24 * H, 300)
        self.assertEqual(len(segments), 24 * 12 + 1)
        for (a, b), (c, _) in zip(segments, segments[1:], strict=False):
            self.assertEqual(b, c)  # no gap, no overlap
            self.assertLessEqual(b - a, 300)
        self.assertTrue(all(b % 300 == 0 for _, b in segments[:-1]))

    def test_weekly_slots_become_utc_windows(self):
        slots = [ScheduleSlot(day=0, start_minute=480, end_minute=1080),  # Mon 08:00-18:00
                 ScheduleSlot(day=6, start_minute=1320, end_minute=1440),  # Sun 22:00-24:00
                 ScheduleSlot(day=0, start_minute=0, end_minute=60)]  # Mon 00:00-01:00
        windows = schedule_windows(slots, MONDAY, MONDAY + 7 * 86400 + 10 * H)
        self.assertEqual(windows, [
            (MONDAY, MONDAY + H),
            (MONDAY + 8 * H, MONDAY + 18 * H),
            # Sunday 22:00 to the next Monday 01:00: the slots touch, so one window
            (MONDAY + 6 * 86400 + 22 * H, MONDAY + 7 * 86400 + H),
            (MONDAY + 7 * 86400 + 8 * H, MONDAY + 7 * 86400 + 10 * H),  # clipped to the range
        ])

    def test_a_schedule_is_split_and_cut_at_its_edges(self):
        slots = [ScheduleSlot(day=0, start_minute=8 * 60 + 5, end_minute=8 * 60 + 25)]
        self.assertEqual(split_schedule(slots, MONDAY, MONDAY + 86400, 600), [
            (MONDAY + 8 * H + 300, MONDAY + 8 * H + 600),
            (MONDAY + 8 * H + 600, MONDAY + 8 * H + 1200),
            (MONDAY + 8 * H + 1200, MONDAY + 8 * H + 1500),
        ])


# ---------------------------------------------------------------------------
# stack and queue, as plain objects


class StackQueueTests(unittest.SynchronousTestCase):
    def test_stack_counts_references(self):
        s = Stack(("cam1", 0, MAIN))
        self.assertTrue(s.add("schedule"))
        self.assertFalse(s.add("manual:alice"))
        self.assertFalse(s.add("manual:alice"))  # the same reason twice is one reference
        self.assertFalse(s.remove("schedule"))
        self.assertFalse(s.remove("event"))  # not held: nothing changes
        self.assertTrue(s.remove("manual:alice"))
        self.assertFalse(s.wanted)

    def test_queue_orders_by_priority_then_arrival(self):
        q = Queue(Capacity(max_streams=1))
        running = Stack(("a", 0, MAIN), reasons={"schedule": None}, order=1)
        self.assertTrue(q.admit(running))
        sched = Stack(("b", 0, MAIN), reasons={"schedule": None}, order=2)
        manual = Stack(("c", 0, MAIN), reasons={"manual:x": None}, order=3)
        event = Stack(("d", 0, MAIN), reasons={"event": 9.0}, order=4)
        manual2 = Stack(("e", 0, MAIN), reasons={"manual:y": None}, order=5)
        for s in (sched, manual, event, manual2):
            self.assertFalse(q.admit(s))
        self.assertEqual([s.key[0] for s in q.ordered()], ["d", "c", "e", "b"])
        self.assertEqual(q.position(("b", 0, MAIN)), 4)
        self.assertEqual([s.key[0] for s in q.release(("a", 0, MAIN))], ["d"])

    def test_write_rate_limits_too(self):
        q = Queue(Capacity(max_streams=10, max_write_mbps=9.0, main_mbps=4.0, sub_mbps=1.0))
        self.assertTrue(q.admit(Stack(("a", 0, MAIN), order=1)))
        self.assertTrue(q.admit(Stack(("b", 0, MAIN), order=2)))
        self.assertFalse(q.admit(Stack(("c", 0, MAIN), order=3)))  # 12 Mb/s > 9
        self.assertFalse(q.admit(Stack(("d", 0, SUB), order=4)))  # fits, but waits its turn


# ---------------------------------------------------------------------------
# The manager


class ManagerBase(unittest.TestCase):
    capacity = Capacity()

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(MONDAY)
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.recorder = FakeRecorder()
        self.m = self.manager()

    def manager(self, recorder=None):
        m = RecordingManager(self.clock, recorder or self.recorder, self.dir, self.capacity)
        m.startService()
        self.addCleanup(m.stopService)
        return m

    def state(self, device="cam1", channel=0, stream=MAIN):
        return self.m.state_of((device, channel, stream))


class StackTests(ManagerBase):
    def test_schedule_two_users_and_an_event_share_one_recording(self):
        self.m.apply_settings(settings(slots=[(0, 0, 60)], post=30))  # Monday 00:00-01:00
        fired(self.m.start_manual("cam1", 0, MAIN, "alice"))
        fired(self.m.start_manual("cam1", 0, MAIN, "bob"))
        fired(self.m.event("cam1", 0))
        self.assertEqual(self.recorder.starts(), [("cam1", 0, MAIN)])
        self.assertEqual(self.state()["reasons"],
                         ["event", "manual:alice", "manual:bob", "schedule"])
        self.clock.advance(30)  # the event's post seconds run out
        fired(self.m.stop_manual("cam1", 0, MAIN, "alice"))
        self.clock.advance(H)  # the schedule slot ends
        self.assertEqual(self.state()["reasons"], ["manual:bob"])
        self.assertEqual(self.recorder.stops(), [])
        info = fired(self.m.stop_manual("cam1", 0, MAIN, "bob"))
        self.assertEqual(info["state"], STOPPED)
        self.assertEqual(self.recorder.stops(), [("cam1", 0, MAIN)])
        self.assertEqual(len(self.recorder.starts()), 1)

    def test_schedule_edges_start_and_stop_the_recording(self):
        self.m.apply_settings(settings(slots=[(0, 8 * 60, 9 * 60)], segment=600))
        self.assertEqual(self.recorder.calls, [])
        self.clock.advance(8 * H - 1)
        self.assertEqual(self.recorder.calls, [])
        self.clock.advance(1)
        self.assertEqual(self.recorder.calls, [("start", "cam1", 0, MAIN, 600)])
        self.assertEqual(self.state()["since"], MONDAY + 8 * H)
        self.clock.advance(H)
        self.assertEqual(self.recorder.stops(), [("cam1", 0, MAIN)])
        self.assertEqual(self.m.status(), [])
        # and again a week later
        self.clock.advance(7 * 86400 - H)
        self.assertEqual(len(self.recorder.starts()), 2)

    def test_a_running_segment_is_cut_at_the_schedule_edge(self):
        self.m.apply_settings(settings(slots=[(0, 0, 25)], segment=600))  # 00:00-00:25
        fired(self.m.start_manual("cam1", 0, MAIN, "alice"))
        self.clock.advance(1210)
        self.assertEqual(self.state()["segment"], (MONDAY + 1200, MONDAY + 1500))
        self.clock.advance(300)  # past the edge: the manual recording goes on
        self.assertEqual(self.state()["segment"], (MONDAY + 1500, MONDAY + 1800))
        self.assertEqual(self.state()["reasons"], ["manual:alice"])

    def test_continuous_then_off(self):
        self.m.apply_settings(settings(mode=RecordMode.CONTINUOUS, stream=SUB))
        self.assertEqual(self.state(stream=SUB)["state"], RUNNING)
        self.m.apply_settings(settings(mode=RecordMode.CONTINUOUS, stream=SUB))
        self.assertEqual(len(self.recorder.starts()), 1)  # the same settings again: no restart
        self.m.apply_settings(settings(mode=RecordMode.OFF))
        self.assertEqual(self.recorder.stops(), [("cam1", 0, SUB)])

    def test_events_extend_and_expire(self):
        self.m.apply_settings(settings(mode=RecordMode.EVENT, post=20))
        fired(self.m.event("cam1", 0))
        self.clock.advance(15)
        fired(self.m.event("cam1", 0))  # a second alarm: now until +35
        self.clock.advance(15)
        self.assertEqual(self.state()["state"], RUNNING)
        self.clock.advance(5)
        self.assertEqual(self.state()["state"], STOPPED)
        self.assertEqual(len(self.recorder.starts()), 1)

    def test_stopping_someone_elses_manual_recording_is_refused(self):
        fired(self.m.start_manual("cam1", 0, MAIN, "alice"))
        f = fired(self.m.stop_manual("cam1", 0, MAIN, "bob"))
        self.assertEqual(f.value.code, ResultCode.NOT_FOUND)
        self.assertEqual(self.state()["state"], RUNNING)

    def test_a_recorder_failure_reaches_the_asker_and_leaves_nothing_behind(self):
        self.m = self.manager(FakeRecorder(fail=ResultCode.DEVICE_OFFLINE))
        f = fired(self.m.start_manual("cam1", 0, MAIN, "alice"))
        self.assertEqual(f.value.code, ResultCode.DEVICE_OFFLINE)
        self.assertEqual(self.m.status(), [])
        self.assertEqual(self.m.queue.running, {})

    def test_a_schedule_whose_device_is_offline_is_tried_again_until_it_starts(self):
        recorder = FakeRecorder(fail=ResultCode.DEVICE_OFFLINE)
        self.m = self.manager(recorder)
        self.m.apply_settings(settings(slots=[(0, 0, 24 * 60)]))  # all Monday
        self.assertEqual(len(recorder.starts()), 1)
        self.assertEqual(self.state()["reasons"], ["schedule"])
        self.assertEqual(self.state()["state"], QUEUED)
        self.assertEqual(self.m.queue.running, {})  # no capacity held while it waits
        self.clock.advance(2)  # retry_delay
        self.assertEqual(len(recorder.starts()), 2)
        self.clock.advance(3)
        self.assertEqual(len(recorder.starts()), 2)  # the delay doubled: 4 s
        self.clock.advance(1)
        self.assertEqual(len(recorder.starts()), 3)
        recorder.fail = None  # the PU comes online
        self.clock.advance(8)
        self.assertEqual(len(recorder.starts()), 4)
        self.assertEqual(self.state()["state"], RUNNING)
        self.clock.advance(3600)
        self.assertEqual(len(recorder.starts()), 4)  # running: no more attempts

    def test_a_manual_request_among_standing_reasons_fails_but_the_schedule_waits(self):
        recorder = FakeRecorder(fail=ResultCode.DEVICE_OFFLINE)
        self.m = self.manager(recorder)
        self.m.apply_settings(settings(slots=[(0, 0, 24 * 60)]))
        f = fired(self.m.start_manual("cam1", 0, MAIN, "alice"))
        self.assertEqual(f.value.code, ResultCode.DEVICE_OFFLINE)
        self.assertEqual(self.state()["reasons"], ["schedule"])
        self.m.apply_settings(settings(mode=RecordMode.OFF))  # off: the retries end
        self.assertEqual(self.m.status(), [])
        n = len(recorder.starts())
        self.clock.advance(600)
        self.assertEqual(len(recorder.starts()), n)

    def test_stop_while_starting_stops_once_started(self):
        self.m = self.manager(FakeRecorder(hold=True))
        d = self.m.start_manual("cam1", 0, MAIN, "alice")
        stopped = self.m.stop_manual("cam1", 0, MAIN, "alice")
        self.assertNoResult(stopped)
        self.assertEqual(self.m.recorder.stops(), [])
        self.m.recorder.held[0].callback(None)
        self.assertEqual(fired(d)["state"], STOPPED)
        fired(stopped)
        self.assertEqual(self.m.recorder.stops(), [("cam1", 0, MAIN)])

    def test_the_unsupported_recorder_says_so(self):
        verifyObject(IRecorder, UnsupportedRecorder())
        verifyObject(IRecorder, self.recorder)
        self.m = self.manager(UnsupportedRecorder())
        f = fired(self.m.start_manual("cam1", 0, MAIN, "alice"))
        self.assertEqual(f.value.code, ResultCode.NOT_SUPPORTED)


class PreRecorder(FakeRecorder):
    """A recorder with a pre-event buffer."""

    def prebuffer(self, device_id, channel, stream, seconds):
        self.calls.append(("prebuffer", device_id, channel, stream, seconds))
        return defer.succeed(None)

    def unprebuffer(self, device_id, channel, stream):
        self.calls.append(("unprebuffer", device_id, channel, stream))
        return defer.succeed(None)

    def buffers(self):
        return [c for c in self.calls if c[0] in ("prebuffer", "unprebuffer")]


class PreEventTests(ManagerBase):
    def setUp(self):
        super().setUp()
        self.m.stopService()
        self.recorder = PreRecorder()
        self.m = self.manager()

    def test_event_mode_keeps_a_pre_event_buffer_while_it_lasts(self):
        self.m.apply_settings(settings(mode=RecordMode.EVENT, pre=5))
        self.m.apply_settings(settings(mode=RecordMode.EVENT, pre=5))  # no change
        self.m.apply_settings(settings(mode=RecordMode.EVENT, pre=8, stream=SUB))
        self.m.apply_settings(settings(mode=RecordMode.CONTINUOUS))
        self.m.apply_settings(settings(mode=RecordMode.EVENT, pre=0))
        self.assertEqual(self.recorder.buffers(), [
            ("prebuffer", "cam1", 0, MAIN, 5), ("unprebuffer", "cam1", 0, MAIN),
            ("prebuffer", "cam1", 0, SUB, 8), ("unprebuffer", "cam1", 0, SUB)])

    def test_the_buffer_is_kept_again_after_a_restart_and_let_go_at_stop(self):
        self.m.apply_settings(settings(mode=RecordMode.EVENT, pre=3))
        self.m.stopService()
        self.assertEqual(self.recorder.buffers()[-1], ("unprebuffer", "cam1", 0, MAIN))
        self.recorder = PreRecorder()
        self.m = self.manager()
        self.assertEqual(self.recorder.buffers(), [("prebuffer", "cam1", 0, MAIN, 3)])
        fired(self.m.event("cam1", 0))  # the event records as before
        self.assertEqual(self.recorder.starts(), [("cam1", 0, MAIN)])


class QueueTests(ManagerBase):
    capacity = Capacity(max_streams=2, max_write_mbps=100)

    def test_tasks_past_capacity_wait_and_start_when_capacity_frees(self):
        fired(self.m.start_manual("a", 0, MAIN, "u"))
        fired(self.m.start_manual("b", 0, MAIN, "u"))
        info = fired(self.m.start_manual("c", 0, MAIN, "u"))
        self.assertEqual((info["state"], info["queue_position"]), (QUEUED, 1))
        self.assertEqual(self.recorder.starts(), [("a", 0, MAIN), ("b", 0, MAIN)])
        fired(self.m.stop_manual("a", 0, MAIN, "u"))
        self.assertEqual(self.recorder.starts()[-1], ("c", 0, MAIN))
        self.assertEqual(self.state("c")["state"], RUNNING)

    def test_event_before_manual_before_schedule_then_fifo(self):
        fired(self.m.start_manual("a", 0, MAIN, "u"))
        fired(self.m.start_manual("b", 0, MAIN, "u"))
        self.m.apply_settings(settings(device="s", mode=RecordMode.CONTINUOUS))
        fired(self.m.start_manual("m1", 0, MAIN, "u"))
        fired(self.m.start_manual("m2", 0, MAIN, "u"))
        fired(self.m.event("e", 0))
        self.assertEqual([self.state(d)["queue_position"] for d in ("e", "m1", "m2", "s")],
                         [1, 2, 3, 4])
        fired(self.m.stop_manual("a", 0, MAIN, "u"))
        fired(self.m.stop_manual("b", 0, MAIN, "u"))
        self.assertEqual(self.recorder.starts()[2:], [("e", 0, MAIN), ("m1", 0, MAIN)])
        self.clock.advance(10)  # the event ends: the next manual task starts
        self.assertEqual(self.recorder.starts()[-1], ("m2", 0, MAIN))
        self.assertEqual(self.state("s")["queue_position"], 1)

    def test_a_queued_task_that_is_stopped_leaves_the_queue(self):
        fired(self.m.start_manual("a", 0, MAIN, "u"))
        fired(self.m.start_manual("b", 0, MAIN, "u"))
        fired(self.m.start_manual("c", 0, MAIN, "u"))
        fired(self.m.stop_manual("c", 0, MAIN, "u"))
        fired(self.m.stop_manual("a", 0, MAIN, "u"))
        self.assertNotIn(("c", 0, MAIN), self.recorder.starts())
        self.assertEqual(self.m.queue.waiting, {})


class RateQueueTests(ManagerBase):
    capacity = Capacity(max_streams=10, max_write_mbps=9.0, main_mbps=4.0, sub_mbps=1.0)

    def test_a_waiting_task_raised_by_an_event_starts_at_once_when_it_fits(self):
        fired(self.m.start_manual("a", 0, MAIN, "u"))
        fired(self.m.start_manual("b", 0, MAIN, "u"))  # 8 of 9 Mb/s
        fired(self.m.start_manual("c", 0, MAIN, "u"))  # 4 more do not fit
        self.m.apply_settings(settings(device="d", mode=RecordMode.CONTINUOUS, stream=SUB))
        # d's 1 Mb/s would fit, but it waits its turn behind c
        self.assertEqual(self.state("d", stream=SUB)["queue_position"], 2)
        info = fired(self.m.event("d", 0))
        self.assertEqual((info["state"], info["reasons"]), (RUNNING, ["continuous", "event"]))
        self.assertEqual(self.recorder.starts()[-1], ("d", 0, SUB))
        self.assertEqual(self.state("c")["queue_position"], 1)


class PersistenceTests(ManagerBase):
    capacity = Capacity(max_streams=1)

    def restart(self):
        """The RGM goes down (timers gone, SS restarted) and comes back."""
        self.m.stopService()
        self.recorder = FakeRecorder()
        self.m = self.manager()

    def test_tasks_resume_after_a_restart(self):
        self.m.apply_settings(settings(device="s", slots=[(0, 0, 120)]))  # Mon 00:00-02:00
        fired(self.m.start_manual("m", 0, SUB, "alice"))
        fired(self.m.event("e", 0))
        with open(os.path.join(self.dir, "recordings.json"), encoding="utf-8") as f:
            saved = json.load(f)
        self.assertEqual(len(saved["recordings"]), 3)
        self.clock.advance(5)
        self.restart()
        # the event (highest priority) runs; the manual and schedule tasks wait, in order
        self.assertEqual(self.recorder.starts(), [("e", 0, MAIN)])
        self.assertEqual([self.state(d, stream=st)["queue_position"]
                          for d, st in (("m", SUB), ("s", MAIN))], [1, 2])
        self.clock.advance(5)  # the event ends (10 s after it was raised)
        self.assertEqual(self.recorder.starts()[-1], ("m", 0, SUB))
        fired(self.m.stop_manual("m", 0, SUB, "alice"))
        self.assertEqual(self.recorder.starts()[-1], ("s", 0, MAIN))
        self.clock.advance(2 * H)  # the schedule edge, timed again after the restart
        self.assertEqual(self.recorder.stops()[-1], ("s", 0, MAIN))

    def test_reasons_that_ran_out_while_down_are_dropped(self):
        fired(self.m.event("e", 0))
        self.m.stopService()
        self.clock.advance(60)
        self.recorder = FakeRecorder()
        self.m = self.manager()
        self.assertEqual(self.recorder.calls, [])
        self.assertEqual(self.m.status(), [])

    def test_a_damaged_file_is_reported_not_fatal(self):
        self.m.stopService()
        with open(os.path.join(self.dir, "recordings.json"), "w") as f:
            f.write("{not json")
        self.m = self.manager()
        self.assertEqual(self.m.status(), [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)


# ---------------------------------------------------------------------------
# The CU's messages through the RGM


class NodeBase(unittest.TestCase):
    def setUp(self):
        self.h = NodeHarness(keepalive_interval=30, request_timeout=5.0)
        self.h.store.put_device(self.h.add_device("cam1", channels=2))
        self.h.add_user("alice", grants=[("cam1", ALL)])
        self.h.add_user("carol", grants=[("cam1", ALL)])
        self.h.add_user("bob", grants=[("cam1", Action.VIEW)])
        self.addCleanup(self.h.stop)
        self.recorder = FakeRecorder()
        self.h.rgm.recordings = RecordingManager(self.h.clock, self.recorder, None,
                                                 Capacity(max_streams=1))

    def cu(self, name):
        client, (d, _, _) = self.h.cu(name)
        fired(d)
        return client

    def ask(self, client, type, body):
        d = client.request(type, body)
        self.h.pump()
        return fired(d)


class SignallingTests(NodeBase):
    def test_a_cu_with_the_record_grant_starts_and_stops_a_manual_recording(self):
        alice = self.cu("alice")
        rsp = self.ask(alice, MsgType.RECORD_START, RecordRequest(device_id="cam1", channel=1,
                                                                   stream=MAIN))
        self.assertEqual((rsp.body.state, rsp.body.reasons), (RUNNING, ["manual:alice"]))
        self.assertEqual(self.recorder.starts(), [("cam1", 1, MAIN)])
        status = self.ask(alice, MsgType.RECORD_STATUS, RecordStatus(device_id="cam1"))
        self.assertEqual([(t.channel, t.state) for t in status.body.tasks], [(1, RUNNING)])
        rsp = self.ask(alice, MsgType.RECORD_STOP, RecordRequest(device_id="cam1", channel=1,
                                                                  stream=MAIN))
        self.assertEqual(rsp.body.state, STOPPED)
        self.assertEqual(self.recorder.stops(), [("cam1", 1, MAIN)])

    def test_a_cu_without_the_grant_is_forbidden(self):
        bob = self.cu("bob")
        for t in (MsgType.RECORD_START, MsgType.RECORD_STOP):
            f = self.ask(bob, t, RecordRequest(device_id="cam1", channel=0, stream=MAIN))
            self.assertEqual(f.value.code, ResultCode.FORBIDDEN)
        f = self.ask(bob, MsgType.RECORD_STATUS, RecordStatus(device_id="cam1"))
        self.assertEqual(f.value.code, ResultCode.FORBIDDEN)
        self.assertEqual(self.recorder.calls, [])

    def test_a_task_past_capacity_is_answered_queued(self):
        alice, carol = self.cu("alice"), self.cu("carol")
        self.ask(alice, MsgType.RECORD_START, RecordRequest(device_id="cam1", channel=0,
                                                             stream=MAIN))
        f = self.ask(carol, MsgType.RECORD_START, RecordRequest(device_id="cam1", channel=0,
                                                                 stream=SUB))
        self.assertEqual(f.value.code, ResultCode.QUEUED)
        self.assertIn("position 1", f.value.message)

    def test_bad_channel_and_no_manager(self):
        alice = self.cu("alice")
        f = self.ask(alice, MsgType.RECORD_START, RecordRequest(device_id="cam1", channel=2,
                                                                 stream=MAIN))
        self.assertEqual(f.value.code, ResultCode.INVALID_ARGUMENT)
        self.h.rgm.recordings = None
        f = self.ask(alice, MsgType.RECORD_START, RecordRequest(device_id="cam1", channel=0,
                                                                 stream=MAIN))
        self.assertEqual(f.value.code, ResultCode.NOT_SUPPORTED)


# ---------------------------------------------------------------------------
# vssctl record start|stop|status


class CtlTests(NodeBase):
    def parse(self, *argv):
        from vss.cu import ctl

        opts = ctl.Options()
        opts.parseOptions(["--node", "tcp:x:1", "--user", "alice", *argv])
        return opts.subCommand, opts.subOptions

    def test_commands_build_the_requests(self):
        from vss.cu import ctl

        cmd, sub = self.parse("record", "start", "cam1", "--channel", "1", "--stream", "sub")
        self.assertEqual(ctl.build_request(cmd, sub),
                         (MsgType.RECORD_START, RecordRequest(device_id="cam1", channel=1,
                                                              stream=SUB)))
        cmd, sub = self.parse("record", "status", "cam1")
        self.assertEqual(ctl.build_request(cmd, sub),
                         (MsgType.RECORD_STATUS, RecordStatus(device_id="cam1")))
        from twisted.python import usage

        self.assertRaises(usage.UsageError, self.parse, "record", "pause", "cam1")

    def test_answers_read_well_and_queued_shows_the_position(self):
        from vss.cu import ctl

        self.h.clock.advance(MONDAY + 8 * H)  # before login: a silent link would be dropped
        alice, carol = self.cu("alice"), self.cu("carol")
        cmd, sub = self.parse("record", "start", "cam1")
        d = ctl.record_request(alice, *ctl.build_request(cmd, sub))
        self.h.pump()
        self.assertEqual(ctl.render(cmd, sub, fired(d)),
                         "cam1 ch0 main: running since 2024-01-01 08:00:00Z (manual:alice)")
        cmd, sub = self.parse("record", "start", "cam1", "--channel", "1")
        d = ctl.record_request(carol, *ctl.build_request(cmd, sub))
        self.h.pump()
        self.assertEqual(ctl.render(cmd, sub, fired(d)),
                         "cam1 ch1 main: queued at position 1 since 2024-01-01 08:00:00Z "
                         "(manual:carol)")
        cmd, sub = self.parse("record", "status", "cam1")
        d = alice.request(*ctl.build_request(cmd, sub))
        self.h.pump()
        self.assertEqual(ctl.render(cmd, sub, fired(d).body).splitlines(), [
            "cam1 ch0 main: running since 2024-01-01 08:00:00Z (manual:alice)",
            "cam1 ch1 main: queued at position 1 since 2024-01-01 08:00:00Z (manual:carol)"])


class PreEventNodeTests(unittest.TestCase):
    """A node with its real CDN module, SS and recorder, and a PU publishing: a
    channel in EVENT mode keeps its pre-event buffer, and an event's recording starts
    that many seconds before the event."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        from twisted.internet import reactor

        from vss.testing.platform import start_platform, verifier, wait_until

        self.reactor, self.wait_until = reactor, wait_until
        self.p = yield start_platform(self)
        yield self.p.change(self.p.cms.store.upsert_device(
            "cam-b", "Gate B", 1, 1, "node-b", verifier("cam-b-s")))
        self.node = yield self.p.start_node("node-b")
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s")

    @defer.inlineCallbacks
    def test_an_event_records_from_pre_event_seconds_before_it(self):
        manager, recorder = self.node.recordings, self.node.recorder
        manager.apply_settings(settings(device="cam-b", mode=RecordMode.EVENT, pre=3,
                                        post=3, segment=60))

        def reading():
            pb = recorder.status()["prebuffers"].get("/live/cam-b/main")
            return pb is not None and pb["reading"] and pb["bytes"] > 0

        yield self.wait_until(self.reactor, reading, timeout=30, what="the pre-event buffer")
        yield task.deferLater(self.reactor, 5.5, lambda: None)  # more than 3 s buffered
        event_ms = self.reactor.seconds() * 1000
        state = yield manager.event("cam-b", 0)
        self.assertEqual(state["state"], RUNNING)
        yield self.wait_until(self.reactor, lambda: recorder.counters["segments"] >= 1
                              and not recorder.status()["recordings"], timeout=30,
                              what="the event's recording to end")
        rows = yield recorder.catalogue.list("cam-b", "main", 0, 2**62)
        # one segment, or two where the recording crossed a UTC minute (segments are
        # cut on multiples of their length), the second from where the first ended
        segments = sorted(rows["segments"], key=lambda s: s.start_ms)
        self.assertIn(len(segments), (1, 2), segments)
        first, last = segments[0], segments[-1]
        if len(segments) == 2:
            self.assertLess(last.start_ms % 60000, 2100)  # the first keyframe past it
            self.assertLess(abs(last.start_ms - first.end_ms), 100)
        # from the keyframe at or before event - 3 s (the PU's GOP is 2 s) to the end
        # of the post-event seconds
        self.assertGreaterEqual(first.start_ms, event_ms - 3000 - 2000 - 300)
        self.assertLessEqual(first.start_ms, event_ms - 3000 + 100)
        self.assertGreaterEqual(last.end_ms, event_ms + 2500)
        # the buffer goes on (the channel is still in EVENT mode); OFF lets it go
        self.assertTrue(reading())
        manager.apply_settings(settings(device="cam-b", mode=RecordMode.OFF))
        self.assertEqual(recorder.status()["prebuffers"], {})
