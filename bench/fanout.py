"""
RTSP fan-out benchmark: one 4 Mb/s H.264 stream to N TCP-interleaved viewers.

    .venv/bin/python bench/fanout.py [--viewers 100,500,1000,2000] [--seconds 10]

Processes:
- the server (``serve``): ``RTSPServerFactory`` in its own process, pinned to CPU 0;
- the publisher: the static ffmpeg of imageio-ffmpeg replaying a pre-encoded 4 Mb/s
  file (``-re -stream_loop -1 -c copy``) over RTSP/TCP, pinned to the last CPU;
- the load client (``load``): plain non-blocking sockets and ``selectors`` (epoll),
  pinned to the last CPU, counts bytes and RTP sequence gaps per viewer.

For each N it prints the server's CPU seconds per Gbit delivered, % of one core, the
delivered ratio (RTP packets received / packets sent within the window, from sequence
numbers), server memory per viewer and time to first frame (connect to first RTP byte;
a viewer starts at the next keyframe, GOP 1 s).

``--slow K`` adds K viewers on a slow link: an 8 KiB receive window, reading half the
stream's rate. They are not in the delivered ratio; the table gives their worst lag
(how long after the first viewer they read each picture) and the lag skips the server
counted (``--max-lag``, 0 for none, is the server's bound).

``--ss-workers 1,2`` runs the same load against the in-process SS and then against a
server with 1 and 2 SS workers (``vss.ss``: ``twistd vss-ss`` processes driven by an
``SSPool`` in the server process, each pulling the stream once from it), side by side in
one run; the viewers are spread evenly over the workers' ports, and the CPU and memory
are those of every server process (the in-process SS and its workers). The workers
inherit the server's CPU pinning (CPU 0 unless ``--worker-cpus``).

The server also serves the streaming server's Prometheus metrics (the node's media
families, ``vss.ops.collectors.streaming_server_families``). ``--metrics on`` scrapes
them every ``--scrape-interval`` seconds during each window; ``--metrics compare`` runs
every N twice, not scraped then scraped, and prints both rows (docs/performance.md,
"Metrics").
"""

import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECRET = b"bench-secret-0123456789abcdef-0123456789"  # 32 bytes at least (SS workers)
PATH = "/live/bench/main"


from _common import Scraper, WallClock, make_input, pin, proc_cpu  # noqa: E402 - bench/ is on sys.path (run as a script)

# -- server process


def serve(args):
    pin(args.cpu)
    sys.path.insert(0, ROOT)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
    from vss.rtsp.server import RTSPServerFactory

    factory = RTSPServerFactory(TokenAuthorizer(TokenIssuer(SECRET, clock=reactor)),
                                reactor=reactor, gop_cache=args.gop_cache,
                                max_lag=args.max_lag)
    port = reactor.listenTCP(0, factory, backlog=4096, interface="127.0.0.1")
    from twisted.web import server as web

    from vss.ops.collectors import streaming_server_families
    from vss.ops.metrics import Access, MetricsResource, make_registry

    class Media:
        def collect(self):
            yield from streaming_server_families(factory)

    metrics = reactor.listenTCP(0, web.Site(MetricsResource(make_registry(Media()), Access())),
                                interface="127.0.0.1")
    pool = None
    if args.workers:
        from vss.cdn.tokens import TokenIssuer as Issuer
        from vss.ss.pool import SSPool

        pool = SSPool("bench", SECRET, Issuer(SECRET, clock=reactor), reactor,
                      workers=args.workers, data_dir=tempfile.mkdtemp(prefix="vss-bench-ss-"),
                      worker_listen=lambda i: "tcp:0:interface=127.0.0.1:backlog=4096",
                      live_max_lag=args.max_lag, stream_viewers=0, linger=3600)
        pool.startService()
    origin = f"rtsp://127.0.0.1:{port.getHost().port}"

    def stats():
        src = factory.sources.get(PATH)
        out = {"sessions": len(factory.sessions)}
        if src is not None:
            out.update(src.stats())
            drops = sum(r.drops for r in src.readers)
            direct = sum(getattr(r, "direct_sends", 0) for r in src.readers)
            sent = sum(r.frames for r in src.readers)
            out.update({"reader_drops": drops, "direct_sends": direct, "reader_frames": sent})
        return out

    def workers():
        if pool is None:
            return []
        return [{"ss_id": w.ss_id, "pid": w.pid, "media": w.media, "state": w.state.name,
                 "carries": PATH in w.carried, "load": w.load}
                for w in pool.servers.values()]

    def answer(value):
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    def command_line(line):
        cmd = line.strip()
        if cmd == "stats":
            answer({**stats(), "workers": workers()})
        elif cmd == "carry":  # every worker pulls the stream once from this server
            pool.carry(PATH, origin).addBoth(lambda r: answer({"carried": r}))
        elif cmd == "quit":
            if pool is not None:
                pool.stopService().addBoth(lambda _: reactor.stop())
            else:
                reactor.stop()

    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            command_line(line.decode())

        def connectionLost(self, reason):
            if reactor.running:
                reactor.stop()  # the driver went away

    stdio.StandardIO(Control(), reactor=reactor)
    sys.stdout.write(json.dumps({"port": port.getHost().port, "pid": os.getpid(),
                                 "metrics_port": metrics.getHost().port}) + "\n")
    sys.stdout.flush()
    reactor.run()


