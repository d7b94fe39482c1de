"""
Streaming server workers with real processes: a node (in this process) spawns its SS
workers (``twistd vss-ss`` children, each on its own RTSP port), a real ``vss-pu``
publishes, PyAV and our RTSP client play the URLs MEDIA_OPEN gives. MDP (CMS, in this
process) sees every SS from the node's heartbeats.
"""


import os
import signal
import socket
import time

from prometheus_client import generate_latest
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
from vss.cu.decoder import PROBE
from vss.ops.collectors import NodeCollector
from vss.ops.metrics import make_registry
from vss.protocols.messages import Action, MediaOpen, MsgType, Purpose, Role, SsState
from vss.rtsp import start_from_gop
from vss.rtsp.client import pull_into
from vss.rtsp.server import RTSPServerFactory
from vss.testing.platform import start_platform, verifier, wait_until
from vss.testing.processes import Daemon, tool

try:
    import av
except ImportError:  # pragma: no cover - av is a dependency
    av = None

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)
DEADLINE = 40  # generous: the CI machine has 2 shared cores


def decode(url, count=10):
    """Blocking (run in a thread): decode ``count`` frames; their sizes."""
    sizes = []
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=20) as c:
        for frame in c.decode(video=0):
            sizes.append((frame.width, frame.height))
            if len(sizes) >= count:
                break
    return sizes


def first_frame_after(url):
    """Blocking (run in a thread): seconds from opening ``url`` (probing as vss-decoder
    does) to its first decoded frame."""
    t0 = time.monotonic()
    with av.open(url, options={"rtsp_transport": "tcp", **PROBE}, timeout=20) as c:
        for _frame in c.decode(video=0):
            return time.monotonic() - t0
    return None


def describe(url):
    """Blocking (run in a thread): DESCRIBE ``url``; (status, Location header)."""
    host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers.get("Location")


def open_live(device_id):
    return MediaOpen(device_id=device_id, channel=0, stream=0, purpose=Purpose.LIVE,
                     start_time=0, transport=0)


def port_of(url):
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


class Viewer:
    """A player in this process: our RTSP client pulling into a throwaway SS; counts
    the packets it got."""

    def __init__(self):
        self.sink = RTSPServerFactory(TokenAuthorizer(TokenIssuer(b"v" * 32)), reactor=reactor)
        self.proto = None

    @defer.inlineCallbacks
    def play(self, url):
        self.proto = yield pull_into(self.sink, "/live/v/main", url, reactor=reactor,
                                     timeout=20)
        return self

    @property
    def packets(self):
        source = self.sink.sources.get("/live/v/main")
        return source.packets if source is not None else -1

    @property
    def playing(self):
        return "/live/v/main" in self.sink.sources

    def stop(self):
        if self.proto is not None and self.playing:
            self.proto.teardown()


class WorkerTests(unittest.TestCase):
    timeout = 180
    workers = 2
    node_options = {}

    @defer.inlineCallbacks
    def setUp(self):
        if av is None:
            raise unittest.SkipTest("PyAV is not installed")
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        for cam in ("cam-b", "cam-x"):
            yield change(store.upsert_device(cam, cam, 1, 1, "node-b", verifier(f"{cam}-s")))
            yield change(store.set_grant("user:alice", cam, ALL))
        yield change(store.upsert_user("alice", verifier("alice-pw"), []))
        self.node = yield self.p.start_node("node-b", ss_workers=self.workers,
                                            **self.node_options)
        self.pool = self.node.ss_pool
        yield wait_until(reactor, lambda: len(self.pool.up()) == self.workers, timeout=DEADLINE,
                         what="the SS workers to link to their node")
        self.cu = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")

    @defer.inlineCallbacks
    def media_open(self, device_id):
        msg = yield self.cu.request(MsgType.MEDIA_OPEN, open_live(device_id), timeout=30)
        return msg.body.url

    def worker_of(self, url):
        for s in self.pool.servers.values():
            if s.media and port_of(s.media) == port_of(url):
                return s
        return None

    def viewer(self, url):
        v = Viewer()
        self.addCleanup(v.stop)
        return v.play(url)


