"""
The central platform with nodes over loopback TCP in one process: node registration and
reload, routing S401-S407 with the route cache, passive sync S501-S506, active sync
S601-S605, and their live effects without restarts.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    KV,
    Action,
    ChangeKind,
    DeviceList,
    MsgType,
    PtzControl,
    PtzStatus,
    Role,
    StateChange,
)
from vss.testing.platform import start_platform, verifier, wait_until

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)


def ptz(device_id, pan=0.25):
    return PtzControl(device_id=device_id, channel=0, op=2, pan=pan, tilt=0.0, zoom=0.0,
                      speed=1.0, timeout_ms=0)


class Answering:
    def __init__(self):
        self.seen = []

    def __call__(self, frame, msg):
        self.seen.append(msg.body)
        return PtzStatus(pan=msg.body.pan, tilt=0.0, zoom=0.0, moving=False)


class CentralPlatformTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        self.work = self.p.workdir
        self.cms = self.p.cms.cms
        self.store = self.p.cms.store
        yield self.p.change(self.store.upsert_device("cam-a", "Gate A", 1, 1, "node-a",
                                                   verifier("cam-a-secret")))
        yield self.p.change(self.store.upsert_device("cam-b", "Gate B", 1, 1, "node-b",
                                                   verifier("cam-b-secret")))
        yield self.p.change(self.store.upsert_user("alice", verifier("alice-pw"), ["ops"]))
        yield self.p.change(self.store.set_grant("group:ops", "cam-a", ALL))
        yield self.p.change(self.store.set_grant("user:alice", "cam-b", ALL))
        self.node_a = yield self.p.start_node("node-a")
        self.node_b = yield self.p.start_node("node-b")
        # alice is registered on both nodes (as her first login there does): each holds
        # her, and the devices she may see
        for node in ("node-a", "node-b"):
            yield self.p.change(self.store.register_user(node, "alice"))
        for node in (self.node_a, self.node_b):
            yield wait_until(reactor, lambda n=node: {d.device_id for d in n.store.devices()}
                             == {"cam-a", "cam-b"}, what="alice's devices on each node")

    def test_nodes_register_and_reload_their_static_data(self):
        a = self.node_a.store
        self.assertEqual({d.device_id for d in a.devices()}, {"cam-a", "cam-b"})
        # A device's verifier goes only to its home node.
        self.assertTrue(a.get_device("cam-a").verifier.stored_key)
        self.assertFalse(a.get_device("cam-b").verifier.stored_key)
        self.assertEqual(a.actions_for("alice", "cam-a"), ALL)
        self.assertEqual(set(self.cms.sessions), {"node-a", "node-b"})
        self.assertGreater(self.node_a.central.applier.applied_seq, 0)

    @defer.inlineCallbacks
    def test_s503_a_node_holds_its_share_and_a_first_login_brings_the_users_view(self):
        """A node holds its own devices; a user's first login there brings the user,
        the devices the user may see (without their verifiers) and the grants on them;
        a later grant to that user brings its device, in the change stream."""
        yield self.p.change(self.store.upsert_device("cam-c", "Gate C", 1, 1, "node-c",
                                                   verifier("cam-c-secret")))
        yield self.p.change(self.store.upsert_user("bob", verifier("bob-pw"), []))
        yield self.p.change(self.store.set_grant("user:bob", "cam-b", ALL))
        node_c = yield self.p.start_node("node-c")
        self.assertEqual({d.device_id for d in node_c.store.devices()}, {"cam-c"})
        self.assertEqual(node_c.store.users(), [])
        self.assertEqual(node_c.store.grants(), [])
        notified = self.cms.counters["notified_changes"]
        # a change of cam-a goes to the nodes that hold it, not to node-c
        changes = yield self.p.change(self.store.update_device_fields("cam-a", name="A2"))
        yield wait_until(reactor, lambda: self.node_b.store.get_device("cam-a").name == "A2")
        self.assertEqual(self.cms.counters["notified_changes"] - notified, 2)
        self.assertIsNone(node_c.store.get_device("cam-a"))
        yield wait_until(reactor, lambda: node_c.central.applier.applied_seq
                         >= changes[-1].seq, timeout=10, what="node-c to skip past it")
        cu = yield self.p.login("node-c", Role.CU, "bob", "bob-pw")
        yield wait_until(reactor, lambda: node_c.store.get_device("cam-b") is not None,
                         what="bob's view on node-c")
        self.assertFalse(node_c.store.get_device("cam-b").verifier.stored_key)
        self.assertEqual(node_c.store.actions_for("bob", "cam-b"), ALL)
        self.assertIsNone(node_c.store.get_device("cam-a"))
        yield self.p.change(self.store.set_grant("user:bob", "cam-a", ALL))
        yield wait_until(reactor, lambda: node_c.store.get_device("cam-a") is not None
                         and node_c.store.actions_for("bob", "cam-a") == ALL,
                         what="the newly granted device on node-c")
        page = (yield cu.request(MsgType.DEVICE_LIST, DeviceList(cursor="", limit=10))).body
        self.assertEqual({d.device_id: d.name for d in page.devices},
                         {"cam-a": "A2", "cam-b": "Gate B"})
        # what node-c holds survives a reload of its share from CMS
        yield self.p.stop_node("node-c")
        os.remove(os.path.join(self.p.workdir, "node-c", "static.snapshot"))
        node_c = yield self.p.start_node("node-c")
        self.assertEqual({d.device_id for d in node_c.store.devices()},
                         {"cam-a", "cam-b", "cam-c"})
        self.assertEqual([u.username for u in node_c.store.users()], ["bob"])
        self.assertEqual(node_c.central.counters["reloads"], 1)

    @defer.inlineCallbacks
    def test_s401_s407_cross_node_request_through_cms_then_by_the_cached_route(self):
        pu_b = Answering()
        yield self.p.login("node-b", Role.PU, "cam-b", "cam-b-secret", on_request=pu_b)
        cu = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        msg = yield cu.request(MsgType.PTZ_CONTROL, ptz("cam-b", 0.5))
        self.assertEqual(msg.body.pan, 0.5)
        self.assertEqual(self.node_a.central.counters["routed_via_cms"], 1)
        self.assertEqual(self.cms.counters["routed"], 1)
        yield wait_until(reactor, lambda: "cam-b" in self.node_a.central.route_cache,
                         what="the route to be cached")
        for i in range(5):
            msg = yield cu.request(MsgType.PTZ_CONTROL, ptz("cam-b", i / 10))
            self.assertAlmostEqual(msg.body.pan, i / 10, places=5)
        self.assertEqual(self.cms.counters["routed"], 1)
        self.assertEqual(self.node_a.central.counters["routed_direct"], 5)
        self.assertEqual(len(pu_b.seen), 6)

    @defer.inlineCallbacks
    def test_distinct_errors_unknown_device_offline_and_home_down(self):
        yield self.p.change(self.store.upsert_device("ghost", "Ghost", 1, 1, "node-b",
                                                   verifier("ghost-secret")))
        yield self.p.change(self.store.set_grant("user:alice", "ghost", ALL))
        cu = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        yield wait_until(reactor, lambda: self.node_a.store.actions_for("alice", "ghost"))
        # The device is removed centrally while node-a has not heard of it yet.
        yield self.store.remove_device("ghost")
        del self.cms.homes["ghost"]
        with self.assertRaises(VssError) as e:
            yield cu.request(MsgType.PTZ_CONTROL, ptz("ghost"))
        self.assertEqual(e.exception.code, ResultCode.UNKNOWN_DEVICE)
        with self.assertRaises(VssError) as e:
            yield cu.request(MsgType.PTZ_CONTROL, ptz("cam-b"))
        self.assertEqual(e.exception.code, ResultCode.DEVICE_OFFLINE)
        yield self.p.stop_node("node-b")
        yield wait_until(reactor, lambda: "node-b" not in self.cms.sessions)
        with self.assertRaises(VssError) as e:
            yield cu.request(MsgType.PTZ_CONTROL, ptz("cam-b"))
        self.assertEqual(e.exception.code, ResultCode.HOME_NODE_DOWN)

    @defer.inlineCallbacks
    def test_s501_s506_rename_and_revoke_reach_the_nodes_live(self):
        yield self.p.login("node-a", Role.PU, "cam-a", "cam-a-secret", on_request=Answering())
        cu = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        changes = yield self.p.change(self.store.update_device_fields("cam-a", name="North gate"))
        seq = changes[-1].seq
        for node in (self.node_a, self.node_b):
            yield wait_until(reactor, lambda n=node: n.central.applier.applied_seq >= seq,
                             what="the rename to be applied")
        page = (yield cu.request(MsgType.DEVICE_LIST, DeviceList(cursor="", limit=10))).body
        names = {d.device_id: d.name for d in page.devices}
        self.assertEqual(names["cam-a"], "North gate")
        # S506: CMS records what each node applied.
        yield wait_until(reactor, lambda: all(s.applied_seq >= seq
                                              for s in self.cms.sessions.values()))
        yield cu.request(MsgType.PTZ_CONTROL, ptz("cam-a"))
        yield self.p.change(self.store.remove_grant("group:ops", "cam-a"))
        yield wait_until(reactor, lambda: not self.node_b.store.actions_for("alice", "cam-a"))
        with self.assertRaises(VssError) as e:
            yield cu.request(MsgType.PTZ_CONTROL, ptz("cam-a"))
        self.assertEqual(e.exception.code, ResultCode.FORBIDDEN)

    @defer.inlineCallbacks
    def test_sessions_of_a_removed_user_end(self):
        cu = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        lost = cu.lost
        yield self.p.change(self.store.remove_user("alice"))
        yield lost
        self.assertIsNone(cu.link)

    @defer.inlineCallbacks
    def test_s601_s605_a_pu_rename_lands_in_the_db_and_on_other_nodes(self):
        pu = yield self.p.login("node-a", Role.PU, "cam-a", "cam-a-secret",
                                on_request=Answering())
        pu.link.send_notify(MsgType.STATE_CHANGE, StateChange(
            device_id="cam-a", channel=0, change=int(ChangeKind.NAME), timestamp=1,
            items=[KV(key="name", value="Renamed by the camera")]))

        @defer.inlineCallbacks
        def landed():
            d = yield self.store.get_device("cam-a")
            return d.name

        from twisted.internet import task

        for _ in range(500):
            if (yield landed()) == "Renamed by the camera":
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual((yield landed()), "Renamed by the camera")
        yield wait_until(reactor, lambda: self.node_b.store.get_device("cam-a").name
                         == "Renamed by the camera", what="the rename on node-b")
        self.assertEqual(self.node_a.central.outbox.pending, {})

    @defer.inlineCallbacks
    def test_a_moved_device_is_reached_at_its_new_home(self):
        pu_b = Answering()
        yield self.p.login("node-b", Role.PU, "cam-b", "cam-b-secret", on_request=pu_b)
        cu = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        yield cu.request(MsgType.PTZ_CONTROL, ptz("cam-b"))
        yield wait_until(reactor, lambda: "cam-b" in self.node_a.central.route_cache)
        node_c = yield self.p.start_node("node-c")
        yield self.p.change(self.store.update_device_fields("cam-b", home_node="node-c"))
        yield wait_until(reactor, lambda: "cam-b" not in self.node_a.central.route_cache,
                         what="the cached route to be dropped")
        pu_c = Answering()
        yield wait_until(reactor, lambda: node_c.store.get_device("cam-b") is not None
                         and node_c.store.get_device("cam-b").home_node == "node-c")
        yield self.p.login("node-c", Role.PU, "cam-b", "cam-b-secret", on_request=pu_c)
        yield cu.request(MsgType.PTZ_CONTROL, ptz("cam-b", 0.75))
        self.assertEqual(pu_c.seen[-1].pan, 0.75)

    @defer.inlineCallbacks
    def test_a_node_that_was_away_catches_up_and_without_its_copy_reloads(self):
        yield self.p.stop_node("node-b")
        yield self.p.change(self.store.update_device_fields("cam-a", name="While away"))
        yield self.p.change(self.store.upsert_user("alice", verifier("alice-pw2"), ["x"]))
        node_b = yield self.p.start_node("node-b")
        self.assertEqual(node_b.store.get_device("cam-a").name, "While away")
        self.assertEqual(node_b.store.get_user("alice").groups, ["x"])
        # Its memory store restarted empty; the copy in its data directory did not.
        self.assertEqual(node_b.central.counters["reloads"], 0)
        self.assertGreaterEqual(node_b.central.counters["fetches"], 1)
        # Without that copy, a restart reloads everything from CMS.
        yield self.p.stop_node("node-b")
        os.remove(os.path.join(self.p.workdir, "node-b", "static.snapshot"))
        yield self.p.change(self.store.update_device_fields("cam-a", name="Reloaded"))
        node_b = yield self.p.start_node("node-b")
        self.assertEqual(node_b.store.get_device("cam-a").name, "Reloaded")
        self.assertEqual(node_b.central.counters["reloads"], 1)

    @defer.inlineCallbacks
    def test_cms_restart_nodes_reconnect_and_nothing_is_lost(self):
        yield self.p.stop_cms()
        # A PU change while CMS is away waits in the node's outbox.
        pu = yield self.p.login("node-a", Role.PU, "cam-a", "cam-a-secret",
                                on_request=Answering())
        pu.link.send_notify(MsgType.STATE_CHANGE, StateChange(
            device_id="cam-a", channel=0, change=int(ChangeKind.NAME), timestamp=1,
            items=[KV(key="name", value="Changed during the outage")]))
        yield wait_until(reactor, lambda: len(self.node_a.central.outbox.pending) == 1)
        yield self.p.start_cms(port=self.p.cms_port)
        self.cms = self.p.cms.cms
        self.store = self.p.cms.store
        yield wait_until(reactor, lambda: set(self.cms.sessions) == {"node-a", "node-b"},
                         timeout=30, what="the nodes to reconnect")
        yield wait_until(reactor, lambda: not self.node_a.central.outbox.pending, timeout=10)
        device = yield self.store.get_device("cam-a")
        self.assertEqual(device.name, "Changed during the outage")

    @defer.inlineCallbacks
    def test_presence_of_a_pu_reaches_the_other_nodes(self):
        pu = yield self.p.login("node-b", Role.PU, "cam-b", "cam-b-secret",
                                on_request=Answering())
        yield wait_until(reactor, lambda: self.node_a.store.get_state("cam-b").get("online"),
                         what="node-a to see cam-b online")
        self.assertEqual(self.cms.online_per_node(), {"node-b": 1})
        pu.link.abort()
        yield wait_until(reactor,
                         lambda: self.node_a.store.get_state("cam-b").get("online") is False,
                         what="node-a to see cam-b offline")
        # A node that registers later learns who is online.
        yield self.p.login("node-b", Role.PU, "cam-b", "cam-b-secret", on_request=Answering())
        node_c = yield self.p.start_node("node-c")
        yield wait_until(reactor, lambda: node_c.store.get_state("cam-b").get("online"),
                         what="node-c to learn cam-b is online")

    @defer.inlineCallbacks
    def test_operations_status_shows_nodes_devices_and_who_is_online(self):
        yield self.p.login("node-a", Role.PU, "cam-a", "cam-a-secret", on_request=Answering())
        yield wait_until(reactor, lambda: self.cms.online_per_node().get("node-a") == 1)
        status = yield self.p.cms.status()
        nodes = {n["node_id"]: n for n in status["nodes"]}
        self.assertEqual(nodes["node-a"]["state"], "up")
        self.assertEqual(nodes["node-a"]["devices"], 1)
        self.assertEqual(nodes["node-a"]["devices_online"], 1)
        self.assertEqual(nodes["node-b"]["devices_online"], 0)
        self.assertEqual(status["devices"], 2)
        yield self.p.stop_node("node-b")
        yield wait_until(reactor, lambda: "node-b" not in self.cms.sessions)
        status = yield self.p.cms.status()
        self.assertEqual({n["node_id"]: n["state"] for n in status["nodes"]},
                         {"node-a": "up", "node-b": "down"})
