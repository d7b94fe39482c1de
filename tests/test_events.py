"""
Events and alarms on one node (``vss.events``, docs/protocol.md 9.7), over in-memory
links with a ``task.Clock`` (``NodeHarness``): a PU's EVENT_RAISE is numbered and pushed
to the CUs that subscribed and may view the device, never to others; bad input is
refused with its code; a CU that resumes gets what it missed once; a node following
another node's events drops what it saw already; the reporter sends batches to CMS, and
CMS's SQL store keeps each event once, its acknowledgement with who and when, and lists
only what a user may view.
"""

import os
import secrets

from twisted.internet import defer, task
from twisted.trial import unittest

from vss.cms.store import make_static_store
from vss.events.hub import MAX_SUBSCRIPTIONS, EventHub
from vss.events.report import EventReporter
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    KV,
    Action,
    EventAck,
    EventNotify,
    EventPhase,
    EventQuery,
    EventRaise,
    EventRecord,
    EventSubscribe,
    EventUnsubscribe,
    MsgType,
    Severity,
)
from vss.testing import records
from vss.testing.harness import NodeHarness
from vss.testing.held import HeldCentral

PG_DSN = os.environ.get("VSS_TEST_POSTGRES_DSN")
START = 1_700_000_000  # the clock's time when the hub starts: numbers from START ms * 1000


def raise_body(device_id="cam-1", type="motion", channel=0, phase=EventPhase.PULSE,
               severity=Severity.ALARM, items=()):
    return EventRaise(device_id=device_id, channel=channel, type=type, phase=phase,
                      severity=severity, pu_time=START * 1000, items=list(items))


def subscribe(devices=(), groups=(), types=(), resume_after=0):
    return EventSubscribe(devices=list(devices), groups=list(groups), types=list(types),
                          resume_after=resume_after)


class HubTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(START)
        self.h = NodeHarness(clock=self.clock)
        self.reports = []
        self.hub = EventHub("node-a", self.h.store, self.h.central, self.clock)
        self.hub.reporter = self
        self.h.rgm.events = self.hub
        self.h.add_device("cam-1", channels=2)
        self.h.add_device("cam-2")
        self.h.add_user("alice", grants=[("cam-1", Action.VIEW), ("cam-2", Action.VIEW)])
        self.h.add_user("bob", grants=[("cam-2", Action.VIEW)])
        self.pu, (d, self.pu_link, _) = self.h.pu("cam-1", channels=2)
        self.pu_ready = self.successResultOf(d)

    def tearDown(self):
        self.h.stop()

    def add(self, event):  # the reporter's side
        self.reports.append(event)

    def cu(self, name):
        notes = []
        client, (d, link, _) = self.h.cu(name, on_notify=notes.append)
        self.successResultOf(d)
        return client, notes

    def ask(self, client, type, body):
        d = client.request(type, body)
        self.h.pump()
        return d

    def events(self, notes):
        return [(n.body.feed_id, n.body.event.device_id, n.body.event.type) for n in notes
                if n.type == MsgType.EVENT_NOTIFY]

    def raise_(self, body=None, client=None):
        d = self.ask(client or self.pu, MsgType.EVENT_RAISE, body or raise_body())
        return self.successResultOf(d).body

    def test_a_pu_event_reaches_the_cus_that_may_view_it(self):
        alice, a_notes = self.cu("alice")
        bob, b_notes = self.cu("bob")
        self.successResultOf(self.ask(alice, MsgType.EVENT_SUBSCRIBE, subscribe()))
        answer = self.successResultOf(self.ask(bob, MsgType.EVENT_SUBSCRIBE, subscribe()))
        self.assertEqual(answer.body.replayed, 0)
        raised = self.raise_(raise_body(channel=1, phase=EventPhase.START,
                                        items=[KV(key="zone", value="2")]))
        self.assertEqual((raised.node_id, raised.seq), ("node-a", START * 1000 * 1000 + 2))
        self.h.pump()
        [note] = [n for n in a_notes if n.type == MsgType.EVENT_NOTIFY]
        e = note.body.event
        self.assertEqual((e.node_id, e.seq, e.device_id, e.channel, e.type, e.phase,
                          e.severity, e.items),
                         ("node-a", raised.seq, "cam-1", 1, "motion", EventPhase.START,
                          Severity.ALARM, [KV(key="zone", value="2")]))
        self.assertEqual(note.body.feed_id, raised.seq)
        # bob may not view cam-1: nothing, not even that it exists
        self.assertEqual(self.events(b_notes), [])
        self.assertIn(e, self.reports)

    def test_the_node_raises_online_and_offline(self):
        alice, notes = self.cu("alice")
        self.successResultOf(self.ask(alice, MsgType.EVENT_SUBSCRIBE,
                                      subscribe(devices=["cam-1"], types=["offline"])))
        self.pu_link.transport.loseConnection()
        self.h.pump()
        self.assertEqual([t for _f, _d, t in self.events(notes)], ["offline"])
        self.assertEqual([e.type for e in self.reports], ["online", "offline"])

    def test_filters_by_device_type_and_group(self):
        self.h.add_user("carol", groups=["guards"])
        g = records.grant("group:guards", "cam-1", Action.VIEW)
        self.h.central.add_grant(g)
        self.h.store.put_grant(g)
        carol, c_notes = self.cu("carol")
        alice, a_notes = self.cu("alice")
        self.successResultOf(self.ask(carol, MsgType.EVENT_SUBSCRIBE,
                                      subscribe(groups=["guards"])))
        self.successResultOf(self.ask(alice, MsgType.EVENT_SUBSCRIBE,
                                      subscribe(devices=["cam-1"], types=["tamper"])))
        self.raise_(raise_body(type="motion"))
        self.raise_(raise_body(type="tamper"))
        self.h.pump()
        self.assertEqual([t for _f, _d, t in self.events(c_notes)], ["motion", "tamper"])
        self.assertEqual([t for _f, _d, t in self.events(a_notes)], ["tamper"])

    def test_a_grant_removed_stops_the_events_at_once(self):
        alice, notes = self.cu("alice")
        self.successResultOf(self.ask(alice, MsgType.EVENT_SUBSCRIBE, subscribe()))
        self.raise_()
        self.h.store.remove_grant("user:alice", "cam-1")
        self.raise_()
        self.h.pump()
        self.assertEqual(len(self.events(notes)), 1)

    def test_bad_input_is_refused_with_its_code(self):
        alice, _ = self.cu("alice")
        bob, _ = self.cu("bob")

        def code(client, type, body):
            d = self.ask(client, type, body)
            return self.failureResultOf(d, VssError).value.code

        for body, wanted in [
            (raise_body(device_id="cam-2"), ResultCode.FORBIDDEN),  # not itself
            (raise_body(channel=2), ResultCode.INVALID_ARGUMENT),
            (raise_body(type="Motion!"), ResultCode.INVALID_ARGUMENT),
            (raise_body(type=""), ResultCode.INVALID_ARGUMENT),
            (raise_body(phase=7), ResultCode.INVALID_ARGUMENT),
            (raise_body(severity=9), ResultCode.INVALID_ARGUMENT),
            (raise_body(items=[KV(key="k", value="v" * 257)]), ResultCode.INVALID_ARGUMENT),
            (raise_body(items=[KV(key=f"k{i}", value="") for i in range(17)]),
             ResultCode.INVALID_ARGUMENT),
        ]:
            self.assertEqual(code(self.pu, MsgType.EVENT_RAISE, body), wanted, body)
        self.assertEqual(self.reports[-1].type, "online")  # nothing was raised
        self.assertEqual(code(bob, MsgType.EVENT_SUBSCRIBE, subscribe(devices=["cam-1"])),
                         ResultCode.FORBIDDEN)
        self.assertEqual(code(alice, MsgType.EVENT_SUBSCRIBE,
                              subscribe(types=[f"t{i}" for i in range(65)])),
                         ResultCode.INVALID_ARGUMENT)
        self.assertEqual(code(alice, MsgType.EVENT_UNSUBSCRIBE,
                              EventUnsubscribe(subscription=99)), ResultCode.NOT_FOUND)
        for _ in range(MAX_SUBSCRIPTIONS):
            self.successResultOf(self.ask(alice, MsgType.EVENT_SUBSCRIBE, subscribe()))
        self.assertEqual(code(alice, MsgType.EVENT_SUBSCRIBE, subscribe()),
                         ResultCode.LIMIT_REACHED)
        # a CU may not raise events, a PU may not subscribe
        self.assertEqual(code(alice, MsgType.EVENT_RAISE, raise_body()),
                         ResultCode.UNEXPECTED_MESSAGE)
        self.assertEqual(code(self.pu, MsgType.EVENT_SUBSCRIBE, subscribe()),
                         ResultCode.UNEXPECTED_MESSAGE)
        self.assertEqual(code(bob, MsgType.EVENT_ACK, EventAck(
            node_id="node-a", seq=1, device_id="cam-1", username="", comment="")),
            ResultCode.FORBIDDEN)
        self.assertEqual(code(bob, MsgType.EVENT_QUERY, EventQuery(
            device_id="cam-1", type="", from_time=0, to_time=0, limit=0, username="")),
            ResultCode.FORBIDDEN)

    def test_an_event_sent_once_per_link_whatever_the_subscriptions(self):
        alice, notes = self.cu("alice")
        self.successResultOf(self.ask(alice, MsgType.EVENT_SUBSCRIBE, subscribe()))
        self.successResultOf(self.ask(alice, MsgType.EVENT_SUBSCRIBE,
                                      subscribe(devices=["cam-1"])))
        self.raise_()
        self.h.pump()
        self.assertEqual(len(self.events(notes)), 1)

    def test_a_cu_that_resumes_gets_what_it_missed_once(self):
        alice, notes = self.cu("alice")
        self.successResultOf(self.ask(alice, MsgType.EVENT_SUBSCRIBE, subscribe()))
        self.raise_(raise_body(type="a"))
        self.h.pump()
        last_seen = self.events(notes)[-1][0]
        alice.link.transport.loseConnection()
        self.h.pump()
        self.raise_(raise_body(type="b"))
        self.raise_(raise_body(type="c"))
        again, notes2 = self.cu("alice")
        answer = self.successResultOf(self.ask(again, MsgType.EVENT_SUBSCRIBE,
                                               subscribe(resume_after=last_seen))).body
        self.assertEqual((answer.replayed, answer.gap), (2, False))
        # a second subscription resuming from the same point adds nothing twice
        answer = self.successResultOf(self.ask(again, MsgType.EVENT_SUBSCRIBE,
                                               subscribe(devices=["cam-1"],
                                                         resume_after=last_seen))).body
        self.assertEqual(answer.replayed, 0)
        self.raise_(raise_body(type="d"))
        self.h.pump()
        self.assertEqual([t for _f, _d, t in self.events(notes2)], ["b", "c", "d"])
        ids = [f for f, _d, _t in self.events(notes2)]
        self.assertEqual(ids, sorted(set(ids)))

    def test_a_gap_is_said_when_the_history_no_longer_reaches_back(self):
        self.hub.history = type(self.hub.history)(maxlen=3)
        alice, notes = self.cu("alice")
        first = self.raise_()
        for _ in range(5):
            self.raise_()
        answer = self.successResultOf(self.ask(alice, MsgType.EVENT_SUBSCRIBE,
                                               subscribe(resume_after=first.seq))).body
        self.assertEqual((answer.replayed, answer.gap), (3, True))