class ServedByWorkers(WorkerTests):
    @defer.inlineCallbacks
    def test_each_new_stream_goes_to_the_worker_with_most_room_and_mdp_sees_them(self):
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s")
        yield self.p.start_pu("node-b", "cam-x", "cam-x-s")
        rtsp = self.p.port("node-b", "rtsp")
        ports = {port_of(s.media) for s in self.pool.servers.values()}
        self.assertEqual(len(ports), 2)
        self.assertNotIn(rtsp, ports)  # each worker on its own port, not the node's

        url_b = yield self.media_open("cam-b")
        self.assertIn(port_of(url_b), ports)
        sizes = yield threads.deferToThread(decode, url_b, 10)
        self.assertEqual(len(sizes), 10)
        first = self.worker_of(url_b)
        # the second stream goes to the other worker: the first carries a stream
        url_x = yield self.media_open("cam-x")
        second = self.worker_of(url_x)
        self.assertIsNot(first, second)
        self.assertEqual(len((yield threads.deferToThread(decode, url_x, 5))), 5)
        # a second viewer of cam-b stays where cam-b is (under the per-SS limit)
        again = yield self.media_open("cam-b")
        self.assertIs(self.worker_of(again), first)
        # each worker pulled its stream once from the node's SS
        self.assertEqual(sorted(self.node.rtsp.sources),
                         ["/live/cam-b/main", "/live/cam-x/main"])
        # MDP sees the node's three SS (its own and the two workers) from its heartbeats
        mdp = self.p.cms.cms.mdp

        def reported():
            view = {s["ss_id"]: s for s in mdp.view("node-b")}
            return set(view) == {"ss0", "ss1", "ss2"} and all(
                view[i]["state"] == "up" and view[i]["streams"] == 1 for i in ("ss1", "ss2"))

        yield wait_until(reactor, reported, timeout=DEADLINE,
                         what="MDP to see both workers carrying a stream")
        self.assertIn(mdp.pick("node-b"), {s.media for s in self.pool.servers.values()})
        status = self.p.cms.cms.status()["nodes"]["node-b"]["servers"]
        self.assertEqual(sum(1 for s in status if s["chosen"]), 1)
        # the node's /metrics: each worker as it reported
        text = "".join(generate_latest(make_registry(NodeCollector(self.node))).decode())
        self.assertIn('vss_ss_workers{state="up"} 2.0', text)
        self.assertIn('vss_ss_streams{ss="ss1"} 1.0', text)
        self.assertIn('vss_ss_restarts_total{ss="ss2"} 0.0', text)
        # cam-b runs on its worker: a player asking start=gop (as vss-decoder does) gets
        # its first picture from the worker's kept GOP, well before the camera's next
        # keyframe (vss-pu sends one every 2 s: each wait would be uniform over 0-2 s)
        waits = []
        for _ in range(3):
            waits.append((yield threads.deferToThread(first_frame_after,
                                                      start_from_gop(url_b))))
        self.assertLess(max(waits), 1.0, waits)


class WorkerFaults(WorkerTests):
    @defer.inlineCallbacks
    def test_a_worker_killed_with_9_is_restarted_and_its_stream_comes_back_elsewhere(self):
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s")
        yield self.p.start_pu("node-b", "cam-x", "cam-x-s")
        url_b = yield self.media_open("cam-b")
        victim = self.worker_of(url_b)
        url_x = yield self.media_open("cam-x")
        other = self.worker_of(url_x)
        self.assertIsNot(victim, other)
        vb = yield self.viewer(url_b)
        vx = yield self.viewer(url_x)
        yield wait_until(reactor, lambda: vb.packets > 0 and vx.packets > 0, timeout=DEADLINE,
                         what="both viewers to get packets")
        old_pid = victim.process.pid
        os.kill(old_pid, signal.SIGKILL)
        killed_at = reactor.seconds()
        yield wait_until(reactor, lambda: not vb.playing, timeout=DEADLINE,
                         what="the killed worker's viewer to lose its stream")
        before = vx.packets
        # the killed worker's stream is placed on the other worker at once
        yield wait_until(reactor, lambda: "/live/cam-b/main" in other.carried,
                         timeout=DEADLINE, what="cam-b to be re-established on the other SS")
        self.assertLess(reactor.seconds() - killed_at, 15)
        # its viewer comes back with a new URL: the other worker's
        url = yield self.media_open("cam-b")
        self.assertIs(self.worker_of(url), other)
        self.assertEqual(len((yield threads.deferToThread(decode, url, 5))), 5)
        # the other worker's viewer was never interrupted
        self.assertTrue(vx.playing)
        self.assertGreater(vx.packets, before)
        # the killed worker is started again and links back (a new process)
        yield wait_until(reactor, lambda: victim.state == SsState.UP and victim.pid != old_pid,
                         timeout=DEADLINE, what="the killed worker to be restarted")
        self.assertEqual(victim.restarts, 1)
        self.assertEqual(other.restarts, 0)
        self.assertTrue(vx.playing)


class SilentWorker(WorkerTests):
    @defer.inlineCallbacks
    def test_a_worker_that_misses_its_reports_is_not_chosen_until_it_reports(self):
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s")
        yield self.p.start_pu("node-b", "cam-x", "cam-x-s")
        silent, other = sorted(self.pool.servers.values(), key=lambda s: s.ss_id)
        os.kill(silent.pid, signal.SIGSTOP)  # alive, linked, but silent
        self.addCleanup(lambda: os.kill(silent.pid, signal.SIGCONT))
        yield wait_until(reactor, lambda: silent.state == SsState.STALE, timeout=DEADLINE,
                         what="the silent worker to be marked stale")
        # both new streams go to the worker that reports, though it has less room
        for cam in ("cam-b", "cam-x"):
            self.assertIs(self.worker_of((yield self.media_open(cam))), other)
        mdp = self.p.cms.cms.mdp
        yield wait_until(reactor, lambda: {s["ss_id"]: s["state"] for s in mdp.view("node-b")}
                         .get(silent.ss_id) == "stale", timeout=DEADLINE,
                         what="MDP to see the worker stale")
        self.assertEqual(mdp.pick("node-b"), other.media)
        os.kill(silent.pid, signal.SIGCONT)
        yield wait_until(reactor, lambda: silent.state == SsState.UP, timeout=DEADLINE,
                         what="the worker to report again")
        self.assertEqual(silent.restarts, 0)  # a silent worker is not killed


