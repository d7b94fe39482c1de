"""
No change is lost when a node and then the central platform are killed (SIGKILL) in the
middle of a stream of changes: real ``twistd vss-cms`` and ``twistd vss-node``
processes on loopback.

The stream mixes admin renames through the MMS HTTP API (S501-S506; an answer 200 is
the acknowledgement) and PU renames sent by small PU clients logged in at their home
nodes (S601-S605; the node keeps them in its durable outbox until CMS acknowledges
them). Admins rename only admin devices and PUs only their own, so no PU change can be
refused as stale and every PU change a node has taken in must land.

During the stream: node-a is SIGKILLed and restarted (a full reload); CMS is SIGKILLed;
while it is down PUs keep renaming (the changes wait in the outboxes) and node-b is
SIGKILLed with changes in its outbox; CMS is restarted on the same port and node-b
restarted. At the end: every node's device list (``vssctl devices --json``) equals
the devices alice may see in the DB (the admin API), each node holds exactly those
(its own, and the ones it follows since alice logged in there: not the device of a
node that is not running and that nobody may see), every outbox is empty, and, read
from the DB after CMS stopped,
every acknowledged admin rename and every PU rename a node had taken in has its own
change-log entry and the final names are the latest ones.
"""

import json
import os
import signal

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from vss.cli.admin import Client
from vss.client import SignallingClient, connect
from vss.cms.store import make_static_store
from vss.protocols.messages import KV, Action, ChangeKind, Entity, MsgType, Role, StateChange
from vss.testing import records
from vss.testing.processes import (
    cms_db_path,
    poll,
    read_status,
    seed_cms_db,
    start_cms,
    start_cms_node,
    vssctl,
)

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)
TOKEN = "sync-kill-admin-token-0123456789abcdef"
FAST = 2000
ADMIN_DEVICES = {"adm-1": "node-a", "adm-2": "node-b", "adm-3": "node-a", "adm-4": "node-b"}
PU_DEVICES = {"pu-a1": "node-a", "pu-a2": "node-a", "pu-b1": "node-b", "pu-b2": "node-b"}
NODES = ("node-a", "node-b")
#: a device of a node that is not running, which nobody may see: no node holds it
ELSEWHERE = "far-z1"
# A PU change sent this long before its node is killed was taken in (outbox fsynced).
SETTLE = 0.5


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class KillDuringSyncTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        devices = [records.device(d, d + "-secret", home_node=home, iterations=FAST)
                   for d, home in {**ADMIN_DEVICES, **PU_DEVICES}.items()]
        yield seed_cms_db(
            reactor, cms_db_path(self.work),
            devices=[*devices, records.device(ELSEWHERE, "x", home_node="node-z",
                                              iterations=FAST)],
            users=[records.user("alice", "alice-pw", ["ops"], iterations=FAST)],
            grants=[records.grant("group:ops", d.device_id, ALL) for d in devices],
            admin_tokens=[("sync-kill", TOKEN)])
        self.daemons = []
        self.addCleanup(self.stop_all)
        yield self.start_cms()
        self.nodes, self.ports = {}, {}
        yield defer.gatherResults([self.start_node(n) for n in NODES], consumeErrors=True)
        self.pus = {}  # device_id -> SignallingClient
        self.admin_sent = []  # (device_id, name, outcome: "ok" | "failed" | "unknown")
        self.pu_sent = []  # (device_id, name, node_id, monotonic time sent)
        self.killed = {}  # node_id -> time of its SIGKILL
        self.relogged = {}  # node_id -> time its PUs last logged in
        self.counter = 0
        self.streaming = False

    @defer.inlineCallbacks
    def stop_all(self):
        self.streaming = False
        for client in self.pus.values():
            if client.link is not None:
                client.link.abort()
        for d in reversed(self.daemons):
            yield d.stop()

    # -- processes

    @defer.inlineCallbacks
    def start_cms(self, port=0):
        extra = ["--heartbeat", "1"]
        if port:
            extra += ["--node-listen", f"tcp:{port}:interface=127.0.0.1"]
        self.cms, self.cms_ports = yield start_cms(reactor, self.work, extra)
        self.daemons.append(self.cms)
        self.api = Client(reactor, f"http://127.0.0.1:{self.cms_ports['admin']}/api/v1", TOKEN,
                          timeout=10)

    @defer.inlineCallbacks
    def start_node(self, node_id, wait=True):
        daemon, ports = yield start_cms_node(reactor, self.work, node_id, self.cms_ports)
        self.daemons.append(daemon)
        self.nodes[node_id], self.ports[node_id] = daemon, ports
        if wait:
            yield poll(f"{node_id} to synchronise", lambda: self.central(node_id).get(
                "connected") and self.central(node_id).get("applied_seq", 0) > 0)

    def central(self, node_id):
        return (read_status(self.work, node_id) or {}).get("central", {})

    @defer.inlineCallbacks
    def kill(self, daemon):
        """SIGKILL, and wait for the process to be gone."""
        code = yield daemon.stop(signal.SIGKILL)
        self.assertNotEqual(code, 0)

    @defer.inlineCallbacks
    def kill_node(self, node_id):
        self.killed[node_id] = reactor.seconds()
        yield self.kill(self.nodes[node_id])
        # The node's status.json is stale now; the restarted node rewrites it.
        os.remove(os.path.join(self.work, node_id, "status.json"))

    @defer.inlineCallbacks
    def login_pus(self, node_id):
        for device_id, home in PU_DEVICES.items():
            if home != node_id:
                continue
            client = SignallingClient(Role.PU, device_id, device_id + "-secret", channels=1)
            yield connect(reactor, f"tcp:127.0.0.1:{self.ports[node_id]['pu']}", client)
            self.pus[device_id] = client
        self.relogged[node_id] = reactor.seconds()

    # -- the stream of changes

    def next_name(self, prefix):
        self.counter += 1
        return f"{prefix} {self.counter}"

    @defer.inlineCallbacks
    def admin_rename(self, device_id):
        name = self.next_name("admin")
        entry = [device_id, name, "unknown"]
        self.admin_sent.append(entry)
        try:
            yield self.api.call("PATCH", f"/devices/{device_id}", {"name": name})
            entry[2] = "ok"
        except Exception as e:
            # Refused connections never reached CMS; anything else may have.
            entry[2] = "failed" if "cannot reach" in str(e) else "unknown"

    def pu_rename(self, device_id):
        client = self.pus.get(device_id)
        if client is None or client.link is None:
            return
        name = self.next_name("pu")
        client.link.send_notify(MsgType.STATE_CHANGE, StateChange(
            device_id=device_id, channel=0, change=int(ChangeKind.NAME), timestamp=1,
            items=[KV(key="name", value=name)]))
        self.pu_sent.append((device_id, name, PU_DEVICES[device_id], reactor.seconds()))

    @defer.inlineCallbacks
    def stream(self):
        self.streaming = True
        i = 0
        while self.streaming:
            i += 1
            admin = sorted(ADMIN_DEVICES)[i % len(ADMIN_DEVICES)]
            pu = sorted(PU_DEVICES)[i % len(PU_DEVICES)]
            self.pu_rename(pu)
            d = self.admin_rename(admin)
            yield defer.DeferredList([d, sleep(0.02)])

    # -- the test

    @defer.inlineCallbacks
    def test_sigkill_of_a_node_then_of_cms_loses_no_change(self):
        for node_id in NODES:  # before any user logged in there: its own devices only
            own = [d for d, home in {**ADMIN_DEVICES, **PU_DEVICES}.items() if home == node_id]
            self.assertEqual(self.central(node_id)["held"]["devices"], len(own))
        yield self.login_pus("node-a")
        yield self.login_pus("node-b")
        streaming = self.stream()
        yield sleep(1.0)

        # A node dies mid-stream and comes back: a full reload, its outbox resent.
        yield self.kill_node("node-a")
        yield sleep(0.3)
        yield self.start_node("node-a")
        yield self.login_pus("node-a")
        yield sleep(1.0)

        # CMS dies mid-stream; PU changes wait in the outboxes meanwhile.
        port = self.cms_ports["node"]
        yield self.kill(self.cms)
        yield poll("the nodes to see CMS gone", lambda: not any(
            self.central(n).get("connected") for n in NODES))
        yield sleep(1.0)
        # node-b dies too, with changes in its outbox.
        self.assertGreater(self.central("node-b").get("outbox", 0), 0)
        yield self.kill_node("node-b")
        yield self.start_cms(port=port)
        yield self.start_node("node-b", wait=False)
        yield poll("both nodes to reconnect", lambda: all(
            self.central(n).get("connected") for n in NODES))
        yield self.login_pus("node-b")
        yield sleep(1.0)
        self.streaming = False
        yield streaming

        yield self.check_nodes_equal_the_db()
        yield self.check_the_change_log()

    @defer.inlineCallbacks
    def db_devices(self):
        items = yield self.api.all_pages("/devices")
        return {d["device_id"]: (d["name"], d["home_node"]) for d in items
                if d["device_id"] != ELSEWHERE}

    @defer.inlineCallbacks
    def node_devices(self, node_id):
        out, err, code = yield vssctl(f"tcp:127.0.0.1:{self.ports[node_id]['cu']}",
                                      ["--json", "devices"], "alice", "alice-pw")
        self.assertEqual(code, 0, err)
        return {d["device_id"]: (d["name"], d["node_id"]) for d in json.loads(out)["devices"]}

    @defer.inlineCallbacks
    def check_nodes_equal_the_db(self):
        last = {}

        @defer.inlineCallbacks
        def equal():
            db = yield self.db_devices()
            for node_id in NODES:
                status = self.central(node_id)
                held = yield self.node_devices(node_id)
                count = status.get("held", {}).get("devices")
                last[node_id] = (status.get("outbox"), count, {
                    k: (held.get(k), v) for k, v in db.items() if held.get(k) != v})
                if status.get("outbox") or held != db or count != len(db):
                    return False
            return True

        try:
            yield poll("every node to equal the DB", equal, timeout=30, interval=0.3)
        except AssertionError:
            self.fail(f"nodes differ from the DB (outbox, devices held, "
                      f"{{device: (node, DB)}}): {last}")

    @defer.inlineCallbacks
    def check_the_change_log(self):
        yield self.cms.stop()
        store = make_static_store("sqlite:" + cms_db_path(self.work), reactor=reactor)
        yield store.open()
        self.addCleanup(store.close)
        log, _ = yield store.changes_after(0, 1_000_000)
        devices, _ = yield store.list_devices(limit=1000)
        names = {d.device_id: d.name for d in devices}
        entries = {}
        for c in log:
            if c.entity == Entity.DEVICE:
                entries.setdefault((c.key, c.origin), []).append(c.seq)

        # Admin renames: each acknowledged one has its own log entry; the final name is
        # the last acknowledged one or a later one whose answer was lost.
        for device_id in ADMIN_DEVICES:
            sent = [(n, o) for d, n, o in self.admin_sent if d == device_id]
            acked = [n for n, o in sent if o == "ok"]
            maybe = [n for n, o in sent if o == "unknown"]
            self.assertGreater(len(acked), 5)
            logged = entries.get((device_id, "mms"), [])[1:]  # the first one created it
            self.assertGreaterEqual(len(logged), len(acked))
            self.assertLessEqual(len(logged), len(acked) + len(maybe))
            tail = sent[[n for n, _ in sent].index(acked[-1]):]
            self.assertIn(names[device_id], [n for n, o in tail if o != "failed"])

        # PU renames: every one a node had taken in (sent at least SETTLE before that
        # node was killed, or to it after it came back) has its own log entry; the
        # final name is the last one.
        must, may = {}, {}
        for device_id, name, node_id, at in self.pu_sent:
            killed = self.killed.get(node_id)
            lost_ok = killed is not None and killed - SETTLE < at < self.relogged[node_id]
            (may if lost_ok else must).setdefault(device_id, []).append(name)
        for device_id, home in PU_DEVICES.items():
            logged = entries.get((device_id, home), [])
            n_must, n_may = len(must.get(device_id, [])), len(may.get(device_id, []))
            self.assertGreater(n_must, 5)
            self.assertGreaterEqual(len(logged), n_must, f"{device_id}: PU changes lost")
            self.assertLessEqual(len(logged), n_must + n_may,
                                 f"{device_id}: a PU change applied twice")
            self.assertEqual(names[device_id], self.last_pu_name(device_id))

    def last_pu_name(self, device_id):
        return [n for d, n, _, _ in self.pu_sent if d == device_id][-1]
