"""
A PU's configuration and presets are static data (docs/architecture.md, "Data held
where"): the device changes them (S601), CMS's database keeps what it acknowledged
(S603-S605), and the home node keeps a copy, which a restart with the memory store
restores (``vss.rgm.settings``, ``vss.rgm.localcopy``).

The outside test found a memory-store node's view of its cameras' configuration and
presets empty after a restart until each camera changed again. Here a real ``vss-pu``
is configured with ``vssctl`` (real processes) through an in-process CMS and node; the
node restarts on the same ports and the PU logs in again.
"""

import json

from twisted.internet import defer, reactor
from twisted.trial import unittest

from vss.protocols.messages import Action
from vss.testing.platform import start_platform, verifier, wait_until
from vss.testing.processes import poll, vssctl

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)


class SettingsAfterRestartTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        store = self.store = self.p.cms.store
        yield self.p.change(store.upsert_device("cam1", "Gate", 1, 1, "node-a",
                                                verifier("cam1-secret")))
        yield self.p.change(store.upsert_user("alice", verifier("alice-pw"), []))
        yield self.p.change(store.set_grant("user:alice", "cam1", ALL))
        self.node = yield self.p.start_node("node-a")
        yield self.p.start_pu("node-a", "cam1", "cam1-secret")

    def ctl(self, *args):
        return vssctl(f"tcp:127.0.0.1:{self.p.port('node-a', 'cu')}", args, "alice",
                      "alice-pw")

    @defer.inlineCallbacks
    def acknowledged(self):
        """What CMS's database holds of cam1's configuration and presets."""
        stored = yield self.store.get_record_settings("cam1", 0)
        reported = (stored or {}).get("reported", {})
        return reported.get("config", {}), reported.get("presets", {})

    @defer.inlineCallbacks
    def test_after_a_restart_the_node_holds_the_acknowledged_values(self):
        for args in (("config", "cam1", "set", "video.fps=12", "osd.text=gate"),
                     ("config", "cam1", "set", "video.bitrate_kbps=2048"),
                     ("preset", "cam1", "set", "3", "--name", "door"),
                     ("preset", "cam1", "set", "5", "--name", "yard"),
                     ("preset", "cam1", "remove", "5")):
            out, err, code = yield self.ctl(*args)
            self.assertEqual(code, 0, err)
        wanted_config = {"video.fps": "12", "osd.text": "gate", "video.bitrate_kbps": "2048"}

        @defer.inlineCallbacks
        def acknowledged_all():
            config, presets = yield self.acknowledged()
            return (presets == {"3": "door"}
                    and all(config.get(k) == v for k, v in wanted_config.items())
                    and not self.node.central.outbox.pending)

        yield poll("CMS to acknowledge every change", acknowledged_all)
        config, presets = yield self.acknowledged()
        self.assertEqual(config.get("_version"), "3")

        pu_port, cu_port = self.p.port("node-a", "pu"), self.p.port("node-a", "cu")
        yield self.p.stop_node("node-a")
        self.node = yield self.p.start_node(
            "node-a", pu_listen=f"tcp:{pu_port}:interface=127.0.0.1",
            cu_listen=f"tcp:{cu_port}:interface=127.0.0.1")
        # The node's view, at once (before the PU is back): what CMS acknowledged.
        state = self.node.rgm.pu_state("cam1")["state"]
        for key, value in config.items():
            if key != "_version":
                self.assertEqual(state["config"].get(key), value, key)
        self.assertEqual(state["config_version"], 3)
        self.assertEqual(state["presets"], presets)

        # The PU logs in again: what a user sees through the node.
        yield wait_until(reactor, lambda: "cam1" in self.node.rgm.pu_links, timeout=30,
                         what="the PU to log in again")
        out, err, code = yield self.ctl("--json", "config", "cam1", "get", *wanted_config)
        self.assertEqual(code, 0, err)
        got = json.loads(out)
        self.assertEqual({kv["key"]: kv["value"] for kv in got["items"]}, wanted_config)
        self.assertEqual(got["version"], 3)
        out, err, code = yield self.ctl("--json", "preset", "cam1", "list")
        self.assertEqual(code, 0, err)
        self.assertEqual([(p["preset"], p["name"]) for p in json.loads(out)["presets"]],
                         [(3, "door")])

