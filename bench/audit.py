"""
What the audit and grant expiry cost, in process, side by side in one run.

    .venv/bin/python bench/audit.py [--events 200000] [--grants 100000]

- ``note``: ``AuditReporter.note`` per event (what a granted MEDIA_OPEN, a stream
  credential's DESCRIBE or an export download adds on the request path), beside a
  ``deque.append`` of a tuple (the floor of any queue);
- ``encode``: one AUDIT_REPORT of 500 events (the reporter's batch), per event;
- ``append_audit``: CMS writing batches of 500 entries to a SQLite file;
- ``actions_for``: the grant check with every grant carrying an expiry, beside the same
  check with none (the hot path never reads a clock: both should be equal), and
  ``expire_grants`` taking 1% of them out of force.
"""

import argparse
import os
import platform
import random
import tempfile
import time
from collections import deque

from twisted.internet import defer, task

from vss.cms.store import make_static_store
from vss.cms.store.audit import entry
from vss.protocols import codec
from vss.protocols.messages import AuditEvent, AuditKind, AuditReport, MsgType
from vss.rgm.audit import AuditReporter
from vss.store.memory import MemoryStore
from vss.testing.records import grant, user


def per_event(seconds, n):
    return f"{seconds / n * 1e9:8.0f} ns"


def bench_note(n):
    clock = task.Clock()
    reporter = AuditReporter(None, clock, max_queue=n + 1)
    start = time.perf_counter()
    for _ in range(n):
        reporter.note(AuditKind.LIVE, "alice", "cam-00001", 0, 0, peer="10.0.0.9", via="web")
    note = time.perf_counter() - start
    q = deque()
    start = time.perf_counter()
    for _ in range(n):
        q.append((1_700_000_000_000, 1, "alice", "cam-00001", 0, 0, 0, 0, "10.0.0.9", "web"))
    floor = time.perf_counter() - start
    return note, floor, [AuditEvent(*e) for e in reporter.queue]


def bench_encode(events):
    batches = [events[i:i + 500] for i in range(0, len(events), 500)]
    start = time.perf_counter()
    size = 0
    for i, batch in enumerate(batches):
        frame = codec.encode_request(MsgType.AUDIT_REPORT,
                                     AuditReport(batch=i, dropped=0, events=batch), i + 1)
        size += len(frame)
    return time.perf_counter() - start, size / len(events)


@defer.inlineCallbacks
def bench_append(reactor, n):
    work = tempfile.mkdtemp(prefix="vss-bench-audit-")
    store = make_static_store("sqlite:" + os.path.join(work, "cms.sqlite3"), reactor=reactor)
    yield store.open()
    entries = [entry(1_700_000_000_000 + i, "live", "user:alice", "10.0.0.9", "node-a", "live",
                     "device:cam-00001", 0, {"channel": 0, "stream": "main", "via": "web"})
               for i in range(n)]
    start = time.perf_counter()
    for i in range(0, n, 500):
        yield store.append_audit(entries[i:i + 500])
    elapsed = time.perf_counter() - start
    yield store.close()
    return elapsed


def bench_grants(n, lookups):
    rnd = random.Random(7)
    clock = task.Clock()
    clock.advance(1_700_000_000)
    results = {}
    for label, expiring in (("no expiry", False), ("every grant expiring", True)):
        store = MemoryStore(clock=clock)
        for u in range(1000):
            store.put_user(user(f"user{u}", "pw", groups=[f"g{u % 50}"], iterations=1))
        for i in range(n):
            expires = 1_700_000_000_000 + rnd.randrange(1, 10**9) if expiring else 0
            principal = f"user:user{i % 1000}" if i % 2 else f"group:g{i % 50}"
            store.put_grant(grant(principal, f"cam-{i:06d}", 1, expires=expires))
        asks = [(f"user{rnd.randrange(1000)}", f"cam-{rnd.randrange(n):06d}")
                for _ in range(lookups)]
        start = time.perf_counter()
        for u, d in asks:
            store.actions_for(u, d)
        results[label] = time.perf_counter() - start
        if expiring:
            clock.advance(10**9 / 1000 / 100)  # 1% of the expiries pass
            start = time.perf_counter()
            gone = store.expire_grants()
            results["expire"] = (time.perf_counter() - start, len(gone))
    return results


def main(reactor, args):
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()} (a shared machine: compare the figures of one run)")
    note, floor, events = bench_note(args.events)
    print(f"note           {per_event(note, args.events)} per event "
          f"(deque.append of a tuple: {per_event(floor, args.events)})")
    enc, size = bench_encode(events)
    print(f"encode         {per_event(enc, len(events))} per event in batches of 500, "
          f"{size:.0f} bytes per event on the wire")
    grants = bench_grants(args.grants, args.lookups)
    print(f"actions_for    {per_event(grants['no expiry'], args.lookups)} per check, "
          f"{per_event(grants['every grant expiring'], args.lookups)} with every grant "
          f"expiring ({args.grants} grants)")
    took, count = grants["expire"]
    print(f"expire_grants  {took * 1000:8.1f} ms to take {count} grants out of force")
    d = bench_append(reactor, args.appends)

    def report(elapsed):
        print(f"append_audit   {args.appends / elapsed:8.0f} entries/s into SQLite, "
              f"batches of 500")

    return d.addCallback(report)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--grants", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--appends", type=int, default=20_000)
    task.react(main, [ap.parse_args()])
