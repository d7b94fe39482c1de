"""One test class for both implementations of ``ICentral``: ``MemoryCentral`` (a node
run without a central platform, and the unit tests) and the real one, a node's
``CmsLink`` to a real CMS over loopback TCP. What a node may rely on is what both do;
where they differ on purpose (a standalone node cannot keep stream credentials), the
difference is named in the interface and not tested here."""

import time

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from vss.interfaces import ICentral
from vss.protocols.codec import encode_body
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    KV,
    Action,
    ChangeKind,
    Entity,
    EventAck,
    EventQuery,
    EventRecord,
    EventReport,
    MsgType,
    PtzControl,
    Role,
    StaticPage,
    SyncChange,
)
from vss.rgm.localcentral import MemoryCentral
from vss.testing import records
from vss.testing.platform import start_platform, verifier, wait_until

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)


def ptz_body(device_id):
    return PtzControl(device_id=device_id, channel=0, op=2, pan=0.5, tilt=0.0, zoom=0.0,
                      speed=1.0, timeout_ms=0)


class CentralConformance:
    """The contract. ``make_central`` fires with the ``ICentral`` of node ``node-a`` on a
    platform that holds: cam-a homed on node-a, cam-b homed on node-b (registered, down),
    user alice in group ops, the grant group:ops -> cam-a (every action)."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.central = yield self.make_central()

    @defer.inlineCallbacks
    def assertFailsWith(self, d, code):
        try:
            result = yield d
        except VssError as e:
            self.assertEqual(e.code, code, e)
            return e
        self.fail(f"expected {code.name}, got {result!r}")

    def test_provides_the_interface(self):
        self.assertTrue(verifyObject(ICentral, self.central))
        for name in ("device_listeners", "connected_listeners", "access_listeners",
                     "nodes_listeners"):
            self.assertIsInstance(getattr(self.central, name), list)
        self.assertIsInstance(self.central.counters, dict)

    def test_synchronised(self):
        self.assertTrue(self.central.synchronised())

    @defer.inlineCallbacks
    def test_registration_info_of_a_pu(self):
        """The answer names the home node; the record itself may be left out (the real
        link: the node serves it from its copy, once applied that far)."""
        info = yield self.central.registration_info("cam-a", Role.PU)
        self.assertEqual(info.home_node, "node-a")
        if info.device is not None:
            self.assertEqual(info.device.device_id, "cam-a")

    @defer.inlineCallbacks
    def test_registration_info_of_an_unknown_pu(self):
        yield self.assertFailsWith(self.central.registration_info("cam-zz", Role.PU),
                                   ResultCode.UNKNOWN_DEVICE)

    @defer.inlineCallbacks
    def test_a_registered_user_is_in_the_nodes_share(self):
        """After a user's first registration the node's static data holds her (the real
        link: CMS makes the node hold her from then on)."""
        info = yield self.central.registration_info("alice", Role.CU)
        if info.user is not None:
            self.assertEqual(info.user.username, "alice")
            self.assertIn(("group:ops", "cam-a"),
                          {(g.principal, g.device_id) for g in info.grants})
        page = yield self.central.pull_static(Entity.USER, "", 100)
        self.assertIn("alice", [u.username for u in page.users])
        page = yield self.central.pull_static(Entity.GRANT, "", 100)
        self.assertIn(("group:ops", "cam-a"), {(g.principal, g.device_id) for g in page.grants})

    @defer.inlineCallbacks
    def test_registration_info_of_an_unknown_user(self):
        yield self.assertFailsWith(self.central.registration_info("mallory", Role.CU),
                                   ResultCode.AUTH_FAILED)

    @defer.inlineCallbacks
    def test_pull_static_pages_to_the_end(self):
        """Paged one record at a time, every page names the next until the last: no
        record twice, and the node's own device among them."""
        seen, cursor = [], ""
        for _ in range(50):
            page = yield self.central.pull_static(Entity.DEVICE, cursor, 1)
            self.assertIsInstance(page, StaticPage)
            self.assertLessEqual(len(page.devices), 1)
            seen += [d.device_id for d in page.devices]
            cursor = page.next_cursor
            if not cursor:
                break
        self.assertEqual(cursor, "")
        self.assertEqual(len(seen), len(set(seen)))
        self.assertIn("cam-a", seen)

    @defer.inlineCallbacks
    def test_route_to_an_unknown_device(self):
        yield self.assertFailsWith(
            self.central.route("cam-zz", MsgType.PTZ_CONTROL, encode_body(ptz_body("cam-zz"))),
            ResultCode.UNKNOWN_DEVICE)

    @defer.inlineCallbacks
    def test_route_to_a_device_whose_home_is_down(self):
        yield self.assertFailsWith(
            self.central.route("cam-b", MsgType.PTZ_CONTROL, encode_body(ptz_body("cam-b"))),
            ResultCode.HOME_NODE_DOWN)
        self.assertIsNone(self.central.route_cache.get("cam-b"))

    @defer.inlineCallbacks
    def test_lookup_of_an_unknown_node(self):
        yield self.assertFailsWith(self.central.lookup_node("node-zz"),
                                   ResultCode.UNKNOWN_NODE)

    @defer.inlineCallbacks
    def test_lookup_of_a_node_that_is_down(self):
        found = yield self.central.lookup_node("node-b")
        self.assertEqual(found.node_id, "node-b")
        self.assertFalse(found.node_up)

    @defer.inlineCallbacks
    def test_report_change_is_acknowledged(self):
        change = SyncChange(node_id="node-a", change_id=7, device_id="cam-a", channel=0,
                            change=ChangeKind.NAME, timestamp=int(time.time() * 1000),
                            items=[KV(key="name", value="Gate A, north")], base_version=0)
        ack = yield self.central.report_change(change)
        self.assertTrue(ack.applied)
        self.assertGreater(ack.seq, 0)

    @defer.inlineCallbacks
    def test_events_reported_queried_and_acknowledged_once(self):
        now = int(time.time() * 1000)
        event = EventRecord(node_id="node-a", seq=1, device_id="cam-a", channel=0,
                            type="motion", phase=1, severity=2, pu_time=now, node_time=now,
                            items=[])
        ack = yield self.central.report_events(EventReport(batch=1, dropped=0,
                                                           events=[event]))
        self.assertEqual((ack.batch, ack.stored), (1, 1))
        query = EventQuery(device_id="cam-a", type="", from_time=0, to_time=0, limit=10,
                           username="alice")
        found = yield self.central.query_events(query)
        self.assertEqual([(e.event.node_id, e.event.seq) for e in found.events],
                         [("node-a", 1)])
        done = yield self.central.ack_event(EventAck(node_id="node-a", seq=1,
                                                     device_id="cam-a", username="alice",
                                                     comment="seen"))
        self.assertEqual((done.acked_by, done.seq), ("alice", 1))
        yield self.assertFailsWith(
            self.central.ack_event(EventAck(node_id="node-a", seq=1, device_id="cam-a",
                                            username="alice", comment="again")),
            ResultCode.CONFLICT)
        yield self.assertFailsWith(
            self.central.ack_event(EventAck(node_id="node-a", seq=99, device_id="cam-a",
                                            username="alice", comment="")),
            ResultCode.NOT_FOUND)

    @defer.inlineCallbacks
    def test_events_of_devices_a_user_may_not_view_are_not_shown(self):
        now = int(time.time() * 1000)
        event = EventRecord(node_id="node-a", seq=2, device_id="cam-b", channel=0,
                            type="motion", phase=1, severity=2, pu_time=now, node_time=now,
                            items=[])
        yield self.central.report_events(EventReport(batch=2, dropped=0, events=[event]))
        found = yield self.central.query_events(EventQuery(
            device_id="", type="", from_time=0, to_time=0, limit=10, username="alice"))
        self.assertNotIn("cam-b", [e.event.device_id for e in found.events])

    @defer.inlineCallbacks
    def test_record_settings_never_stored(self):
        yield self.assertFailsWith(self.central.record_settings("cam-a", 0),
                                   ResultCode.NOT_FOUND)

    def test_status(self):
        status = self.central.status()
        self.assertTrue(status["connected"])
        self.assertIn("routes_cached", status)
        self.assertGreaterEqual(status["held"]["devices"], 1)