# -- load client process


class Viewer:
    __slots__ = ("sock", "state", "inbuf", "session", "t0", "first", "bytes", "packets",
                 "first_seq", "last_seq", "gaps", "lost", "skip", "part", "w_packets",
                 "w_lost", "w_bytes", "slow", "credit", "parked", "w_lag")

    def __init__(self, sock, t0, slow=False):
        self.slow = slow  # reads at most --slow-rate bytes a second
        self.credit = 0.0
        self.parked = False  # out of the selector until it may read again
        self.w_lag = 0.0  # worst lag in the window
        self.sock = sock
        self.state = "setup"
        self.inbuf = b""
        self.session = None
        self.t0 = t0
        self.first = None
        self.bytes = 0
        self.packets = 0
        self.first_seq = None
        self.last_seq = None
        self.gaps = 0
        self.lost = 0
        self.skip = 0
        self.part = b""
        self.w_packets = self.w_lost = self.w_bytes = 0


def load(args):
    pin(args.cpu)
    sys.path.insert(0, ROOT)
    from vss.cdn.tokens import TokenIssuer

    issuer = TokenIssuer(SECRET, clock=WallClock(), ttl=600)
    token = issuer.issue(PATH, ("play",))
    ports = [int(p) for p in str(args.port).split(",")]
    base = f"rtsp://127.0.0.1:{ports[0]}{PATH}"  # the server reads the path only
    setup = (f"SETUP {base}/trackID=0?token={token} RTSP/1.0\r\nCSeq: 1\r\n"
             "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n").encode()
    sel = selectors.DefaultSelector()
    viewers = []
    buf = bytearray(1 << 18)
    mv = memoryview(buf)

    arrivals = {}  # RTP timestamp -> when a viewer first read it

    def connect(n, slow=False):
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192 if slow else 1 << 20)
            s.setblocking(False)
            v = Viewer(s, time.monotonic(), slow)
            try:  # spread evenly over the servers' ports (SS workers)
                s.connect(("127.0.0.1", ports[len(viewers) % len(ports)]))
            except BlockingIOError:
                pass
            sel.register(s, selectors.EVENT_WRITE, v)
            viewers.append(v)

    def handle_control(v, data):
        v.inbuf += data
        if b"\r\n\r\n" not in v.inbuf:
            return b""
        head, _, rest = v.inbuf.partition(b"\r\n\r\n")
        v.inbuf = b""
        if not head.startswith(b"RTSP/1.0 200"):
            raise RuntimeError(head[:200])
        if v.state == "setup":
            sid = head.split(b"Session: ")[1].split(b";")[0].split(b"\r\n")[0].decode()
            v.session = sid
            v.sock.send((f"PLAY {base}?token={token} RTSP/1.0\r\nCSeq: 2\r\n"
                         f"Session: {sid}\r\n\r\n").encode())
            v.state = "play"
            return b""
        v.state = "media"
        return rest

    def media(v, data, n):
        """Walk the interleaved frames of data[:n]: count packets and sequence gaps,
        note when each picture (RTP timestamp) was first read, and slow viewers' lag."""
        now = time.monotonic()
        pos = v.skip
        if pos >= n:
            v.skip = pos - n
            return
        if v.part:
            data = v.part + bytes(data[pos:n])
            n = len(data)
            pos = 0
            v.part = b""
        packets = 0
        lost = 0
        last = v.last_seq
        while pos < n:
            if n - pos < 16:  # the interleaved header and the RTP header to the timestamp
                v.part = bytes(data[pos:n])
                pos = n
                break
            if data[pos] != 0x24:
                raise RuntimeError("lost interleaved framing")
            ln = (data[pos + 2] << 8) | data[pos + 3]
            if data[pos + 1] == 0:
                seq = (data[pos + 6] << 8) | data[pos + 7]
                ts = bytes(data[pos + 8:pos + 12])
                if v.slow:
                    seen = arrivals.get(ts)
                    if seen is not None:
                        v.w_lag = max(v.w_lag, now - seen)
                elif ts not in arrivals:
                    arrivals[ts] = now
                if last is not None:
                    d = (seq - last - 1) & 0xFFFF
                    if d:
                        lost += d
                        v.gaps += 1
                else:
                    v.first_seq = seq
                last = seq
                packets += 1
            pos += 4 + ln
        v.last_seq = last
        v.packets += packets
        v.w_packets += packets
        v.lost += lost
        v.w_lost += lost
        v.skip = pos - n

    connect_start = time.monotonic()
    batch = 50
    pending = args.viewers
    slow_pending = args.slow
    last_tick = time.monotonic()
    window = None
    done_at = None
    last_connect = 0.0
    while True:
        now = time.monotonic()
        if pending and now - last_connect > 0.02:
            k = min(batch, pending)
            connect(k)
            pending -= k
            last_connect = now
        elif slow_pending and not pending and now - last_connect > 0.02:
            connect(slow_pending, slow=True)
            slow_pending = 0
        if args.slow:
            dt, last_tick = now - last_tick, now
            for v in viewers:
                if v.slow:
                    v.credit = min(v.credit + args.slow_rate * dt, args.slow_rate * 0.1)
                    if v.parked and v.credit > 0:
                        v.parked = False
                        sel.register(v.sock, selectors.EVENT_READ, v)
        if window is None and not pending and not slow_pending \
                and all(v.first for v in viewers):
            window = now + args.warmup
        if window is not None and done_at is None and now >= window:
            for v in viewers:
                v.w_packets = v.w_lost = v.w_bytes = 0
                v.w_lag = 0.0
            sys.stdout.write("WINDOW\n")
            sys.stdout.flush()
            done_at = now + args.seconds
            w_start = now
        if done_at is not None and now >= done_at:
            break
        if now - connect_start > args.start_timeout and window is None:
            states = {}
            for v in viewers:
                states[v.state] = states.get(v.state, 0) + 1
            sys.stdout.write(f"TIMEOUT {states}\n")
            break
        for key, mask in sel.select(timeout=0.01):
            v = key.data
            s = v.sock
            if mask & selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise RuntimeError(f"connect failed: {os.strerror(err)}")
                s.send(setup)
                sel.modify(s, selectors.EVENT_READ, v)
                continue
            try:
                if v.slow and v.state == "media":
                    n = s.recv_into(mv, max(1, int(v.credit)))
                    v.credit -= n
                    if v.credit <= 0:
                        sel.unregister(s)
                        v.parked = True
                else:
                    n = s.recv_into(mv)
            except BlockingIOError:
                continue
            if n == 0:
                raise RuntimeError("server closed a viewer")
            v.bytes += n
            v.w_bytes += n
            if v.state == "media":
                if v.first is None:
                    v.first = time.monotonic()
                media(v, buf, n)
                continue
            rest = handle_control(v, bytes(buf[:n]))
            if rest:
                v.first = time.monotonic()
                media(v, rest, len(rest))
    elapsed = time.monotonic() - w_start if done_at else 0
    slow = [v for v in viewers if v.slow]
    viewers = [v for v in viewers if not v.slow]
    ttff = sorted(v.first - v.t0 for v in viewers if v.first)
    expected = sum(v.w_packets + v.w_lost for v in viewers)
    result = {
        "viewers": len(viewers),
        "elapsed": elapsed,
        "bytes": sum(v.w_bytes for v in viewers),
        "packets": sum(v.w_packets for v in viewers),
        "lost": sum(v.w_lost for v in viewers),
        "gaps": sum(v.gaps for v in viewers),
        "viewers_with_gaps": sum(1 for v in viewers if v.w_lost),
        "delivered": (sum(v.w_packets for v in viewers) / expected) if expected else 0.0,
        "slow": len(slow),
        "slow_lag_max": max((v.w_lag for v in slow), default=None),
        "slow_bytes": sum(v.w_bytes for v in slow),
        "ttff_median": statistics.median(ttff) if ttff else None,
        "ttff_p95": ttff[int(len(ttff) * 0.95) - 1] if ttff else None,
        "client_cpu": time.process_time(),
    }
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    time.sleep(1.0)  # let the driver read the server's counters before we hang up
    for v in viewers + slow:
        v.sock.close()


