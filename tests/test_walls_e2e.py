"""
TV walls and decoders end to end with real processes on loopback (docs/protocol.md 9.9):
``twistd vss-cms``, three ``twistd vss-node`` (node-a, node-b, node-c), a ``vss-pu``
camera homed on node-c and one on node-a, a ``vss-decoder`` logged in to node-b, and
``vssctl wall`` as operators on node-a. The command goes node-a -> CMS (or straight, once
the route is cached) -> node-b -> the decoder, which pulls the camera of node-c through
node-b's streaming server and decodes it with PyAV; its reports show frames advancing.
"""

import functools
import json
import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from vss.protocols.messages import Action
from vss.testing import processes, records
from vss.testing.processes import (
    Daemon,
    child_env,
    cms_db_path,
    read_status,
    seed_cms_db,
    start_cms,
    start_cms_node,
    start_pu,
    tool,
    vssctl,
)

FAST = 2000
NODES = ("node-a", "node-b", "node-c")
DEVICES = {"cam-a": "node-a", "cam-c": "node-c"}

poll = functools.partial(processes.poll, timeout=60.0, interval=0.3)


class WallEndToEnd(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        devices = [records.device(d, f"{d}-secret", home_node=home, iterations=FAST)
                   for d, home in DEVICES.items()]
        yield seed_cms_db(
            reactor, cms_db_path(self.work), devices=devices,
            users=[records.user("op", "op-pw", iterations=FAST),
                   records.user("eve", "eve-pw", iterations=FAST),
                   records.user("dec1", "dec1-pw", iterations=FAST)],
            grants=[records.grant("user:op", "cu:dec1", Action.WALL),
                    records.grant("user:eve", "cam-c", Action.VIEW),
                    records.grant("user:dec1", "cam-a", Action.VIEW),
                    records.grant("user:dec1", "cam-c", Action.VIEW)])
        self.cms, self.cms_ports = yield start_cms(reactor, self.work, ["--heartbeat", "1"])
        self.addCleanup(self.cms.stop)
        self.nodes, self.ports = {}, {}
        yield defer.gatherResults([self.start_node(n) for n in NODES], consumeErrors=True)
        for device_id, node in DEVICES.items():
            pu = start_pu(reactor, self.work, f"tcp:127.0.0.1:{self.ports[node]['pu']}",
                          device_id, f"{device_id}-secret")
            self.addCleanup(pu.stop)
        self.events = os.path.join(self.work, "first-frames.jsonl")
        self.decoder = Daemon(
            reactor, [tool("vss-decoder"), "--node",
                      f"tcp:127.0.0.1:{self.ports['node-b']['cu']}", "--id", "dec1",
                      "--layout", "4", "--events", self.events],
            os.path.join(self.work, "decoder.log"), env=child_env(VSS_PASSWORD="dec1-pw"))
        self.addCleanup(self.decoder.stop)

    @defer.inlineCallbacks
    def start_node(self, node_id, extra=()):
        daemon, ports = yield start_cms_node(reactor, self.work, node_id, self.cms_ports,
                                             extra)
        self.nodes[node_id], self.ports[node_id] = daemon, ports
        self.addCleanup(daemon.stop)
        yield poll(f"{node_id} to synchronise with CMS", lambda: self.synchronised(node_id))

    def synchronised(self, node_id):
        s = read_status(self.work, node_id)
        return s is not None and s["central"]["connected"] and s["central"]["applied_seq"] > 0

    def ctl(self, *args, user="op", password="op-pw", node="node-a"):
        return vssctl(f"tcp:127.0.0.1:{self.ports[node]['cu']}", args, user, password)

    @defer.inlineCallbacks
    def show(self):
        out, err, code = yield self.ctl("--json", "wall", "dec1", "show")
        return json.loads(out) if code == 0 else None

    @defer.inlineCallbacks
    def tile(self, n):
        state = yield self.show()
        if state is None:
            return None
        return next((a for a in state["assignments"] if a["tile"] == n), None)

    @defer.inlineCallbacks
    def frames_over(self, n, device, at_least):
        a = yield self.tile(n)
        if a is not None and a["device_id"] == device and a["frames"] > at_least:
            return a["frames"]
        return None

    def first_frames(self):
        try:
            with open(self.events) as f:
                return [json.loads(line) for line in f if line.strip()]
        except OSError:
            return []

    @defer.inlineCallbacks
    def test_operator_on_a_drives_decoder_on_b_with_camera_of_c(self):
        # the decoder is logged in to node-b and described its 4 tiles
        @defer.inlineCallbacks
        def described():
            state = yield self.show()
            return state if state is not None and state["layout"] == "four" else None

        state = yield poll("the decoder to be reachable from node-a", described)
        self.assertEqual((state["node_id"], state["kind"], state["layout"]),
                         ("node-b", "decoder", "four"))
        self.assertEqual(len(state["tiles"]), 4)

        out, err, code = yield self.ctl("wall", "dec1", "assign", "2", "cam-c")
        self.assertEqual(code, 0, err)
        self.assertIn("tile  2  cam-c", out)
        first = yield poll("frames of cam-c on tile 2",
                           lambda: self.frames_over(2, "cam-c", 0))
        yield poll("the frames to advance", lambda: self.frames_over(2, "cam-c", first + 10))
        seen = [e for e in self.first_frames() if e["tile"] == 2 and e["device"] == "cam-c"]
        self.assertEqual(len(seen), 1)
        self.assertGreaterEqual(seen[0]["first_frame"], seen[0]["arrived"])
        waits = []

        # cam-c runs: a new tile showing it starts from the SS's kept GOP (start=gop),
        # not at the camera's next keyframe (the simulated cameras send one every 2 s).
        # Four times, each tile cleared and assigned again: from MEDIA_OPEN's answer to
        # the first decoded frame well under the GOP each time (waiting for the next
        # keyframe, each would be uniform over 0-2 s plus the RTSP set-up)
        for i in range(4):
            out, err, code = yield self.ctl("wall", "dec1", "assign", "3", "cam-c")
            self.assertEqual(code, 0, err)

            def decoded(i=i):
                seen = [e for e in self.first_frames()
                        if e["tile"] == 3 and e["first_frame"] is not None]
                return seen[i] if len(seen) > i else None

            e = yield poll(f"a first frame on tile 3 (#{i})", decoded)
            waits.append(e["first_frame"] - e["media_opened"])
            out, err, code = yield self.ctl("wall", "dec1", "clear", "3")
            self.assertEqual(code, 0, err)
        self.assertLess(max(waits), 1.0, waits)

        # an operator without the grant is refused, and nothing changes
        out, err, code = yield self.ctl("wall", "dec1", "assign", "2", "cam-a",
                                        user="eve", password="eve-pw")
        self.assertEqual(code, 1, out)
        self.assertIn("forbidden", err)
        a = yield self.tile(2)
        self.assertEqual(a["device_id"], "cam-c")
        # the decoder shows only what its own account may view
        out, err, code = yield self.ctl("wall", "dec1", "assign", "1", "cam-x")
        self.assertEqual(code, 1, out)
        self.assertIn("forbidden", err)

        # a tour cycles cam-a and cam-c on tile 0, 4 s each (an RTSP viewer starts at a
        # keyframe: the simulated cameras send one every 2 s)
        out, err, code = yield self.ctl("wall", "dec1", "tour", "0", "cam-a,cam-c",
                                        "--dwell", "4")
        self.assertEqual(code, 0, err)

        @defer.inlineCallbacks
        def cycled():
            a = yield self.tile(0)
            return a is not None and a["tour_index"] == 1 and a["device_id"] == "cam-c"

        yield poll("the tour to move to cam-c", cycled)

        def both_decoded():
            devices = {e["device"] for e in self.first_frames() if e["tile"] == 0}
            return devices >= {"cam-a", "cam-c"}

        yield poll("frames of both tour devices on tile 0", both_decoded)
        out, err, code = yield self.ctl("wall", "dec1", "tour-stop", "0")
        self.assertEqual(code, 0, err)

        # node-b restarts: the decoder comes back and the wall has the same layout and
        # tiles (the decoder describes what it showed; the fresh node takes it)
        port = self.ports["node-b"]["cu"]
        yield self.nodes["node-b"].stop()
        yield self.start_node("node-b", ["--cu-listen", f"tcp:{port}:interface=127.0.0.1"])

        @defer.inlineCallbacks
        def restored():
            state = yield self.show()
            if state is None or state["node_id"] != "node-b" or state["layout"] != "four":
                return None
            tiles = {a["tile"]: a["device_id"] for a in state["assignments"]}
            return tiles.get(2) == "cam-c" and 0 in tiles and state

        state = yield poll("the wall back on node-b with its layout", restored)
        self.assertEqual(len(state["tiles"]), 4)
        frames = yield poll("frames on tile 2 after the restart",
                            lambda: self.frames_over(2, "cam-c", 0))
        self.assertGreater(frames, 0)