class PeerTests(unittest.TestCase):
    """The serving side and the following side of a node link, with fake links."""

    class Link:
        def __init__(self, identity="alice"):
            self.sent = []
            self.session = type("S", (), {"identity": identity})()

        def send_raw(self, data):
            self.sent.append(data)

        def events(self):
            out = []
            for data in self.sent:
                [msg] = codec.MessageDecoder().feed(data)
                out.append((msg.body.feed_id, msg.body.event.node_id, msg.body.event.seq))
            return out

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(START)
        self.h = NodeHarness(node_id="node-a", clock=self.clock)
        self.addCleanup(self.h.stop)
        self.h.add_device("cam-a")
        self.h.add_device("cam-b", home="node-b")
        self.h.add_user("alice", grants=[("cam-a", Action.VIEW), ("cam-b", Action.VIEW)])
        for r in self.h.central.devices.values():
            self.h.store.put_device(r)
        self.hub = EventHub("node-a", self.h.store, self.h.central, self.clock)

    def remote(self, seq, device="cam-b"):
        return EventNotify(feed_id=seq, event=EventRecord(
            node_id="node-b", seq=seq, device_id=device, channel=0, type="motion", phase=0,
            severity=2, pu_time=1, node_time=1, items=[]))

    def test_the_home_node_replays_its_own_events_after_resume(self):
        first = self.hub.raise_event("cam-a", 0, "motion")
        self.hub.peer_event("node-b", self.remote(5))  # another node's: not replayed
        second = self.hub.raise_event("cam-a", 0, "motion")
        peer = self.Link()
        answer, notes = self.hub.peer_subscribe(peer, subscribe(resume_after=first.seq))
        self.assertEqual((answer.replayed, answer.gap), (1, False))
        for note in notes:
            peer.send_raw(note)
        third = self.hub.raise_event("cam-a", 0, "motion")
        self.assertEqual([s for _f, _n, s in peer.events()], [second.seq, third.seq])
        self.hub.peer_gone(peer)
        self.hub.raise_event("cam-a", 0, "motion")
        self.assertEqual(len(peer.events()), 2)

    def test_a_following_node_delivers_another_nodes_event_once(self):
        cu = self.Link("alice")
        answer, _ = self.hub.subscribe(cu, subscribe(devices=["cam-b"]))
        self.hub.peer_event("node-b", self.remote(7))
        self.hub.peer_event("node-b", self.remote(7))  # sent again after a reconnection
        self.hub.peer_event("node-b", self.remote(6))  # older than the last one seen
        self.hub.peer_event("node-c", self.remote(8))  # not numbered by the sender
        self.hub.peer_event("node-b", self.remote(8))
        got = cu.events()
        self.assertEqual([(n, s) for _f, n, s in got], [("node-b", 7), ("node-b", 8)])
        self.assertEqual([f for f, _n, _s in got], [answer.head + 1, answer.head + 2])
        self.assertEqual(self.hub.counters["duplicates"], 2)




