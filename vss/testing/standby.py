"""
Two ``twistd vss-cms`` on one PostgreSQL database, a node that knows both, and a stream
of admin changes through the admin API while the active CMS is killed with SIGKILL:
the scenario of tests/test_cms_standby.py and ``bench/failover.py --cms``.

Each admin change grants user ``alice`` VIEW on a device of its own (``PUT /grants``),
so the database and the node's copy (``vssctl devices`` as alice lists exactly the
devices she may view) show any change that did not land. An answer 200 is the
acknowledgement: every acknowledged change must be in the database and on the node.
"""

import json
import os
import secrets
import signal
import time

from twisted.internet import defer, task
from twisted.web.client import Agent, readBody

from vss.cli.admin import Client, CliError
from vss.testing import records
from vss.testing.postgres import OwnPostgres
from vss.testing.processes import (
    other_listeners_on_port_0,
    poll,
    read_status,
    seed_static_store,
    start_cms,
    start_node,
    vssctl,
)

FAST = 2000  # SCRAM iterations of the seeded records (quick logins)
TOKEN = "standby-admin-token-0123456789abcdef"
DEVICES = 600  # devices the stream may grant, one per change
RATE = 20  # admin changes a second, at most (each waits for its answer)


class NoPostgres(Exception):
    """PostgreSQL is not enabled here: the reason."""


@defer.inlineCallbacks
def database(reactor, cleanups):
    """A PostgreSQL database of this run's own: a fresh schema of
    ``VSS_TEST_POSTGRES_DSN``, else a server of our own (``OwnPostgres``). Fires with a
    libpq DSN; ``cleanups`` gets the callables that remove it. Raises NoPostgres."""
    try:
        import psycopg2  # noqa: F401 - PostgreSQL support is an optional dependency
    except ImportError:
        raise NoPostgres("PostgreSQL is not enabled: psycopg2 is not installed") from None
    dsn = os.environ.get("VSS_TEST_POSTGRES_DSN")
    if dsn:
        # local import: optional dependency, psycopg2, checked above
        from vss.cms.store.postgres import create_schema, drop_schema

        schema = "standby_" + secrets.token_hex(6)
        create_schema(dsn, schema)
        cleanups.append(lambda: drop_schema(dsn, schema))
        return f"{dsn} options='-csearch_path={schema}'"
    pg = OwnPostgres.find()
    if pg is None:
        raise NoPostgres("PostgreSQL is not enabled: set VSS_TEST_POSTGRES_DSN or install "
                         f"the server binaries ({OwnPostgres.why_not})")
    cleanups.append(pg.destroy)
    yield pg.init_and_start()
    return pg.dsn


@defer.inlineCallbacks
def http_get(reactor, url):
    """(status, body text) of a GET, or (0, why) when nothing answered."""
    try:
        d = Agent(reactor, connectTimeout=2).request(b"GET", url.encode())
        d.addTimeout(3, reactor)
        response = yield d
        body = yield readBody(response)
    except Exception as e:  # noqa: BLE001 - anything: not answering
        return 0, str(e)
    return response.code, body.decode("utf-8", "replace")


