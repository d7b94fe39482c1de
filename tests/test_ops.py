"""
The operations surface without sockets (``vss.ops``): the plain histogram and its
Prometheus buckets, who may scrape ``/metrics`` (networks, bearer token, the token
file's mode), ``/healthz`` and ``/readyz`` answers, the node's HTTP root, the
relay's latency and counters kept by the fast and general paths (``task.Clock``), the
version every command prints.
"""

import io
import json
import os
import sys

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.python import usage
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from vss import __version__
from vss.ops import health
from vss.ops.collectors import CmsCollector, labelled
from vss.ops.histogram import LATENCY_BOUNDS, Histogram
from vss.ops.http import NodeHttpRoot, ops_resources
from vss.ops.metrics import (
    Access,
    AccessError,
    MetricsResource,
    histogram_family,
    make_registry,
    parse_networks,
    read_token_file,
)
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import Config, ConfigGet, MsgType, PtzControl, PtzStatus
from vss.testing.harness import ALL, NodeHarness
from vss.version import VersionOption, version_line


def request(path=b"/metrics", host="127.0.0.1", headers=None, method=b"GET"):
    r = DummyRequest(path.lstrip(b"/").split(b"/"))
    r.path = path
    r.uri = path
    r.method = method
    r.client = IPv6Address("TCP", host, 40000) if ":" in host else \
        IPv4Address("TCP", host, 40000)
    for k, v in (headers or {}).items():
        r.requestHeaders.setRawHeaders(k, [v])
    return r


def render(res, req):
    """Render ``res`` for ``req``; a Deferred of (status, body bytes)."""
    d = req.notifyFinish()
    out = res.render(req)
    if isinstance(out, bytes):
        req.write(out)
        req.finish()
    return d.addCallback(lambda _: (req.responseCode or 200, b"".join(req.written)))


class Counting:
    """A collector over one plain counter."""

    def __init__(self):
        self.n = 0

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("vss_test_things", "Things.", value=self.n)
        h = Histogram()
        h.observe(0.003)
        yield histogram_family("vss_test_seconds", "Seconds.", ["kind"], [(("a",), h)])


class HistogramTests(unittest.TestCase):
    def test_buckets_follow_prometheus_le(self):
        h = Histogram((0.1, 1.0))
        for v in (0.05, 0.1, 0.5, 1.0, 3.0):
            h.observe(v)
        self.assertEqual(h.buckets(), [("0.1", 2), ("1.0", 4), ("+Inf", 5)])
        self.assertEqual(h.count, 5)
        self.assertAlmostEqual(h.cells[-1], 4.65)

    def test_the_family_parses_back(self):
        h = Histogram()
        h.observe(0.0007)
        h.observe(20.0)
        reg = make_registry(_Fixed([histogram_family("vss_x_seconds", "X.", ["t"],
                                                     [(("PTZ",), h)])]))
        from prometheus_client.exposition import generate_latest

        samples = {(s.name, s.labels.get("le")): s.value
                   for f in text_string_to_metric_families(generate_latest(reg).decode())
                   for s in f.samples}
        self.assertEqual(samples[("vss_x_seconds_bucket", "0.0005")], 0)
        self.assertEqual(samples[("vss_x_seconds_bucket", "0.001")], 1)
        self.assertEqual(samples[("vss_x_seconds_bucket", "10.0")], 1)
        self.assertEqual(samples[("vss_x_seconds_bucket", "+Inf")], 2)
        self.assertEqual(samples[("vss_x_seconds_count", None)], 2)

    def test_a_lone_label_may_be_bare(self):
        from prometheus_client.core import GaugeMetricFamily

        fam = labelled(GaugeMetricFamily, "vss_g", "G.", ("transport",),
                       [("tcp", 2), (("udp",), 1)])
        self.assertEqual([(s.labels, s.value) for s in fam.samples],
                         [({"transport": "tcp"}, 2), ({"transport": "udp"}, 1)])


class _Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