class ReporterTests(unittest.TestCase):
    def test_batches_resent_in_order_after_a_failure(self):
        clock = task.Clock()
        central = HeldCentral()
        reporter = EventReporter(central, clock, interval=1.0, batch=2, max_queue=5)
        reporter.startService()
        events = [EventRecord("n", i, "c", 0, "motion", 0, 0, 0, 0, []) for i in range(1, 8)]
        for e in events:
            reporter.add(e)
        self.assertEqual(central.reports, [])  # nothing on the event path
        clock.advance(1)
        self.assertEqual([e.seq for e in central.reports[0].events], [3, 4])
        self.assertEqual(central.reports[0].dropped, 2)  # the queue held 5
        central.fail(message="down")
        clock.advance(1)
        self.assertEqual([e.seq for e in central.reports[1].events], [3, 4])
        self.assertEqual(central.reports[1].dropped, 2)
        central.ack()
        self.assertEqual([e.seq for e in central.reports[2].events], [5, 6])
        central.ack()
        clock.advance(1)
        central.ack()
        self.assertEqual(reporter.status()["waiting"], 0)
        self.assertEqual(reporter.counters["reported"], 5)
        reporter.flush = lambda: None
        reporter.stopService()


def record(seq, device="cam-1", node_time=1_000, type="motion"):
    return EventRecord(node_id="n1", seq=seq, device_id=device, channel=0, type=type,
                       phase=0, severity=2, pu_time=node_time, node_time=node_time,
                       items=[KV(key="zone", value="1")])


