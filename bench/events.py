"""
Events benchmark (docs/performance.md, "Events and alarms"): events/s from many PUs to
subscribed CUs over two nodes; the delivered ratio, the PU-to-CU latency (p50, p99), the
nodes' memory and whether CMS's storage keeps up.

Real processes: ``twistd vss-cms`` (SQLite, seeded before it starts) and two ``twistd
vss-node`` (node-a, node-b). The load is this process (Twisted): ``--pus`` PUs, half homed
on each node, and ``--cus`` CUs, half logged in to each node; every device is watched by
two CUs, one on each node, so every event reaches one CU of its home node and one of the
other node (over the node link, CMS not on the path). Each CU's subscription names its
devices (``--pus`` / ``--cus`` * 2 of them). PUs raise ``--rate`` events/s in all,
round-robin, as EVENT_RAISE requests carrying their send time; a CU's EVENT_NOTIFY gives
the latency (the same clock: one process).

    .venv/bin/python bench/events.py                        # --pus 1000 --cus 100 --rate 1000
    .venv/bin/python bench/events.py --rate 2000 --seconds 20

Bounded in time (``--deadline``); always stops its processes.
"""

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _common import seed_cms, stop_and_clean, wait_json  # noqa: E402
from signalling import SALT, SECRET  # noqa: E402

from vss.protocols.messages import (  # noqa: E402
    KV,
    Action,
    DeviceRecord,
    EventRaise,
    EventSubscribe,
    GrantRecord,
    MsgType,
    UserRecord,
)
from vss.testing import records  # noqa: E402
from vss.testing.processes import other_listeners_on_port_0  # noqa: E402

BIN = os.path.dirname(sys.executable)
NODES = ("node-a", "node-b")


def seed(db_path, pus, cus):
    v = records.verifier(SECRET, salt=SALT)  # one PBKDF2 for every bench identity
    devices = [DeviceRecord(device_id=f"ev{i:05d}", name=f"ev{i:05d}", kind=1, channels=1,
                            home_node=NODES[i % 2], verifier=v, source_url="", enabled=True,
                            version=1) for i in range(pus)]
    users = [UserRecord(username=f"cu{j:04d}", verifier=v, groups=["bench"], enabled=True,
                        version=1) for j in range(cus)]
    grants = [GrantRecord(principal="group:bench", device_id=d.device_id,
                          actions=int(Action.VIEW), version=1) for d in devices]
    seed_cms(db_path, devices, users, grants)



