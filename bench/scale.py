"""
Scale simulation of targeted sync (S503): the real CMS on PostgreSQL against many
simulated nodes, with a city-sized population.

    .venv/bin/python bench/scale.py [--dsn 'host=127.0.0.1 port=5432 dbname=test user=postgres']
        [--nodes 100] [--devices 1000000] [--users 100000] [--rates 100,1000]
        [--seconds 20]

Processes:

- this driver runs CMS (the real ``CMSService`` and ``PostgresStaticStore``, in a
  PostgreSQL schema of its own, dropped at the end) and the change generator (what MMS
  does: one store transaction per change, then ``publish``), pinned to CPU 0;
- a second process (``--nodes-process``) runs every simulated node: one real node link
  each (``LinkFactory``, SCRAM login with the cluster secret, NODE_REGISTER, heartbeats,
  SYNC_NOTIFY answered with SyncComplete, PREV_SEQ checked and SYNC_FETCH on a gap),
  many per process; they hold no records, they only speak the protocol. It also runs
  one real ``CmsLink`` with a memory store that reloads the share of one node.

Population (generated in SQL): ``--devices`` devices spread over the nodes; 10 groups
per node, each granted a tenth of its node's devices, and the first tenth of every
node's devices also granted to a group of the previous node (a city's neighbouring
sites); ``--users`` users, each in one group, registered on its group's node. So a node
holds its own devices, follows a tenth as many of its neighbour's, and holds its users.

Figures: CMS CPU per change (process CPU time of this driver while changes flow, the
generator included), SYNC_NOTIFY messages, changes and bytes sent per change, the
change-to-ack latency at the nodes that hold the device (from the start of the store
write to the SyncComplete of each such node, as CMS sees it), DB write time per change,
CMS load time and memory; one node's reload time and records held.
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

from twisted.internet import defer, endpoints, task

from vss.cms.service import CMSConfig, CMSService
from vss.cms.store.postgres import PostgresStaticStore, create_schema
from vss.cms.store.postgres import drop_schema as drop_pg_schema
from vss.protocols.link import LinkFactory
from vss.protocols.messages import (
    Empty,
    Heartbeat,
    MsgType,
    NodeRegister,
    SyncComplete,
    SyncFetch,
)
from vss.rgm.peers import node_login
from vss.rgm.sync import ext_seq

SECRET = b"scale-bench-cluster-secret-0123456789"
SCHEMA = "vss_bench_scale"
GROUPS_PER_NODE = 10


def node_name(i):
    return f"n{i:03d}"


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def postgres_cpu_seconds():
    """CPU time of every PostgreSQL process on this host (the server is shared: other
    work's queries count too)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        if comm.startswith("postgres"):
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- the population, in SQL

def populate(dsn, nodes, devices, users):
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"SET search_path TO {SCHEMA}")
    n, g = nodes, GROUPS_PER_NODE
    node = f"'n' || lpad((i % {n})::text, 3, '0')"
    t0 = time.monotonic()
    cur.execute(f"""
        INSERT INTO devices SELECT 'd' || lpad(i::text, 7, '0'), 'Camera ' || i, 1, 1,
          {node}, '\\x73616c74'::bytea, 4096, '\\x6b6579'::bytea, '\\x736b6579'::bytea, '',
          true, 1 FROM generate_series(0, {devices - 1}) AS i""")
    # each device to one group of its node; the first tenth also to a group of the
    # previous node
    cur.execute(f"""
        INSERT INTO grants SELECT 'group:g' || ((i % {n}) * {g} + (i / {n}) % {g}),
          'd' || lpad(i::text, 7, '0'), 15, 1, 0 FROM generate_series(0, {devices - 1}) AS i""")
    cur.execute(f"""
        INSERT INTO grants SELECT 'group:g' || (((i % {n}) + {n} - 1) % {n} * {g} + 1),
          'd' || lpad(i::text, 7, '0'), 1, 1, 0 FROM generate_series(0, {devices - 1}) AS i
          WHERE (i / {n}) % {g} = 0""")
    cur.execute(f"""
        INSERT INTO users SELECT 'u' || lpad(i::text, 6, '0'), '\\x73616c74'::bytea, 4096,
          '\\x6b6579'::bytea, '\\x736b6579'::bytea, '["g' || (i % {n * g}) || '"]', true, 1
          FROM generate_series(0, {users - 1}) AS i""")
    cur.execute(f"""
        INSERT INTO node_users SELECT 'n' || lpad(((i % {n * g}) / {g})::text, 3, '0'),
          'u' || lpad(i::text, 6, '0') FROM generate_series(0, {users - 1}) AS i""")
    cur.execute(f"""
        INSERT INTO node_devices SELECT 'n' || lpad((((i % {n}) + {n} - 1) % {n})::text, 3, '0'),
          'd' || lpad(i::text, 7, '0') FROM generate_series(0, {devices - 1}) AS i
          WHERE (i / {n}) % {g} = 0""")
    cur.execute("VACUUM ANALYZE")  # as a database in service is: visibility map set
    counts = {}
    for table in ("devices", "grants", "users", "node_users", "node_devices"):
        cur.execute(f"SELECT count(*) FROM {table}")
        counts[table] = cur.fetchone()[0]
    conn.close()
    return counts, time.monotonic() - t0