class EventStoreConformance:
    """``IEventStore`` of each SQL backend."""

    @defer.inlineCallbacks
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(10)
        self.store = self.new_store()
        yield self.store.open()
        self.addCleanup(self.store.close)
        v = records.verifier("x", iterations=4096)
        for device in ("cam-1", "cam-2"):
            yield self.store.upsert_device(device, device, 1, 1, "n1", v)
        yield self.store.upsert_user("alice", v, ["guards"])
        yield self.store.upsert_user("bob", v, [])
        yield self.store.set_grant("group:guards", "cam-1", int(Action.VIEW))
        yield self.store.set_grant("user:bob", "cam-2", int(Action.PTZ))  # no VIEW

    @defer.inlineCallbacks
    def test_each_event_once_its_ack_and_who_may_list_it(self):
        stored = yield self.store.store_events([record(1), record(2, "cam-2", 2_000)])
        self.assertEqual(stored, 2)
        stored = yield self.store.store_events([record(2, "cam-2", 2_000), record(3)])
        self.assertEqual(stored, 1)  # a report sent again keeps nothing twice
        entries, truncated = yield self.store.list_events(username="alice")
        self.assertEqual([e.event.seq for e in entries], [3, 1])
        self.assertFalse(truncated)
        self.assertEqual(entries[0].event, record(3))
        entries, _ = yield self.store.list_events(username="bob")
        self.assertEqual(entries, [])  # PTZ without VIEW shows nothing
        entries, truncated = yield self.store.list_events(limit=2)
        self.assertEqual(([e.event.seq for e in entries], truncated), ([2, 3], True))
        entry = yield self.store.ack_event("n1", 1, "cam-1", "alice", 12_345, "seen")
        self.assertEqual((entry.acked_by, entry.acked_at, entry.comment),
                         ("alice", 12_345, "seen"))
        f = yield self.assertFailure(self.store.ack_event("n1", 1, "cam-1", "bob", 1, ""),
                                     VssError)
        self.assertEqual(f.code, ResultCode.CONFLICT)
        f = yield self.assertFailure(self.store.ack_event("n1", 9, "cam-1", "bob", 1, ""),
                                     VssError)
        self.assertEqual(f.code, ResultCode.NOT_FOUND)
        f = yield self.assertFailure(self.store.ack_event("n1", 2, "cam-1", "bob", 1, ""),
                                     VssError)
        self.assertEqual(f.code, ResultCode.NOT_FOUND)  # not that device's
        entries, _ = yield self.store.list_events(device_id="cam-1", since=1_000, until=1_001)
        self.assertEqual([(e.event.seq, e.acked_by) for e in entries],
                         [(3, ""), (1, "alice")])
        removed = yield self.store.purge_events(1_500)
        self.assertEqual(removed, 2)
        entries, _ = yield self.store.list_events()
        self.assertEqual([e.event.seq for e in entries], [2])


class SQLiteEventStoreTests(EventStoreConformance, unittest.TestCase):
    def new_store(self):
        return make_static_store("sqlite:" + self.mktemp(), clock=self.clock)


class PostgresEventStoreTests(EventStoreConformance, unittest.TestCase):
    if not PG_DSN:
        skip = "PostgreSQL tests need VSS_TEST_POSTGRES_DSN"

    def new_store(self):
        from vss.cms.store.postgres import create_schema, drop_schema

        name = "vss_test_" + secrets.token_hex(6)
        create_schema(PG_DSN, name)
        self.addCleanup(drop_schema, PG_DSN, name)
        return make_static_store(PG_DSN, clock=self.clock, schema=name)


