"""
Routing benchmark (docs/performance.md, "Routing"): relayed PTZ_CONTROL requests/s and
latency for the three paths of flow S401-S407, side by side in one run.

- ``local``: CU and PU on the same node (S401, local hit, S407).
- ``via_cms``: CU on one node, PU on another, every request through CMS (S401-S407):
  the CU-facing node runs ``--route-cache off``, so each request takes the cache-miss
  path a first request takes: ROUTE_REQUEST to CMS, CMS forwards it to the home node,
  plus the ROUTE_LOOKUP that would learn the route.
- ``cached``: CU on one node, PU on another, the route cached: node to node over the
  inter-node link, CMS not involved.

Real processes: ``twistd vss-cms`` (SQLite, seeded with the store API before it starts)
and three ``twistd vss-node`` (node-a: CU-facing, route cache on, and home of the local
PUs; node-b: home of the remote PUs; node-u: CU-facing, route cache off), all ports 0,
read back from ports.json. Load: bench/_sigload.py (raw sockets, pre-encoded frames),
one process per phase, logging the phase's PUs and CUs in; every CU keeps ``--inflight``
requests in flight, spread over the PUs, which answer at once.

Cores (``--layout``): ``shared`` (default) pins CMS and every node to ``--server-core``
and the load to ``--load-core``, so every path is served by one core and the ratios are
ratios of CPU cost; ``split`` pins node-b (the remote PUs' home) and CMS to the load
core instead, as if the home node were another machine (it then shares its core with
the load process).

CMS requests per 1,000 CU requests come from the CU-facing node's ``status.json``
(central link counter ``cms_requests`` against the RGM's ``relayed`` + ``routed``), two
snapshots a measured window apart.

    .venv/bin/python bench/routing.py                      # --pus 100 --cus 10 --inflight 8
    .venv/bin/python bench/routing.py --layout split --rounds 2

Bounded in time (``--deadline``); always stops its processes.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _common import seed_cms, stop_and_clean, wait_json  # noqa: E402
from signalling import SALT, SECRET, TICK, Loader, cpu_ticks, pinned  # noqa: E402

from vss.protocols.messages import Action, DeviceRecord, GrantRecord, UserRecord  # noqa: E402
from vss.testing import records  # noqa: E402
from vss.testing.processes import other_listeners_on_port_0  # noqa: E402

BIN = os.path.dirname(sys.executable)
PHASES = ("local", "via_cms", "cached")


def seed(db_path, pus, cus):
    """Users, devices (``la*`` homed on node-a, ``rb*`` on node-b) and grants, written
    with the store API before CMS starts."""
    v = records.verifier(SECRET, salt=SALT)  # one PBKDF2 for every bench identity
    devices = [DeviceRecord(device_id=f"{prefix}{i:05d}", name=f"{prefix}{i:05d}", kind=1,
                            channels=1, home_node=home, verifier=v, source_url="",
                            enabled=True, version=1)
               for prefix, home in (("la", "node-a"), ("rb", "node-b")) for i in range(pus)]
    users = [UserRecord(username=f"cu{j:05d}", verifier=v, groups=["bench"], enabled=True,
                        version=1) for j in range(cus)]
    grants = [GrantRecord(principal="group:bench", device_id=d.device_id,
                          actions=int(Action.VIEW | Action.PTZ), version=1) for d in devices]
    seed_cms(db_path, devices, users, grants)



def spawn(argv, log, core, cwd):
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                            preexec_fn=pinned(core, raise_nofile=True))


def read_status(work, node_id, newer_than=0.0, timeout=5.0):
    """The node's status.json, once it was rewritten after ``newer_than`` (mtime)."""
    path = os.path.join(work, node_id, "status.json")
    end = time.monotonic() + timeout
    while True:
        try:
            mtime = os.stat(path).st_mtime
            if mtime > newer_than:
                with open(path) as f:
                    return mtime, json.load(f)
        except (OSError, ValueError):
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"{path} was not rewritten")
        time.sleep(0.02)


