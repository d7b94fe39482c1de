"""
The audit of media (``vss.rgm.audit``, AUDIT_REPORT, ``CMSService.on_audit_report``):
the node queues what users start and reports it in batches off the request path (unit
tests with ``task.Clock``: batches, order kept across a failed report, the bounded queue
and its count of dropped events); end to end, a user's live view on a node with a real
camera lands in the central audit log with who, what, where from and which node.
"""

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    AuditEvent,
    AuditKind,
    AuditReport,
    MediaOpen,
    MsgType,
    Purpose,
    Role,
    Stream,
)
from vss.rgm.audit import AuditReporter
from vss.testing.held import HeldCentral
from vss.testing.platform import start_platform, verifier, wait_until


class ReporterTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.central = HeldCentral()
        self.reporter = AuditReporter(self.central, self.clock, interval=2.0, batch=3,
                                      max_queue=10)
        self.reporter.startService()

    def tearDown(self):
        self.reporter.flush = lambda: None  # no final report to answer
        self.reporter.stopService()

    def note(self, i):
        self.reporter.note(AuditKind.LIVE, f"user{i}", "cam-1", 0, 0, peer="10.0.0.1",
                           via="web")

    def test_batches_off_the_request_path(self):
        for i in range(7):
            self.note(i)
        self.assertEqual(self.central.reports, [])  # nothing on the request path
        self.clock.advance(2.0)
        first = self.central.reports[0]
        self.assertEqual([e.username for e in first.events], ["user0", "user1", "user2"])
        self.assertEqual(first.events[0], AuditEvent(
            at=1_700_000_000_000, kind=AuditKind.LIVE, username="user0", device_id="cam-1",
            channel=0, stream=0, from_time=0, to_time=0, peer="10.0.0.1", via="web"))
        self.clock.advance(2.0)
        self.assertEqual(len(self.central.reports), 1)  # one report in flight at a time
        self.central.ack()  # a backlog: the next batch at once
        self.assertEqual([e.username for e in self.central.reports[1].events],
                         ["user3", "user4", "user5"])
        self.central.ack()
        self.assertEqual(len(self.central.reports), 2)  # less than a batch waits
        self.clock.advance(2.0)
        self.central.ack()
        self.assertEqual([e.username for r in self.central.reports for e in r.events],
                         [f"user{i}" for i in range(7)])
        self.assertEqual([r.batch for r in self.central.reports], [1, 2, 3])
        self.assertEqual(self.reporter.status()["waiting"], 0)

    def test_a_failed_report_is_sent_again_first(self):
        for i in range(2):
            self.note(i)
        self.clock.advance(2.0)
        self.note(2)
        self.central.fail()
        self.clock.advance(2.0)
        again = self.central.reports[1]
        self.assertEqual([e.username for e in again.events], ["user0", "user1", "user2"])
        self.central.ack()
        self.assertEqual(self.reporter.counters["failed_reports"], 1)
        self.assertEqual(self.reporter.counters["reported"], 3)

    def test_the_queue_is_bounded_and_losses_are_reported(self):
        for i in range(14):
            self.note(i)
        self.assertEqual(len(self.reporter.queue), 10)
        self.clock.advance(2.0)
        report = self.central.reports[0]
        self.assertEqual(report.dropped, 4)
        self.assertEqual(report.events[0].username, "user4")  # the oldest went
        self.central.fail()  # the count of losses is not lost with the report
        self.clock.advance(2.0)
        self.assertEqual(self.central.reports[1].dropped, 4)
        self.central.ack()
        self.clock.advance(2.0)
        self.assertEqual(self.central.reports[2].dropped, 0)

    def test_live_and_playback_from_media_open(self):
        body = MediaOpen(device_id="cam-1", channel=1, stream=Stream.SUB,
                         purpose=Purpose.PLAYBACK, start_time=1_699_999_000_000, transport=0)
        self.reporter.live("ann", body, "10.0.0.2", "monitoring centre")
        self.clock.advance(2.0)
        (e,) = self.central.reports[0].events
        self.assertEqual((e.kind, e.username, e.channel, e.stream, e.from_time, e.via),
                         (AuditKind.PLAYBACK, "ann", 1, 1, 1_699_999_000_000,
                          "monitoring centre"))
        self.central.ack()

    def test_stopping_sends_what_waits(self):
        self.note(0)
        self.reporter.stopService()
        self.assertEqual(len(self.central.reports), 1)
        self.reporter.startService()


class CmsAuditReportTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("cam-a", "Gate", 1, 1, "node-a", verifier("cam-a-s")))
        yield change(store.upsert_user("alice", verifier("alice-pw"), []))
        yield change(store.set_grant("user:alice", "cam-a", int(Action.VIEW)))
        self.node = yield self.p.start_node("node-a")

    @defer.inlineCallbacks
    def entries(self, kind, count):
        for _ in range(300):
            found, _ = yield self.p.cms.store.list_audit(kinds=[kind])
            if len(found) >= count:
                return found
            yield task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"no {kind} entry in the audit log")

    @defer.inlineCallbacks
    def test_a_live_view_reaches_the_audit_log(self):
        yield self.p.start_pu("node-a", "cam-a", "cam-a-s")
        alice = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        answer = yield alice.request(MsgType.MEDIA_OPEN, MediaOpen(
            device_id="cam-a", channel=0, stream=Stream.MAIN, purpose=Purpose.LIVE,
            start_time=0, transport=0), timeout=30)
        self.assertIn("/live/cam-a/main", answer.body.url)
        # a refused one is not a view
        with self.assertRaises(VssError):
            yield alice.request(MsgType.MEDIA_OPEN, MediaOpen(
                device_id="cam-x", channel=0, stream=Stream.MAIN, purpose=Purpose.LIVE,
                start_time=0, transport=0), timeout=30)
        (entry,) = yield self.entries("live", 1)
        self.assertEqual((entry.actor, entry.target, entry.node_id, entry.source, entry.action,
                          entry.status), ("user:alice", "device:cam-a", "node-a", "127.0.0.1",
                                          "live", 0))
        self.assertEqual(entry.detail, {"channel": 0, "stream": "main",
                                        "via": "monitoring centre"})
        # CMS writes the entry before it answers: the node counts the report on the answer
        yield wait_until(reactor, lambda: self.node.audit.counters["reported"] >= 1,
                         what="the node to have the AUDIT_REPORT acknowledged")
        self.assertEqual(self.node.audit.counters["reported"], 1)

    @defer.inlineCallbacks
    def test_losses_and_unknown_kinds(self):
        cms = self.p.cms.cms
        session = cms.sessions["node-a"]
        ack = yield cms.on_audit_report(session, AuditReport(batch=9, dropped=12, events=[
            AuditEvent(at=1_700_000_000_000, kind=AuditKind.EXPORT, username="alice",
                       device_id="cam-a", channel=0, stream=0, from_time=1_699_999_000_000,
                       to_time=1_700_000_000_000, peer="10.1.2.3", via="export"),
            AuditEvent(at=1_700_000_000_000, kind=99, username="alice", device_id="cam-a",
                       channel=0, stream=0, from_time=0, to_time=0, peer="", via="")]))
        self.assertEqual((ack.batch, ack.stored), (9, 2))
        (export,) = yield self.entries("export", 1)
        self.assertEqual(export.detail, {"channel": 0, "stream": "main", "via": "export",
                                         "from": "2023-11-14T21:56:40Z",
                                         "to": "2023-11-14T22:13:20Z"})
        self.assertEqual(export.at, 1_700_000_000_000)
        (lost,) = yield self.entries("lost", 1)
        self.assertEqual((lost.actor, lost.node_id, lost.detail),
                         ("node:node-a", "node-a", {"dropped": 12}))
        self.flushLoggedErrors()