# -- driver


def proc_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="run", choices=("run", "serve", "load"))
    ap.add_argument("--viewers", default="100,500,1000,2000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--start-timeout", type=float, default=60.0)
    ap.add_argument("--gop-cache", type=int, default=0,
                    help="server GOP cache in bytes (0: new viewers wait for a keyframe)")
    ap.add_argument("--max-lag", type=float, default=2.0,
                    help="live viewers' lag bound in seconds (0: none)")
    ap.add_argument("--slow", type=int, default=0,
                    help="viewers more, on a slow link (half the stream's rate)")
    ap.add_argument("--slow-rate", type=float, default=4e6 / 8 / 2,
                    help="bytes a second a slow viewer reads [half of 4 Mb/s]")
    ap.add_argument("--port", help="the server's port (load: comma list, viewers spread)")
    ap.add_argument("--ss-workers", default="",
                    help="comma list of SS worker counts to run beside the in-process SS, "
                         "e.g. 1,2")
    ap.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--worker-cpus", default="",
                    help="CPUs the SS workers run on (default: the server's, CPU 0)")
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--input", default=os.path.join(tempfile.gettempdir(),
                                                    "vss-bench-4mbps-gop25.mp4"))
    ap.add_argument("--metrics", choices=("off", "on", "compare"), default="off",
                    help="scrape the server's /metrics during the windows (compare: each N "
                         "without, then with)")
    ap.add_argument("--scrape-interval", type=float, default=1.0)
    args = ap.parse_args()
    if args.mode == "serve":
        return serve(args)
    if args.mode == "load":
        args.viewers = int(args.viewers)
        return load(args)

    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    ncpu = os.cpu_count() or 1
    other = ncpu - 1 if ncpu > 1 else 0
    make_input(ffmpeg, args.input)
    configs = [None]
    if args.ss_workers:
        configs = [0] + [int(x) for x in args.ss_workers.split(",") if int(x) > 0]
    modes = {"off": (False,), "on": (True,), "compare": (False, True)}[args.metrics]
    rows = []
    for workers in configs:
        rows.extend(run_server(args, ffmpeg, other, workers or 0, modes))
    print_rows(rows, args, configs != [None])


