"""
The CMS database's write path alone, at a given rate: the real ``PostgresStaticStore``
(group commit) on bench/scale.py's population, no CMS service and no nodes, so that the
figure is the store's and PostgreSQL's whatever else the CMS process does.

    .venv/bin/python bench/scale_writes.py [--dsn ...] [--devices 1000000]
        [--rates 1000,2000] [--seconds 10] [--max-batch 200]

Each change renames a random device (``update_device_fields``, what MMS does for a
device edit), issued at the rate from one reactor (a late tick issues more: the offered
rate is kept). Figures per rate: changes committed within the window per second, the
write's latency (issued to answered, i.e. durable), transactions and changes per
transaction, time inside the transaction, CPU of this process and of PostgreSQL per
change, the load average. ``--max-batch 1`` is one transaction per change (as before
group commit).
"""

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scale  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from vss.cms.store.postgres import PostgresStaticStore, create_schema  # noqa: E402

SCHEMA = "vss_bench_scale_writes"


@defer.inlineCallbacks
def run(reactor, a):
    scale.SCHEMA = SCHEMA
    scale.drop_schema(a.dsn)
    create_schema(a.dsn, SCHEMA)
    store = PostgresStaticStore(a.dsn, reactor=reactor, schema=SCHEMA)
    yield store.open()
    try:
        counts, took = yield defer.maybeDeferred(
            scale.populate, a.dsn, max(1, a.devices // 10_000), a.devices, 1000)
        print(f"population: {counts} generated in {took:.1f} s")
        if a.max_batch:
            store._commits.max_batch = a.max_batch
        inner = store._in_batch
        inside = []

        def timed(cur, batch):
            t = time.monotonic()
            result = inner(cur, batch)
            inside.append(time.monotonic() - t)
            return result

        store._in_batch = timed
        for rate in a.rates:
            yield at_rate(reactor, store, a, rate, inside)
    finally:
        yield store.close()
        scale.drop_schema(a.dsn)


@defer.inlineCallbacks
def at_rate(reactor, store, a, rate, inside):
    del inside[:]
    latencies, committed_at, errors = [], [], []
    commits0 = (store._commits.transactions, store._commits.writes)

    def change(i):
        t0 = time.monotonic()
        d = store.update_device_fields(f"d{random.randrange(a.devices):07d}", name=f"w{i}")

        def done(_):
            now = time.monotonic()
            latencies.append(now - t0)
            committed_at.append(now)

        return d.addCallbacks(done, errors.append)

    issued, pending = 0, []
    started = time.monotonic()
    cpu0, pg0 = scale.cpu_seconds(), scale.postgres_cpu_seconds()
    while time.monotonic() - started < a.seconds:
        due = int(rate * (time.monotonic() - started))
        while issued < due:
            issued += 1
            pending.append(change(issued))
        yield task.deferLater(reactor, 0.01, lambda: None)
        pending = [d for d in pending if not d.called]
    elapsed = time.monotonic() - started
    yield defer.DeferredList(pending)
    cpu, pg = scale.cpu_seconds() - cpu0, scale.postgres_cpu_seconds() - pg0
    done = len(latencies)
    txns = store._commits.transactions - commits0[0]
    print(json.dumps({
        "rate": rate, "max_batch": store._commits.max_batch, "errors": len(errors),
        "achieved": round(sum(1 for t in committed_at if t <= started + elapsed) / elapsed, 1),
        "write_p50_ms": round(1000 * scale.pct(latencies, 50), 1),
        "write_p99_ms": round(1000 * scale.pct(latencies, 99), 1),
        "transactions": txns,
        "changes_per_transaction": round((store._commits.writes - commits0[1]) / max(1, txns), 1),
        "in_transaction_p50_ms": round(1000 * scale.pct(inside, 50), 1),
        "cpu_ms_per_change": round(1000 * cpu / max(1, done), 3),
        # (None: a PostgreSQL process ended in the window, its CPU left the sum)
        "postgres_cpu_ms_per_change": round(1000 * pg / max(1, done), 3) if pg >= 0 else None,
        "load_average": round(os.getloadavg()[0], 1),
    }))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", default="host=127.0.0.1 port=5432 dbname=test user=postgres")
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--rates", default="1000,2000")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--max-batch", type=int, default=0,
                    help="the most changes one transaction carries (default: the store's)")
    a = ap.parse_args()
    a.rates = [int(r) for r in a.rates.split(",")]
    task.react(lambda reactor: run(reactor, a))


if __name__ == "__main__":
    main()