class MemoryCentralConformanceTests(CentralConformance, unittest.TestCase):
    def make_central(self):
        central = MemoryCentral()
        central.add_device(records.device("cam-a", "cam-a-secret", home_node="node-a"))
        central.add_device(records.device("cam-b", "cam-b-secret", home_node="node-b"))
        central.add_user(records.user("alice", "alice-pw", groups=["ops"]))
        central.add_grant(records.grant("group:ops", "cam-a", ALL))
        central.nodes = {"node-a": object(), "node-b": None}
        return defer.succeed(central)


class CmsLinkConformanceTests(CentralConformance, unittest.TestCase):
    """The node's link to a real CMS (SQLite database, loopback TCP)."""

    @defer.inlineCallbacks
    def make_central(self):
        p = yield start_platform(self)
        store = p.cms.store
        yield p.change(store.upsert_device("cam-a", "Gate A", 1, 1, "node-a",
                                           verifier("cam-a-secret")))
        yield p.change(store.upsert_device("cam-b", "Gate B", 1, 1, "node-b",
                                           verifier("cam-b-secret")))
        yield p.change(store.upsert_user("alice", verifier("alice-pw"), ["ops"]))
        yield p.change(store.set_grant("group:ops", "cam-a", ALL))
        yield p.start_node("node-b")  # registered once, then down
        yield p.stop_node("node-b")
        cms = p.cms.cms
        yield wait_until(reactor, lambda: "node-b" not in cms.links, what="node-b down")
        node = yield p.start_node("node-a")
        return node.central
