"""
A node dies or is cut off from CMS, service goes on: real ``twistd vss-cms``, three
``twistd vss-node`` and a ``vss-pu`` process of many PUs on loopback, an observer CU and
live RTSP viewers on node-b (``vss.testing.failover``).

- kill -9 of node-a: every PU is online on node-b or node-c (as ``vssctl devices`` lists
  them), spread by load; every viewer of a PU of node-a plays again on the same RTSP
  session; node-a restarted takes nothing back and nothing flaps.
- node-a cut off from CMS while its PUs' links stay: node-a keeps serving them and no
  other node serves them meanwhile; once the link is back node-a learns the newer home
  epoch, gives them up, and they move; while cut off, no other node has any of them.
- a recorded PU: its new home records it, and the catalogue lists node-a's footage
  (missing while node-a is down), the new home's, and the gap between them.
- with ``--failback``: node-a restarted gets its PUs back, even after a CMS restart
  while it was down (what was moved is in the database).
"""

import os
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from vss.testing.camera import start_ip_camera
from vss.testing.failover import NodeFailoverScenario
from vss.testing.processes import poll

#: PUs of the kill test (the bench runs 1,000 and 10,000: docs/performance.md)
PUS = int(os.environ.get("VSS_TEST_FAILOVER_PUS", "1000"))
#: the issue's aims are 10 s for 1,000 PUs and 5 s from a PU to its viewers; the bounds
#: here leave room for a loaded 2-core test machine
ALL_ONLINE_BOUND = 30.0
VIEWER_BOUND = 10.0