class StandbyScenario:
    def __init__(self, reactor, work, dsn):
        self.reactor = reactor
        self.work = work
        self.dsn = dsn
        self.daemons = []
        self.cms = {}  # name -> (daemon, ports)
        self.sent = []  # [device_id, outcome: "ok" | "failed" | "unknown"]
        self.streaming = False
        self.node_ports = None

    # -- processes

    @defer.inlineCallbacks
    def seed(self):
        devices = [records.device(f"d{i:04d}", f"d{i:04d}-secret", home_node="node-a",
                                  iterations=FAST) for i in range(DEVICES)]
        yield seed_static_store(
            self.reactor, self.dsn, devices=devices,
            users=[records.user("alice", "alice-pw", iterations=FAST)],
            admin_tokens=[("standby", TOKEN)])

    def secret_file(self):
        return os.path.join(self.work, "cms-a", "cluster.secret")

    @defer.inlineCallbacks
    def start_cms(self, name):
        extra = ["--heartbeat", "1", "--db", self.dsn, "--cms-id", name, "--standby", "on"]
        if name != "cms-a":
            extra += ["--cluster-secret-file", self.secret_file()]
        daemon, ports = yield start_cms(self.reactor, self.work, extra, name=name)
        self.daemons.append(daemon)
        self.cms[name] = (daemon, ports)
        return daemon, ports

    def admin_url(self, name):
        return f"http://127.0.0.1:{self.cms[name][1]['admin']}"

    @defer.inlineCallbacks
    def readyz(self, name):
        return (yield http_get(self.reactor, self.admin_url(name) + "/readyz"))

    @defer.inlineCallbacks
    def is_active(self, name):
        status, _ = yield self.readyz(name)
        return status == 200

    @defer.inlineCallbacks
    def start_node(self):
        cms = ",".join(f"tcp:127.0.0.1:{ports['node']}" for _, ports in self.cms.values())
        daemon, self.node_ports = yield start_node(
            self.reactor, self.work, "node-a",
            ["--keepalive", "2", "--request-timeout", "5", "--cms", cms,
             "--cluster-secret-file", self.secret_file(), *other_listeners_on_port_0()])
        self.daemons.append(daemon)
        yield poll("node-a to synchronise", lambda: self.central().get("connected")
                   and self.central().get("applied_seq", 0) > 0, reactor=self.reactor)

    def central(self):
        return (read_status(self.work, "node-a") or {}).get("central", {})

    @defer.inlineCallbacks
    def stop_all(self):
        self.streaming = False
        for d in reversed(self.daemons):
            yield d.stop()

    # -- the stream of admin changes

    def client(self):
        """An admin client that knows every CMS (it follows the active one)."""
        return Client(self.reactor, ",".join(self.admin_url(n) + "/api/v1" for n in self.cms),
                      TOKEN, timeout=10)

    @defer.inlineCallbacks
    def stream(self):
        self.streaming = True
        api = self.client()
        while self.streaming and len(self.sent) < DEVICES:
            entry = [f"d{len(self.sent):04d}", "unknown"]
            self.sent.append(entry)
            try:
                yield api.call("PUT", "/grants", {"principal": "user:alice",
                                                  "device_id": entry[0], "actions": ["view"]})
                entry[1] = "ok"
            except CliError as e:
                # answered with an error, or never connected: not done
                if getattr(e, "status", None) or getattr(e, "unsent", False):
                    entry[1] = "failed"
            yield task.deferLater(self.reactor, 1.0 / RATE, lambda: None)

    # -- the kill and the takeover

    @defer.inlineCallbacks
    def kill_active_and_time_takeover(self, active="cms-a", standby="cms-b"):
        """SIGKILL the active CMS; fire with (seconds to the standby's /readyz 200,
        seconds to the node's link registered on it)."""
        api = Client(self.reactor, self.admin_url(standby) + "/api/v1", TOKEN, timeout=5)
        t0 = time.monotonic()
        yield self.cms[active][0].stop(signal.SIGKILL)
        yield poll(f"{standby} to take over", lambda: self.is_active(standby), timeout=30,
                   interval=0.05, reactor=self.reactor)
        took = time.monotonic() - t0

        @defer.inlineCallbacks
        def node_up():
            try:
                status = yield api.call("GET", "/status")
            except CliError:
                return False
            return any(n["node_id"] == "node-a" and n["state"] == "up"
                       for n in status["nodes"])

        yield poll("node-a to register with the new active CMS", node_up, timeout=30,
                   interval=0.05, reactor=self.reactor)
        return took, time.monotonic() - t0

    # -- the count

    @defer.inlineCallbacks
    def db_grants(self, name):
        api = Client(self.reactor, self.admin_url(name) + "/api/v1", TOKEN, timeout=10)
        items = yield api.all_pages("/grants", params={"principal": "user:alice"})
        return {g["device_id"] for g in items}

    @defer.inlineCallbacks
    def node_devices(self):
        out, err, code = yield vssctl(f"tcp:127.0.0.1:{self.node_ports['cu']}",
                                      ["--json", "devices"], "alice", "alice-pw")
        if code != 0:
            raise AssertionError(f"vssctl devices failed: {err}")
        return {d["device_id"] for d in json.loads(out)["devices"]}

    @defer.inlineCallbacks
    def count(self, name):
        """(acknowledged, lost from the DB, DB entries the node lacks or has extra,
        changes that failed yet are in the DB) once the node caught up."""
        acked = {d for d, o in self.sent if o == "ok"}
        failed = {d for d, o in self.sent if o == "failed"}
        last = {}

        @defer.inlineCallbacks
        def node_equals_db():
            db = yield self.db_grants(name)
            node = yield self.node_devices()
            last["db"], last["node"] = db, node
            return db == node

        try:
            yield poll("node-a's copy to equal the DB", node_equals_db, timeout=30,
                       interval=0.3, reactor=self.reactor)
        except AssertionError:
            pass  # reported as a difference below
        db, node = last["db"], last["node"]
        return {"acknowledged": len(acked), "sent": len(self.sent),
                "lost_db": sorted(acked - db), "node_diff": sorted(db ^ node),
                "failed_but_written": sorted(failed & db)}
