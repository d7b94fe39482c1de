"""
Signalling relay benchmark (docs/performance.md, "Signalling relay").

Starts one real node (``twistd -n vss-node --static FILE``, ports 0, read back from
ports.json) pinned to core 0, and load processes (bench/_sigload.py: raw non-blocking
sockets, pre-encoded frames) pinned to core 1 that log N PUs and M CUs in.

Scenario ``relay``: every CU keeps ``--inflight`` PTZ_CONTROL requests in flight, spread
over the PUs; the PUs answer at once. Reported: relayed requests/s, p50/p99 latency seen
by the CUs, node CPU microseconds per request (utime+stime of /proc/PID/stat over the
measured window) and node RSS per link.

Scenario ``idle``: N PUs logged in, each sending a KEEPALIVE every ``--keepalive``
seconds (phases spread at random). Reported: node CPU % of one core and RSS per link.

    .venv/bin/python bench/signalling.py --scenario relay --pus 100 --cus 10 --inflight 16
    .venv/bin/python bench/signalling.py --scenario idle --pus 20000 --seconds 60
    .venv/bin/python bench/signalling.py --scenario relay --compare-metrics 3

Metrics (docs/performance.md, "Metrics"): the node runs with ``--metrics on`` (the
default: latency histograms kept, ``/metrics`` served) and is scraped every
``--scrape-interval`` seconds during the window, or with ``--metrics off``.
``--compare-metrics N`` runs the scenario 2N times, off and on in turn, and prints the
figures side by side with the relative difference of the medians.

Bounded in time (``--deadline``); always stops its processes.
"""

import argparse
import json
import os
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from _common import Scraper  # noqa: E402 - bench/ is on sys.path (run as a script)

from vss.protocols.messages import Action, DeviceRecord, GrantRecord, UserRecord  # noqa: E402
from vss.rgm.localcentral import MemoryCentral  # noqa: E402
from vss.testing import records  # noqa: E402

SECRET = "bench-secret"
SALT = b"bench-salt-16byt"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BIN = os.path.dirname(sys.executable)


def write_static(path, pus, cus, node_id):
    v = records.verifier(SECRET, salt=SALT)  # one PBKDF2 for every bench identity
    c = MemoryCentral()
    for i in range(pus):
        c.add_device(DeviceRecord(device_id=f"pu{i:05d}", name=f"pu{i:05d}", kind=1, channels=1,
                                  home_node=node_id, verifier=v, source_url="", enabled=True,
                                  version=1))
        c.add_grant(GrantRecord(principal="group:bench", device_id=f"pu{i:05d}",
                                actions=int(Action.VIEW | Action.PTZ), version=1))
    for j in range(cus):
        c.add_user(UserRecord(username=f"cu{j:05d}", verifier=v, groups=["bench"],
                              enabled=True, version=1))
    c.save(path)