def drop_schema(dsn):
    drop_pg_schema(dsn, SCHEMA)


# -- the simulated nodes (run in their own process)

class SimNode:
    """One node link speaking the real protocol; it holds no records."""

    def __init__(self, node_id, reactor, stats):
        self.node_id = node_id
        self.reactor = reactor
        self.applied = 0
        self.link = None
        self.stats = stats
        self.fetching = None

    @defer.inlineCallbacks
    def connect(self, port, applied):
        self.applied = applied
        ep = endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)
        self.link = yield ep.connect(LinkFactory(self, self.reactor, request_timeout=60.0))
        yield node_login(self.link, self.node_id, SECRET)
        reg = (yield self.link.request(MsgType.NODE_REGISTER, NodeRegister(
            node_id=self.node_id, signalling="", media="", capacity=0,
            applied_seq=self.applied))).body
        yield self.fetch()
        self.beat = task.LoopingCall(self.heartbeat)
        self.beat.clock = self.reactor
        self.beat.start(reg.heartbeat_interval, now=False)

    def heartbeat(self):
        self.link.request(MsgType.NODE_HEARTBEAT, Heartbeat(
            pus=0, cus=0, streams=0, cpu_permille=0, bandwidth_kbps=0,
            applied_seq=self.applied)).addErrback(lambda f: None)

    @defer.inlineCallbacks
    def fetch(self):
        while True:
            self.stats["fetches"] += 1
            batch = (yield self.link.request(MsgType.SYNC_FETCH, SyncFetch(
                after_seq=self.applied, limit=5000), 60.0)).body
            scanned = ext_seq(batch.ext)
            self.stats["fetched"] += len(batch.changes)
            self.applied = max(self.applied, scanned)
            if scanned >= batch.head_seq:
                return

    def linkUp(self, link):
        pass

    def linkDown(self, link, reason):
        pass

    @defer.inlineCallbacks
    def on_notify(self, body):
        prev = ext_seq(body.ext)
        self.stats["notifies"] += 1
        self.stats["changes"] += len(body.changes)
        if prev > self.applied:
            self.stats["gaps"] += 1
            yield self.fetch()
        self.applied = max(self.applied, body.head_seq)
        return SyncComplete(node_id=self.node_id, applied_seq=self.applied)

    def received(self, link, frame, msg):
        if frame.type == MsgType.KEEPALIVE:
            link.send_response(frame.type, frame.txid, Empty())
        elif frame.type == MsgType.SYNC_NOTIFY:
            self.on_notify(msg.body).addCallbacks(
                lambda body: link.send_response(frame.type, frame.txid, body),
                lambda f: link.send_failure(frame, f))