def run_server(args, ffmpeg, other, workers, modes):
    """One server (with ``workers`` SS workers), its publisher, each N of viewers."""
    py = sys.executable
    me = os.path.abspath(__file__)
    server = subprocess.Popen([py, me, "serve", "--cpu", "0", "--gop-cache",
                               str(args.gop_cache), "--max-lag", str(args.max_lag),
                               "--workers", str(workers)],
                              stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    info = json.loads(server.stdout.readline())
    port, spid = info["port"], info["pid"]
    scrape_url = f"http://127.0.0.1:{info['metrics_port']}/metrics"

    def server_stats():
        server.stdin.write("stats\n")
        server.stdin.flush()
        return json.loads(server.stdout.readline())

    sys.path.insert(0, ROOT)
    from vss.cdn.tokens import TokenIssuer

    token = TokenIssuer(SECRET, clock=WallClock(), ttl=3600).issue(PATH, ("publish",))
    publisher = subprocess.Popen(
        ["taskset", "-c", str(other), ffmpeg, "-hide_banner", "-loglevel", "error", "-re",
         "-stream_loop", "-1", "-i", args.input, "-c", "copy", "-f", "rtsp",
         "-rtsp_transport", "tcp", f"rtsp://127.0.0.1:{port}{PATH}?token={token}"])
    rows = []
    try:
        t = time.monotonic()
        while "packets" not in server_stats():
            if time.monotonic() - t > 20:
                raise SystemExit("publisher did not start")
            time.sleep(0.2)
        pids, ports = [spid], str(port)
        if workers:
            while sum(1 for w in server_stats()["workers"] if w["state"] == "UP") < workers:
                if time.monotonic() - t > 60:
                    raise SystemExit("the SS workers did not start")
                time.sleep(0.2)
            server.stdin.write("carry\n")
            server.stdin.flush()
            carried = json.loads(server.stdout.readline())["carried"]
            if len(carried) != workers:
                raise SystemExit(f"only {carried} carry the stream")
            ws = server_stats()["workers"]
            pids += [w["pid"] for w in ws]
            ports = ",".join(w["media"].rsplit(":", 1)[1] for w in ws)
            if args.worker_cpus:
                for w in ws:
                    os.sched_setaffinity(w["pid"], {int(c) for c in args.worker_cpus.split(",")})
        time.sleep(2)
        base_rss = sum(proc_rss(p) for p in pids)
        for n in [int(x) for x in args.viewers.split(",")]:
            for scraped in modes:
                row = run_one(py, me, ports, pids, n, args, other, server_stats, base_rss,
                              scrape_url if scraped else None)
                row["workers"] = workers
                rows.append(row)
                time.sleep(2)
    finally:
        publisher.terminate()
        publisher.wait()
        server.stdin.write("quit\n")
        server.stdin.flush()
        server.wait(20)
    return rows


def print_rows(rows, args, by_workers):
    print()
    if by_workers:
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print()
        print("| SS | viewers | offered Mb/s | delivered Gb/s | delivered | server CPU % of one "
              "core (all processes) | server CPU s / Gbit | server memory / viewer "
              "| TTFF median / p95 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            ss = f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}" if r["workers"] \
                else "in-process"
            print(f"| {ss} | {r['viewers']} | {r['source_mbps']:.2f} | {r['gbps']:.2f} | "
                  f"{100 * r['delivered']:.3f} % | {r['cpu_pct']:.1f} % | "
                  f"{r['cpu_per_gbit']:.3f} | {r['mem_per_viewer'] / 1024:.1f} KiB | "
                  f"{r['ttff_median']:.2f} / {r['ttff_p95']:.2f} s |")
        return
    print("| viewers | metrics scraped | offered Mb/s | delivered Gb/s | delivered "
          "| SS CPU % of one core | SS CPU s / Gbit | SS memory / viewer | TTFF median / p95 "
          "| whole-frame sends | load client CPU % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        scraped = f"{r['scrapes']} times" if r["scraped"] else "no"
        print(f"| {r['viewers']} | {scraped} | {r['source_mbps']:.2f} | {r['gbps']:.2f} | "
              f"{100 * r['delivered']:.3f} % | {r['cpu_pct']:.1f} % | {r['cpu_per_gbit']:.3f} | "
              f"{r['mem_per_viewer'] / 1024:.1f} KiB | {r['ttff_median']:.2f} / "
              f"{r['ttff_p95']:.2f} s | {r['direct_pct']:.1f} % | {r['client_pct']:.0f} % |")
    if args.slow:
        print()
        print("| viewers | slow viewers | read by the slow ones, Mb/s | their worst lag "
              "| lag skips in the window |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['viewers']} | {r['slow']} | "
                  f"{r['slow_bytes'] * 8 / 1e6 / r['elapsed']:.2f} | "
                  f"{r['slow_lag_max']:.2f} s | {r['lag_skips']} |")


def run_one(py, me, port, pids, n, args, cpu, server_stats, base_rss, scrape_url=None):
    """``pids``: every server process (the in-process SS, then its workers)."""
    load = subprocess.Popen([py, me, "load", "--port", str(port), "--viewers", str(n),
                             "--cpu", str(cpu), "--seconds", str(args.seconds),
                             "--warmup", str(args.warmup), "--slow", str(args.slow),
                             "--slow-rate", str(args.slow_rate)],
                            stdout=subprocess.PIPE, text=True)
    result = None
    cpu0 = s0 = t0 = None
    scraper = None
    for line in load.stdout:
        if line.startswith("WINDOW"):
            cpu0, s0, t0 = sum(map(proc_cpu, pids)), server_stats(), time.monotonic()
            rss = sum(map(proc_rss, pids))
            if scrape_url:
                scraper = Scraper(scrape_url, args.scrape_interval)
                scraper.start()
        elif line.startswith("RESULT"):
            cpu1, s1, t1 = sum(map(proc_cpu, pids)), server_stats(), time.monotonic()
            if scraper is not None:
                scraper.stop()
            result = json.loads(line[7:])
        elif line.startswith("TIMEOUT"):
            raise SystemExit(f"{n} viewers: could not start")
    load.wait()
    if result is None or cpu0 is None:
        raise SystemExit(f"{n} viewers: no result")
    wall = t1 - t0
    cpu = cpu1 - cpu0
    gbit = result["bytes"] * 8 / 1e9
    row = dict(result)
    row.update({
        "scraped": scraper is not None,
        "scrapes": scraper.scrapes if scraper is not None else 0,
        "source_mbps": (s1["bytes"] - s0["bytes"]) * 8 / 1e6 / wall,
        "gbps": gbit / result["elapsed"],
        "cpu_pct": 100 * cpu / wall,
        "cpu_per_gbit": cpu / gbit if gbit else float("inf"),
        "mem_per_viewer": (rss - base_rss) / n,
        "client_pct": 100 * result["client_cpu"] / (result["elapsed"] + args.warmup + 1),
        "reader_drops": s1.get("reader_drops"),
        "lag_skips": s1.get("lag_skips", 0) - s0.get("lag_skips", 0),
        "direct_pct": 100 * (s1["direct_sends"] - s0["direct_sends"])
        / max(1, s1["reader_frames"] - s0["reader_frames"]),
    })
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
