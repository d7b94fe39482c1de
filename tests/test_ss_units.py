"""
The SS control link and placement without sockets: the node's pool and a worker's
control end joined by an iosim pump, a task.Clock for time; MDP's view with a clock.
"""

import os

from twisted.internet import defer, error, task
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
from vss.cms.service import MDP
from vss.config import ConfigError
from vss.protocols.link import LinkFactory
from vss.protocols.messages import MsgType, SsLoad, SsServer, SsState
from vss.rgm.localcentral import MemoryCentral
from vss.rtsp.server import RTSPServerFactory
from vss.ss import auth, placement
from vss.ss.pool import SSPool
from vss.ss.worker import Control, refusal_wait
from vss.tap.node import Options as NodeOptions
from vss.tap.ss import Options as SSOptions
from vss.tls import make_ca_and_cert

SECRET = b"s" * 32
SDP = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
       "a=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n")


class _Pulled:
    """What a worker's pull gives: its ``finished`` fires when it ends."""

    def __init__(self):
        self.finished = defer.Deferred()
        self.torn_down = False

    def teardown(self):
        self.torn_down = True


class Link(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.issuer = TokenIssuer(SECRET, clock=self.clock)
        self.pool = SSPool("n1", SECRET, self.issuer, self.clock, report_interval=1.0,
                           stream_viewers=2, linger=10)
        self.pulls = []

    def join(self, ss_id="ss9", secret=SECRET, media="rtsp://127.0.0.1:9"):
        rtsp = RTSPServerFactory(TokenAuthorizer(TokenIssuer(secret)), clock=self.clock,
                                 reactor=self.clock)

        def pull(server, path, url, reactor=None, timeout=None):
            self.pulls.append((path, url))
            server.attach_source(path, SDP, origin="pull")
            return defer.succeed(_Pulled())

        control = Control(ss_id, secret, rtsp, self.clock, self.clock,
                          media=lambda: media, cpu=lambda: 0.0, pull=pull)
        server = LinkFactory(self.pool, self.clock).buildProtocol(None)
        client = LinkFactory(control, self.clock).buildProtocol(None)
        pump = connect(server, FakeTransport(server, True), client, FakeTransport(client, False),
                       greet=False)
        pump.flush()
        return control, pump, client

    def test_a_worker_with_the_node_secret_links_and_reports(self):
        control, pump, _ = self.join()
        self.assertTrue(control.authed)
        server = self.pool.servers["ss9"]
        self.assertEqual((server.state, server.media), (SsState.UP, "rtsp://127.0.0.1:9"))
        self.assertEqual(list(self.pool.up()), ["ss9"])
        control.report()
        pump.flush()
        self.assertEqual(server.load["streams"], 0)
        self.assertEqual(server.reported_at, self.clock.seconds())

    def test_a_wrong_secret_is_refused_and_never_placed_on(self):
        control, pump, client = self.join(secret=b"x" * 32)
        self.assertFalse(control.authed)
        self.assertEqual(self.pool.servers, {})
        self.assertTrue(client.closed)
        d = self.pool.place("/live/c/main", "rtsp://node:1")
        self.assertIsNone(self.successResultOf(d))  # the node's own SS serves it

    def test_refusals_in_a_row_wait_longer_and_a_link_resets_them(self):
        control, _pump, _client = self.join(secret=b"x" * 32)
        waits = []
        control.on_refused = waits.append
        control.key = auth.link_key(b"x" * 32)
        for _ in range(6):
            self.relink(control)
        self.assertEqual(control.refusals, 7)
        self.assertEqual(waits, [4.0, 8.0, 16.0, 32.0, 60.0, 60.0])
        control.key = auth.link_key(SECRET)  # the right secret now
        self.relink(control)
        self.assertTrue(control.authed)
        self.assertEqual(control.refusals, 0)
        self.assertEqual(refusal_wait(1), 2.0)

    def relink(self, control):
        server = LinkFactory(self.pool, self.clock).buildProtocol(None)
        client = LinkFactory(control, self.clock).buildProtocol(None)
        connect(server, FakeTransport(server, True), client, FakeTransport(client, False),
                greet=False).flush()

    def test_orders_before_authentication_are_refused(self):
        control = Control("ss9", SECRET, None, self.clock, self.clock)
        control.linkUp = lambda link: None  # a peer that skips SS_HELLO
        server = LinkFactory(self.pool, self.clock).buildProtocol(None)
        client = LinkFactory(control, self.clock).buildProtocol(None)
        pump = connect(server, FakeTransport(server, True), client, FakeTransport(client, False),
                       greet=False)
        client.send_notify(MsgType.SS_LOAD, SsLoad(streams=9, viewers=9, bandwidth_kbps=9,
                                                   cpu_permille=9, paths=[]))
        pump.flush()
        self.assertTrue(server.closed)
        self.assertEqual(self.pool.servers, {})

    def test_place_pulls_once_then_sends_viewers_there_until_the_limit(self):
        control, pump, _ = self.join()
        d = self.pool.place("/live/c/main", "rtsp://node:1")
        pump.flush()
        self.assertEqual(self.successResultOf(d), "rtsp://127.0.0.1:9")
        self.assertEqual(len(self.pulls), 1)
        path, url = self.pulls[0]
        self.assertEqual(path, "/live/c/main")
        self.assertTrue(url.startswith("rtsp://node:1/live/c/main?token="))
        # it pulls from the GOP the node kept, so its first viewer need not wait either
        self.assertTrue(url.endswith("&start=gop"), url)
        token = url.split("token=")[1].split("&")[0]
        ok, _ = self.issuer.verify(token, "/live/c/main", "play")
        self.assertTrue(ok)
        d = self.pool.place("/live/c/main", "rtsp://node:1")
        self.assertEqual(self.successResultOf(d), "rtsp://127.0.0.1:9")
        self.assertEqual(len(self.pulls), 1)  # already carried
        # two viewers sent there: over the limit, but no other SS: it stays
        d = self.pool.place("/live/c/main", "rtsp://node:1")
        self.assertEqual(self.successResultOf(d), "rtsp://127.0.0.1:9")

    def test_over_the_mbps_limit_old_urls_are_redirected_at_the_viewers_it_makes(self):
        """--ss-stream-mbps alone: the first SS is full at the viewers whose bandwidth
        reaches the limit, and SS_REDIRECT says that count."""
        self.pool.stream_viewers, self.pool.stream_kbps = 0, 8000
        first, pump1, _ = self.join("ss1", media="rtsp://127.0.0.1:1")
        second, pump2, _ = self.join("ss2", media="rtsp://127.0.0.1:2")
        path = "/live/c/main"
        d = self.pool.place(path, "rtsp://node:1")
        pump1.flush()
        self.assertEqual(self.successResultOf(d), "rtsp://127.0.0.1:1")
        # ss1 reports 3 viewers of it taking 12,000 kb/s: 4,000 each, over 8,000
        self.pool.servers["ss1"].paths[path] = (3, 12_000)
        d = self.pool.place(path, "rtsp://node:1")
        pump2.flush()
        self.assertEqual(self.successResultOf(d), "rtsp://127.0.0.1:2")
        pump1.flush()
        self.assertEqual(first.redirects[path], ("rtsp://127.0.0.1:2", 2))
        self.assertEqual(self.pool.redirect_limit(self.pool.servers["ss2"], path), 2**32 - 1)

    def test_a_worker_that_stops_reporting_is_not_chosen_until_it_reports(self):
        control, pump, _ = self.join()
        self.clock.advance(3.5)
        self.pool.check_stale()
        self.assertEqual(self.pool.servers["ss9"].state, SsState.STALE)
        self.assertIsNone(self.successResultOf(self.pool.place("/live/c/main", "rtsp://n:1")))
        self.assertEqual(self.pool.counters["fallbacks"], 1)
        control.report()
        pump.flush()
        self.assertEqual(self.pool.servers["ss9"].state, SsState.UP)
        self.assertEqual(self.pool.report()[0].state, int(SsState.UP))

    def test_an_idle_stream_is_dropped_after_linger(self):
        control, pump, _ = self.join()
        self.pool.place("/live/c/main", "rtsp://node:1")
        pump.flush()
        self.assertIn("/live/c/main", control.pulls)
        self.clock.advance(5)
        control.report()
        pump.flush()
        self.assertIn("/live/c/main", self.pool.servers["ss9"].carried)  # not yet
        self.clock.advance(6)
        control.report()
        pump.flush()
        self.assertNotIn("/live/c/main", self.pool.servers["ss9"].carried)
        self.assertNotIn("/live/c/main", control.pulls)  # SS_DROP reached the worker


class Auth(SynchronousTestCase):
    def test_proofs_bind_both_nonces_and_the_side(self):
        key = auth.link_key(SECRET)
        a, b = b"a" * 24, b"b" * 24
        self.assertNotEqual(auth.ss_proof(key, "ss1", a, b), auth.node_proof(key, "ss1", a, b))
        self.assertNotEqual(auth.ss_proof(key, "ss1", a, b), auth.ss_proof(key, "ss1", b, a))
        self.assertNotEqual(auth.ss_proof(key, "ss1", a, b), auth.ss_proof(key, "ss2", a, b))
        self.assertTrue(auth.check(auth.ss_proof(key, "ss1", a, b),
                                   auth.ss_proof(key, "ss1", a, b)))
        self.assertFalse(auth.check(auth.ss_proof(key, "ss1", a, b), "text"))
        self.assertNotEqual(key, SECRET)


class Placement(SynchronousTestCase):
    def test_most_room_is_least_cpu_then_fewest_viewers(self):
        loads = {"ss1": {"cpu_permille": 450, "viewers": 10},
                 "ss2": {"cpu_permille": 420, "viewers": 900},
                 "ss3": {"cpu_permille": 150, "viewers": 2000}}
        self.assertEqual(placement.most_room(loads), "ss3")
        loads["ss3"]["cpu_permille"] = 480
        self.assertEqual(placement.most_room(loads), "ss1")  # same CPU step: fewer viewers
        self.assertEqual(placement.most_room(loads, {"ss1": 1000}), "ss2")
        self.assertIsNone(placement.most_room({}))

    def test_over_limit(self):
        self.assertTrue(placement.over_limit(10, 0, 10, 0))
        self.assertFalse(placement.over_limit(9, 0, 10, 0))
        self.assertTrue(placement.over_limit(1, 50_000, 0, 40_000))
        self.assertFalse(placement.over_limit(10**6, 10**9, 0, 0))


class MdpView(SynchronousTestCase):
    def servers(self, *specs):
        return [SsServer(ss_id=i, media=f"rtsp://h:{n}", state=int(state), streams=0,
                         viewers=v, bandwidth_kbps=0, cpu_permille=0)
                for n, (i, state, v) in enumerate(specs, 1)]

    def test_mdp_chooses_among_workers_up_and_reported_lately(self):
        clock = task.Clock()
        mdp = MDP(clock, heartbeat_interval=5)
        mdp.report_servers("n1", self.servers(("ss0", SsState.UP, 0), ("ss1", SsState.UP, 30),
                                              ("ss2", SsState.UP, 10)))
        self.assertEqual(mdp.pick("n1"), "rtsp://h:3")  # ss2: fewer viewers; ss0 not a worker
        mdp.report_servers("n1", self.servers(("ss0", SsState.UP, 0), ("ss1", SsState.UP, 30),
                                              ("ss2", SsState.STALE, 10)))
        self.assertEqual(mdp.pick("n1"), "rtsp://h:2")
        view = {s["ss_id"]: s for s in mdp.view("n1")}
        self.assertEqual(view["ss2"]["state"], "stale")
        self.assertTrue(view["ss1"]["chosen"])
        clock.advance(16)  # more than three heartbeats without a report
        self.assertIsNone(mdp.pick("n1"))
        mdp.report("n1", "rtsp://h:1", {"streams": 1})  # the heartbeat: the node's own SS
        self.assertEqual(mdp.pick("n1"), "rtsp://h:1")


class Options(SynchronousTestCase):
    def node(self, *args):
        opts = NodeOptions()
        opts.parseOptions(["--node-id", "n1", "--static", self.static, *args])
        return opts.settings

    def setUp(self):
        self.static = self.mktemp()
        MemoryCentral().save(self.static)

    def test_ss_workers_default_to_one_per_core_and_take_a_count(self):
        self.assertEqual(self.node().ss_workers, os.cpu_count() or 1)
        self.assertEqual(self.node("--ss-workers", "0").ss_workers, 0)
        settings = self.node("--ss-workers", "3", "--ss-stream-viewers", "50",
                             "--ss-stream-mbps", "200", "--ss-first-port", "9000")
        self.assertEqual((settings.ss_workers, settings.ss_stream_viewers,
                          settings.ss_stream_kbps, settings.ss_first_port), (3, 50, 200_000, 9000))

    def test_bad_ss_options_are_named(self):
        for args, wanted in ((["--ss-workers", "many"], "--ss-workers: 'many'"),
                             (["--ss-workers", "-1"], "--ss-workers: -1"),
                             (["--ss-stream-viewers", "x"], "--ss-stream-viewers"),
                             (["--ss-control-listen", "nope:1"], "--ss-control-listen")):
            e = self.assertRaises(ConfigError, self.node, *args)
            self.assertIn(wanted, str(e))

    def test_workers_are_plain_rtsp_so_an_ssl_listener_has_none(self):
        cert, key, _ = make_ca_and_cert(self.mktemp(), ["127.0.0.1"])
        ssl = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        self.assertEqual(self.node("--rtsp-listen", ssl).ss_workers, 0)
        e = self.assertRaises(ConfigError, self.node, "--rtsp-listen", ssl, "--ss-workers", "2")
        self.assertIn("plain RTSP", str(e))

    def test_vss_ss_needs_its_name_node_and_a_long_secret(self):
        e = self.assertRaises(ConfigError, SSOptions().parseOptions, [])
        for name in ("--ss-id", "--node", "--secret-file"):
            self.assertIn(f"{name}: required", str(e))
        short = self.mktemp()
        with open(short, "wb") as f:
            f.write(b"short")
        e = self.assertRaises(ConfigError, SSOptions().parseOptions,
                              ["--ss-id", "a b", "--node", "tcp:127.0.0.1:1",
                               "--secret-file", short])
        self.assertIn("fewer than 32 bytes", str(e))
        self.assertIn("--ss-id: 'a b'", str(e))
        good = self.mktemp()
        with open(good, "wb") as f:
            f.write(SECRET + b"\n")
        opts = SSOptions()
        opts.parseOptions(["--ss-id", "far1", "--node", "tcp:127.0.0.1:1", "--secret-file", good,
                           "--rtsp-listen", "tcp:0:interface=0.0.0.0"])
        self.assertEqual((opts.settings.secret, opts.settings.media_host), (SECRET, "127.0.0.1"))


class _Spawned:
    def __init__(self, proto, argv, kw):
        self.proto, self.argv, self.kw = proto, argv, kw
        self.pid = 4242
        self.written = b""
        self.stdin_closed = False

    def write(self, data):
        self.written += data

    def closeStdin(self):
        self.stdin_closed = True


class _ProcessReactor(MemoryReactorClock):
    """A memory reactor that records the processes spawned."""

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, proto, executable, args, env=None, path=None, uid=None, gid=None,
                     usePTY=False, childFDs=None):
        p = _Spawned(proto, args, {"env": env, "path": path, "childFDs": childFDs})
        self.spawned.append(p)
        proto.makeConnection(p)
        return p