def nodes_process(args):
    from twisted.internet import reactor
    from twisted.logger import formatEvent, globalLogPublisher

    from vss.rgm.cmslink import CmsLink
    from vss.store.memory import MemoryStore

    stats = {"notifies": 0, "changes": 0, "gaps": 0, "fetches": 0, "fetched": 0}
    out = {}

    def observe(event):  # the real node's own account of its reload
        if "reloaded" in (event.get("log_format") or ""):
            out["reload_logged"] = formatEvent(event)

    globalLogPublisher.addObserver(observe)

    @defer.inlineCallbacks
    def main():
        sims = [SimNode(node_name(i), reactor, stats) for i in range(1, args.nodes)]
        t0 = time.monotonic()
        for i in range(0, len(sims), 20):
            yield defer.gatherResults([s.connect(args.port, args.head)
                                       for s in sims[i:i + 20]], consumeErrors=True)
        out["connect_s"] = time.monotonic() - t0
        # one real node, n000, reloads its share from nothing (memory store), --reloads
        # times (a restart each: a new link, store and data directory)
        times, logged = [], []
        link = None
        for i in range(args.reloads):
            if link is not None:
                yield link.stopService()
            store = MemoryStore()
            data = os.path.join(args.work, f"n000-{i}")
            os.makedirs(data, exist_ok=True)
            before = rss_mb()
            link = CmsLink(node_name(0), f"tcp:127.0.0.1:{args.port}", SECRET, store, reactor,
                           data_dir=data)
            sys.stdout.write(json.dumps({"reload_start": i}) + "\n")
            sys.stdout.flush()
            t0, cpu0 = time.monotonic(), cpu_seconds()
            link.startService()
            yield link.ready
            times.append(round(time.monotonic() - t0, 3))
            sys.stdout.write(json.dumps({"reload_end": i, "node_cpu": cpu_seconds() - cpu0})
                             + "\n")
            sys.stdout.flush()
            logged.append(out.pop("reload_logged", None))
        out["reload_s"] = times[-1]
        out["reloads_s"] = times
        out["reloads_logged"] = [s.rsplit(" in ", 1)[-1] if s else None for s in logged]
        out["reload_logged"] = logged[-1]
        out["held"] = {"devices": len(store.devices()), "users": len(store.users()),
                       "grants": len(store.grants()),
                       "own": sum(1 for d in store.devices() if d.home_node == "n000")}
        out["node_rss_mb"] = rss_mb() - before
        sys.stdout.write(json.dumps({"ready": out}) + "\n")
        sys.stdout.flush()
        # report every second until told to stop (stdin closes)
        while True:
            yield task.deferLater(reactor, 1.0, lambda: None)
            sys.stdout.write(json.dumps({"stats": stats}) + "\n")
            sys.stdout.flush()

    def failed(f):
        sys.stderr.write(f.getTraceback())
        reactor.stop()

    reactor.callWhenRunning(lambda: main().addErrback(failed))
    reactor.run()


# -- the driver: CMS and the changes

