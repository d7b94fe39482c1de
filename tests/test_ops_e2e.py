"""
Health, readiness and Prometheus metrics of real daemons, as an operator's monitoring
sees them: a ``twistd vss-cms`` and a ``twistd vss-node`` with a ``vss-pu`` camera and
a ``vssctl`` user, scraped over HTTP and parsed with ``prometheus_client``'s own
parser; every metric the Grafana dashboard (docs/grafana-vss.json) queries is exported;
who may scrape; a node that cannot serve says why; the version in the first log line.
"""

import json
import os
import re

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from vss import __version__
from vss.cms.daemon import CmsDaemon
from vss.config import NodeSettings
from vss.node import NodeService
from vss.protocols.messages import Action
from vss.rgm.localcentral import MemoryCentral
from vss.testing import records
from vss.testing.processes import (
    child_env,
    cms_db_path,
    node_cms_args,
    poll,
    run_tool,
    seed_cms_db,
    start_cms,
    start_node,
    start_pu,
    vssctl,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DASHBOARD = os.path.join(os.path.dirname(HERE), "docs", "grafana-vss.json")
ADMIN_TOKEN = "ops-e2e-admin-token-0123456789"
FAST = 2000  # PBKDF2 iterations of the test identities


@defer.inlineCallbacks
def http_get(url, headers=None):
    """(status, body bytes) of GET ``url``."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, pool=pool)
    response = yield agent.request(
        b"GET", url.encode("ascii"),
        Headers({k: [v] for k, v in (headers or {}).items()}))
    body = yield readBody(response)
    return response.code, body


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def exported_names(fams):
    """Every series name a family declares (those a query may name), with or without
    samples yet: counters ``_total``, histograms ``_bucket``/``_count``/``_sum``."""
    names = set()
    for f in fams.values():
        names.update(s.name for s in f.samples)
        if f.type == "counter":
            names.add(f.name + "_total")
        elif f.type == "histogram":
            names.update(f.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(f.name)
    return names


def sample(fams, family, name, **labels):
    for s in fams[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {name}{labels} in {family}")


def dashboard_metrics():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    names = set()
    for panel in dash["panels"]:
        for target in panel.get("targets", ()):
            names.update(re.findall(r"\bvss_[a-z0-9_]+", target["expr"]))
    return names


class RunningPlatformTests(unittest.TestCase):
    """One CMS, one node, one camera, one user; what monitoring sees."""

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        yield seed_cms_db(
            reactor, cms_db_path(self.work),
            devices=[records.device("cam-1", "cam-secret", home_node="node-a",
                                    iterations=FAST)],
            users=[records.user("alice", "alice-password", iterations=FAST)],
            grants=[records.grant("user:alice", "cam-1", Action.VIEW | Action.PTZ)],
            admin_tokens=[("root", ADMIN_TOKEN)])
        self.cms, self.cms_ports = yield start_cms(reactor, self.work)
        self.addCleanup(self.cms.stop)
        self.node, self.ports = yield start_node(
            reactor, self.work, "node-a", node_cms_args(self.work, self.cms_ports))
        self.addCleanup(self.node.stop)
        self.pu = start_pu(reactor, self.work, f"tcp:127.0.0.1:{self.ports['pu']}", "cam-1",
                           "cam-secret")
        self.addCleanup(self.pu.stop)
        self.node_url = f"http://127.0.0.1:{self.ports['http']}"
        self.cms_url = f"http://127.0.0.1:{self.cms_ports['admin']}"

    def ctl(self, *args):
        return vssctl(f"tcp:127.0.0.1:{self.ports['cu']}", args, "alice", "alice-password")

    @defer.inlineCallbacks
    def scrape(self, base):
        status, body = yield http_get(base + "/metrics")
        self.assertEqual(status, 200, body)
        return families(body.decode("utf-8"))

    @defer.inlineCallbacks
    def wait_online(self):
        @defer.inlineCallbacks
        def online():
            out, err, code = yield self.ctl("--json", "devices")
            return code == 0 and json.loads(out)["devices"][0]["online"]

        yield poll("cam-1 online", online, timeout=60, interval=0.5)

    @defer.inlineCallbacks
    def test_health_metrics_and_the_dashboard(self):
        yield self.wait_online()
        out, err, code = yield self.ctl("ptz", "cam-1", "move", "--pan", "0.2")
        self.assertEqual(code, 0, err)
        out, err, code = yield run_tool("vss-admin", ["status"], env=child_env(
            VSS_API=self.cms_url, VSS_ADMIN_TOKEN=ADMIN_TOKEN))
        self.assertEqual(code, 0, err)

        for base in (self.node_url, self.cms_url):
            status, body = yield http_get(base + "/healthz")
            self.assertEqual((status, json.loads(body)), (200, {"status": "alive"}))
            status, body = yield http_get(base + "/readyz")
            self.assertEqual((status, json.loads(body)), (200, {"status": "ready"}), base)

        node = yield self.scrape(self.node_url)
        cms = yield self.scrape(self.cms_url)
        self.assertEqual(sample(node, "vss_build_info", "vss_build_info",
                                program="vss-node", version=__version__), 1)
        self.assertEqual(sample(cms, "vss_build_info", "vss_build_info",
                                program="vss-cms", version=__version__), 1)
        self.assertEqual(sample(node, "vss_links", "vss_links", kind="pu",
                                state="registered"), 1)
        self.assertGreaterEqual(sample(node, "vss_logins", "vss_logins_total", role="cu",
                                       result="ok"), 2)
        self.assertEqual(sample(node, "vss_logins", "vss_logins_total", role="pu",
                                result="ok"), 1)
        self.assertGreaterEqual(sample(
            node, "vss_relay_request_duration_seconds",
            "vss_relay_request_duration_seconds_count", type="PTZ_CONTROL", route="local"), 1)
        self.assertGreaterEqual(sample(node, "vss_relay_forwarded", "vss_relay_forwarded_total"),
                                1)
        self.assertEqual(sample(node, "vss_cms_link_up", "vss_cms_link_up"), 1)
        self.assertEqual(sample(node, "vss_sync_lag", "vss_sync_lag"), 0)
        self.assertGreater(sample(node, "vss_recording_disk_free_bytes",
                                  "vss_recording_disk_free_bytes"), 0)
        # the PU's coming online is an event the node numbered
        self.assertGreaterEqual(sample(node, "vss_events_raised", "vss_events_raised_total"),
                                1)
        self.assertEqual(sample(node, "vss_events_report_dropped",
                                "vss_events_report_dropped_total"), 0)
        self.assertEqual(sample(cms, "vss_cms_nodes", "vss_cms_nodes", state="up"), 1)
        self.assertEqual(sample(cms, "vss_cms_devices_online", "vss_cms_devices_online"), 1)
        self.assertGreaterEqual(sample(cms, "vss_cms_admin_requests",
                                       "vss_cms_admin_requests_total", method="GET",
                                       status="200"), 1)
        self.assertGreater(sample(cms, "vss_cms_db_call_duration_seconds",
                                  "vss_cms_db_call_duration_seconds_count", kind="read"), 0)

        exported = exported_names(node) | exported_names(cms)
        wanted = dashboard_metrics()
        self.assertGreater(len(wanted), 30)
        self.assertEqual(sorted(wanted - exported), [], "queried by the dashboard, not exported")

        # without the admin token, the admin listener shows nothing else
        status, body = yield http_get(self.cms_url + "/api/v1/status")
        self.assertEqual(status, 401)
        self.assertNotIn(b"node-a", body)

    def test_the_first_log_line_names_the_version(self):
        for log in ("cms.log", "node-a.log"):
            with open(os.path.join(self.work, log)) as f:
                ours = [line for line in f if "[vss." in line]
            program = "vss-cms" if log == "cms.log" else "vss-node"
            self.assertIn(f"{program} (vss) {__version__} starting", ours[0])


class NotReadyTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_a_node_without_its_cms_says_so(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        secret = os.path.join(work, "cluster.secret")
        with open(secret, "w") as f:
            f.write("x" * 64)
        # a port nothing listens on: CMS is down
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
        s.close()
        node, ports = yield start_node(reactor, work, "lonely", [
            "--cms", f"tcp:127.0.0.1:{dead}", "--cluster-secret-file", secret,
            "--node-listen", "tcp:0:interface=127.0.0.1"])
        self.addCleanup(node.stop)
        base = f"http://127.0.0.1:{ports['http']}"
        status, body = yield http_get(base + "/healthz")
        self.assertEqual(status, 200)
        status, body = yield http_get(base + "/readyz")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body), {"status": "not ready",
                                            "reasons": ["cms: not connected"]})
        fams = families((yield http_get(base + "/metrics"))[1].decode())
        self.assertEqual(sample(fams, "vss_cms_link_up", "vss_cms_link_up"), 0)


class AccessTests(unittest.TestCase):
    """Who may scrape a real node: the networks allowed, the bearer token, metrics off."""

    timeout = 120

    @defer.inlineCallbacks
    def test_networks_token_and_off(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        static = os.path.join(work, "static.json")
        MemoryCentral().save(static)
        token = "scraper-token-0123456789abcdef"
        token_file = os.path.join(work, "metrics.token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, token.encode() + b"\n")
        os.close(fd)
        started = yield defer.gatherResults([
            start_node(reactor, work, "elsewhere", ["--static", static,
                                                    "--metrics-allow", "192.0.2.0/24"]),
            start_node(reactor, work, "tokened", ["--static", static,
                                                  "--metrics-token-file", token_file]),
            start_node(reactor, work, "quiet", ["--static", static, "--metrics", "off"]),
        ])
        for node, _ in started:
            self.addCleanup(node.stop)
        (_, elsewhere), (_, tokened), (_, quiet) = started

        def url(ports, path):
            return f"http://127.0.0.1:{ports['http']}{path}"

        status, body = yield http_get(url(elsewhere, "/metrics"))
        self.assertEqual((status, body), (403, b"forbidden\n"))
        status, _ = yield http_get(url(elsewhere, "/readyz"))
        self.assertEqual(status, 200)  # health is for anyone who reaches the listener

        status, body = yield http_get(url(tokened, "/metrics"))
        self.assertEqual(status, 401)
        self.assertNotIn(b"vss_", body)
        status, body = yield http_get(url(tokened, "/metrics"),
                                      {b"Authorization": b"Bearer " + token.encode()})
        self.assertEqual(status, 200)
        self.assertIn("vss_links", families(body.decode()))

        status, _ = yield http_get(url(quiet, "/metrics"))
        self.assertEqual(status, 404)
        status, _ = yield http_get(url(quiet, "/healthz"))
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_a_token_file_others_may_read_is_refused(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        static = os.path.join(work, "static.json")
        MemoryCentral().save(static)
        token_file = os.path.join(work, "metrics.token")
        with open(token_file, "w") as f:
            f.write("scraper-token-0123456789abcdef\n")
        os.chmod(token_file, 0o644)
        out, err, code = yield run_tool(
            "twistd", ["-n", "--pidfile=", "vss-node", "--node-id", "n1", "--static", static,
                       "--data-dir", os.path.join(work, "n1"),
                       "--metrics-token-file", token_file], cwd=work)
        self.assertNotEqual(code, 0)
        self.assertIn("--metrics-token-file", out + err)
        self.assertIn("chmod 600", out + err)

    @defer.inlineCallbacks
    def test_twistd_plugins_say_their_version(self):
        for plugin in ("vss-node", "vss-cms"):
            out, err, code = yield run_tool("twistd", [plugin, "--version"])
            self.assertEqual((code, out), (0, f"{plugin} (vss) {__version__}\n"), err)


class ReadinessTests(unittest.TestCase):
    """The daemons' readiness, in process: each reason appears when its cause does."""

    def node(self):
        work = os.path.abspath(self.mktemp())
        static = os.path.join(work, "static.json")
        os.makedirs(work)
        MemoryCentral().save(static)
        settings = NodeSettings(
            node_id="n1", pu_listen="tcp:0", cu_listen="tcp:0", rtsp_listen="tcp:0",
            media_host="127.0.0.1", cms="", cluster_secret_file="", node_listen="tcp:0",
            advertise_host="127.0.0.1", static=static, store="memory",
            data_dir=os.path.join(work, "n1"), keepalive=30, request_timeout=10.0,
            manhole="", manhole_keys="", http_listen="tcp:0")
        return NodeService(settings, MemoryReactorClock())

    def test_a_node_not_started_and_a_store_that_does_not_answer(self):
        node = self.node()
        reasons = self.successResultOf(node.readiness())
        self.assertEqual(reasons[0], "starting")
        self.assertIn("listener pu: not listening", reasons)
        self.assertIn("listener rtsp: not listening", reasons)
        self.patch(node.store, "ping", lambda: defer.Deferred())
        d = node.readiness()
        node.reactor.advance(2.0)
        self.assertIn("store: not reachable", self.successResultOf(d))

    def test_cms_without_its_database(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        clock = MemoryReactorClock()
        daemon = CmsDaemon({"cms-id": "cms", "node-listen": "tcp:0", "admin-listen": "tcp:0",
                            "data-dir": work, "heartbeat": 5,
                            "cluster-secret-file": os.path.join(work, "cluster.secret"),
                            "db": "sqlite:" + os.path.join(work, "db.sqlite3")}, clock)
        self.patch(daemon.store, "head_seq",
                   lambda: defer.fail(OSError("connection refused")))
        reasons = self.successResultOf(daemon.readiness())
        self.assertEqual(reasons, ["starting", "listener node: not listening",
                                   "listener admin: not listening",
                                   "database: not reachable"])
        self.assertIsNotNone(daemon.metrics)

