"""
Routing S401-S407 under load, in one process over loopback (vss.testing.platform):

- one link between two nodes, or between a node and CMS, carries the routed requests of
  every CU of a node, so it is not held to the per-link 256 requests in flight (each CU
  link still is), and requests that arrive while that link is being made share it;
- ``--route-cache off`` makes every request for another node's PU take the cache-miss
  path through CMS.
"""

from dataclasses import replace

from twisted.internet import defer, reactor
from twisted.trial import unittest

from vss.node import NodeService
from vss.protocols.messages import Action, MsgType, PtzControl, PtzStatus, Role
from vss.tap.node import Options
from vss.testing.platform import start_platform, verifier, wait_until

ALL = int(Action.VIEW | Action.PTZ)
PER_CU = 200  # two CUs: 400 routed requests in flight on one inter-node link


def ptz(device_id, pan):
    return PtzControl(device_id=device_id, channel=0, op=2, pan=pan, tilt=0.0, zoom=0.0,
                      speed=1.0, timeout_ms=0)


class LateAnswer:
    """A PU that holds every request until told to answer, so they pile up in flight."""

    def __init__(self):
        self.held = []

    def __call__(self, frame, msg):
        d = defer.Deferred()
        self.held.append((d, msg.body.pan))
        return d

    def release(self):
        held, self.held = self.held, []
        for d, pan in held:
            d.callback(PtzStatus(pan=pan, tilt=0.0, zoom=0.0, moving=False))


class RoutingUnderLoad(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        self.work = self.p.workdir
        store, change = self.p.cms.store, self.p.change
        for device_id in ("cam-b1", "cam-b2"):
            yield change(store.upsert_device(device_id, device_id, 1, 1, "node-b",
                                             verifier(f"{device_id}-secret")))
            yield change(store.set_grant("group:ops", device_id, ALL))
        for user in ("alice", "carol"):
            yield change(store.upsert_user(user, verifier(f"{user}-pw"), ["ops"]))
        self.node_b = yield self.p.start_node("node-b")

    @defer.inlineCallbacks
    def load(self, node_a):
        """Two CUs on node-a, each with PER_CU requests in flight to its own PU on node-b
        (so no CU or PU link goes past its own 256)."""
        pus = {d: LateAnswer() for d in ("cam-b1", "cam-b2")}
        for device_id, pu in pus.items():
            yield self.p.login("node-b", Role.PU, device_id, f"{device_id}-secret",
                               on_request=pu)
        cus = []
        for user in ("alice", "carol"):
            cus.append((yield self.p.login("node-a", Role.CU, user, f"{user}-pw")))
        # One answered request per device first (through CMS, then the route is cached).
        for device_id, pu in pus.items():
            d = cus[0].request(MsgType.PTZ_CONTROL, ptz(device_id, 0.0))
            yield wait_until(reactor, lambda pu=pu: pu.held)
            pu.release()
            yield d
        if node_a.settings.route_cache:
            yield wait_until(reactor, lambda: len(node_a.central.route_cache) == 2,
                             what="both routes to be cached")
        requests = [cu.request(MsgType.PTZ_CONTROL, ptz(device_id, i / 1000))
                    for cu, device_id in zip(cus, pus, strict=True) for i in range(PER_CU)]
        yield wait_until(reactor, lambda: all(len(pu.held) == PER_CU for pu in pus.values()),
                         what="every request to reach its PU")
        for pu in pus.values():
            pu.release()
        answers = yield defer.gatherResults(requests, consumeErrors=True)
        return [a.body.pan for a in answers]

    @defer.inlineCallbacks
    def test_400_cached_route_requests_in_flight_on_one_peer_link(self):
        node_a = yield self.p.start_node("node-a")
        pans = yield self.load(node_a)
        self.assertEqual(sorted(round(p, 4) for p in pans),
                         sorted([i / 1000 for i in range(PER_CU)] * 2))
        c = node_a.central.counters
        self.assertEqual(c["routed_via_cms"], 2)
        self.assertEqual(c["routed_direct"], 2 * PER_CU)
        self.assertEqual(len(node_a.central.route_cache), 2)  # never dropped
        # The burst shared one link to node-b instead of opening one per request.
        self.assertEqual(len(self.node_b.peer_server.links), 1)

    @defer.inlineCallbacks
    def test_route_cache_off_sends_every_request_through_cms(self):
        settings = replace(self.p.node_settings("node-a"), route_cache=False)
        node_a = NodeService(settings, reactor)
        node_a.startService()
        yield node_a.started
        yield node_a.central.ready
        self.p.nodes["node-a"] = node_a
        routed0 = self.p.cms.cms.counters["routed"]
        pans = yield self.load(node_a)
        self.assertEqual(len(pans), 2 * PER_CU)
        c = node_a.central.counters
        self.assertEqual(c["routed_direct"], 0)
        self.assertEqual(c["routed_via_cms"], 2 * PER_CU + 2)
        self.assertEqual(self.p.cms.cms.counters["routed"] - routed0, 2 * PER_CU + 2)
        self.assertEqual(len(node_a.central.route_cache), 0)


class RouteCacheOption(unittest.TestCase):
    def options(self, *extra):
        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write("x" * 40)
        o = Options()
        o.parseOptions(["--node-id", "n1", "--cms", "tcp:127.0.0.1:1",
                        "--cluster-secret-file", secret, *extra])
        return o.settings

    def test_on_by_default_and_off_when_asked(self):
        self.assertTrue(self.options().route_cache)
        self.assertFalse(self.options("--route-cache", "off").route_cache)

    def test_anything_else_is_refused(self):
        from vss.config import ConfigError

        with self.assertRaises(ConfigError) as e:
            self.options("--route-cache", "maybe")
        self.assertIn("--route-cache", str(e.exception))
