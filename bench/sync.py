"""
Data synchronisation benchmark: how fast central changes reach the nodes, how many PU
changes per second land in the DB, and how long a node's full reload takes.

    .venv/bin/python bench/sync.py [--nodes 4] [--rates 100,1000] [--seconds 10]
        [--pu-seconds 5] [--reload 10000,100000]

Processes: CMS (``CmsDaemon``: SQLite store, node listener, the real ``CMSService``)
runs inside this driver, pinned to CPU 0; every node is a real ``twistd vss-node``
process (memory store), pinned to the last CPU.

1. Passive sync latency (S501-S506): at each rate an open-loop generator renames
   devices, one store transaction per change followed by ``cms.publish`` (what MMS
   does). A change's latency runs from the start of its store write to the moment CMS
   has a ``SyncComplete`` (S506) from every node whose ``applied_seq`` covers it
   (taken from ``CMSService.s506_completed``): the full round trip as CMS sees it.
2. Active sync (S601-S605): one PU per node, logged in at its home node, sends NAME
   changes as fast as the link takes them for ``--pu-seconds``; the figure is PU changes
   written to the DB per second (CMS's ``sync_changes`` counter, until every outbox is
   empty).
3. Reload: a fresh node whose share is N devices homed on it starts (memory store: a
   reload of its share by STATIC_PULL pages); the figure is the reload time the node
   logs, and the wall time from process start to synchronised.

Every node follows every device of part 1 (as when users registered on each may see
them all), so part 1 measures a change that every node holds (docs/consistency.md).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

from twisted.internet import defer, task

from vss.client import SignallingClient, connect
from vss.cms.daemon import CmsDaemon
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import KV, ChangeKind, DeviceRecord, MsgType, Role, StateChange
from vss.testing import records
from vss.testing.processes import start_node

PU_ITERATIONS = 2000
BATCH = 10_000


def pin(pid, cpu):
    try:
        os.sched_setaffinity(pid, {cpu})
    except (AttributeError, OSError):
        pass


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Bench:
    def __init__(self, reactor, args):
        self.reactor = reactor
        self.args = args
        self.work = tempfile.mkdtemp(prefix="vss-bench-sync-")
        self.daemons = []
        self.pending = []  # [seq, t0] in seq order
        self.applied = {}  # node_id -> applied_seq reported by S506
        self.latencies = []

    # -- set-up

    @defer.inlineCallbacks
    def start_cms(self):
        data = os.path.join(self.work, "cms")
        self.daemon = CmsDaemon({
            "cms-id": "cms", "db": "sqlite:" + os.path.join(data, "cms.sqlite3"),
            "node-listen": "tcp:0:interface=127.0.0.1",
            "admin-listen": "tcp:0:interface=127.0.0.1", "data-dir": data,
            "cluster-secret-file": os.path.join(data, "cluster.secret"), "heartbeat": 5,
        }, self.reactor)
        self.daemon.startService()
        yield self.daemon.started
        self.cms = self.daemon.cms
        self.store = self.daemon.store
        self.port = self.daemon.listeners()["node"]
        completed = self.cms.s506_completed

        def s506_completed(s, complete):
            self.on_complete(s.node_id, complete.applied_seq)
            return completed(s, complete)

        self.cms.s506_completed = s506_completed

    @defer.inlineCallbacks
    def start_node(self, node_id):
        d, ports = yield start_node(self.reactor, self.work, node_id, [
            "--cms", f"tcp:127.0.0.1:{self.port}",
            "--cluster-secret-file", os.path.join(self.work, "cms", "cluster.secret"),
            "--node-listen", "tcp:0:interface=127.0.0.1"])
        pin(d.pid, (os.cpu_count() or 1) - 1)
        self.daemons.append(d)
        return d, ports

    @defer.inlineCallbacks
    def until(self, predicate, timeout=120.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError("timed out")
            yield task.deferLater(self.reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def seed(self, n, homes, prefix="dev", secret="x"):
        verifier = records.verifier(secret, iterations=PU_ITERATIONS)
        for i in range(0, n, BATCH):
            recs = [DeviceRecord(f"{prefix}-{j:06d}", f"Device {j}", 1, 1,
                                 homes[j % len(homes)], verifier, "", True, 0)
                    for j in range(i, min(n, i + BATCH))]
            self.cms.publish((yield self.store.bulk_upsert_devices(recs)))

    # -- 1. passive sync latency

    def on_complete(self, node_id, applied):
        if applied <= self.applied.get(node_id, 0):
            return
        self.applied[node_id] = applied
        low = min(self.applied.get(n, 0) for n in self.node_ids)
        now = time.perf_counter()
        while self.pending and self.pending[0][0] is not None and self.pending[0][0] <= low:
            _, t0 = self.pending.pop(0)
            self.latencies.append(now - t0)

    def all_applied(self):
        """Also take what the heartbeats said (a node that answered a notify while it
        was catching up confirms the rest only in its next heartbeat)."""
        for node_id, s in list(self.cms.sessions.items()):
            if node_id in self.node_ids:
                self.on_complete(node_id, s.applied_seq)
        return not self.pending

    def one_change(self, i):
        entry = [None, time.perf_counter()]
        self.pending.append(entry)
        device_id = f"dev-{i % self.args.devices:06d}"
        d = self.store.update_device_fields(device_id, name=f"name {i}")

        def written(changes):
            entry[0] = changes[-1].seq
            self.cms.publish(changes)

        return d.addCallback(written)

    @defer.inlineCallbacks
    def latency(self, rate):
        self.latencies = []
        sent = 0
        writes = []
        started = time.perf_counter()
        while time.perf_counter() - started < self.args.seconds:
            # open loop: as many changes as the wall clock says are due
            due = int(rate * (time.perf_counter() - started))
            while sent < due:
                writes.append(self.one_change(self.counter))
                self.counter += 1
                sent += 1
            yield task.deferLater(self.reactor, 0.005, lambda: None)
        yield defer.gatherResults(writes)
        elapsed = time.perf_counter() - started
        yield self.until(self.all_applied)
        lat = [x * 1000 for x in self.latencies]
        return {"rate": rate, "sent": sent, "achieved_per_s": round(sent / elapsed),
                "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2),
                "max_ms": round(max(lat), 2), "mean_ms": round(statistics.mean(lat), 2)}

    # -- 2. active sync

    @defer.inlineCallbacks
    def pu_throughput(self, ports):
        clients = []
        for node_id in self.node_ids:
            device_id = f"pu-{node_id}"
            for attempt in range(100):  # a node still loading its share says NOT_READY
                c = SignallingClient(Role.PU, device_id, "pu-secret", channels=1)
                try:
                    yield connect(self.reactor, f"tcp:127.0.0.1:{ports[node_id]['pu']}", c)
                    break
                except VssError as e:
                    if e.code != ResultCode.NOT_READY or attempt == 99:
                        raise
                    yield task.deferLater(self.reactor, 0.2, lambda: None)
            clients.append(c)
        before = self.cms.counters["sync_changes"]
        started = time.perf_counter()
        sent = 0
        while time.perf_counter() - started < self.args.pu_seconds:
            for c in clients:
                for _ in range(5):
                    sent += 1
                    c.link.send_notify(MsgType.STATE_CHANGE, StateChange(
                        device_id=c.identity, channel=0, change=int(ChangeKind.NAME),
                        timestamp=sent, items=[KV(key="name", value=f"pu {sent}")]))
            yield task.deferLater(self.reactor, 0.005, lambda: None)
        yield self.until(lambda: self.cms.counters["sync_changes"] - before >= sent,
                         timeout=600)
        elapsed = time.perf_counter() - started
        for c in clients:
            c.link.abort()
        landed = self.cms.counters["sync_changes"] - before
        return {"sent": sent, "landed": landed, "seconds": round(elapsed, 2),
                "landed_per_s": round(landed / elapsed),
                "offered_per_s": round(sent / self.args.pu_seconds)}

    # -- 3. reload

    @defer.inlineCallbacks
    def reload(self, total):
        # a fresh node whose share is ``total`` devices homed on it
        node_id = f"reload-{total}"
        yield self.seed(total, [node_id], prefix=f"bulk{total}")
        started = time.perf_counter()
        d, _ = yield self.start_node(node_id)
        log = os.path.join(self.work, f"{node_id}.log")
        pattern = re.compile(r"reloaded (\d+) devices, \d+ users, \d+ grants,"
                             r" \d+ stream credentials in ([\d.]+) s")

        def logged():
            with open(log, encoding="utf-8", errors="replace") as f:
                return pattern.search(f.read())

        yield self.until(lambda: node_id in self.cms.sessions and logged(), timeout=300)
        wall = time.perf_counter() - started
        m = logged()
        yield d.stop()
        return {"devices": int(m.group(1)), "reload_s": float(m.group(2)),
                "start_to_synchronised_s": round(wall, 2)}

    # -- the run

    @defer.inlineCallbacks
    def run(self):
        pin(0, 0)
        self.counter = 0
        self.node_ids = [f"node-{i}" for i in range(self.args.nodes)]
        yield self.start_cms()
        yield self.seed(self.args.devices, self.node_ids)
        # every node follows every device (a user registered on each may see them all):
        # the latency below is that of a change every node holds
        ids = [f"dev-{j:06d}" for j in range(self.args.devices)]
        for node_id in self.node_ids:
            for i in range(0, len(ids), BATCH):
                self.cms.publish((yield self.store.follow_devices(node_id, ids[i:i + BATCH])))
        pu = [records.device(f"pu-{n}", "pu-secret", home_node=n, iterations=PU_ITERATIONS)
              for n in self.node_ids]
        for r in pu:
            self.cms.publish((yield self.store.upsert_device(
                r.device_id, r.name, 1, 1, r.home_node, r.verifier)))
        ports = {}
        for node_id in self.node_ids:
            _, ports[node_id] = yield self.start_node(node_id)
        yield self.until(lambda: len(self.cms.sessions) == len(self.node_ids))
        results = {"machine": machine(), "nodes": self.args.nodes, "latency": [],
                   "reload": []}
        for rate in self.args.rates:
            r = yield self.latency(rate)
            print(json.dumps(r), flush=True)
            results["latency"].append(r)
        r = yield self.pu_throughput(ports)
        print(json.dumps(r), flush=True)
        results["pu"] = r
        for d in list(self.daemons):
            yield d.stop()
        self.daemons = []
        self.node_ids = ["node-0"]
        for total in self.args.reload:
            r = yield self.reload(total)
            print(json.dumps(r), flush=True)
            results["reload"].append(r)
        return results

    @defer.inlineCallbacks
    def close(self):
        for d in self.daemons:
            yield d.stop()
        yield self.daemon.stopService()
        shutil.rmtree(self.work, ignore_errors=True)


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs {model}, Python {sys.version.split()[0]}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rates", default="100,1000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pu-seconds", type=float, default=5.0)
    ap.add_argument("--reload", default="10000,100000")
    args = ap.parse_args(argv)
    args.rates = [int(x) for x in args.rates.split(",") if x]
    args.reload = [int(x) for x in args.reload.split(",") if x]

    def run(reactor):
        bench = Bench(reactor, args)
        d = bench.run()
        d.addCallback(lambda r: print(json.dumps(r, indent=1)))
        d.addBoth(lambda r: bench.close().addCallback(lambda _: r))
        return d

    task.react(run)


if __name__ == "__main__":
    main()
