"""
The central management platform end to end with real processes on loopback:
``twistd vss-cms``, three ``twistd vss-node`` (node-a, node-b, node-c), ``vss-pu``
cameras and ``vssctl`` as the user. Every listener binds port 0; the bound ports are
read back from each daemon's ``ports.json``.

Users, devices and grants are written into the CMS database with the store API before
CMS starts. What the processes did is read from outside: CMS's counters through the
admin API (``GET /api/v1/status``), a node's counters from the ``status.json`` it
rewrites every second in its data directory.

Flow S401-S407 (CU to PU communication) as the tests name it:
S401 the CU asks its node; local hit: the PU is on that node; S402 the node asks CMS;
S403 CMS forwards to the home node RGM-N; S404-S405 RGM-N asks the PU, which answers;
S406 RGM-N answers back; S407 the CU gets the answer. With the route cached, S402-S403
are skipped: the node talks to RGM-N directly.
"""

import functools
import json
import os
import signal

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from vss.protocols.messages import Action
from vss.testing import processes, records
from vss.testing.processes import (
    cms_db_path,
    read_status,
    seed_cms_db,
    start_cms,
    start_cms_node,
    start_pu,
    vssctl,
)

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)
ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"
NODES = ("node-a", "node-b", "node-c")
DEVICES = {"cam-a": "node-a", "cam-b": "node-b", "cam-c": "node-c"}
FAST = 2000  # PBKDF2 iterations of the test identities (the default is slow by design)


poll = functools.partial(processes.poll, timeout=20.0)


