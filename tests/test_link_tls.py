"""
TLS between servers: a cluster CA (``vss-admin tls``), mutual TLS on the links between
CMS and the nodes and between nodes, each node's certificate naming the node, and the
plaintext policy (refused to and from addresses that are not loopback unless
``--allow-plaintext-links``). RTSPS and HTTPS on the node by endpoint string.

Real certificates throughout; the end-to-end tests run ``twistd vss-cms``, ``twistd
vss-node``, ``vss-pu``, ``vssctl`` and PyAV (and ffmpeg) as the players.
"""

import functools
import json
import os
import socket
import ssl as stdlib_ssl
import stat
import subprocess

from twisted.internet import defer, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.logger import Logger
from twisted.trial import unittest

from vss.config import ConfigError
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import Action, Hello, MsgType, Role
from vss.rgm.peers import PeerLinks, PeerServer
from vss.testing import processes, records
from vss.testing.processes import (
    Daemon,
    cms_db_path,
    cms_secret_file,
    read_status,
    seed_cms_db,
    start_cms,
    start_node,
    start_pu,
    tool,
    vssctl,
)
from vss.tls import (
    CertificateError,
    LinkTLS,
    certificate_names,
    client_host_port,
    is_loopback,
    issue,
    listen_interface,
    make_ca,
    peer_identity_problem,
    plaintext_guard,
    plaintext_problem,
    split_endpoint,
)

try:
    import av
    import imageio_ffmpeg

    FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
except ImportError:  # pragma: no cover - the suite's environment has both
    av = FFMPEG = None

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)
FAST = 2000  # PBKDF2 iterations of the test identities
SECRET = b"cluster-secret-0123456789abcdef0123456789"

poll = functools.partial(processes.poll, timeout=30.0)


def cluster_ca(directory, *identities, host="127.0.0.1"):
    """A cluster CA in ``directory`` and a certificate for each identity (also for
    ``host``); {identity: LinkTLS files (cert, key, ca)}."""
    make_ca(directory)
    ca = os.path.join(directory, "ca.pem")
    out = {}
    for identity in identities:
        cert, key = issue(directory, identity, [host, "localhost"])
        out[identity] = (cert, key, ca)
    return out


def tls_args(files):
    cert, key, ca = files
    return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]