class Restarts(SynchronousTestCase):
    def test_a_worker_that_ends_is_started_again_after_a_growing_delay(self):
        reactor = _ProcessReactor()
        pool = SSPool("n1", SECRET, TokenIssuer(SECRET, clock=reactor), reactor, workers=1,
                      data_dir="/tmp")
        pool.startService()
        self.assertEqual(len(reactor.spawned), 1)
        first = reactor.spawned[0]
        # the secret goes on the child's stdin, never on its command line
        self.assertEqual((first.written, first.stdin_closed), (SECRET + b"\n", True))
        self.assertNotIn(SECRET.decode(), " ".join(first.argv))
        self.assertIn("vss-ss", first.argv)
        ended = Failure(error.ProcessTerminated(signal=9))
        delays = []
        for _ in range(4):
            n = len(reactor.spawned)
            reactor.spawned[-1].proto.processEnded(ended)
            waited = 0.0
            while len(reactor.spawned) == n:
                reactor.advance(0.5)
                waited += 0.5
            delays.append(waited)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0])
        self.assertEqual(pool.servers["ss1"].restarts, 4)
        # after a minute up, a new failure starts from 1 s again
        reactor.advance(61)
        reactor.spawned[-1].proto.processEnded(ended)
        reactor.advance(1.0)
        self.assertEqual(len(reactor.spawned), 6)
        pool.running = False  # stopped: an end is not restarted
        reactor.spawned[-1].proto.processEnded(ended)
        reactor.advance(60)
        self.assertEqual(len(reactor.spawned), 6)
