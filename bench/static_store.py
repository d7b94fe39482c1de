"""
CMS database benchmark: SQLite and PostgreSQL side by side, in one run.

For each backend, on a fresh database:

1. insert N devices (default 100,000) with ``bulk_upsert_devices`` in batches;
2. reload them as the nodes do: every home node pages through its own devices with
   ``list_devices(home_node=...)`` in pages of 5,000;
3. read the whole change log with ``changes_after`` in pages of 1,000;
4. single-row writes: ``upsert_device`` one call (one transaction) at a time.

Usage:
    .venv/bin/python bench/static_store.py [--devices 100000] [--nodes 10]
        [--dsn "host=127.0.0.1 port=5432 dbname=test user=postgres"] [--no-postgres]

The PostgreSQL DSN defaults to $VSS_TEST_POSTGRES_DSN; the run works in a schema of its
own (``vss_bench_<random>``) that is dropped at the end.
"""

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time

from twisted.internet import defer, task

from vss.cms.store import make_static_store
from vss.protocols.messages import DeviceRecord, PuKind, Verifier

VERIFIER = Verifier(b"\x01" * 16, 4096, b"\x02" * 32, b"\x03" * 32)
BATCH = 10_000
PAGE = 5_000
LOG_PAGE = 1_000
SINGLE_WRITES = 1_000


def devices(n, nodes):
    return [
        DeviceRecord(
            f"dev-{i:07d}", f"Camera {i}", PuKind.IPC, 1, f"node-{i % nodes:02d}", VERIFIER,
            f"rtsp://10.0.{i // 250 % 256}.{i % 250}/stream", True, 0,
        )
        for i in range(n)
    ]


@defer.inlineCallbacks
def measure(store, records, nodes):
    results = {}
    yield store.open()

    t0 = time.perf_counter()
    for i in range(0, len(records), BATCH):
        yield store.bulk_upsert_devices(records[i : i + BATCH])
    results["insert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    seen = pages = 0
    for n in range(nodes):
        cursor = ""
        while True:
            page, cursor = yield store.list_devices(cursor, PAGE, home_node=f"node-{n:02d}")
            seen += len(page)
            pages += 1
            if not cursor:
                break
    results["reload"] = time.perf_counter() - t0
    assert seen == len(records), (seen, len(records))
    results["pages"] = pages

    t0 = time.perf_counter()
    seq, count = 0, 0
    while True:
        changes, reload_required = yield store.changes_after(seq, LOG_PAGE)
        assert not reload_required
        if not changes:
            break
        count += len(changes)
        seq = changes[-1].seq
    results["log"] = time.perf_counter() - t0
    assert count == len(records), (count, len(records))

    t0 = time.perf_counter()
    for i in range(SINGLE_WRITES):
        yield store.upsert_device(f"dev-{i:07d}", "renamed", PuKind.IPC, 1, "node-00", VERIFIER)
    results["single"] = time.perf_counter() - t0
    yield store.close()
    return results


def report(rows, n, nodes):
    print(f"\nCMS database, {n:,} devices over {nodes} home nodes")
    print(f"{'':42}{'unit':>10}" + "".join(f"{name:>14}" for name, _ in rows))

    def line(label, unit, fmt):
        print(f"{label:42}{unit:>10}" + "".join(f"{fmt(r):>14}" for _, r in rows))

    line(f"insert (bulk, batches of {BATCH:,})", "s", lambda r: f"{r['insert']:.2f}")
    line("", "rows/s", lambda r: f"{n / r['insert']:,.0f}")
    line(f"reload by home node (pages of {PAGE:,})", "s", lambda r: f"{r['reload']:.2f}")
    line("", "rows/s", lambda r: f"{n / r['reload']:,.0f}")
    line(f"changes_after (pages of {LOG_PAGE:,})", "s", lambda r: f"{r['log']:.2f}")
    line("", "changes/s", lambda r: f"{n / r['log']:,.0f}")
    line(f"upsert_device x{SINGLE_WRITES:,} (one txn each)", "s", lambda r: f"{r['single']:.2f}")
    line("", "txn/s", lambda r: f"{SINGLE_WRITES / r['single']:,.0f}")


@defer.inlineCallbacks
def main(reactor, argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--dsn", default=os.environ.get("VSS_TEST_POSTGRES_DSN", ""))
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    records = devices(args.devices, args.nodes)
    rows = []

    tmp = tempfile.mkdtemp(prefix="vss-bench-")
    try:
        store = make_static_store("sqlite:" + os.path.join(tmp, "cms.sqlite3"), reactor=reactor)
        rows.append(("SQLite", (yield measure(store, records, args.nodes))))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.dsn and not args.no_postgres:
        from vss.cms.store.postgres import create_schema, drop_schema

        schema = "vss_bench_" + secrets.token_hex(4)
        create_schema(args.dsn, schema)
        try:
            store = make_static_store(args.dsn, reactor=reactor, schema=schema)
            rows.append(("PostgreSQL", (yield measure(store, records, args.nodes))))
        finally:
            drop_schema(args.dsn, schema)
    else:
        print("PostgreSQL skipped (no --dsn and no VSS_TEST_POSTGRES_DSN)", file=sys.stderr)

    report(rows, args.devices, args.nodes)


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