class AccessTests(unittest.TestCase):
    def test_loopback_only_by_default(self):
        a = Access()
        self.assertTrue(a.allowed_address(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertTrue(a.allowed_address(IPv4Address("TCP", "127.8.0.3", 1)))
        self.assertTrue(a.allowed_address(IPv6Address("TCP", "::1", 1)))
        self.assertTrue(a.allowed_address(IPv6Address("TCP", "::ffff:127.0.0.1", 1)))
        self.assertTrue(a.allowed_address(UNIXAddress(b"/run/x.sock")))
        self.assertFalse(a.allowed_address(IPv4Address("TCP", "10.0.0.5", 1)))
        self.assertFalse(a.allowed_address(IPv6Address("TCP", "fe80::1", 1)))

    def test_other_networks(self):
        a = Access(parse_networks("10.1.0.0/16, 192.0.2.7"))
        self.assertTrue(a.allowed_address(IPv4Address("TCP", "10.1.200.3", 1)))
        self.assertTrue(a.allowed_address(IPv4Address("TCP", "192.0.2.7", 1)))
        self.assertFalse(a.allowed_address(IPv4Address("TCP", "192.0.2.8", 1)))
        self.assertFalse(a.allowed_address(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_bad_networks_are_named(self):
        for text in ("10.0.0.0/33", "nope", " , "):
            with self.assertRaises(AccessError) as e:
                parse_networks(text)
            self.assertIn("--metrics-allow", str(e.exception))

    def test_the_token_file_must_be_the_owners_alone(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret-token-of-the-scraper\n")
        os.chmod(path, 0o644)
        with self.assertRaises(AccessError) as e:
            read_token_file(path)
        self.assertIn("chmod 600", str(e.exception))
        os.chmod(path, 0o600)
        self.assertEqual(read_token_file(path), b"s3cret-token-of-the-scraper")
        with open(path, "w") as f:
            f.write("short")
        with self.assertRaises(AccessError):
            read_token_file(path)
        with self.assertRaises(AccessError) as e:
            read_token_file(path + ".missing")
        self.assertIn("cannot read", str(e.exception))


class MetricsResourceTests(unittest.TestCase):
    def setUp(self):
        self.things = Counting()
        self.registry = make_registry(self.things)

    @defer.inlineCallbacks
    def test_a_scrape_parses_and_reads_the_counters_now(self):
        res = MetricsResource(self.registry, Access())
        self.things.n = 41
        status, body = yield render(res, request())
        self.assertEqual(status, 200)
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        self.assertEqual(families["vss_test_things"].samples[0].value, 41)
        self.assertIn("vss_test_seconds", families)
        self.things.n = 42
        status, body = yield render(res, request())
        self.assertIn(b"vss_test_things_total 42.0", body)

    @defer.inlineCallbacks
    def test_openmetrics_when_asked(self):
        res = MetricsResource(self.registry, Access())
        req = request(headers={b"accept": b"application/openmetrics-text; version=1.0.0"})
        status, body = yield render(res, req)
        self.assertTrue(body.endswith(b"# EOF\n"), body[-40:])
        self.assertIn(b"openmetrics", req.responseHeaders.getRawHeaders(b"content-type")[0])

    @defer.inlineCallbacks
    def test_refused_addresses_and_tokens_get_nothing(self):
        res = MetricsResource(self.registry, Access(token=b"the-scrapers-token-0123"))
        status, body = yield render(res, request(host="10.9.9.9", headers={
            b"authorization": b"Bearer the-scrapers-token-0123"}))
        self.assertEqual((status, body), (403, b"forbidden\n"))
        status, body = yield render(res, request())
        self.assertEqual(status, 401)
        self.assertNotIn(b"vss_", body)
        status, body = yield render(res, request(headers={b"authorization": b"Bearer nope"}))
        self.assertEqual(status, 401)
        status, body = yield render(res, request(headers={
            b"authorization": b"Bearer the-scrapers-token-0123"}))
        self.assertEqual(status, 200)
        self.assertIn(b"vss_test_things_total", body)
        self.assertEqual(res.scrapes, 1)

    @defer.inlineCallbacks
    def test_refresh_runs_before_the_scrape_and_its_failure_keeps_the_last_values(self):
        calls = []

        def refresh():
            calls.append(1)
            self.things.n = len(calls)
            if len(calls) == 2:
                return defer.fail(RuntimeError("database away"))
            return defer.succeed(None)

        res = MetricsResource(self.registry, Access(), refresh=refresh)
        status, body = yield render(res, request())
        self.assertIn(b"vss_test_things_total 1.0", body)
        status, body = yield render(res, request())
        self.assertEqual(status, 200)
        self.assertIn(b"vss_test_things_total 2.0", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class HealthTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_alive_and_ready(self):
        clock = task.Clock()
        status, body = yield render(health.Alive(), request(b"/healthz"))
        self.assertEqual((status, json.loads(body)), (200, {"status": "alive"}))
        ready = health.Ready(lambda: defer.succeed([]), clock)
        status, body = yield render(ready, request(b"/readyz"))
        self.assertEqual((status, json.loads(body)), (200, {"status": "ready"}))

    @defer.inlineCallbacks
    def test_not_ready_says_why(self):
        ready = health.Ready(lambda: defer.succeed(["cms: not connected"]), task.Clock())
        status, body = yield render(ready, request(b"/readyz"))
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body), {"status": "not ready",
                                            "reasons": ["cms: not connected"]})

    def test_a_slow_check_is_a_reason(self):
        clock = task.Clock()
        ready = health.Ready(lambda: defer.Deferred(), clock, timeout=3.0)
        req = request(b"/readyz")
        d = render(ready, req)
        clock.advance(2.9)
        self.assertFalse(d.called)
        clock.advance(0.2)
        status, body = self.successResultOf(d)
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["reasons"], ["readiness check took more than 3 s"])

    def test_a_failing_check_is_a_reason_not_a_traceback(self):
        ready = health.Ready(lambda: defer.fail(KeyError("x")), task.Clock())
        status, body = self.successResultOf(render(ready, request(b"/readyz")))
        self.assertEqual((status, json.loads(body)["reasons"]),
                         (503, ["readiness check failed"]))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_probe(self):
        clock = task.Clock()
        self.assertEqual(self.successResultOf(health.probe(defer.succeed(1), clock, 2, "x")),
                         [])
        self.assertEqual(self.successResultOf(health.probe(
            defer.fail(OSError("refused")), clock, 2, "store: not reachable")),
            ["store: not reachable"])
        d = health.probe(defer.Deferred(), clock, 2, "slow")
        clock.advance(2)
        self.assertEqual(self.successResultOf(d), ["slow"])


class _Fallback:
    """Stands for the export resource."""

    def __init__(self):
        self.paths = []

    def render(self, request):
        self.paths.append(request.path)
        request.setResponseCode(404)
        return b"not found\n"


class NodeHttpRootTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_operations_paths_and_the_rest(self):
        fallback = _Fallback()
        root = NodeHttpRoot(ops_resources(lambda: defer.succeed([]), task.Clock(),
                                          MetricsResource(make_registry(Counting()),
                                                          Access())), fallback)
        status, body = yield render(root, request(b"/healthz"))
        self.assertEqual(status, 200)
        status, body = yield render(root, request(b"/readyz"))
        self.assertEqual(json.loads(body), {"status": "ready"})
        status, body = yield render(root, request(b"/metrics"))
        self.assertIn(b"vss_test_things_total", body)
        for path in (b"/export", b"/metrics/x", b"/", b"/healthz/"):
            status, _ = yield render(root, request(path))
            self.assertEqual(status, 404)
        self.assertEqual(fallback.paths, [b"/export", b"/metrics/x", b"/", b"/healthz/"])

    @defer.inlineCallbacks
    def test_without_metrics(self):
        fallback = _Fallback()
        root = NodeHttpRoot(ops_resources(lambda: defer.succeed([]), task.Clock()), fallback)
        status, _ = yield render(root, request(b"/metrics"))
        self.assertEqual((status, fallback.paths), (404, [b"/metrics"]))


class Held:
    """A PU handler whose answers wait until ``release``."""

    def __init__(self):
        self.waiting = []

    def __call__(self, frame, msg):
        d = defer.Deferred()
        self.waiting.append((d, msg.body.pan))
        return d

    def release(self):
        for d, pan in self.waiting:
            d.callback(PtzStatus(pan=pan, tilt=0.0, zoom=0.0, moving=False))
        self.waiting = []


class RelayMetricsTests(unittest.TestCase):
    """The relay keeps its latency and counters as plain numbers."""

    def setUp(self):
        self.h = NodeHarness(keepalive_interval=30, request_timeout=5.0, metrics=True)
        self.h.add_device("cam1", channels=1)
        self.h.add_user("alice", grants=[("cam1", ALL)])
        self.addCleanup(self.h.stop)

    def ptz(self, cu, **extra):
        return cu.request(MsgType.PTZ_CONTROL, PtzControl(**{
            "device_id": "cam1", "channel": 0, "op": 1, "pan": 0.5, "tilt": 0.0, "zoom": 0.0,
            "speed": 0.5, "timeout_ms": 0, **extra}))

    def test_fast_path_latency_is_the_time_the_pu_took(self):
        held = Held()
        _, (d, _, _) = self.h.pu("cam1", on_request=held)
        cu, (d2, _, _) = self.h.cu("alice")
        self.h.pump()
        answers = [self.ptz(cu), self.ptz(cu)]
        self.h.pump()
        self.h.clock.advance(0.03)
        held.release()
        self.h.pump()
        for a in answers:
            self.assertTrue(a.called)
        hist = self.h.rgm.latency[int(MsgType.PTZ_CONTROL), "local"]
        self.assertEqual(hist.count, 2)
        i = LATENCY_BOUNDS.index(0.05)  # 0.025 < 0.03 <= 0.05
        self.assertEqual(hist.cells[i], 2)
        self.assertAlmostEqual(hist.cells[-1], 0.06)
        self.assertEqual(self.h.rgm.logins["pu", "ok"], 1)
        self.assertEqual(self.h.rgm.logins["cu", "ok"], 1)

    def test_general_path_latency_by_type_and_timeouts(self):
        held = []

        def pu(frame, msg):
            if msg.body.keys == ["hold"]:
                held.append(defer.Deferred())
                return held[-1]
            return Config(items=[], version=1)

        self.h.pu("cam1", on_request=pu)
        cu, _ = self.h.cu("alice")
        self.h.pump()
        answered = cu.request(MsgType.CONFIG_GET, ConfigGet(device_id="cam1", channel=0,
                                                            keys=["answer"]))
        stuck = cu.request(MsgType.CONFIG_GET, ConfigGet(device_id="cam1", channel=0,
                                                         keys=["hold"]), timeout=60)
        self.h.pump()
        self.assertTrue(answered.called)
        hist = self.h.rgm.latency[int(MsgType.CONFIG_GET), "local"]
        self.assertEqual(hist.count, 1)
        self.h.clock.advance(5.1)
        self.h.pump()
        self.assertEqual(self.failureResultOf(stuck, VssError).value.code, ResultCode.TIMEOUT)
        self.assertEqual(self.h.rgm.counters["timeouts"], 1)
        self.assertEqual(hist.count, 1)  # a timeout is counted, not timed

    def test_no_histograms_with_metrics_off(self):
        h = NodeHarness(node_id="node-b", metrics=False)
        self.addCleanup(h.stop)
        self.assertIsNone(h.rgm.latency)
        self.assertIsNone(h.rgm.ptz_local)

    def test_failed_logins_are_counted(self):
        _, (d, _, _) = self.h.cu("alice", password="wrong")
        self.h.pump()
        self.assertEqual(self.h.rgm.logins["cu", "failed"], 1)
        self.failureResultOf(d, VssError)


class VersionTests(unittest.TestCase):
    def test_every_tool_and_daemon_says_the_version(self):
        from vss.cli.admin import Options as Admin
        from vss.conformance.cli import Options as Conformance
        from vss.cu.ctl import Options as Ctl
        from vss.pu.agent import Options as Pu
        from vss.tap.cms import Options as Cms
        from vss.tap.node import Options as Node

        for cls, program in ((Ctl, "vssctl"), (Admin, "vss-admin"), (Pu, "vss-pu"),
                             (Conformance, "vss-conformance"), (Node, "vss-node"),
                             (Cms, "vss-cms")):
            self.assertTrue(issubclass(cls, VersionOption), cls)
            out = io.StringIO()
            self.patch(sys, "stdout", out)
            with self.assertRaises(SystemExit) as e:
                cls().parseOptions(["--version"])
            self.assertEqual(e.exception.code, 0)
            self.assertEqual(out.getvalue(), f"{program} (vss) {__version__}\n")
        self.assertEqual(version_line("x"), f"x (vss) {__version__}")

    def test_usage_errors_still_come_first_for_bad_options(self):
        from vss.cu.ctl import Options as Ctl

        with self.assertRaises(usage.UsageError):
            Ctl().parseOptions(["--no-such-option"])


class CmsFailoverMetricsTests(unittest.TestCase):
    """vss_cms_devices_on_down_nodes and the re-homing counters, from CMS's own state."""

    def collect(self, homes, up, registry, counters):
        cms = type("Cms", (), {})()
        cms.sessions = {n: type("S", (), {"applied_seq": 0})() for n in up}
        cms.homes, cms.online, cms.counters = homes, set(), {
            "changes": 0, "routed": 0, "notified": 0, "sync_changes": 0,
            "stale_changes": 0, **counters}
        daemon = type("Daemon", (), {})()
        daemon.cms, daemon.election, daemon.admin_api = cms, None, None
        daemon.store = type("Store", (), {"call_latency": {}})()
        collector = CmsCollector(daemon)
        collector.registry_nodes = set(registry)
        return {m.name: m.samples[0].value for m in collector.collect() if m.samples}

    def test_devices_of_a_down_node_are_counted_until_they_move(self):
        homes = {"c1": "a", "c2": "a", "c3": "b", "c4": ""}
        got = self.collect(homes, up={"b"}, registry={"a", "b"}, counters={})
        self.assertEqual(got["vss_cms_devices_on_down_nodes"], 2)
        self.assertEqual(got["vss_cms_rehomed_devices"], 0)
        homes.update(c1="b", c2="b")
        got = self.collect(homes, up={"b"}, registry={"a", "b"},
                           counters={"rehomed": 2, "failed_back": 1})
        self.assertEqual(got["vss_cms_devices_on_down_nodes"], 0)
        self.assertEqual(got["vss_cms_rehomed_devices"], 2)
        self.assertEqual(got["vss_cms_failback_devices"], 1)
        self.assertEqual(self.collect(homes, up={"a", "b"}, registry={"a", "b"}, counters={})[
            "vss_cms_devices_on_down_nodes"], 0)
