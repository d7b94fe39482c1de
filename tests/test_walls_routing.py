"""
Routes to a wall (docs/protocol.md 9.9) on a real platform in this process (CMS and
three nodes over loopback TCP): the first command of an operator on node-a for a wall on
node-b goes through CMS, the next ones straight to node-b (the route cache); the wall
moves to node-c and the next command finds it there (the cached route misses, is dropped,
CMS is asked); a wall logged in nowhere is WALL_OFFLINE.
"""

from twisted.internet import defer
from twisted.trial import unittest

from vss.client import SignallingClient, connect
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    CuKind,
    MsgType,
    Role,
    Stream,
    WallAssign,
    WallDescribe,
)
from vss.testing.platform import start_platform, verifier, wait_until


class WallRoutingTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("cam-1", "c", 1, 1, "node-a", verifier("s")))
        yield change(store.upsert_user("op", verifier("op-pw"), []))
        yield change(store.upsert_user("wall1", verifier("wall1-pw"), []))
        yield change(store.set_grant("user:wall1", "cam-1", int(Action.VIEW)))
        yield change(store.set_grant("user:op", "cu:wall1", int(Action.WALL)))
        for node_id in ("node-a", "node-b", "node-c"):
            yield self.p.start_node(node_id)
        self.op = yield self.p.login("node-a", Role.CU, "op", "op-pw")
        self.notes = []

    @defer.inlineCallbacks
    def wall_on(self, node_id):
        client = SignallingClient(Role.CU, "wall1", "wall1-pw", kind=CuKind.TVWALL,
                                  on_notify=self.notes.append)
        yield connect(self.p.reactor, f"tcp:127.0.0.1:{self.p.port(node_id, 'cu')}", client)
        self.p.clients.append(client)
        yield client.request(MsgType.WALL_DESCRIBE, WallDescribe(
            wall_id="", layout=4, tiles=[], assignments=[]))
        cms = self.p.cms.cms
        yield wait_until(self.p.reactor, lambda: cms.cu_nodes.get("cu:wall1") == node_id,
                         what=f"CMS to know the wall is on {node_id}")
        return client

    def assign(self, tile):
        return self.op.request(MsgType.WALL_ASSIGN, WallAssign(
            wall_id="wall1", tile=tile, device_id="cam-1", channel=0, stream=Stream.MAIN))

    @defer.inlineCallbacks
    def test_routed_cached_and_moved(self):
        central = self.p.nodes["node-a"].central
        yield self.wall_on("node-b")
        state = (yield self.assign(0)).body
        self.assertEqual(state.node_id, "node-b")
        self.assertEqual(central.counters["routed_via_cms"], 1)
        yield wait_until(self.p.reactor, lambda: "cu:wall1" in central.route_cache,
                         what="node-a to learn the route")
        self.assertEqual(central.route_cache["cu:wall1"], "node-b")
        direct = central.counters["routed_direct"]
        state = (yield self.assign(1)).body
        self.assertEqual([a.tile for a in state.assignments], [0, 1])
        self.assertEqual(central.counters["routed_direct"], direct + 1)
        self.assertEqual(central.counters["routed_via_cms"], 1)

        # the wall moves to node-c: the cached route misses, CMS is asked, node-c answers
        self.p.clients[-1].link.close()
        yield wait_until(self.p.reactor,
                         lambda: "cu:wall1" not in self.p.cms.cms.cu_nodes,
                         what="CMS to forget the wall on node-b")
        yield self.wall_on("node-c")
        state = (yield self.assign(2)).body
        self.assertEqual(state.node_id, "node-c")
        self.assertEqual([a.tile for a in state.assignments], [2])  # node-c's own state
        self.assertEqual(central.counters["routed_via_cms"], 2)

        # logged in nowhere
        self.p.clients[-1].link.close()
        yield wait_until(self.p.reactor,
                         lambda: "cu:wall1" not in self.p.cms.cms.cu_nodes,
                         what="CMS to forget the wall on node-c")
        failure = yield self.assertFailure(self.assign(0), VssError)
        self.assertEqual(failure.code, ResultCode.WALL_OFFLINE)