def non_loopback_address():
    """An address of this machine that is not loopback (the one its default route
    leaves by), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.123", 9))  # nothing is sent: only a route is chosen
            address = s.getsockname()[0]
        with socket.socket() as s:
            s.bind((address, 0))
    except OSError:
        return None
    return None if is_loopback(address) or address == "0.0.0.0" else address


class CertificateTests(unittest.TestCase):
    def test_a_ca_and_a_node_certificate(self):
        d = os.path.abspath(self.mktemp())
        ca, ca_key = make_ca(d)
        self.assertEqual(stat.S_IMODE(os.stat(ca_key).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(d).st_mode), 0o700)
        cert, key = issue(d, "node-a", ["10.0.0.11", "node-a.example"])
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        tls = LinkTLS(cert, key, ca).load()
        self.assertEqual(tls.names, {"node-a", "node-a.example"})
        # a node id with an underscore is a name like any other
        cert_b, key_b = issue(d, "node_b")
        self.assertEqual(LinkTLS(cert_b, key_b, ca).load().names, {"node_b"})

    def test_refusals(self):
        d = os.path.abspath(self.mktemp())
        with self.assertRaises(CertificateError) as e:
            issue(d, "node-a")
        self.assertIn("vss-admin tls ca", str(e.exception))
        make_ca(d)
        with self.assertRaises(CertificateError):
            make_ca(d)  # one CA a cluster
        issue(d, "node-a")
        with self.assertRaises(CertificateError) as e:
            issue(d, "node-a")
        self.assertIn("exists already", str(e.exception))
        for bad in ("", "a b", "x" * 65, "é"):
            with self.assertRaises(CertificateError):
                issue(d, bad)

    def test_files_that_do_not_go_together_are_named(self):
        d = os.path.abspath(self.mktemp())
        files = cluster_ca(d, "node-a", "node-b")
        cert_a, _, ca = files["node-a"]
        _, key_b, _ = files["node-b"]
        with self.assertRaises(CertificateError) as e:
            LinkTLS(cert_a, key_b, ca).load()
        self.assertIn("--tls-key", str(e.exception))
        with self.assertRaises(CertificateError) as e:
            LinkTLS(cert_a, key_b, os.path.join(d, "nope.pem")).load()
        self.assertIn("--tls-ca", str(e.exception))
        with self.assertRaises(CertificateError) as e:
            LinkTLS(key_b, key_b, ca).load()
        self.assertIn("--tls-cert", str(e.exception))


class AdminCommandTests(unittest.TestCase):
    """``vss-admin tls ca`` and ``vss-admin tls issue``, as an operator runs them."""

    @defer.inlineCallbacks
    def test_an_operator_makes_the_ca_and_a_node_certificate(self):
        from vss.testing.processes import run_tool

        d = os.path.join(os.path.abspath(self.mktemp()), "ca")
        out, err, code = yield run_tool("vss-admin", ["tls", "ca", "--dir", d])
        self.assertEqual(code, 0, err)
        self.assertIn(f"CA certificate (--tls-ca of every server): {d}/ca.pem", out)
        out, err, code = yield run_tool("vss-admin", ["tls", "issue", "node-a", "--dir", d,
                                                      "--host", "10.0.0.11", "--json"])
        self.assertEqual(code, 0, err)
        files = json.loads(out)
        self.assertEqual(files, {"cert": f"{d}/node-a.pem", "key": f"{d}/node-a.key"})
        tls = LinkTLS(files["cert"], files["key"], os.path.join(d, "ca.pem")).load()
        self.assertEqual(tls.names, {"node-a"})  # and the address, as an IP name
        out, err, code = yield run_tool("vss-admin", ["tls", "issue", "node-a", "--dir", d])
        self.assertEqual(code, 1)
        self.assertIn("exists already", err)
        out, err, code = yield run_tool("vss-admin", ["tls", "ca", "--dir", d])
        self.assertEqual(code, 1)
        self.assertIn("a cluster has one CA", err)
        out, err, code = yield run_tool("vss-admin", ["tls", "issue", "x"])
        self.assertEqual(code, 2)
        self.assertIn("needs --dir", err)


class PolicyTests(unittest.TestCase):
    def test_loopback(self):
        for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "::ffff:127.0.0.1",
                     "localhost"):
            self.assertTrue(is_loopback(host), host)
        for host in ("10.0.0.5", "0.0.0.0", "", "::", "cms.example", None, "192.0.2.2"):
            self.assertFalse(is_loopback(host), host)

    def test_plaintext_is_refused_off_loopback_unless_allowed(self):
        self.assertIsNone(plaintext_problem("--cms", "127.0.0.1", False))
        problem = plaintext_problem("--cms", "10.0.0.5", False)
        self.assertIn("--cms: a plaintext link on 10.0.0.5 (not loopback) is refused", problem)
        self.assertIn("--allow-plaintext-links", problem)
        self.assertIn("every interface", plaintext_problem("--node-listen", "", False))
        self.assertIsNone(plaintext_problem("--cms", "10.0.0.5", True))

    def test_endpoint_strings(self):
        self.assertEqual(split_endpoint(r"tcp:fe80\:\:1:7200:timeout=5"),
                         ("tcp", ["fe80::1", "7200"], {"timeout": "5"}))
        self.assertEqual(client_host_port("tcp:10.0.0.5:7200"), ("10.0.0.5", 7200))
        self.assertEqual(client_host_port("tcp:host=cms.example:port=7200"),
                         ("cms.example", 7200))
        for bad in ("ssl:cms:7200", "tcp:cms", "unix:/x"):
            with self.assertRaises(ValueError):
                client_host_port(bad)
        self.assertEqual(listen_interface("tcp:7200:interface=10.0.0.5"), "10.0.0.5")
        self.assertEqual(listen_interface("tcp:7200"), "")
        self.assertIsNone(listen_interface("ssl:7200:privateKey=k"))

    def test_a_plaintext_listener_refuses_other_hosts(self):
        from twisted.internet import protocol

        events = []
        log = Logger(observer=events.append)
        inner = protocol.Factory.forProtocol(protocol.Protocol)
        guard = plaintext_guard(inner, "node", False, log)
        self.assertIsNotNone(guard.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000)))
        self.assertEqual(events, [])
        self.assertIsNone(guard.buildProtocol(IPv4Address("TCP", "192.0.2.7", 5000)))
        self.assertEqual(events[-1]["peer"], "192.0.2.7")
        self.assertIn("refused a plaintext", events[-1]["log_format"])
        allowed = plaintext_guard(inner, "node", True, log)
        self.assertIsNotNone(allowed.buildProtocol(IPv4Address("TCP", "192.0.2.7", 5000)))
        self.assertIn("--allow-plaintext-links", events[-1]["log_format"])

    def test_peer_links_follow_what_the_peer_advertised(self):
        class Central:
            node_id = "node-b"
            link_tls = None
            allow_plaintext = False

        central = Central()
        central.reactor = reactor
        peers = PeerLinks(central)
        peers.endpoint("node-a", "tcp:127.0.0.1:7102")  # loopback: fine
        for advertised, code, words in (
                ("tcp:10.0.0.11:7102", ResultCode.FORBIDDEN, "not loopback"),
                ("tls:10.0.0.11:7102", ResultCode.FORBIDDEN, "takes TLS links only"),
                ("ssl:10.0.0.11:7102", ResultCode.UNKNOWN_NODE, "advertised"),
                ("tcp:nohost", ResultCode.UNKNOWN_NODE, "advertised")):
            with self.assertRaises(VssError) as e:
                peers.endpoint("node-a", advertised)
            self.assertEqual(e.exception.code, code, advertised)
            self.assertIn(words, e.exception.message)
        central.allow_plaintext = True
        peers.endpoint("node-a", "tcp:10.0.0.11:7102")
        d = os.path.abspath(self.mktemp())
        central.link_tls = LinkTLS(*cluster_ca(d, "node-b")["node-b"]).load()
        peers.endpoint("node-a", "tls:10.0.0.11:7102")


class OptionTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        self.files = cluster_ca(self.dir, "node-a", "cms")
        self.secret = os.path.join(self.dir, "cluster.secret")
        with open(self.secret, "wb") as f:
            f.write(SECRET)

    def node(self, *extra):
        from vss.tap.node import Options

        o = Options()
        o.parseOptions(["--node-id", "node-a", "--cluster-secret-file", self.secret,
                        "--data-dir", os.path.join(self.dir, "data"), *extra])
        return o.settings

    def cms(self, *extra):
        from vss.tap.cms import Options

        o = Options()
        o.parseOptions(["--data-dir", os.path.join(self.dir, "cms"), *extra])
        return o

    def test_node_links_in_plaintext_only_on_loopback(self):
        s = self.node("--cms", "tcp:127.0.0.1:7200")
        self.assertEqual((s.tls_cert, s.allow_plaintext_links), ("", False))
        for extra, words in (
                (["--cms", "tcp:10.0.0.5:7200"], "--cms: a plaintext link on 10.0.0.5"),
                (["--cms", "tcp:127.0.0.1:7200", "--node-listen", "tcp:7102"],
                 "--node-listen: a plaintext link on every interface"),
                (["--cms", "ssl:10.0.0.5:7200"], "must be tcp:HOST:PORT"),
                (["--cms", "tcp:127.0.0.1:7200", "--node-listen", "ssl:7102"],
                 "must be a tcp: endpoint"),
                (["--cms", "tcp:10.0.0.5:7200", "--tls-cert", self.files["node-a"][0]],
                 "give all three or none"),
                (["--cms", "tcp:10.0.0.5:7200", *tls_args(("nope.pem", "k", "c"))],
                 "--tls-cert: no such file nope.pem")):
            with self.assertRaises(ConfigError) as e:
                self.node(*extra)
            self.assertIn(words, str(e.exception), extra)
        s = self.node("--cms", "tcp:10.0.0.5:7200", "--node-listen", "tcp:7102",
                      "--allow-plaintext-links")
        self.assertTrue(s.allow_plaintext_links)
        s = self.node("--cms", "tcp:10.0.0.5:7200", "--node-listen", "tcp:7102",
                      *tls_args(self.files["node-a"]))
        self.assertEqual(s.tls_cert, self.files["node-a"][0])

    def test_cms_node_listener_in_plaintext_only_on_loopback(self):
        self.cms()
        with self.assertRaises(ConfigError) as e:
            self.cms("--node-listen", "tcp:7200:interface=10.0.0.5")
        self.assertIn("--node-listen: a plaintext link on 10.0.0.5", str(e.exception))
        self.cms("--node-listen", "tcp:7200:interface=10.0.0.5", "--allow-plaintext-links")
        self.cms("--node-listen", "tcp:7200", *tls_args(self.files["cms"]))
        with self.assertRaises(ConfigError) as e:
            self.cms("--node-listen", "ssl:7200", *tls_args(self.files["cms"]))
        self.assertIn("must be a tcp: endpoint", str(e.exception))

    def test_the_node_advertises_tls_and_rtsps_and_https(self):
        from vss.node import NodeService

        key, cert = self.files["node-a"][1], self.files["node-a"][0]
        s = self.node("--cms", "tcp:127.0.0.1:7200", *tls_args(self.files["node-a"]),
                      "--rtsp-listen", f"ssl:0:interface=127.0.0.1:privateKey={key}:"
                      f"certKey={cert}",
                      "--http-listen", f"ssl:0:interface=127.0.0.1:privateKey={key}:"
                      f"certKey={cert}")
        node = NodeService(s, reactor)  # built, not started

        class Port:
            def __init__(self, n):
                self.n = n

            def getHost(self):
                return IPv4Address("TCP", "127.0.0.1", self.n)

        node.node_listener.port = 7102
        node.rtsp_listener.port = Port(7554)
        node.http_listener.port = 7580
        signalling, media, _ = node.advertise()
        self.assertEqual((signalling, media), ("tls:127.0.0.1:7102", "rtsps://127.0.0.1:7554"))
        self.assertEqual(node.archive.http_base(), "https://127.0.0.1:7580")
        self.assertIsNotNone(node.cdn.node_tls)


class _Rgm:
    """What a PeerServer needs of an RGM to log a peer in."""

    node_id = "node-c"
    running = True
    events = None  # keeps no events


class InProcessTLSTests(unittest.TestCase):
    """Node-to-node links over real mutual TLS on loopback, in the test's reactor."""

    def setUp(self):
        d = os.path.abspath(self.mktemp())
        self.files = cluster_ca(d, "node-b", "node-c", "node-x")
        other = os.path.abspath(self.mktemp())
        self.foreign = cluster_ca(other, "node-b")["node-b"]  # another cluster's CA

    @defer.inlineCallbacks
    def serve(self, identity):
        server = PeerServer(_Rgm(), SECRET, reactor)
        tls = LinkTLS(*self.files[identity]).load()
        port = yield defer.succeed(reactor.listenTCP(
            0, tls.listen_factory(server.factory()), interface="127.0.0.1"))
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [link.abort() for link in list(server.links)])
        return port.getHost().port

    def peers(self, node_id, files):
        class Central:
            pass

        central = Central()
        central.node_id = node_id
        central.cluster_secret = SECRET
        central.reactor = central.clock = reactor
        central.link_tls = LinkTLS(*files).load()
        central.allow_plaintext = False
        peers = PeerLinks(central)
        self.addCleanup(peers.close)
        return peers

    @defer.inlineCallbacks
    def test_a_node_reaches_the_node_its_certificate_names(self):
        port = yield self.serve("node-c")
        link = yield self.peers("node-b", self.files["node-b"])._link(
            "node-c", f"tls:127.0.0.1:{port}")
        self.assertFalse(link.closed)
        self.assertEqual(certificate_names(link.transport.getPeerCertificate()),
                         {"node-c", "localhost"})
        self.assertIsNone(peer_identity_problem(link.transport, "node-c"))

    @defer.inlineCallbacks
    def test_a_server_whose_certificate_names_another_node_is_left(self):
        port = yield self.serve("node-x")
        with self.assertRaises(VssError) as e:
            yield self.peers("node-b", self.files["node-b"])._link(
                "node-c", f"tls:127.0.0.1:{port}")
        self.assertEqual(e.exception.code, ResultCode.AUTH_FAILED)
        self.assertIn("is for localhost, node-x, not node-c", e.exception.message)

    @defer.inlineCallbacks
    def test_a_client_whose_certificate_names_another_node_is_refused(self):
        port = yield self.serve("node-c")
        # logs in as node-z with node-b's certificate
        with self.assertRaises(VssError) as e:
            yield self.peers("node-z", self.files["node-b"])._link(
                "node-c", f"tls:127.0.0.1:{port}")
        self.assertEqual(e.exception.code, ResultCode.AUTH_FAILED)
        self.assertIn("not node-z", e.exception.message)

    @defer.inlineCallbacks
    def test_a_certificate_of_another_cluster_gets_no_link(self):
        port = yield self.serve("node-c")
        with self.assertRaises(Exception) as e:
            yield self.peers("node-b", self.foreign)._link("node-c", f"tls:127.0.0.1:{port}")
        self.assertNotIsInstance(e.exception, AssertionError)

    @defer.inlineCallbacks
    def test_plaintext_gets_nothing_from_a_tls_listener(self):
        port = yield self.serve("node-c")
        hello = codec.encode_request(MsgType.HELLO, Hello(
            min_version=1, max_version=1, role=Role.NODE, agent="x", features=[]), 1)
        reply = yield threads.deferToThread(raw_exchange, "127.0.0.1", port, hello)
        self.assertFalse(reply.startswith(codec.MAGIC), reply[:20])