class RulesTests(unittest.TestCase):
    """A channel in EVENT mode records on the events its rule names (the RecordSettings
    extension EVENT_TYPES, from the admin API's ``event_types``), from the pre-event
    buffer to its post-event seconds; a failed start is a ``record-failed`` event."""

    def setUp(self):
        from tests.test_recording_tasks import FakeRecorder
        from vss.events.rules import EventRules
        from vss.recording.tasks import RecordingManager
        from vss.rgm.localcentral import MemoryCentral
        from vss.store.memory import MemoryStore

        self.clock = task.Clock()
        self.clock.advance(START)
        self.recorder = FakeRecorder()
        self.manager = RecordingManager(self.clock, self.recorder, None)
        self.manager.startService()
        self.addCleanup(self.manager.stopService)
        self.hub = EventHub("n1", MemoryStore(), MemoryCentral(), self.clock,
                            rules=EventRules(self.manager))

    def settings(self, types=(), mode=None):
        from vss.cms.service import record_settings_body

        stored = {"mode": mode or "event", "pre_event_seconds": 5, "post_event_seconds": 10,
                  "event_types": list(types)}
        body = record_settings_body("cam-1", 0, stored)
        self.assertEqual(body.ext, ((0x0001, ",".join(types).encode()),) if types else ())
        # through the wire as a node gets it from CMS (RECORD_SETTINGS_GET)
        [msg] = codec.MessageDecoder().feed(codec.encode_response(
            MsgType.RECORD_SETTINGS_GET, body, 1))
        self.manager.apply_settings(msg.body)

    def test_the_types_of_the_rule_start_an_event_recording(self):
        self.settings(types=["motion", "alarm-in"])
        self.hub.raise_event("cam-1", 0, "tamper", severity=Severity.CRITICAL)
        self.hub.raise_event("cam-1", 1, "motion")  # another channel: no rule
        self.assertEqual(self.recorder.starts(), [])
        self.hub.raise_event("cam-1", 0, "motion", phase=EventPhase.START)
        self.assertEqual(self.recorder.starts(), [("cam-1", 0, 0)])
        state = self.manager.state_of(("cam-1", 0, 0))
        self.assertEqual(state["reasons"], ["event"])
        self.hub.raise_event("cam-1", 0, "motion", phase=EventPhase.STOP)
        self.clock.advance(9)
        self.assertEqual(self.recorder.stops(), [])
        self.clock.advance(2)  # the post-event seconds have passed
        self.assertEqual(self.recorder.stops(), [("cam-1", 0, 0)])

    def test_without_types_alarms_of_the_pu_record_and_node_events_never(self):
        self.settings()
        self.hub.raise_event("cam-1", 0, "motion", severity=Severity.WARNING)
        self.hub.raise_event("cam-1", 0, "offline", severity=Severity.CRITICAL)
        self.assertEqual(self.recorder.starts(), [])
        self.hub.raise_event("cam-1", 0, "line-crossing", severity=Severity.ALARM)
        self.assertEqual(self.recorder.starts(), [("cam-1", 0, 0)])

    def test_a_channel_not_in_event_mode_does_not_record_on_events(self):
        self.settings(types=["motion"], mode="manual")
        self.hub.raise_event("cam-1", 0, "motion")
        self.assertEqual(self.recorder.starts(), [])

    def test_a_failed_recording_is_an_event(self):
        from vss.recording.tasks import RecordingManager

        self.recorder.fail = ResultCode.DEVICE_OFFLINE
        manager = RecordingManager(self.clock, self.recorder, None)
        raised = []
        manager.failure_listeners.append(lambda key, error: raised.append((key, error)))
        manager.start_manual("cam-1", 0, 0, "alice").addErrback(lambda f: None)
        self.assertEqual(raised, [(("cam-1", 0, 0), "DEVICE_OFFLINE: no")])


class RefollowTests(unittest.TestCase):
    def test_a_camera_granted_later_on_another_node_is_followed(self):
        clock = task.Clock()
        clock.advance(START)
        h = NodeHarness(node_id="node-a", clock=clock)
        self.addCleanup(h.stop)
        h.add_device("cam-c", home="node-c")
        for r in h.central.devices.values():
            h.store.put_device(r)
        h.add_user("alice")

        class Peers:
            event_listeners = []
            asked = []

            def link_to(self, node_id, endpoint):
                self.asked.append((node_id, endpoint))
                return defer.Deferred()  # never links: the attempt is what is checked

        h.central.node_endpoints = {"node-c": "tcp:127.0.0.1:1"}
        peers = Peers()
        hub = EventHub("node-a", h.store, h.central, clock, peers=peers)
        link = PeerTests.Link("alice")
        hub.subscribe(link, subscribe())  # every device alice may view: none yet
        self.assertEqual(peers.asked, [])
        g = records.grant("user:alice", "cam-c", Action.VIEW)
        h.store.put_grant(g)
        for _ in range(1000):  # a burst of changes: one look, a second later
            hub.refollow()
        self.assertEqual(peers.asked, [])
        clock.advance(1)
        self.assertEqual(peers.asked, [("node-c", "tcp:127.0.0.1:1")])
        hub.refollow()
        clock.advance(1)  # followed already: once
        self.assertEqual(len(peers.asked), 1)
