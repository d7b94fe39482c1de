"""
The central platform as one Twisted service: the database, CMS with its node listener,
MMS (the admin API) and MDP. Start-up: the data directory is made private (``vss.private``), the database is opened
and migrated (an SQLite file and its ``-wal``/``-shm`` 0600), CMS reads
the device homes, then the listeners open; ``ports.json`` in the data directory names
the bound ports.
"""

import json
import os

from twisted.internet import defer
from twisted.logger import Logger

from vss import private
from vss.cms.service import CMSConfig, CMSService
from vss.cms.store import make_static_store
from vss.config import ConfigError, load_or_create_secret
from vss.ops.health import probe
from vss.tap.common import ListenService, StagedService, write_json_atomically
from vss.tls import CertificateError, LinkTLS, plaintext_guard

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
                      event_retention_days=int(options.get("event-retention-days", 30))),
            self.store, reactor)
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
            from vss.manhole import manhole_service

            manhole_service(options["manhole"], options["manhole-keys"], self.namespace(),
                            reactor).setServiceParent(self)

    def _add_ops(self, root, options, reactor):
        """``/healthz``, ``/readyz`` and ``/metrics`` beside the admin API (``vss.ops``)."""
        from vss.ops.collectors import CmsCollector
        from vss.ops.http import add_to, ops_resources
        from vss.ops.metrics import Access, MetricsResource, make_registry

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
        for s in self:
            if isinstance(s, ListenService) and s.listening is None:
                reasons.append(f"listener {s.name}: not listening")
        d = probe(defer.maybeDeferred(self.store.head_seq), self.reactor, PROBE_TIMEOUT,
                  "database: not reachable")
        return d.addCallback(lambda more: reasons + more)

    def _admin_backend(self):
        try:
            from vss.cms.admin_backend import StoreAdminBackend
            from vss.cms.console import make_console_site
        except ImportError:
            return None
        from vss.cms.operators import OperatorAccounts
        from vss.streamcreds.secret import credential_key

        # the console's operators and their sessions; the admin API with the console
        self.accounts = OperatorAccounts(self.store, self.reactor)
        self.make_admin_site = lambda backend: make_console_site(backend, self.accounts)

        return StoreAdminBackend(self.store, publish=self.cms.publish,
                                 assign_home_node=self.cms.assign_home_node,
                                 status=self.status,
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
                "nodes": self.cms.sessions, "daemon": self}

    def prepare(self):
        d = self.store.open()
        d.addCallback(lambda _: self.cms.load())
        return d

    def on_ready(self):
        ports = self.listeners()
        write_json_atomically(os.path.join(self.data_dir, "ports.json"), ports)
        self.log.info("central platform {cms} ready: {ports}", cms=self.options["cms-id"],
                      ports=json.dumps(ports, sort_keys=True))

    def stopService(self):
        d = super().stopService()
        return defer.maybeDeferred(lambda: d).addBoth(lambda _: self.store.close())
