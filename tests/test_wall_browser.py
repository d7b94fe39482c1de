"""
The wall page (``/wall``, docs/protocol.md 9.9) in a real headless Chromium, against a
central platform and three nodes in this process over real TCP, with real ``vss-pu``
cameras publishing H.264: the page signs in to node-b as a TV wall, an operator on
node-a puts a camera homed on node-c on a tile (the page shows it within a second and
its pictures advance), starts a tour (the tile changes on time), the page's link is cut
and node-b restarts: each time the page reconnects and the wall has the same layout and
tiles again. Screenshots go to
the test artefacts. Skipped where no Chromium is installed.
"""

import os
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.test_protocol_vectors import VECTORS, h
from vss.client import SignallingClient, connect
from vss.protocols.messages import (
    Action,
    CuKind,
    MsgType,
    Role,
    Stream,
    WallAssign,
    WallDescribe,
    WallQuery,
    WallTour,
)
from vss.testing import browser as harness
from vss.testing.platform import start_platform, verifier, wait_until


class WallPageTests(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        harness.require()
        os.environ.setdefault(harness.ARTEFACTS_ENV, os.path.abspath("test-artefacts"))
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("cam-a", "Gate", 1, 1, "node-a", verifier("cam-a-s")))
        yield change(store.upsert_device("cam-c", "Yard", 1, 1, "node-c", verifier("cam-c-s")))
        yield change(store.upsert_user("op", verifier("op-pw"), []))
        yield change(store.upsert_user("wall1", verifier("wall1-pw"), []))
        yield change(store.set_grant("user:wall1", "cam-a", int(Action.VIEW)))
        yield change(store.set_grant("user:wall1", "cam-c", int(Action.VIEW)))
        yield change(store.set_grant("user:op", "cu:wall1", int(Action.WALL)))
        yield change(store.set_grant("user:op", "cam-c", int(Action.VIEW)))
        yield change(store.set_grant("user:op", "cam-a", int(Action.VIEW)))
        for node_id in ("node-a", "node-b", "node-c"):
            yield self.p.start_node(node_id)
        yield self.p.start_pu("node-a", "cam-a", "cam-a-s")
        yield self.p.start_pu("node-c", "cam-c", "cam-c-s")
        self.http = self.p.port("node-b", "http")
        self.b = yield harness.start_browser(self)
        self.op = yield self.p.login("node-a", Role.CU, "op", "op-pw")

    def wall(self, expr):
        return self.b.js(f"const w = window.vssWall; return {expr}")

    @defer.inlineCallbacks
    def command(self, type, body):
        msg = yield self.op.request(type, body)
        return msg.body

    @defer.inlineCallbacks
    def test_wall_page_follows_assignments_tours_and_a_node_restart(self):
        b = self.b
        yield b.open(f"http://127.0.0.1:{self.http}/wall")
        yield b.wait_for("the sign-in form", "return !!document.getElementById('login-form')")
        yield b.js("""
            document.getElementById('user').value = 'wall1';
            document.getElementById('password').value = 'wall1-pw';
            document.getElementById('layout').value = '4';
            document.getElementById('login-form').requestSubmit();""")
        yield b.wait_for("the wall signed in with 4 tiles",
                         "const w = window.vssWall; return w.connected && w.state"
                         " && w.state.layout === 4 && document.querySelectorAll('.tile').length")

        # an operator on node-a puts camera cam-c (homed on node-c) on tile 1
        sent = time.time()
        state = yield self.command(MsgType.WALL_ASSIGN, WallAssign(
            wall_id="wall1", tile=1, device_id="cam-c", channel=0, stream=Stream.MAIN))
        self.assertEqual(state.node_id, "node-b")
        yield b.wait_for("the tile change on the page", """
            return window.vssWall.applied.some((a) => a.version >= arguments[0])""",
                         state.version, timeout=5)
        applied = yield self.wall(f"w.applied.find((a) => a.version >= {state.version}).at")
        self.assertLess(applied / 1000.0 - sent, 1.0)
        yield b.wait_for("pictures of cam-c on tile 1", """
            const t = document.querySelectorAll('.tile')[1];
            return t.dataset.device === 'cam-c' && Number(t.dataset.frames) > 10""", timeout=60)
        yield b.screenshot("wall-one-camera")

        # the frames shown reach the operator through the wall's reports
        @defer.inlineCallbacks
        def reported():
            s = yield self.command(MsgType.WALL_STATE, WallQuery(wall_id="wall1"))
            return [a.frames for a in s.assignments if a.tile == 1 and a.frames > 0]

        yield harness_poll(reported, "the frames in the wall's state")

        # a tour on tile 0: cam-a and cam-c, 3 s each; the page changes on time
        state = yield self.command(MsgType.WALL_TOUR, WallTour(
            wall_id="wall1", tile=0, devices=["cam-a", "cam-c"], stream=Stream.MAIN, dwell=3))
        start = state.version
        yield b.wait_for("two tour steps", """
            return window.vssWall.applied.filter((a) => a.version > arguments[0]).length >= 2""",
                         start, timeout=20)
        steps = yield self.wall(f"w.applied.filter((a) => a.version >= {start}).map((a) => a.at)")
        gaps = [(b2 - a2) / 1000.0 for a2, b2 in zip(steps, steps[1:], strict=False)][:2]
        self.assertEqual(len(gaps), 2)
        self.assertTrue(all(abs(gap - 3.0) < 0.6 for gap in gaps), gaps)
        yield b.wait_for("pictures on the touring tile", """
            const t = document.querySelectorAll('.tile')[0];
            return t.dataset.device && Number(t.dataset.frames) > 0""", timeout=30)
        yield b.screenshot("wall-tour")

        # a network cut (the page's link dropped; node-b keeps the wall's state): the page
        # signs in again, describes itself and shows its tiles again
        opens = int((yield b.js("return document.querySelectorAll('.tile')[1].dataset.opens")))
        yield b.js("window.vssWall.link.ws.close()")
        yield b.wait_for("the page back after the cut", """
            const w = window.vssWall; return w.connected && w.reconnects > 0""", timeout=30)
        yield b.wait_for("pictures again on tile 1 after the cut", """
            const t = document.querySelectorAll('.tile')[1];
            return t.dataset.device === 'cam-c' && Number(t.dataset.opens) > arguments[0]
                && t.dataset.state === 'playing' && Number(t.dataset.frames) > 10""", opens,
                         timeout=60)
        reconnects = yield self.wall("w.reconnects")

        # node-b restarts on the same address: the page comes back, the wall as it was
        opens = int((yield b.js("return document.querySelectorAll('.tile')[1].dataset.opens")))
        yield self.p.stop_node("node-b")
        yield b.wait_for("the page to see the cut", "return !window.vssWall.connected",
                         timeout=20)
        yield self.p.start_node("node-b", http_listen=f"tcp:{self.http}:interface=127.0.0.1")
        yield b.wait_for("the page signed in again", """
            const w = window.vssWall; return w.connected && w.reconnects > arguments[0]""",
                         reconnects, timeout=60)
        state = yield self.command(MsgType.WALL_STATE, WallQuery(wall_id="wall1"))
        self.assertEqual((state.node_id, state.layout, len(state.tiles)), ("node-b", 4, 4))
        tiles = {a.tile: a.device_id for a in state.assignments}
        self.assertEqual(tiles[1], "cam-c")
        self.assertIn(tiles[0], ("cam-a", "cam-c"))
        # the stream opened again on the new link, and its pictures advance
        yield b.wait_for("pictures again on tile 1", """
            const t = document.querySelectorAll('.tile')[1];
            return t.dataset.device === 'cam-c' && Number(t.dataset.opens) > arguments[0]
                && t.dataset.state === 'playing' && Number(t.dataset.frames) > 10""", opens,
                         timeout=60)
        yield b.screenshot("wall-after-restart")


    @defer.inlineCallbacks
    def test_the_operator_page_sends_a_camera_to_a_wall(self):
        """The web client on node-a sends the selected camera to a tile of a wall logged
        in to node-b; a wall it may not drive is refused with a readable line."""
        notes = []
        wall = SignallingClient(Role.CU, "wall1", "wall1-pw", kind=CuKind.TVWALL,
                                on_notify=notes.append)
        yield connect(reactor, f"tcp:127.0.0.1:{self.p.port('node-b', 'cu')}", wall)
        self.p.clients.append(wall)
        yield wall.request(MsgType.WALL_DESCRIBE, WallDescribe(
            wall_id="", layout=4, tiles=[], assignments=[]))
        b = self.b
        yield b.open(f"http://127.0.0.1:{self.p.port('node-a', 'http')}/")
        yield b.wait_for("the login page", "return document.body.dataset.state === 'login'")
        yield b.js("""
            document.getElementById('user').value = 'op';
            document.getElementById('password').value = 'op-pw';
            document.getElementById('login-form').requestSubmit();""")
        yield b.wait_for("signed in", "return document.body.dataset.state === 'ready'")
        yield b.wait_for("the camera", """
            const li = document.querySelector('.device[data-device="cam-c"]');
            if (li) li.click();
            return li && document.querySelectorAll('.tile')[0].dataset.device === 'cam-c'""")
        yield b.js("""
            document.getElementById('wall-id').value = 'wall1';
            document.getElementById('wall-tile').value = '3';
            document.getElementById('wall-form').requestSubmit();""")
        text = yield b.wait_for("the answer", """
            const r = document.getElementById('wall-result');
            return r.dataset.version && r.textContent""")
        self.assertEqual(text, "wall1 (node-b): tile 3 shows cam-c")
        told = [m.body for m in notes if m.type == MsgType.WALL_NOTIFY]
        self.assertEqual([(a.tile, a.device_id) for a in told[-1].assignments], [(2, "cam-c")])
        yield b.screenshot("web-send-to-wall")

        # a tour of the grid's cameras on tile 2, then stopped
        yield b.js("document.querySelector('.layouts button[data-n=\"4\"]').click()")
        yield b.wait_for("cam-a in the second tile", """
            const tiles = document.querySelectorAll('.tile');
            if (tiles.length < 4) return false;
            tiles[1].click();
            const li = document.querySelector('.device[data-device="cam-a"]');
            if (li && tiles[1].dataset.device !== 'cam-a') li.click();
            return tiles[1].dataset.device === 'cam-a'""")
        yield b.js("""
            document.getElementById('wall-tile').value = '2';
            document.getElementById('wall-dwell').value = '5';
            document.getElementById('wall-tour-form').requestSubmit();""")
        text = yield b.wait_for("the tour's answer", """
            const r = document.getElementById('wall-result');
            return r.dataset.version && r.textContent""")
        self.assertEqual(text, "wall1 (node-b): tile 2 tours 2 cameras, 5 s each")
        yield b.screenshot("web-wall-tour")
        def tile2():
            told = [m.body for m in notes if m.type == MsgType.WALL_NOTIFY]
            a = {a.tile: a for a in told[-1].assignments}.get(1)
            return a and (a.tour, a.dwell, a.device_id)

        yield wait_until(reactor, lambda: tile2() and tile2()[0], what="the wall told")
        self.assertEqual(tile2(), (["cam-c", "cam-a"], 5, "cam-c"))
        yield b.js("document.getElementById('wall-tour-stop').click()")
        text = yield b.wait_for("the stop's answer", """
            const r = document.getElementById('wall-result');
            return r.dataset.version && r.textContent""")
        self.assertEqual(text, "wall1 (node-b): tile 2, tour stopped")
        yield wait_until(reactor, lambda: not (tile2() and tile2()[0]),
                         what="the wall told the tour stopped")

        yield b.js("""
            document.getElementById('wall-id').value = 'wall2';
            document.getElementById('wall-form').requestSubmit();""")
        text = yield b.wait_for("the refusal", """
            const r = document.getElementById('wall-result');
            return r.dataset.error && r.textContent""")
        self.assertIn("may not drive this wall", text)


    @defer.inlineCallbacks
    def test_the_pages_wall_codec_matches_the_protocol_bytes(self):
        """wire.js against the hand-written vectors of docs/protocol.md 9.9
        (tests/test_protocol_vectors.py): WALL_NOTIFY and a WallState decoded, WALL_ASSIGN,
        WALL_TOUR, WALL_REPORT and a wall's own WALL_DESCRIBE encoded to the same bytes."""
        b = self.b
        yield b.open(f"http://127.0.0.1:{self.http}/wall")
        yield b.wait_for("the page", "return !!document.getElementById('login-form')")
        v = {x.name: h(x.hex) for x in VECTORS if x.name.startswith("wall_")}
        out = yield b.js_async("""
            const done = arguments[arguments.length - 1];
            const vs = arguments[0];
            import('/static/js/wire.js').then((w) => {
              const hex = (u) => [...u].map((x) => x.toString(16).padStart(2, '0')).join('');
              const bytes = (h) => new Uint8Array(h.match(/../g).map((x) => parseInt(x, 16)));
              const body = (name) => new w.FrameReader().feed(bytes(vs[name]))[0].body;
              const state = w.decode.wallState(body('wall_state_response'));
              done({
                notify: w.decode.wallState(body('wall_notify_notification')),
                state: state,
                assign: hex(w.encode.wallAssign({wall: 'w1', tile: 0, device: 'd', stream: 0})),
                tour: hex(w.encode.wallTour({wall: 'w1', tile: 0, devices: ['c', 'd'],
                                             stream: 1, dwell: 10})),
                report: hex(w.encode.wallReport([{tile: 0, device_id: 'c', frames: 250,
                                                  errors: 0}])),
                describe: hex(w.encode.wallDescribe({layout: 4, assignments: [
                  {tile: 0, device_id: 'c', channel: 0, stream: 1, tour: [], dwell: 0,
                   tour_index: 0, since: 1700000000000, frames: 0, errors: 0,
                   last_error: ''}]})),
              });
            }, (e) => done(String(e)));""", {k: x.hex() for k, x in v.items()})
        self.assertEqual(out["notify"], {
            "wall_id": "w1", "node_id": "n2", "kind": 2, "layout": 1, "version": 5,
            "tiles": [{"x": 0, "y": 0, "width": 10000, "height": 10000}], "assignments": [],
            "ext": []})
        self.assertEqual(out["state"]["assignments"], [{
            "tile": 0, "device_id": "c", "channel": 0, "stream": 1, "tour": [], "dwell": 0,
            "tour_index": 0, "since": 1700000000000, "frames": 250, "errors": 1,
            "last_error": "eof"}])
        self.assertEqual(out["assign"], v["wall_assign_request"][16:].hex())
        self.assertEqual(out["tour"], v["wall_tour_request"][16:].hex())
        self.assertEqual(out["report"], v["wall_report_request"][16:].hex())
        self.assertEqual(out["describe"], v["wall_describe_request"][16:].hex())


@defer.inlineCallbacks
def harness_poll(check, what, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = yield check()
        if found:
            return found
        yield deferLater(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def deferLater(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
