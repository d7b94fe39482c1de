"""
A VSS node as one Twisted service: the RGM (signalling core and in-memory database),
the listeners of the PU and CU links, the link to the central platform, and (when
present) the CDN module with its streaming server.

Start-up order: the data directory is made private (0700, its files 0600, each change
logged: ``vss.private``) and so are the secret files the options name, the node's secret
is read from the data directory, the in-memory database is loaded (from Redis when
chosen), then the listeners open. ``ports.json`` in the
data directory names the bound ports (useful with port 0); ``status.json`` there holds
the RGM's and the central link's counters, rewritten every ``STATUS_INTERVAL`` seconds
(read-only operations view, e.g. for benchmarks and end-to-end tests).
"""

import json
import os

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from vss import private
from vss.cdn.service import CDNModule, CDNRecording
from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
from vss.config import ConfigError, cms_addresses, load_or_create_secret, read_secret
from vss.events.hub import EventHub
from vss.events.report import EventReporter
from vss.events.rules import EventRules
from vss.ops.collectors import NodeCollector
from vss.ops.health import probe
from vss.ops.http import node_site, ops_resources
from vss.ops.metrics import Access, MetricsResource, make_registry
from vss.protocols.codes import ResultCode
from vss.protocols.messages import KV, Role, Severity
from vss.recording.archive import (
    DEFAULT_RETENTION_INTERVAL,
    NodeArchive,
    RetentionService,
    playback_in_use,
)
from vss.recording.export import Exporter, ExportResource, ExportTokens
from vss.recording.playback import PlaybackService
from vss.recording.recorder import Recorder
from vss.recording.settings import DEFAULT_RETENTION_DAYS, RecordSettingsSync
from vss.recording.tasks import Capacity, RecordingManager
from vss.rgm.audit import AuditReporter
from vss.rgm.cmslink import CmsLink
from vss.rgm.expiry import GrantExpiry
from vss.rgm.localcentral import MemoryCentral
from vss.rgm.peers import PeerServer
from vss.rgm.routes import NoRouteCache
from vss.rgm.service import RGMConfig, RGMService
from vss.rtsp.server import RTSPServerFactory, RTSPServerService
from vss.services import ListenService, StagedService, write_json_atomically
from vss.ss.pool import SSPool
from vss.store import make_store
from vss.streamcreds.node import StreamCredentials
from vss.streamcreds.secret import credential_key
from vss.tls import (
    CertificateError,
    LinkTLS,
    client_host_port,
    is_loopback,
    plaintext_guard,
    split_endpoint,
)
from vss.web.live import GOP_BYTES
from vss.web.site import WebClient

STATUS_INTERVAL = 1.0
#: the accept queue of the PU listener (the kernel caps it at net.core.somaxconn)
PU_BACKLOG = 1024


