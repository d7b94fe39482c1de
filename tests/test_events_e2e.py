"""
Events end to end (docs/protocol.md 9.7) on a real platform over loopback TCP: CMS and
two nodes, and a real ``vss-pu`` process raising simulated motion (``--events``) for a
camera homed on node-b. A CU of node-a subscribed to that camera gets node-b's events
over the node link; CMS stores them, the CU lists and acknowledges one; a CU whose link
drops and resumes gets what it missed once; ``vssctl events --follow`` on node-a shows
them live; a user without the grant gets none.
"""

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    EventAck,
    EventPhase,
    EventQuery,
    EventSubscribe,
    MsgType,
    Role,
)
from vss.testing.platform import start_platform, verifier, wait_until
from vss.testing.processes import vssctl


def subscribe(devices=(), resume_after=0):
    return EventSubscribe(devices=list(devices), groups=[], types=[],
                          resume_after=resume_after)


class EventsAcrossNodesTests(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("cam-b", "Yard", 1, 1, "node-b", verifier("cam-b-s")))
        yield change(store.upsert_user("alice", verifier("alice-pw"), []))
        yield change(store.upsert_user("bob", verifier("bob-pw"), []))
        yield change(store.set_grant("user:alice", "cam-b", int(Action.VIEW)))
        self.a = yield self.p.start_node("node-a")
        self.b = yield self.p.start_node("node-b")

    def login(self, user, notes):
        return self.p.login("node-a", Role.CU, user, f"{user}-pw").addCallback(
            lambda c: self._listen(c, notes))

    def _listen(self, client, notes):
        client._on_notify = lambda msg: notes.append(msg) \
            if msg.type == MsgType.EVENT_NOTIFY else None
        return client

    @defer.inlineCallbacks
    def test_an_event_on_node_b_reaches_a_cu_on_node_a_and_is_stored(self):
        alice_notes, bob_notes = [], []
        alice = yield self.login("alice", alice_notes)
        bob = yield self.login("bob", bob_notes)
        yield alice.request(MsgType.EVENT_SUBSCRIBE, subscribe(devices=["cam-b"]))
        yield bob.request(MsgType.EVENT_SUBSCRIBE, subscribe())  # every device bob may view
        with self.assertRaises(VssError) as refused:
            yield bob.request(MsgType.EVENT_SUBSCRIBE, subscribe(devices=["cam-b"]))
        self.assertEqual(refused.exception.code, ResultCode.FORBIDDEN)
        yield wait_until(reactor, lambda: "node-b" in self.a.events.remote
                         and self.a.events.remote["node-b"]["link"] is not None,
                         what="node-a following node-b's events")
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s", extra=["--events", "1"])
        yield wait_until(reactor, lambda: any(n.body.event.type == "motion"
                                              for n in alice_notes), timeout=30,
                         what="a motion event of cam-b at alice on node-a")
        motion = next(n.body.event for n in alice_notes if n.body.event.type == "motion")
        self.assertEqual((motion.node_id, motion.device_id), ("node-b", "cam-b"))
        self.assertIn(motion.phase, (EventPhase.START, EventPhase.STOP))
        # no CMS on the event path: node-b sent it straight over the node link
        self.assertGreaterEqual(self.a.events.counters["remote_received"], 1)
        self.assertEqual(bob_notes, [])

        # stored by CMS (batched off the event path), listed through node-a
        stored = []

        @defer.inlineCallbacks
        def listed():
            answer = yield alice.request(MsgType.EVENT_QUERY, EventQuery(
                device_id="cam-b", type="motion", from_time=0, to_time=0, limit=100,
                username="bob"))  # the node sets the user: this is ignored
            stored[:] = answer.body.events

        for _ in range(200):
            yield listed()
            if any(e.event.seq == motion.seq for e in stored):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertIn(motion, [e.event for e in stored])
        answer = yield bob.request(MsgType.EVENT_QUERY, EventQuery(
            device_id="", type="", from_time=0, to_time=0, limit=100, username="alice"))
        self.assertEqual(answer.body.events, [])

        acked = (yield alice.request(MsgType.EVENT_ACK, EventAck(
            node_id=motion.node_id, seq=motion.seq, device_id="cam-b", username="bob",
            comment="a cat"))).body
        self.assertEqual((acked.node_id, acked.seq, acked.acked_by), ("node-b", motion.seq,
                                                                      "alice"))
        with self.assertRaises(VssError) as again:
            yield alice.request(MsgType.EVENT_ACK, EventAck(
                node_id=motion.node_id, seq=motion.seq, device_id="cam-b", username="",
                comment=""))
        self.assertEqual(again.exception.code, ResultCode.CONFLICT)
        entries, _ = yield self.p.cms.store.list_events(device_id="cam-b", type="motion")
        [entry] = [e for e in entries if e.event.seq == motion.seq]
        self.assertEqual((entry.acked_by, entry.comment), ("alice", "a cat"))
        self.assertGreater(entry.acked_at, 0)

    @defer.inlineCallbacks
    def test_a_cu_that_reconnects_gets_what_it_missed_once(self):
        first = []
        alice = yield self.login("alice", first)
        yield alice.request(MsgType.EVENT_SUBSCRIBE, subscribe(devices=["cam-b"]))
        yield wait_until(reactor, lambda: self.a.events.remote.get("node-b", {}).get("link")
                         is not None, what="node-a following node-b's events")
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s", extra=["--events", "1"])
        yield wait_until(reactor, lambda: len(first) >= 2, timeout=30,
                         what="two events at alice")
        alice.link.abort()
        last = first[-1].body.feed_id
        seen_b = self.b.events.head
        # events go on while alice is away
        yield wait_until(reactor, lambda: self.b.events.head >= seen_b + 3, timeout=30,
                         what="more events of cam-b meanwhile")
        second = []
        again = yield self.login("alice", second)
        answer = (yield again.request(MsgType.EVENT_SUBSCRIBE,
                                      subscribe(devices=["cam-b"], resume_after=last))).body
        self.assertGreaterEqual(answer.replayed, 3)
        self.assertFalse(answer.gap)
        yield wait_until(reactor, lambda: len(second) >= answer.replayed + 1, timeout=30,
                         what="the missed events and a new one")
        feed = [n.body.feed_id for n in first + second]
        self.assertEqual(feed, sorted(set(feed)))  # each once, in order
        seqs = [n.body.event.seq for n in first + second]
        # node-b numbers only cam-b's events here: none missing, none twice
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(seqs))))

    @defer.inlineCallbacks
    def test_vssctl_follows_on_node_a_the_events_of_a_camera_on_node_b(self):
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s", extra=["--events", "1"])
        node = f"tcp:127.0.0.1:{self.p.port('node-a', 'cu')}"
        out, err, code = yield vssctl(node, ["events", "--follow", "--type", "motion",
                                             "--count", "2"], "alice", "alice-pw")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        for line in lines:
            self.assertIn("cam-b ch0  motion", line)
            self.assertIn("[node-b/", line)
        out, err, code = yield vssctl(node, ["events", "--device", "cam-b"], "bob", "bob-pw")
        self.assertEqual(code, 1)
        self.assertIn("[forbidden]", err)

    @defer.inlineCallbacks
    def test_a_node_going_down_and_up_are_events_cms_keeps(self):
        store = self.p.cms.store
        yield self.p.stop_node("node-b")
        found = []
        for _ in range(200):
            found, _ = yield store.list_events(device_id="node:node-b")
            if any(e.event.type == "node-down" for e in found):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        types = [e.event.type for e in found]
        self.assertEqual(types[:2], ["node-down", "node-up"])  # newest first
        down = found[0].event
        self.assertEqual((down.node_id, down.severity), ("cms", 3))