class RTSPSPullTests(unittest.TestCase):
    """A node pulls another node's rtsps:// stream checking its certificate against the
    cluster CA (``CDNModule.node_pull_tls``)."""

    @defer.inlineCallbacks
    def test_the_origin_certificate_must_come_from_the_cluster_ca(self):
        from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
        from vss.rtsp.client import RTSPError, pull_into
        from vss.rtsp.server import RTSPServerFactory, RTSPServerService

        ours = cluster_ca(os.path.abspath(self.mktemp()), "node-a", "node-b")
        theirs = cluster_ca(os.path.abspath(self.mktemp()), "node-b")["node-b"]
        cert, key, _ = ours["node-a"]
        issuer = TokenIssuer(SECRET)
        origin = RTSPServerFactory(TokenAuthorizer(issuer), reactor=reactor, describe_wait=0.1)
        svc = RTSPServerService(f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                                origin, reactor)
        yield svc.startService()
        self.addCleanup(svc.stopService)
        path = "/live/cam-a/main"
        url = (f"rtsps://127.0.0.1:{svc.port.getHost().port}{path}"
               f"?token={issuer.issue(path, ['play'])}")
        here = RTSPServerFactory(TokenAuthorizer(issuer), reactor=reactor)
        self.addCleanup(here.close_all)
        trusted = LinkTLS(*ours["node-b"]).load().client_options(hostname="127.0.0.1")
        with self.assertRaises(RTSPError) as e:  # TLS went through: the origin said 404
            yield pull_into(here, path, url, reactor=reactor, tls=trusted)
        self.assertEqual(e.exception.status, 404)
        stranger = LinkTLS(*theirs).load().client_options(hostname="127.0.0.1")
        with self.assertRaises(Exception) as e:
            yield pull_into(here, path, url, reactor=reactor, tls=stranger)
        self.assertNotIsInstance(e.exception, (RTSPError, AssertionError))
        self.assertIn("certificate verify failed", str(e.exception))


