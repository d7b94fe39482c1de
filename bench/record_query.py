"""
Recording catalogue across nodes: the latency of a CU's RECORD_QUERY (CU -> its node ->
CMS -> every node -> merged answer back) with 2 and 3 nodes.

    .venv/bin/python bench/record_query.py [--nodes 2,3] [--days 30] [--devices 10] [--reps 30]

CMS and the nodes run in this one process over loopback TCP (``vss.testing.platform``),
one epoll reactor. Each node's catalogue (SQLite, in its data directory) is filled with
``--devices`` devices x ``--days`` days of 5-minute segments; device ``cam-0``'s days are
spread over the nodes (day d on node d mod N), as after home moves, so every node
answers part of a listing. A CU logged in on node-1 lists ``cam-0`` over 1 hour, 1 day
and the whole range; median and p99 of ``--reps`` listings each. Then one node's
catalogue is made silent (it never answers: the listing waits for CMS's 2 s fan-out
timeout and names it missing) and then that node is stopped (down in the registry:
named missing at once).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from vss.protocols.codec import encode_body  # noqa: E402
from vss.protocols.listing import decode_recordings  # noqa: E402
from vss.protocols.messages import Action, MsgType, RecordQuery, Role, Stream  # noqa: E402
from vss.recording.catalogue import Segment  # noqa: E402
from vss.testing.platform import Platform, verifier  # noqa: E402

SEG_MS = 300_000
DAY_MS = 86_400_000


def segments(device, days, end_ms, keep):
    out = []
    start = end_ms - days * DAY_MS
    for i in range(days * DAY_MS // SEG_MS):
        s = start + i * SEG_MS
        if not keep((s - start) // DAY_MS):
            continue
        out.append(Segment(device, 0, "main", s, s + SEG_MS - 40, 150_000_000,
                           f"recordings/{device}/main/{i}.mp4", "[]"))
    return out


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


@defer.inlineCallbacks
def timed(reactor, cu, frm, to, reps):
    out = []
    body = None
    for _ in range(reps):
        t = time.perf_counter()
        body = decode_recordings((yield cu.link.request_raw(MsgType.RECORD_QUERY, encode_body(
            RecordQuery(device_id="cam-0", channel=0, stream=Stream.MAIN, from_time=frm,
                        to_time=to)), 30)))
        out.append((time.perf_counter() - t) * 1000)
        yield task.deferLater(reactor, 0, lambda: None)
    return out, body


@defer.inlineCallbacks
def run(reactor, n, args):
    work = tempfile.mkdtemp(prefix="vss-rq-")
    p = Platform(reactor, work)
    try:
        yield p.start_cms()
        store, cms = p.cms.store, p.cms.cms
        cms.publish((yield store.upsert_user("alice", verifier("alice-pw"), [])))
        for d in range(args.devices):
            cms.publish((yield store.upsert_device(f"cam-{d}", f"cam {d}", 1, 1, "node-1",
                                                   verifier("x" * 16))))
            cms.publish((yield store.set_grant("user:alice", f"cam-{d}", int(Action.VIEW))))
        nodes = []
        for i in range(n):
            nodes.append((yield p.start_node(f"node-{i + 1}")))
        end = (int(time.time() * 1000) // SEG_MS) * SEG_MS
        rows = 0
        for i, node in enumerate(nodes):
            segs = []
            for d in range(args.devices):
                keep = (lambda day, i=i: day % n == i) if d == 0 else \
                    (lambda day, i=i: i == 0)
                segs.extend(segments(f"cam-{d}", args.days, end, keep))
            yield node.recorder.catalogue.add_many(segs)
            rows += len(segs)
        cu = yield p.login("node-1", Role.CU, "alice", "alice-pw")
        print(f"\n{n} nodes, {rows} catalogue rows in all, cam-0 spread over every node")
        print(f"{'range':<10} {'median ms':>10} {'p99 ms':>8} {'segments':>9} {'gaps':>5} "
              f"{'missing':>8}")
        for label, span in (("1 hour", 3_600_000), ("1 day", DAY_MS),
                            (f"{args.days} days", args.days * DAY_MS)):
            yield timed(reactor, cu, end - span, end, 3)  # warm
            lat, body = yield timed(reactor, cu, end - span, end, args.reps)
            print(f"{label:<10} {statistics.median(lat):>10.1f} {pct(lat, 99):>8.1f} "
                  f"{len(body.segments):>9} {len(body.gaps):>5} {','.join(body.missing) or '-':>8}")
        last = nodes[-1]
        last.central.local_recordings = lambda body: defer.Deferred()
        lat, body = yield timed(reactor, cu, end - DAY_MS, end, 3)
        print(f"{'1 day, ' + last.settings.node_id + ' silent':<24} median "
              f"{statistics.median(lat):.1f} ms, missing {list(body.missing)}")
        yield p.stop_node(last.settings.node_id)
        while last.settings.node_id in cms.sessions:
            yield task.deferLater(reactor, 0.05, lambda: None)
        lat, body = yield timed(reactor, cu, end - DAY_MS, end, args.reps)
        print(f"{'1 day, ' + last.settings.node_id + ' stopped':<24} median "
              f"{statistics.median(lat):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
              f"missing {list(body.missing)}")
    finally:
        yield p.stop()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="2,3")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()

    @defer.inlineCallbacks
    def all_runs(reactor):
        for n in (int(x) for x in args.nodes.split(",")):
            yield run(reactor, n, args)

    task.react(all_runs)


if __name__ == "__main__":
    main()