class CrossNode(WorkerTests):
    @defer.inlineCallbacks
    def test_another_node_pulls_from_a_worker_of_the_home_node(self):
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s")
        yield self.p.start_node("node-a")
        cu_a = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        url = (yield cu_a.request(MsgType.MEDIA_OPEN, open_live("cam-b"), timeout=30)).body.url
        self.assertEqual(port_of(url), self.p.port("node-a", "rtsp"))  # node-a: no workers
        self.assertEqual(len((yield threads.deferToThread(decode, url, 5))), 5)
        # node-b's answer named one of its workers: node-a's SS pulls from there
        carriers = self.pool.carriers("/live/cam-b/main")
        self.assertEqual(len(carriers), 1)
        yield wait_until(reactor, lambda: carriers[0].paths.get("/live/cam-b/main", (0, 0))[0]
                         == 1, timeout=DEADLINE, what="the worker to report node-a's pull")


class SpreadingAHotStream(WorkerTests):
    node_options = {"ss_stream_viewers": 1}

    @defer.inlineCallbacks
    def test_over_the_limit_another_worker_pulls_it_once_from_the_first(self):
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s")
        url = yield self.media_open("cam-b")
        first = self.worker_of(url)
        v1 = yield self.viewer(url)
        yield wait_until(reactor, lambda: first.paths.get("/live/cam-b/main", (0, 0))[0] == 1,
                         timeout=DEADLINE, what="the first worker to report its viewer")
        url2 = yield self.media_open("cam-b")
        second = self.worker_of(url2)
        self.assertIsNot(second, first)
        self.assertIn("/live/cam-b/main", second.carried)
        self.assertEqual(self.pool.counters["spread"], 1)
        v2 = yield self.viewer(url2)
        yield wait_until(reactor, lambda: v2.packets > 0, timeout=DEADLINE,
                         what="the second worker's viewer to get packets")
        # the second worker pulled it from the first (its one reader besides its viewer
        # there), not from the node's SS: the node's SS still has one reader for it
        self.assertEqual(len(self.node.rtsp.sources["/live/cam-b/main"].readers), 1)
        yield wait_until(reactor, lambda: first.paths.get("/live/cam-b/main", (0, 0))[0] == 2,
                         timeout=DEADLINE, what="the first worker to count the second's pull")
        self.assertTrue(v1.playing)
        # a viewer who comes back with the old URL of the first worker (its token still
        # valid) is redirected to the second while the first is full
        status, location = yield threads.deferToThread(describe, url)
        self.assertEqual(status, 302)
        self.assertEqual(location.split("/live/")[0], second.media)
        self.assertEqual(location.split("?")[1], url.split("?")[1])
        self.assertEqual(len((yield threads.deferToThread(decode, url, 5))), 5)  # PyAV follows


class AnotherHost(WorkerTests):
    workers = 1

    @defer.inlineCallbacks
    def test_a_vss_ss_started_by_hand_links_with_the_node_secret_and_takes_streams(self):
        yield self.p.start_pu("node-b", "cam-b", "cam-b-s")
        control = self.pool.control_endpoint()
        work = self.p.workdir

        def vss_ss(ss_id, secret_file):
            d = Daemon(reactor, [tool("twistd"), "-n", "--pidfile=", "vss-ss", "--ss-id", ss_id,
                                 "--node", control, "--secret-file", secret_file,
                                 "--rtsp-listen", "tcp:0:interface=127.0.0.1"],
                       os.path.join(work, f"{ss_id}.log"), cwd=work)
            self.addCleanup(d.stop)
            return d

        wrong = os.path.join(work, "wrong.secret")
        with open(wrong, "wb") as f:
            f.write(b"w" * 64)
        bad = vss_ss("bad1", wrong)
        yield wait_until(reactor, lambda: "the node refused the link" in bad.output(),
                         timeout=DEADLINE, what="a worker with a wrong secret to be refused")
        self.assertNotIn("bad1", self.pool.servers)
        vss_ss("far1", os.path.join(work, "node-b", "node.secret"))
        yield wait_until(reactor, lambda: "far1" in self.pool.up(), timeout=DEADLINE,
                         what="the SS started by hand to link")
        far = self.pool.servers["far1"]
        self.assertFalse(far.spawned)
        # both SS are idle: the tie goes to the first named, far1
        url = yield self.media_open("cam-b")
        self.assertIs(self.worker_of(url), far)
        self.assertEqual(len((yield threads.deferToThread(decode, url, 5))), 5)