def _die_with_parent():
    """Children get SIGKILL if the bench itself is killed (Linux PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


def pinned(core, raise_nofile=False):
    def pre():
        _die_with_parent()
        os.sched_setaffinity(0, {core})
        if raise_nofile:
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        os.setsid()  # own process group: cleaned up as one

    return pre


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Loader:
    def __init__(self, cfg, core, log):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "_sigload.py"), json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            preexec_fn=pinned(core, raise_nofile=True), cwd=ROOT)
        self.buf = b""

    def send(self, cmd):
        self.proc.stdin.write((cmd + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout):
        end = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("load process did not answer")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError("load process ended")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(5)
            except Exception:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_node(work, args, log, metrics="on"):
    data = os.path.join(work, "node")
    os.makedirs(data, exist_ok=True)
    argv = [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "vss-node", "--node-id", "bench",
            "--data-dir", data, "--pu-listen", "tcp:0:interface=127.0.0.1:backlog=4096",
            "--cu-listen", "tcp:0:interface=127.0.0.1:backlog=1024",
            "--rtsp-listen", "tcp:0:interface=127.0.0.1",
            "--http-listen", "tcp:0:interface=127.0.0.1", "--metrics", metrics,
            "--static", os.path.join(work, "static.json"), "--keepalive", str(args.keepalive)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=work,
                            preexec_fn=pinned(args.node_core, raise_nofile=True))
    ports_file = os.path.join(data, "ports.json")
    end = time.monotonic() + 120
    while not os.path.exists(ports_file):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError("node did not start; see " + log.name)
        time.sleep(0.1)
    with open(ports_file) as f:
        return proc, json.load(f)


def start_bare(work, args, log):
    ports_file = os.path.join(work, "ports.json")
    argv = [sys.executable, os.path.join(HERE, "_sigfloor.py"), ports_file]
    proc = subprocess.Popen(argv + (["--direct"] if args.direct else []),
                            stdout=log, stderr=subprocess.STDOUT, cwd=work,
                            preexec_fn=pinned(args.node_core, raise_nofile=True))
    end = time.monotonic() + 30
    while not os.path.exists(ports_file) or not os.path.getsize(ports_file):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError("bare server did not start; see " + log.name)
        time.sleep(0.1)
    time.sleep(0.2)
    with open(ports_file) as f:
        return proc, json.load(f)


def split(n, k):
    """``n`` items over ``k`` parts: (start, count) of each."""
    out, start = [], 0
    for i in range(k):
        count = n // k + (1 if i < n % k else 0)
        out.append((start, count))
        start += count
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=("relay", "idle"), default="relay")
    ap.add_argument("--pus", type=int, default=None, help="PUs [relay 100, idle 20000]")
    ap.add_argument("--cus", type=int, default=None, help="CUs [relay 10, idle 0]")
    ap.add_argument("--inflight", type=int, default=16, help="requests in flight per CU link")
    ap.add_argument("--seconds", type=float, default=None, help="measured window [relay 20, idle 60]")
    ap.add_argument("--warmup", type=float, default=3.0, help="relay: seconds before measuring")
    ap.add_argument("--keepalive", type=int, default=30, help="keepalive interval, seconds")
    ap.add_argument("--loaders", type=int, default=None, help="load processes [relay 1, idle 2]")
    ap.add_argument("--node-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--bare", action="store_true",
                    help="idle: a bare Twisted server (bench/_sigfloor.py) instead of the node, "
                         "for the reactor's and kernel's floor")
    ap.add_argument("--direct", action="store_true",
                    help="with --bare: answers straight to the socket, as the node's links do")
    ap.add_argument("--profile", help="py-spy the node over the window into this file (raw)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--deadline", type=float, default=900.0, help="hard stop, seconds")
    ap.add_argument("--metrics", choices=("on", "off"), default="on",
                    help="the node's --metrics (on: scraped every --scrape-interval)")
    ap.add_argument("--scrape-interval", type=float, default=1.0,
                    help="seconds between scrapes of /metrics while measuring")
    ap.add_argument("--compare-metrics", type=int, default=0, metavar="N",
                    help="run N times with metrics off and on in turn; print side by side")
    args = ap.parse_args()
    relay = args.scenario == "relay"
    args.pus = args.pus if args.pus is not None else (100 if relay else 20000)
    args.cus = args.cus if args.cus is not None else (10 if relay else 0)
    args.seconds = args.seconds if args.seconds is not None else (20.0 if relay else 60.0)
    args.loaders = args.loaders or (1 if relay else 2)

    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("deadline")))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up in the finally below
    signal.alarm(int(args.deadline))
    if args.compare_metrics:
        return compare(args)
    result = measure(args, args.metrics)
    signal.alarm(0)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v}")


COMPARED = (("requests_per_s", "relayed requests/s", True),
            ("node_cpu_us_per_request", "node CPU us / request", False),
            ("p50_ms", "p50 latency, ms", False), ("p99_ms", "p99 latency, ms", False),
            ("node_cpu_pct", "node CPU % of one core", False),
            ("keepalives_per_s", "keepalives/s", True))


def compare(args):
    """``measure`` with metrics off and on in turn, ``args.compare_metrics`` times each."""
    runs = {"off": [], "on": []}
    for i in range(args.compare_metrics):
        for metrics in ("off", "on"):
            result = measure(args, metrics)
            runs[metrics].append(result)
            print(f"round {i + 1} metrics {metrics}: " + json.dumps(result), file=sys.stderr,
                  flush=True)
    signal.alarm(0)
    rows = []
    for key, label, higher_better in COMPARED:
        off = [r[key] for r in runs["off"] if r.get(key) is not None]
        on = [r[key] for r in runs["on"] if r.get(key) is not None]
        if not off or not on:
            continue
        m_off, m_on = statistics.median(off), statistics.median(on)
        cost = (m_off - m_on) / m_off if higher_better else (m_on - m_off) / m_off
        rows.append({"figure": label, "off": off, "on": on, "median_off": m_off,
                     "median_on": m_on, "cost_pct": round(100 * cost, 2) if m_off else None})
    scrapes = sum(r.get("scrapes", 0) for r in runs["on"])
    if args.json:
        print(json.dumps({"scenario": args.scenario, "rounds": args.compare_metrics,
                          "scrapes": scrapes, "figures": rows}))
        return
    print(f"\n{args.scenario}: {args.compare_metrics} rounds of metrics off / on, "
          f"{args.seconds:g} s windows; {scrapes} scrapes of /metrics while on "
          f"(every {args.scrape_interval:g} s)")
    print("| figure | metrics off (each run) | metrics on (each run) | median off | median on "
          "| cost of metrics |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['figure']} | {', '.join(f'{v:g}' for v in r['off'])} | "
              f"{', '.join(f'{v:g}' for v in r['on'])} | {r['median_off']:g} | "
              f"{r['median_on']:g} | {r['cost_pct']:+.2f} % |")


def measure(args, metrics):
    """One run of the scenario against a new node with ``--metrics metrics``; the
    figures as a dict."""
    relay = args.scenario == "relay"
    work = tempfile.mkdtemp(prefix="vss-sigbench-")
    node = None
    loaders = []
    profiler = None
    scraper = None
    nlog = open(os.path.join(work, "node.log"), "wb")  # noqa: SIM115
    llog = open(os.path.join(work, "load.log"), "wb")  # noqa: SIM115
    result = {"scenario": args.scenario + (" (bare Twisted server%s)" % (
        ", direct answers" if args.direct else "") if args.bare else ""),
        "metrics": "n/a" if args.bare else metrics}
    try:
        t = time.monotonic()
        write_static(os.path.join(work, "static.json"), args.pus, args.cus, "bench")
        if args.bare:
            node, ports = start_bare(work, args, nlog)
        else:
            node, ports = start_node(work, args, nlog, metrics)
        pid = node.pid
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        fds0 = open_fds(pid)
        links = args.pus + args.cus
        if fds0 + links > hard:
            fit = hard - fds0 - 8
            print(f"note: the node may hold {hard} files and has {fds0} open: "
                  f"running {fit} PUs instead of {args.pus}", file=sys.stderr)
            args.pus = max(0, fit - args.cus)
            links = args.pus + args.cus
        time.sleep(1.0)
        rss0 = rss_bytes(pid)
        print(f"node pid {pid} up in {time.monotonic() - t:.1f} s, RSS {rss0 / 2**20:.1f} MiB, "
              f"{fds0} fds; logging {args.pus} PUs and {args.cus} CUs in", file=sys.stderr)
        pu_parts = split(args.pus, args.loaders)
        cu_parts = split(args.cus, args.loaders)
        t = time.monotonic()
        for k in range(args.loaders):
            cfg = {"host": "127.0.0.1", "pu_port": ports["pu"], "cu_port": ports["cu"],
                   "secret": SECRET, "inflight": args.inflight, "keepalive": args.keepalive,
                   "bare": args.bare,
                   "pus": f"pu:{pu_parts[k][0]}:{pu_parts[k][1]}",
                   "cus": f"cu:{cu_parts[k][0]}:{cu_parts[k][1]}",
                   "targets": f"pu:0:{args.pus}" if relay else ""}
            loaders.append(Loader(cfg, args.load_core, llog))
        ready = [ld.read(timeout=args.deadline) for ld in loaders]
        logged = sum(r["logged_in"] for r in ready)
        login_s = time.monotonic() - t
        print(f"{logged} links logged in in {login_s:.1f} s "
              f"({sum(r['failed'] for r in ready)} failed, "
              f"{sum(r.get('busy', 0) for r in ready)} told BUSY by the login rate and "
              "tried again)", file=sys.stderr)
        if logged < links:
            raise RuntimeError(f"only {logged} of {links} links logged in; see {work}")
        time.sleep(2.0)
        rss1 = rss_bytes(pid)
        result.update(pus=args.pus, cus=args.cus, links=logged, login_seconds=round(login_s, 1),
                      node_rss_mib=round(rss1 / 2**20, 1),
                      rss_per_link_kib=round((rss1 - rss0) / logged / 1024, 2))
        if relay:
            for ld in loaders:
                ld.send("go")
            time.sleep(args.warmup)
        if metrics == "on" and not args.bare:
            scraper = Scraper(f"http://127.0.0.1:{ports['http']}/metrics", args.scrape_interval)
            scraper.start()
        for ld in loaders:
            ld.send("mark")
        c0, w0 = cpu_ticks(pid), time.monotonic()
        l0 = sum(cpu_ticks(ld.proc.pid) for ld in loaders)
        if args.profile:
            profiler = subprocess.Popen(
                [os.path.join(BIN, "py-spy"), "record", "--pid", str(pid), "--format", "raw",
                 "--rate", "200", "--duration", str(int(args.seconds)), "--nonblocking",
                 "-o", args.profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                preexec_fn=pinned(args.load_core))
        time.sleep(args.seconds)
        c1, w1 = cpu_ticks(pid), time.monotonic()
        l1 = sum(cpu_ticks(ld.proc.pid) for ld in loaders)
        if scraper is not None:
            scraper.stop()
            result.update(scrapes=scraper.scrapes, scrape_failures=scraper.failures,
                          scrape_kib=round(scraper.bytes / max(1, scraper.scrapes) / 1024, 1))
            scraper = None
        for ld in loaders:
            ld.send("report")
        reports = [ld.read(timeout=30) for ld in loaders]
        cpu_s = (c1 - c0) / TICK
        wall = w1 - w0
        result.update(window_s=round(wall, 1), node_cpu_s=round(cpu_s, 2),
                      node_cpu_pct=round(100 * cpu_s / wall, 2),
                      load_cpu_pct=round(100 * (l1 - l0) / TICK / wall, 1),
                      loadavg_1min=round(os.getloadavg()[0], 2),
                      closed_by_node=sum(r["closed_by_node"] for r in reports),
                      node_rss_end_mib=round(rss_bytes(pid) / 2**20, 1))
        if relay:
            count = sum(r["count"] for r in reports)
            window = max(r["window"] for r in reports)
            rep = reports[0]  # percentiles: of the first load process (one by default)
            result.update(requests=count, errors=sum(r["errors"] for r in reports),
                          requests_per_s=round(count / window),
                          p50_ms=rep["p50_ms"] and round(rep["p50_ms"], 2),
                          p99_ms=rep["p99_ms"] and round(rep["p99_ms"], 2),
                          max_ms=rep["max_ms"] and round(rep["max_ms"], 2),
                          node_cpu_us_per_request=round(cpu_s * 1e6 / count, 1) if count else None,
                          inflight_total=args.inflight * args.cus)
            for ld in loaders:
                ld.send("stop")
        else:
            result.update(keepalives=sum(r["keepalives"] for r in reports),
                          keepalives_per_s=round(sum(r["keepalives"] for r in reports) / wall, 1))
        if profiler is not None:
            profiler.wait(60)
            profiler = None
    finally:
        if scraper is not None:
            scraper.stop()
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
        for ld in loaders:
            ld.stop()
        if node is not None and node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        nlog.close()
        llog.close()
        if args.keep or "requests" not in result and "keepalives" not in result:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