class Driver:
    def __init__(self, reactor, args):
        self.reactor = reactor
        self.args = args
        self.t0 = {}  # seq -> (monotonic start of its write, of its publish)
        self.waiting = {}  # node_id -> [(seq, t0)] sent, not acknowledged yet
        self.latencies = []
        self.write_times = []
        self.reload_cpu = []  # per reload of n000: CPU seconds of node, CMS, PostgreSQL

    @defer.inlineCallbacks
    def run(self):
        a = self.args
        dsn = a.dsn
        drop_schema(dsn)
        create_schema(dsn, SCHEMA)
        self.store = PostgresStaticStore(dsn, reactor=self.reactor, schema=SCHEMA)
        if a.max_batch:
            self.store._commits.max_batch = a.max_batch  # 1: a transaction per change
        inner, self.inside = self.store._in_batch, []

        def timed(cur, batch):  # time inside each transaction (its pool thread)
            t = time.monotonic()
            result = inner(cur, batch)
            self.inside.append(time.monotonic() - t)
            return result

        self.store._in_batch = timed
        yield self.store.open()
        counts, took = yield defer.maybeDeferred(populate, dsn, a.nodes, a.devices, a.users)
        print(f"population: {counts} generated in {took:.1f} s")
        rss0 = rss_mb()
        cms = self.cms = CMSService(CMSConfig(cms_id="cms", cluster_secret=SECRET,
                                              heartbeat_interval=5), self.store, self.reactor)
        t0 = time.monotonic()
        yield cms.load()
        print(f"CMS load (homes, users' groups, node_devices, node_users): "
              f"{time.monotonic() - t0:.1f} s, CMS RSS {rss_mb():.0f} MB "
              f"(+{rss_mb() - rss0:.0f} MB)")
        cms.startService()
        port = yield endpoints.TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1") \
            .listen(cms.factory())
        self.hook()
        head = yield self.store.head_seq()
        work = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"vss-scale-{os.getpid()}")
        os.makedirs(work, exist_ok=True)
        self.child = subprocess.Popen(
            [sys.executable, __file__, "--nodes-process", "--port", str(port.getHost().port),
             "--head", str(head), "--nodes", str(a.nodes), "--work", work,
             "--reloads", str(a.reloads)],
            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        try:
            if not a.no_pin:
                os.sched_setaffinity(0, {0})
                os.sched_setaffinity(self.child.pid, {os.cpu_count() - 1})
        except (AttributeError, OSError):
            pass
        ready = yield self.read_child("ready")
        print(f"{a.nodes - 1} simulated nodes connected in {ready['connect_s']:.1f} s; "
              f"one real node (n000) reloaded its share in {ready['reload_s']:.2f} s: "
              f"{ready['held']} (RSS +{ready['node_rss_mb']:.0f} MB); it logged: "
              f"{ready.get('reload_logged')}")
        print(f"n000's reloads, start to ready (s): {ready['reloads_s']}; the reload "
              f"alone, as it logged: {ready['reloads_logged']}; load average "
              f"{os.getloadavg()[0]:.1f}")
        print(f"CPU seconds of each reload (node, CMS, every PostgreSQL process): "
              f"{self.reload_cpu}")
        self.results = {"ready": ready}
        for rate in a.rates:
            yield self.at_rate(rate, a.seconds)
        self.child.stdin.close()
        self.child.kill()
        cms.stopService()
        yield port.stopListening()
        yield self.store.close()
        drop_schema(dsn)

    def read_child(self, key):
        return task.deferLater(self.reactor, 0, self._read_child, key)

    def _read_child(self, key):
        from twisted.internet import threads

        def read():
            while True:
                line = self.child.stdout.readline()
                if not line:
                    raise RuntimeError("the nodes process ended")
                msg = json.loads(line)
                if "reload_start" in msg:  # CPU of CMS and of PostgreSQL during it
                    started = (cpu_seconds(), postgres_cpu_seconds())
                elif "reload_end" in msg:
                    self.reload_cpu.append({
                        "node": round(msg["node_cpu"], 2),
                        "cms": round(cpu_seconds() - started[0], 2),
                        "postgres": round(postgres_cpu_seconds() - started[1], 2)})
                if key in msg:
                    return msg[key]

        return threads.deferToThread(read)

    def hook(self):
        cms = self.cms
        notify, completed = cms.s504_notify, cms.s506_completed

        def s504_notify(node_id, changes, head=None):
            t0 = self.t0.get(changes[-1].seq) if changes else None
            if t0 is not None:
                self.waiting.setdefault(node_id, []).append((changes[-1].seq, *t0))
            return notify(node_id, changes, head)

        def s506_completed(s, complete):
            now = time.monotonic()
            pending = self.waiting.get(s.node_id)
            while pending and pending[0][0] <= complete.applied_seq:
                _, t_write, t_publish = pending.pop(0)
                self.latencies.append(now - t_write)
                self.ack_times.append((now, now - t_write))
                self.publish_latencies.append(now - t_publish)
            return completed(s, complete)

        cms.s504_notify = s504_notify
        cms.s506_completed = s506_completed

    @defer.inlineCallbacks
    def change(self):
        a = self.args
        device = f"d{random.randrange(a.devices):07d}"
        t0 = time.monotonic()
        self.counter += 1
        try:
            changes = yield self.store.update_device_fields(device, name=f"n{self.counter}")
        except Exception as e:  # noqa: BLE001 - counted and shown
            self.errors += 1
            self.last_error = str(e)
            return
        t1 = time.monotonic()
        self.write_times.append(t1 - t0)
        self.committed_at.append(t1)
        for c in changes:
            self.t0[c.seq] = (t0, t1)
        self.cms.publish(changes)

    @defer.inlineCallbacks
    def at_rate(self, rate, seconds):
        self.latencies, self.write_times, self.waiting, self.t0 = [], [], {}, {}
        self.publish_latencies, self.ack_times, self.committed_at = [], [], []
        self.counter, self.errors, self.last_error = 0, 0, ""
        cms = self.cms
        before = dict(cms.counters)
        tick = 0.01
        issued = 0
        commits0 = (self.store._commits.transactions, self.store._commits.writes)
        del self.inside[:]
        started = time.monotonic()
        cpu0, pg0 = cpu_seconds(), postgres_cpu_seconds()
        inflight = []
        while time.monotonic() - started < seconds:
            # the changes due by now (a late tick issues more: the rate is kept)
            due = int(rate * (time.monotonic() - started))
            while issued < due:
                issued += 1
                inflight.append(self.change())
            yield task.deferLater(self.reactor, tick, lambda: None)
            inflight = [d for d in inflight if not d.called]
        elapsed = time.monotonic() - started
        yield defer.DeferredList(inflight)
        # let the last acknowledgements come in
        deadline = time.monotonic() + 10
        while any(self.waiting.values()) and time.monotonic() < deadline:
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        cpu, pg = cpu_seconds() - cpu0, postgres_cpu_seconds() - pg0
        done = self.counter - self.errors
        diff = {k: cms.counters.get(k, 0) - before.get(k, 0) for k in cms.counters}
        lat = self.latencies
        row = {
            "rate": rate, "errors": self.errors,
            # committed within the window, per second (the rest committed after it)
            "achieved": round(sum(1 for t in self.committed_at if t <= started + elapsed)
                              / elapsed, 1),
            "cms_cpu_ms_per_change": round(1000 * cpu / max(1, done), 3),
            "cms_cpu_share": round(cpu / (time.monotonic() - started), 2),
            # every PostgreSQL process of the host (others' queries too, if any)
            "postgres_cpu_ms_per_change": round(1000 * pg / max(1, done), 3),
            "notifies_per_change": round(diff["notified"] / max(1, done), 3),
            "changes_sent_per_change": round(diff["notified_changes"] / max(1, done), 3),
            "bytes_per_change": round(diff["notified_bytes"] / max(1, done), 1),
            "skips": diff["skips"], "holes": diff["holes"],
            "ack_p50_ms": round(1000 * pct(lat, 50), 1),
            "ack_p99_ms": round(1000 * pct(lat, 99), 1), "acks": len(lat),
            "publish_to_ack_p50_ms": round(1000 * pct(self.publish_latencies, 50), 1),
            "publish_to_ack_p99_ms": round(1000 * pct(self.publish_latencies, 99), 1),
            "db_write_p50_ms": round(1000 * pct(self.write_times, 50), 2),
            "db_write_p99_ms": round(1000 * pct(self.write_times, 99), 2),
            "transactions": self.store._commits.transactions - commits0[0],
            "writes_per_transaction": round(
                (self.store._commits.writes - commits0[1])
                / max(1, self.store._commits.transactions - commits0[0]), 1),
            "in_transaction_p50_ms": round(1000 * pct(self.inside, 50), 1),
            "in_transaction_p99_ms": round(1000 * pct(self.inside, 99), 1),
            "load_average": round(os.getloadavg()[0], 1),
        }
        windows = {}
        for at, lat in self.ack_times:
            windows.setdefault(int((at - started) // 5), []).append(lat)
        row["ack_p99_ms_by_5s"] = [round(1000 * pct(windows[w], 99)) for w in sorted(windows)]
        if self.last_error:
            row["last_error"] = self.last_error[:200]
        print(json.dumps(row))
        self.results[rate] = row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", default="host=127.0.0.1 port=5432 dbname=test user=postgres")
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--rates", default="100,1000")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-batch", type=int, default=0,
                    help="the most changes one transaction carries (default: the store's)")
    ap.add_argument("--no-pin", action="store_true",
                    help="leave CMS and the nodes on any CPU (on a machine shared with other "
                         "work, a pinned CMS gets only its core's share)")
    ap.add_argument("--reloads", type=int, default=1,
                    help="how many times n000 restarts and reloads its share")
    ap.add_argument("--nodes-process", action="store_true")
    ap.add_argument("--port", type=int)
    ap.add_argument("--head", type=int, default=0)
    ap.add_argument("--work")
    args = ap.parse_args()
    if args.nodes_process:
        return nodes_process(args)
    args.rates = [int(r) for r in args.rates.split(",")]
    from twisted.internet import reactor

    started = time.monotonic()
    d = Driver(reactor, args)

    def done(result):
        print(f"total {time.monotonic() - started:.0f} s")
        if reactor.running:
            reactor.stop()
        return result

    def failed(f):
        print(f.getTraceback())
        try:
            drop_schema(args.dsn)
        except Exception:  # noqa: BLE001
            pass

    reactor.callWhenRunning(lambda: d.run().addErrback(failed).addBoth(done))
    reactor.run()


if __name__ == "__main__":
    main()
