"""
A restarted memory-store node and the logins of its PUs and CUs, with real processes
(``twistd vss-cms``, ``twistd vss-node``, ``vss-pu``, ``vssctl``) on loopback.

What the outside test found: after a restart a memory-store node refused reconnecting
PUs until its reload from CMS finished ("CMS unavailable for first registration"), counted
those refusals as failed logins against the one address all the PUs came from, and threw
the whole address into the throttle; started while CMS was down it answered every login
AUTH_FAILED. Now the node keeps its copy in its data directory and serves from it at once,
CMS up or down, and a node that really has no copy yet answers NOT_READY, which clients
wait out with a randomised backoff and which never counts as a failure.

``STORM`` PUs in one ``vss-pu`` process stand for the 5,000 of the outside test (the full
count is ``bench/reconnect_storm.py``).
"""

import os
import shutil
import signal

from twisted.internet import defer, reactor
from twisted.trial import unittest

from vss.cli.admin import Client
from vss.protocols.messages import Action
from vss.testing import records
from vss.testing.processes import (
    Daemon,
    child_env,
    cms_db_path,
    poll,
    read_status,
    seed_cms_db,
    start_cms,
    start_cms_node,
    tool,
    vssctl,
)

FAST = 2000
STORM = 150
ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)
TOKEN = "node-ready-admin-token-0123456789abcdef"


def cam(i):
    return f"cam{i:05d}"