class PlatformEndToEnd(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        devices = [records.device(d, f"{d}-secret", home_node=home, iterations=FAST)
                   for d, home in DEVICES.items()]
        yield seed_cms_db(
            reactor, cms_db_path(self.work), devices=devices,
            users=[records.user("alice", "alice-pw", ["ops"], iterations=FAST),
                   records.user("bob", "bob-pw", iterations=FAST)],
            grants=[records.grant("group:ops", d, ALL) for d in DEVICES]
            + [records.grant("user:bob", "cam-a", Action.VIEW)],
            admin_tokens=[("e2e", ADMIN_TOKEN)])
        self.cms, self.cms_ports = yield start_cms(reactor, self.work, ["--heartbeat", "1"])
        self.addCleanup(self.cms.stop)
        self.nodes, self.ports = {}, {}
        yield defer.gatherResults([self.start_node(n) for n in NODES], consumeErrors=True)
        self.pus = {}
        self.start_pu("cam-a")
        self.start_pu("cam-b")
        # Presence of node-b's PU reaches node-a through CMS.
        yield self.wait_online("node-a", "cam-a")
        yield self.wait_online("node-a", "cam-b")

    @defer.inlineCallbacks
    def start_node(self, node_id):
        daemon, ports = yield start_cms_node(reactor, self.work, node_id, self.cms_ports)
        self.nodes[node_id], self.ports[node_id] = daemon, ports
        self.addCleanup(daemon.stop)
        # Registered and synchronised: the link is up and the static data applied.
        yield poll(f"{node_id} to synchronise with CMS", lambda: self.node_status(
            node_id, lambda s: s["central"]["connected"] and s["central"]["applied_seq"] > 0))

    def start_pu(self, device_id):
        node = DEVICES[device_id]
        pu = start_pu(reactor, self.work, f"tcp:127.0.0.1:{self.ports[node]['pu']}", device_id,
                      f"{device_id}-secret")
        self.pus[device_id] = pu
        self.addCleanup(pu.stop)
        return pu

    def ctl(self, node_id, *args, user="alice", password="alice-pw"):
        return vssctl(f"tcp:127.0.0.1:{self.ports[node_id]['cu']}", args, user, password)

    @defer.inlineCallbacks
    def devices(self, node_id):
        out, err, code = yield self.ctl(node_id, "--json", "devices")
        self.assertEqual(code, 0, err)
        return {d["device_id"]: d for d in json.loads(out)["devices"]}

    @defer.inlineCallbacks
    def wait_online(self, node_id, device_id, online=True):
        @defer.inlineCallbacks
        def check():
            seen = yield self.devices(node_id)
            return seen.get(device_id, {}).get("online") == online

        yield poll(f"{device_id} {'online' if online else 'offline'} on {node_id}", check,
                   timeout=30, interval=0.3)

    def node_status(self, node_id, predicate=None):
        """The node's status.json; with ``predicate``, whether it holds."""
        status = read_status(self.work, node_id)
        if predicate is None:
            return status
        return status is not None and predicate(status)

    @defer.inlineCallbacks
    def cms_status(self):
        """CMS's status through the admin API (counters, registered nodes)."""
        agent = Agent(reactor)
        response = yield agent.request(
            b"GET", f"http://127.0.0.1:{self.cms_ports['admin']}/api/v1/status".encode(),
            Headers({b"Authorization": [f"Bearer {ADMIN_TOKEN}".encode()]}))
        body = yield readBody(response)
        self.assertEqual(response.code, 200, body)
        return json.loads(body)

    @defer.inlineCallbacks
    def assert_fails(self, node_id, expected, *args, **kw):
        out, err, code = yield self.ctl(node_id, *args, **kw)
        self.assertEqual(code, 1, (out, err))
        self.assertIn(expected, err)
        return err

    @defer.inlineCallbacks
    def test_s401_s407_local_hit_then_through_cms_then_node_to_node(self):
        cms0 = (yield self.cms_status())["routed"]
        self.assertEqual(cms0, 0)
        self.assertEqual(sorted(n["node_id"] for n in (yield self.cms_status())["nodes"]
                                if n["state"] == "up"), list(NODES))

        # S401 + local hit + S407: CU and PU both on node-a; CMS is not involved.
        out, err, code = yield self.ctl("node-a", "ptz", "cam-a", "goto", "--pan", "0.25")
        self.assertEqual(code, 0, err)
        yield poll("node-a to count the local relay", lambda: self.node_status(
            "node-a", lambda s: s["rgm"]["relayed"] >= 1))
        a = self.node_status("node-a")
        self.assertEqual(a["rgm"]["routed"], 0)
        self.assertEqual(a["central"]["routed_via_cms"], 0)
        self.assertEqual((yield self.cms_status())["routed"], 0)

        # S401-S407 across nodes: node-a does not hold cam-b, so S402 asks CMS, S403 CMS
        # forwards to node-b, S404-S405 node-b's PU moves, S406-S407 back to the CU.
        out, err, code = yield self.ctl("node-a", "ptz", "cam-b", "goto", "--pan", "0.5",
                                        "--tilt", "-0.25")
        self.assertEqual(code, 0, err)
        self.assertEqual((yield self.cms_status())["routed"], 1)
        yield poll("node-a to cache the route to node-b", lambda: self.node_status(
            "node-a", lambda s: s["central"]["routes_cached"] == 1
            and s["central"]["routed_via_cms"] == 1))
        # S404: node-b relayed it to its PU.
        yield poll("node-b to count the routed request", lambda: self.node_status(
            "node-b", lambda s: s["rgm"]["relayed"] == 1))
        b_relayed = self.node_status("node-b")["rgm"]["relayed"]

        # Cached route: the next requests go straight to node-b (the PU's real position
        # comes back), and CMS routes nothing more.
        @defer.inlineCallbacks
        def arrived():
            out, err, code = yield self.ctl("node-a", "--json", "ptz", "cam-b", "step")
            self.assertEqual(code, 0, err)
            status = json.loads(out)
            return abs(status["pan"] - 0.5) < 1e-3 and abs(status["tilt"] + 0.25) < 1e-3

        yield poll("cam-b to reach the position", arrived, timeout=15, interval=0.2)
        self.assertEqual((yield self.cms_status())["routed"], 1)
        yield poll("node-a to count direct routes", lambda: self.node_status(
            "node-a", lambda s: s["central"]["routed_direct"] >= 1))
        a = self.node_status("node-a")
        self.assertEqual(a["central"]["routed_via_cms"], 1)
        self.assertEqual(a["central"]["routed_direct"], a["rgm"]["routed"] - 1)
        yield poll("node-b to count the direct requests", lambda: self.node_status(
            "node-b", lambda s: s["rgm"]["relayed"] > b_relayed))

        # PU offline: cam-c's home node-c is up, its camera is not: DEVICE_OFFLINE comes
        # back from node-c through CMS.
        yield self.assert_fails("node-a", "device_offline", "ptz", "cam-c", "stop")
        self.assertEqual((yield self.cms_status())["routed"], 2)
        # node-c answered, so the route to it is cached too.
        yield poll("node-a to cache the route to node-c", lambda: self.node_status(
            "node-a", lambda s: s["central"]["routes_cached"] == 2))

        # Unknown device: no grant can name it, so the node refuses it at S401 and never
        # asks CMS (existence is not revealed either).
        yield self.assert_fails("node-a", "forbidden", "ptz", "no-such-cam", "stop")
        # Not granted: bob may view cam-a, not move it.
        yield self.assert_fails("node-a", "forbidden", "ptz", "cam-a", "stop", user="bob",
                                password="bob-pw")
        self.assertEqual((yield self.cms_status())["routed"], 2)

        # Node down: node-b is killed; CMS sees its link drop. The cached direct route
        # fails, node-a forgets it and asks CMS, which answers HOME_NODE_DOWN.
        yield self.nodes["node-b"].stop(signal.SIGKILL)

        @defer.inlineCallbacks
        def node_b_gone():
            return "node-b" not in [n["node_id"] for n in (yield self.cms_status())["nodes"]
                                    if n["state"] == "up"]

        yield poll("CMS to see node-b down", node_b_gone)
        yield self.assert_fails("node-a", "home_node_down", "ptz", "cam-b", "stop")
        self.assertEqual((yield self.cms_status())["routed"], 3)
        yield poll("node-a to drop the route to node-b", lambda: self.node_status(
            "node-a", lambda s: s["central"]["routes_cached"] == 1))
        # And the other nodes see node-b's camera offline.
        yield self.wait_online("node-c", "cam-b", online=False)
        # The local path is untouched.
        out, err, code = yield self.ctl("node-a", "ptz", "cam-a", "stop")
        self.assertEqual(code, 0, err)

    @defer.inlineCallbacks
    def test_a_killed_node_restarts_from_its_local_copy(self):
        before = yield self.devices("node-a")
        self.assertEqual(set(before), set(DEVICES))
        self.assertEqual({d: v["online"] for d, v in before.items()},
                         {"cam-a": True, "cam-b": True, "cam-c": False})
        # A routed request so node-a holds a cached route before it dies.
        out, err, code = yield self.ctl("node-a", "ptz", "cam-b", "stop")
        self.assertEqual(code, 0, err)
        reloads = self.node_status("node-a")["central"]["reloads"]
        self.assertEqual(reloads, 1)

        yield self.nodes["node-a"].stop(signal.SIGKILL)
        yield self.pus.pop("cam-a").stop()
        os.remove(os.path.join(self.work, "node-a", "status.json"))
        # Its memory database died with it, not the copy in its data directory: the
        # restarted node serves from that and fetches only what it missed.
        yield self.start_node("node-a")
        self.assertEqual(self.node_status("node-a")["central"]["reloads"], 0)
        self.assertGreaterEqual(self.node_status("node-a")["central"]["fetches"], 1)
        self.start_pu("cam-a")  # the camera finds the node at its new port
        yield self.wait_online("node-a", "cam-a")
        yield self.wait_online("node-a", "cam-b")
        after = yield self.devices("node-a")
        self.assertEqual(after, before)
        # And it serves again, locally and across nodes.
        out, err, code = yield self.ctl("node-a", "ptz", "cam-a", "stop")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.ctl("node-a", "ptz", "cam-b", "stop")
        self.assertEqual(code, 0, err)