def scrape(url):
    """Blocking (run in a thread): {sample name: value} of a /metrics page."""
    with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if not s.labels}


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class NodeFailoverTests(unittest.TestCase):
    timeout = 300

    def scenario(self, count, **kw):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        s = NodeFailoverScenario(reactor, work, count, **kw)
        self.addCleanup(s.stop_all)
        return s

    @defer.inlineCallbacks
    def start(self, s):
        yield s.seed()
        yield s.start_cms()
        for node_id in ("node-a", "node-b", "node-c"):
            yield s.start_node(node_id)
        yield s.watch("node-b")
        s.start_pus()
        yield poll("every PU online on node-a", lambda: s.pus_online("node-a") == s.count,
                   timeout=120)

    @defer.inlineCallbacks
    def test_kill_9_of_a_node_moves_its_pus_and_its_viewers_play_again(self):
        s = self.scenario(PUS)
        yield self.start(s)
        viewed = ["pu00000", "pu00001", "pu00002", "pu00003"]
        viewers = []
        for device_id in viewed:
            viewers.append((yield s.view(device_id)))

        t0 = yield s.kill("node-a")
        yield poll("every PU online again", lambda: len(s.online_since(t0)) == s.count,
                   timeout=ALL_ONLINE_BOUND + 30)
        latest = max(s.online_since(t0).values()) - t0
        self.assertLess(latest, ALL_ONLINE_BOUND)

        # as `vssctl devices` lists them: every one online, homed on a live node
        devices = yield s.devices()
        self.assertEqual(len(devices), s.count)
        self.assertEqual([d.device_id for d in devices if not d.online], [])
        homes = {}
        for d in devices:
            homes[d.node_id] = homes.get(d.node_id, 0) + 1
        self.assertEqual(set(homes), {"node-b", "node-c"})
        # by load: neither live node takes them all (each holds at least a third)
        self.assertGreater(min(homes.values()), s.count // 3, homes)
        yield poll("the nodes' own counts to agree",
                   lambda: s.pus_online("node-b") + s.pus_online("node-c") == s.count)

        # each viewer's RTSP session plays again, soon after its PU came back
        yield poll("every viewer to play again",
                   lambda: all(v.playing_since(t0) for v in viewers) or
                   any(v.error for v in viewers), timeout=VIEWER_BOUND + 30)
        for v in viewers:
            self.assertIsNone(v.error, v.device_id)
            resumed = v.playing_since(t0)
            self.assertLess(resumed - s.online_at[v.device_id], VIEWER_BOUND, v.device_id)
            yield poll(f"{v.device_id}'s viewer to keep playing",
                       lambda v=v, r=resumed: v.packets_after(r + 1.0) > 10)

        # node-a comes back: it takes nothing back (no --failback) and nothing flaps
        before = dict(s.online_at)
        yield s.start_node("node-a")
        yield sleep(6.0)  # longer than CMS's --rehome-after and a NODE_LIST round
        self.assertEqual(s.pus_online("node-a"), 0)
        self.assertEqual(s.pus_online("node-b") + s.pus_online("node-c"), s.count)
        self.assertEqual({d: t for d, t in s.online_at.items() if before.get(d) != t}, {})
        devices = yield s.devices()
        self.assertEqual({d.node_id for d in devices}, {"node-b", "node-c"})

    @defer.inlineCallbacks
    def test_a_node_cut_off_from_cms_keeps_its_pus_until_it_learns_their_new_home(self):
        s = self.scenario(40, relay_node_a=True)
        yield self.start(s)
        samples = []

        def sample():
            spread = s.spread()
            samples.append(spread)
            return spread

        s.relay.partition()  # node-a <-> CMS only; the PUs' links to node-a stay
        t0 = reactor.seconds()
        # CMS sees node-a down and moves its PUs (by the device records: new home epoch)
        yield poll("CMS to move node-a's PUs", self._moved(s), timeout=60)
        # meanwhile node-a serves them, and no other node does (nobody fights it)
        while reactor.seconds() < t0 + 6.0:
            spread = sample()
            self.assertEqual(spread["node-a"], s.count, spread)
            self.assertEqual(spread["node-b"] + spread["node-c"], 0, spread)
            yield sleep(0.5)

        s.relay.heal()
        # node-a reconnects, learns the newer home of each PU, gives it up; the PUs move
        yield poll("every PU on node-b or node-c",
                   lambda: sample()["node-b"] + sample()["node-c"] == s.count
                   and sample()["node-a"] == 0, timeout=90)
        # (no sum over the nodes while the PUs move: each node's status.json is written
        # once a second, not at one instant with the others; a PU has one link, and
        # node-a closes it before the PU goes anywhere else)
        self.assertTrue(samples)
        settled = dict(s.online_at)
        yield sleep(5.0)
        self.assertEqual({d: t for d, t in s.online_at.items() if settled.get(d) != t}, {})
        self.assertEqual(s.pus_online("node-a"), 0)

    @defer.inlineCallbacks
    def test_recordings_go_on_on_the_new_home_and_the_catalogue_shows_the_gap(self):
        s = self.scenario(4, recorded=["pu00000"])
        yield self.start(s)
        now_ms = lambda: int(reactor.seconds() * 1000)  # noqa: E731
        start_ms = now_ms()

        def segments_of(node_id, after=0):
            @defer.inlineCallbacks
            def check():
                listing = yield s.recordings("pu00000", start_ms - 60_000, now_ms() + 5000)
                return [g for g in listing.segments if g.node_id == node_id
                        and g.start >= after and g.end > g.start]

            return check

        yield poll("node-a to record two segments",
                   lambda: segments_of("node-a")().addCallback(lambda x: len(x) >= 2),
                   timeout=60, interval=0.5)
        t0 = yield s.kill("node-a")
        t0_ms = int(t0 * 1000)
        yield poll("pu00000 online elsewhere", lambda: "pu00000" in s.online_since(t0),
                   timeout=ALL_ONLINE_BOUND)
        home = [d.node_id for d in (yield s.devices()) if d.device_id == "pu00000"][0]
        self.assertIn(home, ("node-b", "node-c"))
        # its new home records it, from after the kill on
        later = yield poll(f"{home} to record pu00000",
                           lambda: segments_of(home, t0_ms)().addCallback(
                               lambda x: len(x) >= 2 and x),
                           timeout=60, interval=0.5)
        # while node-a is down its footage is listed as missing
        listing = yield s.recordings("pu00000", start_ms - 60_000, now_ms())
        self.assertIn("node-a", listing.missing)

        # node-a back: the catalogue has both, and the gap between them
        yield s.start_node("node-a")
        before = yield poll("node-a's footage listed again",
                            lambda: segments_of("node-a")(), timeout=60, interval=0.5)
        listing = yield s.recordings("pu00000", start_ms - 60_000, now_ms())
        self.assertEqual(listing.missing, [])
        last_a = max(g.end for g in before)
        first_new = min(g.start for g in later)
        self.assertLessEqual(last_a, t0_ms + 1000)
        self.assertGreater(first_new, t0_ms)
        self.assertTrue(any(g.start <= last_a + 1000 and g.end >= first_new - 1000
                            for g in listing.gaps), (last_a, first_new, listing.gaps))
        self.assertEqual({g.node_id for g in listing.segments}, {"node-a", home})

    @defer.inlineCallbacks
    def test_failback_gives_a_returning_node_its_pus_after_a_cms_restart(self):
        """With --failback, CMS keeps what it moved in its database: a CMS killed and
        started again while node-a is down still gives node-a its PUs back."""
        s = self.scenario(40, cms_extra=["--failback", "--failback-after", "2"])
        yield self.start(s)
        t0 = yield s.kill("node-a")
        yield poll("every PU online elsewhere", lambda: len(s.online_since(t0)) == s.count,
                   timeout=ALL_ONLINE_BOUND + 30)
        yield s.restart_cms()
        yield poll("node-b and node-c back on CMS", lambda: s.pus_online("node-b") +
                   s.pus_online("node-c") == s.count and s.connected("node-b")
                   and s.connected("node-c"), timeout=60)
        yield s.start_node("node-a")
        yield poll("every PU back on node-a", lambda: s.pus_online("node-a") == s.count,
                   timeout=60)
        yield poll("node-a named home of every PU", self._homed_on(s, "node-a"), timeout=30)
        # CMS's metrics say it: 40 given back, none left on a node that is down
        metrics = yield threads.deferToThread(
            scrape, f"http://127.0.0.1:{s.cms_ports['admin']}/metrics")
        self.assertEqual(metrics["vss_cms_failback_devices_total"], s.count)
        self.assertEqual(metrics["vss_cms_devices_on_down_nodes"], 0)
        # and it stays so: nothing flaps back and forth
        settled = dict(s.online_at)
        yield sleep(4.0)
        self.assertEqual({d: t for d, t in s.online_at.items() if settled.get(d) != t}, {})
        self.assertEqual(s.pus_online("node-a"), s.count)

    @defer.inlineCallbacks
    def test_an_ip_camera_moves_by_its_new_home_pulling_it(self):
        """A camera pulled by URL (no PU link): node-a dies, CMS moves it, its viewer on
        node-b plays again from the new home, which pulls the camera itself."""
        url, camera = yield start_ip_camera(self, reactor, width=320, height=180, fps=10)
        s = self.scenario(2, cameras={"ipc-1": url})
        yield self.start(s)
        viewer = yield s.view("ipc-1", small=False)
        t0 = yield s.kill("node-a")
        yield poll("ipc-1 moved", lambda: s.devices().addCallback(
            lambda ds: [d.node_id for d in ds if d.device_id == "ipc-1"] != ["node-a"]),
            timeout=ALL_ONLINE_BOUND)
        yield poll("the camera's viewer to play again", lambda: viewer.playing_since(t0)
                   or viewer.error, timeout=ALL_ONLINE_BOUND)
        self.assertIsNone(viewer.error)
        resumed = viewer.playing_since(t0)
        yield poll("the viewer to keep playing", lambda: viewer.packets_after(resumed + 1) > 10)
        home = [d.node_id for d in (yield s.devices()) if d.device_id == "ipc-1"][0]
        self.assertIn(home, ("node-b", "node-c"))
        # the camera now has a reader from the new home (the old one's died with node-a)
        yield poll("one reader of the camera",
                   lambda: len(camera.sources["/live/cam/main"].readers) == 1)

    def _homed_on(self, s, node_id):
        @defer.inlineCallbacks
        def check():
            devices = yield s.devices()
            return len(devices) == s.count and all(d.node_id == node_id for d in devices)

        return check

    def _moved(self, s):
        """True once node-b's copy (``vssctl devices`` there) names a new home for
        every PU of node-a."""

        @defer.inlineCallbacks
        def check():
            devices = yield s.devices()
            return len(devices) == s.count and all(d.node_id != "node-a" for d in devices)

        return check
