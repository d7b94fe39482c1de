"""
End to end with real processes on loopback: ``twistd vss-node`` (plain TCP and TLS),
``vss-pu`` simulating cameras, ``vssctl`` as the user.
"""

import json
import os
import signal

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from vss.protocols.messages import Action
from vss.rgm.localcentral import MemoryCentral
from vss.testing import records
from vss.testing.processes import start_node, start_pu, vssctl
from vss.tls import make_ca_and_cert

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)


def write_static(path):
    c = MemoryCentral()
    c.add_device(records.device("cam1", "cam1-secret", home_node="n1", channels=1))
    c.add_device(records.device("dvs1", "dvs1-secret", home_node="n1", channels=4, kind=2))
    c.add_device(records.device("cam2", "cam2-secret", home_node="n1"))
    c.add_user(records.user("alice", "alice-pw"))
    c.add_user(records.user("bob", "bob-pw"))
    for dev in ("cam1", "dvs1", "cam2"):
        c.add_grant(records.grant("user:alice", dev, ALL))
    c.add_grant(records.grant("user:bob", "cam1", Action.VIEW))
    c.save(path)


class NodeEndToEnd(unittest.TestCase):
    timeout = 120
    tls = False

    @defer.inlineCallbacks
    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        static = os.path.join(self.work, "static.json")
        write_static(static)
        extra = ["--static", static, "--keepalive", "2"]
        self.client_prefix = "tcp:127.0.0.1"
        if self.tls:
            cert, key, trust = make_ca_and_cert(os.path.join(self.work, "tls"),
                                                ["localhost", "127.0.0.1"])
            tls_server = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
            extra += ["--pu-listen", tls_server, "--cu-listen", tls_server]
            self.client_prefix = "tls:localhost"
            self.client_suffix = f":trustRoots={trust}"
        else:
            self.client_suffix = ""
        self.node, self.ports = yield start_node(reactor, self.work, "n1", extra)
        self.addCleanup(self.node.stop)
        self.pus = []

    def endpoint(self, name):
        return f"{self.client_prefix}:{self.ports[name]}{self.client_suffix}"

    def start_pu(self, device_id, secret, extra=()):
        pu = start_pu(reactor, self.work, self.endpoint("pu"), device_id, secret, extra)
        self.addCleanup(pu.stop)
        return pu

    def ctl(self, *args, user="alice", password="alice-pw"):
        return vssctl(self.endpoint("cu"), args, user, password)

    @defer.inlineCallbacks
    def wait_online(self, device_id, online=True, timeout=30):
        for _ in range(int(timeout / 0.25)):
            out, err, code = yield self.ctl("--json", "devices")
            if code == 0:
                states = {d["device_id"]: d["online"] for d in json.loads(out)["devices"]}
                if states.get(device_id) == online:
                    return
            yield task.deferLater(reactor, 0.25, lambda: None)
        self.fail(f"{device_id} never became {'online' if online else 'offline'}: {err}")

    @defer.inlineCallbacks
    def test_pu_agent_and_vssctl_through_a_real_node(self):
        self.start_pu("cam1", "cam1-secret")
        self.start_pu("dvs1", "dvs1-secret", ["--kind", "dvs", "--channels", "4"])
        yield self.wait_online("cam1")
        yield self.wait_online("dvs1")

        out, err, code = yield self.ctl("devices")
        self.assertEqual(code, 0, err)
        self.assertIn("cam1", out)
        self.assertIn("online", out)

        # An absolute move at speed 1 takes about 0.5 s; the position is real state.
        out, err, code = yield self.ctl("ptz", "cam1", "goto", "--pan", "0.5", "--tilt", "-0.25")
        self.assertEqual(code, 0, err)
        yield task.deferLater(reactor, 1.0, lambda: None)
        out, err, code = yield self.ctl("--json", "ptz", "cam1", "step")
        self.assertEqual(code, 0, err)
        status = json.loads(out)
        self.assertAlmostEqual(status["pan"], 0.5, places=3)
        self.assertAlmostEqual(status["tilt"], -0.25, places=3)

        out, err, code = yield self.ctl("preset", "cam1", "set", "3", "--name", "gate")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.ctl("--json", "preset", "cam1", "list")
        self.assertEqual([p["name"] for p in json.loads(out)["presets"]], ["gate"])

        out, err, code = yield self.ctl("config", "cam1", "set", "video.bitrate_kbps=2048")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.ctl("--json", "config", "cam1", "get", "video.bitrate_kbps")
        got = json.loads(out)
        self.assertEqual(got["items"], [{"key": "video.bitrate_kbps", "value": "2048"}])
        self.assertEqual(got["version"], 2)

        # Channel 3 of the 4-channel encoder exists; channel 4 does not.
        out, err, code = yield self.ctl("--json", "config", "dvs1", "get", "--channel", "3")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.ctl("config", "dvs1", "get", "--channel", "4")
        self.assertEqual(code, 1)
        self.assertIn("invalid_argument", err)

        out, err, code = yield self.ctl("record-settings", "cam1", "set", "--mode", "schedule",
                                        "--schedule", "mon 08:00-18:00")
        self.assertEqual(code, 0, err)
        self.assertIn("mon 08:00-18:00", out)

    @defer.inlineCallbacks
    def test_error_paths_have_clear_messages(self):
        self.start_pu("cam1", "cam1-secret")
        yield self.wait_online("cam1")
        out, err, code = yield self.ctl("ptz", "cam1", "stop", user="bob", password="bob-pw")
        self.assertEqual(code, 1)
        self.assertIn("forbidden", err)
        out, err, code = yield self.ctl("ptz", "cam2", "stop")
        self.assertEqual(code, 1)
        self.assertIn("device_offline", err)
        out, err, code = yield self.ctl("devices", password="wrong")
        self.assertEqual(code, 1)
        self.assertIn("auth_failed", err)
        self.assertNotIn("wrong", self.node.output())
        out, err, code = yield self.ctl("ptz", "cam1", "goto", "--pan", "7")
        self.assertEqual(code, 1)
        self.assertIn("invalid_argument", err)
        out, err, code = yield self.ctl("ptz", "cam1", "jump")
        self.assertEqual(code, 2)
        # what the device says, and the code for scripts: no internal wording
        out, err, code = yield self.ctl("preset", "cam1", "goto", "7")
        self.assertEqual((code, err), (1, "vssctl: no preset 7 [not_found]\n"))

    @defer.inlineCallbacks
    def test_a_killed_pu_goes_offline_and_comes_back(self):
        pu = self.start_pu("cam1", "cam1-secret")
        yield self.wait_online("cam1")
        yield pu.stop(signal.SIGKILL)
        yield self.wait_online("cam1", online=False)
        self.start_pu("cam1", "cam1-secret")
        yield self.wait_online("cam1")

    @defer.inlineCallbacks
    def test_a_pu_with_a_wrong_secret_never_gets_online(self):
        pu = self.start_pu("cam1", "not-the-secret")
        yield task.deferLater(reactor, 2.0, lambda: None)
        out, err, code = yield self.ctl("--json", "devices")
        states = {d["device_id"]: d["online"] for d in json.loads(out)["devices"]}
        self.assertFalse(states["cam1"])
        self.assertIn("auth_failed", pu.output().lower() + "")
        self.assertNotIn("not-the-secret", self.node.output())


class NodeEndToEndTLS(NodeEndToEnd):
    tls = True