def with_backlog(description, backlog):
    """A ``tcp:``/``ssl:`` listen endpoint string with ``backlog`` unless it names one."""
    if description.split(":", 1)[0] in ("tcp", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={backlog}"
    return description
PROBE_TIMEOUT = 2.0  # seconds the store has to answer a readiness check


def _secret_files(settings):
    """The files holding secrets or verifiers that the node's options name."""
    files = [settings.cluster_secret_file, settings.store_key, settings.store_password_file,
             settings.static, settings.tls_key]
    for endpoint in (settings.pu_listen, settings.cu_listen, settings.rtsp_listen,
                     settings.node_listen, settings.http_listen, settings.manhole,
                     *cms_addresses(settings.cms)):
        files.extend(private.endpoint_key_files(endpoint))
    return files


class NodeService(StagedService):
    log = Logger()
    program = "vss-node"

    def __init__(self, settings, reactor):
        super().__init__(reactor)
        self.settings = settings
        private.private_dir(settings.data_dir, self.log)
        private.check_secret_files(_secret_files(settings), self.log)
        self.secret = load_or_create_secret(os.path.join(settings.data_dir, "node.secret"))
        # mutual TLS of the links to CMS, between nodes and to the SS workers
        self.link_tls = None
        if settings.tls_cert:
            try:
                self.link_tls = LinkTLS(settings.tls_cert, settings.tls_key,
                                        settings.tls_ca).load()
            except CertificateError as e:
                raise ConfigError(str(e)) from None
        self.store = make_store(settings.store, settings.node_id, reactor=reactor,
                                ca_file=settings.store_ca, cert_file=settings.store_cert,
                                key_file=settings.store_key,
                                password_file=settings.store_password_file)
        self.central = self._make_central()
        # the live views, playbacks and exports users start here, reported to CMS
        self.audit = AuditReporter(self.central, reactor)
        self.audit.setServiceParent(self)
        self.rgm = RGMService(
            RGMConfig(
                node_id=settings.node_id,
                node_secret=self.secret,
                keepalive_interval=settings.keepalive,
                request_timeout=settings.request_timeout,
                metrics=settings.metrics,
                login_rate=settings.login_rate,
            ),
            self.store,
            self.central,
            reactor,
            pu_address=self.pu_address,
        )
        self.rgm.setName("rgm")
        self.rgm.setServiceParent(self)
        # events and alarms: numbered here, pushed to the CUs that subscribed (here and on
        # other nodes), stored by CMS
        self.event_reporter = EventReporter(self.central, reactor)
        self.event_reporter.setServiceParent(self)
        self.events = EventHub(settings.node_id, self.store, self.central, reactor,
                               reporter=self.event_reporter,
                               peers=None if settings.static else self.central.peers)
        self.events.setServiceParent(self)
        self.rgm.events = self.events
        if not settings.static:
            # a camera newly granted or moved: the hub follows the nodes it may need
            self.central.access_listeners.append(self.events.refollow)
            self.central.device_listeners.append(self.events.refollow)
            # a wall's tile whose device its account may no longer view is cleared
            self.central.access_listeners.append(self.rgm.walls.access_changed)
            # the up nodes' PU addresses, passed on to this node's PUs
            self.central.nodes_listeners.append(self.rgm.send_node_list)
            # a HOME_QUERY held for a PU whose home died is answered once it moved
            self.central.device_listeners.append(self.rgm.home_changed)
        # grants with an expiry stop applying at that time, on this node's clock
        self.grant_expiry = GrantExpiry(self.store, reactor, self._grants_expired)
        self.grant_expiry.setServiceParent(self)
        # a storm of PUs whose node died connects here at once: a deep accept queue
        self.pu_listener = ListenService("pu", with_backlog(settings.pu_listen, PU_BACKLOG),
                                         self.rgm.factory(Role.PU), reactor)
        self.pu_listener.setServiceParent(self)
        ListenService("cu", settings.cu_listen, self.rgm.factory(Role.CU), reactor).setServiceParent(self)
        if not settings.static:
            self.central.rgm = self.rgm
            self.peer_server = PeerServer(self.rgm, self.cluster_secret, reactor)
            peers = self.peer_server.factory()
            if self.link_tls is not None:
                peers = self.link_tls.listen_factory(peers)
            else:
                peers = plaintext_guard(peers, "node-to-node", settings.allow_plaintext_links,
                                        self.log)
            self.node_listener = ListenService("node", settings.node_listen, peers, reactor)
            self.node_listener.setServiceParent(self)
            self.central.setServiceParent(self)
        self._make_media(settings, reactor)
        if settings.manhole:
            # local import: twisted.conch (SSH) loads only with --manhole
            from vss.manhole import manhole_service

            manhole_service(settings.manhole, settings.manhole_keys, self.namespace(),
                            reactor).setServiceParent(self)

    def _make_media(self, settings, reactor):
        """The streaming server (SS) and the CDN module, its only controller."""

        self.issuer = TokenIssuer(self.secret, clock=reactor)

        # the SS keeps each stream's last GOP for the browsers' packagers: a browser's
        # live view starts at once, even the first one of a stream
        self.rtsp = RTSPServerFactory(TokenAuthorizer(self.issuer), reactor=reactor,
                                      max_lag=settings.live_max_lag, gop_keep=GOP_BYTES)
        interface = _interface(settings.rtsp_listen)
        self.rtsp_listener = RTSPServerService(settings.rtsp_listen, self.rtsp, reactor,
                                               udp_interface=interface)
        self.rtsp_listener.setServiceParent(self)
        self.ss_pool = self._make_ss_pool(settings, reactor)
        self.cdn = CDNModule(self.rgm, self.rtsp, self.issuer, media_base="", clock=reactor,
                             reactor=reactor, audit=self.audit, pool=self.ss_pool)
        if self.link_tls is not None:
            # another node's rtsps:// SS: its certificate from the cluster CA
            self.cdn.node_tls = lambda host: self.link_tls.client_options(hostname=host)
        self.cdn.setServiceParent(self)
        self.rgm.cdn = self.cdn
        # The SS's recorder (segment files and their catalogue) behind the CDN module's
        # recording interface, driven by the RGM's recording task manager (split, stack,
        # queue).

        self.recorder = Recorder(self.rtsp, self.issuer, settings.data_dir, reactor, reactor,
                                 media_base="", mode=settings.record_in)
        _MediaBase(self).setServiceParent(self)

        self.cdn.playback = PlaybackService(self.cdn, self.recorder.catalogue, settings.data_dir,
                                            reactor)
        capacity = Capacity(max_streams=settings.record_max_streams,
                            max_write_mbps=settings.record_max_write_mbps)
        self.recordings = RecordingManager(reactor, CDNRecording(self.cdn, self.recorder),
                                           settings.data_dir, capacity)
        self.recordings.setServiceParent(self)
        self.rgm.recordings = self.recordings
        # events: a rule of a channel starts an event recording; a recording that fails
        # and a full disk are events of the device
        self.events.rules = EventRules(self.recordings)
        self.recordings.failure_listeners.append(self._recording_failed)
        self.recorder.disk_full_listeners.append(self._disk_full)
        # The browser client on the HTTP listener: the page, the CU link and the media
        # over WebSockets (vss.web).

        self.web = WebClient(self.rtsp, self.rgm.factory(Role.CU), reactor)
        self.web.setServiceParent(self)
        # Settings from CMS, the catalogue across nodes, HTTP export and retention.

        self._make_archive(settings, reactor)
        self._make_http(settings, reactor)
        self.stream_credentials = None
        if not settings.static:  # the credentials' sealing key comes from the cluster
            self._make_stream_credentials(reactor)

    def _make_archive(self, settings, reactor):
        """The archive (RECORD_QUERY across nodes), the record settings sync, retention
        and the export downloads (after the recorder and the recording manager)."""
        self.export_tokens = ExportTokens(self.secret, reactor)
        self.exporter = Exporter(self.recorder.catalogue, settings.data_dir, reactor)

        # an ssl: listener (the node's HTTP listener, self.http_listener) gives https URLs
        listen = getattr(settings, "http_listen", "") or ""
        scheme = "https" if listen.partition(":")[0].lower() == "ssl" else "http"

        def http_base():
            port = self.http_listener.port if self.http_listener is not None else None
            return f"{scheme}://{settings.media_host}:{port}" if port else None

        self.archive = NodeArchive(settings.node_id, self.recorder.catalogue, self.central,
                                   self.store, self.export_tokens, http_base,
                                   open_segments=self.recorder.open_segments, clock=reactor)
        self.rgm.archive = self.archive
        self.archive.pu_links = self.rgm.pu_links
        quota_mb = getattr(settings, "quota_mb", 0)
        self.record_settings = RecordSettingsSync(
            settings.node_id, self.store, self.central, self.recordings,
            default_days=getattr(settings, "retention_days", DEFAULT_RETENTION_DAYS),
            quota_bytes=quota_mb * 1024 * 1024 if quota_mb else None)
        self.central.device_listeners.append(self.record_settings.device_changed)
        self.central.connected_listeners.append(self.record_settings.refresh_all)
        self.central.local_recordings = self.archive.local
        in_use = [self.exporter.in_use, lambda: playback_in_use(self.cdn, self.recorder.catalogue)]
        self.retention = RetentionService(
            self.recorder, self.record_settings, reactor,
            getattr(settings, "retention_interval", DEFAULT_RETENTION_INTERVAL), in_use)
        self.retention.housekeeping.append(self.exporter.sweep)
        self.retention.setServiceParent(self)

    def _make_ss_pool(self, settings, reactor):
        """The streaming server workers (``--ss-workers``): child processes, each on its
        own RTSP port, driven by the CDN module over the SS control link (vss.ss)."""
        if not settings.ss_workers:
            return None
        interface = _interface(settings.rtsp_listen)
        first = settings.ss_first_port
        if first is None:  # after the node's own SS: 7555, 7556, ... (any, in tests)
            port = _port(settings.rtsp_listen)
            first = port + 1 if port else 0

        def worker_listen(i):
            # a deep accept queue: thousands of viewers may connect within a second
            return f"tcp:{first + i - 1 if first else 0}:interface={interface}:backlog=1024"

        pool = SSPool(settings.node_id, self.secret, self.issuer, reactor,
                      workers=settings.ss_workers, listen=settings.ss_control_listen,
                      worker_listen=worker_listen, media_host=settings.media_host,
                      data_dir=os.path.abspath(settings.data_dir),
                      live_max_lag=settings.live_max_lag,
                      stream_viewers=settings.ss_stream_viewers,
                      stream_kbps=settings.ss_stream_kbps, link_tls=self.link_tls,
                      allow_plaintext=settings.allow_plaintext_links)
        pool.setServiceParent(self)
        return pool

    def _make_stream_credentials(self, reactor):
        """Long-lived, revocable stream credentials for third-party players: checked by
        the SS, made and revoked by CUs, revalidated after every change of access."""

        creds = StreamCredentials(credential_key(self.cluster_secret), self.store,
                                  self.central, self.cdn, reactor, audit=self.audit)
        creds.setServiceParent(self)
        self.rtsp.use_credentials(creds)
        self.rgm.credentials = creds
        self.central.access_listeners.append(creds.revalidate)
        self.stream_credentials = creds

    def _grants_expired(self, keys):
        """Grants stopped applying: the stream credentials they allowed stop playing (as
        when an operator removes a grant); a wall's tile it allowed is cleared."""
        if self.stream_credentials is not None:
            self.stream_credentials.revalidate()
        self.rgm.walls.access_changed()

    def _make_http(self, settings, reactor):
        """The node's HTTP listener (``--http-listen``): ``/healthz``, ``/readyz`` and
        ``/metrics`` (``vss.ops``), then the browser client (``vss.web``), then the
        export downloads."""

        self.http_listener = None
        self.metrics = None
        if settings.metrics:
            access = Access.from_options(settings.metrics_allow, settings.metrics_token_file)
            self.metrics = MetricsResource(make_registry(NodeCollector(self)), access)
        if not settings.http_listen:
            return
        fallback = ExportResource(self.export_tokens, self.exporter, self.audit)
        site = node_site(ops_resources(self.readiness, reactor, self.metrics),
                         self.web.resource(fallback))  # the browser client, then the export
        self.http_listener = ListenService("http", settings.http_listen, site, reactor)
        self.http_listener.setServiceParent(self)

    def readiness(self):
        """Why the node cannot serve now, a Deferred list of short reasons (empty:
        ready): still starting, a listener not listening, not registered with CMS (or
        still catching up with it), the in-memory database's backend not answering."""
        reasons = [] if self.started.called else ["starting"]
        for s in self:
            if isinstance(s, ListenService) and s.listening is None:
                reasons.append(f"listener {s.name}: not listening")
        if self.rtsp_listener.port is None:
            reasons.append("listener rtsp: not listening")
        if not self.settings.static:
            if self.central.link is None:
                reasons.append("cms: not connected")
            elif self.central.catching_up:
                reasons.append("cms: catching up")
        d = probe(defer.maybeDeferred(self.store.ping), self.reactor, PROBE_TIMEOUT,
                  "store: not reachable")
        return d.addCallback(lambda more: reasons + more)

    def rtsp_port(self):
        port = self.rtsp_listener.port
        return port.getHost().port if port is not None else None

    def namespace(self):
        """What the manhole shows an operator."""
        return {"node": self, "rgm": self.rgm, "store": self.store, "central": self.central,
                "sessions": self.rgm.links, "pus": self.rgm.pu_links,
                "credentials": getattr(self, "stream_credentials", None)}

    def _recording_failed(self, key, error):
        device_id, channel, stream = key
        self.events.raise_event(device_id, channel, "record-failed", severity=Severity.WARNING,
                                items=[KV(key="stream", value="sub" if stream else "main"),
                                       KV(key="error", value=error[:256])])

    def _disk_full(self, device_id, channel, message):
        self.events.raise_event(device_id, channel, "disk-full", severity=Severity.CRITICAL,
                                items=[KV(key="error", value=message[:256])])

    def _make_central(self):
        if self.settings.static:
            central = MemoryCentral.from_file(self.settings.static)
            central.clock = self.reactor
            return central

        self.cluster_secret = read_secret(self.settings.cluster_secret_file,
                                          "--cluster-secret-file")
        settings = self.settings
        endpoint = []  # every CMS of the site: the link moves to the active one
        for address in cms_addresses(settings.cms):
            host, port = client_host_port(address)
            if self.link_tls is not None:
                # CMS's certificate must name the host nodes reach it by
                address = self.link_tls.client_endpoint(self.reactor, host, port,
                                                         hostname=host)
            elif not is_loopback(host):
                self.log.warn("the link to CMS at {host} is plaintext "
                              "(--allow-plaintext-links): the cluster's signalling is "
                              "readable on the network", host=host)
            endpoint.append(address)
        # With the memory store nothing survives the process: the node keeps its copy of
        # the static data in its data directory too (vss.rgm.localcopy).
        link = CmsLink(settings.node_id, endpoint, self.cluster_secret, self.store,
                       self.reactor, data_dir=settings.data_dir, advertise=self.advertise,
                       local_copy=self.store.name == "memory", link_tls=self.link_tls,
                       allow_plaintext=settings.allow_plaintext_links,
                       cms_names=cms_addresses(settings.cms), pu_address=self.pu_address)
        if not self.settings.route_cache:
            link.route_cache = NoRouteCache()
        return link

    def pu_address(self):
        """The client endpoint PUs reach this node's PU listener at (named to PUs of
        other nodes, which come here when they lose theirs), or '' before it listens."""
        listener = self.pu_listener
        if not listener.port:
            return ""
        kind = "tls" if self.settings.pu_listen.startswith("ssl:") else "tcp"
        return f"{kind}:{self.settings.advertise_host}:{listener.port}"

    def advertise(self):
        """(signalling endpoint, media endpoint, capacity) this node tells CMS."""
        port = self.node_listener.port
        rtsp = self.rtsp_port()
        media = f"{rtsp_scheme(self.settings)}://{self.settings.media_host}:{rtsp}" \
            if rtsp else ""
        kind = "tls" if self.link_tls is not None else "tcp"
        return f"{kind}:{self.settings.advertise_host}:{port}", media, 0

    def prepare(self):
        d = defer.maybeDeferred(self.store.load)
        d.addCallback(lambda _: self.recorder.open())
        if self.settings.static:
            self.central.nodes[self.settings.node_id] = self.rgm
            d.addCallback(lambda _: self._seed_from_static())
        else:
            d.addCallback(lambda _: self.central.restore())
        return d

    def _seed_from_static(self):
        """A standalone node holds every record of its static file."""
        for record in self.central.devices.values():
            if record.home_node in ("", self.settings.node_id):
                self.store.put_device(record)
        for record in self.central.users.values():
            self.store.put_user(record)
        for record in self.central.grants.values():
            self.store.put_grant(record)

    def listeners(self):
        ports = super().listeners()
        if self.rtsp_port():
            ports["rtsp"] = self.rtsp_port()
        return ports

    def on_ready(self):
        ports = self.listeners()
        write_json_atomically(os.path.join(self.settings.data_dir, "ports.json"), ports)
        self.log.info("node {node} ready: {ports}", node=self.settings.node_id,
                      ports=json.dumps(ports, sort_keys=True))
        self._status_writer = task.LoopingCall(self.write_status)
        self._status_writer.clock = self.reactor
        self._status_writer.start(STATUS_INTERVAL, now=True).addErrback(
            lambda f: self.log.failure("status.json not written", f))

    def status(self):
        return {"node_id": self.settings.node_id, "rgm": self.rgm.status(),
                "central": self.central.status(),
                "events": {**self.events.status(), "report": self.event_reporter.status()}}

    def write_status(self):
        write_json_atomically(os.path.join(self.settings.data_dir, "status.json"),
                              self.status())

    def stopService(self):
        writer = getattr(self, "_status_writer", None)
        if writer is not None and writer.running:
            writer.stop()

        for link in list(getattr(getattr(self, "peer_server", None), "links", ())):
            link.close(ResultCode.SESSION_CLOSED, "the node stopped")  # peers ask CMS anew
        d = super().stopService()
        return defer.gatherResults([defer.maybeDeferred(lambda: d),
                                    defer.maybeDeferred(self.recorder.close),
                                    defer.maybeDeferred(self.store.close)])


class _MediaBase(service.Service):
    """Started right after the streaming server: tells the CDN module and the recorder
    the SS's address (its port is known only once it listens; port 0 in tests)."""

    def __init__(self, node):
        self.node = node

    def startService(self):
        super().startService()
        port = self.node.rtsp_port()
        scheme = rtsp_scheme(self.node.settings)
        self.node.cdn.media_base = f"{scheme}://{self.node.settings.media_host}:{port}"
        # The recorder's children read the SS on this machine: by the listening
        # interface, loopback when it listens on every interface.
        local = _interface(self.node.settings.rtsp_listen)
        if local in ("0.0.0.0", "::", ""):
            local = "127.0.0.1"
        self.node.recorder.media_base = f"{scheme}://{local}:{port}"


def rtsp_scheme(settings):
    """rtsps when the streaming server listens with TLS (an ``ssl:`` endpoint)."""
    return "rtsps" if split_endpoint(settings.rtsp_listen)[0] == "ssl" else "rtsp"


def _port(description):
    """The port of a ``tcp:PORT:...`` endpoint string (0 when not a number)."""
    parts = description.split(":")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _interface(description):
    for part in description.split(":"):
        if part.startswith("interface="):
            return part.split("=", 1)[1]
    return "0.0.0.0"


__all__ = ["NodeService", "ConfigError"]