def status(work, node):
    try:
        with open(os.path.join(work, node, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_load(args, work, ports, pids):
    """The PUs and CUs in this process; returns the figures."""
    from twisted.internet import defer, reactor, task

    from vss.client import SignallingClient, connect
    from vss.protocols.messages import CuKind, PuKind, Role

    half = args.cus // 2
    watched = {}  # device -> CUs watching it: (node-a CU, node-b CU)
    for i in range(args.pus):
        watched[f"ev{i:05d}"] = (i % half, half + i % half)
    latencies = []
    by_path = {"local": [], "remote": []}  # the CU on the event's home node, or the other
    spikes = []
    received = {"count": 0, "in_window": 0}
    sent = {"count": 0, "failed": 0, "in_window": 0}
    window = {"on": False}
    seen = set()
    dup = {"count": 0}

    def on_notify(cu):
        def got(msg):
            if msg.type != MsgType.EVENT_NOTIFY:
                return
            e = msg.body.event
            key = (cu, e.node_id, e.seq)
            if key in seen:
                dup["count"] += 1
                return
            seen.add(key)
            received["count"] += 1
            for kv in e.items:
                if kv.key == "t":
                    t, w = kv.value.split(",")
                    if w == "1":
                        received["in_window"] += 1
                        dt = time.perf_counter() - float(t)
                        latencies.append(dt)
                        home = NODES[0] if cu < half else NODES[1]
                        by_path["local" if e.node_id == home else "remote"].append(dt)
                        if dt > 0.05:
                            spikes.append((round(float(t), 3), round(dt * 1000), e.node_id,
                                           home))
        return got

    @defer.inlineCallbacks
    def main():
        cus = []
        for j in range(args.cus):
            node = NODES[0] if j < half else NODES[1]
            c = SignallingClient(Role.CU, f"cu{j:04d}", SECRET, kind=CuKind.MOC,
                                 on_notify=on_notify(j))
            yield connect(reactor, f"tcp:127.0.0.1:{ports[node]['cu']}", c)
            devices = [d for d, w in watched.items() if j in w]
            yield c.request(MsgType.EVENT_SUBSCRIBE, EventSubscribe(
                devices=devices, groups=[], types=[], resume_after=0))
            cus.append(c)
        print(f"{len(cus)} CUs subscribed", file=sys.stderr)
        pus = []
        ds = []
        for i in range(args.pus):
            device = f"ev{i:05d}"
            node = NODES[i % 2]
            c = SignallingClient(Role.PU, device, SECRET, kind=PuKind.IPC, channels=1)
            ds.append(connect(reactor, f"tcp:127.0.0.1:{ports[node]['pu']}", c))
            pus.append(c)
            if len(ds) >= 50:
                yield defer.gatherResults(ds)
                ds = []
        yield defer.gatherResults(ds)
        print(f"{len(pus)} PUs online", file=sys.stderr)
        # both nodes follow each other's events before measuring
        end = time.monotonic() + 30
        while not all(set(NODES) - {n} <= set(status(work, n).get("events", {})
                                              .get("following", [])) for n in NODES):
            if time.monotonic() > end:
                raise RuntimeError("the nodes do not follow each other's events")
            yield task.deferLater(reactor, 0.2, lambda: None)
        tick = 0.005
        credit = {"n": 0.0, "next": 0, "last": time.perf_counter()}

        def fire():
            now = time.perf_counter()  # by the time passed: a late tick catches up
            credit["n"] += args.rate * (now - credit["last"])
            credit["last"] = now
            w = "1" if window["on"] else "0"
            while credit["n"] >= 1:
                credit["n"] -= 1
                i = credit["next"]
                credit["next"] = (i + 1) % len(pus)
                pu = pus[i]
                body = EventRaise(device_id=pu.identity, channel=0, type="motion", phase=0,
                                  severity=2, pu_time=0,
                                  items=[KV(key="t", value=f"{time.perf_counter():.6f},{w}")])
                sent["count"] += 1
                if window["on"]:
                    sent["in_window"] += 1
                pu.request(MsgType.EVENT_RAISE, body).addErrback(
                    lambda f: sent.__setitem__("failed", sent["failed"] + 1))

        if args.gc_freeze:
            import gc

            gc.freeze()  # the logged-in links: no longer scanned by every collection
        loop = task.LoopingCall(fire)
        loop.start(tick)
        yield task.deferLater(reactor, args.warmup, lambda: None)
        rss0 = {n: rss_mb(pids[n]) for n in pids}
        cpu0 = {n: cpu_seconds(pids[n]) for n in pids}
        cpu0["load"] = cpu_seconds(os.getpid())
        window["on"] = True
        t0 = time.monotonic()
        yield task.deferLater(reactor, args.seconds / 2, lambda: None)
        rss_mid = {n: rss_mb(pids[n]) for n in pids}  # the nodes' histories are full by now
        yield task.deferLater(reactor, args.seconds / 2, lambda: None)
        window["on"] = False
        elapsed = time.monotonic() - t0
        cpu1 = {n: cpu_seconds(pids[n]) for n in pids}
        cpu1["load"] = cpu_seconds(os.getpid())
        loop.stop()
        yield task.deferLater(reactor, 3.0, lambda: None)  # what is in flight arrives
        rss1 = {n: rss_mb(pids[n]) for n in pids}
        waiting = {n: status(work, n).get("events", {}).get("report", {}).get("waiting")
                   for n in NODES}
        for c in cus + pus:
            if c.link is not None:
                c.link.transport.abortConnection()
        return {"rate_asked": args.rate, "events_sent": sent["in_window"],
                "events_per_s": round(sent["in_window"] / elapsed),
                "raise_failed": sent["failed"],
                "expected_notifications": 2 * sent["in_window"],
                "delivered": received["in_window"],
                "delivered_ratio": round(received["in_window"] / max(1, 2 * sent["in_window"]),
                                         5),
                "duplicates": dup["count"],
                "p50_ms": round(pct(latencies, 0.5) * 1000, 2),
                "p99_ms": round(pct(latencies, 0.99) * 1000, 2),
                "max_ms": round(max(latencies or [0]) * 1000, 2),
                **{f"{k}_p99_ms": round(pct(v, 0.99) * 1000, 2) for k, v in by_path.items()},
                **{f"{k}_p50_ms": round(pct(v, 0.5) * 1000, 2) for k, v in by_path.items()},
                "spikes": spikes[:40] if args.spikes else len(spikes),
                "rss_mb_start": {n: round(v, 1) for n, v in rss0.items()},
                "rss_mb_mid": {n: round(v, 1) for n, v in rss_mid.items()},
                "rss_mb_end": {n: round(v, 1) for n, v in rss1.items()},
                "cpu_pct": {n: round(100 * (cpu1[n] - cpu0[n]) / elapsed) for n in cpu1},
                "report_waiting": waiting}

    out = {}

    def run(_reactor):
        d = main()
        d.addCallback(out.update)
        return d

    try:
        task.react(run)
    except SystemExit as e:  # react always exits; only a failure matters
        if e.code:
            raise
    return out


def micro(events=20_000, links=50):
    """The hub's own cost, in this process (no sockets): an EVENT_RAISE numbered, kept in
    the feed, matched against ``links`` CU links (each subscribed to 20 devices, one of
    which is the event's) and sent to the one that watches it; and a peer's event
    received, deduplicated and delivered the same way."""
    from twisted.internet import task

    from vss.events.hub import EventHub
    from vss.protocols.messages import EventNotify, EventRecord
    from vss.rgm.localcentral import MemoryCentral
    from vss.store.memory import MemoryStore

    class Link:
        def __init__(self, user):
            self.session = type("S", (), {"identity": user})()
            self.sent = 0

        def send_raw(self, data):
            self.sent += 1

    clock = task.Clock()
    clock.advance(1_700_000_000)
    store = MemoryStore()
    devices = [f"ev{i:05d}" for i in range(links * 20)]
    for d in devices:
        store.put_grant(GrantRecord(principal="group:bench", device_id=d,
                                    actions=int(Action.VIEW), version=1))
    hub = EventHub("node-a", store, MemoryCentral(), clock)
    for j in range(links):
        store.put_user(UserRecord(username=f"cu{j}", verifier=records.verifier(
            SECRET, salt=SALT), groups=["bench"], enabled=True, version=1))
        link = Link(f"cu{j}")
        hub.subscribe(link, EventSubscribe(devices=devices[j * 20:(j + 1) * 20], groups=[],
                                           types=[], resume_after=0))
    raise_body = EventRaise(device_id=devices[0], channel=0, type="motion", phase=1,
                            severity=2, pu_time=0, items=[KV(key="zone", value="1")])
    t0 = time.perf_counter()
    for i in range(events):
        hub.on_raise(devices[i % len(devices)], EventRaise(
            device_id=devices[i % len(devices)], channel=0, type="motion", phase=1,
            severity=2, pu_time=0, items=raise_body.items))
    local_us = (time.perf_counter() - t0) / events * 1e6
    t0 = time.perf_counter()
    for i in range(events):
        hub.peer_event("node-b", EventNotify(feed_id=i + 1, event=EventRecord(
            node_id="node-b", seq=i + 1, device_id=devices[i % len(devices)], channel=0,
            type="motion", phase=1, severity=2, pu_time=0, node_time=0, items=[])))
    remote_us = (time.perf_counter() - t0) / events * 1e6
    return {"raise_and_deliver_us": round(local_us, 1),
            "peer_event_and_deliver_us": round(remote_us, 1),
            "delivered": hub.counters["delivered"], "links": links}


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pus", type=int, default=1000)
    ap.add_argument("--cus", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1000.0, help="events/s, all PUs together")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--spikes", action="store_true", help="list the first deliveries over 50 ms")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() the load process once its links are up")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--deadline", type=float, default=600.0, help="hard stop, seconds")
    ap.add_argument("--seed", help=argparse.SUPPRESS)  # a child seeding DB (one reactor each)
    ap.add_argument("--micro", action="store_true",
                    help="only the hub's own cost per event, in this process")
    args = ap.parse_args()
    if args.micro:
        print(json.dumps(micro(), indent=1, sort_keys=True))
        return None
    if args.seed:
        return seed(args.seed, args.pus, args.cus)
    if args.cus < 2 or args.cus % 2 or args.pus < args.cus // 2:
        ap.error("--cus must be even and at least 2, --pus at least --cus / 2")
    if 2 * args.pus / args.cus > 64:
        ap.error("each CU would watch more than 64 devices: raise --cus")

    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("deadline")))
    signal.alarm(int(args.deadline))
    work = tempfile.mkdtemp(prefix="vss-eventbench-")
    procs = {}
    logs = []
    ok = False
    try:
        db = os.path.join(work, "cms", "vss-cms.sqlite3")
        os.makedirs(os.path.dirname(db))
        subprocess.check_call([sys.executable, __file__, "--seed", db, "--pus", str(args.pus),
                               "--cus", str(args.cus)])

        def log(name):
            f = open(os.path.join(work, f"{name}.log"), "wb")  # noqa: SIM115
            logs.append(f)
            return f

        twistd = os.path.join(BIN, "twistd")
        procs["cms"] = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "vss-cms", "--data-dir", os.path.join(work, "cms"),
             "--db", "sqlite:" + db, "--node-listen", "tcp:0:interface=127.0.0.1",
             "--admin-listen", "tcp:0:interface=127.0.0.1"],
            stdout=log("cms"), stderr=subprocess.STDOUT, cwd=work)
        ports = {"cms": wait_json(os.path.join(work, "cms", "ports.json"), procs["cms"], "cms")}
        for node in NODES:
            procs[node] = subprocess.Popen([
                twistd, "-n", "--pidfile=", "vss-node", "--node-id", node,
                "--data-dir", os.path.join(work, node),
                "--cms", f"tcp:127.0.0.1:{ports['cms']['node']}",
                "--cluster-secret-file", os.path.join(work, "cms", "cluster.secret"),
                *other_listeners_on_port_0(("pu-listen", "cu-listen")),
                "--pu-listen", "tcp:0:interface=127.0.0.1:backlog=1024",
                "--cu-listen", "tcp:0:interface=127.0.0.1:backlog=1024"],
                stdout=log(node), stderr=subprocess.STDOUT, cwd=work)
        for node in NODES:
            ports[node] = wait_json(os.path.join(work, node, "ports.json"), procs[node], node)
            end = time.monotonic() + 60
            while not (status(work, node).get("central", {}).get("applied_seq") or 0) > 0:
                if time.monotonic() > end:
                    raise RuntimeError(f"{node} did not synchronise with CMS")
                time.sleep(0.1)
        pids = {n: p.pid for n, p in procs.items()}
        res = run_load(args, work, ports, pids)
        time.sleep(2.0)  # CMS writes what the nodes reported last
        with sqlite3.connect(db) as conn:
            res["stored_in_cms"] = conn.execute("SELECT COUNT(*) FROM events WHERE type ="
                                                " 'motion'").fetchone()[0]
        if args.json:
            print(json.dumps(res, indent=1, sort_keys=True))
        else:
            print(f"{res['events_per_s']} events/s from {args.pus} PUs to {args.cus} CUs over "
                  f"two nodes: delivered {res['delivered']}/{res['expected_notifications']} "
                  f"({res['delivered_ratio']:.4%}), duplicates {res['duplicates']}, PU-to-CU "
                  f"latency p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, max "
                  f"{res['max_ms']} ms (local p99 {res['local_p99_ms']}, across nodes p99 "
                  f"{res['remote_p99_ms']}); RSS MB {res['rss_mb_start']} -> "
                  f"{res['rss_mb_mid']} -> {res['rss_mb_end']}; "
                  f"cpu% {res['cpu_pct']}; reports waiting {res['report_waiting']}; stored "
                  f"in CMS {res['stored_in_cms']}")
        ok = True
    finally:
        signal.alarm(0)
        stop_and_clean(procs.values(), logs, work, args.keep or not ok)


if __name__ == "__main__":
    main()