class EventRecordingTests(unittest.TestCase):
    """An alarm input of a real ``vss-pu`` (SIGUSR1) on a channel whose rule names it
    starts an event recording that begins the pre-event seconds before the event; a user
    on the other node plays it back from the event (``vssctl playback --event``)."""

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("cam-b", "Yard", 1, 1, "node-b", verifier("cam-b-s")))
        yield change(store.upsert_user("alice", verifier("alice-pw"), []))
        yield change(store.set_grant("user:alice", "cam-b", int(Action.VIEW | Action.RECORD)))
        self.a = yield self.p.start_node("node-a")
        self.b = yield self.p.start_node("node-b")
        self.pu = yield self.p.start_pu("node-b", "cam-b", "cam-b-s")

    @defer.inlineCallbacks
    def test_an_alarm_records_from_its_pre_event_seconds_and_plays_from_its_bookmark(self):
        import signal

        store, recorder = self.p.cms.store, self.b.recorder
        yield self.p.change(store.set_record_settings("cam-b", 0, {
            "mode": "event", "stream": "main", "segment_seconds": 60, "retention_days": 7,
            "quota_mb": 0, "pre_event_seconds": 3, "post_event_seconds": 3, "schedule": [],
            "event_types": ["alarm-in"]}))

        def buffering():
            pb = recorder.status()["prebuffers"].get("/live/cam-b/main")
            return pb is not None and pb["reading"] and pb["bytes"] > 0

        yield wait_until(reactor, buffering, timeout=60, what="cam-b's pre-event buffer")
        yield task.deferLater(reactor, 5.5, lambda: None)  # more than 3 s buffered
        self.pu.signal(signal.SIGUSR1)  # an alarm input
        yield wait_until(reactor, lambda: any(
            e.type == "alarm-in" for _f, e, _n in self.b.events.history), timeout=30,
            what="the alarm-in event on node-b")
        [event] = [e for _f, e, _n in self.b.events.history if e.type == "alarm-in"]
        yield wait_until(reactor, lambda: recorder.counters["segments"] >= 1
                         and not recorder.status()["recordings"], timeout=60,
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
        # from the keyframe at or before the event less 3 s (the PU's GOP is 2 s)
        self.assertGreaterEqual(first.start_ms, event.node_time - 3000 - 2000 - 300)
        self.assertLessEqual(first.start_ms, event.node_time - 3000 + 100)
        self.assertGreaterEqual(last.end_ms, event.node_time + 2500)
        self.assertEqual(self.b.events.rules.counters["recordings_started"], 1)
        # stored, then played back on node-a from the event's bookmark
        yield wait_until(reactor, lambda: self.b.event_reporter.counters["reported"] >= 2,
                         what="the event stored")
        node = f"tcp:127.0.0.1:{self.p.port('node-a', 'cu')}"
        out, err, code = yield vssctl(node, ["playback", "cam-b", "--event",
                                             f"node-b/{event.seq}"], "alice", "alice-pw")
        self.assertEqual(code, 0, err)
        self.assertIn("/live/cam-b/pb-", out)
