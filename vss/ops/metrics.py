"""
Prometheus metrics, off the hot paths.

The parts of a daemon count with plain integers (``rgm.counters["relayed"] += 1``, a
reader's ``bytes``) and latencies with ``Histogram``: a plain list of bucket counts that
the hot path bumps with one ``bisect_left`` and two additions, no lock and no call into
a metrics library. A collector (``vss.ops.collectors``) reads all of it when Prometheus
scrapes, on the reactor thread, and hands ``prometheus_client`` the families to write
in the text (or OpenMetrics) exposition format.

``prometheus_client.twisted.MetricsResource`` is not used: it renders in a thread pool,
where reading the reactor's state would race with it. ``MetricsResource`` here renders
on the reactor thread, after an optional asynchronous ``refresh`` (CMS reads its node
registry from the database first).

Who may scrape (``Access``): by default the loopback addresses only; ``--metrics-allow``
names other networks, and ``--metrics-token-file`` (a file only its owner may read)
adds a bearer token that every scrape must carry. Refused: 403 (address) or 401 (token),
with nothing else in the answer. ``/healthz`` and ``/readyz`` are not behind this: they
say nothing beyond ready or not and why.
"""

import hmac
import ipaddress
import os
import stat

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.logger import Logger
from twisted.web import resource, server

from vss.ops.histogram import LATENCY_BOUNDS, Histogram  # noqa: F401 - re-exported

log = Logger()

DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")
MIN_TOKEN = 16


def histogram_family(name, documentation, labelnames, items):
    """A ``HistogramMetricFamily`` of ``items``: ``[(label values, Histogram), ...]``."""
    family = HistogramMetricFamily(name, documentation, labels=labelnames)
    for values, hist in items:
        family.add_metric(list(values), hist.buckets(), hist.cells[-1])
    return family


def make_registry(*collectors):
    """A registry of our own per daemon (several run in one test process), holding only
    ``collectors`` (no process or platform collectors: a vss metric is ours)."""
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    return registry


# -- who may scrape


class AccessError(ValueError):
    """A bad --metrics-allow or --metrics-token-file; the message names it."""


def parse_networks(text):
    """``"127.0.0.0/8, ::1, 10.1.0.0/16"`` as a tuple of ``ip_network``; AccessError
    naming the bad entry."""
    out = []
    for part in str(text).replace(" ", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise AccessError(f"--metrics-allow: {part!r} is not an address or a network") \
                from None
    if not out:
        raise AccessError("--metrics-allow: no network given")
    return tuple(out)


def read_token_file(path):
    """The bearer token of ``path``: a file its owner only may read (mode 0600 or
    0400), holding at least 16 characters. AccessError naming what is wrong."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as e:
        raise AccessError(f"--metrics-token-file: cannot read {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AccessError(f"--metrics-token-file: {path} may be read by other users than "
                          f"its owner (mode {stat.S_IMODE(st.st_mode):o}): chmod 600 it")
    if len(token) < MIN_TOKEN or b"\n" in token or b" " in token:
        raise AccessError(f"--metrics-token-file: {path} must hold one token of at least "
                          f"{MIN_TOKEN} characters")
    return token


class Access:
    """Who may read ``/metrics``: a client address in ``networks`` (a connection over a
    UNIX socket always is), carrying ``Authorization: Bearer <token>`` when ``token``
    (bytes) is set."""

    def __init__(self, networks=None, token=None):
        self.networks = tuple(networks) if networks is not None \
            else parse_networks(",".join(DEFAULT_ALLOW))
        self.token = token

    @classmethod
    def from_options(cls, allow, token_file):
        """From the option values (``allow`` text, ``token_file`` path or empty)."""
        return cls(parse_networks(allow or ",".join(DEFAULT_ALLOW)),
                   read_token_file(token_file) if token_file else None)

    def allowed_address(self, address):
        if isinstance(address, UNIXAddress):
            return True
        host = getattr(address, "host", None)
        if host is None:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def refusal(self, request):
        """None when the request may read the metrics, else (status, message)."""
        if not self.allowed_address(request.getClientAddress()):
            return 403, "forbidden"
        if self.token is not None:
            scheme, _, given = (request.getHeader(b"authorization") or b"").strip() \
                .partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(),
                                                                        self.token):
                request.setHeader(b"www-authenticate", b'Bearer realm="vss-metrics"')
                return 401, "a valid bearer token is required"
        return None


class MetricsResource(resource.Resource):
    """``GET /metrics``: the registry in the format the scraper asks for (``Accept``),
    rendered on the reactor thread after ``refresh()`` (optional; a Deferred) fired."""

    isLeaf = True

    def __init__(self, registry, access, refresh=None):
        super().__init__()
        self.registry = registry
        self.access = access
        self.refresh = refresh
        self.scrapes = 0

    def render_GET(self, request):
        refused = self.access.refusal(request)
        if refused is not None:
            status, message = refused
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return (message + "\n").encode("utf-8")
        if self.refresh is None:
            return self._render(request)
        gone = []
        request.notifyFinish().addErrback(gone.append)
        d = defer.maybeDeferred(self.refresh)
        d.addErrback(lambda f: log.failure("metrics refresh failed; the last values are "
                                           "served", f))
        d.addCallback(lambda _: None if gone else self._finish(request))
        d.addErrback(lambda f: log.failure("metrics not served", f))
        return server.NOT_DONE_YET

    def _render(self, request):
        self.scrapes += 1
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else None)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return encoder(self.registry)

    def _finish(self, request):
        request.write(self._render(request))
        request.finish()