def fresh_status(work, node_id):
    """A snapshot written after this call (status.json is rewritten every second)."""
    try:
        now = os.stat(os.path.join(work, node_id, "status.json")).st_mtime
    except OSError:
        now = 0.0
    return read_status(work, node_id, newer_than=now)[1]


def core_busy_ticks(core):
    """Busy clock ticks of one CPU so far (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return sum(v[:8]) - v[3] - v[4]
    return 0


def cu_requests(status):
    return status["rgm"]["relayed"] + status["rgm"]["routed"]


def run_phase(name, args, work, ports, pids, llog, on_server_core):
    cu_node = "node-u" if name == "via_cms" else "node-a"
    pu_node = "node-a" if name == "local" else "node-b"
    prefix = "la" if name == "local" else "rb"
    cfg = {"host": "127.0.0.1", "pu_port": ports[pu_node]["pu"], "cu_port": ports[cu_node]["cu"],
           "secret": SECRET, "inflight": args.inflight, "keepalive": 0,
           "pus": f"{prefix}:0:{args.pus}", "cus": f"cu:0:{args.cus}",
           "targets": f"{prefix}:0:{args.pus}"}
    loader = Loader(cfg, args.load_core, llog)
    try:
        ready = loader.read(timeout=120)
        if ready["logged_in"] < args.pus + args.cus:
            raise RuntimeError(f"{name}: only {ready['logged_in']} links logged in")
        loader.send("go")
        time.sleep(args.warmup)
        loader.send("mark")
        s0 = fresh_status(work, cu_node)
        c0 = {n: cpu_ticks(p) for n, p in pids.items()}
        k0 = core_busy_ticks(args.server_core)
        t0 = time.monotonic()
        spies = []
        if args.profile and name == args.profile_phase:
            for node in {cu_node, pu_node}:
                spies.append(subprocess.Popen(
                    [os.path.join(BIN, "py-spy"), "record", "--pid", str(pids[node]),
                     "--format", "raw", "--rate", "200", "--duration", str(int(args.seconds)),
                     "--nonblocking", "-o", f"{args.profile}.{name}.{node}.txt"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    preexec_fn=pinned(args.load_core)))
        time.sleep(args.seconds)
        for spy in spies:
            spy.wait(60)
        c1 = {n: cpu_ticks(p) for n, p in pids.items()}
        k1 = core_busy_ticks(args.server_core)
        wall = time.monotonic() - t0
        loader.send("report")
        rep = loader.read(timeout=30)
        s1 = fresh_status(work, cu_node)
        loader.send("stop")
    finally:
        loader.stop()
    count = rep["count"]
    handled = cu_requests(s1) - cu_requests(s0)
    cms = s1["central"]["cms_requests"] - s0["central"]["cms_requests"]
    cpu = {n: (c1[n] - c0[n]) / TICK for n in pids}
    # What else ran on the server core meanwhile (other work on a shared host).
    foreign = (k1 - k0) / TICK - sum(cpu[n] for n in on_server_core)
    return {
        "foreign_pct": round(max(0.0, 100 * foreign / wall), 1),
        "requests": count, "errors": rep["errors"],
        "requests_per_s": count / rep["window"] if rep["window"] else 0.0,
        "p50_ms": rep["p50_ms"], "p99_ms": rep["p99_ms"],
        "cms_per_1000": 1000.0 * cms / handled if handled else None,
        "routed_direct": s1["central"]["routed_direct"] - s0["central"]["routed_direct"],
        "server_cpu_us_per_request": 1e6 * sum(cpu.values()) / count if count else None,
        "cu_node_cpu_us_per_request": 1e6 * cpu[cu_node] / count if count else None,
        "cpu_pct": {n: round(100 * v / wall, 1) for n, v in cpu.items()},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pus", type=int, default=100, help="PUs per phase")
    ap.add_argument("--cus", type=int, default=10, help="CUs per phase")
    ap.add_argument("--inflight", type=int, default=8, help="requests in flight per CU")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per phase")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    ap.add_argument("--rounds", type=int, default=1, help="the three phases, this many times")
    ap.add_argument("--layout", choices=("shared", "split"), default="shared")
    ap.add_argument("--max-foreign", type=float, default=10.0,
                    help="count only rounds with at most this %% of other load on the server "
                         "core (a shared host), if there are any")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--profile", help="py-spy the CU and PU nodes of --profile-phase into "
                    "PROFILE.PHASE.NODE.txt (raw)")
    ap.add_argument("--profile-phase", choices=PHASES, default="cached")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--deadline", type=float, default=600.0, help="hard stop, seconds")
    args = ap.parse_args()

    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("deadline")))
    signal.alarm(int(args.deadline))
    work = tempfile.mkdtemp(prefix="vss-routebench-")
    procs = {}
    logs = []
    results = {p: [] for p in PHASES}
    ok = False
    try:
        db = os.path.join(work, "cms", "vss-cms.sqlite3")
        os.makedirs(os.path.dirname(db))
        seed(db, args.pus, args.cus)
        remote_core = args.load_core if args.layout == "split" else args.server_core

        def log(name):
            f = open(os.path.join(work, f"{name}.log"), "wb")  # noqa: SIM115
            logs.append(f)
            return f

        twistd = os.path.join(BIN, "twistd")
        procs["cms"] = spawn([twistd, "-n", "--pidfile=", "vss-cms", "--data-dir",
                              os.path.join(work, "cms"), "--db", "sqlite:" + db,
                              "--node-listen", "tcp:0:interface=127.0.0.1",
                              "--admin-listen", "tcp:0:interface=127.0.0.1"],
                             log("cms"), remote_core, work)
        ports = {"cms": wait_json(os.path.join(work, "cms", "ports.json"), procs["cms"], "cms")}
        for node, core, cache in (("node-a", args.server_core, "on"),
                                  ("node-b", remote_core, "on"),
                                  ("node-u", args.server_core, "off")):
            procs[node] = spawn([
                twistd, "-n", "--pidfile=", "vss-node", "--node-id", node,
                "--data-dir", os.path.join(work, node),
                "--cms", f"tcp:127.0.0.1:{ports['cms']['node']}",
                "--cluster-secret-file", os.path.join(work, "cms", "cluster.secret"),
                *other_listeners_on_port_0(("pu-listen", "cu-listen")),
                "--pu-listen", "tcp:0:interface=127.0.0.1:backlog=1024",
                "--cu-listen", "tcp:0:interface=127.0.0.1:backlog=1024",
                "--route-cache", cache], log(node), core, work)
        for node in ("node-a", "node-b", "node-u"):
            ports[node] = wait_json(os.path.join(work, node, "ports.json"), procs[node], node)
            end = time.monotonic() + 60
            while True:
                _, st = read_status(work, node, timeout=60)
                if st["central"]["connected"] and st["central"]["applied_seq"] > 0:
                    break
                if time.monotonic() > end:
                    raise RuntimeError(f"{node} did not synchronise with CMS")
                time.sleep(0.1)
        pids = {n: p.pid for n, p in procs.items()}
        on_server_core = [n for n in pids if n in ("node-a", "node-u")
                          or remote_core == args.server_core]
        print(f"CMS and 3 nodes up (layout {args.layout}: node-a, node-u on core "
              f"{args.server_core}, node-b and CMS on core {remote_core}, load on core "
              f"{args.load_core})", file=sys.stderr)
        llog = log("load")
        for r in range(args.rounds):
            for phase in PHASES:
                res = run_phase(phase, args, work, ports, pids, llog, on_server_core)
                results[phase].append(res)
                print(f"round {r + 1} {phase:>8}: {res['requests_per_s']:8.0f} req/s  "
                      f"p99 {res['p99_ms']:.2f} ms  errors {res['errors']}  CMS/1000 "
                      f"{res['cms_per_1000'] or 0:.0f}  cpu% {res['cpu_pct']}  other load on the "
                      f"server core {res['foreign_pct']}%", file=sys.stderr)
        ok = True
    finally:
        signal.alarm(0)
        stop_and_clean(procs.values(), logs, work, args.keep or not ok)

    # Rounds in which nothing else used more than --max-foreign % of the server core
    # (checked for all three paths); all rounds if there is none such.
    clean = [i for i in range(len(results["local"]))
             if all(results[p][i]["foreign_pct"] <= args.max_foreign for p in PHASES)]
    used = clean or list(range(len(results["local"])))
    results = {p: [results[p][i] for i in used] for p in PHASES}

    def mean(phase, key):
        values = [r[key] for r in results[phase] if r[key] is not None]
        return statistics.mean(values) if values else None

    local_p99 = mean("local", "p99_ms")
    summary = {"layout": args.layout, "pus": args.pus, "cus": args.cus,
               "inflight": args.inflight, "rounds": args.rounds, "seconds": args.seconds,
               "rounds_used": len(used), "rounds_clean": len(clean)}
    def round_ratios(phase):
        """Each round's throughput over the same round's local throughput: the median
        of these is less sensitive to other load on the host than a ratio of means."""
        return [r["requests_per_s"] / lo["requests_per_s"]
                for r, lo in zip(results[phase], results["local"], strict=True)]

    for phase in PHASES:
        rps, p99 = mean(phase, "requests_per_s"), mean(phase, "p99_ms")
        summary[phase] = {
            "requests_per_s": round(rps),
            "ratio_to_local": round(statistics.median(round_ratios(phase)), 3),
            "ratio_range": [round(min(round_ratios(phase)), 3),
                            round(max(round_ratios(phase)), 3)],
            "p50_ms": round(mean(phase, "p50_ms"), 2), "p99_ms": round(p99, 2),
            "p99_ratio_to_local": round(p99 / local_p99, 2),
            "errors": sum(r["errors"] for r in results[phase]),
            "cms_requests_per_1000_cu_requests": mean(phase, "cms_per_1000"),
            "server_cpu_us_per_request": round(mean(phase, "server_cpu_us_per_request"), 1),
            "cu_node_cpu_us_per_request": round(mean(phase, "cu_node_cpu_us_per_request"), 1),
        }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"layout {args.layout}, {args.pus} PUs, {args.cus} CUs x {args.inflight} in flight, "
          f"{args.rounds} round(s) of {args.seconds:.0f} s per path; {len(clean)} round(s) with "
          f"at most {args.max_foreign:.0f}% of other load on the server core"
          + ("" if clean else " (none: every round is counted)"))
    print("req/s x local: median of the per-round ratios (range); cpu us/req: all servers, "
          "and the CU-facing node alone")
    print(f"{'path':>8} {'req/s':>8} {'x local':>18} {'p50 ms':>7} {'p99 ms':>7} {'x local':>8} "
          f"{'CMS/1000':>9} {'cpu us/req':>10} {'CU node':>8} {'errors':>6}")
    for phase in PHASES:
        s = summary[phase]
        cms = s["cms_requests_per_1000_cu_requests"]
        lo, hi = s["ratio_range"]
        ratio = f"{s['ratio_to_local']:.2f} ({lo:.2f}-{hi:.2f})"
        print(f"{phase:>8} {s['requests_per_s']:>8} {ratio:>18} "
              f"{s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['p99_ratio_to_local']:>8.2f} "
              f"{'-' if cms is None else f'{cms:.1f}':>9} {s['server_cpu_us_per_request']:>10} "
              f"{s['cu_node_cpu_us_per_request']:>8} {s['errors']:>6}")


if __name__ == "__main__":
    main()
