"""
The central platform as one Twisted service: the database, CMS with its node listener,
MMS (the admin API) and MDP. Start-up: the data directory is made private (``vss.private``), the database is opened
and migrated (an SQLite file and its ``-wal``/``-shm`` 0600), CMS reads
the device homes, then the listeners open; ``ports.json`` in the data directory names
the bound ports.

With ``--standby`` (on by default with PostgreSQL) several such daemons share one
database: an ``Election`` (``vss.cms.standby``) makes one active; the others keep their
listeners open and answer ``NOT_ACTIVE`` (node links), 503 naming the active CMS (admin
API) and "standby" (``/readyz``) until they take over.
"""

import json
import os
import socket

from twisted.internet import defer, task
from twisted.logger import Logger

from vss import private
from vss.cms.admin_backend import StoreAdminBackend
from vss.cms.console import make_console_site
from vss.cms.operators import OperatorAccounts
from vss.cms.service import CMSConfig, CMSService
from vss.cms.standby import Election
from vss.cms.store import make_static_store
from vss.config import ConfigError, load_or_create_secret
from vss.ops.collectors import CmsCollector
from vss.ops.health import probe
from vss.ops.http import add_to, ops_resources
from vss.ops.metrics import Access, MetricsResource, make_registry
from vss.services import ListenService, StagedService, write_json_atomically
from vss.streamcreds.secret import credential_key
from vss.tls import (
    CertificateError,
    LinkTLS,
    listen_interface,
    plaintext_guard,
    split_endpoint,
)

#: seconds between two reads of who is active, by a standby
ACTIVE_REFRESH = 2.0
#: devices named in the status's ``online`` list at most
ONLINE_LISTED = 20000
PROBE_TIMEOUT = 2.0  # seconds the database has to answer a readiness check