class NodeRestartTests(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        devices = [records.device(cam(i), cam(i) + "-secret", home_node="node-a",
                                  iterations=FAST) for i in range(1, STORM + 1)]
        yield seed_cms_db(
            reactor, cms_db_path(self.work), devices=devices,
            users=[records.user("alice", "alice-pw", iterations=FAST)],
            grants=[records.grant("user:alice", d.device_id, ALL) for d in devices],
            admin_tokens=[("ready", TOKEN)])
        self.daemons = []
        self.addCleanup(self.stop_all)
        self.cms = self.node = None

    @defer.inlineCallbacks
    def stop_all(self):
        for d in reversed(self.daemons):
            yield d.stop()

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
    def start_node(self, same_ports=False):
        """node-a, on the ports it had before when ``same_ports`` (its PUs and CUs come
        back to the address they know)."""
        extra = []
        if same_ports:
            extra = ["--pu-listen", f"tcp:{self.ports['pu']}:interface=127.0.0.1",
                     "--cu-listen", f"tcp:{self.ports['cu']}:interface=127.0.0.1"]
        self.node, self.ports = yield start_cms_node(reactor, self.work, "node-a",
                                                     self.cms_ports, extra)
        self.daemons.append(self.node)

    @defer.inlineCallbacks
    def kill_node(self):
        yield self.node.stop(signal.SIGKILL)
        os.remove(os.path.join(self.work, "node-a", "status.json"))

    def start_pus(self, count=STORM):
        pu = Daemon(reactor, [tool("vss-pu"), "--node", f"tcp:127.0.0.1:{self.ports['pu']}",
                              "--count", str(count), "--id-format", "cam{:05d}",
                              "--ramp", "2000"],
                    os.path.join(self.work, "pus.log"),
                    env=child_env(VSS_PU_SECRET="{id}-secret"))
        self.daemons.insert(0, pu)  # stopped first
        return pu

    def status(self):
        return read_status(self.work, "node-a") or {}

    def rgm(self):
        return self.status().get("rgm", {})

    def central(self):
        return self.status().get("central", {})

    def wait_online(self, count, timeout=60):
        return poll(f"{count} PUs online at node-a",
                    lambda: self.rgm().get("pus_online") == count, timeout=timeout)

    def ctl(self, *args, timeout=None):
        extra = ["--timeout", str(timeout)] if timeout else []
        return vssctl(f"tcp:127.0.0.1:{self.ports['cu']}", [*extra, *args], "alice", "alice-pw")

    @defer.inlineCallbacks
    def test_reconnect_storm_after_a_restart_counts_no_failure(self):
        yield self.start_cms()
        yield self.start_node()
        yield poll("node-a to synchronise", lambda: self.central().get("applied_seq", 0) > 0)
        self.start_pus()
        yield self.wait_online(STORM)

        yield self.kill_node()
        started = reactor.seconds()
        yield self.start_node(same_ports=True)
        yield self.wait_online(STORM)
        took = reactor.seconds() - started
        rgm = self.rgm()
        self.assertEqual(rgm["auth_failures"], 0, "a reconnecting PU was refused")
        self.assertEqual(rgm["not_ready"], 0, "the restarted node had no copy to serve from")
        self.assertEqual(self.central()["reloads"], 0)
        self.assertLess(took, 40)
        out, err, code = yield self.ctl("ptz", cam(1), "stop")
        self.assertEqual(code, 0, err)

    @defer.inlineCallbacks
    def test_a_node_restarted_while_cms_is_down_serves_its_users_and_cameras(self):
        yield self.start_cms()
        yield self.start_node()
        yield poll("node-a to synchronise", lambda: self.central().get("applied_seq", 0) > 0)
        self.start_pus(count=3)
        yield self.wait_online(3)
        # the user has logged in here before: the node holds the user from then on
        out, err, code = yield self.ctl("--json", "devices")
        self.assertEqual(code, 0, err)

        cms_port = self.cms_ports["node"]
        yield self.cms.stop(signal.SIGKILL)
        yield poll("node-a to see CMS gone", lambda: not self.central().get("connected"))
        yield self.kill_node()
        yield self.start_node(same_ports=True)
        # CMS is still down: the node serves from the copy in its data directory.
        yield self.wait_online(3)
        out, err, code = yield self.ctl("--json", "devices")
        self.assertEqual(code, 0, err)
        self.assertIn('"device_id": "cam00150"', out)
        out, err, code = yield self.ctl("ptz", cam(2), "stop")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.rgm()["auth_failures"], 0)
        self.assertEqual(self.rgm()["not_ready"], 0)
        self.assertFalse(self.central()["connected"])

        # CMS comes back: the node catches up (no reload) and follows new changes.
        yield self.start_cms(port=cms_port)
        yield poll("node-a to reconnect", lambda: self.central().get("connected"))
        yield self.api.call("PATCH", f"/devices/{cam(2)}", {"name": "gate"})

        @defer.inlineCallbacks
        def renamed():
            out, err, code = yield self.ctl("devices")
            return code == 0 and "gate" in out

        yield poll("node-a to show the new name", renamed, timeout=30, interval=0.3)
        self.assertEqual(self.central()["reloads"], 0)

    @defer.inlineCallbacks
    def test_a_node_with_no_copy_and_no_cms_is_not_ready_and_nobody_is_throttled(self):
        yield self.start_cms()
        cms_port = self.cms_ports["node"]
        yield self.cms.stop(signal.SIGKILL)
        # A first start: no copy in the data directory, CMS down.
        shutil.rmtree(os.path.join(self.work, "node-a"), ignore_errors=True)
        yield self.start_node()
        pus = self.start_pus(count=20)
        yield poll("the PUs to be told NOT_READY", lambda: self.rgm().get("not_ready", 0) >= 20)
        out, err, code = yield self.ctl("devices", timeout=2)
        self.assertEqual(code, 1)
        self.assertIn("vssctl: the node is not ready", err)
        self.assertIn("[not_ready]", err)
        out, err, code = yield self.conformance()
        self.assertEqual(code, 1)
        self.assertIn("the node is not ready", err)
        self.assertEqual(self.rgm()["auth_failures"], 0)

        yield self.start_cms(port=cms_port)
        yield self.wait_online(20)
        self.assertEqual(self.rgm()["auth_failures"], 0)
        self.assertNotIn("THROTTLED", pus.output())
        self.assertNotIn("wrong identity", pus.output())
        out, err, code = yield self.ctl("devices")
        self.assertEqual(code, 0, err)

    def conformance(self):
        from vss.testing.processes import run_tool

        return run_tool("vss-conformance", [
            "--pu", f"tcp:127.0.0.1:{self.ports['pu']}",
            "--cu", f"tcp:127.0.0.1:{self.ports['cu']}", "--device", cam(1), "--user",
            "alice", "--timeout", "2", "--wait-ready", "3", "--only", "hello_version"],
            env=child_env(VSS_PU_SECRET=cam(1) + "-secret", VSS_PASSWORD="alice-pw"))
