"""
Recording benchmark: N concurrent 4 Mb/s recordings on one node, and the list latency of
a long catalogue.

    .venv/bin/python bench/recording.py [--streams 10,50,100] [--process-streams 10,50]
                                        [--seconds 20]
    .venv/bin/python bench/recording.py --catalogue-only [--devices 100 --days 30]

Each N of ``--streams`` is measured with the recorder in process (``mode="auto"``: each
recording is a reader of the SS's source, depacketized and muxed in the node), and each
N of ``--process-streams`` right after it with one child per recording
(``mode="process"``), so the two are compared side by side under the same load.

Processes:
- the node (``node``): ``RTSPServerFactory`` (the SS) and ``vss.recording.recorder.Recorder``
  in one process on the epoll reactor, pinned to CPU 0; in process mode the recorder's
  children (one per recording, ``python -m vss.recording.recorder``) inherit that pin, so the
  node's whole recording cost must fit in one core;
- the publishers: one static ffmpeg (imageio-ffmpeg) per stream replaying a pre-encoded
  1280x720 25 fps 4 Mb/s CBR H.264 file, GOP 1 s (``-re -stream_loop -1 -c copy``) over
  RTSP/TCP to ``/live/benchI/main``, pinned to the last CPU.

For each N it prints the node's CPU (node process + every recorder child, from
/proc/<pid>/stat) in % of one core and per stream, the write rate (growth of the
recordings directory), frames lost (frames the media time of the written segments calls
for, at 25 fps, minus frames written) and frames the SS dropped for the recorders
(their reader queues overflowed); in process also the frames the recorder's
depacketizer counted as lost (``frames_lost`` in ``Recorder.status()``).

The catalogue part fills ``CatalogueDB`` with devices x days of 5-minute segments (each
with 300 keyframe offsets, a 1 s GOP) and times ``list`` of one device over 1 hour,
1 day and the whole range, and ``get`` of one segment with its offsets.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECRET = b"bench-secret-0123456789abcdef"
FPS = 25


from _common import WallClock, make_input, pin, proc_cpu  # noqa: E402 - bench/ is on sys.path (run as a script)

# -- node process


def node(args):
    pin(args.cpu)
    sys.path.insert(0, ROOT)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import defer, reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
    from vss.recording.recorder import Recorder
    from vss.rtsp.server import RTSPServerFactory

    issuer = TokenIssuer(SECRET, clock=reactor)
    factory = RTSPServerFactory(TokenAuthorizer(issuer), reactor=reactor)
    port = reactor.listenTCP(0, factory, backlog=4096, interface="127.0.0.1")
    recorder = Recorder(factory, issuer, args.data_dir, reactor, reactor,
                        f"rtsp://127.0.0.1:{port.getHost().port}", source_wait=30,
                        mode=args.mode)

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def stats():
        recs = recorder.status()["recordings"]
        return {"sources": len(factory.sources),
                "drops": sum(s.stats()["drops"] for s in factory.sources.values()),
                "pids": [r["pid"] for r in recs.values() if r["pid"]],
                "recording": sum(1 for r in recs.values() if r["state"] == "recording"),
                "modes": sorted({r["mode"] for r in recs.values() if r["mode"]}),
                "lost": sum(r["frames_lost"] or 0 for r in recs.values()),
                "segments": recorder.counters["segments"], "alarm": recorder.status()["alarm"]}

    @defer.inlineCallbacks
    def command(line):
        words = line.split()
        if words[0] == "stats":
            reply(stats())
        elif words[0] == "record":
            n, seg = int(words[1]), float(words[2])
            results = yield defer.DeferredList(
                [recorder.start(f"bench{i}", 0, 0, seg) for i in range(n)], consumeErrors=True)
            reply({"started": sum(1 for ok, _ in results if ok),
                   "errors": [str(r.value) for ok, r in results if not ok][:3]})
        elif words[0] == "stop":
            drops = stats()["drops"]
            infos = yield defer.gatherResults(
                [recorder.stop(d, c, s) for d, c, s in list(recorder.recordings)])
            reply({"stopped": [i for i in infos if i], "drops": drops})
        elif words[0] == "quit":
            yield recorder.close()
            reactor.stop()

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            command(line.decode()).addErrback(lambda f: reply({"error": str(f.value)}))

        def connectionLost(self, reason):
            if reactor.running:
                reactor.stop()

    def ready(_):
        stdio.StandardIO(Control(), reactor=reactor)
        reply({"port": port.getHost().port, "pid": os.getpid()})

    reactor.callWhenRunning(lambda: recorder.open().addCallback(ready))
    reactor.run()


# -- driver


def dir_bytes(root):
    total = 0
    for d, _, names in os.walk(root):
        for n in names:
            try:
                total += os.path.getsize(os.path.join(d, n))
            except OSError:
                pass
    return total


class Node:
    def __init__(self, data_dir, mode):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "node", "--cpu", "0",
             "--data-dir", data_dir, "--mode", mode], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        info = json.loads(self.proc.stdout.readline())
        self.port, self.pid = info["port"], info["pid"]

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def quit(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(30)


def run_one(n, args, ffmpeg, data_dir, other, mode):
    sys.path.insert(0, ROOT)
    from vss.cdn.tokens import TokenIssuer
    from vss.recording.catalogue import CatalogueDB

    shutil.rmtree(data_dir, ignore_errors=True)
    os.makedirs(data_dir)
    node_proc = Node(data_dir, mode)
    issuer = TokenIssuer(SECRET, clock=WallClock(), ttl=3600)
    pubs = []
    try:
        for i in range(n):
            path = f"/live/bench{i}/main"
            url = f"rtsp://127.0.0.1:{node_proc.port}{path}?token=" + issuer.issue(
                path, ("publish",))
            pubs.append(subprocess.Popen(
                ["taskset", "-c", str(other), ffmpeg, "-hide_banner", "-loglevel", "error",
                 "-re", "-stream_loop", "-1", "-i", args.input, "-c", "copy", "-f", "rtsp",
                 "-rtsp_transport", "tcp", url]))
        t = time.monotonic()
        while node_proc.ask("stats")["sources"] < n:
            if time.monotonic() - t > 60:
                raise SystemExit("publishers did not start")
            time.sleep(0.2)
        started = node_proc.ask(f"record {n} {args.segment}")
        if started["started"] < n:
            print(f"only {started['started']} of {n} recordings started: {started['errors']}")
        time.sleep(args.warmup)
        st0 = node_proc.ask("stats")
        pids = [node_proc.pid, *st0["pids"]]
        node0 = proc_cpu(node_proc.pid)
        cpu0 = sum(proc_cpu(p) for p in pids)
        b0 = dir_bytes(os.path.join(data_dir, "recordings"))
        w0 = time.monotonic()
        time.sleep(args.seconds)
        st1 = node_proc.ask("stats")
        node1 = proc_cpu(node_proc.pid)
        cpu1 = sum(proc_cpu(p) for p in pids)
        b1 = dir_bytes(os.path.join(data_dir, "recordings"))
        elapsed = time.monotonic() - w0
        stopped = node_proc.ask("stop")
    finally:
        for p in pubs:
            p.terminate()
        for p in pubs:
            p.wait()
        node_proc.quit()
    db = CatalogueDB(data_dir)
    covered = {}
    for dev, ms in db.db.execute("SELECT device, sum(end_ms - start_ms) FROM segments "
                                 "GROUP BY device"):
        covered[dev] = ms
    db.close()
    frames = {i["device"]: i["frames"] for i in stopped["stopped"]}
    expected = sum(round(covered.get(d, 0) * FPS / 1000) for d in frames)
    written = sum(frames.values())
    cpu = 100 * (cpu1 - cpu0) / elapsed
    node_cpu = 100 * (node1 - node0) / elapsed
    recording = max(1, st1["recording"])
    return {"mode": "+".join(st1["modes"]), "streams": n, "recording": st1["recording"],
            "cpu_pct": cpu,
            "cpu_per_stream": cpu / recording, "node_pct": node_cpu,
            "children_pct": cpu - node_cpu, "write_mbs": (b1 - b0) / elapsed / 1e6,
            "frames_written": written, "frames_lost": expected - written,
            "depacketizer_lost": sum(i["frames_lost"] or 0 for i in stopped["stopped"]),
            "ss_drops": stopped["drops"], "segments": st1["segments"],
            "alarm": st1["alarm"]}


def bench_catalogue(args):
    sys.path.insert(0, ROOT)
    from vss.recording.catalogue import CatalogueDB, Segment, segment_name

    tmp = tempfile.mkdtemp(prefix="vss-catalogue-bench-")
    try:
        db = CatalogueDB(tmp)
        seg_ms = 300_000
        per_day = 86400_000 // seg_ms
        t_end = 1_790_000_000_000
        t_start = t_end - args.days * 86400_000
        offsets = json.dumps([[k * 1000, 1200 + k * 500_000] for k in range(300)],
                             separators=(",", ":"))
        t = time.perf_counter()
        for d in range(args.devices):
            dev = f"cam{d:03d}"
            rows = []
            for k in range(args.days * per_day):
                if random.random() < 0.01:
                    continue  # 1 % of segments missing: gaps
                s = t_start + k * seg_ms
                rows.append(Segment(dev, 0, "main", s, s + seg_ms, 150_000_000,
                                    f"recordings/{dev}/main/{segment_name(s)}.mp4", offsets))
            db.add_many(rows)
        fill = time.perf_counter() - t
        count = db.count()
        size = sum(os.path.getsize(os.path.join(tmp, n)) for n in os.listdir(tmp))

        def timed(fn, repeat=30):
            out = []
            for _ in range(repeat):
                t = time.perf_counter()
                r = fn()
                out.append(1000 * (time.perf_counter() - t))
            out.sort()
            return statistics.median(out), out[int(len(out) * 0.99) - 1], r

        rows = []
        for label, span in (("1 hour", 3600_000), ("1 day", 86400_000),
                            (f"{args.days} days", args.days * 86400_000)):
            def one(span=span):
                dev = f"cam{random.randrange(args.devices):03d}"
                start = random.randint(t_start, max(t_start, t_end - span))
                return db.list(dev, "main", start, start + span)
            med, p99, r = timed(one)
            rows.append((label, med, p99, len(r["segments"]), len(r["gaps"])))
        paths = [r[0] for r in db.db.execute("SELECT path FROM segments LIMIT 1000")]
        gmed, gp99, _ = timed(lambda: db.get(random.choice(paths)), 200)
        qmed, qp99, _ = timed(lambda: db.total_bytes(), 5)
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ncatalogue: {args.devices} devices x {args.days} days of 5-min segments = "
          f"{count:,} rows, {size / 1e6:.0f} MB, filled in {fill:.0f} s")
    print("| list range | median ms | p99 ms | segments | gaps |")
    print("|---|---|---|---|---|")
    for label, med, p99, n, g in rows:
        print(f"| {label} | {med:.1f} | {p99:.1f} | {n} | {g} |")
    print(f"get one segment with its 300 keyframe offsets: median {gmed:.2f} ms, "
          f"p99 {gp99:.2f} ms; total_bytes (quota check): median {qmed:.0f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="run", choices=("run", "node"))
    ap.add_argument("--mode", default="auto", choices=("auto", "process"),
                    help="(node) the Recorder's mode")
    ap.add_argument("--streams", default="10,50,100",
                    help="stream counts recorded in process")
    ap.add_argument("--process-streams", default="10,50",
                    help="stream counts also recorded by children, for comparison")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=6.0)
    ap.add_argument("--segment", type=float, default=5.0)
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--data-dir")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--catalogue-only", action="store_true")
    ap.add_argument("--skip-catalogue", action="store_true")
    ap.add_argument("--input", default=os.path.join(tempfile.gettempdir(),
                                                    "vss-bench-4mbps-gop25.mp4"))
    args = ap.parse_args()
    if args.what == "node":
        return node(args)
    if not args.catalogue_only:
        import imageio_ffmpeg

        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        make_input(ffmpeg, args.input)
        ncpu = os.cpu_count() or 1
        other = ncpu - 1 if ncpu > 1 else 0
        data_dir = tempfile.mkdtemp(prefix="vss-recording-bench-")
        rows = []
        process_ns = {int(x) for x in args.process_streams.split(",") if x}
        saturated = set()
        try:
            for n in [int(x) for x in args.streams.split(",")]:
                for mode in ("auto", "process"):
                    if mode in saturated or (mode == "process" and n not in process_ns):
                        continue
                    r = run_one(n, args, ffmpeg, data_dir, other, mode)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
                    if r["cpu_pct"] > 95 or \
                            r["frames_lost"] > 0.01 * max(1, r["frames_written"]):
                        print(f"{mode}: stopping at {n} streams: the node's core is "
                              "saturated or frames are lost")
                        saturated.add(mode)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        print("\n| recorder | streams (recording) | node CPU, % of one core (node + "
              "recorder children) | node process / children | per stream | write MB/s "
              "| frames written | frames lost | SS drops for recorders |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['mode']} | {r['streams']} ({r['recording']}) | {r['cpu_pct']:.1f} % | "
                  f"{r['node_pct']:.1f} % / {r['children_pct']:.1f} % | "
                  f"{r['cpu_per_stream']:.2f} % | "
                  f"{r['write_mbs']:.1f} | {r['frames_written']} | {r['frames_lost']} "
                  f"({r['depacketizer_lost']}) | {r['ss_drops']} |")
    if not args.skip_catalogue:
        bench_catalogue(args)


if __name__ == "__main__":
    sys.exit(main())