class CmsDaemon(StagedService):
    log = Logger()
    program = "vss-cms"

    def __init__(self, options, reactor):
        super().__init__(reactor)
        self.options = options
        self.data_dir = options["data-dir"]
        private.private_dir(self.data_dir, self.log)
        private.check_secret_files(
            [options["cluster-secret-file"], options.get("tls-key")]
            + [key for name in ("node-listen", "admin-listen", "manhole")
               for key in private.endpoint_key_files(options.get(name))], self.log)
        self.cluster_secret = load_or_create_secret(options["cluster-secret-file"])
        self.store = make_static_store(options["db"], reactor=reactor)
        self.cms = CMSService(
            CMSConfig(cms_id=options["cms-id"], cluster_secret=self.cluster_secret,
                      heartbeat_interval=options["heartbeat"],
                      node_timeout=float(options.get("node-timeout", 6)),
                      rehome_after=float(options.get("rehome-after", 1)),
                      rehome_batch=int(options.get("rehome-batch", 2000)),
                      failback=bool(options.get("failback")),
                      failback_after=float(options.get("failback-after", 30)),
                      event_retention_days=int(options.get("event-retention-days", 30))),
            self.store, reactor)
        self.election = None  # with --standby: which CMS of the database is active
        self._refresher = None
        self.active_cms = None  # with --standby: who took office last (from the DB)
        if options.get("standby"):
            # local import: optional dependency, psycopg2, only with a PostgreSQL database
            from vss.cms.store.postgres import PostgresActiveLock

            self.cms.stand_by("starting: not active yet")
            self.store.step_down()  # a standby writes nothing
            self.election = Election(
                PostgresActiveLock(self.store.dsn, reactor, schema=self.store.schema),
                reactor, self.take_office, self.stand_by)
            self.election.setName("election")
            self.election.setServiceParent(self)  # stopped last: the lock goes last
        self.cms.setName("cms")
        self.cms.setServiceParent(self)
        nodes = self.cms.factory()
        self.link_tls = None  # mutual TLS of the node links
        if options.get("tls-cert"):
            try:
                self.link_tls = LinkTLS(options["tls-cert"], options["tls-key"],
                                        options["tls-ca"]).load()
            except CertificateError as e:
                raise ConfigError(str(e)) from None
            nodes = self.link_tls.listen_factory(nodes)
        else:
            nodes = plaintext_guard(nodes, "node", bool(options.get("allow-plaintext-links")),
                                    self.log)
        ListenService("node", options["node-listen"], nodes, reactor).setServiceParent(self)
        self.admin = self._admin_backend()
        self.admin_api = None
        self.metrics = None
        if self.admin is not None:
            site = self.make_admin_site(self.admin)
            self.admin_api = site.resource.api
            self._add_ops(site.resource, options, reactor)
            ListenService("admin", options["admin-listen"], site, reactor) \
                .setServiceParent(self)
        if options.get("manhole"):
            # local import: twisted.conch (SSH) loads only with --manhole
            from vss.manhole import manhole_service

            manhole_service(options["manhole"], options["manhole-keys"], self.namespace(),
                            reactor).setServiceParent(self)

    def _add_ops(self, root, options, reactor):
        """``/healthz``, ``/readyz`` and ``/metrics`` beside the admin API (``vss.ops``)."""

        if options.get("metrics", True):
            collector = CmsCollector(self)
            access = Access.from_options(options.get("metrics-allow"),
                                         options.get("metrics-token-file"))
            self.metrics = MetricsResource(make_registry(collector), access,
                                           refresh=collector.refresh)
        add_to(root, ops_resources(self.readiness, reactor, self.metrics))

    def readiness(self):
        """Why CMS cannot serve now, a Deferred list of short reasons (empty: ready):
        still starting, a listener not listening, the database not answering."""
        reasons = [] if self.started.called else ["starting"]
        if self.election is not None and not self.election.active:
            reasons.append("standby")  # who is active: the log, and the admin API
        for s in self:
            if isinstance(s, ListenService) and s.listening is None:
                reasons.append(f"listener {s.name}: not listening")
        d = probe(defer.maybeDeferred(self.store.head_seq), self.reactor, PROBE_TIMEOUT,
                  "database: not reachable")
        return d.addCallback(lambda more: reasons + more)

    # -- standby (vss.cms.standby)

    def addresses(self):
        """Where this CMS is reached: what a standby names to nodes and admins."""
        host = self.options.get("advertise-host") or listen_interface(
            self.options["node-listen"]) or ""
        if host in ("", "0.0.0.0", "::"):  # noqa: S104 - read, not bound
            host = socket.getfqdn()
        ports = self.listeners()
        out = {}
        if ports.get("node"):
            out["node"] = f"tcp:{host}:{ports['node']}"
        if ports.get("admin"):
            scheme = "https" if split_endpoint(self.options["admin-listen"])[0] == "ssl" \
                else "http"
            shown = f"[{host}]" if ":" in host else host
            out["admin"] = f"{scheme}://{shown}:{ports['admin']}"
        return out

    def not_active(self):
        """For the admin API: None when active, else (why, the active's admin URL)."""
        if self.election is None or self.election.active:
            return None
        return self.standby_note(), (self.active_cms or {}).get("admin") or ""

    @defer.inlineCallbacks
    def take_office(self):
        """This CMS won the lock: fence the database's writes with a new epoch, reload
        what CMS keeps in memory, serve."""
        epoch = yield self.store.take_office(self.options["cms-id"], self.addresses())
        yield self.cms.load()
        self.cms.activate()
        self.active_cms = None
        self.log.info("CMS {cms} is active (epoch {epoch})", cms=self.options["cms-id"],
                      epoch=epoch)

    def stand_by(self, reason):
        """The lock is lost: stop acting as active at once."""
        self.store.step_down()
        self.cms.stand_by(self.standby_note(reason))
        self.refresh_active()

    def standby_note(self, reason=None):
        """Why this CMS is not active and who is, as far as it knows."""
        reason = reason or (self.election.reason if self.election else "")
        active = self.active_cms
        if active and active.get("cms_id") != self.options["cms-id"]:
            return (f"{reason}; the active CMS is {active.get('cms_id')} "
                    f"(nodes: {active.get('node')}, admin API: {active.get('admin')})")
        return reason

    def refresh_active(self):
        """Read who is active from the database (a standby names it)."""
        if self.election is None or self.election.active:
            return defer.succeed(None)

        def got(active):
            self.active_cms = active
            if not self.election.active:
                self.cms.standby_note = self.standby_note()

        return self.store.active_cms().addCallbacks(got, lambda _: None)

    def _admin_backend(self):
        # the console's operators and their sessions; the admin API with the console
        self.accounts = OperatorAccounts(self.store, self.reactor)
        self.make_admin_site = lambda backend: make_console_site(backend, self.accounts)

        return StoreAdminBackend(self.store, publish=self.cms.publish,
                                 assign_home_node=self.cms.assign_home_node,
                                 status=self.status, not_active=self.not_active,
                                 credential_key=credential_key(self.cluster_secret))

    @defer.inlineCallbacks
    def status(self):
        """Operations status: every node of the registry with what CMS sees live (link,
        load, applied sequence), devices homed and online per node, CMS counters."""
        cms = self.cms
        homed = {}
        for home in cms.homes.values():
            homed[home] = homed.get(home, 0) + 1
        online = cms.online_per_node()
        nodes = []
        for node in (yield self.store.list_nodes()):
            live = cms.sessions.get(node["node_id"])
            nodes.append({
                "node_id": node["node_id"],
                "state": "up" if live is not None else "down",
                "signalling": node["signalling"],
                "media": node["media"],
                "capacity": node["capacity"],
                "load": live.load if live is not None else {},
                "devices": homed.get(node["node_id"], 0),
                "devices_online": online.get(node["node_id"], 0),
                "applied_seq": live.applied_seq if live is not None else node["applied_seq"],
                "last_seen": node["last_seen"],
                # MDP's view: each streaming server, the one it would choose marked
                "servers": cms.mdp.view(node["node_id"]) if live is not None else [],
            })
        head = yield self.store.head_seq()
        return {"cms_id": cms.config.cms_id, "nodes": nodes,
                "nodes_up": sum(1 for n in nodes if n["state"] == "up"),
                "devices": len(cms.homes), "devices_unassigned": homed.get("", 0),
                "devices_online": len(cms.online), "head_seq": head,
                # the devices online now (the console shows each device's state)
                "online": sorted(cms.online)[:ONLINE_LISTED], **cms.counters}

    def namespace(self):
        return {"cms": self.cms, "store": self.store, "mdp": self.cms.mdp,
                "nodes": self.cms.sessions, "daemon": self, "election": self.election}

    def prepare(self):
        d = self.store.open()
        if self.election is None:
            d.addCallback(lambda _: self.cms.load())
        else:  # alone on the database: active before it listens
            d.addCallback(lambda _: self.election.first_round())
        return d

    def on_ready(self):
        if self.election is not None and self.election.active:
            self.store.announce(self.options["cms-id"], self.addresses()).addErrback(
                lambda f: self.log.warn("cannot record this CMS's addresses: {error}",
                                        error=f.getErrorMessage()))
        if self.election is not None:
            self._refresher = task.LoopingCall(self.refresh_active)
            self._refresher.clock = self.reactor
            self._refresher.start(ACTIVE_REFRESH, now=True)
        ports = self.listeners()
        write_json_atomically(os.path.join(self.data_dir, "ports.json"), ports)
        self.log.info("central platform {cms} ready: {ports}", cms=self.options["cms-id"],
                      ports=json.dumps(ports, sort_keys=True))

    def stopService(self):
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        d = super().stopService()
        return defer.maybeDeferred(lambda: d).addBoth(lambda _: self.store.close())
