"""
Failover benchmark (docs/performance.md, "Failover").

``--cms``: CMS takeover. Two ``twistd vss-cms`` on one PostgreSQL database (one active,
one standby), one ``twistd vss-node`` given both addresses, and a stream of admin
changes (``PUT /grants``, each a grant of its own, at most 20 a second) through an admin
client that knows both CMS. The active CMS is SIGKILLed two seconds into the stream.
Figures per run: seconds from the kill to the standby's ``/readyz`` answering 200
(active), and to the node registered on it (``up`` in its ``/status``); changes sent,
acknowledged (200) and lost (acknowledged but missing from the database or from the
node's copy, read with ``vssctl devices`` as the user granted). The scenario is
``vss.testing.standby`` (also run by tests/test_cms_standby.py).

PostgreSQL: ``--dsn`` or ``VSS_TEST_POSTGRES_DSN`` (each run in a fresh schema, dropped
after), else a server of its own (``initdb``).

    VSS_TEST_POSTGRES_DSN='host=127.0.0.1 dbname=test user=postgres' \\
        .venv/bin/python bench/failover.py --cms --runs 5

``--nodes N``: node death. ``twistd vss-cms`` (SQLite, default settings), three
``twistd vss-node`` and one ``vss-pu`` process of N PUs homed on node-a, an observer CU
on node-b and ``--viewers`` live RTSP viewers there of PUs of node-a
(``vss.testing.failover``, also run by tests/test_node_failover.py). node-a is
SIGKILLed; figures: seconds from the kill to each PU online on another node (as the
observer's STATE_CHANGE says: p50, p99, all), where they went, and for each viewer the
seconds to playing again on its RTSP session, from the kill and from its PU; the CPU
seconds each process used from the kill to the last PU online. ``--keep`` keeps the
processes' logs (the work directory is printed). ``VSS_GC_THRESHOLD=700,10,10`` in the
environment runs every process with CPython's collector thresholds (vss.gctune).

    .venv/bin/python bench/failover.py --nodes 1000 --viewers 10
    .venv/bin/python bench/failover.py --nodes 10000 --viewers 10
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from _common import proc_cpu  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from vss.testing.failover import NodeFailoverScenario, percentile  # noqa: E402
from vss.testing.processes import poll  # noqa: E402
from vss.testing.standby import NoPostgres, StandbyScenario, database  # noqa: E402


@defer.inlineCallbacks
def cms_run(reactor, number):
    work = tempfile.mkdtemp(prefix="vss-failover-")
    cleanups = []
    scenario = None
    try:
        dsn = yield database(reactor, cleanups)
        scenario = StandbyScenario(reactor, work, dsn)
        yield scenario.seed()
        yield scenario.start_cms("cms-a")
        from vss.testing.processes import poll

        yield poll("cms-a to be active", lambda: scenario.is_active("cms-a"),
                   reactor=reactor)
        yield scenario.start_cms("cms-b")
        yield scenario.start_node()
        streaming = scenario.stream()
        yield task.deferLater(reactor, 2.0, lambda: None)
        active, node = yield scenario.kill_active_and_time_takeover()
        yield task.deferLater(reactor, 2.0, lambda: None)
        scenario.streaming = False
        yield streaming
        count = yield scenario.count("cms-b")
        lost = len(count["lost_db"]) + len(count["node_diff"])
        print(f"run {number}: standby active {active:5.2f} s, node on it {node:5.2f} s after "
              f"the kill; changes sent {count['sent']}, acknowledged "
              f"{count['acknowledged']}, lost {lost}", flush=True)
        return active, node, count["sent"], count["acknowledged"], lost
    finally:
        if scenario is not None:
            yield scenario.stop_all()
        for c in reversed(cleanups):
            yield defer.maybeDeferred(c)
        shutil.rmtree(work, ignore_errors=True)


@defer.inlineCallbacks
def cms_bench(reactor, runs):
    results = []
    for i in range(1, runs + 1):
        results.append((yield cms_run(reactor, i)))
    active = [r[0] for r in results]
    node = [r[1] for r in results]
    print(f"\nCMS takeover over {runs} runs: standby active p50 "
          f"{statistics.median(active):.2f} s, max {max(active):.2f} s; node on it p50 "
          f"{statistics.median(node):.2f} s, max {max(node):.2f} s; changes acknowledged "
          f"{sum(r[3] for r in results)} of {sum(r[2] for r in results)} sent, lost "
          f"{sum(r[4] for r in results)}")


@defer.inlineCallbacks
def nodes_run(reactor, count, viewers, keep=False):
    work = tempfile.mkdtemp(prefix="vss-failover-nodes-")
    if keep:
        print(f"work directory (kept): {work}", flush=True)
    s = NodeFailoverScenario(reactor, work, count)
    try:
        yield s.seed()
        yield s.start_cms()
        for node_id in ("node-a", "node-b", "node-c"):
            yield s.start_node(node_id)
        yield s.watch("node-b")
        s.start_pus()
        started = reactor.seconds()
        yield poll("every PU online on node-a", lambda: s.pus_online("node-a") == count,
                   timeout=900, interval=0.5, reactor=reactor)
        print(f"{count} PUs online on node-a in {reactor.seconds() - started:.1f} s",
              flush=True)
        watched = []
        for i in range(viewers):
            watched.append((yield s.view(f"pu{i * max(1, count // viewers):05d}")))
        yield task.deferLater(reactor, 2.0, lambda: None)
        pids = {"cms": s.cms.pid, "vss-pu": s.pus.pid,
                **{n: s.nodes[n][0].pid for n in ("node-b", "node-c")}}
        cpu0 = {name: proc_cpu(pid) for name, pid in pids.items()}
        t0 = yield s.kill("node-a")
        yield poll("every PU online elsewhere", lambda: len(s.online_since(t0)) == count,
                   timeout=300, interval=0.2, reactor=reactor)
        times = [t - t0 for t in s.online_since(t0).values()]
        # who did the work, kill to the last PU online: CPU seconds per process
        cpu = {name: proc_cpu(pid) - cpu0[name] for name, pid in pids.items()}
        print("CPU seconds from the kill to the last PU online: " + ", ".join(
            f"{name} {seconds:.1f}" for name, seconds in cpu.items()) +
            f" (in {max(times):.1f} s on {os.cpu_count()} CPUs; load average "
            f"{os.getloadavg()[0]:.1f})", flush=True)
        spread = {}
        devices = yield s.devices()
        for d in devices:
            spread[d.node_id] = spread.get(d.node_id, 0) + 1
        online = sum(1 for d in devices if d.online)
        print(f"{count} PUs: online elsewhere after the kill p50 {percentile(times, 50):.2f} s,"
              f" p99 {percentile(times, 99):.2f} s, all {max(times):.2f} s; homes {spread}, "
              f"online {online}/{count}", flush=True)
        if watched:
            yield poll("every viewer to play again",
                       lambda: all(v.playing_since(t0) or v.error for v in watched),
                       timeout=120, interval=0.2, reactor=reactor)
            for v in watched:
                resumed = v.playing_since(t0)
                if v.error is not None or resumed is None:
                    print(f"  viewer of {v.device_id}: FAILED ({v.error})")
                    continue
                print(f"  viewer of {v.device_id}: playing again {resumed - t0:.2f} s after "
                      f"the kill, {resumed - s.online_at[v.device_id]:.2f} s after its PU")
        return times
    finally:
        yield s.stop_all()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cms", action="store_true", help="CMS takeover")
    parser.add_argument("--nodes", type=int, metavar="N",
                        help="node death: kill -9 a node of N PUs")
    parser.add_argument("--viewers", type=int, default=10,
                        help="live viewers of the dying node's PUs (--nodes)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true",
                        help="keep the processes' logs and data (--nodes)")
    parser.add_argument("--dsn", help="PostgreSQL DSN [VSS_TEST_POSTGRES_DSN, else a "
                        "server of its own]")
    args = parser.parse_args()
    if not args.cms and not args.nodes:
        parser.error("choose a section: --cms or --nodes N")
    if args.dsn:
        os.environ["VSS_TEST_POSTGRES_DSN"] = args.dsn

    def run(reactor):
        if args.nodes:
            return nodes_run(reactor, args.nodes, args.viewers, args.keep)
        return cms_bench(reactor, args.runs).addErrback(
            lambda f: print(f"failover bench: {f.getErrorMessage()}", file=sys.stderr)
            if f.check(NoPostgres) else f)

    task.react(run)


if __name__ == "__main__":
    main()