def raw_exchange(host, port, data, timeout=10):
    """Blocking: send ``data`` on a plain TCP connection; what comes back until close."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def decode_rtsps(url, ca_file, count=25):
    """Blocking (a thread): PyAV decodes ``count`` frames of an rtsps:// URL, checking
    the server's certificate against ``ca_file``; their sizes."""
    sizes = []
    with av.open(url, options={"rtsp_transport": "tcp", "ca_file": ca_file},
                 timeout=20) as c:
        for frame in c.decode(video=0):
            sizes.append((frame.width, frame.height))
            if len(sizes) >= count:
                break
    return sizes


class TLSPlatformTests(unittest.TestCase):
    """``twistd vss-cms`` and two ``twistd vss-node`` over mutual TLS, with RTSPS."""

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        if FFMPEG is None:
            raise unittest.SkipTest("PyAV and imageio-ffmpeg are needed")
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        self.ca_dir = os.path.join(self.work, "ca")
        self.files = cluster_ca(self.ca_dir, "cms", "node-a", "node-b")
        self.ca = os.path.join(self.ca_dir, "ca.pem")
        yield seed_cms_db(
            reactor, cms_db_path(self.work),
            devices=[records.device("cam-a", "cam-a-secret", home_node="node-a",
                                    iterations=FAST)],
            users=[records.user("alice", "alice-pw", iterations=FAST)],
            grants=[records.grant("user:alice", "cam-a", ALL)])
        self.cms, self.cms_ports = yield start_cms(
            reactor, self.work, ["--heartbeat", "1", *tls_args(self.files["cms"])])
        self.addCleanup(self.cms.stop)

    def node_args(self, files, rtsps_files=None):
        args = ["--keepalive", "2", "--request-timeout", "5",
                "--cms", f"tcp:127.0.0.1:{self.cms_ports['node']}",
                "--cluster-secret-file", cms_secret_file(self.work),
                "--node-listen", "tcp:0:interface=127.0.0.1", *tls_args(files)]
        if rtsps_files is not None:
            cert, key, _ = rtsps_files
            args += ["--rtsp-listen",
                     f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"]
        return args

    @defer.inlineCallbacks
    def start(self, node_id, files, rtsps=False):
        daemon, ports = yield start_node(reactor, self.work, node_id, self.node_args(
            files, files if rtsps else None))
        self.addCleanup(daemon.stop)
        return daemon, ports

    def synchronised(self, node_id):
        status = read_status(self.work, node_id)
        return status is not None and status["central"]["connected"] \
            and status["central"]["applied_seq"] > 0

    @defer.inlineCallbacks
    def test_nodes_and_cms_over_mutual_tls_with_rtsps(self):
        _, ports_a = yield self.start("node-a", self.files["node-a"], rtsps=True)
        _, ports_b = yield self.start("node-b", self.files["node-b"], rtsps=True)
        yield poll("node-a to register over TLS", lambda: self.synchronised("node-a"))
        yield poll("node-b to register over TLS", lambda: self.synchronised("node-b"))
        # CMS's node port and node-a's node port take TLS only
        hello = codec.encode_request(MsgType.HELLO, Hello(
            min_version=1, max_version=1, role=Role.NODE, agent="x", features=[]), 1)
        for port in (self.cms_ports["node"], ports_a["node"]):
            reply = yield threads.deferToThread(raw_exchange, "127.0.0.1", port, hello)
            self.assertFalse(reply.startswith(codec.MAGIC), reply[:20])
        pu = start_pu(reactor, self.work, f"tcp:127.0.0.1:{ports_a['pu']}", "cam-a",
                      "cam-a-secret")
        self.addCleanup(pu.stop)

        def ctl(*args):
            return vssctl(f"tcp:127.0.0.1:{ports_b['cu']}", args, "alice", "alice-pw")

        @defer.inlineCallbacks
        def moved():
            out, err, code = yield ctl("ptz", "cam-a", "goto", "--pan", "0.25")
            return code == 0

        yield poll("cam-a to answer node-b's user", moved, interval=0.5)
        # the route is cached: the next request goes straight to node-a, over TLS
        out, err, code = yield ctl("ptz", "cam-a", "goto", "--pan", "0.5")
        self.assertEqual(code, 0, err)
        yield poll("node-b to route straight to node-a", lambda: read_status(
            self.work, "node-b")["central"]["routed_direct"] >= 1)

        # live video through node-b, which pulls it from node-a's RTSPS server (checked
        # against the cluster CA), to PyAV over rtsps
        out, err, code = yield ctl("--json", "live", "cam-a")
        self.assertEqual(code, 0, err)
        url = json.loads(out)["url"]
        self.assertTrue(url.startswith(f"rtsps://127.0.0.1:{ports_b['rtsp']}/"), url)
        sizes = yield threads.deferToThread(decode_rtsps, url, self.ca)
        self.assertEqual(len(sizes), 25)
        # ffmpeg too, and a player that does not trust the CA gets nothing
        ok = yield threads.deferToThread(subprocess.run, [
            FFMPEG, "-hide_banner", "-loglevel", "error", "-rtsp_transport", "tcp",
            "-ca_file", self.ca, "-i", url, "-frames:v", "10", "-f", "null", "-"],
            capture_output=True, timeout=60)
        self.assertEqual(ok.returncode, 0, ok.stderr[-500:])
        untrusted = yield threads.deferToThread(subprocess.run, [
            FFMPEG, "-hide_banner", "-loglevel", "error", "-rtsp_transport", "tcp",
            "-i", url, "-frames:v", "1", "-f", "null", "-"], capture_output=True, timeout=60)
        self.assertNotEqual(untrusted.returncode, 0)
        with open(os.path.join(self.work, "cms.log")) as f:
            self.assertNotIn("refused", f.read())

    @defer.inlineCallbacks
    def test_a_node_with_another_nodes_certificate_is_refused(self):
        node, _ = yield self.start("node-a", self.files["node-b"])

        def said(daemon, words):
            return words in daemon.output()

        yield poll("CMS to refuse node-a", lambda: said(
            self.cms, "refused node node-a"))
        yield poll("node-a to be told why", lambda: said(
            node, "certificate is for 127.0.0.1, localhost, node-b, not node-a")
            or said(node, "certificate is for localhost, node-b, not node-a"))
        self.assertFalse(read_status(self.work, "node-a")["central"]["connected"])

    @defer.inlineCallbacks
    def test_https_export_listener(self):
        cert, key, _ = self.files["node-a"]
        daemon, ports = yield start_node(reactor, self.work, "node-a", [
            *self.node_args(self.files["node-a"]),
            "--http-listen", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"])
        self.addCleanup(daemon.stop)

        def get():
            context = stdlib_ssl.create_default_context(cafile=self.ca)
            with socket.create_connection(("127.0.0.1", ports["http"]), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"GET /export?token=nope HTTP/1.1\r\nHost: x\r\n"
                          b"Connection: close\r\n\r\n")
                return s.recv(100)

        head = yield threads.deferToThread(get)
        self.assertTrue(head.startswith(b"HTTP/1.1 403"), head)


class PlaintextPolicyTests(unittest.TestCase):
    """A plaintext link to or from an address that is not loopback: refused by default,
    allowed with ``--allow-plaintext-links`` and a warning. Needs an address of this
    machine that is not loopback."""

    timeout = 120

    def setUp(self):
        self.address = non_loopback_address()
        if self.address is None:
            raise unittest.SkipTest("this machine has no address but loopback")
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)

    @defer.inlineCallbacks
    def run_to_exit(self, name, argv):
        d = Daemon(reactor, [tool("twistd"), "-n", "--pidfile=", *argv],
                   os.path.join(self.work, f"{name}.log"), cwd=self.work)
        code = yield d.proto.ended
        return code, d.output()

    @defer.inlineCallbacks
    def test_refused_at_start(self):
        code, out = yield self.run_to_exit("cms", [
            "vss-cms", "--data-dir", os.path.join(self.work, "cms"),
            "--admin-listen", "tcp:0:interface=127.0.0.1",
            "--node-listen", f"tcp:0:interface={self.address}"])
        self.assertNotEqual(code, 0)
        self.assertIn(f"--node-listen: a plaintext link on {self.address} (not loopback) "
                      "is refused", out)
        secret = os.path.join(self.work, "secret")
        with open(secret, "wb") as f:
            f.write(SECRET)
        code, out = yield self.run_to_exit("node", [
            "vss-node", "--node-id", "node-a", "--data-dir", os.path.join(self.work, "a"),
            "--cms", f"tcp:{self.address}:7200", "--cluster-secret-file", secret])
        self.assertNotEqual(code, 0)
        self.assertIn(f"--cms: a plaintext link on {self.address} (not loopback) is refused",
                      out)

    @defer.inlineCallbacks
    def test_allowed_with_a_warning(self):
        cms, ports = yield start_cms(reactor, self.work, [
            "--heartbeat", "1", "--node-listen", f"tcp:0:interface={self.address}",
            "--allow-plaintext-links"])
        self.addCleanup(cms.stop)
        node, _ = yield start_node(reactor, self.work, "node-a", [
            "--cms", f"tcp:{self.address}:{ports['node']}",
            "--cluster-secret-file", cms_secret_file(self.work),
            "--node-listen", "tcp:0:interface=127.0.0.1", "--allow-plaintext-links"])
        self.addCleanup(node.stop)
        yield poll("node-a to register", lambda: (read_status(self.work, "node-a") or {})
                   .get("central", {}).get("connected"))
        self.assertIn(f"plaintext node link from {self.address} (--allow-plaintext-links)",
                      cms.output())
        self.assertIn(f"the link to CMS at {self.address} is plaintext", node.output())
